//! Pod created to enforced: the time of `bulkhead-cni ADD` in a real CNI chain (Debian's
//! `bridge` + `host-local` first, as a runtime runs them), against the real agent. ADD returns
//! only once the endpoint's programs are attached and its entries written, so this is the
//! time from the runtime handing over the container to its first packet being judged (the
//! `cni_chain` test checks that first packet is denied by a policy already in place). Each
//! iteration creates a container network namespace, runs bridge ADD (not timed), times
//! bulkhead-cni ADD, checks the endpoint with CHECK, then DELs both and removes the namespace.
//! Needs root, Debian's CNI plugins and the built `bulkhead-cni`.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use bulkhead_bench::{percentile, require_root, result};
use serde_json::{Value, json};

const ITERATIONS: usize = 40;

fn plugin_bin() -> PathBuf {
    std::env::var_os("BULKHEAD_CNI_BIN").map(Into::into).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/bulkhead-cni"))
}

struct Guard {
    node: String,
    store: PathBuf,
    ipam: PathBuf,
    instance: String,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.node]).status();
        let _ = std::fs::remove_dir_all(&self.store);
        let _ = std::fs::remove_dir_all(&self.ipam);
        let _ = std::fs::remove_dir_all(PathBuf::from("/run/bulkhead").join(&self.instance));
    }
}

/// Removes a container namespace at the end of its iteration, also on a panic.
struct NsGuard(String);

impl Drop for NsGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn call(node: &str, plugin: &Path, cmd: &str, netns: &str, cid: &str, conf: &Value) -> (bool, Value, Duration) {
    let mut c = Command::new(plugin);
    c.env("CNI_COMMAND", cmd)
        .env("CNI_CONTAINERID", cid)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/usr/lib/cni")
        .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME={cid}"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    bulkhead_netns::pre_exec_enter(&mut c, bulkhead_netns::open(node).expect("node netns"));
    let t0 = Instant::now();
    let mut child = c.spawn().expect("spawn plugin");
    child.stdin.take().expect("stdin").write_all(conf.to_string().as_bytes()).expect("stdin");
    let out = child.wait_with_output().expect("plugin");
    let d = t0.elapsed();
    (out.status.success(), serde_json::from_slice(&out.stdout).unwrap_or(Value::Null), d)
}

fn main() {
    if !require_root("cni") {
        return;
    }
    assert!(plugin_bin().is_file(), "build bulkhead-cni first: cargo build --release -p bulkhead-cni");
    let id = format!("{:04x}", std::process::id() & 0xffff);
    let g = Guard {
        node: format!("bhcb{id}-node"),
        store: std::env::temp_dir().join(format!("bhcb{id}-store")),
        ipam: std::env::temp_dir().join(format!("bhcb{id}-ipam")),
        instance: format!("bhcb{id}"),
    };
    assert!(Command::new("ip").args(["netns", "add", &g.node]).status().expect("ip").success());
    std::fs::create_dir_all(&g.store).expect("store");
    // A policy in place, so every ADD compiles and writes real entries.
    std::fs::write(g.store.join("p.yaml"), "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}, policyTypes: [Ingress]}\n").expect("policy");
    let agent = bulkhead_agent::Agent::start(bulkhead_agent::AgentConfig {
        datastore_dir: g.store.clone(),
        node_netns: Some(g.node.clone()),
        pin_dir: PathBuf::from("/sys/fs/bpf/bulkhead").join(&g.instance),
        watch: false,
        flow_records: true,
    })
    .expect("agent");
    let bridge = json!({"cniVersion": "1.0.0", "name": g.instance, "type": "bridge", "bridge": format!("bhcb{id}"), "isGateway": true,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.76.0.0/24"}]], "dataDir": g.ipam}});
    let mut times = Vec::new();
    for i in 0..ITERATIONS {
        let ns = format!("bhcb{id}-c{i}");
        assert!(Command::new("ip").args(["netns", "add", &ns]).status().expect("ip").success());
        let _ns_guard = NsGuard(ns.clone());
        let netns = format!("/var/run/netns/{ns}");
        let cid = format!("c{i}");
        let (ok, prev, _) = call(&g.node, Path::new("/usr/lib/cni/bridge"), "ADD", &netns, &cid, &bridge);
        assert!(ok, "bridge ADD: {prev}");
        let ours = json!({"cniVersion": "1.0.0", "name": g.instance, "type": "bulkhead-cni", "instance": g.instance, "prevResult": prev});
        let (ok, out, d) = call(&g.node, &plugin_bin(), "ADD", &netns, &cid, &ours);
        assert!(ok, "bulkhead-cni ADD: {out}");
        times.push(d);
        let (ok, out, _) = call(&g.node, &plugin_bin(), "CHECK", &netns, &cid, &ours);
        assert!(ok, "CHECK after ADD: {out}");
        call(&g.node, &plugin_bin(), "DEL", &netns, &cid, &ours);
        call(&g.node, Path::new("/usr/lib/cni/bridge"), "DEL", &netns, &cid, &bridge);
    }
    drop(agent);
    times.sort();
    let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e3);
    let (p50, p99) = (percentile(&times, 50.0).expect("samples"), percentile(&times, 99.0).expect("samples"));
    println!("cni: bulkhead-cni ADD (pod created -> first packet judged), n={} p50={} ms p99={} ms max={} ms", times.len(), ms(p50), ms(p99), ms(*times.last().expect("samples")));
    result("cni_add_to_enforced_p50_ms", ms(p50));
    result("cni_add_to_enforced_p99_ms", ms(p99));
    drop(g);
}
