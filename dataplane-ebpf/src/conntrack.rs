//! Connection tracking: replies of allowed flows pass, and a policy change reaches
//! established flows through the revision stored in each entry. Each entry counts its
//! packets and bytes both ways, which the flow's end record carries.

use bulkhead_common::{CtValueV2, ct_flags, proto};

use crate::parse::{Flow, TCP_FIN, TCP_RST};

/// Records a packet on an existing entry. Returns true once per flow, for the packet that
/// ends a TCP connection (an RST, or the second side's FIN): the caller reports the end.
#[inline(always)]
pub fn touch<A>(ct: &mut CtValueV2, f: &Flow<A>, len: u32, now: u64, is_reply: bool) -> bool {
    ct.last_seen_ns = now;
    if is_reply {
        ct.packets_reply += 1;
        ct.bytes_reply += len as u64;
        ct.flags |= ct_flags::SEEN_REPLY;
    } else {
        ct.packets_orig += 1;
        ct.bytes_orig += len as u64;
    }
    if f.protocol != proto::TCP || f.tcp_flags & (TCP_FIN | TCP_RST) == 0 {
        return false;
    }
    ct.flags |= ct_flags::CLOSING;
    if f.tcp_flags & TCP_FIN != 0 {
        ct.flags |= if is_reply { ct_flags::FIN_REPLY } else { ct_flags::FIN_ORIG };
    }
    let both_fins = ct_flags::FIN_ORIG | ct_flags::FIN_REPLY;
    let ends = f.tcp_flags & TCP_RST != 0 || ct.flags & both_fins == both_fins;
    if ends && ct.flags & ct_flags::ENDED == 0 {
        ct.flags |= ct_flags::ENDED;
        return true;
    }
    false
}

/// A fresh entry for the first packet of an allowed flow; `origin_hi` says which end of
/// the key sent it.
#[inline(always)]
pub fn new_entry<A>(f: &Flow<A>, len: u32, now: u64, dir: u8, rev: u32, origin_hi: bool) -> CtValueV2 {
    let mut ct = CtValueV2 {
        last_seen_ns: now,
        created_ns: now,
        packets_orig: 1,
        bytes_orig: len as u64,
        packets_reply: 0,
        bytes_reply: 0,
        policy_rev: rev,
        origin_direction: dir,
        protocol: f.protocol,
        _pad: [0; 2],
        flags: if origin_hi { ct_flags::ORIGIN_HI } else { 0 },
        _pad2: 0,
    };
    if f.protocol == proto::TCP && f.tcp_flags & (TCP_FIN | TCP_RST) != 0 {
        ct.flags |= ct_flags::CLOSING;
    }
    ct
}
