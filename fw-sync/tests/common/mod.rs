//! Helpers for the root-only tests: network namespaces that delete themselves (with every
//! set, table and rule in them) on drop, even when a test panics.

#![allow(dead_code)]

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;

use fw_sync::backend::Backend;
use fw_sync::diff::Diff;
use fw_sync::group::FirewallState;
use std::sync::atomic::{AtomicU32, Ordering};

/// These tests touch the kernel (real ipset, nftables, network namespaces): without root they
/// fail, saying so, rather than pass without having run. CI runs them as root.
pub fn require_root() {
    // SAFETY: plain syscall.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root (real ipset/nftables/network namespaces); CI runs it as root");
}

/// A short id unique to this test in this process: `fwt-<id>-...` names never collide.
pub fn unique_id() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{:x}{}", std::process::id() % 0xffff, N.fetch_add(1, Ordering::Relaxed))
}

/// Runs a command, panicking with its output when it fails.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(out.status.success(), "{args:?} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command, returning whether it succeeded.
pub fn try_sh(args: &[&str]) -> bool {
    Command::new(args[0]).args(&args[1..]).output().map(|o| o.status.success()).unwrap_or(false)
}

/// A network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Netns {
        // A leftover of a crashed run with the same name would make the test fail for the wrong reason.
        let _ = try_sh(&["ip", "netns", "del", &name]);
        sh(&["ip", "netns", "add", &name]);
        sh(&["ip", "-n", &name, "link", "set", "lo", "up"]);
        Netns { name }
    }

    /// Runs a command inside the namespace, panicking on failure.
    pub fn exec(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs a command inside the namespace, returning whether it succeeded.
    pub fn try_exec(&self, args: &[&str]) -> bool {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        try_sh(&full)
    }

    /// Runs `f` on a thread that has entered the namespace (network namespaces are per thread).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        bulkhead_netns::in_netns(&self.name, f).unwrap_or_else(|e| panic!("in netns {}: {e}", self.name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace removes its interfaces, ipsets, nftables tables and rules.
        if !try_sh(&["ip", "netns", "del", &self.name]) {
            eprintln!("warning: could not delete network namespace {}", self.name);
        }
    }
}

/// A temporary folder, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("fw-sync-{tag}"));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap_or_else(|e| panic!("create {}: {e}", p.display()));
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Parses test addresses.
pub fn ips(list: &[&str]) -> BTreeSet<IpAddr> {
    list.iter().map(|s| s.parse().expect("test IP")).collect()
}

/// Read, diff, apply, read again: must equal desired. Returns the diff applied.
pub fn converge(b: &mut dyn Backend, desired: &FirewallState) -> Diff {
    let actual = b.read_owned_state().expect("read owned state");
    let diff = Diff::compute(desired, &actual);
    b.apply(&diff).unwrap_or_else(|e| panic!("apply of {} changes ({} addresses): {e}", diff.changes.len(), diff.size()));
    let after = b.read_owned_state().expect("read after apply");
    assert!(&after == desired, "state after applying {} changes differs:\n{}", diff.changes.len(), Diff::compute(desired, &after));
    diff
}

/// Reconciles (read, diff, apply) until the backend reads back `desired`, as the daemon
/// does under faults; panics after `max` rounds. Returns the rounds that failed.
pub fn reconcile_until(b: &mut dyn Backend, desired: &FirewallState, max: u32) -> u32 {
    let mut failed = 0;
    for _ in 0..max {
        match b.read_owned_state() {
            Ok(actual) if &actual == desired => return failed,
            Ok(actual) => {
                if b.apply(&Diff::compute(desired, &actual)).is_err() {
                    failed += 1;
                }
            }
            Err(_) => failed += 1,
        }
    }
    panic!("no convergence after {max} reconciles");
}

/// Polls until `cond` holds (panics after 30 s naming `what`); returns how long it took.
pub fn wait_for(what: &str, mut cond: impl FnMut() -> bool) -> std::time::Duration {
    let start = std::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < std::time::Duration::from_secs(30), "timed out waiting for {what}");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    start.elapsed()
}
