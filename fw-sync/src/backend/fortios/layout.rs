//! How fw-sync lays an address group out in FortiOS objects, and the owned objects as read.
//!
//! FortiOS keeps the families in separate tables (`firewall address`/`addrgrp` for IPv4,
//! `firewall address6`/`addrgrp6` for IPv6; a group holds members of its own family only),
//! so a target is laid out once per family, the same way, in that family's tables:
//!
//! - One address object per IP: `bhfw-<ip>`, `ipmask` `<ip> 255.255.255.255`, or for IPv6 an
//!   `address6` `ipprefix` `<ip>/128` named with `-` for `:` (`bhfw-fd00-9--1`), shared by
//!   every owned group holding that IP.
//! - A target `T` is the address group `bhfw-T`, and its IPv6 members the addrgrp6
//!   `bhfw-T-v6` (names are unique across FortiOS's address and group tables). The addrgrp6
//!   is created with the target's first IPv6 member and kept, like the IPv4 group, until
//!   the target goes, so an IPv4-only cluster costs no extra request. FortiOS caps a group's member list (600 in
//!   the 6.4 schema), so a larger group holds, besides up to that many addresses, "chunk"
//!   groups `bhfw-~<k>~T` of up to as many addresses each (an address group may be a member
//!   of another). `~` cannot appear in a target name, so chunks never pass for targets.
//!   The IPv6 group's chunks are `bhfw-~<k>~T-v6`.
//! - FortiOS refuses an empty group, so an empty target holds the placeholder address
//!   `bhfw-~none` (255.255.255.255/32, never a pod IP), an empty addrgrp6 the address6
//!   `bhfw-~none6` (`::/128`, the unspecified address); reading skips them.
//!
//! Placement is sticky: an IP stays in the container (top group or chunk) it is in, new IPs
//! fill free room, so one pod event rewrites one container.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::group::{FirewallState, OWNED_PREFIX, ObjectRef, TargetKind, V6_SUFFIX};

/// The address object standing in for "no member".
pub const PLACEHOLDER: &str = "bhfw-~none";
pub const PLACEHOLDER_IP: Ipv4Addr = Ipv4Addr::BROADCAST;
/// The address6 object standing in for "no member" in an addrgrp6.
pub const PLACEHOLDER6: &str = "bhfw-~none6";
pub const PLACEHOLDER6_IP: Ipv6Addr = Ipv6Addr::UNSPECIFIED;

/// Which pair of FortiOS tables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fam {
    /// `firewall address` and `firewall addrgrp`.
    #[default]
    V4,
    /// `firewall address6` and `firewall addrgrp6`.
    V6,
}

impl Fam {
    pub const BOTH: [Fam; 2] = [Fam::V4, Fam::V6];

    pub fn of(ip: &IpAddr) -> Fam {
        if ip.is_ipv4() { Fam::V4 } else { Fam::V6 }
    }

    /// Index into per-family arrays.
    pub fn idx(self) -> usize {
        self as usize
    }

    pub fn address_table(self) -> &'static str {
        match self {
            Fam::V4 => "address",
            Fam::V6 => "address6",
        }
    }

    pub fn group_table(self) -> &'static str {
        match self {
            Fam::V4 => "addrgrp",
            Fam::V6 => "addrgrp6",
        }
    }

    pub fn placeholder(self) -> &'static str {
        match self {
            Fam::V4 => PLACEHOLDER,
            Fam::V6 => PLACEHOLDER6,
        }
    }

    pub fn placeholder_ip(self) -> IpAddr {
        match self {
            Fam::V4 => IpAddr::V4(PLACEHOLDER_IP),
            Fam::V6 => IpAddr::V6(PLACEHOLDER6_IP),
        }
    }

    /// What the family's group name adds to the target's: nothing, or `-v6`.
    pub fn suffix(self) -> &'static str {
        match self {
            Fam::V4 => "",
            Fam::V6 => V6_SUFFIX,
        }
    }

    /// "ipv4" or "ipv6", for messages.
    pub fn name(self) -> &'static str {
        match self {
            Fam::V4 => "ipv4",
            Fam::V6 => "ipv6",
        }
    }
}
/// FortiOS's longest object name.
pub const MAX_NAME: usize = 79;
const CHUNK_PREFIX: &str = "bhfw-~";

/// `bhfw-<ip>`; an IPv6 address with `-` for `:` (`bhfw-fd00-9--1`).
pub fn address_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{OWNED_PREFIX}{a}"),
        IpAddr::V6(a) => format!("{OWNED_PREFIX}{}", a.to_string().replace(':', "-")),
    }
}

/// Whether a target name reads as one of fw-sync's address object names (`10.1.2.3`,
/// `fd00-9--1`), which share FortiOS's namespace with the groups.
pub fn looks_like_address(target: &str) -> bool {
    target.parse::<IpAddr>().is_ok() || target.replace('-', ":").parse::<Ipv6Addr>().is_ok()
}

/// The target's group in the family's table: `bhfw-<target>` or `bhfw-<target>-v6`.
pub fn group_name(target: &str, fam: Fam) -> String {
    format!("{OWNED_PREFIX}{target}{}", fam.suffix())
}

/// Whether an owned group is a chunk of a larger one.
pub fn is_chunk(name: &str) -> bool {
    name.starts_with(CHUNK_PREFIX)
}

/// The `k`th chunk of `target`: `bhfw-~k~target`, or with a hash of the target when that is
/// over 79 characters.
pub fn chunk_name(target: &str, k: usize) -> String {
    let name = format!("{CHUNK_PREFIX}{k}~{target}");
    if name.len() <= MAX_NAME {
        return name;
    }
    // FNV-1a: stable across runs and builds, unlike std's hasher.
    let hash = target.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    format!("{CHUNK_PREFIX}{k}~{hash:016x}")
}

/// Parses FortiOS's "a.b.c.d m.m.m.m" (or "/len"); the host when it is a /32.
pub fn host_of_subnet(subnet: &str) -> Option<Ipv4Addr> {
    let s = subnet.trim();
    let (ip, mask) = s.split_once(' ').or_else(|| s.split_once('/'))?;
    let ip: Ipv4Addr = ip.trim().parse().ok()?;
    let mask = mask.trim();
    let host = mask == "32" || mask.parse::<Ipv4Addr>().is_ok_and(|m| m == Ipv4Addr::BROADCAST);
    host.then_some(ip)
}

/// An `address6` `ip6` value's host when it is a /128 ("fd00::1/128"; no length counts as
/// /128).
pub fn host_of_ip6(ip6: &str) -> Option<Ipv6Addr> {
    let s = ip6.trim();
    let (ip, len) = s.split_once('/').unwrap_or((s, "128"));
    (len.trim() == "128").then(|| ip.trim().parse().ok()).flatten()
}

/// The objects fw-sync owns in its VDOM in one family's tables, as last read and kept up to
/// date by each write.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Owned {
    pub fam: Fam,
    /// Owned address objects and the host each stands for (None: not a /32 `ipmask` or a
    /// /128 `ipprefix`).
    pub addresses: BTreeMap<String, Option<IpAddr>>,
    /// Owned address groups (targets and chunks) and their member names.
    pub groups: BTreeMap<String, Vec<String>>,
}

/// A target's members: addresses directly in its group, and its chunks' addresses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    pub direct: BTreeSet<IpAddr>,
    pub chunks: BTreeMap<String, BTreeSet<IpAddr>>,
}

impl Owned {
    /// Empty tables of one family.
    pub fn new(fam: Fam) -> Self {
        Owned { fam, ..Owned::default() }
    }

    fn host(&self, member: &str) -> Option<IpAddr> {
        if member == self.fam.placeholder() {
            return None;
        }
        self.addresses.get(member).copied().flatten()
    }

    /// The layout of `target`'s group; None when it does not exist. Members fw-sync does
    /// not own (or cannot read as a host) are left out: they go at the next rewrite.
    pub fn layout(&self, target: &str) -> Option<Layout> {
        let members = self.groups.get(&group_name(target, self.fam))?;
        let mut l = Layout::default();
        for m in members {
            if let Some(ip) = self.host(m) {
                l.direct.insert(ip);
            } else if is_chunk(m)
                && let Some(chunk) = self.groups.get(m)
            {
                l.chunks.insert(m.clone(), chunk.iter().filter_map(|a| self.host(a)).collect());
            }
        }
        Some(l)
    }

    /// What the engine sees: every target group with its IPs.
    pub fn state(&self) -> FirewallState {
        self.groups
            .keys()
            .filter(|g| !is_chunk(g))
            .filter_map(|g| {
                let target = g.strip_prefix(OWNED_PREFIX)?;
                // An addrgrp6 is a target's only under the name fw-sync gives it.
                let target = if self.fam == Fam::V6 { target.strip_suffix(V6_SUFFIX)? } else { target };
                let ips = self.layout(target)?.ips();
                Some((ObjectRef { kind: TargetKind::FortiosAddrgrp, name: target.to_string() }, ips))
            })
            .collect()
    }

    /// Chunk groups that `group` references.
    pub fn chunks_of(&self, group: &str) -> Vec<String> {
        self.groups.get(group).into_iter().flatten().filter(|m| is_chunk(m) && self.groups.contains_key(*m)).cloned().collect()
    }

    /// Member names used by any owned group.
    pub fn referenced(&self) -> BTreeSet<&str> {
        self.groups.values().flatten().map(String::as_str).collect()
    }

    /// Whether `group`'s stored members are `members` (order aside).
    pub fn has_members(&self, group: &str, members: &[String]) -> bool {
        self.groups.get(group).is_some_and(|m| m.iter().collect::<BTreeSet<_>>() == members.iter().collect::<BTreeSet<_>>())
    }
}

impl Layout {
    /// Every IP, direct or in a chunk.
    pub fn ips(&self) -> BTreeSet<IpAddr> {
        self.direct.iter().chain(self.chunks.values().flatten()).copied().collect()
    }

    /// Only the IPs in `keep`, in the containers they are in; emptied chunks go.
    pub fn keep(&self, keep: &BTreeSet<IpAddr>) -> Layout {
        Layout {
            direct: self.direct.intersection(keep).copied().collect(),
            chunks: self
                .chunks
                .iter()
                .map(|(n, c)| (n.clone(), c.intersection(keep).copied().collect::<BTreeSet<_>>()))
                .filter(|(_, c)| !c.is_empty())
                .collect(),
        }
    }

    /// Adds the IPs of `want` not yet present: into the group while it has room, then into
    /// chunks with room, then into new chunks (named by `target`, skipping names `taken`).
    /// When the group is full, a new chunk takes one of its addresses to free the slot it
    /// needs. Fails past `cap` × `cap` addresses.
    pub fn with(&self, want: &BTreeSet<IpAddr>, cap: usize, target: &str, taken: impl Fn(&str) -> bool) -> Result<Layout, String> {
        let mut l = self.clone();
        let have = l.ips();
        let mut pending = want.iter().filter(|ip| !have.contains(ip)).copied().peekable();
        while l.direct.len() + l.chunks.len() < cap
            && let Some(ip) = pending.next()
        {
            l.direct.insert(ip);
        }
        for c in l.chunks.values_mut() {
            while c.len() < cap
                && let Some(ip) = pending.next()
            {
                c.insert(ip);
            }
        }
        let mut k = 1;
        while pending.peek().is_some() {
            let name = loop {
                let n = chunk_name(target, k);
                k += 1;
                if !l.chunks.contains_key(&n) && !taken(&n) {
                    break n;
                }
            };
            let mut chunk = BTreeSet::new();
            if l.direct.len() + l.chunks.len() >= cap {
                let Some(moved) = l.direct.pop_last() else {
                    return Err(format!("{} addresses do not fit in one group and {cap} chunks of {cap}", want.len()));
                };
                chunk.insert(moved);
            }
            while chunk.len() < cap
                && let Some(ip) = pending.next()
            {
                chunk.insert(ip);
            }
            l.chunks.insert(name, chunk);
        }
        Ok(l)
    }

    /// The member names of the target's own group (the family's placeholder when it has
    /// none).
    pub fn top_members(&self, fam: Fam) -> Vec<String> {
        let mut m: Vec<String> = self.direct.iter().map(|ip| address_name(*ip)).chain(self.chunks.keys().cloned()).collect();
        if m.is_empty() {
            m.push(fam.placeholder().to_string());
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(r: std::ops::Range<u32>) -> BTreeSet<IpAddr> {
        r.map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))).collect()
    }

    #[test]
    fn names() {
        assert_eq!(address_name("10.1.2.3".parse().expect("ip")), "bhfw-10.1.2.3");
        assert_eq!(address_name("fd00:9::1".parse().expect("ip")), "bhfw-fd00-9--1");
        assert_eq!((group_name("web", Fam::V4), group_name("web", Fam::V6)), ("bhfw-web".to_string(), "bhfw-web-v6".to_string()));
        assert!(looks_like_address("10.1.2.3") && looks_like_address("fd00-9--1") && looks_like_address("fd00::1") && !looks_like_address("web-1"));
        assert_eq!(host_of_ip6("fd00::1/128"), Some("fd00::1".parse().expect("ip")));
        assert_eq!(host_of_ip6("fd00::/64"), None);
        assert_eq!(chunk_name("web", 2), "bhfw-~2~web");
        let long = chunk_name(&"a".repeat(74), 1);
        assert!(long.len() <= MAX_NAME && long.starts_with("bhfw-~1~"), "{long}");
        assert_ne!(long, chunk_name(&format!("{}b", "a".repeat(73)), 1));
        assert!(is_chunk("bhfw-~1~web") && !is_chunk("bhfw-web"));
        assert_eq!(host_of_subnet("10.1.2.3 255.255.255.255"), Some("10.1.2.3".parse().expect("ip")));
        assert_eq!(host_of_subnet("10.1.2.0 255.255.255.0"), None);
    }

    #[test]
    fn placement_is_sticky_and_chunks_when_full() {
        let cap = 4;
        let l = Layout::default().with(&ips(0..3), cap, "web", |_| false).expect("fits");
        assert_eq!((l.direct.len(), l.chunks.len()), (3, 0));
        // Two more: one fills the group, the next needs a chunk, which takes one address.
        let l2 = l.with(&ips(0..5), cap, "web", |_| false).expect("fits");
        assert_eq!(l2.ips(), ips(0..5));
        assert_eq!(l2.direct.len() + l2.chunks.len(), cap, "{l2:?}");
        assert_eq!(l2.chunks["bhfw-~1~web"].len(), 2, "{l2:?}");
        assert_eq!(l2.top_members(Fam::V4).len(), 4);
        // Removing from a chunk leaves every other IP where it was.
        let kept: BTreeSet<_> = ips(0..5).into_iter().filter(|ip| !l2.chunks["bhfw-~1~web"].contains(ip) || l2.direct.contains(ip)).collect();
        let l3 = l2.keep(&kept);
        assert!(l3.chunks.is_empty() && l3.direct == l2.direct, "{l3:?}");
        // 4 x 4 is the most; a taken name is skipped.
        let big = Layout::default().with(&ips(0..13), cap, "web", |n| n == "bhfw-~1~web").expect("fits");
        assert_eq!(big.ips(), ips(0..13));
        assert!(!big.chunks.contains_key("bhfw-~1~web") && big.chunks.values().all(|c| c.len() <= cap), "{big:?}");
        assert!(Layout::default().with(&ips(0..17), cap, "web", |_| false).is_err());
        assert_eq!(Layout::default().top_members(Fam::V4), [PLACEHOLDER]);
        assert_eq!(Layout::default().top_members(Fam::V6), [PLACEHOLDER6]);
    }

    #[test]
    fn state_reads_through_chunks_and_skips_foreign_members() {
        let mut o = Owned::default();
        for i in 1..=3 {
            o.addresses.insert(format!("bhfw-10.0.0.{i}"), Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i))));
        }
        o.addresses.insert(PLACEHOLDER.into(), Some(IpAddr::V4(PLACEHOLDER_IP)));
        o.groups.insert("bhfw-web".into(), vec!["bhfw-10.0.0.1".into(), "bhfw-~1~web".into(), "admin-host".into()]);
        o.groups.insert("bhfw-~1~web".into(), vec!["bhfw-10.0.0.2".into()]);
        o.groups.insert("bhfw-db".into(), vec![PLACEHOLDER.into()]);
        let s = o.state();
        let get = |n: &str| s.get(&ObjectRef { kind: TargetKind::FortiosAddrgrp, name: n.into() }).cloned();
        assert_eq!(get("web"), Some(ips(0..0).into_iter().chain(["10.0.0.1".parse().expect("ip"), "10.0.0.2".parse().expect("ip")]).collect()));
        assert_eq!(get("db"), Some(BTreeSet::new()));
        assert_eq!(s.len(), 2, "chunks are not targets: {s:?}");
        assert_eq!(o.chunks_of("bhfw-web"), ["bhfw-~1~web"]);
    }

    #[test]
    fn ipv6_state_reads_addrgrp6_under_its_suffix_only() {
        let mut o = Owned::new(Fam::V6);
        let ip: IpAddr = "fd00:9::1".parse().expect("ip");
        o.addresses.insert(address_name(ip), Some(ip));
        o.addresses.insert(PLACEHOLDER6.into(), Some(Fam::V6.placeholder_ip()));
        o.groups.insert("bhfw-web-v6".into(), vec![address_name(ip)]);
        o.groups.insert("bhfw-db-v6".into(), vec![PLACEHOLDER6.into()]);
        o.groups.insert("bhfw-stray".into(), vec![address_name(ip)]);
        let s = o.state();
        let names: Vec<(&str, usize)> = s.iter().map(|(k, v)| (k.name.as_str(), v.len())).collect();
        assert_eq!(names, [("db", 0), ("web", 1)]);
    }
}
