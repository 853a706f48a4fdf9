//! Linux ipset: every target is a pair of `hash:ip` sets, one per family, since an ipset
//! holds one family only: `bhfw-<name>` (`family inet`) and `bhfw-<name>-v6`
//! (`family inet6`). fw-sync creates both together, so a rule may name either from the
//! start (`iptables -m set --match-set bhfw-web src`, `ip6tables ... bhfw-web-v6 src`).
//! With target names of at most 23 characters (checked when the AddressGroup is read) every
//! name fits ipset's 31: `bhfw-<name>-v6`, and the temporaries `bhfwtmp-<name>` (IPv4) and
//! `bhfwt6-<name>` (IPv6).
//!
//! Driven through the `ipset` command (`save` to read, `restore` to apply) rather than the
//! `ipset` crate: that crate binds libipset through bindgen (needs libipset-dev and libclang
//! at build time) and has no swap, which the atomic replacement below needs. One `restore`
//! applies a whole diff, both families: removals first, then each changed set is filled as a
//! temporary set and swapped in, so a rule matching the set sees the old or the new content,
//! never a partial one.
//!
//! A set of the pair that is missing (an object made by fw-sync before it knew IPv6 has no
//! `-v6` set) is logged when read and created at the object's next change.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{Backend, Runner};
use crate::diff::{Action, Diff};
use crate::error::FwSyncError;
use crate::group::{FirewallState, OWNED_PREFIX, ObjectRef, TargetKind, V6_SUFFIX};

/// Prefix of the temporary IPv4 sets used for swaps (owned too, but never part of the state).
pub const TEMP_PREFIX: &str = "bhfwtmp-";
/// Prefix of the temporary IPv6 sets (shorter, so `bhfwt6-<name>` fits 31 characters).
pub const TEMP6_PREFIX: &str = "bhfwt6-";
/// ipset's longest set name (IPSET_MAXNAMELEN 32, with the terminating NUL).
pub const MAX_SET_NAME: usize = 31;

/// Room for large groups; the hash grows on demand.
const CREATE_OPTS: &str = "hash:ip family inet maxelem 1048576";
const CREATE_OPTS6: &str = "hash:ip family inet6 maxelem 1048576";

/// One family's set of a target.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    /// `inet` or `inet6`, as `ipset save` prints it.
    pub fn ipset_name(self) -> &'static str {
        match self {
            Family::V4 => "inet",
            Family::V6 => "inet6",
        }
    }

    fn opts(self) -> &'static str {
        match self {
            Family::V4 => CREATE_OPTS,
            Family::V6 => CREATE_OPTS6,
        }
    }
}

/// The ipset backend.
pub struct IpsetBackend {
    runner: Runner,
    /// Sets of owned pairs that did not exist at the last read (created at the next change).
    missing: BTreeSet<String>,
}

impl IpsetBackend {
    /// A backend running `ipset` through `runner`.
    pub fn new(runner: Runner) -> Self {
        IpsetBackend { runner, missing: BTreeSet::new() }
    }

    /// The kernel set name of a target's IPv4 set.
    pub fn set_name(object: &ObjectRef) -> String {
        Self::family_set(object, Family::V4)
    }

    /// The kernel set name of a target's set of one family: `bhfw-<name>` or `bhfw-<name>-v6`.
    pub fn family_set(object: &ObjectRef, family: Family) -> String {
        match family {
            Family::V4 => format!("{OWNED_PREFIX}{}", object.name),
            Family::V6 => format!("{OWNED_PREFIX}{}{V6_SUFFIX}", object.name),
        }
    }

    fn temp_set(object: &ObjectRef, family: Family) -> String {
        match family {
            Family::V4 => format!("{TEMP_PREFIX}{}", object.name),
            Family::V6 => format!("{TEMP6_PREFIX}{}", object.name),
        }
    }

    /// Every set name a target needs, checked against ipset's 31 characters (the
    /// AddressGroup reader keeps names short enough; this guards other callers).
    fn check_names(&self, object: &ObjectRef) -> Result<(), FwSyncError> {
        for f in [Family::V4, Family::V6] {
            for name in [Self::family_set(object, f), Self::temp_set(object, f)] {
                if name.len() > MAX_SET_NAME {
                    return Err(FwSyncError::Backend {
                        firewall: self.runner.firewall().to_string(),
                        object: format!("ipset {name}"),
                        detail: format!("is {} characters, over ipset's {MAX_SET_NAME}: shorten the target name to 23 characters", name.len()),
                    });
                }
            }
        }
        Ok(())
    }

    /// The `ipset restore` input applying the creates and updates of `diff`.
    pub fn restore_script(diff: &Diff) -> String {
        Self::restore_script_with(diff, &BTreeSet::new())
    }

    /// The same, also creating the sets in `missing` that a changed object lacks.
    pub fn restore_script_with(diff: &Diff, missing: &BTreeSet<String>) -> String {
        let mut s = String::new();
        // Phase 1: addresses leave the sets that keep existing, before any address is added
        // anywhere (an IP moving between groups is never in both).
        for (object, ip) in diff.removals() {
            let _ = writeln!(s, "del {} {ip}", Self::family_set(object, Family::of(&ip)));
        }
        // Phase 2: each created or grown set gets its complete new content at once.
        for c in &diff.changes {
            for family in [Family::V4, Family::V6] {
                let real = Self::family_set(&c.object, family);
                let opts = family.opts();
                let desired = c.desired.iter().filter(|ip| Family::of(ip) == family);
                match c.action {
                    Action::Create => {
                        let _ = writeln!(s, "create {real} {opts}");
                        // -exist keeps a set created meanwhile; flush makes its content ours.
                        let _ = writeln!(s, "flush {real}");
                        for ip in desired {
                            let _ = writeln!(s, "add {real} {ip}");
                        }
                    }
                    Action::Update => {
                        if missing.contains(&real) {
                            let _ = writeln!(s, "create {real} {opts}");
                        }
                        if !c.add.iter().any(|ip| Family::of(ip) == family) {
                            continue;
                        }
                        let tmp = Self::temp_set(&c.object, family);
                        // A temporary left by a crash is reused: created with -exist, then flushed.
                        let _ = writeln!(s, "create {tmp} {opts}");
                        let _ = writeln!(s, "flush {tmp}");
                        for ip in desired {
                            let _ = writeln!(s, "add {tmp} {ip}");
                        }
                        let _ = writeln!(s, "swap {tmp} {real}");
                        let _ = writeln!(s, "destroy {tmp}");
                    }
                    Action::Delete => {}
                }
            }
        }
        s
    }
}

/// Parses `ipset save` output into the owned sets. Sets of another type or family under the
/// owned prefix are errors: fw-sync cannot swap into them and will not destroy them.
pub fn parse_save(firewall: &str, text: &str) -> Result<FirewallState, FwSyncError> {
    parse_save_pairs(firewall, text).map(|(state, _)| state)
}

/// [`parse_save`], and the sets missing from owned pairs (a `bhfw-<name>` without its
/// `bhfw-<name>-v6` or the other way round).
pub fn parse_save_pairs(firewall: &str, text: &str) -> Result<(FirewallState, BTreeSet<String>), FwSyncError> {
    let mut state = FirewallState::new();
    let mut seen = BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(verb), Some(name)) = (words.next(), words.next()) else { continue };
        let Some(short) = name.strip_prefix(OWNED_PREFIX) else { continue };
        let (short, family) = match short.strip_suffix(V6_SUFFIX) {
            Some(base) => (base, Family::V6),
            None => (short, Family::V4),
        };
        let object = ObjectRef { kind: TargetKind::Ipset, name: short.to_string() };
        let fail = |detail: String| FwSyncError::Backend { firewall: firewall.to_string(), object: format!("ipset {name}"), detail };
        match verb {
            "create" => {
                let rest: Vec<&str> = words.collect();
                let family_ok = rest.windows(2).any(|w| w == ["family", family.ipset_name()]);
                if rest.first() != Some(&"hash:ip") || !family_ok {
                    let want = format!("hash:ip family {}", family.ipset_name());
                    let why = if family == Family::V6 { format!(" (the `-v6` set holds the IPv6 members of target {short})") } else { String::new() };
                    return Err(fail(format!("is `{}`, not `{want}`{why}: fw-sync leaves it alone; destroy it by hand to let fw-sync manage it", rest.join(" "))));
                }
                seen.insert(name.to_string());
                state.entry(object).or_default();
            }
            "add" => {
                let member = words.next().unwrap_or_default();
                let ip = match family {
                    Family::V4 => member.parse::<Ipv4Addr>().map(IpAddr::V4).map_err(|_| fail(format!("member {member:?} is not an IPv4 address"))),
                    Family::V6 => member.parse::<Ipv6Addr>().map(IpAddr::V6).map_err(|_| fail(format!("member {member:?} is not an IPv6 address"))),
                }?;
                state.entry(object).or_default().insert(ip);
            }
            _ => {}
        }
    }
    let mut missing = BTreeSet::new();
    for object in state.keys() {
        for family in [Family::V4, Family::V6] {
            let name = IpsetBackend::family_set(object, family);
            if !seen.contains(&name) {
                missing.insert(name);
            }
        }
    }
    Ok((state, missing))
}

impl Backend for IpsetBackend {
    fn firewall(&self) -> &str {
        self.runner.firewall()
    }

    fn read_owned_state(&mut self) -> Result<FirewallState, FwSyncError> {
        let text = self.runner.run("ipset", &["save"], None)?;
        let (state, missing) = parse_save_pairs(self.runner.firewall(), &text)?;
        for set in &missing {
            tracing::warn!(firewall = self.runner.firewall(), %set, "an owned ipset pair lacks this set (made by an older fw-sync?); it is created at the target's next change");
        }
        self.missing = missing;
        Ok(state)
    }

    fn apply(&mut self, diff: &Diff) -> Result<(), FwSyncError> {
        for c in diff.changes.iter().filter(|c| c.action != Action::Delete) {
            self.check_names(&c.object)?;
        }
        let script = Self::restore_script_with(diff, &self.missing);
        if !script.is_empty() {
            self.runner.run("ipset", &["-exist", "restore"], Some(&script))?;
        }
        for c in diff.changes.iter().filter(|c| c.action != Action::Delete) {
            for family in [Family::V4, Family::V6] {
                self.missing.remove(&Self::family_set(&c.object, family));
            }
        }
        for c in diff.changes.iter().filter(|c| c.action == Action::Delete) {
            for family in [Family::V4, Family::V6] {
                let name = Self::family_set(&c.object, family);
                if self.missing.remove(&name) {
                    continue;
                }
                if let Err(e) = self.runner.run("ipset", &["destroy", &name], None) {
                    if matches!(&e, FwSyncError::Command { detail, .. } if detail.contains("does not exist")) {
                        continue;
                    }
                    // Still referenced by a rule: emptied, so no group membership survives it.
                    tracing::warn!(firewall = self.runner.firewall(), set = %name, error = %e, "no group targets this owned set but it is in use; emptying it instead");
                    self.runner.run("ipset", &["flush", &name], None)?;
                }
            }
        }
        Ok(())
    }

    fn calls(&self) -> u64 {
        self.runner.calls()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(name: &str) -> ObjectRef {
        ObjectRef { kind: TargetKind::Ipset, name: name.into() }
    }

    #[test]
    fn reads_only_owned_sets() {
        let text = "create other hash:ip family inet hashsize 1024 maxelem 65536\nadd other 10.0.0.9\ncreate bhfw-web hash:ip family inet hashsize 1024 maxelem 1048576 bucketsize 12 initval 0x1\nadd bhfw-web 10.0.0.1\ncreate bhfw-empty hash:ip family inet\n";
        let s = parse_save("fw", text).expect("parses");
        assert_eq!(s.len(), 2, "{s:?}");
        assert_eq!(s[&obj("web")].len(), 1, "{s:?}");
        assert!(s[&obj("empty")].is_empty(), "{s:?}");
        let e = parse_save("fw", "create bhfw-net hash:net family inet\n").expect_err("wrong type").to_string();
        assert!(e.contains("firewall fw: ipset bhfw-net: is `hash:net family inet`"), "{e}");
    }

    #[test]
    fn reads_both_families_and_reports_missing_halves() {
        let text = "create bhfw-web hash:ip family inet hashsize 1024 maxelem 1048576\nadd bhfw-web 10.0.0.1\ncreate bhfw-web-v6 hash:ip family inet6 hashsize 1024 maxelem 1048576\nadd bhfw-web-v6 fd00::1\nadd bhfw-web-v6 fd00::2\ncreate bhfw-old hash:ip family inet\ncreate bhfwt6-web hash:ip family inet6\n";
        let (s, missing) = parse_save_pairs("fw", text).expect("parses");
        let members: Vec<String> = s[&obj("web")].iter().map(ToString::to_string).collect();
        assert_eq!(members, ["10.0.0.1", "fd00::1", "fd00::2"]);
        assert!(s[&obj("old")].is_empty(), "{s:?}");
        assert_eq!(missing, ["bhfw-old-v6".to_string()].into(), "temporaries are no targets");
        let e = parse_save("fw", "create bhfw-web-v6 hash:ip family inet\n").expect_err("wrong family").to_string();
        assert!(e.contains("firewall fw: ipset bhfw-web-v6: is `hash:ip family inet`, not `hash:ip family inet6`"), "{e}");
        let e = parse_save("fw", "create bhfw-web-v6 hash:ip family inet6\nadd bhfw-web-v6 fd00::zz\n").expect_err("bad member").to_string();
        assert!(e.contains("ipset bhfw-web-v6: member \"fd00::zz\" is not an IPv6 address"), "{e}");
    }

    #[test]
    fn one_script_swaps_both_families() {
        let ip = |s: &str| -> IpAddr { s.parse().expect("ip") };
        let actual: FirewallState = [(obj("a"), [ip("10.0.0.1"), ip("fd00::5")].into()), (obj("b"), [ip("10.0.0.2")].into())].into();
        let desired: FirewallState = [(obj("a"), [ip("10.0.0.1")].into()), (obj("b"), [ip("10.0.0.2"), ip("fd00::5")].into()), (obj("c"), [ip("fd00::9")].into())].into();
        let diff = Diff::compute(&desired, &actual);
        let script = IpsetBackend::restore_script_with(&diff, &["bhfw-b-v6".to_string()].into());
        assert_eq!(
            script,
            "del bhfw-a-v6 fd00::5\ncreate bhfw-b-v6 hash:ip family inet6 maxelem 1048576\ncreate bhfwt6-b hash:ip family inet6 maxelem 1048576\nflush bhfwt6-b\nadd bhfwt6-b fd00::5\nswap bhfwt6-b bhfw-b-v6\ndestroy bhfwt6-b\ncreate bhfw-c hash:ip family inet maxelem 1048576\nflush bhfw-c\ncreate bhfw-c-v6 hash:ip family inet6 maxelem 1048576\nflush bhfw-c-v6\nadd bhfw-c-v6 fd00::9\n"
        );
    }

    #[test]
    fn names_over_31_characters_are_refused() {
        let b = IpsetBackend::new(Runner::new("fw", None));
        assert!(b.check_names(&obj(&"a".repeat(23))).is_ok());
        let e = b.check_names(&obj(&"a".repeat(24))).expect_err("too long").to_string();
        assert!(e.contains(&format!("ipset bhfwtmp-{}: is 32 characters, over ipset's 31", "a".repeat(24))), "{e}");
    }

    #[test]
    fn script_removes_before_it_adds() {
        let ip = |s: &str| -> IpAddr { s.parse().expect("ip") };
        let actual: FirewallState = [(obj("a"), [ip("10.0.0.1"), ip("10.0.0.5")].into()), (obj("b"), [ip("10.0.0.2")].into())].into();
        let desired: FirewallState = [(obj("a"), [ip("10.0.0.1")].into()), (obj("b"), [ip("10.0.0.2"), ip("10.0.0.5")].into()), (obj("c"), [].into())].into();
        let script = IpsetBackend::restore_script(&Diff::compute(&desired, &actual));
        assert_eq!(
            script,
            "del bhfw-a 10.0.0.5\ncreate bhfwtmp-b hash:ip family inet maxelem 1048576\nflush bhfwtmp-b\nadd bhfwtmp-b 10.0.0.2\nadd bhfwtmp-b 10.0.0.5\nswap bhfwtmp-b bhfw-b\ndestroy bhfwtmp-b\ncreate bhfw-c hash:ip family inet maxelem 1048576\nflush bhfw-c\ncreate bhfw-c-v6 hash:ip family inet6 maxelem 1048576\nflush bhfw-c-v6\n"
        );
    }
}
