//! Protect mode's outbound profile in the kernel: every destination a protect-mode workload
//! learned (peer addresses, with their ports and protocols) as entries of the endpoint's
//! learned-destination map, and the endpoint's watch flags, so TC drops a new flow outside
//! them before its first packet leaves and isolates the endpoint
//! (`dataplane-ebpf/src/learned.rs`). The user-space finding follows from the drop's event.
//!
//! A learned peer workload stands for the addresses its pods have at the last sync (the
//! profile names workloads, the kernel sees addresses), so a replica that appeared since is
//! unknown to the kernel until the next sync: the network thread then finds the flow known,
//! adds its entry and lifts the kernel's isolation ([`repair`]), and the client's retransmit
//! passes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use aya::maps::{HashMap as BpfHashMap, MapData};
use bulkhead_common::detect::{self as det, LearnedKeyV1, isolation_reason, watch_flags};

use super::profile::Protocol;
use super::{Detector, Mode, WorkloadState, map_err};
use bulkhead_loader::{Dataplane, ifmap::IsolationMap};

use crate::error::DetectorError;

/// The IP protocol number a profile's protocol has on the wire of `addr`'s family; `None`
/// where TC does not judge it (ICMPv6 is not part of the network model).
fn ip_protocol(p: Protocol, addr: &IpAddr) -> Option<u8> {
    Some(match (p, addr) {
        (Protocol::Tcp, _) => 6,
        (Protocol::Udp, _) => 17,
        (Protocol::Sctp, _) => 132,
        (Protocol::Icmp, IpAddr::V4(_)) => 1,
        (Protocol::Icmp, IpAddr::V6(_)) => return None,
    })
}

/// The key of `(addr, port, protocol)` for the endpoint behind `ifindex`; `protocol` 0 and
/// `port` 0 = the peer itself.
pub fn key(ifindex: u32, addr: IpAddr, port: u16, protocol: u8) -> LearnedKeyV1 {
    let (addr_be, family) = match addr {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (b, 4)
        }
        IpAddr::V6(a) => (a.octets(), 6),
    };
    // ICMP "ports" are echo identifiers: profiles learn 0, and so does TC.
    let port = if protocol == 1 { 0 } else { port };
    LearnedKeyV1 { ifindex, addr_be, port_be: port.to_be_bytes(), protocol, family }
}

/// The watch flags of a monitored workload's endpoint.
pub fn flags_of(w: &WorkloadState) -> u32 {
    let mut f = watch_flags::REPORT;
    if w.effective_mode() == Mode::Protect {
        if w.spec.actions.new_peer.isolate {
            f |= watch_flags::DROP_NEW_PEER;
        }
        if w.spec.actions.new_port.isolate {
            f |= watch_flags::DROP_NEW_PORT;
        }
    }
    f
}

impl Detector {
    /// Per direct interface its watch flags, and every learned-destination entry of the
    /// endpoints that drop (from their profiles and the addresses of the last sync).
    pub(crate) fn learned_plan(&self) -> (BTreeMap<u32, u32>, BTreeSet<LearnedKeyV1>) {
        let book = self.peers.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let mut by_name: HashMap<&str, Vec<IpAddr>> = HashMap::new();
        for (ip, name) in book.iter() {
            by_name.entry(name.as_str()).or_default().push(*ip);
        }
        let g = self.shared.state();
        let mut flags = BTreeMap::new();
        let mut entries = BTreeSet::new();
        for w in g.workloads.values().filter(|w| w.ifindex != 0 && bulkhead_common::ifindex_is_direct(w.ifindex)) {
            let f = flags_of(w);
            flags.insert(w.ifindex, f);
            if f & (watch_flags::DROP_NEW_PEER | watch_flags::DROP_NEW_PORT) == 0 {
                continue;
            }
            let Some(p) = g.profiles.get(w.profile_name()) else { continue };
            for e in &p.network.egress {
                let addrs: Vec<IpAddr> = match (&e.workload, e.address) {
                    (Some(name), _) => by_name.get(name.as_str()).cloned().unwrap_or_default(),
                    (None, Some(a)) => vec![a],
                    (None, None) => Vec::new(),
                };
                for a in addrs {
                    let Some(proto) = ip_protocol(e.protocol, &a) else { continue };
                    entries.insert(key(w.ifindex, a, e.port, proto));
                    entries.insert(key(w.ifindex, a, 0, 0));
                }
            }
        }
        (flags, entries)
    }

    /// Adds the entries of `want` not written yet, or (`remove`) removes written entries not
    /// in `want`.
    pub(crate) fn write_learned(&mut self, dp: &mut Dataplane, want: &BTreeSet<LearnedKeyV1>, remove: bool) -> Result<(), DetectorError> {
        let mut written = match self.learned_written.take() {
            Some(w) => w,
            // First sync: what an earlier agent left (pinned).
            None => dp.maps.det.learned.keys().filter_map(Result::ok).collect(),
        };
        let result = (|| {
            if remove {
                let stale: Vec<LearnedKeyV1> = written.difference(want).copied().collect();
                for k in stale {
                    let _ = dp.maps.det.learned.remove(&k);
                    written.remove(&k);
                }
            } else {
                for k in want.difference(&written.clone()) {
                    dp.maps.det.learned.insert(*k, 1, 0).map_err(|e| map_err(det::map_names::LEARNED, e))?;
                    written.insert(*k);
                }
            }
            Ok(())
        })();
        self.learned_written = Some(written);
        result
    }
}

/// A flow TC dropped as unlearned that the profile knows after all (a peer's address the
/// kernel did not have yet): adds its entries so the retransmit passes, and lifts the
/// isolation TC wrote for it (not one written for another reason). Returns whether an
/// isolation was lifted.
pub(crate) fn repair(
    learned: Option<&mut BpfHashMap<MapData, LearnedKeyV1, u8>>,
    isolation: Option<&mut IsolationMap<MapData>>,
    ifindex: u32,
    addr: IpAddr,
    port: u16,
    protocol: u8,
) -> bool {
    if let Some(m) = learned {
        for k in [key(ifindex, addr, port, protocol), key(ifindex, addr, 0, 0)] {
            if let Err(e) = m.insert(k, 1, 0) {
                tracing::error!(ifindex, %addr, error = %e, "learned destination not written");
            }
        }
    }
    let Some(iso) = isolation else { return false };
    match iso.get(ifindex) {
        Ok(Some(v)) if v.reason == isolation_reason::UNLEARNED_FLOW => iso.remove(ifindex).is_ok(),
        _ => false,
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_what_tc_builds() {
        let k = key(7, "10.1.2.3".parse().unwrap(), 8080, 6);
        assert_eq!((k.addr_be[..4].to_vec(), &k.addr_be[4..], k.port_be, k.family), (vec![10, 1, 2, 3], &[0u8; 12][..], 8080u16.to_be_bytes(), 4));
        assert_eq!(key(7, "10.1.2.3".parse().unwrap(), 1234, 1).port_be, [0, 0], "ICMP has no port");
        let k6 = key(7, "fd00::1".parse().unwrap(), 53, 17);
        assert_eq!((k6.family, k6.addr_be[0], k6.addr_be[15]), (6, 0xfd, 1));
        assert_eq!(ip_protocol(Protocol::Icmp, &"fd00::1".parse().unwrap()), None);
    }
}
