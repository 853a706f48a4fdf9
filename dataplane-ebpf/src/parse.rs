//! Header parsing into the flow tuple the policy and conntrack work on.

use bulkhead_common::{counters, proto};

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;

/// What a frame is, as far as policy cares.
pub enum Frame {
    Ipv4(Flow),
    /// An ICMP error (destination unreachable, time exceeded, parameter problem, source
    /// quench): `quoted` is the tuple of the packet it quotes, as that packet was sent.
    IcmpError { saddr_be: [u8; 4], quoted: Flow },
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

/// The tuple of the other direction of `f`.
#[inline(always)]
pub fn reversed(f: &Flow) -> Flow {
    Flow { saddr_be: f.daddr_be, daddr_be: f.saddr_be, sport_be: f.dport_be, dport_be: f.sport_be, ..*f }
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

/// Longest IPv4 header (IHL 15).
const IPV4_MAX_HLEN: usize = 60;
/// Bytes from the frame's start the parser may read: Ethernet, the longest IPv4 header, an
/// ICMP header, the quoted packet's longest IPv4 header and its first 8 L4 bytes. The caller
/// pulls this much into the linear part before giving up on a frame.
pub const MAX_PARSE_LEN: usize = ETH_HLEN + IPV4_MAX_HLEN + 8 + IPV4_MAX_HLEN + 8;

/// ICMP types that quote the packet that caused them.
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_SOURCE_QUENCH: u8 = 4;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROB: u8 = 12;

/// Parses an Ethernet frame in `[data, data_end)`. Returns `None` when the headers are not in
/// the linear part; the caller may pull data (up to [`MAX_PARSE_LEN`]) and retry once.
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
    // IHL is 4 bits: masking keeps the offset provably bounded for the verifier.
    let l4_off = ETH_HLEN + (ihl & 0x3c);
    let flow = l4_flow(data, data_end, l4_off, ip.saddr, ip.daddr, ip.protocol, false)?;
    if ip.protocol == proto::ICMP {
        let ty = (flow.policy_port >> 8) as u8;
        if matches!(ty, ICMP_DEST_UNREACH | ICMP_SOURCE_QUENCH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROB) {
            return quoted(data, data_end, l4_off + 8, ip.saddr);
        }
    }
    Some(Frame::Ipv4(flow))
}

/// The packet an ICMP error quotes, from its IPv4 header at `off`. An error quoting anything
/// but the first fragment of an IPv4 packet with its ports is malformed (fail-closed).
/// `None` when the quote is not in the linear part (the caller pulls and retries once).
#[inline(always)]
fn quoted(data: usize, data_end: usize, off: usize, outer_saddr: [u8; 4]) -> Option<Frame> {
    let ip: *const Ipv4Hdr = ptr_at(data, data_end, off)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    let ihl = ((ip.ver_ihl & 0x0f) as usize) * 4;
    if ip.ver_ihl >> 4 != 4 || ihl < 20 || u16::from_be_bytes(ip.frag_off) & 0x1fff != 0 {
        return Some(Frame::Drop(counters::DROP_MALFORMED));
    }
    let f = l4_flow(data, data_end, off + (ihl & 0x3c), ip.saddr, ip.daddr, ip.protocol, true)?;
    // Only echo is tracked among ICMP flows; an error about an error is never sent (RFC 1122).
    let ty = (f.policy_port >> 8) as u8;
    if f.protocol == proto::ICMP && ty != 8 && ty != 0 {
        return Some(Frame::Drop(counters::DROP_ICMP_UNRELATED));
    }
    Some(Frame::IcmpError { saddr_be: outer_saddr, quoted: f })
}

/// The flow tuple from the L4 header at `l4_off`. `None` when the header is not in the linear
/// part. Quoted packets (`is_quoted`) only carry 8 L4 bytes, so their TCP flags stay 0.
#[inline(always)]
fn l4_flow(data: usize, data_end: usize, l4_off: usize, saddr: [u8; 4], daddr: [u8; 4], protocol: u8, is_quoted: bool) -> Option<Flow> {
    let mut flow = Flow { saddr_be: saddr, daddr_be: daddr, sport_be: [0; 2], dport_be: [0; 2], policy_port: 0, protocol, tcp_flags: 0 };
    match protocol {
        proto::TCP | proto::UDP | proto::SCTP => {
            let l4: *const [u8; 4] = ptr_at(data, data_end, l4_off)?;
            // SAFETY: bounds checked.
            let l4 = unsafe { *l4 };
            flow.sport_be = [l4[0], l4[1]];
            flow.dport_be = [l4[2], l4[3]];
            if protocol == proto::TCP && !is_quoted {
                let h: *const L4Head = ptr_at(data, data_end, l4_off)?;
                // SAFETY: bounds checked.
                flow.tcp_flags = unsafe { (*h).b[13] };
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
    Some(flow)
}
