//! Policy verdict for a new flow: a fixed number of hash lookups, whatever the number of
//! rules, tiers or policies. The compiler stores complete verdicts per slice (local identity,
//! peer, direction, protocol), so the first slice found answers.

use aya_ebpf::maps::lpm_trie::Key;
use bulkhead_common::{
    GEN_DIRECTION_BIT, IpCacheKeyV1, NO_POLICY, POLICY_KEY_FULL_BITS,
    PolicyKeyV1, PolicyValueV2, STAGED_DIRECTION_BIT, SliceKeyV1, action, identity, proto, slice_flags,
};

use crate::maps::{IPCACHE_G0, IPCACHE_G1, IPHOST_G0, IPHOST_G1, PORTS, RANGES, SLICES};

/// Identity of a remote address in policy generation `pgen`: exact (pods) first, then
/// prefixes, else WORLD.
#[inline(always)]
pub fn peer_identity(remote_be: [u8; 4], pgen: u8) -> u32 {
    // Each generation with its own call sites: a map pointer chosen at run time would keep
    // the verifier from inlining the lookup.
    if pgen == 0 {
        // SAFETY: value copied out immediately.
        if let Some(info) = unsafe { IPHOST_G0.get(&remote_be) } {
            return info.identity;
        }
        match IPCACHE_G0.get(Key::new(32, IpCacheKeyV1 { addr_be: remote_be })) {
            Some(info) => info.identity,
            None => identity::WORLD,
        }
    } else {
        // SAFETY: value copied out immediately.
        if let Some(info) = unsafe { IPHOST_G1.get(&remote_be) } {
            return info.identity;
        }
        match IPCACHE_G1.get(Key::new(32, IpCacheKeyV1 { addr_be: remote_be })) {
            Some(info) => info.identity,
            None => identity::WORLD,
        }
    }
}

/// The verdict when no tier applies: allow, decided by no policy.
pub const DEFAULT_ALLOW: PolicyValueV2 = PolicyValueV2 {
    policy_index: NO_POLICY,
    log_policy_index: NO_POLICY,
    rule_index: 0,
    log_rule_index: 0,
    tier_index: u16::MAX,
    action: action::ALLOW,
    flags: 0,
};

/// Slices (peer, proto), (peer, any), (any, proto), (any, any): the first that exists answers,
/// through its port exceptions if it has any. `dir` carries the staged and generation bits.
#[inline(always)]
fn judge(local: u32, peer: u32, dir: u8, protocol: u8, port: u16) -> PolicyValueV2 {
    let local_be = local.to_be_bytes();
    let mut i = 0;
    while i < 4 {
        let p = if i < 2 { peer } else { identity::ANY };
        let pr = if i % 2 == 0 { protocol } else { proto::ANY };
        i += 1;
        let sk = SliceKeyV1 {
            local_identity_be: local_be,
            peer_identity_be: p.to_be_bytes(),
            direction: dir,
            protocol: pr,
            _pad: [0; 2],
        };
        // SAFETY: value copied out before any other map call.
        let Some(slice) = (unsafe { SLICES.get(&sk) }).copied() else { continue };
        if slice.flags & (slice_flags::HAS_PORTS | slice_flags::HAS_RANGES) != 0 {
            let key = PolicyKeyV1 {
                local_identity_be: local_be,
                peer_identity_be: sk.peer_identity_be,
                direction: dir,
                protocol: pr,
                port_be: port.to_be_bytes(),
            };
            if slice.flags & slice_flags::HAS_PORTS != 0 {
                // SAFETY: copied out.
                if let Some(v) = unsafe { PORTS.get(&key) } {
                    return *v;
                }
            }
            if slice.flags & slice_flags::HAS_RANGES != 0 {
                if let Some(v) = RANGES.get(&Key::new(POLICY_KEY_FULL_BITS, key)) {
                    return *v;
                }
            }
        }
        return slice.verdict;
    }
    DEFAULT_ALLOW
}

/// The direction byte of keys of generation `pgen`.
#[inline(always)]
fn with_gen(dir: u8, pgen: u8) -> u8 {
    if pgen != 0 { dir | GEN_DIRECTION_BIT } else { dir }
}

/// Enforced verdict in policy generation `pgen`.
#[inline(always)]
pub fn enforced(local: u32, peer: u32, dir: u8, protocol: u8, port: u16, pgen: u8) -> PolicyValueV2 {
    judge(local, peer, with_gen(dir, pgen), protocol, port)
}

/// Staged (counterfactual) verdict in policy generation `pgen`.
#[inline(always)]
pub fn staged(local: u32, peer: u32, dir: u8, protocol: u8, port: u16, pgen: u8) -> PolicyValueV2 {
    judge(local, peer, with_gen(dir | STAGED_DIRECTION_BIT, pgen), protocol, port)
}
