//! The agent against real packets: two pods in network namespaces, a real TCP connection held
//! open across policy changes, and a bad policy file that must change nothing. Needs root.

use std::{
    fs::File,
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::PathBuf,
    process::Command,
    time::Duration,
};

use bulkhead_agent::{Agent, AgentConfig};

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {:?}: {}", args, String::from_utf8_lossy(&out.stderr));
}

fn sh_in(ns: &str, cmd: &str) {
    ip(&["netns", "exec", ns, "sh", "-c", cmd]);
}

/// Two pods and a node namespace, removed on drop (also when the test panics).
struct Topo {
    id: String,
    dir: PathBuf,
}

impl Topo {
    fn node(&self) -> String {
        format!("bht{}-node", self.id)
    }
    fn pod(&self, i: u8) -> String {
        format!("bht{}-p{i}", self.id)
    }
    fn veth(&self, i: u8) -> String {
        format!("bht{}h{i}", self.id)
    }

    fn create() -> Topo {
        assert!(unsafe { libc::geteuid() } == 0, "this test needs root (network namespaces, BPF)");
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let id = format!("{:04x}{n}", std::process::id() & 0xffff);
        let dir = std::env::temp_dir().join(format!("bht{id}-store"));
        let t = Topo { id, dir };
        ip(&["netns", "add", &t.node()]);
        sh_in(&t.node(), "sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=0");
        // The pods' gateway: a local address of the node answers their ARP on any veth.
        ip(&["-n", &t.node(), "addr", "add", "169.254.1.1/32", "dev", "lo"]);
        ip(&["-n", &t.node(), "link", "set", "lo", "up"]);
        for i in 1..=2u8 {
            let (pod, veth) = (t.pod(i), t.veth(i));
            ip(&["netns", "add", &pod]);
            ip(&["-n", &t.node(), "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &pod]);
            ip(&["-n", &t.node(), "link", "set", &veth, "up"]);
            sh_in(&t.node(), &format!("sysctl -qw net.ipv4.conf.{veth}.proxy_arp=1 net.ipv4.conf.{veth}.rp_filter=0"));
            ip(&["-n", &t.node(), "route", "add", &format!("10.99.0.{i}/32"), "dev", &veth]);
            ip(&["-n", &pod, "addr", "add", &format!("10.99.0.{i}/32"), "dev", "eth0"]);
            ip(&["-n", &pod, "link", "set", "eth0", "up"]);
            ip(&["-n", &pod, "link", "set", "lo", "up"]);
            ip(&["-n", &pod, "route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"]);
            ip(&["-n", &pod, "route", "add", "default", "via", "169.254.1.1", "dev", "eth0"]);
        }
        std::fs::create_dir_all(&t.dir).expect("datastore dir");
        let mut pods = String::from(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {ns: x}}\n",
        );
        for i in 1..=2u8 {
            pods += &format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: x, labels: {{app: p{i}}}, annotations: {{bulkhead.io/interface: {}}}}}\nstatus: {{podIP: 10.99.0.{i}}}\n",
                t.veth(i)
            );
        }
        std::fs::write(t.dir.join("pods.yaml"), pods).expect("write pods");
        t
    }

    /// Runs `f` on a thread inside pod `i`'s network namespace.
    fn in_pod<T: Send + 'static>(&self, i: u8, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}", self.pod(i));
        std::thread::spawn(move || {
            let ns = File::open(&path).expect("open netns");
            // SAFETY: valid fd; moves only this thread.
            assert_eq!(unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns {path}");
            f()
        })
        .join()
        .expect("pod thread")
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        for ns in [self.pod(1), self.pod(2), self.node()] {
            let _ = Command::new("ip").args(["netns", "del", &ns]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn connect(t: &Topo) -> Option<TcpStream> {
    t.in_pod(1, || {
        let addr = SocketAddr::from((Ipv4Addr::new(10, 99, 0, 2), 8080));
        TcpStream::connect_timeout(&addr, Duration::from_millis(700)).ok()
    })
}

fn socket_bound_to(addr: Ipv4Addr) -> socket2::Socket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from((addr, 0)).into()).expect("bind spoofed source");
    s
}

fn echo_once(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(700))).expect("timeout");
    if s.write_all(b"ping").is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    matches!(s.read_exact(&mut buf), Ok(()) if &buf == b"ping")
}

const DENY_INGRESS: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {matchLabels: {app: p2}}, policyTypes: [Ingress]}\n";

#[test]
fn policy_changes_reach_established_flows_and_bad_input_changes_nothing() {
    let t = Topo::create();
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/bulkhead/bht{}", t.id));
    let agent = Agent::start(AgentConfig {
        datastore_dir: t.dir.clone(),
        node_netns: Some(t.node()),
        pin_dir: pin_dir.clone(),
        watch: false,
    })
    .expect("agent starts");

    // Echo server in pod 2, accepting in the background.
    let listener = t.in_pod(2, || TcpListener::bind("0.0.0.0:8080").expect("bind"));
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 64];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });

    let mut held = connect(&t).expect("no policy: pod 1 connects to pod 2");

    // A spoofed source address is dropped by the XDP pre-filter before TC sees it.
    ip(&["-n", &t.pod(1), "addr", "add", "10.99.0.77/32", "dev", "eth0"]);
    let spoofed = t.in_pod(1, || {
        let s = socket_bound_to(Ipv4Addr::new(10, 99, 0, 77));
        s.connect_timeout(&SocketAddr::from((Ipv4Addr::new(10, 99, 0, 2), 8080)).into(), Duration::from_millis(500)).is_ok()
    });
    assert!(!spoofed, "a connection from an address that is not the pod's must not pass");
    assert!(echo_once(&mut held), "no policy: echo on the new connection");

    // Deny all ingress to pod 2: the held connection's next packet is judged again and dropped.
    std::fs::write(t.dir.join("policy.yaml"), DENY_INGRESS).expect("write policy");
    agent.sync_now().expect("deny policy applies");
    assert!(!echo_once(&mut held), "deny policy: the established connection must stop");
    assert!(connect(&t).is_none(), "deny policy: a new connection must fail");

    // A bad document: rejected with file and field named, the deny stays enforced.
    std::fs::write(
        t.dir.join("zz-bad.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: 70000}]}]}\n",
    )
    .expect("write bad");
    let err = agent.sync_now().expect_err("bad policy must be rejected").to_string();
    assert!(err.contains("zz-bad.yaml") && err.contains("port"), "error names file and field: {err}");
    assert!(connect(&t).is_none(), "after a rejected change the deny still holds");
    std::fs::remove_file(t.dir.join("zz-bad.yaml")).expect("rm bad");

    // Remove the deny: new connections work again.
    std::fs::remove_file(t.dir.join("policy.yaml")).expect("rm policy");
    agent.sync_now().expect("policy removal applies");
    let mut again = connect(&t).expect("policy removed: connect works again");
    assert!(echo_once(&mut again), "policy removed: echo works");

    let counters = agent.counters().expect("counters");
    let get = |n: &str| counters.iter().find(|(k, _)| k == n).map(|(_, v)| *v).unwrap_or(0);
    assert!(get("ct_reeval_deny") >= 1, "the held flow was judged again and denied: {counters:?}");
    assert!(get("deny_policy") >= 1, "new flows were denied: {counters:?}");
    assert!(get("xdp_drop_spoofed_source") >= 1, "XDP dropped the spoofed SYN: {counters:?}");
    drop(agent);
    assert!(!pin_dir.exists(), "agent removed its pins");
}

#[test]
fn a_policy_file_written_to_disk_is_enforced_without_a_restart() {
    let t = Topo::create();
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/bulkhead/bht{}", t.id));
    let agent = Agent::start(AgentConfig {
        datastore_dir: t.dir.clone(),
        node_netns: Some(t.node()),
        pin_dir: pin_dir.clone(),
        watch: true,
    })
    .expect("agent starts");
    let listener = t.in_pod(2, || TcpListener::bind("0.0.0.0:8080").expect("bind"));
    std::thread::spawn(move || for _s in listener.incoming() {});
    assert!(connect(&t).is_some(), "no policy: connect works");

    // Written to a temporary name and renamed in, as tools that write atomically do.
    std::fs::write(t.dir.join(".policy.tmp"), DENY_INGRESS).expect("write");
    std::fs::rename(t.dir.join(".policy.tmp"), t.dir.join("policy.yaml")).expect("rename");
    let denied = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        connect(&t).is_none()
    });
    assert!(denied, "the watched datastore change was never enforced");
    drop(agent);
    assert!(!pin_dir.exists(), "agent removed its pins");
}
