//! Network behaviour: outbound flows judged against the profile's peers and ports, and port
//! scans (many distinct unlearned destinations within a short window). Pure decisions; the
//! detector applies them (isolation map, pause, terminate, alert).

use std::collections::{BTreeSet, VecDeque};

use serde::{Deserialize, Serialize};

use super::profile::{Peer, Profile, Protocol};

/// Port-scan thresholds: a scan is `distinct_ports` different destination ports on one peer,
/// or `distinct_peers` different peers, all outside the profile, within `window_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScanConfig {
    #[serde(default = "default_ports")]
    pub distinct_ports: u32,
    #[serde(default = "default_peers")]
    pub distinct_peers: u32,
    #[serde(default = "default_window")]
    pub window_ms: u64,
}

// Defaults: nmap's default top-ports scan touches 1,000 ports in well under a second, a
// curious shell a handful; 10 unlearned ports on one peer in 10 s is far outside what a
// learned client does (learned destinations never count). Peers: 16, because clients of a
// scaled-out service legitimately reach a new replica now and then.
fn default_ports() -> u32 {
    10
}
fn default_peers() -> u32 {
    16
}
fn default_window() -> u64 {
    10_000
}

impl Default for ScanConfig {
    fn default() -> Self {
        ScanConfig { distinct_ports: default_ports(), distinct_peers: default_peers(), window_ms: default_window() }
    }
}

/// What an outbound flow outside the profile is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Finding {
    /// A peer never seen on any port.
    NewPeer,
    /// A known peer on a port/protocol never seen.
    NewPort,
    /// The flow completed a port scan.
    PortScan,
    /// An inbound flow from a client (or to a port) the profile never saw.
    NewInbound,
}

impl Finding {
    /// The alert kind.
    pub fn kind(self) -> &'static str {
        match self {
            Finding::NewPeer => "new-peer",
            Finding::NewPort => "new-port",
            Finding::PortScan => "port-scan",
            Finding::NewInbound => "new-inbound",
        }
    }
}

/// Recent unlearned destinations of one workload.
#[derive(Debug, Default)]
pub struct ScanWindow {
    hits: VecDeque<(u64, Peer, u16)>,
}

impl ScanWindow {
    /// Records an unlearned destination at `ts_ns`; returns (distinct ports on this peer,
    /// distinct peers) within the window when a threshold is reached (the window then starts
    /// over, so one scan raises one alert).
    pub fn push(&mut self, cfg: &ScanConfig, ts_ns: u64, peer: &Peer, port: u16) -> Option<(usize, usize)> {
        let window_ns = cfg.window_ms.saturating_mul(1_000_000);
        while self.hits.front().is_some_and(|(t, _, _)| ts_ns.saturating_sub(*t) > window_ns) {
            self.hits.pop_front();
        }
        self.hits.push_back((ts_ns, peer.clone(), port));
        let ports: BTreeSet<u16> = self.hits.iter().filter(|(_, p, _)| p == peer).map(|(_, _, port)| *port).collect();
        let peers: BTreeSet<&Peer> = self.hits.iter().map(|(_, p, _)| p).collect();
        let (np, nq) = (ports.len(), peers.len());
        if np >= cfg.distinct_ports as usize || nq >= cfg.distinct_peers as usize {
            self.hits.clear();
            return Some((np, nq));
        }
        None
    }
}

/// Judges an outbound flow of a workload in monitor or protect mode: what it violates.
/// Learned destinations never count towards a scan.
pub fn judge(profile: &Profile, window: &mut ScanWindow, cfg: &ScanConfig, ts_ns: u64, peer: &Peer, port: u16, protocol: Protocol) -> Vec<(Finding, Option<(usize, usize)>)> {
    let (known, peer_known) = profile.knows(peer, port, protocol);
    if known {
        return Vec::new();
    }
    let mut out = vec![(if peer_known { Finding::NewPort } else { Finding::NewPeer }, None)];
    if let Some(n) = window.push(cfg, ts_ns, peer, port) {
        out.push((Finding::PortScan, Some(n)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> Profile {
        let mut p = Profile::new("d/app=c", Default::default());
        p.learn_egress(&Peer::Workload("d/app=s".into()), 8080, Protocol::Tcp);
        p
    }

    #[test]
    fn learned_flows_pass_new_peers_and_ports_are_found() {
        let p = profile();
        let (mut w, cfg) = (ScanWindow::default(), ScanConfig::default());
        let s = Peer::Workload("d/app=s".into());
        assert!(judge(&p, &mut w, &cfg, 1, &s, 8080, Protocol::Tcp).is_empty());
        assert_eq!(judge(&p, &mut w, &cfg, 2, &s, 22, Protocol::Tcp), vec![(Finding::NewPort, None)]);
        assert_eq!(judge(&p, &mut w, &cfg, 3, &s, 8080, Protocol::Udp), vec![(Finding::NewPort, None)]);
        let x = Peer::Address("10.9.9.9".parse().unwrap());
        assert_eq!(judge(&p, &mut w, &cfg, 4, &x, 8080, Protocol::Tcp), vec![(Finding::NewPeer, None)]);
    }

    #[test]
    fn scan_needs_distinct_ports_within_the_window() {
        let p = profile();
        let cfg = ScanConfig { distinct_ports: 5, distinct_peers: 100, window_ms: 1_000 };
        let s = Peer::Workload("d/app=s".into());
        let ms = 1_000_000;
        // The same unlearned port again and again is no scan.
        let mut w = ScanWindow::default();
        for i in 0..50 {
            assert_eq!(judge(&p, &mut w, &cfg, i * ms, &s, 22, Protocol::Tcp).len(), 1);
        }
        // Distinct ports spread wider than the window are no scan.
        let mut w = ScanWindow::default();
        for i in 0..10u64 {
            assert_eq!(judge(&p, &mut w, &cfg, i * 400 * ms, &s, 1000 + i as u16, Protocol::Tcp).len(), 1, "port {i}");
        }
        // Five distinct ports within the window are; the learned port never counts.
        let mut w = ScanWindow::default();
        let mut found = None;
        for i in 0..5u64 {
            assert!(judge(&p, &mut w, &cfg, i * ms, &s, 8080, Protocol::Tcp).is_empty());
            let f = judge(&p, &mut w, &cfg, i * ms, &s, 2000 + i as u16, Protocol::Tcp);
            if f.len() == 2 {
                found = Some((i, f[1]));
            }
        }
        assert_eq!(found, Some((4, (Finding::PortScan, Some((5, 1))))));
    }

    #[test]
    fn scan_across_peers() {
        let p = profile();
        let cfg = ScanConfig { distinct_ports: 100, distinct_peers: 3, window_ms: 1_000 };
        let mut w = ScanWindow::default();
        let r: Vec<usize> = (1..=3u8)
            .map(|i| judge(&p, &mut w, &cfg, i as u64, &Peer::Address([10, 0, 0, i].into()), 22, Protocol::Tcp).len())
            .collect();
        assert_eq!(r, vec![1, 1, 2]);
    }
}
