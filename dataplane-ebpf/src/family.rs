//! What differs between IPv4 and IPv6 on the TC path: the address, its caches and conntrack
//! map, anti-spoofing and the isolation allow-list. The path itself (`main.rs`) is written
//! once, generic over [`Addr`], so both families take the same steps at the same cost.

use bulkhead_common::{
    ConfigV2, Ct6KeyV1, CtKeyV2, CtValueV2, EndpointV4, IpInfoV3,
    detect::{AllowKey6V1, AllowKeyV2},
};

use crate::{
    conntrack,
    maps::{ISOLATION_ALLOW, ISOLATION_ALLOW6, SCRATCH6},
    parse::Flow,
    policy,
};

/// An address of one family, as the packet carries it (network order).
pub trait Addr: Copy + PartialEq {
    /// The conntrack key of this family's flows (IPv6: a reference into the per-CPU
    /// scratch).
    type CtKey;
    /// 4 or 6, as in [`bulkhead_common::FlowEventV5::family`].
    const FAMILY: u8;

    /// Key of `f` at `ifindex`, the same for its replies (`None` only if the scratch slot
    /// were missing, which the caller fails closed).
    fn ct_key(ifindex: u32, f: &Flow<Self>) -> Option<Self::CtKey>;
    /// Whether `f`'s source is the `hi` end of its key (see [`bulkhead_common::ct_flags::ORIGIN_HI`]).
    fn ct_source_hi(key: &Self::CtKey, f: &Flow<Self>) -> bool;
    /// The entry of `key`, for update in place.
    fn ct_get_mut(key: &Self::CtKey) -> Option<*mut CtValueV2>;
    /// A copy of the entry of `key`.
    fn ct_get(key: &Self::CtKey) -> Option<CtValueV2>;
    /// Writes the entry (`now`: to tell expired slots); false when it could not be written.
    fn ct_insert(key: &Self::CtKey, v: &CtValueV2, cfg: &ConfigV2, now: u64) -> bool;
    fn ct_remove(key: &Self::CtKey);
    /// Identity and peer class of this remote address in policy generation `pgen`.
    fn peer_info(self, pgen: u8) -> IpInfoV3;
    /// Whether the endpoint may send from this source address (anti-spoofing).
    fn own_source(self, ep: &EndpointV4) -> bool;
    /// The endpoint's identity for this family's traffic in generation `g` (0 or 1).
    fn local_identity(ep: &EndpointV4, g: usize) -> u32;
    /// Whether the isolation allow-list has an exact entry for this address, `port_be` and
    /// `protocol`, for endpoint `ifindex` or for every endpoint.
    fn allow_listed(self, ifindex: u32, port_be: [u8; 2], protocol: u8) -> bool;
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
    fn ct_source_hi(key: &CtKeyV2, f: &Flow<Self>) -> bool {
        key.addr_lo_be != f.saddr_be || key.port_lo_be != f.sport_be
    }
    #[inline(always)]
    fn ct_get_mut(key: &CtKeyV2) -> Option<*mut CtValueV2> {
        conntrack::find::<conntrack::V4>(key)
    }
    #[inline(always)]
    fn ct_get(key: &CtKeyV2) -> Option<CtValueV2> {
        // SAFETY: a valid slot's value, copied out at once.
        conntrack::find::<conntrack::V4>(key).map(|v| unsafe { *v })
    }
    #[inline(always)]
    fn ct_insert(key: &CtKeyV2, v: &CtValueV2, cfg: &ConfigV2, now: u64) -> bool {
        conntrack::insert::<conntrack::V4>(key, v, cfg, now)
    }
    #[inline(always)]
    fn ct_remove(key: &CtKeyV2) {
        conntrack::remove::<conntrack::V4>(key)
    }
    #[inline(always)]
    fn peer_info(self, pgen: u8) -> IpInfoV3 {
        policy::peer_info(self, pgen)
    }
    /// The pod's own IPv4 address; an IPv6-only pod (0.0.0.0 in its entry) has none.
    #[inline(always)]
    fn own_source(self, ep: &EndpointV4) -> bool {
        self == ep.ipv4_be && self != [0; 4]
    }
    #[inline(always)]
    fn local_identity(ep: &EndpointV4, g: usize) -> u32 {
        if g == 0 { ep.identity[0] } else { ep.identity[1] }
    }
    #[inline(always)]
    fn allow_listed(self, ifindex: u32, port_be: [u8; 2], protocol: u8) -> bool {
        let k = AllowKeyV2 { ifindex, addr_be: self, port_be, protocol, _pad: 0 };
        ISOLATION_ALLOW.get_ptr(&k).is_some() || ISOLATION_ALLOW.get_ptr(&AllowKeyV2 { ifindex: 0, ..k }).is_some()
    }
    #[inline(always)]
    fn to16(self) -> [u8; 16] {
        let mut out = [0; 16];
        out[..4].copy_from_slice(&self);
        out
    }
}

/// An IPv6 address as two 64-bit words holding its network-order bytes (not numbers).
/// With `[u8; 16]` (alignment 1) LLVM's BPF backend, which may not assume unaligned access,
/// moved and compared every address byte by byte: about 400 byte loads and stores more in the
/// IPv6 path than in IPv4's, and a quarter more time per packet. Two words are two moves.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
pub struct In6(pub [u64; 2]);

impl PartialEq for In6 {
    #[inline(always)]
    fn eq(&self, o: &In6) -> bool {
        self.0[0] == o.0[0] && self.0[1] == o.0[1]
    }
}

impl In6 {
    /// The network-order bytes.
    #[inline(always)]
    pub fn bytes(&self) -> &[u8; 16] {
        // SAFETY: same size, and [u8; 16] needs no alignment.
        unsafe { &*(self as *const In6 as *const [u8; 16]) }
    }

    /// The 16 bytes at `p` as words. `p` is an address in the packet or in a map value;
    /// BPF on this architecture loads 8 bytes from any alignment (the verifier enforces
    /// alignment only on strict-alignment machines), and the words are moved, never
    /// interpreted, so byte order stays as in the packet.
    #[inline(always)]
    pub fn at(p: *const [u8; 16]) -> In6 {
        let w = p as *const u64;
        // SAFETY: `p` points to 16 readable bytes (bounds checked by the caller).
        unsafe { In6([*w, *w.add(1)]) }
    }

    /// The address as a number's high and low halves, for ordering.
    #[inline(always)]
    pub fn halves(&self) -> (u64, u64) {
        (u64::from_be(self.0[0]), u64::from_be(self.0[1]))
    }
}

/// Writes `a` into 16 bytes at `p` (a map value field at least 4-byte aligned) as four
/// 4-byte stores.
#[inline(always)]
pub fn put16(p: *mut [u8; 16], a: &In6) {
    let w = p as *mut u32;
    // From the words' values (the first bytes are a word's low half on this little-endian
    // machine), not through a pointer cast, so `a` may stay in registers.
    let (x, y) = (a.0[0], a.0[1]);
    // SAFETY: `p` points to 16 writable bytes of a map value, 4-byte aligned.
    unsafe {
        *w = x as u32;
        *w.add(1) = (x >> 32) as u32;
        *w.add(2) = y as u32;
        *w.add(3) = (y >> 32) as u32;
    }
}

/// The conntrack key of an IPv6 flow, written into this CPU's scratch slot (as
/// [`Ct6KeyV1::set`], the same ordering rule, with word moves); `None` only if the slot were
/// missing. The general path's key; the fast path holds its own in registers.
#[inline(always)]
fn ct6_key(ifindex: u32, saddr: In6, sport_be: [u8; 2], daddr: In6, dport_be: [u8; 2], protocol: u8) -> Option<&'static Ct6KeyV1> {
    let s = SCRATCH6.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch slot, used by one packet at a time.
    let k = unsafe { &mut (*s).key };
    let ((sh, sl), (dh, dl)) = (saddr.halves(), daddr.halves());
    let s_first = bulkhead_common::ct6_source_first((sh, sl, sport_be), (dh, dl, dport_be));
    k.ifindex = ifindex;
    k.protocol = protocol;
    k._pad = [0; 3];
    let (lo, hi, plo, phi) = if s_first { (saddr, daddr, sport_be, dport_be) } else { (daddr, saddr, dport_be, sport_be) };
    put16(&mut k.addr_lo_be, &lo);
    put16(&mut k.addr_hi_be, &hi);
    k.port_lo_be = plo;
    k.port_hi_be = phi;
    Some(k)
}

impl Addr for In6 {
    type CtKey = &'static Ct6KeyV1;
    const FAMILY: u8 = 6;

    /// As [`Ct6KeyV1::set`] (the same ordering rule), with word moves.
    #[inline(always)]
    fn ct_key(ifindex: u32, f: &Flow<Self>) -> Option<&'static Ct6KeyV1> {
        ct6_key(ifindex, f.saddr_be, f.sport_be, f.daddr_be, f.dport_be, f.protocol)
    }
    #[inline(always)]
    fn ct_source_hi(_key: &&'static Ct6KeyV1, f: &Flow<Self>) -> bool {
        let ((sh, sl), (dh, dl)) = (f.saddr_be.halves(), f.daddr_be.halves());
        !bulkhead_common::ct6_source_first((sh, sl, f.sport_be), (dh, dl, f.dport_be))
    }
    #[inline(always)]
    fn ct_get_mut(key: &&'static Ct6KeyV1) -> Option<*mut CtValueV2> {
        conntrack::find::<conntrack::V6>(key)
    }
    #[inline(always)]
    fn ct_get(key: &&'static Ct6KeyV1) -> Option<CtValueV2> {
        // SAFETY: a valid slot's value, copied out at once.
        conntrack::find::<conntrack::V6>(key).map(|v| unsafe { *v })
    }
    #[inline(always)]
    fn ct_insert(key: &&'static Ct6KeyV1, v: &CtValueV2, cfg: &ConfigV2, now: u64) -> bool {
        conntrack::insert::<conntrack::V6>(key, v, cfg, now)
    }
    #[inline(always)]
    fn ct_remove(key: &&'static Ct6KeyV1) {
        conntrack::remove::<conntrack::V6>(key)
    }
    #[inline(always)]
    fn peer_info(self, pgen: u8) -> IpInfoV3 {
        policy::peer_info6(&self, pgen)
    }
    /// The pod's own address, or a link-local one (fe80::/10): those never leave the link,
    /// so they only reach the host side of the veth, and the pod needs them for neighbour
    /// discovery replies and its default route.
    #[inline(always)]
    fn own_source(self, ep: &EndpointV4) -> bool {
        let b = self.bytes();
        (b[0] == 0xfe && b[1] & 0xc0 == 0x80) || (self == In6::at(&ep.ipv6_be) && self.0 != [0; 2])
    }
    #[inline(always)]
    fn local_identity(ep: &EndpointV4, g: usize) -> u32 {
        if g == 0 { ep.identity6[0] } else { ep.identity6[1] }
    }
    #[inline(always)]
    fn allow_listed(self, ifindex: u32, port_be: [u8; 2], protocol: u8) -> bool {
        let k = AllowKey6V1 { ifindex, addr_be: *self.bytes(), port_be, protocol, _pad: 0 };
        ISOLATION_ALLOW6.get_ptr(&k).is_some() || ISOLATION_ALLOW6.get_ptr(&AllowKey6V1 { ifindex: 0, ..k }).is_some()
    }
    #[inline(always)]
    fn to16(self) -> [u8; 16] {
        *self.bytes()
    }
}
