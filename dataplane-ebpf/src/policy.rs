//! Policy verdict for a new flow: a fixed number of map lookups, whatever the number of rules,
//! tiers or policies. The compiler stores complete verdicts, so the first hit is the answer.

use aya_ebpf::maps::{LpmTrie, lpm_trie::Key};
use bulkhead_common::{
    IpCacheKeyV1, NO_POLICY, POLICY_KEY_FULL_BITS, PolicyKeyV1, PolicyValueV2, action, identity,
    proto,
};

use crate::maps::{IPCACHE, POLICY, STAGED};

/// Identity of a remote address (WORLD when no prefix covers it).
#[inline(always)]
pub fn peer_identity(remote_be: [u8; 4]) -> u32 {
    match IPCACHE.get(Key::new(32, IpCacheKeyV1 { addr_be: remote_be })) {
        Some(info) => info.identity,
        None => identity::WORLD,
    }
}

/// The verdict no tier applies to: allow, decided by no policy.
pub const DEFAULT_ALLOW: PolicyValueV2 = PolicyValueV2 {
    policy_index: NO_POLICY,
    log_policy_index: NO_POLICY,
    rule_index: 0,
    log_rule_index: 0,
    tier_index: u16::MAX,
    action: action::ALLOW,
    flags: 0,
};

/// Looks up (peer, proto), (peer, any), (any, proto), (any, any) in `map`; first hit wins.
#[inline(always)]
pub fn judge(
    map: &LpmTrie<PolicyKeyV1, PolicyValueV2>,
    local: u32,
    peer: u32,
    dir: u8,
    protocol: u8,
    port: u16,
) -> PolicyValueV2 {
    let local_be = local.to_be_bytes();
    let port_be = port.to_be_bytes();
    let mut i = 0;
    while i < 4 {
        let p = if i < 2 { peer } else { identity::ANY };
        let pr = if i % 2 == 0 { protocol } else { proto::ANY };
        i += 1;
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
        if let Some(v) = map.get(&key) {
            return *v;
        }
    }
    DEFAULT_ALLOW
}

/// Enforced verdict.
#[inline(always)]
pub fn enforced(local: u32, peer: u32, dir: u8, protocol: u8, port: u16) -> PolicyValueV2 {
    judge(&POLICY, local, peer, dir, protocol, port)
}

/// Staged (counterfactual) verdict.
#[inline(always)]
pub fn staged(local: u32, peer: u32, dir: u8, protocol: u8, port: u16) -> PolicyValueV2 {
    judge(&STAGED, local, peer, dir, protocol, port)
}
