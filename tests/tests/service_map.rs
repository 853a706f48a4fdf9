//! The service map in a real headless browser (root; Debian's chromium, which
//! scripts/setup.sh installs): the demo application in a lab with the demo policies applied,
//! allowed and denied traffic between its pods, `bulkhead ui` serving the instance's map, and
//! chromium loading the page: the demo's workloads are nodes, a denied edge is drawn, a click
//! on it shows the deciding tier, policy and rule. A screenshot goes to
//! `target/service-map.png`. `bulkhead flows graph -o svg` draws the same map.

use std::io::{BufRead as _, Read as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bulkhead_e2e::{LabAgent, TempDir, bulkhead_bin, run_bulkhead, workspace_root};
use bulkhead_lab::Protocol;
use bulkhead_lab::probe::probe;

const CHROMIUM: &str = "/usr/bin/chromium";
const T: Duration = Duration::from_millis(500);

/// Kills and reaps a child process when dropped, so a failed assertion leaves none behind.
struct Reaper(Child);

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The demo topology, its pods moved from 10.240.x to 10.248.x (the lab subnet this test owns).
fn demo_topology() -> String {
    let path = workspace_root().join("deploy/demo/topology.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(text.contains("10.240."), "the demo topology's addresses moved: update this test");
    text.replace("10.240.", "10.248.").replace("name: demo", "name: service-map")
}

/// Runs chromium headless on `url` with `args`, its profile in a temp folder; returns stdout.
fn chromium(profile: &Path, url: &str, args: &[&str]) -> String {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/setup.sh (it installs Debian's chromium for this test)"
    );
    let mut cmd = Command::new(CHROMIUM);
    cmd.args(["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--virtual-time-budget=5000"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .env("HOME", profile)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = Reaper(cmd.spawn().expect("spawning chromium"));
    let (mut out, mut err) = (child.0.stdout.take().expect("stdout"), child.0.stderr.take().expect("stderr"));
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(st) = child.0.try_wait().expect("waiting for chromium") {
            break st;
        }
        assert!(Instant::now() < deadline, "chromium did not finish within 90 s on {url}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let (stdout, stderr) = (out_thread.join().unwrap_or_default(), err_thread.join().unwrap_or_default());
    assert!(status.success(), "chromium {args:?} {url}: {status}\n{stderr}");
    stdout
}

#[test]
fn the_service_map_page_shows_the_demo_workloads_and_a_denied_edge_in_a_real_browser() {
    // Checked first: without the browser the test fails saying what to do, never passes.
    assert!(Path::new(CHROMIUM).exists(), "{CHROMIUM} is missing: run scripts/setup.sh (it installs Debian's chromium for this test)");
    let f = LabAgent::new(&demo_topology(), "service-map-topology.yaml", false);
    let instance = f.lab.pin_dir().file_name().expect("instance").to_string_lossy().into_owned();
    let mut ds = bulkhead_lab::datastore::Datastore::for_lab(&f.lab);
    let dir = workspace_root().join("deploy/demo/policies");
    let mut policies: Vec<PathBuf> = std::fs::read_dir(&dir).expect("demo policies").map(|e| e.expect("entry").path()).collect();
    policies.sort();
    for p in &policies {
        ds.apply(&std::fs::read_to_string(p).expect("policy")).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    }
    ds.flush().expect("datastore");
    f.agent().sync_now().expect("sync");

    let pod = |key: &str| f.lab.pods().iter().find(|p| p.key == key).unwrap_or_else(|| panic!("pod {key}")).clone();
    let (frontend, api, db) = (pod("shop/frontend"), pod("shop/api"), pod("data/db"));
    assert!(probe(&frontend, api.ip, 8080, Protocol::Tcp, T), "frontend reaches api");
    assert!(probe(&api, db.ip, 5432, Protocol::Tcp, T), "api reaches db");
    assert!(probe(f.lab.outside(), frontend.ip, 80, Protocol::Tcp, T), "outside reaches frontend");
    assert!(!probe(&frontend, db.ip, 5432, Protocol::Tcp, T), "frontend -> db is denied");
    assert!(!probe(f.lab.outside(), db.ip, 5432, Protocol::Tcp, T), "outside -> db is denied");

    // The agent writes the flow log within its tick: wait until the map has both edges.
    let deadline = Instant::now() + Duration::from_secs(10);
    let model = loop {
        let out = run_bulkhead(&["flows", "graph", "--instance", &instance, "-o", "json"]);
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON model");
            let has = |from: &str, to: &str, verdict: &str| {
                v["edges"].as_array().is_some_and(|es| es.iter().any(|e| e["from"] == from && e["to"] == to && e["verdict"] == verdict))
            };
            if has("shop/frontend", "shop/api", "allowed") && has("shop/frontend", "data/db", "denied") {
                break v;
            }
        }
        assert!(Instant::now() < deadline, "no allowed frontend -> api and denied frontend -> db edges: {}", String::from_utf8_lossy(&out.stdout));
        std::thread::sleep(Duration::from_millis(200));
    };
    let denied = model["edges"].as_array().expect("edges").iter().find(|e| e["from"] == "shop/frontend" && e["to"] == "data/db").expect("denied edge");
    assert_eq!((denied["verdict"].as_str(), denied["port"].as_u64(), denied["current"].as_bool()), (Some("denied"), Some(5432), Some(true)), "{denied}");
    assert!(denied["tier"].is_string() && denied["decided_by"].as_str().is_some_and(|d| d.starts_with("deny at egress")), "the frontend's egress denied it: {denied}");
    let allowed = model["edges"].as_array().expect("edges").iter().find(|e| e["from"] == "shop/frontend" && e["to"] == "shop/api").expect("allowed edge");
    assert_eq!(allowed["flows"], 1, "one flow, seen at both ends: {allowed}");
    assert!(allowed["policy"].as_str().is_some_and(|p| p.ends_with(" shop/api")), "admitted by the api's policy: {allowed}");
    let groups: Vec<&str> = model["nodes"].as_array().expect("nodes").iter().filter_map(|n| n["group"].as_str()).collect();
    assert_eq!(groups, ["outside", "data", "shop", "shop"], "{model}");

    // The static picture.
    let svg = run_bulkhead(&["flows", "graph", "--instance", &instance, "-o", "svg"]);
    assert!(svg.status.success(), "{}", String::from_utf8_lossy(&svg.stderr));
    let svg = String::from_utf8_lossy(&svg.stdout);
    assert!(svg.starts_with("<svg"), "{svg}");
    for n in ["shop/frontend", "shop/api", "data/db"] {
        assert!(svg.contains(&format!("data-node=\"{n}\"")), "{n} in the SVG");
    }
    assert!(svg.contains("data-verdict=\"denied\"") && svg.contains("data-verdict=\"allowed\""), "{svg}");

    // The page, served by `bulkhead ui` on a port the kernel picks (printed on its first line).
    let mut ui = Command::new(bulkhead_bin())
        .args(["ui", "--instance", &instance, "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("bulkhead ui");
    let stdout = ui.stdout.take().expect("stdout");
    let ui = Reaper(ui);
    let mut first = String::new();
    std::io::BufReader::new(stdout).read_line(&mut first).expect("bulkhead ui's first line");
    let url = first.split_whitespace().find(|w| w.starts_with("http://")).unwrap_or_else(|| panic!("no URL in {first:?}")).to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "loopback: {url}");

    let profile = TempDir::new("chromium");
    let dom = chromium(&profile.0, &url, &["--dump-dom"]);
    for n in ["shop/frontend", "shop/api", "data/db", "10.250.0.2"] {
        assert!(dom.contains(&format!("data-node=\"{n}\"")), "node {n} not on the page:\n{dom}");
    }
    assert!(dom.contains("data-verdict=\"denied\"") && dom.contains("data-verdict=\"allowed\""), "no denied and allowed edges on the page:\n{dom}");
    assert!(dom.contains("3 workloads, 1 outside address,"), "status line:\n{dom}");

    // A click on the denied edge (the page's `#select=denied` dispatches one) fills the panel.
    let selected = format!("{url}#select=denied");
    let dom = chromium(&profile.0, &selected, &["--dump-dom"]);
    let panel = &dom[dom.find("id=\"edge-details\"").expect("details panel")..];
    for want in ["Source", "Destination", "Verdict", "Tier", "Policy", "Rule", "denied", "5432/tcp"] {
        assert!(panel.contains(want), "{want:?} missing from the details panel:\n{panel}");
    }
    assert!(panel.contains("data/db") && panel.contains("Decided by"), "{panel}");

    let png = workspace_root().join("target/service-map.png");
    std::fs::create_dir_all(png.parent().expect("target")).expect("target dir");
    let _ = std::fs::remove_file(&png);
    chromium(&profile.0, &selected, &[&format!("--screenshot={}", png.display()), "--window-size=1280,800", "--hide-scrollbars"]);
    let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{}: {e}", png.display()));
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 10_000, "{} is not a real screenshot ({} bytes)", png.display(), bytes.len());
    // Width and height from the IHDR chunk.
    let dim = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
    assert_eq!((dim(16), dim(20)), (1280, 800), "screenshot size");
    eprintln!("service map screenshot: {}", png.display());
    drop(ui);
}
