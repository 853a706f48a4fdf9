//! The daemon config file (wire format) -> [`DaemonConfig`], and the checks that tie address
//! groups to the configured firewalls.
//!
//! ```yaml
//! firewalls:
//!   - name: edge
//!     type: ipset
//!   - name: core
//!     type: nftables
//!     nftables: {family: inet, table: bhfw}
//!   - name: pa
//!     type: panos
//!     panos:
//!       url: https://pa.example.net
//!       apiKey: {file: /etc/fw-sync/pa.key}    # or {env: PANOS_API_KEY}
//!       vsys: vsys1                            # or deviceGroup: DG (Panorama)
//!     tls: {caFile: /etc/fw-sync/pa-ca.pem}    # verification is on by default
//!   - name: fg
//!     type: fortios
//!     fortios: {url: https://fg.example.net, vdom: root, token: {env: FORTIOS_TOKEN}}
//! datastore: ./datastore        # relative to this file
//! reconcileInterval: 30s
//! metricsListen: 127.0.0.1:9464  # Prometheus text at /metrics (optional)
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml::Value;

use crate::backend::http::TlsOptions;
use crate::error::FwSyncError;
use crate::secret::{Secret, SecretSource};
use crate::group::{AddressGroup, Target, TargetKind};
use crate::yaml::{Ctx, child, get, index};

/// What the daemon runs against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    pub firewalls: Vec<FirewallConfig>,
    /// Folder of Kubernetes-style YAML (pods, namespaces, AddressGroups); unused when
    /// `kubernetes` is set.
    pub datastore: PathBuf,
    /// Read pods, namespaces and AddressGroups from the Kubernetes API instead (`datastore:
    /// kubernetes` in the file, or `--datastore kubernetes`).
    pub kubernetes: Option<KubeSource>,
    /// How often the firewalls' real state is read and drift repaired.
    pub reconcile_interval: Duration,
    /// Where `GET /metrics` is served (none when absent).
    pub metrics_listen: Option<String>,
    /// The quarantine group kept on every firewall (none when absent).
    pub quarantine: Option<crate::quarantine::QuarantineConfig>,
}

/// The Kubernetes API as the datastore.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KubeSource {
    /// A kubeconfig; `None` infers (KUBECONFIG, ~/.kube/config, then in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// Lead on a Lease before writing to any firewall (one writer per firewall when several
    /// replicas run).
    pub election: Option<bulkhead_kube::lease::Election>,
}

/// One firewall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirewallConfig {
    pub name: String,
    pub kind: FirewallKind,
    /// Run the backend's commands inside this network namespace (`ip netns exec`): a firewall
    /// that is a namespace on this host, as in the lab.
    pub netns: Option<String>,
    /// TLS settings of HTTP APIs (PAN-OS, FortiOS).
    pub tls: TlsOptions,
    /// How long changes are collected after the first one before they are applied: one
    /// commit for a rollout's worth of pod events instead of one per pod, at the price of
    /// this much latency. Defaults: 0 for ipset and nftables (an apply is one cheap local
    /// transaction), 200 ms for PAN-OS (every apply is a commit), 100 ms for FortiOS.
    pub batch_window: Duration,
}

/// Where PAN-OS objects live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PanosLocation {
    /// A firewall's virtual system (`vsys1` on a single-vsys firewall).
    Vsys(String),
    /// A Panorama device group; changes are pushed to its firewalls with commit-all.
    DeviceGroup(String),
}

/// A PAN-OS firewall or Panorama reached through the XML API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PanosConfig {
    /// `https://host[:port]`.
    pub url: String,
    pub api_key: Secret,
    pub location: PanosLocation,
    /// Serial of a managed firewall that Panorama forwards User-ID requests to (`target=`).
    pub target: Option<String>,
    /// Timeout of registered-IP tags in seconds (0: never expire; fw-sync removes them).
    pub registered_ip_timeout: u32,
}

/// A FortiGate reached through the FortiOS REST API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FortiosConfig {
    /// `https://host[:port]`.
    pub url: String,
    /// REST API administrator token, sent as `Authorization: Bearer`.
    pub token: Secret,
    pub vdom: String,
}

/// Which API a firewall is driven through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FirewallKind {
    /// Linux ipset (hash:ip sets named `bhfw-<name>`).
    Ipset,
    /// nftables named sets `bhfw-<name>` in `family table` (created if missing, never deleted).
    Nftables { family: String, table: String },
    /// PAN-OS XML API.
    Panos(PanosConfig),
    /// FortiOS REST API.
    Fortios(FortiosConfig),
}

impl FirewallKind {
    /// Whether targets of `kind` can live on this firewall.
    pub fn accepts(&self, kind: TargetKind) -> bool {
        matches!(
            (self, kind),
            (FirewallKind::Ipset, TargetKind::Ipset)
                | (FirewallKind::Nftables { .. }, TargetKind::NftablesSet)
                | (FirewallKind::Panos(_), TargetKind::PanosStaticGroup | TargetKind::PanosDynamicTag)
                | (FirewallKind::Fortios(_), TargetKind::FortiosAddrgrp | TargetKind::FortiosThreatFeed)
        )
    }

    fn type_name(&self) -> &'static str {
        match self {
            FirewallKind::Ipset => "ipset",
            FirewallKind::Nftables { .. } => "nftables",
            FirewallKind::Panos(_) => "panos",
            FirewallKind::Fortios(_) => "fortios",
        }
    }
}

const DEFAULT_RECONCILE: Duration = Duration::from_secs(30);

impl DaemonConfig {
    /// Reads and checks the config file.
    pub fn load(path: &Path) -> Result<Self, FwSyncError> {
        let text = std::fs::read_to_string(path).map_err(|source| FwSyncError::Read { path: path.into(), source })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&path.display().to_string(), &text, base)
    }

    /// Parses config text; `file` names it in errors, `base` resolves a relative datastore.
    pub fn parse(file: &str, text: &str, base: &Path) -> Result<Self, FwSyncError> {
        let ctx = Ctx::new(file);
        let value: Value = serde_yaml::from_str(text).map_err(|e| ctx.err("", format!("invalid YAML: {e}")))?;
        let top = ctx.strict_map(&value, "", &["firewalls", "datastore", "reconcileInterval", "metricsListen", "quarantine"])?;
        let mut firewalls = Vec::new();
        let mut names = BTreeSet::new();
        for (i, f) in ctx.seq(ctx.required(top, "", "firewalls")?, "firewalls")?.iter().enumerate() {
            let path = index("firewalls", i);
            let fw = parse_firewall(&ctx, f, &path, base)?;
            if !names.insert(fw.name.clone()) {
                return Err(ctx.err(&child(&path, "name"), format!("firewall {:?} is defined twice", fw.name)));
            }
            firewalls.push(fw);
        }
        let datastore = PathBuf::from(ctx.str(ctx.required(top, "", "datastore")?, "datastore")?);
        let kubernetes = (datastore.as_os_str() == "kubernetes").then(KubeSource::default);
        let datastore = if kubernetes.is_some() {
            PathBuf::new()
        } else if datastore.is_relative() {
            base.join(datastore)
        } else {
            datastore
        };
        let reconcile_interval = match get(top, "reconcileInterval") {
            Some(v) => {
                let s = ctx.str(v, "reconcileInterval")?;
                parse_duration(s).ok_or_else(|| ctx.err("reconcileInterval", format!("{s:?} is not a duration like 500ms, 30s, 5m or 1h")))?
            }
            None => DEFAULT_RECONCILE,
        };
        if reconcile_interval.is_zero() {
            return Err(ctx.err("reconcileInterval", "must be more than 0"));
        }
        let metrics_listen = match get(top, "metricsListen") {
            Some(v) => {
                let a = ctx.str(v, "metricsListen")?;
                a.parse::<std::net::SocketAddr>().map_err(|_| ctx.err("metricsListen", format!("{a:?} is not an address like 127.0.0.1:9464")))?;
                Some(a.to_string())
            }
            None => None,
        };
        let quarantine = get(top, "quarantine").map(|v| crate::quarantine::QuarantineConfig::parse(&ctx, v, &firewalls)).transpose()?;
        Ok(DaemonConfig { firewalls, datastore, kubernetes, reconcile_interval, metrics_listen, quarantine })
    }

    /// Checks that every target names a configured firewall of a fitting type and that no two
    /// groups write one object (they would fight over its members).
    pub fn check_groups(&self, groups: &[AddressGroup]) -> Result<(), FwSyncError> {
        let mut seen: BTreeMap<&Target, &AddressGroup> = BTreeMap::new();
        let quarantine = self.quarantine_targets();
        let mut group_names: BTreeMap<&str, &AddressGroup> = BTreeMap::new();
        for g in groups {
            let ctx = Ctx::new(format!("{} (AddressGroup {})", g.origin, g.name));
            if let Some(first) = group_names.insert(&g.name, g) {
                return Err(ctx.err("metadata.name", format!("AddressGroup {:?} is also defined in {}", g.name, first.origin)));
            }
            for (i, t) in g.targets.iter().enumerate() {
                let path = index("spec.targets", i);
                let Some(fw) = self.firewalls.iter().find(|f| f.name == t.firewall) else {
                    let known: Vec<_> = self.firewalls.iter().map(|f| f.name.as_str()).collect();
                    return Err(ctx.err(&child(&path, "firewall"), format!("no firewall {:?} in the daemon config (configured: {})", t.firewall, known.join(", "))));
                };
                if !fw.kind.accepts(t.object.kind) {
                    return Err(ctx.err(&child(&path, "kind"), format!("firewall {} is of type {}, which has no {} objects", fw.name, fw.kind.type_name(), t.object.kind)));
                }
                if quarantine.contains(t) {
                    return Err(ctx.err(&path, format!("{} on firewall {} is the quarantine group (the config's quarantine.name)", t.object, t.firewall)));
                }
                if let Some(other) = seen.insert(t, g) {
                    return Err(ctx.err(&path, format!("{} on firewall {} is also a target of AddressGroup {} ({})", t.object, t.firewall, other.name, other.origin)));
                }
            }
        }
        Ok(())
    }
}

impl DaemonConfig {
    /// The quarantine object on every firewall (empty without a `quarantine` block).
    pub fn quarantine_targets(&self) -> Vec<Target> {
        self.quarantine.as_ref().map(|q| q.targets(&self.firewalls)).unwrap_or_default()
    }
}

fn parse_firewall(ctx: &Ctx, v: &Value, path: &str, base: &Path) -> Result<FirewallConfig, FwSyncError> {
    let m = ctx.strict_map(v, path, &["name", "type", "netns", "nftables", "panos", "fortios", "tls", "batchWindow"])?;
    let name = ctx.str(ctx.required(m, path, "name")?, &child(path, "name"))?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(ctx.err(&child(path, "name"), format!("invalid firewall name {name:?}: letters, digits, '-' and '_' only")));
    }
    let type_path = child(path, "type");
    let type_name = ctx.str(ctx.required(m, path, "type")?, &type_path)?;
    // A settings block of another type is a mistake worth stopping for.
    for block in ["nftables", "panos", "fortios"] {
        if block != type_name && get(m, block).is_some() {
            return Err(ctx.err(&child(path, block), format!("only for firewalls of type {block}")));
        }
    }
    let http = matches!(type_name, "panos" | "fortios");
    if !http && get(m, "tls").is_some() {
        return Err(ctx.err(&child(path, "tls"), "only for firewalls reached over HTTPS (panos, fortios)"));
    }
    let tls = match get(m, "tls") {
        Some(t) => parse_tls(ctx, t, &child(path, "tls"), base)?,
        None => TlsOptions::default(),
    };
    if http && get(m, "netns").is_some() {
        return Err(ctx.err(&child(path, "netns"), "only for ipset and nftables firewalls"));
    }
    let kind = match type_name {
        "ipset" => FirewallKind::Ipset,
        "nftables" => {
            let npath = child(path, "nftables");
            let (mut family, mut table) = ("inet".to_string(), "bhfw".to_string());
            if let Some(n) = get(m, "nftables") {
                let n = ctx.strict_map(n, &npath, &["family", "table"])?;
                if let Some(f) = get(n, "family") {
                    family = ctx.str(f, &child(&npath, "family"))?.to_string();
                }
                if let Some(t) = get(n, "table") {
                    table = ctx.str(t, &child(&npath, "table"))?.to_string();
                }
            }
            // ipv4_addr sets exist in these families only.
            if !matches!(family.as_str(), "ip" | "inet" | "bridge" | "netdev") {
                return Err(ctx.err(&child(&npath, "family"), format!("{family:?} cannot hold IPv4 sets (expected ip, inet, bridge or netdev)")));
            }
            if table.is_empty() || !table.starts_with(|c: char| c.is_ascii_alphabetic()) || !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(ctx.err(&child(&npath, "table"), format!("invalid table name {table:?}")));
            }
            FirewallKind::Nftables { family, table }
        }
        "panos" => FirewallKind::Panos(parse_panos(ctx, ctx.required(m, path, "panos")?, &child(path, "panos"), base)?),
        "fortios" => FirewallKind::Fortios(parse_fortios(ctx, ctx.required(m, path, "fortios")?, &child(path, "fortios"), base)?),
        other => return Err(ctx.err(&type_path, format!("unknown type {other:?} (expected ipset, nftables, panos or fortios)"))),
    };
    let netns = get(m, "netns").map(|v| ctx.str(v, &child(path, "netns")).map(String::from)).transpose()?;
    let batch_window = match get(m, "batchWindow") {
        Some(v) => {
            let p = child(path, "batchWindow");
            let s = ctx.str(v, &p)?;
            let d = parse_duration(s).ok_or_else(|| ctx.err(&p, format!("{s:?} is not a duration like 0ms, 200ms or 1s")))?;
            if d > Duration::from_secs(60) {
                return Err(ctx.err(&p, format!("{s} is over the 60 s maximum")));
            }
            d
        }
        None => match kind {
            FirewallKind::Ipset | FirewallKind::Nftables { .. } => Duration::ZERO,
            FirewallKind::Panos(_) => Duration::from_millis(200),
            FirewallKind::Fortios(_) => Duration::from_millis(100),
        },
    };
    Ok(FirewallConfig { name: name.to_string(), kind, netns, tls, batch_window })
}

fn resolve(base: &Path, p: &str) -> PathBuf {
    let p = PathBuf::from(p);
    if p.is_relative() { base.join(p) } else { p }
}

fn parse_tls(ctx: &Ctx, v: &Value, path: &str, base: &Path) -> Result<TlsOptions, FwSyncError> {
    let m = ctx.strict_map(v, path, &["caFile", "insecureSkipVerify"])?;
    let ca_file = get(m, "caFile").map(|v| ctx.str(v, &child(path, "caFile")).map(|s| resolve(base, s))).transpose()?;
    if let Some(ca) = &ca_file
        && let Err(e) = std::fs::metadata(ca)
    {
        return Err(ctx.err(&child(path, "caFile"), format!("cannot read {}: {e}", ca.display())));
    }
    let insecure_skip_verify = match get(m, "insecureSkipVerify") {
        Some(v) => v.as_bool().ok_or_else(|| ctx.err(&child(path, "insecureSkipVerify"), "expected true or false"))?,
        None => false,
    };
    if insecure_skip_verify && ca_file.is_some() {
        return Err(ctx.err(path, "caFile and insecureSkipVerify exclude each other"));
    }
    Ok(TlsOptions { ca_file, insecure_skip_verify })
}

/// `{file: PATH}` or `{env: VAR}`, loaded now so a missing credential stops the start.
fn parse_secret(ctx: &Ctx, m: &serde_yaml::Mapping, parent: &str, key: &str, base: &Path) -> Result<Secret, FwSyncError> {
    let path = child(parent, key);
    let s = ctx.strict_map(ctx.required(m, parent, key)?, &path, &["file", "env"])?;
    let source = match (get(s, "file"), get(s, "env")) {
        (Some(f), None) => SecretSource::File(resolve(base, ctx.str(f, &child(&path, "file"))?)),
        (None, Some(e)) => SecretSource::Env(ctx.str(e, &child(&path, "env"))?.to_string()),
        _ => return Err(ctx.err(&path, "exactly one of file or env (credentials are never written in the config itself)")),
    };
    Secret::load(source).map_err(|e| ctx.err(&path, e))
}

fn parse_url(ctx: &Ctx, m: &serde_yaml::Mapping, parent: &str) -> Result<String, FwSyncError> {
    let path = child(parent, "url");
    let url = ctx.str(ctx.required(m, parent, "url")?, &path)?.trim_end_matches('/');
    let Some(rest) = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")) else {
        return Err(ctx.err(&path, format!("{url:?} must start with https:// (or http:// for a lab)")));
    };
    if rest.is_empty() || rest.contains('/') || rest.contains('?') || rest.contains('@') {
        return Err(ctx.err(&path, format!("{url:?} must be scheme://host[:port] only")));
    }
    Ok(url.to_string())
}

fn parse_panos(ctx: &Ctx, v: &Value, path: &str, base: &Path) -> Result<PanosConfig, FwSyncError> {
    let m = ctx.strict_map(v, path, &["url", "apiKey", "vsys", "deviceGroup", "target", "registeredIpTimeout"])?;
    let url = parse_url(ctx, m, path)?;
    let api_key = parse_secret(ctx, m, path, "apiKey", base)?;
    let name = |key: &str| -> Result<Option<String>, FwSyncError> {
        get(m, key).map(|v| ctx.str(v, &child(path, key)).map(String::from)).transpose()
    };
    let location = match (name("vsys")?, name("deviceGroup")?) {
        (Some(v), None) => PanosLocation::Vsys(v),
        (None, Some(d)) => PanosLocation::DeviceGroup(d),
        (None, None) => PanosLocation::Vsys("vsys1".into()),
        (Some(_), Some(_)) => return Err(ctx.err(path, "vsys (a firewall) and deviceGroup (Panorama) exclude each other")),
    };
    for (key, v) in [("vsys", name("vsys")?), ("deviceGroup", name("deviceGroup")?), ("target", name("target")?)] {
        if let Some(v) = v
            && (v.is_empty() || v.len() > 31 || v.contains(['\'', '"', '<', '>', '&', '[', ']']))
        {
            return Err(ctx.err(&child(path, key), format!("invalid name {v:?}")));
        }
    }
    let registered_ip_timeout = match get(m, "registeredIpTimeout") {
        None => 0,
        Some(v) => {
            let p = child(path, "registeredIpTimeout");
            let n = v.as_u64().ok_or_else(|| ctx.err(&p, "expected seconds as a whole number"))?;
            // PAN-OS accepts at most 30 days.
            if n > 2_592_000 {
                return Err(ctx.err(&p, format!("{n} is over the PAN-OS maximum of 2592000 seconds")));
            }
            n as u32
        }
    };
    Ok(PanosConfig { url, api_key, location, target: name("target")?, registered_ip_timeout })
}

fn parse_fortios(ctx: &Ctx, v: &Value, path: &str, base: &Path) -> Result<FortiosConfig, FwSyncError> {
    let m = ctx.strict_map(v, path, &["url", "token", "vdom"])?;
    let url = parse_url(ctx, m, path)?;
    let token = parse_secret(ctx, m, path, "token", base)?;
    let vdom = match get(m, "vdom") {
        Some(v) => ctx.str(v, &child(path, "vdom"))?.to_string(),
        None => "root".into(),
    };
    if vdom.is_empty() || vdom.len() > 31 || !vdom.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(ctx.err(&child(path, "vdom"), format!("invalid vdom name {vdom:?}")));
    }
    Ok(FortiosConfig { url, token, vdom })
}

/// `500ms`, `30s`, `5m`, `1h`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::group::ObjectRef;

    const GOOD: &str = "firewalls:\n- {name: edge, type: ipset}\n- {name: core, type: nftables, nftables: {family: inet, table: lab}}\ndatastore: ds\nreconcileInterval: 5s\n";

    fn err(text: &str) -> String {
        match DaemonConfig::parse("fw-sync.yaml", text, Path::new("/etc/fw")) {
            Ok(c) => panic!("expected an error for:\n{text}\ngot {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_and_resolves_the_datastore() {
        let c = DaemonConfig::parse("fw-sync.yaml", GOOD, Path::new("/etc/fw")).expect("GOOD parses");
        assert_eq!(c.datastore, PathBuf::from("/etc/fw/ds"));
        assert_eq!(c.reconcile_interval, Duration::from_secs(5));
        assert_eq!(c.firewalls[1].kind, FirewallKind::Nftables { family: "inet".into(), table: "lab".into() });
        assert_eq!(c.firewalls[1].batch_window, Duration::ZERO);
        let c = DaemonConfig::parse("f", &GOOD.replace("type: ipset}", "type: ipset, batchWindow: 250ms}"), Path::new("/")).expect("batchWindow parses");
        assert_eq!(c.firewalls[0].batch_window, Duration::from_millis(250));
        let e = err(&GOOD.replace("type: ipset}", "type: ipset, batchWindow: 2h}"));
        assert!(e.contains("firewalls[0].batchWindow: 2h is over the 60 s maximum"), "{e}");
    }

    #[test]
    fn errors_name_file_and_field() {
        let e = err(&GOOD.replace("type: ipset", "type: ipsec"));
        assert_eq!(e, "fw-sync.yaml: firewalls[0].type: unknown type \"ipsec\" (expected ipset, nftables, panos or fortios) (nothing applied)");
        let e = err(&GOOD.replace("5s", "5 parsecs"));
        assert!(e.starts_with("fw-sync.yaml: reconcileInterval: \"5 parsecs\" is not a duration"), "{e}");
        let e = err(&GOOD.replace("family: inet", "family: ip6"));
        assert!(e.starts_with("fw-sync.yaml: firewalls[1].nftables.family:"), "{e}");
        let e = err(&GOOD.replace("name: core", "name: edge"));
        assert!(e.starts_with("fw-sync.yaml: firewalls[1].name: firewall \"edge\" is defined twice"), "{e}");
        let e = err(&GOOD.replace("datastore:", "datastor:"));
        assert!(e.starts_with("fw-sync.yaml: datastor: unknown field"), "{e}");
        let e = err(&GOOD.replace("type: ipset", "type: panos"));
        assert!(e.contains("firewalls[0].panos: required"), "{e}");
        let e = err(&GOOD.replace("{name: edge, type: ipset}", "{name: edge, type: ipset, tls: {caFile: x}}"));
        assert!(e.contains("firewalls[0].tls: only for firewalls reached over HTTPS"), "{e}");
    }

    #[test]
    fn http_firewalls_with_credentials_and_tls() {
        let dir = std::env::temp_dir().join(format!("fwsync-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(dir.join("pa.key"), "K3Y\n").expect("key file");
        std::fs::write(dir.join("ca.pem"), "").expect("ca file");
        let text = "firewalls:\n- name: pa\n  type: panos\n  panos: {url: 'https://pa.lab:8443', apiKey: {file: pa.key}, deviceGroup: dg1}\n  tls: {caFile: ca.pem}\n- name: fg\n  type: fortios\n  fortios: {url: 'https://fg.lab', token: {file: pa.key}, vdom: dmz}\ndatastore: ds\n";
        let c = DaemonConfig::parse("f", text, &dir).expect("parses");
        let FirewallKind::Panos(pa) = &c.firewalls[0].kind else { panic!("panos expected: {c:?}") };
        assert_eq!(pa.api_key.expose(), "K3Y");
        assert_eq!(pa.location, PanosLocation::DeviceGroup("dg1".into()));
        assert_eq!(c.firewalls[0].tls.ca_file, Some(dir.join("ca.pem")));
        assert!(!format!("{c:?}").contains("K3Y"), "the key leaks into Debug: {c:?}");
        let FirewallKind::Fortios(fg) = &c.firewalls[1].kind else { panic!("fortios expected: {c:?}") };
        assert_eq!(fg.vdom, "dmz");
        assert_eq!((c.firewalls[0].batch_window, c.firewalls[1].batch_window), (Duration::from_millis(200), Duration::from_millis(100)));
        let bad = |from: &str, to: &str| match DaemonConfig::parse("f", &text.replace(from, to), &dir) {
            Ok(c) => panic!("expected an error after replacing {from:?} with {to:?}: {c:?}"),
            Err(e) => e.to_string(),
        };
        let e = bad("{file: pa.key}, deviceGroup", "{file: missing.key}, deviceGroup");
        assert!(e.starts_with("f: firewalls[0].panos.apiKey: cannot read"), "{e}");
        let e = bad("{file: pa.key}, deviceGroup", "{env: FWSYNC_SURELY_UNSET}, deviceGroup");
        assert_eq!(e, "f: firewalls[0].panos.apiKey: environment variable FWSYNC_SURELY_UNSET is not set (nothing applied)");
        let e = bad("{file: pa.key}, deviceGroup", "K3Y, deviceGroup");
        assert!(e.contains("firewalls[0].panos.apiKey: expected a mapping"), "{e}");
        let e = bad("caFile: ca.pem", "caFile: nope.pem");
        assert!(e.starts_with("f: firewalls[0].tls.caFile: cannot read"), "{e}");
        let e = bad("'https://fg.lab'", "'fg.lab'");
        assert!(e.contains("firewalls[1].fortios.url"), "{e}");
        let e = bad("vdom: dmz", "vdom: 'a b'");
        assert!(e.contains("firewalls[1].fortios.vdom: invalid vdom name"), "{e}");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn groups_must_fit_the_firewalls() {
        let c = DaemonConfig::parse("f", GOOD, Path::new("/")).expect("GOOD parses");
        let group = |name: &str, fw: &str, kind| AddressGroup {
            name: name.into(),
            pod_selector: policy_compiler::tiered::Selector::All,
            namespace_selector: None,
            targets: vec![Target { firewall: fw.into(), object: ObjectRef { kind, name: "web".into() } }],
            origin: format!("g.yaml: document {name}"),
        };
        c.check_groups(&[group("a", "edge", TargetKind::Ipset), group("b", "core", TargetKind::NftablesSet)]).expect("fitting groups pass");
        let e = c.check_groups(&[group("a", "dmz", TargetKind::Ipset)]).expect_err("unknown firewall").to_string();
        assert!(e.contains("(AddressGroup a): spec.targets[0].firewall: no firewall \"dmz\""), "{e}");
        let e = c.check_groups(&[group("a", "edge", TargetKind::NftablesSet)]).expect_err("wrong kind").to_string();
        assert!(e.contains("spec.targets[0].kind: firewall edge is of type ipset"), "{e}");
        let e = c.check_groups(&[group("a", "edge", TargetKind::Ipset), group("b", "edge", TargetKind::Ipset)]).expect_err("shared object").to_string();
        assert!(e.contains("also a target of AddressGroup a"), "{e}");
    }
}
