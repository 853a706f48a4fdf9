//! Shared fixture of the agent's end-to-end tests: pods in network namespaces behind a node
//! namespace, a datastore folder, real sockets. Everything is removed on drop, also on panic.
#![allow(dead_code)]

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    process::Command,
    time::Duration,
};

/// A binary of this workspace: `$env_var`, else `target/release/<name>`; panics with how to
/// build it when missing.
pub fn workspace_bin(name: &str, env_var: &str) -> PathBuf {
    let p = std::env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/release").join(name));
    assert!(p.is_file(), "{name} not found at {}: run `cargo build --release -p {name}` or set {env_var}", p.display());
    p
}

pub fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {:?}: {}", args, String::from_utf8_lossy(&out.stderr));
}

pub fn sh_in(ns: &str, cmd: &str) {
    ip(&["netns", "exec", ns, "sh", "-c", cmd]);
}

/// Two pods and a node namespace, removed on drop (also when the test panics).
pub struct Topo {
    pub id: String,
    pub dir: PathBuf,
}

impl Topo {
    pub fn node(&self) -> String {
        format!("bht{}-node", self.id)
    }
    pub fn pod(&self, i: u8) -> String {
        format!("bht{}-p{i}", self.id)
    }
    pub fn veth(&self, i: u8) -> String {
        format!("bht{}h{i}", self.id)
    }

    pub fn create() -> Topo {
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
    pub fn in_pod<T: Send>(&self, i: u8, f: impl FnOnce() -> T + Send) -> T {
        bulkhead_netns::in_netns(&self.pod(i), f).unwrap_or_else(|e| panic!("in pod {i}: {e}"))
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

pub fn connect(t: &Topo) -> Option<TcpStream> {
    t.in_pod(1, || {
        let addr = SocketAddr::from((Ipv4Addr::new(10, 99, 0, 2), 8080));
        TcpStream::connect_timeout(&addr, Duration::from_millis(700)).ok()
    })
}

pub fn socket_bound_to(addr: Ipv4Addr) -> socket2::Socket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::from((addr, 0)).into()).expect("bind spoofed source");
    s
}

pub fn echo_once(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(700))).expect("timeout");
    if s.write_all(b"ping").is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    matches!(s.read_exact(&mut buf), Ok(()) if &buf == b"ping")
}


/// Starts a TCP echo server on `port` in pod `i` (threads live until the process ends).
pub fn tcp_echo(t: &Topo, i: u8, port: u16) {
    let listener = t.in_pod(i, move || TcpListener::bind(("0.0.0.0", port)).expect("bind"));
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
}

/// A UDP echo server on `port` in pod `i`.
pub fn udp_echo(t: &Topo, i: u8, port: u16) {
    let sock = t.in_pod(i, move || UdpSocket::bind(("0.0.0.0", port)).expect("bind udp"));
    std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while let Ok((n, from)) = sock.recv_from(&mut buf) {
            let _ = sock.send_to(&buf[..n], from);
        }
    });
}

/// Whether a datagram from pod 1 to pod 2's `port` is echoed.
pub fn udp_roundtrip(t: &Topo, port: u16) -> bool {
    t.in_pod(1, move || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
        s.set_read_timeout(Some(Duration::from_millis(600))).expect("timeout");
        s.send_to(b"hello", (Ipv4Addr::new(10, 99, 0, 2), port)).expect("send");
        let mut buf = [0u8; 16];
        matches!(s.recv_from(&mut buf), Ok((5, _)))
    })
}

/// A TCP connection from pod 1 to pod 2's `port`.
pub fn connect_port(t: &Topo, port: u16) -> Option<TcpStream> {
    t.in_pod(1, move || {
        let addr = SocketAddr::from((Ipv4Addr::new(10, 99, 0, 2), port));
        TcpStream::connect_timeout(&addr, Duration::from_millis(700)).ok()
    })
}

/// Starts an agent on the topology (no watch: tests call `sync_now`).
pub fn start_agent(t: &Topo) -> (bulkhead_agent::Agent, PathBuf) {
    start_agent_watching(t, false)
}

/// Starts an agent on the topology; with `watch` it follows datastore changes on its own.
pub fn start_agent_watching(t: &Topo, watch: bool) -> (bulkhead_agent::Agent, PathBuf) {
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/bulkhead/bht{}", t.id));
    let agent = bulkhead_agent::Agent::start(bulkhead_agent::AgentConfig {
        datastore_dir: t.dir.clone(),
        node_netns: Some(t.node()),
        pin_dir: pin_dir.clone(),
        watch,
        flow_records: true,
    })
    .expect("agent starts");
    (agent, pin_dir)
}
