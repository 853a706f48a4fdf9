//! Policy verdict for a new flow: a fixed number of map lookups, whatever the number of rules.

use aya_ebpf::maps::lpm_trie::Key;
use bulkhead_common::{
    IpCacheKeyV1, POLICY_KEY_FULL_BITS, PolicyKeyV1, action, counters, direction, ep_flags,
    identity, proto,
};

use crate::maps::{IPCACHE, POLICY};

/// A verdict and the counter that explains it.
pub struct Verdict {
    pub allow: bool,
    pub counter: u32,
}

/// Judges a new flow of the endpoint with identity `local` and `flags`, in `dir`, with the
/// remote address `remote_be`, protocol and policy port.
#[inline(always)]
pub fn judge(local: u32, flags: u32, dir: u8, remote_be: [u8; 4], protocol: u8, port: u16) -> Verdict {
    let (peer, peer_cidr) = match IPCACHE.get(Key::new(32, IpCacheKeyV1 { addr_be: remote_be })) {
        Some(info) => (info.identity, info.cidr_identity),
        None => (identity::WORLD, identity::ANY),
    };
    let mut best_rank = u32::MAX;
    let mut best_action = 0u8;
    let local_be = local.to_be_bytes();
    let port_be = port.to_be_bytes();
    // Peers from most to least specific; the CIDR identity only when it adds something.
    let peers = [peer, peer_cidr, identity::ANY];
    let mut i = 0;
    while i < 3 {
        let p = peers[i];
        i += 1;
        if i == 2 && (p == identity::ANY || p == peer) {
            continue;
        }
        let mut j = 0;
        while j < 2 {
            let pr = if j == 0 { protocol } else { proto::ANY };
            j += 1;
            let key = Key::new(
                POLICY_KEY_FULL_BITS,
                PolicyKeyV1 {
                    local_identity_be: local_be,
                    peer_identity_be: p.to_be_bytes(),
                    direction: dir,
                    protocol: pr,
                    port_be,
                },
            );
            if let Some(v) = POLICY.get(&key) {
                if v.rank < best_rank {
                    best_rank = v.rank;
                    best_action = v.action;
                }
            }
        }
    }
    if best_action == action::ALLOW {
        return Verdict { allow: true, counter: counters::ALLOW_POLICY };
    }
    if best_action != 0 {
        // DENY, or an action this program does not know: fail closed.
        return Verdict { allow: false, counter: counters::DENY_POLICY };
    }
    let isolated = if dir == direction::INGRESS {
        flags & ep_flags::INGRESS_ISOLATED != 0
    } else {
        flags & ep_flags::EGRESS_ISOLATED != 0
    };
    if isolated {
        Verdict { allow: false, counter: counters::DENY_POLICY }
    } else {
        Verdict { allow: true, counter: counters::ALLOW_NOT_ISOLATED }
    }
}
