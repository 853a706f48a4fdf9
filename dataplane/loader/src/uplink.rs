//! The uplink pre-filter, as Cilium's `prefilter` and Calico's XDP-accelerated deny rules on
//! host endpoints: an XDP program in driver mode on a node's physical interface drops packets
//! from denied IPv4 and IPv6 source prefixes before the kernel spends a socket buffer on them (a flood
//! from a denied network then costs the node almost nothing). It is where XDP helps: on pod
//! veths it would turn TSO off (see the README), so pods never get it.
//!
//! The deny list is the instance's pinned LPM maps ([`map_names::UPLINK_DENY`], and
//! [`map_names::UPLINK_DENY6`] for IPv6); the links are
//! pinned under `<pin dir>/uplinks/<interface>`, so the filter keeps working while no agent or
//! command runs, and `bulkhead agent uninstall` removes it with the instance.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{Map, MapData};
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::xdp::{XdpLink, XdpMode};
use aya::programs::Xdp;
use aya::EbpfLoader;
use bulkhead_common::{IpCache6KeyV1, IpCacheKeyV1, map_names};
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::error::DataplaneError;
use crate::loader::{ALL_MAPS, EBPF_OBJECT, programs};

/// Folder (inside the pin folder) of the uplink links.
pub const UPLINKS_DIR: &str = "uplinks";

fn deny_map_name(net: &IpNetwork) -> &'static str {
    if net.is_ipv4() { map_names::UPLINK_DENY } else { map_names::UPLINK_DENY6 }
}

fn entry_err(p: IpNetwork) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::MapEntry { map: deny_map_name(&p), key: p.to_string(), source }
}

fn prog_err(source: aya::programs::ProgramError) -> DataplaneError {
    DataplaneError::Program { program: programs::XDP_UPLINK, source }
}

/// Parses a denied source of either family (`203.0.113.0/24`, `2001:db8::/32`, or an address
/// for /32 or /128). Host bits must be zero: `10.0.0.1/8` is refused rather than silently
/// widened.
pub fn parse_prefix(text: &str) -> Result<IpNetwork, DataplaneError> {
    let net: IpNetwork = if text.contains('/') {
        text.parse().map_err(|e| DataplaneError::Invalid(format!("prefix {text:?}: {e}")))?
    } else {
        let ip: IpAddr = text.parse().map_err(|e| DataplaneError::Invalid(format!("address {text:?}: {e}")))?;
        IpNetwork::from(ip)
    };
    if net.network() != net.ip() {
        return Err(DataplaneError::Invalid(format!("prefix {text:?} has host bits set (did you mean {}/{}?)", net.network(), net.prefix())));
    }
    Ok(net)
}

type DenyMap = LpmTrie<MapData, IpCacheKeyV1, u32>;
type DenyMap6 = LpmTrie<MapData, IpCache6KeyV1, u32>;

fn open<K: aya::Pod>(pin_dir: &Path, name: &'static str) -> Result<LpmTrie<MapData, K, u32>, DataplaneError> {
    let path = pin_dir.join(name);
    let data = MapData::from_pin(&path).map_err(|source| DataplaneError::MapPin { map: name, path: path.clone(), source })?;
    LpmTrie::try_from(Map::LpmTrie(data)).map_err(|source| DataplaneError::Map { map: name, source })
}

fn deny_maps(pin_dir: &Path) -> Result<(DenyMap, DenyMap6), DataplaneError> {
    Ok((open(pin_dir, map_names::UPLINK_DENY)?, open(pin_dir, map_names::UPLINK_DENY6)?))
}

fn key4(net: Ipv4Network) -> Key<IpCacheKeyV1> {
    Key::new(u32::from(net.prefix()), IpCacheKeyV1 { addr_be: net.network().octets() })
}

fn key6(net: Ipv6Network) -> Key<IpCache6KeyV1> {
    Key::new(u32::from(net.prefix()), IpCache6KeyV1 { addr_be: net.network().octets() })
}

/// Adds denied source prefixes of either family (all parsed before any is written).
pub fn add(pin_dir: &Path, prefixes: &[IpNetwork]) -> Result<(), DataplaneError> {
    let (mut m4, mut m6) = deny_maps(pin_dir)?;
    for &p in prefixes {
        match p {
            IpNetwork::V4(n) => m4.insert(&key4(n), 1, 0),
            IpNetwork::V6(n) => m6.insert(&key6(n), 1, 0),
        }
        .map_err(entry_err(p))?;
    }
    Ok(())
}

/// Removes denied prefixes; returns those that were not in the list.
pub fn remove(pin_dir: &Path, prefixes: &[IpNetwork]) -> Result<Vec<IpNetwork>, DataplaneError> {
    let (mut m4, mut m6) = deny_maps(pin_dir)?;
    let mut missing = Vec::new();
    for &p in prefixes {
        let r = match p {
            IpNetwork::V4(n) => m4.remove(&key4(n)),
            IpNetwork::V6(n) => m6.remove(&key6(n)),
        };
        match r {
            Ok(()) => {}
            Err(aya::maps::MapError::KeyNotFound) => missing.push(p),
            Err(e) => return Err(entry_err(p)(e)),
        }
    }
    Ok(missing)
}

/// The denied prefixes, IPv4 then IPv6, each sorted.
pub fn list(pin_dir: &Path) -> Result<Vec<IpNetwork>, DataplaneError> {
    let (m4, m6) = deny_maps(pin_dir)?;
    let content = |name: &'static str, len: u32, e: ipnetwork::IpNetworkError| DataplaneError::MapContent { map: name, detail: format!("key /{len}: {e}") };
    let mut out = Vec::new();
    for k in m4.keys() {
        let k = k.map_err(|source| DataplaneError::Map { map: map_names::UPLINK_DENY, source })?;
        let net = Ipv4Network::new(Ipv4Addr::from(k.data().addr_be), k.prefix_len() as u8).map_err(|e| content(map_names::UPLINK_DENY, k.prefix_len(), e))?;
        out.push(IpNetwork::V4(net));
    }
    for k in m6.keys() {
        let k = k.map_err(|source| DataplaneError::Map { map: map_names::UPLINK_DENY6, source })?;
        let net = Ipv6Network::new(Ipv6Addr::from(k.data().addr_be), k.prefix_len() as u8).map_err(|e| content(map_names::UPLINK_DENY6, k.prefix_len(), e))?;
        out.push(IpNetwork::V6(net));
    }
    out.sort_by_key(|n| (n.is_ipv6(), n.network(), n.prefix()));
    Ok(out)
}

fn pin_of(pin_dir: &Path, ifname: &str) -> PathBuf {
    pin_dir.join(UPLINKS_DIR).join(ifname)
}

/// Attaches the pre-filter to `ifname` (in the calling thread's network namespace) in driver
/// mode and pins the link. Already attached: the pinned link's program is replaced in place
/// (one `bpf_link_update`: no packet goes unfiltered). Driver mode or nothing: in generic mode
/// the socket buffer exists already, so the filter would save nothing it is meant to save.
pub fn attach(pin_dir: &Path, ifname: &str) -> Result<(), DataplaneError> {
    let mut ebpf = load(pin_dir)?;
    let x = program(&mut ebpf)?;
    let pin = pin_of(pin_dir, ifname);
    let dir = pin_dir.join(UPLINKS_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| DataplaneError::PinDir { path: dir.clone(), source: e })?;
    let id = match PinnedLink::from_pin(&pin) {
        Ok(old) => {
            let fd: FdLink = old.into();
            let link = XdpLink::try_from(fd).map_err(|source| DataplaneError::Link { what: format!("{} (not an XDP link?)", pin.display()), source })?;
            x.attach_to_link(link).map_err(prog_err)?
        }
        Err(_) => x.attach(ifname, XdpMode::Driver).map_err(|e| DataplaneError::Interface {
            ifname: ifname.into(),
            detail: format!("XDP in driver mode: {e} (the interface's driver must support native XDP)"),
        })?,
    };
    let link = x.take_link(id).map_err(prog_err)?;
    let fd: FdLink = link.try_into().map_err(|source| DataplaneError::Link { what: format!("XDP on {ifname}"), source })?;
    let _ = std::fs::remove_file(&pin);
    fd.pin(&pin).map_err(|source| DataplaneError::Pin { path: pin.clone(), source })?;
    Ok(())
}

/// Loads the eBPF object on the instance's pinned maps with the uplink program loaded (not
/// attached): [`attach`] uses it, and benchmarks run the program through BPF_PROG_TEST_RUN.
pub fn load(pin_dir: &Path) -> Result<aya::Ebpf, DataplaneError> {
    if !pin_dir.join(map_names::UPLINK_DENY).exists() {
        return Err(DataplaneError::NotLoaded { pin_dir: pin_dir.to_path_buf() });
    }
    let mut loader = EbpfLoader::new();
    let paths: Vec<(&str, PathBuf)> = ALL_MAPS.iter().map(|m| (*m, pin_dir.join(m))).collect();
    for (name, path) in &paths {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader.load(EBPF_OBJECT)?;
    program(&mut ebpf)?.load().map_err(prog_err)?;
    Ok(ebpf)
}

/// The uplink program of an object from [`load`].
pub fn program(ebpf: &mut aya::Ebpf) -> Result<&mut Xdp, DataplaneError> {
    ebpf.program_mut(programs::XDP_UPLINK)
        .ok_or_else(|| DataplaneError::Missing { what: format!("program {}", programs::XDP_UPLINK) })?
        .try_into()
        .map_err(prog_err)
}

/// Detaches the pre-filter from `ifname`; returns whether it was attached.
pub fn detach(pin_dir: &Path, ifname: &str) -> bool {
    matches!(crate::linkpin::remove(&pin_of(pin_dir, ifname)), Ok(true))
}

/// Interfaces the pre-filter is attached to.
pub fn attached(pin_dir: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(pin_dir.join(UPLINKS_DIR)) else { return Vec::new() };
    let mut v: Vec<String> = rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

/// Detaches every uplink of an instance (uninstall).
pub fn detach_all(pin_dir: &Path) {
    for i in attached(pin_dir) {
        detach(pin_dir, &i);
    }
    let _ = std::fs::remove_dir(pin_dir.join(UPLINKS_DIR));
}
