//! Probes: real TCP/UDP packets from inside a source namespace to a destination IP and port.
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use crate::lab::PodNetns;
use crate::netns;
use crate::topology::Protocol;

/// The per-attempt timeout FORMAT.md prescribes.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// One probe to run: from a source namespace to `ip:port/protocol`.
#[derive(Debug, Clone)]
pub struct ProbeJob {
    /// Source network namespace name.
    pub from_netns: String,
    /// Destination IP (either family).
    pub to_ip: IpAddr,
    /// Destination port.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
}

/// Sends one probe from `from`; true if the echo came back within `timeout`.
pub fn probe(from: &PodNetns, to_ip: impl Into<IpAddr>, port: u16, protocol: Protocol, timeout: Duration) -> bool {
    probe_job(&ProbeJob { from_netns: from.netns.clone(), to_ip: to_ip.into(), port, protocol }, timeout)
}

/// Runs a job on a fresh thread in the source namespace (the thread is discarded after).
pub fn probe_job(job: &ProbeJob, timeout: Duration) -> bool {
    let to = SocketAddr::from((job.to_ip, job.port));
    let proto = job.protocol;
    match netns::in_netns(&job.from_netns, move || attempt(to, proto, timeout)) {
        Ok(ok) => ok,
        Err(e) => {
            tracing::warn!("probe from {}: {e}", job.from_netns);
            false
        }
    }
}

/// Runs every job at once (one thread each); a failure is retried once, a success never.
pub fn probe_all(jobs: &[ProbeJob], timeout: Duration) -> Vec<bool> {
    std::thread::scope(|s| {
        let handles: Vec<_> = jobs
            .iter()
            .map(|j| s.spawn(move || probe_job(j, timeout) || probe_job(j, timeout)))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or(false)).collect()
    })
}

fn attempt(to: SocketAddr, protocol: Protocol, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let payload = format!("bulkhead-probe {to} {:?}\n", Instant::now());
    let res = match protocol {
        Protocol::Tcp => tcp(to, payload.as_bytes(), deadline),
        Protocol::Udp => udp(to, payload.as_bytes(), deadline),
    };
    match res {
        Ok(ok) => ok,
        Err(e) => {
            tracing::trace!(%to, %protocol, "probe failed: {e}");
            false
        }
    }
}

fn left(deadline: Instant) -> std::io::Result<Duration> {
    let d = deadline.saturating_duration_since(Instant::now());
    if d.is_zero() { Err(std::io::ErrorKind::TimedOut.into()) } else { Ok(d) }
}

fn tcp(to: SocketAddr, payload: &[u8], deadline: Instant) -> std::io::Result<bool> {
    let mut s = TcpStream::connect_timeout(&to, left(deadline)?)?;
    s.set_write_timeout(Some(left(deadline)?))?;
    s.write_all(payload)?;
    let mut got = vec![0u8; payload.len()];
    let mut n = 0;
    while n < got.len() {
        s.set_read_timeout(Some(left(deadline)?))?;
        match s.read(&mut got[n..])? {
            0 => return Ok(false),
            k => n += k,
        }
    }
    Ok(got == payload)
}

fn udp(to: SocketAddr, payload: &[u8], deadline: Instant) -> std::io::Result<bool> {
    let s = if to.is_ipv6() { UdpSocket::bind(("::", 0))? } else { UdpSocket::bind(("0.0.0.0", 0))? };
    // Connected, so only the destination's reply is accepted and ICMP errors surface.
    s.connect(to)?;
    s.send(payload)?;
    let mut buf = [0u8; 2048];
    loop {
        s.set_read_timeout(Some(left(deadline)?))?;
        let n = s.recv(&mut buf)?;
        if &buf[..n] == payload {
            return Ok(true);
        }
    }
}
