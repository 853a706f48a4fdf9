//! The conformance topology format (see /work/shared/conformance/FORMAT.md): namespaces with
//! labels, pods with fixed IPs and labels, and the ports every pod serves.
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{LabError, Result};

/// L4 protocol of a served or probed port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum Protocol {
    /// TCP.
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP.
    #[serde(rename = "UDP")]
    Udp,
}

impl Protocol {
    /// Parses `TCP`/`UDP` (case-insensitive, as Kubernetes YAML is written in upper case).
    pub fn parse(s: &str) -> Option<Protocol> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            _ => None,
        }
    }
    /// The Kubernetes spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A served port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// Port number.
    pub port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// Optional container-port name (for named-port policies and probes).
    pub name: Option<String>,
}

/// A namespace and its labels.
#[derive(Debug, Clone)]
pub struct Namespace {
    /// Name.
    pub name: String,
    /// Labels (the topology writes out `kubernetes.io/metadata.name`).
    pub labels: BTreeMap<String, String>,
}

/// A pod: one network namespace in the lab.
#[derive(Debug, Clone)]
pub struct Pod {
    /// Namespace name.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Fixed IPv4 address.
    pub ip: Ipv4Addr,
    /// Fixed IPv6 address of a dual-stack pod (`ip6:`).
    pub ip6: Option<Ipv6Addr>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// The pod's own port list; `None` means the topology-wide list.
    pub ports: Option<Vec<Port>>,
    /// Service account (default `default`).
    pub service_account: String,
}

impl Pod {
    /// `namespace/name`, the key used by matrix patterns.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A parsed and validated topology.
#[derive(Debug, Clone)]
pub struct Topology {
    /// `name:` in the file; cases refer to it.
    pub name: String,
    /// The file it was read from (for messages).
    pub file: PathBuf,
    /// Namespaces.
    pub namespaces: Vec<Namespace>,
    /// Pods, in file order (the lab numbers them by this index).
    pub pods: Vec<Pod>,
    /// Ports served by pods without their own list.
    pub ports: Vec<Port>,
}

impl Topology {
    /// Reads and validates a topology file.
    pub fn load(path: &Path) -> Result<Topology> {
        let text = std::fs::read_to_string(path).map_err(|e| LabError::io(path, e))?;
        Topology::parse(&text, path)
    }

    /// Parses and validates topology text; `path` is only used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Topology> {
        let file = path.display().to_string();
        let raw: RawTopology =
            serde_yaml::from_str(text).map_err(|source| LabError::Yaml { file: file.clone(), source })?;
        if let Some(kind) = &raw.kind
            && kind != "Topology"
        {
            return Err(LabError::invalid(&file, "kind", format!("{kind:?} is not \"Topology\"")));
        }
        let name = raw.name.filter(|n| !n.is_empty()).ok_or_else(|| LabError::invalid(&file, "name", "missing"))?;

        let mut namespaces = Vec::new();
        let mut ns_names = HashSet::new();
        for (i, ns) in raw.namespaces.into_iter().enumerate() {
            let field = format!("namespaces[{i}].name");
            check_dns_label(&file, &field, &ns.name)?;
            if !ns_names.insert(ns.name.clone()) {
                return Err(LabError::invalid(&file, field, format!("duplicate namespace {:?}", ns.name)));
            }
            namespaces.push(Namespace { name: ns.name, labels: ns.labels.unwrap_or_default() });
        }

        let ports = parse_ports(&file, "ports", raw.ports)?;
        let mut pods = Vec::new();
        let mut keys = HashSet::new();
        let mut ips: HashMap<IpAddr, String> = HashMap::new();
        for (i, p) in raw.pods.into_iter().enumerate() {
            let at = |f: &str| format!("pods[{i}].{f}");
            if !ns_names.contains(&p.namespace) {
                return Err(LabError::invalid(&file, at("namespace"), format!("unknown namespace {:?}", p.namespace)));
            }
            check_dns_label(&file, &at("name"), &p.name)?;
            let ip: Ipv4Addr = p
                .ip
                .parse()
                .map_err(|_| LabError::invalid(&file, at("ip"), format!("{:?} is not an IPv4 address", p.ip)))?;
            let ip6: Option<Ipv6Addr> = match &p.ip6 {
                None => None,
                Some(s) => Some(s.parse().map_err(|_| LabError::invalid(&file, at("ip6"), format!("{s:?} is not an IPv6 address")))?),
            };
            let key = format!("{}/{}", p.namespace, p.name);
            if !keys.insert(key.clone()) {
                return Err(LabError::invalid(&file, at("name"), format!("duplicate pod {key}")));
            }
            if let Some(other) = ips.insert(ip.into(), key.clone()) {
                return Err(LabError::invalid(&file, at("ip"), format!("{ip} is already the IP of {other}")));
            }
            if let Some(a) = ip6
                && let Some(other) = ips.insert(a.into(), key.clone())
            {
                return Err(LabError::invalid(&file, at("ip6"), format!("{a} is already the IP of {other}")));
            }
            let own_ports = match p.ports {
                Some(list) => Some(parse_ports(&file, &at("ports"), list)?),
                None => None,
            };
            pods.push(Pod {
                namespace: p.namespace,
                name: p.name,
                ip,
                ip6,
                labels: p.labels.unwrap_or_default(),
                ports: own_ports,
                service_account: p.service_account.unwrap_or_else(|| "default".to_string()),
            });
        }
        Ok(Topology { name, file: path.to_path_buf(), namespaces, pods, ports })
    }

    /// The ports `pod` serves: its own list, else the topology-wide one.
    pub fn ports_of<'a>(&'a self, pod: &'a Pod) -> &'a [Port] {
        pod.ports.as_deref().unwrap_or(&self.ports)
    }

    /// Finds a pod by `namespace/name`.
    pub fn pod(&self, key: &str) -> Option<(usize, &Pod)> {
        self.pods.iter().enumerate().find(|(_, p)| p.key() == key)
    }
}

fn check_dns_label(file: &str, field: &str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok { Ok(()) } else { Err(LabError::invalid(file, field, format!("{value:?} is not a DNS label"))) }
}

fn parse_ports(file: &str, field: &str, raw: Vec<RawPort>) -> Result<Vec<Port>> {
    let mut out: Vec<Port> = Vec::new();
    for (i, p) in raw.into_iter().enumerate() {
        let at = |f: &str| format!("{field}[{i}].{f}");
        let port = u16::try_from(p.port)
            .ok()
            .filter(|&n| n != 0)
            .ok_or_else(|| LabError::invalid(file, at("port"), format!("{} is not a port number (1-65535)", p.port)))?;
        let proto_s = p.protocol.unwrap_or_else(|| "TCP".to_string());
        let protocol = Protocol::parse(&proto_s)
            .ok_or_else(|| LabError::invalid(file, at("protocol"), format!("{proto_s:?} is not TCP or UDP")))?;
        if out.iter().any(|q| q.port == port && q.protocol == protocol) {
            return Err(LabError::invalid(file, at("port"), format!("duplicate port {port}/{protocol}")));
        }
        if let Some(n) = &p.name
            && out.iter().any(|q| q.name.as_ref() == Some(n))
        {
            return Err(LabError::invalid(file, at("name"), format!("duplicate port name {n:?}")));
        }
        out.push(Port { port, protocol, name: p.name });
    }
    Ok(out)
}

#[derive(Deserialize)]
struct RawTopology {
    kind: Option<String>,
    name: Option<String>,
    #[serde(default)]
    namespaces: Vec<RawNamespace>,
    #[serde(default)]
    pods: Vec<RawPod>,
    #[serde(default)]
    ports: Vec<RawPort>,
}

#[derive(Deserialize)]
struct RawNamespace {
    name: String,
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPod {
    namespace: String,
    name: String,
    ip: String,
    ip6: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    ports: Option<Vec<RawPort>>,
    service_account: Option<String>,
}

#[derive(Deserialize)]
struct RawPort {
    port: i64,
    protocol: Option<String>,
    name: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "kind: Topology\nname: t\nnamespaces:\n  - {name: x, labels: {ns: x}}\npods:\n  - {namespace: x, name: a, ip: 10.0.0.1, labels: {pod: a}}\n  - {namespace: x, name: b, ip: 10.0.0.2, ports: [{port: 53, protocol: UDP, name: dns}]}\nports:\n  - {port: 80, protocol: TCP, name: web}\n";

    #[test]
    fn parses_ports_and_defaults() {
        let t = Topology::parse(GOOD, Path::new("t.yaml")).unwrap();
        assert_eq!(t.pods.len(), 2);
        assert_eq!(t.ports_of(&t.pods[0])[0].port, 80);
        assert_eq!(t.ports_of(&t.pods[1])[0].protocol, Protocol::Udp);
        assert_eq!(t.pods[0].service_account, "default");
    }

    #[test]
    fn bad_ip_names_file_and_field() {
        let text = GOOD.replace("10.0.0.2", "10.240.1.300");
        let e = Topology::parse(&text, Path::new("standard.yaml")).unwrap_err().to_string();
        assert_eq!(e, "standard.yaml: pods[1].ip: \"10.240.1.300\" is not an IPv4 address");
    }

    #[test]
    fn rejects_duplicates_and_unknown_namespace() {
        let dup_ip = GOOD.replace("10.0.0.2", "10.0.0.1");
        assert!(Topology::parse(&dup_ip, Path::new("t.yaml")).unwrap_err().to_string().contains("pods[1].ip"));
        let dup_pod = GOOD.replace("name: b", "name: a");
        assert!(Topology::parse(&dup_pod, Path::new("t.yaml")).unwrap_err().to_string().contains("duplicate pod x/a"));
        let unknown = GOOD.replace("{namespace: x, name: b", "{namespace: q, name: b");
        assert!(Topology::parse(&unknown, Path::new("t.yaml")).unwrap_err().to_string().contains("pods[1].namespace"));
    }
}
