//! An emulator of the FortiOS REST API for the objects fw-sync writes: CMDB
//! `firewall/address`, `firewall/addrgrp` and `system/external-resource` in several VDOMs,
//! and the threat-feed push API (7.2.1+, see [`feed`] for what is verified and what is
//! assumed), behind a Bearer token, over HTTPS with a throw-away CA.
//!
//! Followed (see `firewall-apis.md` and the FortiOS 6.4.14 swagger shipped in `fortigate-api`):
//! - `GET|POST /api/v2/cmdb/firewall/{address,addrgrp}` and `GET|PUT|DELETE .../{name}`;
//!   `vdom=` (one, `a,b` or `*` for GET; default the management VDOM, `root` when present);
//!   `filter` (`==`, `!=`, `=@`, `!@`, `<=`, `>=`, `<`, `>`; `,` is OR, repeated is AND),
//!   `format=a|b`, `start`/`count`. A single GET also returns `results` as a list.
//! - Envelopes with `http_method`, `http_status`, `status`, `results`, `vdom`, `path`,
//!   `name`, `mkey`, `revision`, `old_revision`, `revision_changed`, `serial`, `version`,
//!   `build`; errors add the internal `error` code and `cli_error`.
//! - `GET /api/v2/monitor/system/status`, which `fortigate-api` calls to validate a token.
//!
//! Choices where the sources are silent or disagree (all in [`store::ApiError`]):
//! - duplicate POST (addresses and groups share one namespace): HTTP 500, error -5
//!   (fortigate-api documents 500 for "already exists");
//! - DELETE of an object a group or policy references: 500, error -23;
//! - GET/PUT/DELETE of a missing entry: 404, error -3; a member naming nothing: 424, -3;
//! - name over 79 characters or over [`FortiosOptions::max_members`] members (600, the 6.4
//!   schema's `maxItems`): 424, error -1; invalid subnet: 424, -8; a group with no members
//!   ("Attribute 'member' MUST be set.") or a loop of nested groups: 424, -651;
//! - unknown VDOM: 403, error -14 (the swagger's "permission error");
//! - missing or wrong token: 401 with an HTML body; `?access_token=` only when
//!   [`FortiosOptions::access_token_query`] is set;
//! - an injected server fault is the web server's HTML 503, never a CMDB envelope.
//! - PUT merges the attributes given into the object; `member` is replaced whole; a new
//!   `name` renames the object and the references to it.
//!
//! - addresses, groups and external resources share one namespace (a duplicate name is
//!   500 / -5 whatever the table); external-resource names are at most 35 characters.
//! - the version in [`FortiosOptions::version`] decides whether the push API exists
//!   (7.2.1 and later).
//!
//! Transactions are not emulated.

mod api;
pub mod feed;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use bulkhead_httpd::{Handler, Reply, Request, Server};
use clap::Parser;
use serde_json::{Value, json};

use crate::{FaultConfig, Faults};
use api::Device;
pub use store::Membership;
use store::{Store, Table};

/// How an emulated FortiGate is set up.
#[derive(Clone, Debug)]
pub struct FortiosOptions {
    /// The REST API administrator's token.
    pub token: String,
    /// VDOMs (the first is the management VDOM unless `root` is listed); empty means `root`.
    pub vdoms: Vec<String>,
    /// Seeds fault injection and UUIDs.
    pub seed: u64,
    /// Members per address group (600 in the 6.4 schema).
    pub max_members: usize,
    /// Entries per threat feed (assumed 131,072).
    pub max_feed_entries: usize,
    /// Accept the token as `?access_token=` (`rest-api-key-url-query enable`).
    pub access_token_query: bool,
    pub version: String,
    pub build: u32,
    pub serial: String,
}

impl Default for FortiosOptions {
    fn default() -> Self {
        FortiosOptions {
            token: "emulator-token".into(),
            vdoms: vec!["root".into()],
            seed: 1,
            max_members: store::DEFAULT_MAX_MEMBERS,
            max_feed_entries: feed::DEFAULT_MAX_ENTRIES,
            access_token_query: false,
            version: "v6.4.14".into(),
            build: 2093,
            serial: "FGVM64EMULATOR01".into(),
        }
    }
}

/// One request as the emulator saw it (without credentials).
#[derive(Clone, Debug)]
pub struct LoggedRequest {
    pub method: String,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub status: u16,
}

struct Shared {
    device: Device,
    store: Mutex<Store>,
    faults: Faults,
    requests: AtomicU64,
    log: Mutex<Vec<LoggedRequest>>,
    /// When recording: (vdom, membership) after every successful change (after every
    /// command of a feed push).
    history: Mutex<Option<Vec<(String, Membership)>>>,
}

/// A running emulated FortiGate.
pub struct FortiosEmulator {
    shared: Arc<Shared>,
    server: Server,
    ca_file: PathBuf,
    /// The temp folder holding the CA, removed on drop (None when the caller chose the path).
    temp_dir: Option<PathBuf>,
}

static INSTANCE: AtomicU64 = AtomicU64::new(0);

impl FortiosEmulator {
    /// Starts on 127.0.0.1 with a fresh port; the CA goes to a temp file removed on drop.
    pub fn start(opts: FortiosOptions) -> anyhow::Result<FortiosEmulator> {
        let dir = std::env::temp_dir().join(format!("fortios-emu-{}-{}", std::process::id(), INSTANCE.fetch_add(1, Ordering::Relaxed)));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut emu = Self::start_on(opts, "127.0.0.1:0", &dir.join("ca.pem"))?;
        emu.temp_dir = Some(dir);
        Ok(emu)
    }

    /// Starts on `listen`, writing the CA certificate to `ca_out`.
    pub fn start_on(opts: FortiosOptions, listen: &str, ca_out: &Path) -> anyhow::Result<FortiosEmulator> {
        let (tls, _) = crate::tls::server_config(&["localhost", "127.0.0.1"], Some(ca_out))?;
        let management_vdom =
            if opts.vdoms.is_empty() || opts.vdoms.iter().any(|v| v == "root") { "root".to_string() } else { opts.vdoms[0].clone() };
        let shared = Arc::new(Shared {
            device: Device {
                token: opts.token.clone(),
                access_token_query: opts.access_token_query,
                serial: opts.serial.clone(),
                version: opts.version.clone(),
                build: opts.build,
                management_vdom,
            },
            store: Mutex::new(store_for(&opts)),
            faults: Faults::new(opts.seed),
            requests: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            history: Mutex::new(None),
        });
        let s = shared.clone();
        let handler: Handler = Arc::new(move |req: &Request| serve(&s, req));
        let server = Server::start(listen, Some(tls), handler).with_context(|| format!("binding {listen}"))?;
        Ok(FortiosEmulator { shared, server, ca_file: ca_out.to_path_buf(), temp_dir: None })
    }

    /// `https://localhost:PORT` (the certificate names localhost and 127.0.0.1).
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.server.addr().port())
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.server.addr().port()
    }

    /// PEM of the CA that signed the server certificate.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// Latency, 5xx and resets injected in front of the API.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Requests received (faulted ones included).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    /// Every request so far, in order, with the status answered (0 for a reset).
    pub fn request_log(&self) -> Vec<LoggedRequest> {
        self.shared.log.lock().expect("log lock").clone()
    }

    /// Starts (or stops and clears) recording group and feed membership after every change.
    pub fn record_history(&self, on: bool) {
        *self.shared.history.lock().expect("history lock") = on.then(Vec::new);
        let mut st = self.store();
        st.record_steps = on;
        st.steps.clear();
    }

    /// What was recorded: (vdom, every group's and feed's members) after each change, and
    /// after each command of a feed push (FortiOS may apply them one by one).
    pub fn history(&self) -> Vec<(String, Membership)> {
        self.shared.history.lock().expect("history lock").clone().unwrap_or_default()
    }

    /// IPs of a group's members in a VDOM (an addrgrp or an addrgrp6), resolved through
    /// address objects and nested groups (only /32 `ipmask` and /128 `ipprefix` addresses
    /// count); None if the group is absent.
    pub fn group_members(&self, vdom: &str, group: &str) -> Option<BTreeSet<IpAddr>> {
        let st = self.store();
        store::resolve(st.vdoms.get(vdom)?, group)
    }

    /// The single-address entries of a threat feed (valid ones, "a.b.c.d" or "a.b.c.d/32",
    /// IPv6 with /128 or no length); None if the feed is absent.
    pub fn feed_entries(&self, vdom: &str, name: &str) -> Option<BTreeSet<IpAddr>> {
        let st = self.store();
        let v = st.vdoms.get(vdom)?;
        v.feeds.get(name)?;
        Some(v.feed_lists.get(name).map(feed::FeedList::single_ips).unwrap_or_default())
    }

    /// Every entry of a threat feed as stored, in order.
    pub fn feed_entry_texts(&self, vdom: &str, name: &str) -> Vec<String> {
        let st = self.store();
        st.vdoms.get(vdom).and_then(|v| v.feed_lists.get(name)).map(|l| l.entries.clone()).unwrap_or_default()
    }

    /// Names of the external resources of a VDOM.
    pub fn feed_names(&self, vdom: &str) -> Vec<String> {
        self.store().vdoms.get(vdom).map(|v| v.feeds.keys().cloned().collect()).unwrap_or_default()
    }

    /// Every feed command applied so far: (vdom, feed, command, number of entries given).
    pub fn feed_commands(&self) -> Vec<(String, String, String, usize)> {
        self.store().feed_log.clone()
    }

    /// Creates or changes an external resource by hand (`type`, `update-method`).
    pub fn put_feed(&self, vdom: &str, name: &str, kind: &str, update_method: &str) -> anyhow::Result<()> {
        self.put(vdom, Table::ExternalResource, name, json!({"name": name, "type": kind, "update-method": update_method, "resource": "https://feeds.example/list.txt"}))
    }

    /// Pushes one command to a feed by hand (an admin's push: drift, foreign feeds).
    pub fn push_feed(&self, vdom: &str, name: &str, command: &str, entries: &[&str]) -> anyhow::Result<()> {
        let body = json!({"commands": [{"name": name, "command": command, "entries": entries}]});
        feed::dynamic(&mut self.store(), vdom, &body).map_err(|e| anyhow::anyhow!("push to {name}: {} {}", e.code, e.cli))?;
        self.snapshot(vdom);
        Ok(())
    }

    /// Member names of a group as stored.
    pub fn group_member_names(&self, vdom: &str, group: &str) -> Option<Vec<String>> {
        let st = self.store();
        let v = st.vdoms.get(vdom)?;
        Some(store::member_names(v.groups.get(group).or_else(|| v.groups6.get(group))?).map(str::to_string).collect())
    }

    /// An object as GET returns it (address, group or external resource).
    pub fn object(&self, vdom: &str, name: &str) -> Option<Value> {
        let st = self.store();
        let v = st.vdoms.get(vdom)?;
        v.addresses.get(name).or_else(|| v.groups.get(name)).or_else(|| v.addresses6.get(name)).or_else(|| v.groups6.get(name)).or_else(|| v.feeds.get(name)).map(|o| Value::Object(o.clone()))
    }

    /// (address names, group names) of a VDOM.
    pub fn names(&self, vdom: &str) -> (Vec<String>, Vec<String>) {
        let st = self.store();
        st.vdoms.get(vdom).map(|v| (v.addresses.keys().cloned().collect(), v.groups.keys().cloned().collect())).unwrap_or_default()
    }

    /// (address6 names, addrgrp6 names) of a VDOM.
    pub fn names6(&self, vdom: &str) -> (Vec<String>, Vec<String>) {
        let st = self.store();
        st.vdoms.get(vdom).map(|v| (v.addresses6.keys().cloned().collect(), v.groups6.keys().cloned().collect())).unwrap_or_default()
    }

    /// Creates or changes an address6 object by hand (`ipprefix` `ip6`).
    pub fn put_address6(&self, vdom: &str, name: &str, ip6: &str, comment: &str) -> anyhow::Result<()> {
        self.put(vdom, Table::Address6, name, json!({"name": name, "type": "ipprefix", "ip6": ip6, "comment": comment}))
    }

    /// Creates or changes an addrgrp6 by hand, with FortiOS's checks.
    pub fn put_group6(&self, vdom: &str, name: &str, members: &[&str]) -> anyhow::Result<()> {
        let member: Vec<Value> = members.iter().map(|m| json!({"name": m})).collect();
        self.put(vdom, Table::Addrgrp6, name, json!({"name": name, "member": member}))
    }

    /// Creates or changes an address object by hand (an admin's edit: drift, foreign objects).
    pub fn put_address(&self, vdom: &str, name: &str, subnet: &str, comment: &str) -> anyhow::Result<()> {
        self.put(vdom, Table::Address, name, json!({"name": name, "type": "ipmask", "subnet": subnet, "comment": comment}))
    }

    /// Creates or changes an address group by hand, with FortiOS's checks.
    pub fn put_group(&self, vdom: &str, name: &str, members: &[&str]) -> anyhow::Result<()> {
        let member: Vec<Value> = members.iter().map(|m| json!({"name": m})).collect();
        self.put(vdom, Table::Addrgrp, name, json!({"name": name, "member": member}))
    }

    /// Deletes an address or group by hand, with FortiOS's checks (references refuse it).
    pub fn delete_object(&self, vdom: &str, name: &str) -> anyhow::Result<()> {
        let mut st = self.store();
        let table = match st.vdoms.get(vdom) {
            Some(v) if v.groups.contains_key(name) => Table::Addrgrp,
            Some(v) if v.groups6.contains_key(name) => Table::Addrgrp6,
            Some(v) if v.addresses6.contains_key(name) => Table::Address6,
            Some(v) if v.feeds.contains_key(name) => Table::ExternalResource,
            _ => Table::Address,
        };
        st.delete(vdom, table, name).map_err(|e| anyhow::anyhow!("delete {name}: {} {}", e.code, e.cli))?;
        drop(st);
        self.snapshot(vdom);
        Ok(())
    }

    /// A firewall policy `id` using `objects` (so deleting them gives "entry in use").
    pub fn add_policy(&self, vdom: &str, id: u32, objects: &[&str]) -> anyhow::Result<()> {
        let mut st = self.store();
        let v = st.vdoms.get_mut(vdom).with_context(|| format!("no vdom {vdom}"))?;
        for o in objects {
            anyhow::ensure!(store::taken(v, o), "policy {id}: no object {o}");
        }
        for o in objects {
            v.policy_refs.entry(o.to_string()).or_default().insert(id);
        }
        Ok(())
    }

    /// Removes policy `id`.
    pub fn remove_policy(&self, vdom: &str, id: u32) {
        if let Some(v) = self.store().vdoms.get_mut(vdom) {
            v.policy_refs.retain(|_, ids| {
                ids.remove(&id);
                !ids.is_empty()
            });
        }
    }

    fn put(&self, vdom: &str, table: Table, name: &str, body: Value) -> anyhow::Result<()> {
        let Value::Object(body) = body else { unreachable!("object literal") };
        let mut st = self.store();
        let exists = st.vdoms.get(vdom).is_some_and(|v| store::taken(v, name));
        let r = if exists { st.update(vdom, table, name, &body) } else { st.create(vdom, table, &body) };
        r.map_err(|e| anyhow::anyhow!("{name}: {} {}", e.code, e.cli))?;
        drop(st);
        self.snapshot(vdom);
        Ok(())
    }

    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.shared.store.lock().expect("store lock")
    }

    fn snapshot(&self, vdom: &str) {
        record(&self.shared, vdom);
    }
}

impl Drop for FortiosEmulator {
    fn drop(&mut self) {
        if let Some(dir) = &self.temp_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// The store for `opts`: the push API exists from FortiOS 7.2.1.
fn store_for(opts: &FortiosOptions) -> Store {
    let mut st = Store::new(&opts.vdoms, opts.max_members, opts.seed);
    st.max_feed_entries = opts.max_feed_entries;
    let v: Vec<u32> = opts.version.trim_start_matches('v').split('.').map(|p| p.parse().unwrap_or(0)).collect();
    st.push_feeds = (v.first().copied().unwrap_or(0), v.get(1).copied().unwrap_or(0), v.get(2).copied().unwrap_or(0)) >= (7, 2, 1);
    st
}

fn record(shared: &Shared, vdom: &str) {
    let mut h = shared.history.lock().expect("history lock");
    let mut st = shared.store.lock().expect("store lock");
    let steps = std::mem::take(&mut st.steps);
    if let Some(h) = h.as_mut() {
        if !steps.is_empty() {
            // A feed push: the state after each of its commands.
            h.extend(steps);
        } else if let Some(v) = st.vdoms.get(vdom) {
            h.push((vdom.to_string(), store::membership(v)));
        }
    }
}

fn serve(shared: &Shared, req: &Request) -> Reply {
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let params = api::query_params(&req.query);
    let mut changed = None;
    let reply = shared.faults.wrap(api::server_busy, || {
        if !api::authorized(&shared.device, req, &params) {
            return Reply::Respond(api::unauthorized());
        }
        let mut st = shared.store.lock().expect("store lock");
        let out = api::handle(&shared.device, &mut st, req, &params);
        changed = out.changed_vdom;
        Reply::Respond(out.response)
    });
    if let Some(v) = changed {
        record(shared, &v);
    }
    let status = match &reply {
        Reply::Respond(r) | Reply::Stream(r, _) => r.status,
        Reply::Reset => 0,
    };
    shared.log.lock().expect("log lock").push(LoggedRequest { method: req.method.clone(), path: req.path.clone(), query: api::redacted_query(&params), status });
    reply
}

/// `fw-emulator fortios` options.
#[derive(Parser, Debug)]
#[command(name = "fw-emulator fortios", about = "Emulated FortiOS REST API (firewall address/addrgrp) over HTTPS")]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Where to write the CA certificate (PEM) clients must trust.
    #[arg(long)]
    ca_out: PathBuf,
    /// The API token.
    #[arg(long)]
    token: String,
    /// A VDOM (repeat for several; default root).
    #[arg(long = "vdom")]
    vdoms: Vec<String>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Members per address group.
    #[arg(long, default_value_t = store::DEFAULT_MAX_MEMBERS)]
    max_members: usize,
    /// Entries per threat feed.
    #[arg(long, default_value_t = feed::DEFAULT_MAX_ENTRIES)]
    max_feed_entries: usize,
    /// The FortiOS version shown (7.2.1 and later have the threat-feed push API).
    #[arg(long, default_value = "v6.4.14")]
    os_version: String,
    /// Accept the token as ?access_token=.
    #[arg(long)]
    access_token_query: bool,
    /// Share of requests answered 503 (0..1).
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    /// Share of requests whose connection is reset (0..1).
    #[arg(long, default_value_t = 0.0)]
    reset_rate: f64,
    /// Latency added to every request, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
}

/// Runs the emulator from the command line (`args[0]` is the program name) until killed.
pub fn main(args: Vec<String>) -> anyhow::Result<()> {
    let cli = Cli::parse_from(args);
    let opts = FortiosOptions {
        token: cli.token,
        vdoms: if cli.vdoms.is_empty() { vec!["root".into()] } else { cli.vdoms },
        seed: cli.seed,
        max_members: cli.max_members,
        max_feed_entries: cli.max_feed_entries,
        access_token_query: cli.access_token_query,
        version: cli.os_version,
        ..FortiosOptions::default()
    };
    let emu = FortiosEmulator::start_on(opts, &cli.listen, &cli.ca_out)?;
    emu.faults().set(FaultConfig { latency: Duration::from_millis(cli.latency_ms), error_rate: cli.error_rate, reset_rate: cli.reset_rate });
    let mut out = std::io::stdout();
    writeln!(out, "listening https://127.0.0.1:{}", emu.port())?;
    out.flush()?;
    loop {
        std::thread::park();
    }
}
