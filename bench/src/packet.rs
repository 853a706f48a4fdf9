//! Test frames for `BPF_PROG_TEST_RUN` (TC programs see the Ethernet header).

use std::net::{Ipv4Addr, Ipv6Addr};

/// TCP flag bits.
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// Ethernet + IPv4 (no options) + TCP (no options) frame, 54 bytes, checksums filled in.
pub fn tcp_frame(saddr: Ipv4Addr, daddr: Ipv4Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut f = Vec::with_capacity(54);
    // Ethernet: dst, src, type IPv4.
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    // IPv4.
    let ip_start = f.len();
    f.push(0x45); // version 4, IHL 5
    f.push(0);
    f.extend_from_slice(&40u16.to_be_bytes()); // total length: 20 + 20
    f.extend_from_slice(&0x1234u16.to_be_bytes());
    f.extend_from_slice(&0x4000u16.to_be_bytes()); // DF, offset 0
    f.push(64);
    f.push(6); // TCP
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&saddr.octets());
    f.extend_from_slice(&daddr.octets());
    let csum = checksum(&f[ip_start..ip_start + 20], 0);
    f[ip_start + 10..ip_start + 12].copy_from_slice(&csum.to_be_bytes());
    // TCP.
    let tcp_start = f.len();
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&1u32.to_be_bytes()); // seq
    f.extend_from_slice(&0u32.to_be_bytes()); // ack
    f.push(5 << 4); // data offset 5
    f.push(flags);
    f.extend_from_slice(&64240u16.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
    let mut pseudo = 0u32;
    for w in [saddr.octets(), daddr.octets()] {
        pseudo += u32::from(u16::from_be_bytes([w[0], w[1]])) + u32::from(u16::from_be_bytes([w[2], w[3]]));
    }
    pseudo += 6 + 20;
    let csum = checksum(&f[tcp_start..], pseudo);
    f[tcp_start + 16..tcp_start + 18].copy_from_slice(&csum.to_be_bytes());
    f
}

/// `frame` (an Ethernet + IPv4 frame without options) with `words` 4-byte words of IPv4
/// options (NOPs, then an end-of-options byte) inserted after the IPv4 header: IHL 5 + words.
pub fn with_ip_options(frame: &[u8], words: u8) -> Vec<u8> {
    assert!(words <= 10, "IHL is at most 15");
    let n = usize::from(words) * 4;
    let mut f = frame[..34].to_vec();
    let mut opts = vec![1u8; n];
    if let Some(last) = opts.last_mut() {
        *last = 0;
    }
    f.extend_from_slice(&opts);
    f.extend_from_slice(&frame[34..]);
    f[14] = 0x40 | (5 + words);
    let total = u16::from_be_bytes([f[16], f[17]]) + n as u16;
    f[16..18].copy_from_slice(&total.to_be_bytes());
    f[24..26].copy_from_slice(&[0, 0]);
    let ihl = 20 + n;
    let csum = checksum(&f[14..14 + ihl], 0);
    f[24..26].copy_from_slice(&csum.to_be_bytes());
    f
}

/// An ICMP error (`ty`, `code`) from `saddr` to `daddr` quoting the IPv4 header and first 8
/// L4 bytes of `quoted_frame` (an Ethernet + IPv4 frame, as the quoted packet was sent).
pub fn icmp_error_frame(saddr: Ipv4Addr, daddr: Ipv4Addr, ty: u8, code: u8, quoted_frame: &[u8]) -> Vec<u8> {
    let ihl = usize::from(quoted_frame[14] & 0x0f) * 4;
    let quote = &quoted_frame[14..14 + ihl + 8];
    let mut f = Vec::new();
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f.extend_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + 8 + quote.len()) as u16;
    f.push(0x45);
    f.push(0);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&0x0001u16.to_be_bytes());
    f.extend_from_slice(&0u16.to_be_bytes());
    f.push(64);
    f.push(1); // ICMP
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&saddr.octets());
    f.extend_from_slice(&daddr.octets());
    let csum = checksum(&f[14..34], 0);
    f[24..26].copy_from_slice(&csum.to_be_bytes());
    let icmp_start = f.len();
    f.extend_from_slice(&[ty, code, 0, 0]);
    // Next-hop MTU for "fragmentation needed", unused otherwise.
    f.extend_from_slice(&[0, 0, 0x04, 0xb0]);
    f.extend_from_slice(quote);
    let csum = checksum(&f[icmp_start..], 0);
    f[icmp_start + 2..icmp_start + 4].copy_from_slice(&csum.to_be_bytes());
    f
}

/// IPv6 next-header values of the extension headers the builders insert.
pub const NH_HOP_BY_HOP: u8 = 0;
pub const NH_ROUTING: u8 = 43;
pub const NH_FRAGMENT: u8 = 44;
pub const NH_DEST_OPTS: u8 = 60;
/// Offset of the IPv6 header in a frame, and of what follows it.
const IP6: usize = 14;
const L4_6: usize = IP6 + 40;

/// Ethernet + IPv6 (hop limit 64, no extension headers) + TCP (no options) frame, 74 bytes,
/// checksum filled in.
pub fn tcp6_frame(saddr: Ipv6Addr, daddr: Ipv6Addr, sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut tcp = Vec::with_capacity(20);
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&1u32.to_be_bytes());
    tcp.extend_from_slice(&0u32.to_be_bytes());
    tcp.push(5 << 4);
    tcp.push(flags);
    tcp.extend_from_slice(&64240u16.to_be_bytes());
    tcp.extend_from_slice(&[0, 0, 0, 0]);
    ipv6_frame(saddr, daddr, 64, 6, tcp, 16)
}

/// Ethernet + IPv6 + ICMPv6 (`ty`, `code`, then `body`) with `hop_limit`, checksum filled in.
pub fn icmp6_frame(saddr: Ipv6Addr, daddr: Ipv6Addr, hop_limit: u8, ty: u8, code: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0];
    m.extend_from_slice(body);
    ipv6_frame(saddr, daddr, hop_limit, 58, m, 2)
}

/// An ICMPv6 error (`ty` 1..=4, `code`) from `saddr` to `daddr` quoting the IPv6 packet of
/// `quoted_frame` (an Ethernet + IPv6 frame, as the quoted packet was sent) from its IPv6
/// header on. Packet too big (type 2) carries an MTU of 1280.
pub fn icmp6_error_frame(saddr: Ipv6Addr, daddr: Ipv6Addr, ty: u8, code: u8, quoted_frame: &[u8]) -> Vec<u8> {
    let mut body = if ty == 2 { 1280u32.to_be_bytes().to_vec() } else { vec![0; 4] };
    body.extend_from_slice(&quoted_frame[IP6..]);
    icmp6_frame(saddr, daddr, 64, ty, code, &body)
}

/// `frame` (Ethernet + IPv6, no extension headers) with extension headers of the kinds in
/// `chain` inserted in that order after the IPv6 header, each 8 bytes (options of PadN; a
/// fragment header with `fragment_offset` in 8-byte units and the more-fragments bit set).
/// The transport checksum stays as it was (it does not cover extension headers).
pub fn with_ext_headers(frame: &[u8], chain: &[u8], fragment_offset: u16) -> Vec<u8> {
    let last_nh = frame[IP6 + 6];
    let mut f = frame[..L4_6].to_vec();
    f[IP6 + 6] = chain.first().copied().unwrap_or(last_nh);
    for (i, &kind) in chain.iter().enumerate() {
        let next = chain.get(i + 1).copied().unwrap_or(last_nh);
        let h = match kind {
            NH_FRAGMENT => {
                let off = (fragment_offset << 3) | 1;
                let o = off.to_be_bytes();
                [next, 0, o[0], o[1], 0, 0, 0x12, 0x34]
            }
            // Hdr Ext Len 0 (8 bytes): 6 bytes of options, one PadN of 4 data bytes. Routing:
            // type 0 with segments left 0, which the node ignores.
            _ => [next, 0, 1, 4, 0, 0, 0, 0],
        };
        f.extend_from_slice(&h);
    }
    f.extend_from_slice(&frame[L4_6..]);
    let payload = (f.len() - L4_6) as u16;
    f[IP6 + 4..IP6 + 6].copy_from_slice(&payload.to_be_bytes());
    f
}

/// Ethernet + IPv6 header + `l4` (next header `nh`), with the upper-layer checksum (RFC 8200
/// 8.1) written at `csum_at` within `l4`.
fn ipv6_frame(saddr: Ipv6Addr, daddr: Ipv6Addr, hop_limit: u8, nh: u8, mut l4: Vec<u8>, csum_at: usize) -> Vec<u8> {
    let mut pseudo = 0u32;
    for a in [saddr.octets(), daddr.octets()] {
        for w in a.chunks(2) {
            pseudo += u32::from(u16::from_be_bytes([w[0], w[1]]));
        }
    }
    pseudo += l4.len() as u32 + u32::from(nh);
    let csum = checksum(&l4, pseudo);
    l4[csum_at..csum_at + 2].copy_from_slice(&csum.to_be_bytes());
    let mut f = Vec::with_capacity(L4_6 + l4.len());
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f.extend_from_slice(&0x86ddu16.to_be_bytes());
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    f.push(nh);
    f.push(hop_limit);
    f.extend_from_slice(&saddr.octets());
    f.extend_from_slice(&daddr.octets());
    f.extend_from_slice(&l4);
    f
}

fn checksum(bytes: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for c in bytes.chunks(2) {
        let w = if c.len() == 2 { u16::from_be_bytes([c[0], c[1]]) } else { u16::from(c[0]) << 8 };
        sum += u32::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_layout() {
        let f = tcp_frame(Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2), 40000, 80, TCP_SYN);
        assert_eq!(f.len(), 54);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(f[14], 0x45);
        assert_eq!(&f[26..30], &[10, 0, 0, 1]);
        // TCP starts at 14 + 20: source port, destination port, then flags at offset 13.
        assert_eq!(&f[34..36], &40000u16.to_be_bytes());
        assert_eq!(&f[36..38], &80u16.to_be_bytes());
        assert_eq!(f[47], TCP_SYN);
        // A correct IPv4 header checksums to zero.
        assert_eq!(checksum(&f[14..34], 0), 0);
    }

    #[test]
    fn ipv6_frame_layout() {
        let (a, b): (Ipv6Addr, Ipv6Addr) = ("fd00::1".parse().unwrap(), "fd00::2".parse().unwrap());
        let f = tcp6_frame(a, b, 40000, 80, TCP_SYN);
        assert_eq!((f.len(), &f[12..14], f[14] >> 4, f[20], f[21]), (74, &[0x86, 0xdd][..], 6, 6, 64));
        assert_eq!(u16::from_be_bytes([f[18], f[19]]), 20, "payload length");
        assert_eq!(&f[22..38], &a.octets());
        assert_eq!(&f[54..56], &40000u16.to_be_bytes());
        let x = with_ext_headers(&f, &[NH_HOP_BY_HOP, NH_FRAGMENT], 0);
        assert_eq!((x.len(), x[20], x[54], x[62], u16::from_be_bytes([x[18], x[19]])), (90, NH_HOP_BY_HOP, NH_FRAGMENT, 6, 36));
        assert_eq!(&x[70..], &f[54..], "the TCP header follows the chain");
        let e = icmp6_error_frame(b, a, 1, 4, &f);
        assert_eq!((e[20], e[54], e.len()), (58, 1, 54 + 8 + 60));
        assert_eq!(&e[62..], &f[14..], "the quote is the IPv6 packet");
    }
}
