//! The engine's domain types: address groups, their targets, and firewall objects with
//! their members. Nothing here knows YAML (that is [`crate::crd`] and [`crate::config`]) or
//! any firewall's wire format (that is [`crate::backend`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::Ipv4Addr;

use policy_compiler::tiered::Selector;

/// Name prefix marking objects fw-sync owns. Reconcile never reads as its own, changes or
/// deletes an object without it.
pub const OWNED_PREFIX: &str = "bhfw-";

/// What kind of firewall object a target is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TargetKind {
    /// A Linux ipset of type hash:ip.
    Ipset,
    /// A named set of type ipv4_addr in an nftables table.
    NftablesSet,
    /// A PAN-OS static address group (next slice).
    PanosStaticGroup,
    /// A PAN-OS dynamic address group fed by a registered-IP tag (next slice).
    PanosDynamicTag,
    /// A FortiOS address group of one address object per IP (every FortiOS version).
    FortiosAddrgrp,
    /// A FortiOS external threat feed (IP addresses) updated through the push API (7.2.1+).
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

/// An address group: the IPv4 addresses of the pods a selector matches, written to targets.
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

/// The members of every object fw-sync owns on one firewall.
pub type FirewallState = BTreeMap<ObjectRef, BTreeSet<Ipv4Addr>>;
