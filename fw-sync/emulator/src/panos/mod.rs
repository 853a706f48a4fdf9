//! An emulator of the PAN-OS XML API (`/api/`), firewall or Panorama, for fw-sync's tests
//! and benchmarks, checked against Palo Alto's pan-python client.
//!
//! Emulated: keygen and key authentication (`key=` or `X-PAN-KEY`; a bad key is HTTP 403
//! "Invalid Credential"); `type=config` set/edit/delete on the candidate config, get
//! (candidate) and show (running), multi-config (strict-transactional: all or nothing,
//! refused while a commit is in progress); `type=commit` as jobs going ACT -> FIN over a
//! configurable duration, with "There are no changes to commit.", one commit at a time
//! ("Another commit/validate is in progress. Please try again later") and validation at
//! commit (a static group needs at least one member, and every member must name an address
//! or group: otherwise the job ends FIN/FAIL and running is unchanged); config locks held by
//! another admin ("Configuration is locked by ..."); Panorama device groups and commit-all;
//! `type=op` show jobs, check pending-changes and show registered-ip; the User-ID API.
//! Not emulated: everything else, answered with PAN-OS's error codes (unknown type: 400;
//! unknown op command: 17).

mod config;
mod jobs;
mod userid;
pub mod xml;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::Context as _;
use bulkhead_httpd::{Handler, Reply, Request, Response, Server};
use clap::Parser as _;

use crate::Faults;
use xml::Node;

/// The `localhost.localdomain` device entry every firewall and Panorama config has.
pub const DEVICE: &str = "/config/devices/entry[@name='localhost.localdomain']";

/// How the emulator is set up.
#[derive(Clone, Debug)]
pub struct PanosOptions {
    /// Panorama (device groups, commit-all) instead of a firewall (vsys).
    pub panorama: bool,
    /// The key keygen hands out and every request must carry.
    pub api_key: String,
    pub user: String,
    pub password: String,
    /// Seed of the fault generator.
    pub seed: u64,
    /// Address to bind (`127.0.0.1:0`: any free port).
    pub listen: String,
    /// Where to write the CA certificate; None: a temporary file removed on drop.
    pub ca_out: Option<PathBuf>,
    /// How long a commit job stays ACT.
    pub commit_duration: Duration,
}

impl Default for PanosOptions {
    fn default() -> Self {
        PanosOptions {
            panorama: false,
            api_key: "LUFRPT1emulatorkey".into(),
            user: "admin".into(),
            password: "admin".into(),
            seed: 1,
            listen: "127.0.0.1:0".into(),
            ca_out: None,
            commit_duration: Duration::from_millis(20),
        }
    }
}

/// The emulated device's state.
pub(crate) struct State {
    pub candidate: Node,
    pub running: Node,
    pub jobs: Vec<jobs::Job>,
    pub next_job: u64,
    pub lock: Option<String>,
    pub commit_duration: Duration,
    pub commits: u64,
    pub pushes: u64,
    /// Device group -> its config as last pushed to the firewalls by commit-all.
    pub pushed: BTreeMap<String, Node>,
    pub uid: userid::Registrations,
    pub clock_offset: Duration,
    pub panorama: bool,
}

/// An answer: HTTP status and XML body.
pub(crate) struct ApiReply {
    status: u16,
    body: String,
}

impl ApiReply {
    fn ok(body: String) -> ApiReply {
        ApiReply { status: 200, body }
    }

    /// `<response status="error" [code=".."]><msg><line>..</line></msg></response>`.
    fn error(code: Option<u16>, msg: &str) -> ApiReply {
        let code = code.map(|c| format!(" code=\"{c}\"")).unwrap_or_default();
        ApiReply::ok(format!("<response status=\"error\"{code}><msg><line>{}</line></msg></response>", xml::escape(msg)))
    }

    fn forbidden() -> ApiReply {
        ApiReply { status: 403, body: "<response status = 'error' code = '403'><result><msg>Invalid Credential</msg></result></response>".into() }
    }
}

struct Shared {
    opts: PanosOptions,
    state: Mutex<State>,
    faults: Faults,
    requests: AtomicU64,
}

/// A running emulator; stops (and removes its temporary CA file) when dropped.
pub struct PanosEmulator {
    shared: Arc<Shared>,
    server: Option<Server>,
    ca_file: PathBuf,
    remove_ca: bool,
}

/// The empty configuration of a firewall (vsys1) or a Panorama (no device group yet).
fn initial_config(panorama: bool) -> Node {
    let mut root = Node::new("config");
    let steps = if panorama { format!("{DEVICE}/device-group") } else { format!("{DEVICE}/vsys/entry[@name='vsys1']") };
    xml::ensure(&mut root, &xml::parse_xpath(&steps).expect("built-in xpath"));
    root.children.push(Node::new("shared"));
    root
}

impl PanosEmulator {
    /// Starts serving HTTPS (certificate for `localhost` and `127.0.0.1`).
    pub fn start(opts: PanosOptions) -> anyhow::Result<PanosEmulator> {
        static N: AtomicU64 = AtomicU64::new(0);
        let (ca_file, remove_ca) = match &opts.ca_out {
            Some(p) => (p.clone(), false),
            None => (std::env::temp_dir().join(format!("bulkhead-panos-ca-{}-{}.pem", std::process::id(), N.fetch_add(1, Ordering::Relaxed))), true),
        };
        let (tls, _) = crate::tls::server_config(&["localhost", "127.0.0.1"], Some(&ca_file))?;
        let state = State {
            candidate: initial_config(opts.panorama),
            running: initial_config(opts.panorama),
            jobs: Vec::new(),
            next_job: 0,
            lock: None,
            commit_duration: opts.commit_duration,
            commits: 0,
            pushes: 0,
            pushed: BTreeMap::new(),
            uid: BTreeMap::new(),
            clock_offset: Duration::ZERO,
            panorama: opts.panorama,
        };
        let shared = Arc::new(Shared { faults: Faults::new(opts.seed), state: Mutex::new(state), requests: AtomicU64::new(0), opts: opts.clone() });
        let s2 = shared.clone();
        let handler: Handler = Arc::new(move |r: &Request| handle(&s2, r));
        let server = Server::start(&opts.listen, Some(tls), handler).with_context(|| format!("binding {}", opts.listen))?;
        Ok(PanosEmulator { shared, server: Some(server), ca_file, remove_ca })
    }

    /// `https://localhost:PORT`.
    pub fn url(&self) -> String {
        format!("https://localhost:{}", self.port())
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.server.as_ref().expect("server runs until drop").addr().port()
    }

    /// The CA certificate (PEM) that signed the server certificate.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// Fault injection in front of the API.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// API requests received (faulted ones included).
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        let mut st = self.shared.state.lock().expect("emulator state lock");
        st.tick();
        st
    }

    /// The xpath of a location: a vsys on a firewall, a device group on Panorama.
    pub fn location_xpath(&self, location: &str) -> String {
        if self.shared.opts.panorama {
            format!("{DEVICE}/device-group/entry[@name='{location}']")
        } else {
            format!("{DEVICE}/vsys/entry[@name='{location}']")
        }
    }

    /// Members (IPs) of a static group in the running config, resolved through its address
    /// objects (ip-netmask of a single host, IPv4 or IPv6; others are skipped); None if the
    /// group is absent.
    pub fn running_static_group(&self, location: &str, group: &str) -> Option<BTreeSet<IpAddr>> {
        let loc = self.location_xpath(location);
        static_group(&self.state().running, &loc, group)
    }

    /// The same for a device group as last pushed to its firewalls by commit-all.
    pub fn pushed_static_group(&self, device_group: &str, group: &str) -> Option<BTreeSet<IpAddr>> {
        let st = self.state();
        let mut root = Node::new("config");
        let dg = st.pushed.get(device_group)?.clone();
        xml::ensure(&mut root, &xml::parse_xpath(&format!("{DEVICE}/device-group")).expect("xpath")).children.push(dg);
        static_group(&root, &format!("{DEVICE}/device-group/entry[@name='{device_group}']"), group)
    }

    /// IPs registered with `tag` (on any User-ID target).
    pub fn registered_ips(&self, tag: &str) -> BTreeSet<IpAddr> {
        self.state().tagged(None, tag)
    }

    /// IPs registered with `tag` on one User-ID target (`""`: the device itself).
    pub fn registered_ips_on(&self, target: &str, tag: &str) -> BTreeSet<IpAddr> {
        self.state().tagged(Some(target), tag)
    }

    /// Moves the User-ID clock forward (timeouts expire).
    pub fn advance_clock(&self, by: Duration) {
        self.state().clock_offset += by;
    }

    /// How long later commit jobs stay ACT.
    pub fn set_commit_duration(&self, d: Duration) {
        self.state().commit_duration = d;
    }

    /// Another admin takes the config lock.
    pub fn hold_config_lock(&self, by: &str) {
        self.state().lock = Some(by.to_string());
    }

    /// The lock is released.
    pub fn release_config_lock(&self) {
        self.state().lock = None;
    }

    /// Commit jobs that finished successfully.
    pub fn commits(&self) -> u64 {
        self.state().commits
    }

    /// Commit-all jobs that finished successfully.
    pub fn pushes(&self) -> u64 {
        self.state().pushes
    }

    /// A change made by hand to the candidate config (`set`/`edit`/`delete`, as in the API),
    /// without a commit.
    pub fn edit_candidate(&self, action: &str, xpath: &str, element: Option<&str>) -> anyhow::Result<()> {
        let mut st = self.state();
        let element = element.map(Node::parse_fragment).transpose().map_err(anyhow::Error::msg)?;
        let mut tree = st.candidate.clone();
        config::apply_op(&mut tree, action, xpath, element).map_err(|(c, m)| anyhow::anyhow!("code {c}: {m}"))?;
        st.candidate = tree;
        Ok(())
    }

    /// A change made by hand and committed at once (drift, or objects of other admins).
    pub fn edit_running(&self, action: &str, xpath: &str, element: Option<&str>) -> anyhow::Result<()> {
        self.edit_candidate(action, xpath, element)?;
        let mut st = self.state();
        st.running = st.candidate.clone();
        Ok(())
    }

    /// The XML of the running config at `xpath` (every match), for assertions.
    pub fn running_xml(&self, xpath: &str) -> String {
        let st = self.state();
        let steps = xml::parse_xpath(xpath).expect("valid xpath");
        xml::select(&st.running, &steps).iter().map(|n| n.to_xml()).collect()
    }

    /// Whether the candidate differs from the running config.
    pub fn pending_changes(&self) -> bool {
        let st = self.state();
        st.candidate != st.running
    }
}

impl Drop for PanosEmulator {
    fn drop(&mut self) {
        self.server.take();
        if self.remove_ca {
            let _ = std::fs::remove_file(&self.ca_file);
        }
    }
}

/// The IPs a static group's members resolve to through host address objects.
fn static_group(root: &Node, location: &str, group: &str) -> Option<BTreeSet<IpAddr>> {
    let g = xml::select(root, &xml::parse_xpath(&format!("{location}/address-group/entry[@name='{group}']")).ok()?).first().copied()?;
    let members: Vec<&str> = g.child("static").map(|s| s.children_named("member").map(|m| m.text.as_str()).collect()).unwrap_or_default();
    let mut out = BTreeSet::new();
    for m in members {
        for base in [location, "/config/shared"] {
            let steps = xml::parse_xpath(&format!("{base}/address/entry[@name='{m}']")).ok()?;
            if let Some(a) = xml::select(root, &steps).first() {
                // A host: IPv4 with /32 or no length, IPv6 with /128 or no length.
                let ip: Option<IpAddr> = a.child("ip-netmask").and_then(|n| {
                    let (addr, len) = n.text.split_once('/').map_or((n.text.as_str(), None), |(a, l)| (a, Some(l)));
                    let ip: IpAddr = addr.parse().ok()?;
                    len.is_none_or(|l| l == if ip.is_ipv4() { "32" } else { "128" }).then_some(ip)
                });
                out.extend(ip);
                break;
            }
        }
    }
    Some(out)
}

/// PAN-OS's web server answers an overloaded or failing management plane with an HTML page.
fn server_error(n: u64) -> Response {
    let (code, text) = if n.is_multiple_of(2) { (500, "Internal Server Error") } else { (503, "Service Temporarily Unavailable") };
    Response::new(
        code,
        "text/html",
        format!("<html>\r\n<head><title>{code} {text}</title></head>\r\n<body>\r\n<center><h1>{code} {text}</h1></center>\r\n</body>\r\n</html>\r\n"),
    )
}

fn handle(sh: &Shared, r: &Request) -> Reply {
    let n = sh.requests.fetch_add(1, Ordering::Relaxed);
    sh.faults.wrap(
        || server_error(n),
        || {
            let reply = if r.path != "/api/" && r.path != "/api" {
                ApiReply { status: 404, body: "<response status=\"error\"><msg>Not Found</msg></response>".into() }
            } else if r.method != "GET" && r.method != "POST" {
                ApiReply { status: 405, body: "<response status=\"error\"><msg>Method Not Allowed</msg></response>".into() }
            } else {
                api(sh, r)
            };
            Reply::Respond(Response::new(reply.status, "application/xml; charset=UTF-8", reply.body))
        },
    )
}

fn api(sh: &Shared, r: &Request) -> ApiReply {
    let p = r.params();
    let ty = p.get("type").map(String::as_str).unwrap_or("");
    if ty == "keygen" {
        return match (p.get("user"), p.get("password")) {
            (Some(u), Some(pw)) if *u == sh.opts.user && *pw == sh.opts.password => {
                ApiReply::ok(format!("<response status=\"success\"><result><key>{}</key></result></response>", xml::escape(&sh.opts.api_key)))
            }
            _ => ApiReply::forbidden(),
        };
    }
    let key = r.header("x-pan-key").map(String::from).or_else(|| p.get("key").cloned());
    if key.as_deref() != Some(sh.opts.api_key.as_str()) {
        return ApiReply::forbidden();
    }
    let user = sh.opts.user.as_str();
    let mut st = sh.state.lock().expect("emulator state lock");
    st.tick();
    match ty {
        "config" => config::handle(&mut st, user, &p),
        "commit" => jobs::commit(&mut st, user, &p),
        "op" => op(&mut st, &p),
        "user-id" => userid::handle(&mut st, &p),
        "" => ApiReply { status: 400, body: "<response status=\"error\" code=\"400\"><result><msg>Missing request type parameter</msg></result></response>".into() },
        _ => ApiReply { status: 400, body: "<response status=\"error\" code=\"400\"><result><msg>Invalid request type parameter</msg></result></response>".into() },
    }
}

/// `type=op`: the few operational commands fw-sync and its checks use.
fn op(st: &mut State, p: &BTreeMap<String, String>) -> ApiReply {
    let cmd = p.get("cmd").map(String::as_str).unwrap_or("");
    let Ok(doc) = roxmltree::Document::parse(cmd) else {
        return ApiReply::error(Some(17), "Malformed command");
    };
    let root = doc.root_element();
    let first = root.first_element_child();
    let second = first.and_then(|f| f.first_element_child());
    match (root.tag_name().name(), first.map(|f| f.tag_name().name()), second.map(|s| s.tag_name().name())) {
        ("show", Some("jobs"), _) => jobs::show_jobs(st, first.expect("matched")),
        ("show", Some("object"), Some("registered-ip")) => userid::show_registered(st, p.get("target").map(String::as_str), second.expect("matched")),
        ("check", Some("pending-changes"), _) => {
            let yes = if st.candidate != st.running { "yes" } else { "no" };
            ApiReply::ok(format!("<response status=\"success\"><result>{yes}</result></response>"))
        }
        (a, b, _) => ApiReply::error(Some(17), &format!("{a} -> {} is unexpected", b.unwrap_or("(nothing)"))),
    }
}

/// Command-line options of `fw-emulator panos`.
#[derive(clap::Parser, Debug)]
#[command(name = "fw-emulator panos", about = "PAN-OS XML API emulator")]
struct Cli {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Write the CA certificate (PEM) here.
    #[arg(long)]
    ca_out: PathBuf,
    #[arg(long, default_value = "admin")]
    user: String,
    #[arg(long, default_value = "admin")]
    password: String,
    #[arg(long, default_value = "LUFRPT1emulatorkey")]
    api_key: String,
    /// Emulate Panorama (device groups, commit-all).
    #[arg(long)]
    panorama: bool,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Commit job duration in milliseconds.
    #[arg(long, default_value_t = 20)]
    commit_ms: u64,
}

/// Runs the emulator from the command line until killed (`args[0]` is the program name).
pub fn main(args: Vec<String>) -> anyhow::Result<()> {
    let cli = Cli::try_parse_from(args)?;
    let emu = PanosEmulator::start(PanosOptions {
        panorama: cli.panorama,
        api_key: cli.api_key,
        user: cli.user,
        password: cli.password,
        seed: cli.seed,
        listen: cli.listen,
        ca_out: Some(cli.ca_out),
        commit_duration: Duration::from_millis(cli.commit_ms),
    })?;
    let mut out = std::io::stdout();
    writeln!(out, "listening https://127.0.0.1:{}", emu.port())?;
    out.flush()?;
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
