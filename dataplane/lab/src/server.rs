//! Echo servers: the `bulkhead lab serve` process, and starting it inside a pod.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};

/// Serves TCP echo and UDP echo on `::` (both families: a dual-stack socket) until stdin reaches EOF (the lab closed it or died).
///
/// Prints `ready` on stdout once every socket is bound, which is what the lab waits for.
pub fn serve(tcp: &[u16], udp: &[u16]) -> Result<()> {
    for &port in tcp {
        let l = TcpListener::bind(("::", port)).map_err(|e| LabError::Sys { context: format!("bind TCP {port}"), source: e })?;
        std::thread::spawn(move || {
            for conn in l.incoming().flatten() {
                std::thread::spawn(move || echo_tcp(conn));
            }
        });
    }
    for &port in udp {
        let s = UdpSocket::bind(("::", port)).map_err(|e| LabError::Sys { context: format!("bind UDP {port}"), source: e })?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 65536];
            while let Ok((n, peer)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], peer);
            }
        });
    }
    println!("ready");
    std::io::stdout().flush().ok();
    // Tying our life to the pipe means a crashed lab leaves no server behind.
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    Ok(())
}

fn echo_tcp(mut conn: TcpStream) {
    let mut buf = [0u8; 16384];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// A running echo server inside a pod.
pub(crate) struct Server {
    pub child: Child,
    // Held only so that dropping it (EOF) stops the server.
    pub _stdin: ChildStdin,
}

/// The binary to run as the echo server: `$BULKHEAD_BIN`, else the running executable.
pub fn server_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("BULKHEAD_BIN") {
        return Ok(PathBuf::from(p));
    }
    std::env::current_exe().map_err(|e| LabError::Sys { context: "current_exe".into(), source: e })
}

/// Starts `bin lab serve` inside `netns` and `cgroup`; returns once it has printed `ready`
/// (via [`wait_ready`]).
pub(crate) fn spawn_in_pod(bin: &Path, netns: &str, cgroup: &Path, tcp: &[u16], udp: &[u16]) -> Result<(Server, mpsc::Receiver<String>)> {
    let join = |v: &[u16]| v.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
    let mut cmd = Command::new(bin);
    cmd.args(["lab", "serve"]);
    if !tcp.is_empty() {
        cmd.args(["--tcp", &join(tcp)]);
    }
    if !udp.is_empty() {
        cmd.args(["--udp", &join(udp)]);
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = crate::netns::spawn_in(netns, cgroup, cmd)?;
    let stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line.trim().to_string());
    });
    Ok((Server { child, _stdin: stdin }, rx))
}

/// Waits until the server's first stdout line is `ready`.
pub(crate) fn wait_ready(netns: &str, rx: &mpsc::Receiver<String>, deadline: Instant) -> Result<()> {
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    match rx.recv_timeout(left) {
        Ok(l) if l == "ready" => Ok(()),
        Ok(l) => Err(LabError::Server { netns: netns.into(), message: format!("exited or said {l:?} instead of \"ready\"") }),
        Err(_) => Err(LabError::Server { netns: netns.into(), message: "not ready within 10 s".into() }),
    }
}
