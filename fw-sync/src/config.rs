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
//! datastore: ./datastore        # relative to this file
//! reconcileInterval: 30s
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_yaml::Value;

use crate::error::FwSyncError;
use crate::group::{AddressGroup, Target, TargetKind};
use crate::yaml::{Ctx, child, get, index};

/// What the daemon runs against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DaemonConfig {
    pub firewalls: Vec<FirewallConfig>,
    /// Folder of Kubernetes-style YAML (pods, namespaces, AddressGroups).
    pub datastore: PathBuf,
    /// How often the firewalls' real state is read and drift repaired.
    pub reconcile_interval: Duration,
}

/// One firewall.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FirewallConfig {
    pub name: String,
    pub kind: FirewallKind,
    /// Run the backend's commands inside this network namespace (`ip netns exec`): a firewall
    /// that is a namespace on this host, as in the lab.
    pub netns: Option<String>,
}

/// Which API a firewall is driven through.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FirewallKind {
    /// Linux ipset (hash:ip sets named `bhfw-<name>`).
    Ipset,
    /// nftables named sets `bhfw-<name>` in `family table` (created if missing, never deleted).
    Nftables { family: String, table: String },
}

impl FirewallKind {
    /// Whether targets of `kind` can live on this firewall.
    pub fn accepts(&self, kind: TargetKind) -> bool {
        matches!((self, kind), (FirewallKind::Ipset, TargetKind::Ipset) | (FirewallKind::Nftables { .. }, TargetKind::NftablesSet))
    }

    fn type_name(&self) -> &'static str {
        match self {
            FirewallKind::Ipset => "ipset",
            FirewallKind::Nftables { .. } => "nftables",
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
        let top = ctx.strict_map(&value, "", &["firewalls", "datastore", "reconcileInterval"])?;
        let mut firewalls = Vec::new();
        let mut names = BTreeSet::new();
        for (i, f) in ctx.seq(ctx.required(top, "", "firewalls")?, "firewalls")?.iter().enumerate() {
            let path = index("firewalls", i);
            let fw = parse_firewall(&ctx, f, &path)?;
            if !names.insert(fw.name.clone()) {
                return Err(ctx.err(&child(&path, "name"), format!("firewall {:?} is defined twice", fw.name)));
            }
            firewalls.push(fw);
        }
        let datastore = PathBuf::from(ctx.str(ctx.required(top, "", "datastore")?, "datastore")?);
        let datastore = if datastore.is_relative() { base.join(datastore) } else { datastore };
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
        Ok(DaemonConfig { firewalls, datastore, reconcile_interval })
    }

    /// Checks that every target names a configured firewall of a fitting type and that no two
    /// groups write one object (they would fight over its members).
    pub fn check_groups(&self, groups: &[AddressGroup]) -> Result<(), FwSyncError> {
        let mut seen: BTreeMap<&Target, &AddressGroup> = BTreeMap::new();
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
                if let Some(other) = seen.insert(t, g) {
                    return Err(ctx.err(&path, format!("{} on firewall {} is also a target of AddressGroup {} ({})", t.object, t.firewall, other.name, other.origin)));
                }
            }
        }
        Ok(())
    }
}

fn parse_firewall(ctx: &Ctx, v: &Value, path: &str) -> Result<FirewallConfig, FwSyncError> {
    let m = ctx.strict_map(v, path, &["name", "type", "netns", "nftables"])?;
    let name = ctx.str(ctx.required(m, path, "name")?, &child(path, "name"))?;
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        return Err(ctx.err(&child(path, "name"), format!("invalid firewall name {name:?}: letters, digits, '-' and '_' only")));
    }
    let type_path = child(path, "type");
    let kind = match ctx.str(ctx.required(m, path, "type")?, &type_path)? {
        "ipset" => {
            if get(m, "nftables").is_some() {
                return Err(ctx.err(&child(path, "nftables"), "only for firewalls of type nftables"));
            }
            FirewallKind::Ipset
        }
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
        t @ ("panos" | "fortios") => {
            return Err(ctx.err(&type_path, format!("type {t:?} is not supported by this version yet (supported: ipset, nftables)")));
        }
        other => return Err(ctx.err(&type_path, format!("unknown type {other:?} (expected ipset or nftables)"))),
    };
    let netns = get(m, "netns").map(|v| ctx.str(v, &child(path, "netns")).map(String::from)).transpose()?;
    Ok(FirewallConfig { name: name.to_string(), kind, netns })
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
    }

    #[test]
    fn errors_name_file_and_field() {
        let e = err(&GOOD.replace("type: ipset", "type: ipsec"));
        assert_eq!(e, "fw-sync.yaml: firewalls[0].type: unknown type \"ipsec\" (expected ipset or nftables) (nothing applied)");
        let e = err(&GOOD.replace("5s", "5 parsecs"));
        assert!(e.starts_with("fw-sync.yaml: reconcileInterval: \"5 parsecs\" is not a duration"), "{e}");
        let e = err(&GOOD.replace("family: inet", "family: ip6"));
        assert!(e.starts_with("fw-sync.yaml: firewalls[1].nftables.family:"), "{e}");
        let e = err(&GOOD.replace("name: core", "name: edge"));
        assert!(e.starts_with("fw-sync.yaml: firewalls[1].name: firewall \"edge\" is defined twice"), "{e}");
        let e = err(&GOOD.replace("datastore:", "datastor:"));
        assert!(e.starts_with("fw-sync.yaml: datastor: unknown field"), "{e}");
        let e = err(&GOOD.replace("type: ipset", "type: panos"));
        assert!(e.contains("firewalls[0].type: type \"panos\" is not supported by this version yet"), "{e}");
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
