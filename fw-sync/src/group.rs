//! The engine's domain types: address groups, their targets, and firewall objects with
//! their members. Nothing here knows YAML (that is [`crate::crd`] and [`crate::config`]) or
//! any firewall's wire format (that is [`crate::backend`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use policy_compiler::tiered::Selector;

/// Name prefix marking objects fw-sync owns. Reconcile never reads as its own, changes or
/// deletes an object without it.
pub const OWNED_PREFIX: &str = "bhfw-";

/// What kind of firewall object a target is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TargetKind {
    /// A pair of Linux ipsets of type hash:ip, one per family (`<name>` and `<name>-v6`).
    Ipset,
    /// A pair of named nftables sets in one table: `ipv4_addr` and `ipv6_addr` (`-v6`).
    NftablesSet,
    /// A PAN-OS static address group (next slice).
    PanosStaticGroup,
    /// A PAN-OS dynamic address group fed by a registered-IP tag (next slice).
    PanosDynamicTag,
    /// A FortiOS address group of one address object per IP (every FortiOS version): an
    /// `addrgrp` for IPv4 and an `addrgrp6` (`-v6`) for IPv6, which FortiOS keeps apart.
    FortiosAddrgrp,
    /// A FortiOS external threat feed (IP addresses of both families) updated through the
    /// push API (7.2.1+).
    FortiosThreatFeed,
}

impl TargetKind {
    /// Every kind with its spelling in YAML.
    pub const ALL: [(TargetKind, &'static str); 6] = [
        (TargetKind::Ipset, "ipset"),
        (TargetKind::NftablesSet, "nftables-set"),
        (TargetKind::PanosStaticGroup, "panos-static-group"),
        (TargetKind::PanosDynamicTag, "panos-dynamic-tag"),
        (TargetKind::FortiosAddrgrp, "fortios-addrgrp"),
        (TargetKind::FortiosThreatFeed, "fortios-threat-feed"),
    ];

    /// The kind spelled as in YAML.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == s).map(|(k, _)| *k)
    }

    /// The YAML spelling.
    pub fn as_str(self) -> &'static str {
        Self::ALL.iter().find(|(k, _)| *k == self).map(|(_, n)| *n).expect("every kind is in ALL")
    }

    /// Whether the firewall keeps the families in separate objects, the IPv6 one named
    /// with [`V6_SUFFIX`] (so target names of this kind must not end with it).
    pub fn splits_families(self) -> bool {
        matches!(self, TargetKind::Ipset | TargetKind::NftablesSet | TargetKind::FortiosAddrgrp)
    }
}

/// Suffix of the object holding a target's IPv6 members where a firewall keeps the families
/// apart: ipset `bhfw-web-v6`, nftables set `bhfw-web-v6`, FortiOS addrgrp6 `bhfw-web-v6`.
pub const V6_SUFFIX: &str = "-v6";

/// An address's family as metrics, logs and messages name it.
pub fn family(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "ipv4" } else { "ipv6" }
}

/// Members split by family.
pub fn split(ips: &BTreeSet<IpAddr>) -> (BTreeSet<Ipv4Addr>, BTreeSet<Ipv6Addr>) {
    let (mut v4, mut v6) = (BTreeSet::new(), BTreeSet::new());
    for ip in ips {
        match ip {
            IpAddr::V4(a) => v4.insert(*a),
            IpAddr::V6(a) => v6.insert(*a),
        };
    }
    (v4, v6)
}

/// (IPv4, IPv6) counts of a member set.
pub fn count_by_family<'a>(ips: impl IntoIterator<Item = &'a IpAddr>) -> (usize, usize) {
    ips.into_iter().fold((0, 0), |(a, b), ip| if ip.is_ipv4() { (a + 1, b) } else { (a, b + 1) })
}

impl fmt::Display for TargetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One object on one firewall that an address group is written to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Target {
    /// Name of a firewall in the daemon config.
    pub firewall: String,
    pub object: ObjectRef,
}

/// A firewall object as the engine names it: kind and the name from the AddressGroup. The
/// backend maps it to the real name (e.g. `bhfw-<name>`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: TargetKind,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.kind, self.name)
    }
}

/// An address group: the addresses (IPv4 and IPv6) of the pods a selector matches, written to
/// targets.
#[derive(Clone, Debug, PartialEq)]
pub struct AddressGroup {
    /// `metadata.name`.
    pub name: String,
    /// Over pod labels, with the implicit `projectcalico.org/namespace` and
    /// `projectcalico.org/serviceaccount` labels.
    pub pod_selector: Selector,
    /// Over namespace labels (with `projectcalico.org/name`); `None` is every namespace.
    pub namespace_selector: Option<Selector>,
    pub targets: Vec<Target>,
    /// `file: document N`, for messages.
    pub origin: String,
}

/// The members of every object fw-sync owns on one firewall, both families in one set (IPv4
/// sorts first); each backend splits them as its firewall stores them.
pub type FirewallState = BTreeMap<ObjectRef, BTreeSet<IpAddr>>;
