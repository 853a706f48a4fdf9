//! The uplink pre-filter: XDP on a node's physical interface, where it helps (unlike on pod
//! veths, see the README): a packet whose IPv4 or IPv6 source is in a denied prefix is dropped before
//! the driver hands it to the stack, so a flood from a denied network costs no socket buffer,
//! no conntrack and no TC program. Everything else passes unchanged: pod policy stays at TC.

use aya_ebpf::{bindings::xdp_action, maps::lpm_trie::Key, programs::XdpContext};
use bulkhead_common::{IpCache6KeyV1, IpCacheKeyV1, counters};

use crate::family::In6;
use crate::maps::{UPLINK_DENY, UPLINK_DENY6, count};

const ETH_HLEN: usize = 14;
const ETH_P_IP: [u8; 2] = [0x08, 0x00];
const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];
const ETH_P_8021Q: [u8; 2] = [0x81, 0x00];

#[inline(always)]
pub fn try_uplink(ctx: &XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + ETH_HLEN > end {
        // Too short for Ethernet: the stack drops or handles it; not ours to judge.
        count(counters::UPLINK_PASS);
        return xdp_action::XDP_PASS;
    }
    // SAFETY: bounds checked above.
    let mut eth_type = unsafe { *((data + 12) as *const [u8; 2]) };
    let mut l3 = data + ETH_HLEN;
    if eth_type == ETH_P_8021Q {
        // One VLAN tag, as on a trunked uplink.
        if l3 + 4 > end {
            count(counters::UPLINK_PASS);
            return xdp_action::XDP_PASS;
        }
        // SAFETY: bounds checked above.
        eth_type = unsafe { *((l3 + 2) as *const [u8; 2]) };
        l3 += 4;
    }
    let denied = if eth_type == ETH_P_IP && l3 + 20 <= end {
        // SAFETY: the 20-byte IPv4 header is within bounds (checked above).
        let saddr = unsafe { *((l3 + 12) as *const [u8; 4]) };
        UPLINK_DENY.get(Key::new(32, IpCacheKeyV1 { addr_be: saddr })).is_some()
    } else if eth_type == ETH_P_IPV6 && l3 + 40 <= end {
        // The source address at offset 8 of the 40-byte IPv6 header (within bounds).
        let saddr = In6::at((l3 + 8) as *const [u8; 16]);
        UPLINK_DENY6.get(Key::new(128, IpCache6KeyV1 { addr_be: *saddr.bytes() })).is_some()
    } else {
        false
    };
    if denied {
        count(counters::UPLINK_DROP_DENIED);
        return xdp_action::XDP_DROP;
    }
    count(counters::UPLINK_PASS);
    xdp_action::XDP_PASS
}
