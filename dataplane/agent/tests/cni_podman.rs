//! Real containers under a real runtime: podman (CNI backend, set up by scripts/setup.sh)
//! starts busybox containers through a conflist of bridge + host-local + bulkhead-cni, and the
//! real agent enforces policy on their traffic: allowed and denied connections, a policy change
//! reaching an established connection, the detector bound to the container's cgroup with no
//! annotation, state removed when a container stops, a container started while the agent is
//! down failing cleanly, and 20 containers started in parallel leaving consistent state. Needs
//! root, podman, runc, Debian's CNI plugins and the built `bulkhead-cni`.

use std::{
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

mod common;

const ROOTFS: &str = "/opt/bulkhead/rootfs/busybox";
const PLUGIN_DIR: &str = "/opt/bulkhead/cni/bin";

fn plugin_bin() -> PathBuf {
    common::workspace_bin("bulkhead-cni", "BULKHEAD_CNI_BIN")
}

fn podman(args: &[&str]) -> std::process::Output {
    Command::new("podman").args(args).output().unwrap_or_else(|e| panic!("podman {args:?}: {e} (scripts/setup.sh installs podman)"))
}

/// One test's network (conflist, bridge, IPAM state), agent instance and containers; all
/// removed on drop, also when the test fails.
struct Env {
    id: String,
    store: PathBuf,
    ipam: PathBuf,
}

impl Env {
    fn new() -> Env {
        Env::with_families(true, false)
    }

    /// A network handing out IPv4 addresses (`v4`), IPv6 addresses (`v6`, a host-local range
    /// of its own), or both: containers are IPv4-only, IPv6-only or dual-stack.
    fn with_families(v4: bool, v6: bool) -> Env {
        // SAFETY: trivial syscall.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root (podman, BPF)");
        assert!(Path::new(ROOTFS).join("bin/busybox").is_file(), "no busybox root file system at {ROOTFS}: run scripts/setup.sh");
        let pid = std::process::id();
        let id = format!("{:04x}{}", pid & 0xffff, match (v4, v6) { (true, false) => "", (true, true) => "6", _ => "o" });
        let e = Env { store: std::env::temp_dir().join(format!("bhpd{id}-store")), ipam: std::env::temp_dir().join(format!("bhpd{id}-ipam")), id };
        // The plugin the conflist names, installed atomically (parallel tests may run it).
        std::fs::create_dir_all(PLUGIN_DIR).expect("plugin dir");
        let tmp = Path::new(PLUGIN_DIR).join(format!(".bulkhead-cni.{}", e.id));
        std::fs::copy(plugin_bin(), &tmp).expect("install plugin");
        std::fs::rename(&tmp, Path::new(PLUGIN_DIR).join("bulkhead-cni")).expect("install plugin");
        let subnet = format!("10.{}.{}.0/24", if v6 { 78 } else { 79 }, pid % 250);
        let subnet6 = format!("fd00:{}:{:x}::/64", if v4 { 79 } else { 77 }, pid % 250);
        let ranges = match (v4, v6) {
            (true, true) => format!(r#"[{{"subnet":"{subnet}"}}],[{{"subnet":"{subnet6}"}}]"#),
            (false, _) => format!(r#"[{{"subnet":"{subnet6}"}}]"#),
            (true, false) => format!(r#"[{{"subnet":"{subnet}"}}]"#),
        };
        let conflist = format!(
            r#"{{"cniVersion":"1.0.0","name":"{net}","plugins":[
  {{"type":"bridge","bridge":"{net}","isGateway":true,"ipMasq":false,"ipam":{{"type":"host-local","ranges":[{ranges}],"dataDir":"{ipam}"}}}},
  {{"type":"bulkhead-cni","instance":"{net}"}}]}}"#,
            net = e.net(),
            ipam = e.ipam.display()
        );
        std::fs::write(e.conflist(), conflist).expect("conflist");
        std::fs::create_dir_all(&e.store).expect("datastore");
        e
    }
    fn net(&self) -> String {
        format!("bhpd{}", self.id)
    }
    fn conflist(&self) -> PathBuf {
        PathBuf::from(format!("/etc/cni/net.d/{}.conflist", self.net()))
    }
    fn name(&self, c: &str) -> String {
        format!("bhpd{}-{c}", self.id)
    }

    fn agent(&self) -> bulkhead_agent::Agent {
        bulkhead_agent::Agent::start(bulkhead_agent::AgentConfig {
            datastore_dir: self.store.clone(),
            node_netns: None,
            pin_dir: PathBuf::from("/sys/fs/bpf/bulkhead").join(self.net()),
            watch: false,
            flow_records: true,
        })
        .expect("agent starts")
    }

    /// Writes pods a and b (labels app: a / app: b), starts the agent, then container b (a TCP
    /// echo server on 8080) and container a (idle).
    fn start_a_and_b(&self) -> bulkhead_agent::Agent {
        let (a, b) = (self.name("a"), self.name("b"));
        std::fs::write(
            self.store.join("pods.yaml"),
            format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: default}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {a}, namespace: default, labels: {{app: a}}}}\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {b}, namespace: default, labels: {{app: b}}}}\n"
            ),
        )
        .expect("pods");
        let agent = self.agent();
        let out = self.run("b", &["/bin/nc", "-ll", "-p", "8080", "-e", "/bin/cat"]);
        assert!(out.status.success(), "podman run b: {}", String::from_utf8_lossy(&out.stderr));
        let out = self.run("a", &["/bin/sleep", "3600"]);
        assert!(out.status.success(), "podman run a: {}", String::from_utf8_lossy(&out.stderr));
        agent
    }

    /// `podman run -d` of a busybox container on this network; returns whether it started.
    fn run(&self, c: &str, argv: &[&str]) -> std::process::Output {
        let (name, net) = (self.name(c), self.net());
        let mut args = vec!["run", "-d", "--name", &name, "--network", &net, "--runtime", "runc", "--cgroup-manager", "cgroupfs", "--rootfs", ROOTFS];
        args.extend_from_slice(argv);
        podman(&args)
    }

    fn inspect(&self, c: &str, fmt: &str) -> String {
        let out = podman(&["inspect", "-f", fmt, &self.name(c)]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn ip(&self, c: &str) -> Ipv4Addr {
        let s = self.inspect(c, &format!("{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}", self.net()));
        s.parse().unwrap_or_else(|_| panic!("address of {c}: {s:?}"))
    }

    /// The container's global IPv6 address on this network.
    fn ip6(&self, c: &str) -> std::net::Ipv6Addr {
        let s = self.inspect(c, &format!("{{{{(index .NetworkSettings.Networks \"{}\").GlobalIPv6Address}}}}", self.net()));
        s.parse().unwrap_or_else(|_| panic!("IPv6 address of {c}: {s:?}"))
    }

    /// Runs `f` in container `c`'s network namespace.
    fn in_container<T: Send>(&self, c: &str, f: impl FnOnce() -> T + Send) -> T {
        let path = self.inspect(c, "{{.NetworkSettings.SandboxKey}}");
        let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("netns {path}: {e}"));
        bulkhead_netns::in_netns_file(&ns, f).unwrap_or_else(|e| panic!("in netns {path}: {e}"))
    }

    /// The addresses of every registration, read as the agent reads them.
    fn registered_ips(&self) -> Vec<Vec<std::net::IpAddr>> {
        self.registrations()
            .iter()
            .map(|f| {
                let t = std::fs::read_to_string(PathBuf::from("/run/bulkhead").join(self.net()).join("endpoints").join(f)).expect("registration");
                let reg: bulkhead_cni::api::Attachment = serde_json::from_str(&t).unwrap_or_else(|err| panic!("{f} corrupt: {err}"));
                reg.ips
            })
            .collect()
    }

    fn registrations(&self) -> Vec<String> {
        let dir = PathBuf::from("/run/bulkhead").join(self.net()).join("endpoints");
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|r| r.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".json")).collect())
            .unwrap_or_default();
        v.sort();
        v
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let out = podman(&["ps", "-a", "--format", "{{.Names}}"]);
        for n in String::from_utf8_lossy(&out.stdout).lines().filter(|n| n.starts_with(&format!("bhpd{}-", self.id))) {
            let _ = podman(&["rm", "-f", "-t", "0", n]);
        }
        let _ = std::fs::remove_file(self.conflist());
        let _ = Command::new("ip").args(["link", "del", &self.net()]).status();
        let _ = std::fs::remove_dir_all(&self.store);
        let _ = std::fs::remove_dir_all(&self.ipam);
        let _ = std::fs::remove_dir_all(PathBuf::from("/run/bulkhead").join(self.net()));
        let _ = Command::new("sh").arg("-c").arg(format!("rm -rf /sys/fs/bpf/bulkhead/{}", self.net())).status();
    }
}

fn echo(s: &mut TcpStream) -> bool {
    let _ = s.set_read_timeout(Some(Duration::from_millis(800)));
    if s.write_all(b"ping\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 5];
    matches!(s.read_exact(&mut buf), Ok(()) if &buf == b"ping\n")
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < Duration::from_secs(20), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn podman_containers_get_policy_detector_and_clean_state_through_the_chain() {
    let e = Env::new();
    let agent = e.start_a_and_b();
    let b = e.name("b");
    assert_eq!(e.registrations().len(), 2, "both containers registered: {:?}", e.registrations());
    let ip_b = e.ip("b");
    let connect = |e: &Env| e.in_container("a", move || TcpStream::connect_timeout(&SocketAddr::from((ip_b, 8080)), Duration::from_millis(800)).ok());
    let mut held = connect(&e).expect("no policy: a reaches b");
    assert!(echo(&mut held), "echo through the held connection");

    // Deny ingress to b: the established connection stops, new ones are refused.
    std::fs::write(e.store.join("deny.yaml"), "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-b, namespace: default}\nspec: {podSelector: {matchLabels: {app: b}}, policyTypes: [Ingress]}\n").expect("deny");
    agent.sync_now().expect("sync");
    assert!(!echo(&mut held), "the policy change reaches the established connection");
    assert!(connect(&e).is_none(), "a -> b denied");
    // Allow from a only: allowed again.
    std::fs::write(e.store.join("deny.yaml"), "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-b, namespace: default}\nspec: {podSelector: {matchLabels: {app: b}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchLabels: {app: a}}}]}]}\n").expect("allow a");
    agent.sync_now().expect("sync");
    assert!(connect(&e).is_some(), "a -> b allowed by the ingress rule");

    // The detector gets the containers' cgroups without any annotation.
    wait_for("the containers' cgroups", || {
        e.registrations().iter().all(|f| {
            std::fs::read_to_string(PathBuf::from("/run/bulkhead").join(e.net()).join("endpoints").join(f)).is_ok_and(|t| t.contains("libpod-"))
        })
    });

    // Stopping a container removes its state.
    let out = podman(&["rm", "-f", "-t", "0", &b]);
    assert!(out.status.success(), "podman rm b: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(e.registrations().len(), 1, "b's registration removed on stop: {:?}", e.registrations());
    let eps = || bulkhead_agent::status::read(&PathBuf::from("/sys/fs/bpf/bulkhead").join(e.net())).expect("status").endpoints;
    assert_eq!(eps(), 1, "b's endpoint entry removed");

    // Agent down: a container fails to start, cleanly.
    agent.stop_keep_enforcing().expect("stop");
    let out = e.run("c", &["/bin/sleep", "3600"]);
    assert!(!out.status.success(), "a container must not start while the agent is down");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("try again later") || err.contains("unreachable"), "podman reports the plugin's error: {err}");
    assert_eq!(e.registrations().len(), 1, "the failed start left no registration");
    assert_ne!(e.inspect("c", "{{.State.Status}}"), "running");

    // 20 containers in parallel: all start, state consistent.
    let agent = e.agent();
    let started: Vec<bool> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..20).map(|i| {
            let e = &e;
            s.spawn(move || e.run(&format!("p{i}"), &["/bin/sleep", "3600"]).status.success())
        }).collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    assert!(started.iter().all(|x| *x), "every parallel container started: {started:?}");
    assert_eq!(e.registrations().len(), 21, "21 registrations: {:?}", e.registrations());
    agent.sync_now().expect("sync");
    assert_eq!(eps(), 21, "21 endpoint entries");
    for f in e.registrations() {
        let t = std::fs::read_to_string(PathBuf::from("/run/bulkhead").join(e.net()).join("endpoints").join(&f)).expect("registration");
        serde_json::from_str::<bulkhead_cni::api::Attachment>(&t).unwrap_or_else(|err| panic!("{f} corrupt: {err}"));
    }
    drop(agent);
}

/// A dual-stack podman network: the plugin registers both addresses from prevResult and the
/// agent enforces policy on the IPv6 one too.
#[test]
fn podman_dual_stack_containers_are_enforced_on_ipv6() {
    let e = Env::with_families(true, true);
    let agent = e.start_a_and_b();
    let ip6_b = e.ip6("b");
    for ips in e.registered_ips() {
        assert!(ips.iter().any(|a| a.is_ipv4()) && ips.iter().any(|a| a.is_ipv6()), "both families registered: {ips:?}");
    }
    let connect = |e: &Env| {
        e.in_container("a", move || TcpStream::connect_timeout(&SocketAddr::from((ip6_b, 8080)), Duration::from_millis(800)).ok())
    };
    // The containers' IPv6 addresses may still be in duplicate address detection.
    wait_for("IPv6 from a to b with no policy", || connect(&e).is_some_and(|mut s| echo(&mut s)));
    let mut held = connect(&e).expect("no policy: a reaches b over IPv6");
    assert!(echo(&mut held), "echo through the held IPv6 connection");

    std::fs::write(e.store.join("deny.yaml"), "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-b, namespace: default}\nspec: {podSelector: {matchLabels: {app: b}}, policyTypes: [Ingress]}\n").expect("deny");
    agent.sync_now().expect("sync");
    assert!(!echo(&mut held), "the policy change reaches the established IPv6 connection");
    assert!(connect(&e).is_none(), "a -> b denied over IPv6");
    std::fs::write(e.store.join("deny.yaml"), "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-b, namespace: default}\nspec: {podSelector: {matchLabels: {app: b}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchLabels: {app: a}}}]}]}\n").expect("allow a");
    agent.sync_now().expect("sync");
    assert!(connect(&e).is_some_and(|mut s| echo(&mut s)), "a -> b allowed over IPv6 by the pod selector");
    drop(agent);
}

/// An IPv6-only podman network: the plugin registers the container with its IPv6 address
/// alone, and the agent enforces policy on it (an IPv6-only pod is an endpoint like any other).
#[test]
fn podman_ipv6_only_containers_are_enforced() {
    let e = Env::with_families(false, true);
    let agent = e.start_a_and_b();
    let ip6_b = e.ip6("b");
    for ips in e.registered_ips() {
        assert!(!ips.is_empty() && ips.iter().all(|a| a.is_ipv6()), "IPv6 addresses only: {ips:?}");
    }
    agent.sync_now().expect("sync");
    let st = bulkhead_agent::status::read(&PathBuf::from("/sys/fs/bpf/bulkhead").join(e.net())).expect("status");
    assert_eq!(st.endpoints, 2, "both IPv6-only containers are endpoints");
    let connect = |e: &Env| {
        e.in_container("a", move || TcpStream::connect_timeout(&SocketAddr::from((ip6_b, 8080)), Duration::from_millis(800)).ok())
    };
    wait_for("IPv6 from a to b with no policy", || connect(&e).is_some_and(|mut s| echo(&mut s)));
    std::fs::write(e.store.join("deny.yaml"), "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-b, namespace: default}\nspec: {podSelector: {matchLabels: {app: b}}, policyTypes: [Ingress]}\n").expect("deny");
    agent.sync_now().expect("sync");
    assert!(connect(&e).is_none(), "a -> b denied over IPv6");
    std::fs::write(e.store.join("deny.yaml"), "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-b, namespace: default}\nspec: {podSelector: {matchLabels: {app: b}}, policyTypes: [Ingress], ingress: [{from: [{podSelector: {matchLabels: {app: a}}}]}]}\n").expect("allow a");
    agent.sync_now().expect("sync");
    assert!(connect(&e).is_some_and(|mut s| echo(&mut s)), "a -> b allowed over IPv6 by the pod selector");
    drop(agent);
}
