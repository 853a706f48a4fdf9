//! Header parsing into the flow tuple the policy and conntrack work on.

use bulkhead_common::{counters, proto};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;

/// What a frame is, as far as policy cares.
pub enum Frame {
    Ipv4(Flow),
    /// Passes without policy; the counter says why.
    Pass(u32),
    /// Dropped; the counter says why.
    Drop(u32),
}

/// An IPv4 flow tuple. Addresses and ports stay in network order, as in the packet.
#[derive(Clone, Copy)]
pub struct Flow {
    pub saddr_be: [u8; 4],
    pub daddr_be: [u8; 4],
    pub sport_be: [u8; 2],
    pub dport_be: [u8; 2],
    /// Port used for policy lookups: the destination port, or ICMP `type << 8 | code`.
    pub policy_port: u16,
    pub protocol: u8,
    pub tcp_flags: u8,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

#[inline(always)]
fn ptr_at<T>(data: usize, data_end: usize, offset: usize) -> Option<*const T> {
    let start = data + offset;
    if start + core::mem::size_of::<T>() > data_end {
        return None;
    }
    Some(start as *const T)
}

#[repr(C)]
struct Ipv4Hdr {
    ver_ihl: u8,
    tos: u8,
    tot_len: [u8; 2],
    id: [u8; 2],
    frag_off: [u8; 2],
    ttl: u8,
    protocol: u8,
    check: [u8; 2],
    saddr: [u8; 4],
    daddr: [u8; 4],
}

/// First 14 bytes after the IP header: enough for TCP ports and flags, UDP/SCTP ports and the
/// ICMP echo identifier.
#[repr(C)]
struct L4Head {
    b: [u8; 14],
}

/// Parses an Ethernet frame in `[data, data_end)`. Returns `None` when the headers are not in
/// the linear part; the caller may pull data and retry once.
#[inline(always)]
pub fn parse(data: usize, data_end: usize) -> Option<Frame> {
    let eth_type: *const [u8; 2] = ptr_at(data, data_end, 12)?;
    // SAFETY: bounds checked by ptr_at.
    let eth_type = u16::from_be_bytes(unsafe { *eth_type });
    match eth_type {
        ETH_P_IP => {}
        ETH_P_ARP => return Some(Frame::Pass(counters::PASS_ARP)),
        ETH_P_IPV6 => return Some(Frame::Drop(counters::DROP_IPV6)),
        _ => return Some(Frame::Drop(counters::DROP_UNKNOWN_L2)),
    }
    let ip: *const Ipv4Hdr = ptr_at(data, data_end, ETH_HLEN)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    let ihl = ((ip.ver_ihl & 0x0f) as usize) * 4;
    if ip.ver_ihl >> 4 != 4 || ihl < 20 {
        return Some(Frame::Drop(counters::DROP_MALFORMED));
    }
    let frag = u16::from_be_bytes(ip.frag_off) & 0x1fff;
    if frag != 0 {
        return Some(Frame::Drop(counters::DROP_FRAGMENT));
    }
    let mut flow = Flow {
        saddr_be: ip.saddr,
        daddr_be: ip.daddr,
        sport_be: [0; 2],
        dport_be: [0; 2],
        policy_port: 0,
        protocol: ip.protocol,
        tcp_flags: 0,
    };
    let l4_off = ETH_HLEN + ihl;
    match ip.protocol {
        proto::TCP | proto::UDP | proto::SCTP => {
            let need = if ip.protocol == proto::TCP { 14 } else { 4 };
            if need == 14 {
                let l4: *const L4Head = ptr_at(data, data_end, l4_off)?;
                // SAFETY: bounds checked.
                let l4 = unsafe { &*l4 };
                flow.tcp_flags = l4.b[13];
                flow.sport_be = [l4.b[0], l4.b[1]];
                flow.dport_be = [l4.b[2], l4.b[3]];
            } else {
                let l4: *const [u8; 4] = ptr_at(data, data_end, l4_off)?;
                // SAFETY: bounds checked.
                let l4 = unsafe { *l4 };
                flow.sport_be = [l4[0], l4[1]];
                flow.dport_be = [l4[2], l4[3]];
            }
            flow.policy_port = u16::from_be_bytes(flow.dport_be);
        }
        proto::ICMP => {
            let l4: *const [u8; 8] = ptr_at(data, data_end, l4_off)?;
            // SAFETY: bounds checked.
            let l4 = unsafe { *l4 };
            let (ty, code) = (l4[0], l4[1]);
            flow.policy_port = ((ty as u16) << 8) | code as u16;
            // Echo request (8) and reply (0) are tracked by their identifier, so a reply finds
            // the request's entry with the tuple reversed.
            if ty == 8 || ty == 0 {
                flow.sport_be = [l4[4], l4[5]];
                flow.dport_be = [l4[4], l4[5]];
            }
        }
        _ => {}
    }
    Some(Frame::Ipv4(flow))
}
