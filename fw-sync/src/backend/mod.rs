//! Firewall backends behind one trait, each API in its own module.
//!
//! A backend reads the state of the objects fw-sync owns (and nothing else) and applies a
//! [`Diff`] in as few calls as its API allows. PAN-OS (XML API, one commit per batch) and
//! FortiOS (REST, one request per object) fit the same trait: reading is one or two requests,
//! applying honours the removal-first contract of [`Diff`] and counts every request.

pub mod fortios;
pub mod http;
pub mod ipset;
pub mod nftables;
pub mod panos;

use std::io::Write as _;
use std::process::{Command, Stdio};

use crate::config::{FirewallConfig, FirewallKind};
use crate::diff::Diff;
use crate::error::FwSyncError;
use crate::group::FirewallState;

/// One firewall's API.
pub trait Backend: Send {
    /// The firewall's name in the daemon config.
    fn firewall(&self) -> &str;

    /// Reads every object fw-sync owns (by its ownership marker) with its members. Objects
    /// without the marker are never returned, so they are never changed or deleted.
    fn read_owned_state(&mut self) -> Result<FirewallState, FwSyncError>;

    /// Applies `diff`, batched: ipset and nftables in one atomic call (plus one per deleted
    /// object). A failure may leave part of a non-atomic batch applied; the engine then reads
    /// the real state again before the next diff.
    fn apply(&mut self, diff: &Diff) -> Result<(), FwSyncError>;

    /// External calls made so far (commands run, HTTP requests), reads and applies alike:
    /// the numerator of the "API calls per 1,000 pod events" metric.
    fn calls(&self) -> u64;
}

/// The backend for a configured firewall (fails on a CA file that holds no certificate).
pub fn for_firewall(fw: &FirewallConfig) -> Result<Box<dyn Backend>, FwSyncError> {
    let runner = Runner::new(&fw.name, fw.netns.clone());
    Ok(match &fw.kind {
        FirewallKind::Ipset => Box::new(ipset::IpsetBackend::new(runner)),
        FirewallKind::Nftables { family, table } => Box::new(nftables::NftBackend::new(runner, family, table)),
        FirewallKind::Panos(cfg) => Box::new(panos::PanosBackend::new(&fw.name, cfg.clone(), &fw.tls)?),
        FirewallKind::Fortios(cfg) => Box::new(fortios::FortiosBackend::new(&fw.name, cfg.clone(), &fw.tls)?),
    })
}

/// Runs a firewall's command-line tool (optionally inside a network namespace) and counts
/// the calls.
#[derive(Debug)]
pub struct Runner {
    firewall: String,
    netns: Option<String>,
    calls: u64,
}

impl Runner {
    /// A runner for `firewall`, in `netns` when given.
    pub fn new(firewall: &str, netns: Option<String>) -> Self {
        Runner { firewall: firewall.to_string(), netns, calls: 0 }
    }

    /// Runs `program args`, feeding `stdin`; returns stdout, or the exit status and stderr.
    pub fn run(&mut self, program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, FwSyncError> {
        self.calls += 1;
        let mut cmd = Command::new(program);
        if let Some(ns) = &self.netns {
            // Enter the namespace in the child between fork and exec rather than through
            // `ip netns exec`: one exec fewer and no /sys remount, a few ms per call.
            let file = bulkhead_netns::open(ns).map_err(|e| FwSyncError::Command {
                firewall: self.firewall.clone(),
                command: format!("{program} {}", args.join(" ")),
                detail: format!("network namespace {e}"),
            })?;
            bulkhead_netns::pre_exec_enter(&mut cmd, file);
        }
        cmd.args(args).stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
        let shown = format!("{program} {}", args.join(" "));
        let fail = |detail: String| FwSyncError::Command { firewall: self.firewall.clone(), command: shown.clone(), detail };
        let mut child = cmd.spawn().map_err(|e| fail(format!("cannot start: {e}")))?;
        if let Some(text) = stdin {
            let mut pipe = child.stdin.take().expect("stdin was piped");
            pipe.write_all(text.as_bytes()).map_err(|e| fail(format!("writing its input: {e}")))?;
        }
        let out = child.wait_with_output().map_err(|e| fail(format!("waiting for it: {e}")))?;
        if !out.status.success() {
            return Err(fail(format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim())));
        }
        String::from_utf8(out.stdout).map_err(|_| fail("output is not UTF-8".into()))
    }

    /// Calls made so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// The firewall's name.
    pub fn firewall(&self) -> &str {
        &self.firewall
    }
}
