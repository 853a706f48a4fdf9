//! What differs between IPv4 and IPv6 on the TC path: the address, its caches and conntrack
//! map, anti-spoofing and the isolation allow-list. The path itself (`main.rs`) is written
//! once, generic over [`Addr`], so both families take the same steps at the same cost.

use bulkhead_common::{Ct6KeyV1, CtKeyV2, CtValueV1, EndpointV4, IpInfoV3};

use crate::{
    maps::{CONNTRACK, CONNTRACK6, SCRATCH6},
    parse::Flow,
    policy,
};

/// An address of one family, as the packet carries it (network order).
pub trait Addr: Copy + PartialEq {
    /// The conntrack key of this family's flows (IPv6: a reference into the per-CPU
    /// scratch).
    type CtKey;
    /// 4 or 6, as in [`bulkhead_common::FlowEventV4::family`].
    const FAMILY: u8;

    /// Key of `f` at `ifindex`, the same for its replies (`None` only if the scratch slot
    /// were missing, which the caller fails closed).
    fn ct_key(ifindex: u32, f: &Flow<Self>) -> Option<Self::CtKey>;
    /// The entry of `key`, for update in place.
    fn ct_get_mut(key: &Self::CtKey) -> Option<*mut CtValueV1>;
    /// A copy of the entry of `key`.
    fn ct_get(key: &Self::CtKey) -> Option<CtValueV1>;
    /// Writes the entry; false when the map refused it.
    fn ct_insert(key: &Self::CtKey, v: &CtValueV1) -> bool;
    fn ct_remove(key: &Self::CtKey);
    /// Identity and peer class of this remote address in policy generation `pgen`.
    fn peer_info(self, pgen: u8) -> IpInfoV3;
    /// Whether the endpoint may send from this source address (anti-spoofing).
    fn own_source(self, ep: &EndpointV4) -> bool;
    /// The endpoint's identity for this family's traffic in generation `g` (0 or 1).
    fn local_identity(ep: &EndpointV4, g: usize) -> u32;
    /// The address as the isolation allow-list's exact entries hold it; `None` for IPv6,
    /// whose packets match only the allow-list's any-address entries (fail-closed for
    /// exact ones).
    fn allow_addr(self) -> Option<[u8; 4]>;
    /// The address in a flow event's 16 bytes.
    fn to16(self) -> [u8; 16];
}

impl Addr for [u8; 4] {
    type CtKey = CtKeyV2;
    const FAMILY: u8 = 4;

    #[inline(always)]
    fn ct_key(ifindex: u32, f: &Flow<Self>) -> Option<CtKeyV2> {
        Some(CtKeyV2::of(ifindex, f.saddr_be, f.sport_be, f.daddr_be, f.dport_be, f.protocol))
    }
    #[inline(always)]
    fn ct_get_mut(key: &CtKeyV2) -> Option<*mut CtValueV1> {
        CONNTRACK.get_ptr_mut(key)
    }
    #[inline(always)]
    fn ct_get(key: &CtKeyV2) -> Option<CtValueV1> {
        // SAFETY: copied out at once.
        unsafe { CONNTRACK.get(key) }.copied()
    }
    #[inline(always)]
    fn ct_insert(key: &CtKeyV2, v: &CtValueV1) -> bool {
        CONNTRACK.insert(key, v, 0).is_ok()
    }
    #[inline(always)]
    fn ct_remove(key: &CtKeyV2) {
        let _ = CONNTRACK.remove(key);
    }
    #[inline(always)]
    fn peer_info(self, pgen: u8) -> IpInfoV3 {
        policy::peer_info(self, pgen)
    }
    #[inline(always)]
    fn own_source(self, ep: &EndpointV4) -> bool {
        self == ep.ipv4_be
    }
    #[inline(always)]
    fn local_identity(ep: &EndpointV4, g: usize) -> u32 {
        if g == 0 { ep.identity[0] } else { ep.identity[1] }
    }
    #[inline(always)]
    fn allow_addr(self) -> Option<[u8; 4]> {
        Some(self)
    }
    #[inline(always)]
    fn to16(self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..4].copy_from_slice(&self);
        out
    }
}

impl Addr for [u8; 16] {
    type CtKey = &'static Ct6KeyV1;
    const FAMILY: u8 = 6;

    #[inline(always)]
    fn ct_key(ifindex: u32, f: &Flow<Self>) -> Option<&'static Ct6KeyV1> {
        let s = SCRATCH6.get_ptr_mut(0)?;
        // SAFETY: this CPU's scratch slot, used by one packet at a time.
        let k = unsafe { &mut (*s).key };
        k.set(ifindex, &f.saddr_be, f.sport_be, &f.daddr_be, f.dport_be, f.protocol);
        Some(k)
    }
    #[inline(always)]
    fn ct_get_mut(key: &&'static Ct6KeyV1) -> Option<*mut CtValueV1> {
        CONNTRACK6.get_ptr_mut(*key)
    }
    #[inline(always)]
    fn ct_get(key: &&'static Ct6KeyV1) -> Option<CtValueV1> {
        // SAFETY: copied out at once.
        unsafe { CONNTRACK6.get(*key) }.copied()
    }
    #[inline(always)]
    fn ct_insert(key: &&'static Ct6KeyV1, v: &CtValueV1) -> bool {
        CONNTRACK6.insert(*key, v, 0).is_ok()
    }
    #[inline(always)]
    fn ct_remove(key: &&'static Ct6KeyV1) {
        let _ = CONNTRACK6.remove(*key);
    }
    #[inline(always)]
    fn peer_info(self, pgen: u8) -> IpInfoV3 {
        policy::peer_info6(self, pgen)
    }
    /// The pod's own address, or a link-local one (fe80::/10): those never leave the link,
    /// so they only reach the host side of the veth, and the pod needs them for neighbour
    /// discovery replies and its default route.
    #[inline(always)]
    fn own_source(self, ep: &EndpointV4) -> bool {
        (self[0] == 0xfe && self[1] & 0xc0 == 0x80) || (self == ep.ipv6_be && self != [0; 16])
    }
    #[inline(always)]
    fn local_identity(ep: &EndpointV4, g: usize) -> u32 {
        if g == 0 { ep.identity6[0] } else { ep.identity6[1] }
    }
    #[inline(always)]
    fn allow_addr(self) -> Option<[u8; 4]> {
        None
    }
    #[inline(always)]
    fn to16(self) -> [u8; 16] {
        self
    }
}
