//! Header parsing into the flow tuple the policy and conntrack work on.

use bulkhead_common::{IPV6_MAX_EXT_HEADERS, counters, proto};

use crate::family::In6;

pub const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;

/// What a frame is, as far as policy cares.
pub enum Frame {
    Ipv4(Flow4),
    /// An ICMP error (destination unreachable, time exceeded, parameter problem, source
    /// quench): `quoted` is the tuple of the packet it quotes, as that packet was sent.
    IcmpError { saddr_be: [u8; 4], quoted: Flow4 },
    /// Passes without policy; the counter says why.
    Pass(u32),
    /// Dropped; the counter says why.
    Drop(u32),
}

/// A flow tuple of either family (`A`: `[u8; 4]` or [`crate::family::In6`]). Addresses and ports stay
/// in network order, as in the packet.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Flow<A> {
    pub saddr_be: A,
    pub daddr_be: A,
    pub sport_be: [u8; 2],
    pub dport_be: [u8; 2],
    /// Port used for policy lookups: the destination port, or ICMP / ICMPv6 `type << 8 | code`.
    pub policy_port: u16,
    pub protocol: u8,
    pub tcp_flags: u8,
}

pub type Flow4 = Flow<[u8; 4]>;
pub type Flow6 = Flow<crate::family::In6>;

/// The tuple of the other direction of `f`.
#[inline(always)]
pub fn reversed<A: Copy>(f: &Flow<A>) -> Flow<A> {
    Flow { saddr_be: f.daddr_be, daddr_be: f.saddr_be, sport_be: f.dport_be, dport_be: f.sport_be, ..*f }
}

/// Turns `f` into its other direction, in place (no copy on the BPF stack).
#[inline(always)]
pub fn reverse<A: Copy>(f: &mut Flow<A>) {
    core::mem::swap(&mut f.saddr_be, &mut f.daddr_be);
    core::mem::swap(&mut f.sport_be, &mut f.dport_be);
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The four bytes at `p` in packet order, loaded as one word. As `[u8; 4]` (alignment 1)
/// LLVM's BPF backend loads byte by byte and assembles the word in registers: four loads and
/// six shifts and ors per address, and registers the rest of the path then spills. x86, where
/// these programs run, loads any alignment, and the verifier requires aligned packet access
/// only on machines that cannot (as C programs read `iph->saddr`); IPv4 addresses and ports
/// behind a 14-byte Ethernet header are 2-aligned.
///
/// # Safety
/// `p` points at four readable bytes.
#[inline(always)]
pub unsafe fn word(p: *const [u8; 4]) -> [u8; 4] {
    // SAFETY: readable per the caller; alignment as above.
    #[allow(clippy::cast_ptr_alignment)]
    unsafe { core::ptr::read_volatile(p as *const u32) }.to_ne_bytes()
}

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
/// Bytes from the frame's start the parser may read: for IPv4 Ethernet, the longest IPv4
/// header, an ICMP header, the quoted packet's longest IPv4 header and its first 8 L4 bytes;
/// for IPv6 the extension headers up to [`IPV6_MAX_L4_OFF`] and the same quote. The caller
/// pulls this much into the linear part before giving up on a frame.
pub const MAX_PARSE_LEN: usize = max(ETH_HLEN + IPV4_MAX_HLEN + 8 + IPV4_MAX_HLEN + 8, IPV6_MAX_L4_OFF + 8 + IPV6_HLEN + 8);

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

const IPV6_HLEN: usize = 40;
/// The transport header of an IPv6 packet must start within this many bytes of the frame:
/// a bound the verifier can see, and room for several extension headers.
const IPV6_MAX_L4_OFF: usize = 512;

/// ICMP types that quote the packet that caused them.
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_SOURCE_QUENCH: u8 = 4;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROB: u8 = 12;

/// Whether the Ethernet frame in `[data, data_end)` carries IPv6 (false when too short to say:
/// [`parse`] then fails it closed).
#[inline(always)]
pub fn is_ipv6(data: usize, data_end: usize) -> bool {
    match ptr_at::<[u8; 2]>(data, data_end, 12) {
        // SAFETY: bounds checked by ptr_at.
        Some(t) => u16::from_be_bytes(unsafe { *t }) == ETH_P_IPV6,
        None => false,
    }
}

/// Parses an Ethernet frame that is not IPv6 in `[data, data_end)`. Returns `None` when the headers are not in
/// the linear part; the caller may pull data (up to [`MAX_PARSE_LEN`]) and retry once.
#[inline(always)]
pub fn parse(data: usize, data_end: usize) -> Option<Frame> {
    let eth_type: *const [u8; 2] = ptr_at(data, data_end, 12)?;
    // SAFETY: bounds checked by ptr_at.
    let eth_type = u16::from_be_bytes(unsafe { *eth_type });
    match eth_type {
        ETH_P_IP => {}
        ETH_P_ARP => return Some(Frame::Pass(counters::PASS_ARP)),
        // The caller sends IPv6 to parse_v6; here it is never expected, so it fails closed.
        ETH_P_IPV6 => return Some(Frame::Drop(counters::DROP_IPV6_UNPARSED)),
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
    // SAFETY: fields of the bounds-checked header.
    let (saddr, daddr) = unsafe { (word(&ip.saddr), word(&ip.daddr)) };
    let flow = l4_flow(data, data_end, l4_off, saddr, daddr, ip.protocol, false)?;
    if ip.protocol == proto::ICMP {
        let ty = (flow.policy_port >> 8) as u8;
        if matches!(ty, ICMP_DEST_UNREACH | ICMP_SOURCE_QUENCH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROB) {
            return quoted(data, data_end, l4_off + 8, saddr);
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
    // SAFETY: fields of the bounds-checked header.
    let (saddr, daddr) = unsafe { (word(&ip.saddr), word(&ip.daddr)) };
    let f = l4_flow(data, data_end, off + (ihl & 0x3c), saddr, daddr, ip.protocol, true)?;
    // Only echo is tracked among ICMP flows; an error about an error is never sent (RFC 1122).
    let ty = (f.policy_port >> 8) as u8;
    if f.protocol == proto::ICMP && ty != 8 && ty != 0 {
        return Some(Frame::Drop(counters::DROP_ICMP_UNRELATED));
    }
    Some(Frame::IcmpError { saddr_be: outer_saddr, quoted: f })
}

/// The flow tuple from the L4 header at `l4_off`. `None` when the header is not in the linear part. Quoted packets (`is_quoted`) only carry
/// 8 L4 bytes, so their TCP flags stay 0.
#[inline(always)]
fn l4_flow<A: Copy>(data: usize, data_end: usize, l4_off: usize, saddr: A, daddr: A, protocol: u8, is_quoted: bool) -> Option<Flow<A>> {
    let mut flow = Flow { saddr_be: saddr, daddr_be: daddr, sport_be: [0; 2], dport_be: [0; 2], policy_port: 0, protocol, tcp_flags: 0 };
    match protocol {
        proto::TCP | proto::UDP | proto::SCTP => {
            let l4: *const [u8; 4] = ptr_at(data, data_end, l4_off)?;
            // SAFETY: bounds checked.
            let l4 = unsafe { word(l4) };
            flow.sport_be = [l4[0], l4[1]];
            flow.dport_be = [l4[2], l4[3]];
            if protocol == proto::TCP && !is_quoted {
                let h: *const L4Head = ptr_at(data, data_end, l4_off)?;
                // SAFETY: bounds checked.
                flow.tcp_flags = unsafe { (*h).b[13] };
            }
            flow.policy_port = u16::from_be_bytes(flow.dport_be);
        }
        proto::ICMP | proto::ICMPV6 => {
            let l4: *const [u8; 8] = ptr_at(data, data_end, l4_off)?;
            // SAFETY: bounds checked.
            let l4 = unsafe { *l4 };
            let (ty, code) = (l4[0], l4[1]);
            flow.policy_port = ((ty as u16) << 8) | code as u16;
            // Echo request and reply (ICMP 8/0, ICMPv6 128/129) are tracked by their
            // identifier, so a reply finds the request's entry with the tuple reversed.
            let echo = if protocol == proto::ICMP { ty == 8 || ty == 0 } else { ty == ICMP6_ECHO_REQUEST || ty == ICMP6_ECHO_REPLY };
            if echo {
                flow.sport_be = [l4[4], l4[5]];
                flow.dport_be = [l4[4], l4[5]];
            }
        }
        _ => {}
    }
    Some(flow)
}

#[repr(C)]
struct Ipv6Hdr {
    ver_tc_flow: [u8; 4],
    payload_len: [u8; 2],
    next_header: u8,
    hop_limit: u8,
    saddr: [u8; 16],
    daddr: [u8; 16],
}

impl Ipv6Hdr {
    #[inline(always)]
    fn saddr(&self) -> In6 {
        In6::at(&self.saddr)
    }
    #[inline(always)]
    fn daddr(&self) -> In6 {
        In6::at(&self.daddr)
    }
}

/// ICMPv6 echo, as the policy port's type.
pub const ICMP6_ECHO_REQUEST: u8 = 128;
pub const ICMP6_ECHO_REPLY: u8 = 129;

/// IPv6 extension headers the parser walks (RFC 8200 4.1, plus AH).
const NH_HOP_BY_HOP: u8 = 0;
const NH_ROUTING: u8 = 43;
const NH_FRAGMENT: u8 = 44;
const NH_AH: u8 = 51;
const NH_DEST_OPTS: u8 = 60;

/// Where the transport header of the IPv6 packet at `ip_off` starts and which protocol it is,
/// after at most [`IPV6_MAX_EXT_HEADERS`] extension headers. `Err(counter)`: fail closed (a
/// non-first fragment, or headers past the bound); `Ok(None)`: not in the linear part.
#[inline(always)]
fn walk_v6(data: usize, data_end: usize, ip_off: usize, first: u8) -> Result<Option<(usize, u8)>, u32> {
    let mut nh = first;
    let mut off = ip_off + IPV6_HLEN;
    for _ in 0..IPV6_MAX_EXT_HEADERS {
        let (len, next) = match nh {
            NH_HOP_BY_HOP | NH_ROUTING | NH_DEST_OPTS | NH_AH | NH_FRAGMENT => {
                let Some(h) = ptr_at::<[u8; 4]>(data, data_end, off) else { return Ok(None) };
                // SAFETY: bounds checked by ptr_at.
                let h = unsafe { *h };
                let len = if nh == NH_FRAGMENT {
                    // Offset in 8-byte units in the top 13 bits: a later fragment has no ports.
                    if (u16::from_be_bytes([h[2], h[3]]) >> 3) != 0 {
                        return Err(counters::DROP_FRAGMENT);
                    }
                    8
                } else if nh == NH_AH {
                    (h[1] as usize + 2) * 4
                } else {
                    (h[1] as usize + 1) * 8
                };
                (len, h[0])
            }
            _ => return Ok(Some((off, nh))),
        };
        nh = next;
        off += len;
        if off > IPV6_MAX_L4_OFF {
            return Err(counters::DROP_IPV6_UNPARSED);
        }
    }
    match nh {
        NH_HOP_BY_HOP | NH_ROUTING | NH_DEST_OPTS | NH_AH | NH_FRAGMENT => Err(counters::DROP_IPV6_UNPARSED),
        _ => Ok(Some((off, nh))),
    }
}

/// ICMPv6 types the network needs whatever the policy: router solicitation/advertisement,
/// neighbour solicitation/advertisement, redirect (ND, hop limit 255), and multicast listener
/// query/report/done (MLD, hop limit 1).
#[inline(always)]
fn icmp6_network(ty: u8) -> Option<u8> {
    match ty {
        133..=137 => Some(255),
        130..=132 | 143 => Some(1),
        _ => None,
    }
}

/// ICMPv6 errors that quote the packet that caused them.
#[inline(always)]
fn icmp6_error(ty: u8) -> bool {
    (1..=4).contains(&ty)
}

/// What [`parse_v6`] found; the tuple itself is in its out parameter.
pub enum Frame6 {
    /// A packet of the flow in `out`.
    Flow,
    /// An ICMPv6 error from `saddr_be` quoting the packet in `out` (as that packet was sent).
    IcmpError,
    /// Passes without policy; the counter says why.
    Pass(u32),
    /// Dropped; the counter says why.
    Drop(u32),
}

/// Parses an Ethernet frame carrying IPv6 ([`is_ipv6`]) into `out` (and, for an ICMPv6
/// error, its own source into `err_saddr`): the IPv6 tuple lives in a per-CPU scratch slot,
/// as 16-byte addresses would crowd the BPF stack. `None` as for [`parse`].
#[inline(always)]
pub fn parse_v6(data: usize, data_end: usize, out: &mut Flow6, err_saddr: &mut In6) -> Option<Frame6> {
    let ip: *const Ipv6Hdr = ptr_at(data, data_end, ETH_HLEN)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    if ip.ver_tc_flow[0] >> 4 != 6 {
        return Some(Frame6::Drop(counters::DROP_IPV6_UNPARSED));
    }
    let (l4_off, protocol) = match walk_v6(data, data_end, ETH_HLEN, ip.next_header) {
        Ok(Some(v)) => v,
        Ok(None) => return None,
        Err(c) => return Some(Frame6::Drop(c)),
    };
    l4_flow_into(data, data_end, l4_off, protocol, false, out)?;
    out.saddr_be = ip.saddr();
    out.daddr_be = ip.daddr();
    if protocol == proto::ICMPV6 {
        let ty = (out.policy_port >> 8) as u8;
        if let Some(hop_limit) = icmp6_network(ty) {
            if ip.hop_limit != hop_limit {
                return Some(Frame6::Drop(counters::DROP_ICMPV6_ND_HOPLIMIT));
            }
            return Some(Frame6::Pass(counters::PASS_ICMPV6_ND));
        }
        if icmp6_error(ty) {
            *err_saddr = ip.saddr();
            return quoted_v6(data, data_end, l4_off + 8, out);
        }
    }
    Some(Frame6::Flow)
}

/// The packet an ICMPv6 error quotes, from its IPv6 header at `off` (its extension headers
/// walked like the packet's own), into `out`. A quote of anything but a first fragment with
/// its ports, or of an ICMPv6 message other than echo, is dropped (fail-closed).
#[inline(always)]
fn quoted_v6(data: usize, data_end: usize, off: usize, out: &mut Flow6) -> Option<Frame6> {
    if off > IPV6_MAX_L4_OFF {
        return Some(Frame6::Drop(counters::DROP_IPV6_UNPARSED));
    }
    let ip: *const Ipv6Hdr = ptr_at(data, data_end, off)?;
    // SAFETY: bounds checked by ptr_at.
    let ip = unsafe { &*ip };
    if ip.ver_tc_flow[0] >> 4 != 6 {
        return Some(Frame6::Drop(counters::DROP_MALFORMED));
    }
    let (l4_off, protocol) = match walk_v6(data, data_end, off, ip.next_header) {
        Ok(Some(v)) => v,
        Ok(None) => return None,
        Err(_) => return Some(Frame6::Drop(counters::DROP_MALFORMED)),
    };
    l4_flow_into(data, data_end, l4_off, protocol, true, out)?;
    out.saddr_be = ip.saddr();
    out.daddr_be = ip.daddr();
    let ty = (out.policy_port >> 8) as u8;
    if out.protocol == proto::ICMPV6 && ty != ICMP6_ECHO_REQUEST && ty != ICMP6_ECHO_REPLY {
        return Some(Frame6::Drop(counters::DROP_ICMP_UNRELATED));
    }
    Some(Frame6::IcmpError)
}

/// [`l4_flow`] written into `out` (addresses left to the caller).
#[inline(always)]
fn l4_flow_into(data: usize, data_end: usize, l4_off: usize, protocol: u8, is_quoted: bool, out: &mut Flow6) -> Option<()> {
    let f = l4_flow(data, data_end, l4_off, (), (), protocol, is_quoted)?;
    out.sport_be = f.sport_be;
    out.dport_be = f.dport_be;
    out.policy_port = f.policy_port;
    out.protocol = f.protocol;
    out.tcp_flags = f.tcp_flags;
    Some(())
}
