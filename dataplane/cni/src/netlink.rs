//! Finds the host side of a container's veth: the peer index (IFLA_LINK) of the interface as
//! seen from inside the container's network namespace, read over rtnetlink. (/sys/class/net
//! cannot be used: sysfs shows the namespace it was mounted in, not the caller's.)

use std::fs::File;

use netlink_packet_core::{NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{LinkAttribute, LinkMessage},
};
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

/// The peer index of `ifname` inside the network namespace at `netns_path`.
pub fn peer_ifindex(netns_path: &str, ifname: &str) -> Result<u32, String> {
    let ns = File::open(netns_path).map_err(|e| format!("opening the netns: {e}"))?;
    // The socket talks to the namespace it is made in, so it is made on a thread inside.
    bulkhead_netns::in_netns_file(&ns, || {
        let links = dump_links()?;
        let link = links.iter().find(|(name, _)| name == ifname).ok_or_else(|| format!("no interface {ifname} in the netns"))?;
        link.1.ok_or_else(|| format!("{ifname} has no peer (not a veth?)"))
    })
    .map_err(|e| format!("entering the netns: {e}"))?
}

/// The name of interface `index` in the caller's namespace.
pub fn ifname_of(index: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: buf holds IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(index, buf.as_mut_ptr().cast()) };
    if p.is_null() {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8(buf[..end].to_vec()).ok()
}

/// Every link of the current namespace: (name, IFLA_LINK).
fn dump_links() -> Result<Vec<(String, Option<u32>)>, String> {
    let mut socket = Socket::new(NETLINK_ROUTE).map_err(|e| format!("netlink socket: {e}"))?;
    socket.bind_auto().map_err(|e| format!("netlink bind: {e}"))?;
    socket.connect(&SocketAddr::new(0, 0)).map_err(|e| format!("netlink connect: {e}"))?;
    let mut req = NetlinkMessage::new(NetlinkHeader::default(), NetlinkPayload::from(RouteNetlinkMessage::GetLink(LinkMessage::default())));
    req.header.flags = NLM_F_DUMP | NLM_F_REQUEST;
    req.header.sequence_number = 1;
    req.finalize();
    let mut buf = vec![0; req.header.length as usize];
    req.serialize(&mut buf[..]);
    socket.send(&buf[..], 0).map_err(|e| format!("netlink send: {e}"))?;
    let mut out = Vec::new();
    let mut rx = vec![0u8; 1 << 16];
    loop {
        let n = socket.recv(&mut &mut rx[..], 0).map_err(|e| format!("netlink recv: {e}"))?;
        let mut off = 0;
        while off < n {
            let msg: NetlinkMessage<RouteNetlinkMessage> = NetlinkMessage::deserialize(&rx[off..n]).map_err(|e| format!("netlink parse: {e}"))?;
            let len = msg.header.length as usize;
            match msg.payload {
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) => return Err(format!("netlink error: {e:?}")),
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(l)) => {
                    let mut name = None;
                    let mut peer = None;
                    for a in l.attributes {
                        match a {
                            LinkAttribute::IfName(s) => name = Some(s),
                            LinkAttribute::Link(i) => peer = Some(i),
                            _ => {}
                        }
                    }
                    if let Some(name) = name {
                        out.push((name, peer));
                    }
                }
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
}
