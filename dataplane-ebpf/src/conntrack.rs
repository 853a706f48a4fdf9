//! Connection tracking: replies of allowed flows pass, and a policy change reaches
//! established flows through the revision stored in each entry.

use bulkhead_common::{CtValueV1, ct_flags, proto};

use crate::parse::{Flow, TCP_FIN, TCP_RST};

/// Records a packet on an existing entry.
#[inline(always)]
pub fn touch<A>(ct: &mut CtValueV1, f: &Flow<A>, len: u32, now: u64, is_reply: bool) {
    ct.last_seen_ns = now;
    ct.packets += 1;
    ct.bytes += len as u64;
    if is_reply {
        ct.flags |= ct_flags::SEEN_REPLY;
    }
    if f.protocol == proto::TCP && f.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        ct.flags |= ct_flags::CLOSING;
    }
}

/// A fresh entry for the first packet of an allowed flow.
#[inline(always)]
pub fn new_entry<A>(f: &Flow<A>, len: u32, now: u64, dir: u8, rev: u32) -> CtValueV1 {
    let mut ct = CtValueV1 {
        last_seen_ns: now,
        created_ns: now,
        packets: 1,
        bytes: len as u64,
        policy_rev: rev,
        origin_direction: dir,
        protocol: f.protocol,
        _pad: [0; 2],
        flags: 0,
        _pad2: 0,
    };
    if f.protocol == proto::TCP && f.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        ct.flags |= ct_flags::CLOSING;
    }
    ct
}
