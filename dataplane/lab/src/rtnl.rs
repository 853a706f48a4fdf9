//! The lab's namespaces, veths, addresses and routes, made over rtnetlink in this process: what
//! `ip netns add`, `ip link add ... type veth`, `ip addr add` and `ip route add` did, without a
//! fork and exec per step (about ten per pod).
//!
//! Messages are built with netlink-packet-route and sent synchronously over a netlink-sys
//! socket, as the CNI plugin does (`dataplane/cni/src/netlink.rs`); the async `rtnetlink` crate
//! would bring a runtime into a crate that has none. Each request asks for an ACK and waits for
//! it, so a refused request fails at the step that made it.
use std::ffi::CString;
use std::fs::{DirBuilder, OpenOptions};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::Path;
use std::sync::Mutex;

use netlink_packet_core::{
    ErrorBuffer, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NLMSG_ERROR, NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, LinkMessageBuffer};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::error::{LabError, Result};

/// A route-netlink socket talking to one network namespace.
///
/// A netlink socket belongs to the namespace of the thread that created it, whichever thread
/// uses it afterwards; so only [`Rtnl::open`] needs a thread inside the namespace, and the
/// requests are then sent from the caller's thread.
pub struct Rtnl {
    socket: Socket,
    netns: String,
    seq: u32,
}

impl Rtnl {
    /// A socket in the named network namespace.
    pub fn open(netns: &str) -> Result<Rtnl> {
        let socket = bulkhead_netns::in_netns(netns, || -> io::Result<Socket> {
            let mut s = Socket::new(NETLINK_ROUTE)?;
            s.bind_auto()?;
            s.connect(&SocketAddr::new(0, 0))?;
            Ok(s)
        })
        .and_then(|made| made)
        .map_err(|source| LabError::Netlink { netns: netns.into(), what: "opening a route-netlink socket".into(), source })?;
        Ok(Rtnl { socket, netns: netns.into(), seq: 0 })
    }

    /// `ip link set IFNAME up`.
    pub fn set_up(&mut self, ifname: &str) -> Result<()> {
        let mut msg = LinkMessage::default();
        // Index 0 with IFLA_IFNAME: the kernel finds the link by name, saving a lookup.
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        msg.attributes.push(LinkAttribute::IfName(ifname.into()));
        self.request(RouteNetlinkMessage::SetLink(msg), 0, || format!("setting {ifname} up"))?;
        Ok(())
    }

    /// `ip link add NAME type veth peer name PEER netns PEER_NETNS`: the peer is created
    /// directly in `peer_netns` (IFLA_NET_NS_FD inside the peer's message), so it never shows up
    /// in this namespace under a name that could clash with another lab's.
    pub fn add_veth(&mut self, name: &str, peer: &str, peer_netns: &str) -> Result<()> {
        let what = || format!("adding veth {name} with peer {peer} in netns {peer_netns}");
        let ns = bulkhead_netns::open(peer_netns).map_err(|source| LabError::Netlink { netns: self.netns.clone(), what: what(), source })?;
        let mut peer_msg = LinkMessage::default();
        peer_msg.attributes.push(LinkAttribute::IfName(peer.into()));
        // The kernel reads the descriptor while handling the request; `ns` outlives it.
        peer_msg.attributes.push(LinkAttribute::NetNsFd(ns.as_raw_fd()));
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.into()));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth), LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg)))]));
        self.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL, what)?;
        Ok(())
    }

    /// `ip addr add ADDR/32 dev IFNAME`.
    pub fn add_address(&mut self, ifname: &str, addr: Ipv4Addr) -> Result<()> {
        self.add_prefix(ifname, addr.into(), 32)
    }

    /// `ip addr add ADDR/LEN dev IFNAME`, with `nodad` for IPv6: a lab address is unique by
    /// construction, and duplicate address detection would leave it tentative (unusable) for
    /// a second or more.
    pub fn add_prefix(&mut self, ifname: &str, addr: IpAddr, prefix_len: u8) -> Result<()> {
        let what = || format!("adding address {addr}/{prefix_len} to {ifname}");
        let mut msg = AddressMessage::default();
        msg.header.family = if addr.is_ipv6() { AddressFamily::Inet6 } else { AddressFamily::Inet };
        msg.header.prefix_len = prefix_len;
        msg.header.index = self.ifindex(ifname, what)?;
        if addr.is_ipv6() {
            msg.header.flags = AddressHeaderFlags::Nodad;
            msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
            // IPv6 takes the address alone (iproute2 sends IFA_LOCAL only for IPv4 and peers).
            msg.attributes.push(AddressAttribute::Address(addr));
        } else {
            // Local and address both, as iproute2 sends for an address without a peer.
            msg.attributes.push(AddressAttribute::Local(addr));
            msg.attributes.push(AddressAttribute::Address(addr));
        }
        self.request(RouteNetlinkMessage::NewAddress(msg), NLM_F_CREATE | NLM_F_EXCL, what)?;
        Ok(())
    }

    /// `ip route add default via GATEWAY dev IFNAME onlink`: the gateway needs no route of its
    /// own (the Calico-style 169.254.1.1 is on no subnet of the pod).
    pub fn add_default_route_onlink(&mut self, gateway: Ipv4Addr, ifname: &str) -> Result<()> {
        let what = || format!("adding route default via {gateway} dev {ifname} onlink");
        let mut msg = route(0, RouteScope::Universe);
        msg.header.flags = RouteFlags::Onlink;
        msg.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(gateway)));
        msg.attributes.push(RouteAttribute::Oif(self.ifindex(ifname, what)?));
        self.request(RouteNetlinkMessage::NewRoute(msg), NLM_F_CREATE | NLM_F_EXCL, what)?;
        Ok(())
    }

    /// `ip -6 route add default via GATEWAY dev IFNAME` (a link-local gateway needs no route).
    pub fn add_default_route6(&mut self, gateway: Ipv6Addr, ifname: &str) -> Result<()> {
        let what = || format!("adding route ::/0 via {gateway} dev {ifname}");
        let mut msg = route(0, RouteScope::Universe);
        msg.header.address_family = AddressFamily::Inet6;
        msg.attributes.push(RouteAttribute::Gateway(RouteAddress::Inet6(gateway)));
        msg.attributes.push(RouteAttribute::Oif(self.ifindex(ifname, what)?));
        self.request(RouteNetlinkMessage::NewRoute(msg), NLM_F_CREATE | NLM_F_EXCL, what)?;
        Ok(())
    }

    /// `ip -6 route add DEST/128 dev IFNAME`.
    pub fn add_host_route6(&mut self, dest: Ipv6Addr, ifname: &str) -> Result<()> {
        let what = || format!("adding route {dest}/128 dev {ifname}");
        // IPv6 routes are scope universe (iproute2 sends no link scope for them).
        let mut msg = route(128, RouteScope::Universe);
        msg.header.address_family = AddressFamily::Inet6;
        msg.attributes.push(RouteAttribute::Destination(RouteAddress::Inet6(dest)));
        msg.attributes.push(RouteAttribute::Oif(self.ifindex(ifname, what)?));
        self.request(RouteNetlinkMessage::NewRoute(msg), NLM_F_CREATE | NLM_F_EXCL, what)?;
        Ok(())
    }

    /// `ip route add DEST/32 dev IFNAME` (scope link, as iproute2 gives a route without gateway).
    pub fn add_host_route(&mut self, dest: Ipv4Addr, ifname: &str) -> Result<()> {
        let what = || format!("adding route {dest}/32 dev {ifname}");
        let mut msg = route(32, RouteScope::Link);
        msg.attributes.push(RouteAttribute::Destination(RouteAddress::Inet(dest)));
        msg.attributes.push(RouteAttribute::Oif(self.ifindex(ifname, what)?));
        self.request(RouteNetlinkMessage::NewRoute(msg), NLM_F_CREATE | NLM_F_EXCL, what)?;
        Ok(())
    }

    /// The index of `ifname` in this namespace (RTM_GETLINK by name: if_nametoindex would ask
    /// the calling thread's namespace, not the socket's).
    fn ifindex(&mut self, ifname: &str, what: impl Fn() -> String) -> Result<u32> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(ifname.into()));
        let reply = self.request(RouteNetlinkMessage::GetLink(msg), 0, &what)?;
        // The header only: parsing the attributes would make netlink-packet-route warn about
        // each one this kernel fills longer than the crate knows (IFLA_INET6_CONF...).
        match reply.as_deref().map(LinkMessageBuffer::new_checked) {
            Some(Ok(link)) => Ok(link.link_index()),
            _ => Err(LabError::Netlink { netns: self.netns.clone(), what: what(), source: io::Error::other(format!("no link message for {ifname}")) }),
        }
    }

    /// Sends one request with NLM_F_ACK and reads until its ACK; returns the payload of the
    /// reply before the ACK, if any (a GET's answer). A NACK becomes [`LabError::Netlink`] with
    /// its errno. Replies are read by their headers, not parsed (see [`Rtnl::ifindex`]).
    fn request(&mut self, msg: RouteNetlinkMessage, flags: u16, what: impl Fn() -> String) -> Result<Option<Vec<u8>>> {
        let fail = |source: io::Error| LabError::Netlink { netns: self.netns.clone(), what: what(), source };
        self.seq = self.seq.wrapping_add(1);
        let mut req = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        req.header.sequence_number = self.seq;
        req.finalize();
        let mut buf = vec![0; req.header.length as usize];
        req.serialize(&mut buf[..]);
        self.socket.send(&buf, 0).map_err(fail)?;
        let mut reply = None;
        let mut rx = vec![0u8; 1 << 16];
        loop {
            let n = self.socket.recv(&mut &mut rx[..], 0).map_err(fail)?;
            let mut off = 0;
            while off < n {
                let msg = NetlinkBuffer::new_checked(&rx[off..n]).map_err(|e| fail(malformed(e)))?;
                // Answers to an earlier request that failed half-way are not this one's.
                if msg.sequence_number() == self.seq {
                    if msg.message_type() != NLMSG_ERROR {
                        reply = Some(msg.payload().to_vec());
                    } else {
                        // No code is the ACK; a code is the request's negative errno.
                        return match ErrorBuffer::new_checked(msg.payload()).map_err(|e| fail(malformed(e)))?.code() {
                            None => Ok(reply),
                            Some(code) => Err(fail(io::Error::from_raw_os_error(-code.get()))),
                        };
                    }
                }
                let len = msg.length() as usize;
                if len == 0 {
                    break;
                }
                // Messages in one datagram start on 4-byte boundaries (NLMSG_ALIGN).
                off += (len + 3) & !3;
            }
        }
    }
}

/// A reply too short for its headers.
fn malformed(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("malformed netlink reply: {e}"))
}

/// An IPv4 route message of the main table as `ip route add` makes it (protocol boot, unicast).
fn route(prefix_len: u8, scope: RouteScope) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = AddressFamily::Inet;
    msg.header.destination_prefix_length = prefix_len;
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::Boot;
    msg.header.scope = scope;
    msg.header.kind = RouteType::Unicast;
    msg
}

/// `ip netns add NAME`: a new network namespace bind-mounted on `/var/run/netns/NAME`.
///
/// As iproute2's ip/ipnetns.c: the folder is made a shared mount point (so that deleting the
/// name in one mount namespace unmounts it in all), the empty file is created (failing if the
/// name is taken), and a thread that unshared its network namespace bind-mounts its own
/// namespace file on it; the mount keeps the namespace alive after the thread ends.
pub fn add_netns(name: &str) -> Result<()> {
    let dir = Path::new(bulkhead_netns::NETNS_DIR);
    share_netns_dir(dir)?;
    let file = bulkhead_netns::path(name);
    // Mode 0 as iproute2: the file is only a mount point, never read or written.
    OpenOptions::new().write(true).create_new(true).mode(0o000).open(&file).map_err(|e| LabError::io(&file, e))?;
    let made = std::thread::scope(|s| {
        s.spawn(|| -> io::Result<()> {
            // CLONE_NEWNET may be unshared by one thread of a multi-threaded process; only
            // this thread moves.
            // SAFETY: plain syscall.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // thread-self, not self: /proc/self/ns/net is the main thread's namespace.
            mount(Path::new("/proc/thread-self/ns/net"), &file, libc::MS_BIND)
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("thread panicked")))
    });
    if let Err(e) = made {
        // Do not leave a name without a namespace behind (iproute2 deletes it too).
        let _ = del_netns(name);
        return Err(LabError::Sys { context: format!("creating netns {name}"), source: e });
    }
    Ok(())
}

/// `ip netns del NAME`: detaches the bind mount and removes the file. A process still inside
/// keeps the namespace itself alive; the name is gone at once, as with iproute2.
pub fn del_netns(name: &str) -> Result<()> {
    let file = bulkhead_netns::path(name);
    let c = cstring(&file)?;
    // Unchecked, as iproute2 does: a file that was never mounted on must still be removed.
    // SAFETY: valid NUL-terminated path.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    std::fs::remove_file(&file).map_err(|e| LabError::io(&file, e))
}

/// Makes `dir` exist and be a shared mount point (iproute2's `netns_add` preamble): try
/// `--make-rshared`; if `dir` is not a mount point yet (EINVAL), bind it on itself once and
/// retry. Serialised in the process: two threads binding it at once would stack two mounts,
/// and the upper one would hide the namespaces mounted on the lower.
fn share_netns_dir(dir: &Path) -> Result<()> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    DirBuilder::new().recursive(true).mode(0o755).create(dir).map_err(|e| LabError::io(dir, e))?;
    let mut bound = false;
    loop {
        match mount(Path::new(""), dir, libc::MS_SHARED | libc::MS_REC) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && !bound => {
                mount(dir, dir, libc::MS_BIND | libc::MS_REC)
                    .map_err(|e| LabError::Sys { context: format!("mount --rbind {0} {0}", dir.display()), source: e })?;
                bound = true;
            }
            Err(e) => return Err(LabError::Sys { context: format!("mount --make-rshared {}", dir.display()), source: e }),
        }
    }
}

/// mount(2) with no filesystem type or data, for binds and propagation changes.
fn mount(source: &Path, target: &Path, flags: libc::c_ulong) -> io::Result<()> {
    let (src, tgt) = (cstring(source).map_err(io::Error::other)?, cstring(target).map_err(io::Error::other)?);
    // SAFETY: valid NUL-terminated strings; a null data pointer is allowed.
    if unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), c"none".as_ptr(), flags, std::ptr::null()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn cstring(p: &Path) -> Result<CString> {
    use std::os::unix::ffi::OsStrExt as _;
    CString::new(p.as_os_str().as_bytes()).map_err(|_| LabError::io(p, io::ErrorKind::InvalidInput.into()))
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    /// Namespaces made for one test, deleted on drop (also after a failed assertion). Names hold
    /// the process id and a tag so that tests run in parallel with each other and with labs.
    struct Namespaces(Vec<String>);

    impl Namespaces {
        fn new(tag: &str, count: usize) -> Namespaces {
            assert_eq!(unsafe { libc::geteuid() }, 0, "the rtnetlink tests need root");
            let names: Vec<String> = (0..count).map(|i| format!("bhrt-{}-{tag}{i}", std::process::id())).collect();
            let guard = Namespaces(names.clone());
            for n in &names {
                // Left by a killed earlier run that had the same pid.
                if bulkhead_netns::path(n).exists() {
                    let _ = del_netns(n);
                }
                add_netns(n).unwrap_or_else(|e| panic!("add_netns {n}: {e}"));
            }
            guard
        }
    }

    impl Drop for Namespaces {
        fn drop(&mut self) {
            for n in &self.0 {
                if bulkhead_netns::path(n).exists() {
                    let _ = del_netns(n);
                }
            }
        }
    }

    fn ip(args: &[&str]) -> String {
        let out = Command::new("ip").args(args).output().expect("running ip");
        assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn namespace_add_and_delete() {
        let ns = Namespaces::new("nd", 1);
        let name = &ns.0[0];
        assert!(ip(&["netns", "list"]).lines().any(|l| l.split_whitespace().next() == Some(name.as_str())));
        // Its own namespace: only a loopback, down.
        let links = ip(&["-n", name, "-o", "link"]);
        assert_eq!(links.lines().count(), 1, "{links}");
        assert!(links.contains("lo:") && links.contains("state DOWN"), "{links}");
        // A taken name fails, naming the file, and leaves the existing namespace alone.
        let e = add_netns(name).unwrap_err().to_string();
        assert!(e.contains(&format!("/var/run/netns/{name}")), "{e}");
        assert!(ip(&["-n", name, "-o", "link"]).contains("lo:"));
        del_netns(name).expect("del_netns");
        assert!(!bulkhead_netns::path(name).exists());
        assert!(!ip(&["netns", "list"]).contains(name.as_str()));
    }

    #[test]
    fn veth_address_and_routes_as_the_lab_wires_a_pod() {
        let ns = Namespaces::new("w", 2);
        let (node, pod) = (&ns.0[0], &ns.0[1]);
        let veth = format!("bhrt{}", std::process::id());
        let (pod_ip, gateway) = (Ipv4Addr::new(10, 251, 7, 9), Ipv4Addr::new(169, 254, 1, 1));
        let mut n = Rtnl::open(node).expect("node socket");
        n.set_up("lo").unwrap();
        n.add_address("lo", gateway).unwrap();
        n.add_veth(&veth, "eth0", pod).unwrap();
        let mut p = Rtnl::open(pod).expect("pod socket");
        p.set_up("lo").unwrap();
        p.add_address("eth0", pod_ip).unwrap();
        p.set_up("eth0").unwrap();
        p.add_default_route_onlink(gateway, "eth0").unwrap();
        n.set_up(&veth).unwrap();
        n.add_host_route(pod_ip, &veth).unwrap();

        // The peer went straight into the pod namespace; the node has only the host side.
        let node_links = ip(&["-n", node, "-o", "link"]);
        assert!(node_links.contains(&format!("{veth}@if")) && !node_links.contains("eth0"), "{node_links}");
        // Flags, not "state UP": the operational state follows a moment later (linkwatch).
        assert!(node_links.lines().all(|l| l.contains(",UP,LOWER_UP>")), "{node_links}");
        assert!(ip(&["-n", pod, "-o", "link", "show", "eth0"]).contains(",UP,LOWER_UP>"));
        let addrs = ip(&["-n", pod, "-o", "-4", "addr"]);
        assert!(addrs.lines().any(|l| l.contains("eth0") && l.contains("inet 10.251.7.9/32 scope global")), "{addrs}");
        assert!(addrs.lines().any(|l| l.contains("lo") && l.contains("inet 127.0.0.1/8")), "{addrs}");
        assert!(ip(&["-n", node, "-o", "-4", "addr", "show", "lo"]).contains("inet 169.254.1.1/32 scope global lo"));
        assert_eq!(ip(&["-n", pod, "route"]).trim(), "default via 169.254.1.1 dev eth0 onlink");
        assert_eq!(ip(&["-n", node, "route"]).trim(), format!("10.251.7.9 dev {veth} scope link"));

        // A refused request names the namespace, the step and the errno.
        let e = n.add_host_route(pod_ip, &veth).unwrap_err().to_string();
        assert!(e.contains(node.as_str()) && e.contains("10.251.7.9/32") && e.contains("os error 17"), "{e}");
        let e = p.set_up("nosuch0").unwrap_err().to_string();
        assert!(e.contains(pod.as_str()) && e.contains("nosuch0") && e.contains("os error 19"), "{e}");
        let e = p.add_address("nosuch0", pod_ip).unwrap_err().to_string();
        assert!(e.contains("nosuch0") && e.contains("os error 19"), "{e}");
        // The socket still works after a NACK (no stale answer is taken for the next one).
        p.set_up("eth0").unwrap();

        // Deleting the pod namespace takes its veth end, and with it the node's side, once
        // nothing holds the namespace: a socket made in it does.
        drop(p);
        del_netns(pod).unwrap();
        for _ in 0..100 {
            if !ip(&["-n", node, "-o", "link"]).contains(&veth) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!("{veth} still in {node} 2 s after its peer's namespace was deleted");
    }

    #[test]
    fn a_missing_namespace_fails_naming_it() {
        let name = format!("bhrt-{}-missing", std::process::id());
        let e = Rtnl::open(&name).err().expect("no such namespace").to_string();
        assert!(e.contains(&name), "{e}");
        let e = del_netns(&name).unwrap_err().to_string();
        assert!(e.contains(&format!("/var/run/netns/{name}")), "{e}");
    }
}
