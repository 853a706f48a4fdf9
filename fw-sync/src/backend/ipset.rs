//! Linux ipset: every target is a `hash:ip` set named `bhfw-<name>`.
//!
//! Driven through the `ipset` command (`save` to read, `restore` to apply) rather than the
//! `ipset` crate: that crate binds libipset through bindgen (needs libipset-dev and libclang
//! at build time) and has no swap, which the atomic replacement below needs. One `restore`
//! applies a whole diff: removals first, then each changed set is filled as a temporary set
//! `bhfwtmp-<name>` and swapped in, so a rule matching the set sees the old or the new
//! content, never a partial one.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use super::{Backend, Runner};
use crate::diff::{Action, Diff};
use crate::error::FwSyncError;
use crate::group::{FirewallState, OWNED_PREFIX, ObjectRef, TargetKind};

/// Prefix of the temporary sets used for swaps (owned too, but never part of the state).
pub const TEMP_PREFIX: &str = "bhfwtmp-";

/// Room for large groups; the hash grows on demand.
const CREATE_OPTS: &str = "hash:ip family inet maxelem 1048576";

/// The ipset backend.
pub struct IpsetBackend {
    runner: Runner,
}

impl IpsetBackend {
    /// A backend running `ipset` through `runner`.
    pub fn new(runner: Runner) -> Self {
        IpsetBackend { runner }
    }

    /// The kernel set name of a target.
    pub fn set_name(object: &ObjectRef) -> String {
        format!("{OWNED_PREFIX}{}", object.name)
    }

    /// The `ipset restore` input applying the creates and updates of `diff`.
    pub fn restore_script(diff: &Diff) -> String {
        let mut s = String::new();
        // Phase 1: addresses leave the sets that keep existing, before any address is added
        // anywhere (an IP moving between groups is never in both).
        for (object, ip) in diff.removals() {
            let _ = writeln!(s, "del {} {ip}", Self::set_name(object));
        }
        // Phase 2: each created or grown set gets its complete new content at once.
        for c in &diff.changes {
            let real = Self::set_name(&c.object);
            match c.action {
                Action::Create => {
                    let _ = writeln!(s, "create {real} {CREATE_OPTS}");
                    // -exist keeps a set created meanwhile; flush makes its content ours.
                    let _ = writeln!(s, "flush {real}");
                    for ip in &c.desired {
                        let _ = writeln!(s, "add {real} {ip}");
                    }
                }
                Action::Update if !c.add.is_empty() => {
                    let tmp = format!("{TEMP_PREFIX}{}", c.object.name);
                    // A temporary left by a crash is reused: created with -exist, then flushed.
                    let _ = writeln!(s, "create {tmp} {CREATE_OPTS}");
                    let _ = writeln!(s, "flush {tmp}");
                    for ip in &c.desired {
                        let _ = writeln!(s, "add {tmp} {ip}");
                    }
                    let _ = writeln!(s, "swap {tmp} {real}");
                    let _ = writeln!(s, "destroy {tmp}");
                }
                Action::Update | Action::Delete => {}
            }
        }
        s
    }
}

/// Parses `ipset save` output into the owned sets. Sets of another type or family under the
/// owned prefix are errors: fw-sync cannot swap into them and will not destroy them.
pub fn parse_save(firewall: &str, text: &str) -> Result<FirewallState, FwSyncError> {
    let mut state = FirewallState::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let (Some(verb), Some(name)) = (words.next(), words.next()) else { continue };
        let Some(short) = name.strip_prefix(OWNED_PREFIX) else { continue };
        let object = ObjectRef { kind: TargetKind::Ipset, name: short.to_string() };
        match verb {
            "create" => {
                let rest: Vec<&str> = words.collect();
                let family_ok = rest.windows(2).any(|w| w == ["family", "inet"]);
                if rest.first() != Some(&"hash:ip") || !family_ok {
                    return Err(FwSyncError::Backend {
                        firewall: firewall.to_string(),
                        object: format!("ipset {name}"),
                        detail: format!("is `{}`, not `hash:ip family inet`: fw-sync leaves it alone; destroy it by hand to let fw-sync manage it", rest.join(" ")),
                    });
                }
                state.entry(object).or_default();
            }
            "add" => {
                let member = words.next().unwrap_or_default();
                let ip: Ipv4Addr = member.parse().map_err(|_| FwSyncError::Backend {
                    firewall: firewall.to_string(),
                    object: format!("ipset {name}"),
                    detail: format!("member {member:?} is not an IPv4 address"),
                })?;
                state.entry(object).or_default().insert(ip);
            }
            _ => {}
        }
    }
    Ok(state)
}

impl Backend for IpsetBackend {
    fn firewall(&self) -> &str {
        self.runner.firewall()
    }

    fn read_owned_state(&mut self) -> Result<FirewallState, FwSyncError> {
        let text = self.runner.run("ipset", &["save"], None)?;
        parse_save(self.runner.firewall(), &text)
    }

    fn apply(&mut self, diff: &Diff) -> Result<(), FwSyncError> {
        let script = Self::restore_script(diff);
        if !script.is_empty() {
            self.runner.run("ipset", &["-exist", "restore"], Some(&script))?;
        }
        for c in diff.changes.iter().filter(|c| c.action == Action::Delete) {
            let name = Self::set_name(&c.object);
            if let Err(e) = self.runner.run("ipset", &["destroy", &name], None) {
                // Still referenced by a rule: emptied, so no group membership survives it.
                tracing::warn!(firewall = self.runner.firewall(), set = %name, error = %e, "no group targets this owned set but it is in use; emptying it instead");
                self.runner.run("ipset", &["flush", &name], None)?;
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
    fn script_removes_before_it_adds() {
        let ip = |s: &str| -> Ipv4Addr { s.parse().expect("ip") };
        let actual: FirewallState = [(obj("a"), [ip("10.0.0.1"), ip("10.0.0.5")].into()), (obj("b"), [ip("10.0.0.2")].into())].into();
        let desired: FirewallState = [(obj("a"), [ip("10.0.0.1")].into()), (obj("b"), [ip("10.0.0.2"), ip("10.0.0.5")].into()), (obj("c"), [].into())].into();
        let script = IpsetBackend::restore_script(&Diff::compute(&desired, &actual));
        assert_eq!(
            script,
            "del bhfw-a 10.0.0.5\ncreate bhfwtmp-b hash:ip family inet maxelem 1048576\nflush bhfwtmp-b\nadd bhfwtmp-b 10.0.0.2\nadd bhfwtmp-b 10.0.0.5\nswap bhfwtmp-b bhfw-b\ndestroy bhfwtmp-b\ncreate bhfw-c hash:ip family inet maxelem 1048576\nflush bhfw-c\n"
        );
    }
}
