//! End to end with real packets: two pods and a server in network namespaces, routed through
//! a firewall namespace that filters forwarded traffic on the set the real `fw-sync run`
//! daemon maintains from the datastore folder. Once over IPv4 (`bhfw-web`), once over IPv6
//! with dual-stack pods (`bhfw-web-v6`, ip6tables / `ip6 saddr`).
//!
//! ```text
//!  fwt-<id>-p1 (pod a, app=web)   --\
//!                                     fwt-<id>-fw (routes; DROP unless src in bhfw-web) -- fwt-<id>-srv (TCP server)
//!  fwt-<id>-p2 (pod b, app=other) --/
//! ```

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{Netns, TempDir, require_root, unique_id, wait_for};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 9, 2);
const SERVER6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x78, 9, 0, 0, 0, 0, 2);
const PORT: u16 = 8080;

/// The daemon process, killed on drop (it leaves the firewall as it is, by design).
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP server in a namespace, stopped on drop.
struct Server(Arc<AtomicBool>, Option<std::thread::JoinHandle<()>>);

impl Server {
    fn start(ns: &Netns, addr: IpAddr) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let name = ns.name.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let handle = std::thread::spawn(move || {
            bulkhead_netns::enter(&name).expect("enter the server's netns");
            let l = TcpListener::bind((addr, PORT)).expect("server binds");
            l.set_nonblocking(true).expect("nonblocking listener");
            tx.send(()).expect("signal ready");
            while !stop2.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((s, _)) => drop(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5)).expect("server ready");
        Server(stop, Some(handle))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        if let Some(h) = self.1.take() {
            let _ = h.join();
        }
    }
}

/// Whether a TCP connection from `src` in `ns` to the server succeeds (a drop times out).
fn reaches(ns: &Netns, src: Ipv4Addr) -> bool {
    ns.run(move || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        s.bind(&SocketAddr::V4(SocketAddrV4::new(src, 0)).into()).expect("bind source address");
        s.connect_timeout(&SocketAddr::V4(SocketAddrV4::new(SERVER, PORT)).into(), Duration::from_millis(400)).is_ok()
    })
}

/// Whether a TCP connection from `src` in `ns` to the server's IPv6 address succeeds.
fn reaches6(ns: &Netns, src: Ipv6Addr) -> bool {
    ns.run(move || {
        let s = socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).expect("socket");
        s.bind(&SocketAddr::V6(SocketAddrV6::new(src, 0, 0, 0)).into()).expect("bind source address");
        s.connect_timeout(&SocketAddr::V6(SocketAddrV6::new(SERVER6, PORT, 0, 0)).into(), Duration::from_millis(400)).is_ok()
    })
}

/// A namespace whose interfaces skip duplicate address detection (set before any veth is
/// made in it), so IPv6 addresses are usable at once rather than tentative for a second.
fn netns6(name: String) -> Netns {
    let ns = Netns::new(name);
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0"]);
    ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0"]);
    ns
}

/// A veth between the firewall and `other`, dual-stack: IPv4 and IPv6 (`nodad`) addresses and
/// default routes of both families through the firewall.
fn veth_dual(fw: &Netns, fw_if: &str, (fw4, fw6): (&str, &str), other: &Netns, (o4, o6): (&str, &str), (gw4, gw6): (&str, &str)) {
    veth(fw, fw_if, fw4, other, o4, gw4);
    fw.exec(&["ip", "-6", "addr", "add", fw6, "dev", fw_if, "nodad"]);
    other.exec(&["ip", "-6", "addr", "add", o6, "dev", "eth0", "nodad"]);
    other.exec(&["ip", "-6", "route", "add", "default", "via", gw6]);
}

fn veth(fw: &Netns, fw_if: &str, fw_addr: &str, other: &Netns, other_addr: &str, gw: &str) {
    common::sh(&["ip", "link", "add", fw_if, "netns", &fw.name, "type", "veth", "peer", "name", "eth0", "netns", &other.name]);
    fw.exec(&["ip", "addr", "add", fw_addr, "dev", fw_if]);
    fw.exec(&["ip", "link", "set", fw_if, "up"]);
    other.exec(&["ip", "addr", "add", other_addr, "dev", "eth0"]);
    other.exec(&["ip", "link", "set", "eth0", "up"]);
    other.exec(&["ip", "route", "add", "default", "via", gw]);
}

fn pod(name: &str, app: &str, ip: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: lab, labels: {{app: {app}}}}}\nstatus: {{podIP: {ip}}}\n")
}

/// A dual-stack pod: `status.podIP` and both families in `status.podIPs`.
fn pod_dual(name: &str, app: &str, ip4: &str, ip6: &str) -> String {
    format!("apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: lab, labels: {{app: {app}}}}}\nstatus: {{podIP: {ip4}, podIPs: [{{ip: {ip4}}}, {{ip: '{ip6}'}}]}}\n")
}

/// Writes a datastore file the way controllers do: a hidden temporary renamed into place.
fn write(dir: &std::path::Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    std::fs::rename(&tmp, dir.join(name)).unwrap_or_else(|e| panic!("rename to {name}: {e}"));
}

#[derive(Clone, Copy, Debug)]
enum Kind {
    Ipset,
    Nftables,
}

/// Whether `ip` is in the group's set of its family on the firewall (`bhfw-web` or
/// `bhfw-web-v6`).
fn in_set(fw: &Netns, kind: Kind, ip: &str) -> bool {
    let set = if ip.contains(':') { "bhfw-web-v6" } else { "bhfw-web" };
    match kind {
        Kind::Ipset => fw.try_exec(&["ipset", "test", set, ip]),
        Kind::Nftables => fw.try_exec(&["nft", "get", "element", "inet", "bhfw", set, &format!("{{ {ip} }}")]),
    }
}

/// The datastore folder and config of a scenario; the config's firewall is `lab`.
fn datastore(tmp: &TempDir, kind: Kind, pods: &[(&str, String)]) -> std::path::PathBuf {
    let ds = tmp.0.join("datastore");
    std::fs::create_dir_all(&ds).expect("datastore dir");
    write(&ds, "ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: lab}\n");
    for (file, text) in pods {
        write(&ds, file, text);
    }
    let (fw_type, target_kind) = match kind {
        Kind::Ipset => ("ipset", "ipset"),
        Kind::Nftables => ("nftables", "nftables-set"),
    };
    write(&ds, "groups.yaml", &format!("apiVersion: bulkhead.io/v1alpha1\nkind: AddressGroup\nmetadata: {{name: web}}\nspec:\n  podSelector: app == 'web'\n  namespaceSelector: projectcalico.org/name == 'lab'\n  targets: [{{firewall: lab, kind: {target_kind}, name: web}}]\n"));
    let config = tmp.0.join("fw-sync.yaml");
    std::fs::write(&config, format!("firewalls: [{{name: lab, type: {fw_type}}}]\ndatastore: datastore\nreconcileInterval: 30s\nmetricsListen: 127.0.0.1:9464\n")).expect("write config");
    config
}


fn scenario(kind: Kind) {
    let id = unique_id();
    let (p1, p2) = (Netns::new(format!("fwt-{id}-p1")), Netns::new(format!("fwt-{id}-p2")));
    let (fw, srv) = (Netns::new(format!("fwt-{id}-fw")), Netns::new(format!("fwt-{id}-srv")));
    veth(&fw, "to-p1", "10.77.1.1/24", &p1, "10.77.1.2/24", "10.77.1.1");
    veth(&fw, "to-p2", "10.77.2.1/24", &p2, "10.77.2.2/24", "10.77.2.1");
    veth(&fw, "to-srv", "10.77.9.1/24", &srv, "10.77.9.2/24", "10.77.9.1");
    fw.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    let _server = Server::start(&srv, IpAddr::V4(SERVER));

    let tmp = TempDir::new(&format!("e2e-{id}"));
    let ds = tmp.0.join("datastore");
    std::fs::create_dir_all(&ds).expect("datastore dir");
    write(&ds, "ns.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: lab}\n");
    write(&ds, "pod-a.yaml", &pod("a", "web", "10.77.1.2"));
    write(&ds, "pod-b.yaml", &pod("b", "other", "10.77.2.2"));
    // A policy in the same folder is the agent's business: fw-sync skips it.
    write(&ds, "policy.yaml", "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: lab}\nspec: {podSelector: {}}\n");
    let (fw_type, target_kind) = match kind {
        Kind::Ipset => ("ipset", "ipset"),
        Kind::Nftables => ("nftables", "nftables-set"),
    };
    write(&ds, "groups.yaml", &format!("apiVersion: bulkhead.io/v1alpha1\nkind: AddressGroup\nmetadata: {{name: web}}\nspec:\n  podSelector: app == 'web'\n  namespaceSelector: projectcalico.org/name == 'lab'\n  targets: [{{firewall: lab, kind: {target_kind}, name: web}}]\n"));
    let config = tmp.0.join("fw-sync.yaml");
    std::fs::write(&config, format!("firewalls: [{{name: lab, type: {fw_type}}}]\ndatastore: datastore\nreconcileInterval: 30s\nmetricsListen: 127.0.0.1:9464\n")).expect("write config");

    // The daemon runs on the firewall, i.e. inside its namespace.
    let bin = env!("CARGO_BIN_EXE_fw-sync");
    let dry = Command::new("ip").args(["netns", "exec", &fw.name, bin, "run", "--config"]).arg(&config).arg("--dry-run").output().expect("dry run");
    let dry_out = String::from_utf8_lossy(&dry.stdout);
    assert!(dry.status.success() && dry_out.contains("create ") && dry_out.contains("+10.77.1.2"), "dry run:\n{dry_out}{}", String::from_utf8_lossy(&dry.stderr));
    assert!(!in_set(&fw, kind, "10.77.1.2"), "dry run applied nothing");

    let child = Command::new("ip")
        .args(["netns", "exec", &fw.name, bin, "run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start fw-sync");
    let _daemon = Daemon(child);
    wait_for("the initial sync", || in_set(&fw, kind, "10.77.1.2"));

    // The firewall's own rules, on the set fw-sync maintains.
    match kind {
        Kind::Ipset => {
            fw.exec(&["iptables", "-P", "FORWARD", "DROP"]);
            fw.exec(&["iptables", "-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"]);
            fw.exec(&["iptables", "-A", "FORWARD", "-o", "to-srv", "-m", "set", "--match-set", "bhfw-web", "src", "-j", "ACCEPT"]);
        }
        Kind::Nftables => {
            fw.exec(&["nft", "add chain inet bhfw admin_forward { type filter hook forward priority 0 ; policy drop ; }"]);
            fw.exec(&["nft", "add rule inet bhfw admin_forward ct state established,related accept"]);
            fw.exec(&["nft", "add rule inet bhfw admin_forward oifname to-srv ip saddr @bhfw-web accept"]);
        }
    }
    let a_old: Ipv4Addr = "10.77.1.2".parse().expect("ip");
    let a_new: Ipv4Addr = "10.77.1.3".parse().expect("ip");
    let b: Ipv4Addr = "10.77.2.2".parse().expect("ip");
    assert!(reaches(&p1, a_old), "pod a is in the group: must reach the server");
    assert!(!reaches(&p2, b), "pod b is not in the group: must be dropped");

    // Pod a is recreated with a new address: the new one gets access, the old one loses it.
    p1.exec(&["ip", "addr", "add", "10.77.1.3/24", "dev", "eth0"]);
    let written = Instant::now();
    write(&ds, "pod-a.yaml", &pod("a", "web", "10.77.1.3"));
    wait_for("the new address in the set", || in_set(&fw, kind, "10.77.1.3") && !in_set(&fw, kind, "10.77.1.2"));
    eprintln!("[{kind:?}] datastore write -> firewall updated (pod IP change): {:?} (polling resolution ~ a few ms)", written.elapsed());
    assert!(reaches(&p1, a_new), "recreated pod a (new IP) must reach the server");
    assert!(!reaches(&p1, a_old), "the old IP must have lost access");

    // Pod b relabelled into the group.
    let written = Instant::now();
    write(&ds, "pod-b.yaml", &pod("b", "web", "10.77.2.2"));
    wait_for("pod b in the set", || in_set(&fw, kind, "10.77.2.2"));
    eprintln!("[{kind:?}] datastore write -> firewall updated (relabel): {:?}", written.elapsed());
    assert!(reaches(&p2, b), "relabelled pod b must reach the server");

    // Prometheus metrics (served inside the firewall's namespace): both updates observed.
    // The daemon records an update's latency just after the firewall call returns, so the
    // set can show the change a moment before the metric does: wait for the third sample.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut text = metrics(&fw);
    while !text.lines().any(|l| l.starts_with("fwsync_update_latency_seconds_count{firewall=\"lab\"}") && !l.ends_with(" 0") && !l.ends_with(" 1") && !l.ends_with(" 2"))
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
        text = metrics(&fw);
    }
    let value = |name: &str| -> f64 {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} in\n{text}"));
        line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("bad sample {line:?}"))
    };
    assert!(value("fwsync_update_latency_seconds_count{firewall=\"lab\"}") >= 3.0, "initial sync + two updates:\n{text}");
    assert!(value("fwsync_update_latency_seconds_bucket{firewall=\"lab\",le=\"1\"}") >= 3.0, "{text}");
    assert!(value("fwsync_api_calls_total{firewall=\"lab\"}") >= 3.0, "{text}");
    assert_eq!(value("fwsync_owned_addresses{firewall=\"lab\",family=\"ipv4\"}"), 2.0, "{text}");
    assert_eq!(value("fwsync_owned_addresses{firewall=\"lab\",family=\"ipv6\"}"), 0.0, "{text}");
    assert_eq!(value("fwsync_sync_errors_total{firewall=\"lab\"}"), 0.0, "{text}");

    // A bad AddressGroup applies nothing: the firewall keeps its state.
    write(&ds, "groups.yaml", "apiVersion: bulkhead.io/v1alpha1\nkind: AddressGroup\nmetadata: {name: web}\nspec: {podSelectr: all(), targets: []}\n");
    write(&ds, "pod-b.yaml", &pod("b", "other", "10.77.2.2"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(in_set(&fw, kind, "10.77.2.2"), "nothing applied while the datastore is invalid");

    let status = Command::new("ip").args(["netns", "exec", &fw.name, bin, "status", "--config"]).arg(&config).output().expect("status");
    let status_err = String::from_utf8_lossy(&status.stderr);
    assert!(!status.status.success() && status_err.contains("groups.yaml: document 1 (AddressGroup web): spec.podSelectr: unknown field"), "status on a bad datastore:\n{status_err}");
}

/// The IPv6 counterpart: dual-stack pods, the server reached over IPv6, the firewall
/// forwarding IPv6 and dropping it unless the source is in `bhfw-web-v6`. A pod's IPv6
/// address changes and another pod is relabelled in; the IPv4 set follows alongside.
fn scenario6(kind: Kind) {
    let id = unique_id();
    let (p1, p2) = (netns6(format!("fwt-{id}-p1")), netns6(format!("fwt-{id}-p2")));
    let (fw, srv) = (netns6(format!("fwt-{id}-fw")), netns6(format!("fwt-{id}-srv")));
    veth_dual(&fw, "to-p1", ("10.78.1.1/24", "fd00:78:1::1/64"), &p1, ("10.78.1.2/24", "fd00:78:1::2/64"), ("10.78.1.1", "fd00:78:1::1"));
    veth_dual(&fw, "to-p2", ("10.78.2.1/24", "fd00:78:2::1/64"), &p2, ("10.78.2.2/24", "fd00:78:2::2/64"), ("10.78.2.1", "fd00:78:2::1"));
    veth_dual(&fw, "to-srv", ("10.78.9.1/24", "fd00:78:9::1/64"), &srv, ("10.78.9.2/24", "fd00:78:9::2/64"), ("10.78.9.1", "fd00:78:9::1"));
    fw.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    fw.exec(&["sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"]);
    let _server = Server::start(&srv, IpAddr::V6(SERVER6));

    let tmp = TempDir::new(&format!("e2e6-{id}"));
    let pods = [("pod-a.yaml", pod_dual("a", "web", "10.78.1.2", "fd00:78:1::2")), ("pod-b.yaml", pod_dual("b", "other", "10.78.2.2", "fd00:78:2::2"))];
    let config = datastore(&tmp, kind, &pods);
    let ds = tmp.0.join("datastore");
    let bin = env!("CARGO_BIN_EXE_fw-sync");
    let dry = Command::new("ip").args(["netns", "exec", &fw.name, bin, "run", "--config"]).arg(&config).arg("--dry-run").output().expect("dry run");
    let dry_out = String::from_utf8_lossy(&dry.stdout);
    assert!(dry.status.success() && dry_out.contains("+10.78.1.2 +fd00:78:1::2 [ipv4 1, ipv6 1]"), "dry run names both families:\n{dry_out}{}", String::from_utf8_lossy(&dry.stderr));
    assert!(!fw.try_exec(&["ipset", "list", "-n", "bhfw-web-v6"]) && !in_set(&fw, Kind::Nftables, "fd00:78:1::2"), "dry run applied nothing");

    let child = Command::new("ip").args(["netns", "exec", &fw.name, bin, "run", "--config"]).arg(&config).stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().expect("start fw-sync");
    let _daemon = Daemon(child);
    wait_for("the initial sync (both families)", || in_set(&fw, kind, "fd00:78:1::2") && in_set(&fw, kind, "10.78.1.2"));

    match kind {
        Kind::Ipset => {
            fw.exec(&["ip6tables", "-P", "FORWARD", "DROP"]);
            fw.exec(&["ip6tables", "-A", "FORWARD", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT"]);
            fw.exec(&["ip6tables", "-A", "FORWARD", "-o", "to-srv", "-m", "set", "--match-set", "bhfw-web-v6", "src", "-j", "ACCEPT"]);
        }
        Kind::Nftables => {
            fw.exec(&["nft", "add chain inet bhfw admin_forward { type filter hook forward priority 0 ; policy drop ; }"]);
            fw.exec(&["nft", "add rule inet bhfw admin_forward ct state established,related accept"]);
            fw.exec(&["nft", "add rule inet bhfw admin_forward oifname to-srv ip6 saddr @bhfw-web-v6 accept"]);
        }
    }
    let ip = |s: &str| -> Ipv6Addr { s.parse().expect("ip") };
    let (a_old, a_new, b) = (ip("fd00:78:1::2"), ip("fd00:78:1::3"), ip("fd00:78:2::2"));
    assert!(reaches6(&p1, a_old), "pod a's IPv6 address is in the group: must reach the server");
    assert!(!reaches6(&p2, b), "pod b is not in the group: must be dropped");

    // Pod a is recreated with a new IPv6 address (same IPv4): only the IPv6 set changes.
    p1.exec(&["ip", "-6", "addr", "add", "fd00:78:1::3/64", "dev", "eth0", "nodad"]);
    let written = Instant::now();
    write(&ds, "pod-a.yaml", &pod_dual("a", "web", "10.78.1.2", "fd00:78:1::3"));
    wait_for("the new IPv6 address in the set", || in_set(&fw, kind, "fd00:78:1::3") && !in_set(&fw, kind, "fd00:78:1::2"));
    eprintln!("[{kind:?}] datastore write -> firewall updated (pod IPv6 change): {:?}", written.elapsed());
    assert!(in_set(&fw, kind, "10.78.1.2"), "the pod's IPv4 address stays");
    assert!(reaches6(&p1, a_new), "recreated pod a (new IPv6 address) must reach the server");
    assert!(!reaches6(&p1, a_old), "the old IPv6 address must have lost access");

    // Pod b relabelled into the group: both its addresses join.
    write(&ds, "pod-b.yaml", &pod_dual("b", "web", "10.78.2.2", "fd00:78:2::2"));
    wait_for("pod b in both sets", || in_set(&fw, kind, "fd00:78:2::2") && in_set(&fw, kind, "10.78.2.2"));
    assert!(reaches6(&p2, b), "relabelled pod b must reach the server over IPv6");

    let deadline = Instant::now() + Duration::from_secs(5);
    let owned6 = "fwsync_owned_addresses{firewall=\"lab\",family=\"ipv6\"} 2";
    let mut text = metrics(&fw);
    while !text.lines().any(|l| l == owned6) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        text = metrics(&fw);
    }
    assert!(text.lines().any(|l| l == owned6), "{text}");
    assert!(text.lines().any(|l| l == "fwsync_owned_addresses{firewall=\"lab\",family=\"ipv4\"} 2"), "{text}");
    assert!(text.lines().any(|l| l == "fwsync_sync_errors_total{firewall=\"lab\"} 0"), "{text}");

    // A malformed IPv6 pod address applies nothing and is named with its file and field.
    write(&ds, "pod-b.yaml", &pod_dual("b", "other", "10.78.2.2", "fd00:78:2::zz"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(in_set(&fw, kind, "fd00:78:2::2"), "nothing applied while the datastore is invalid");
    let status = Command::new("ip").args(["netns", "exec", &fw.name, bin, "status", "--config"]).arg(&config).output().expect("status");
    let status_err = String::from_utf8_lossy(&status.stderr);
    assert!(!status.status.success() && status_err.contains("pod-b.yaml") && status_err.contains("status.podIPs[1].ip") && status_err.contains("fd00:78:2::zz"), "status on a bad pod address:\n{status_err}");
}

/// `GET /metrics` from the daemon, inside the firewall's namespace.
fn metrics(fw: &Netns) -> String {
    fw.run(|| {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect("127.0.0.1:9464").expect("connect to the metrics endpoint");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: fw\r\nConnection: close\r\n\r\n").expect("request");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("response");
        assert!(out.starts_with("HTTP/1.1 200"), "{out}");
        out
    })
}

#[test]
fn ipset_group_follows_pods_with_real_packets() {
    require_root();
    scenario(Kind::Ipset);
}

#[test]
fn nftables_group_follows_pods_with_real_packets() {
    require_root();
    scenario(Kind::Nftables);
}

#[test]
fn ipset_group_follows_ipv6_pods_with_real_packets() {
    require_root();
    scenario6(Kind::Ipset);
}

#[test]
fn nftables_group_follows_ipv6_pods_with_real_packets() {
    require_root();
    scenario6(Kind::Nftables);
}
