//! The chained CNI plugin in a real CNI chain: Debian's `bridge` + `host-local` plugins make
//! each container's veth on a bridge, then `bulkhead-cni` registers it with the real agent.
//! The "runtime" is this test, calling the plugins as libcni does (env, stdin, prevResult), from
//! inside a node network namespace so parallel runs stay apart. Checks: ADD passes prevResult
//! through and returns only once the first packet is judged (a policy applies at once), CHECK,
//! DEL idempotent and without agent (queued, replayed at the next start), ADD without agent
//! fails with code 11 and leaves nothing, a registration naming a missing interface is
//! refused, and parallel ADDs. Needs root, the built `bulkhead-cni` and Debian's CNI plugins.

use std::{
    io::Write as _,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use serde_json::{Value, json};

mod common;

const CNI_PATH: &str = "/usr/lib/cni";

fn plugin_bin() -> PathBuf {
    common::workspace_bin("bulkhead-cni", "BULKHEAD_CNI_BIN")
}

use common::ip;

/// A node namespace (where the bridge and host veths live), container namespaces, an agent
/// instance and a host-local state folder; all removed on drop.
struct Net {
    id: String,
    containers: Vec<String>,
    store: PathBuf,
    ipam: PathBuf,
}

impl Net {
    fn new(n: usize) -> Net {
        // SAFETY: trivial syscall.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root (network namespaces, BPF)");
        let id = format!("{:04x}", std::process::id() & 0xffff);
        let net = Net {
            containers: (0..n).map(|i| format!("bhcni{id}-c{i}")).collect(),
            store: std::env::temp_dir().join(format!("bhcni{id}-store")),
            ipam: std::env::temp_dir().join(format!("bhcni{id}-ipam")),
            id,
        };
        ip(&["netns", "add", &net.node()]);
        ip(&["-n", &net.node(), "link", "set", "lo", "up"]);
        for c in &net.containers {
            ip(&["netns", "add", c]);
        }
        std::fs::create_dir_all(&net.store).expect("datastore");
        net
    }
    fn node(&self) -> String {
        format!("bhcni{}-node", self.id)
    }
    fn instance(&self) -> String {
        format!("bhcni{}", self.id)
    }

    fn conf(&self, prev: Option<&Value>) -> Vec<Value> {
        let bridge = json!({"cniVersion": "1.0.0", "name": format!("bhcni{}", self.id), "type": "bridge",
            "bridge": format!("bhbr{}", self.id), "isGateway": true, "ipMasq": false,
            "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.77.0.0/24"}]], "dataDir": self.ipam}});
        let mut ours = json!({"cniVersion": "1.0.0", "name": format!("bhcni{}", self.id), "type": "bulkhead-cni", "instance": self.instance()});
        if let Some(p) = prev {
            ours["prevResult"] = p.clone();
        }
        vec![bridge, ours]
    }

    /// Runs one plugin as the runtime would, from inside the node namespace.
    fn call(&self, plugin: &std::path::Path, cmd: &str, container: usize, conf: &Value, pod: &str) -> (i32, Value) {
        let netns = format!("/var/run/netns/{}", self.containers[container]);
        let mut c = Command::new(plugin);
        c.env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", format!("ctr{}-{container}", self.id))
            .env("CNI_NETNS", &netns)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", CNI_PATH)
            .env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=x;K8S_POD_NAME={pod}"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        bulkhead_netns::pre_exec_enter(&mut c, bulkhead_netns::open(&self.node()).expect("node netns"));
        let mut child = c.spawn().unwrap_or_else(|e| panic!("spawning {}: {e}", plugin.display()));
        child.stdin.take().expect("stdin").write_all(conf.to_string().as_bytes()).expect("write config");
        let out = child.wait_with_output().expect("plugin");
        let text = String::from_utf8_lossy(&out.stdout);
        let v = serde_json::from_str(text.trim()).unwrap_or(Value::Null);
        (out.status.code().unwrap_or(-1), v)
    }

    /// The chain's ADD: bridge, then bulkhead-cni with the bridge's result as prevResult.
    fn add(&self, container: usize, pod: &str) -> (i32, Value, Value) {
        let confs = self.conf(None);
        let (rc, prev) = self.call(&PathBuf::from(CNI_PATH).join("bridge"), "ADD", container, &confs[0], pod);
        assert_eq!(rc, 0, "bridge ADD: {prev}");
        let ours = &self.conf(Some(&prev))[1];
        let (rc, out) = self.call(&plugin_bin(), "ADD", container, ours, pod);
        (rc, prev, out)
    }

    /// The chain's DEL in reverse order (the runtime's cached result as prevResult).
    fn del(&self, container: usize, pod: &str, prev: &Value) -> i32 {
        let confs = self.conf(Some(prev));
        let (rc, _) = self.call(&plugin_bin(), "DEL", container, &confs[1], pod);
        let _ = self.call(&PathBuf::from(CNI_PATH).join("bridge"), "DEL", container, &confs[0], pod);
        rc
    }

    fn agent(&self) -> bulkhead_agent::Agent {
        bulkhead_agent::Agent::start(bulkhead_agent::AgentConfig {
            datastore_dir: self.store.clone(),
            node_netns: Some(self.node()),
            pin_dir: PathBuf::from("/sys/fs/bpf/bulkhead").join(self.instance()),
            watch: false,
            flow_records: true,
        })
        .expect("agent starts")
    }

    /// Runs `f` in container `i`'s network namespace.
    fn in_container<T: Send>(&self, i: usize, f: impl FnOnce() -> T + Send) -> T {
        bulkhead_netns::in_netns(&self.containers[i], f).unwrap_or_else(|e| panic!("in container {i}: {e}"))
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("ip").args(["netns", "del", c]).status();
        }
        let _ = Command::new("ip").args(["netns", "del", &self.node()]).status();
        let _ = std::fs::remove_dir_all(&self.store);
        let _ = std::fs::remove_dir_all(&self.ipam);
        let _ = std::fs::remove_dir_all(PathBuf::from("/run/bulkhead").join(self.instance()));
        let _ = Command::new("sh").arg("-c").arg(format!("rm -rf /sys/fs/bpf/bulkhead/{}", self.instance())).status();
    }
}

fn addr_of(result: &Value) -> Ipv4Addr {
    result["ips"][0]["address"].as_str().and_then(|a| a.split('/').next()).and_then(|a| a.parse().ok()).unwrap_or_else(|| panic!("no address in {result}"))
}

const PODS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x, labels: {app: b}}\n";
const DENY_B: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-b, namespace: x}\nspec: {podSelector: {matchLabels: {app: b}}, policyTypes: [Ingress]}\n";

#[test]
fn the_chained_plugin_registers_real_containers_with_the_agent() {
    let net = Net::new(3);
    std::fs::write(net.store.join("pods.yaml"), PODS).expect("pods");
    std::fs::write(net.store.join("deny.yaml"), DENY_B).expect("deny");
    let agent = net.agent();

    // ADD a and b: prevResult passed through (same cniVersion), enforced when ADD returns.
    let (rc, prev_a, out_a) = net.add(0, "a");
    assert_eq!(rc, 0, "bulkhead-cni ADD: {out_a}");
    assert_eq!(out_a, prev_a, "ADD passes prevResult through unchanged");
    let (rc, prev_b, out_b) = net.add(1, "b");
    assert_eq!(rc, 0, "bulkhead-cni ADD: {out_b}");
    let (ip_a, ip_b) = (addr_of(&prev_a), addr_of(&prev_b));
    let listener = net.in_container(1, move || std::net::TcpListener::bind((ip_b, 8080)).expect("bind in b"));
    std::thread::spawn(move || for _s in listener.incoming() {});
    // b's labels come from the datastore, its address and veth from the registration: the
    // deny applies to the first packet.
    let connect = |from: usize, to: Ipv4Addr| net.in_container(from, move || TcpStream::connect_timeout(&SocketAddr::from((to, 8080)), Duration::from_millis(700)).is_ok());
    assert!(!connect(0, ip_b), "a -> b must be denied by deny-b from the first packet");
    std::fs::remove_file(net.store.join("deny.yaml")).expect("rm deny");
    agent.sync_now().expect("sync");
    assert!(connect(0, ip_b), "a -> b allowed once the deny is gone");
    let _ = ip_a;

    // CHECK: registered and enforced -> 0; an unknown container -> an error object.
    let ours = net.conf(Some(&prev_a))[1].clone();
    assert_eq!(net.call(&plugin_bin(), "CHECK", 0, &ours, "a").0, 0, "CHECK after ADD");
    let (rc, err) = net.call(&plugin_bin(), "CHECK", 2, &ours, "c");
    assert!(rc != 0 && err["code"] == 100, "CHECK of a container never added: {err}");

    // The agent refuses a registration naming an interface that does not exist.
    let sock = bulkhead_cni::api::socket_path(&net.instance());
    let bogus = bulkhead_cni::api::Attachment {
        container_id: "bogus".into(),
        ifname: "eth0".into(),
        netns: "/nonexistent".into(),
        host_interface: "nope0".into(),
        ips: vec![Ipv4Addr::new(10, 77, 0, 250).into()],
        pod_namespace: "x".into(),
        pod_name: "ghost".into(),
        cgroup: None,
    };
    let r = bulkhead_cni::api::call(&sock, &bulkhead_cni::api::Request::Add(bogus), Duration::from_secs(10)).expect("agent answers");
    assert!(!r.ok && r.error.as_deref().unwrap_or("").contains("nope0"), "refusal names the interface: {r:?}");

    // STATUS: ready while the agent runs. GC keeps only the attachments the runtime lists.
    assert_eq!(net.call(&plugin_bin(), "STATUS", 0, &ours, "a").0, 0, "STATUS with the agent up");
    let mut gc = ours.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": format!("ctr{}-0", net.id), "ifname": "eth0"}]);
    assert_eq!(net.call(&plugin_bin(), "GC", 0, &gc, "a").0, 0, "GC listing only a");
    assert_eq!(net.call(&plugin_bin(), "CHECK", 0, &ours, "a").0, 0, "a kept by GC");
    assert_ne!(net.call(&plugin_bin(), "CHECK", 1, &ours, "b").0, 0, "b's state removed by GC");

    // DEL is idempotent.
    assert_eq!(net.del(1, "b", &prev_b), 0);
    assert_eq!(net.del(1, "b", &prev_b), 0, "a second DEL succeeds");
    assert_eq!(net.call(&plugin_bin(), "DEL", 1, &net.conf(None)[1], "b").0, 0, "DEL without prevResult succeeds");

    // Agent down: ADD fails with code 11 and leaves nothing; DEL succeeds and is queued.
    agent.stop_keep_enforcing().expect("stop");
    let (rc, _prev_c, out_c) = net.add(2, "c");
    assert!(rc != 0 && out_c["code"] == 11, "ADD without agent: try again later: {out_c}");
    let (rc, err) = net.call(&plugin_bin(), "CHECK", 0, &ours, "a");
    assert!(rc != 0 && err["code"] == 11, "CHECK without agent: try again later: {err}");
    let (rc, err) = net.call(&plugin_bin(), "STATUS", 0, &ours, "a");
    assert!(rc != 0 && err["code"] == 50, "STATUS without agent: not ready: {err}");
    assert_eq!(net.del(0, "a", &prev_a), 0, "DEL without agent succeeds");
    let queued = bulkhead_cni::api::del_queue_dir(&net.instance());
    assert_eq!(std::fs::read_dir(&queued).map(|r| r.count()).unwrap_or(0), 1, "the DEL waits in {}", queued.display());
    let agent = net.agent();
    assert_eq!(std::fs::read_dir(&queued).map(|r| r.count()).unwrap_or(0), 0, "the restarted agent replayed the queued DEL");
    let (rc, err) = net.call(&plugin_bin(), "CHECK", 0, &ours, "a");
    assert!(rc != 0, "a is gone after the replayed DEL: {err}");
    assert!(!std::path::Path::new("/run/bulkhead").join(net.instance()).join("endpoints").read_dir().map(|mut r| r.any(|e| e.map(|e| e.file_name().to_string_lossy().contains("-2-")).unwrap_or(false))).unwrap_or(false), "the failed ADD left no registration");
    drop(agent);
}
