//! Test frames for `BPF_PROG_TEST_RUN` (TC programs see the Ethernet header).

use std::net::Ipv4Addr;

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
}
