//! `bulkhead.io/v1alpha1` `DetectorPolicy`: which pods the detector watches, in which mode,
//! with which actions per detection, and what isolated pods may still reach.
//!
//! ```yaml
//! apiVersion: bulkhead.io/v1alpha1
//! kind: DetectorPolicy
//! metadata: {name: clients, namespace: shop}
//! spec:
//!   selector: app == 'client'          # Calico selector over pod labels
//!   namespaceSelector: all()           # optional; default: the policy's own namespace
//!   mode: protect                      # learn | monitor | protect
//!   profileLabels: [app]               # optional; default: all labels but per-replica ones
//!   syscalls: true                     # count syscalls (default false)
//!   syscallModel: {window: 64, maxPhrases: 16}   # stream syscalls to the sequence model
//!                                      # (optional; also unseenSyscalls, maxSyscalls)
//!   allowedExecs: [/bin/true]          # besides the profile's
//!   actions:                           # per detection; default below
//!     exec: [kill, isolate]            # kill | isolate | pause | terminate | alert
//!     newPeer: [isolate]               # isolate | pause | terminate | alert
//!     newPort: [isolate]
//!     portScan: [isolate]
//!     newInbound: [alert]              # inbound from a client never seen (default alert)
//!     syscallAnomaly: [alert]          # isolate | pause | terminate | alert (default alert)
//!     fileWrite: [isolate]             # kill | isolate | pause | terminate | alert
//!     sensitiveRead: [kill, isolate]   # (default kill, isolate: the file is never read)
//!     dirList: [alert]                 # listing a directory never listed (default alert)
//!   files:                             # file-system baseline (optional; on when present)
//!     sensitivePaths: [/etc/shadow, /root/]   # prefixes; default: files::DEFAULT_SENSITIVE
//!   portScan: {distinctPorts: 10, distinctPeers: 16, windowMs: 10000}
//!   isolationAllow:                    # what these pods still reach when isolated (e.g. DNS)
//!     - {address: 10.96.0.10, port: 53, protocol: UDP}   # address optional: any
//! ```
//!
//! Pods are found in the datastore; the detector needs each pod's cgroup v2 folder, from the
//! annotation `bulkhead.io/cgroup` (written by the lab, later by the CNI plugin). Every
//! policy is validated before anything applies; an error names file, document and field.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use policy_compiler::{model::Model, selector_parser::parse_selector, tiered::Selector};
use serde::Deserialize;

use super::{Actions, FileActions, Mode, NetActions, SequenceConfig, WorkloadOptions, WorkloadSpec, files::FileConfig, network::ScanConfig, profile::Protocol};

pub const API_VERSION: &str = "bulkhead.io/v1alpha1";
pub const KIND: &str = "DetectorPolicy";
/// Pod annotation naming the pod's cgroup v2 folder.
pub const CGROUP_ANNOTATION: &str = "bulkhead.io/cgroup";

/// A validated DetectorPolicy.
#[derive(Clone, Debug)]
pub struct DetectorPolicy {
    pub namespace: String,
    pub name: String,
    /// `file document N`, for errors and status.
    pub origin: String,
    pub selector: Selector,
    /// `None` = the policy's own namespace.
    pub namespace_selector: Option<Selector>,
    pub mode: Mode,
    pub actions: Actions,
    pub scan: ScanConfig,
    pub profile_labels: Option<Vec<String>>,
    pub syscalls: bool,
    /// The syscall-sequence model, when the policy asks for one.
    pub sequences: Option<SequenceConfig>,
    pub allowed_execs: Vec<String>,
    /// (address of either family, or 0.0.0.0 for any; port; IP protocol).
    pub isolation_allow: Vec<(IpAddr, u16, u8)>,
    /// The file-system baseline, when the policy asks for one.
    pub files: Option<FileConfig>,
}

impl DetectorPolicy {
    /// `namespace/name`.
    pub fn id(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// What the detector documents of a datastore hold.
#[derive(Clone, Debug, Default)]
pub struct DetectorInput {
    pub policies: Vec<DetectorPolicy>,
    /// Pod (namespace, name) -> cgroup folder, from [`CGROUP_ANNOTATION`].
    pub cgroups: BTreeMap<(String, String), PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)] // apiVersion and kind are checked on the raw document
struct Doc {
    api_version: String,
    kind: String,
    metadata: Meta,
    spec: Spec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Meta {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    #[allow(dead_code)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Spec {
    selector: String,
    #[serde(default)]
    namespace_selector: Option<String>,
    mode: Mode,
    #[serde(default)]
    actions: Option<ActionsSpec>,
    #[serde(default)]
    port_scan: Option<ScanConfig>,
    #[serde(default)]
    isolation_allow: Vec<AllowSpec>,
    #[serde(default)]
    profile_labels: Option<Vec<String>>,
    #[serde(default)]
    syscalls: bool,
    #[serde(default)]
    syscall_model: Option<SequenceConfig>,
    #[serde(default)]
    allowed_execs: Vec<String>,
    #[serde(default)]
    files: Option<FilesSpec>,
}

#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct FilesSpec {
    #[serde(default)]
    sensitive_paths: Option<Vec<String>>,
}

#[derive(Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ActionsSpec {
    exec: Option<Vec<String>>,
    new_peer: Option<Vec<String>>,
    new_port: Option<Vec<String>>,
    port_scan: Option<Vec<String>>,
    new_inbound: Option<Vec<String>>,
    syscall_anomaly: Option<Vec<String>>,
    file_write: Option<Vec<String>>,
    sensitive_read: Option<Vec<String>>,
    dir_list: Option<Vec<String>>,
}

#[derive(Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
struct AllowSpec {
    #[serde(default)]
    address: Option<std::net::IpAddr>,
    port: u16,
    protocol: Protocol,
}

/// The OpenAPI v3 schema of a DetectorPolicy's `spec`, derived from the types that read it
/// (for its CustomResourceDefinition).
pub fn spec_schema() -> serde_json::Value {
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    let schema = generator.root_schema_for::<Spec>();
    let mut v = serde_json::to_value(schema).unwrap_or_default();
    bulkhead_kube::schema::structural(&mut v);
    v
}

fn exec_actions(list: &[String], field: &str) -> Result<Actions, (String, String)> {
    let mut a = Actions::default();
    for (i, s) in list.iter().enumerate() {
        match s.as_str() {
            "kill" => a.kill = true,
            "isolate" => a.isolate = true,
            "pause" => a.pause = true,
            "terminate" => a.terminate = true,
            "alert" => {}
            other => {
                return Err((format!("{field}[{i}]"), format!("unknown action {other:?} (expected kill, isolate, pause, terminate or alert)")));
            }
        }
    }
    Ok(a)
}

fn net_actions(list: &[String], field: &str) -> Result<NetActions, (String, String)> {
    let mut a = NetActions::default();
    for (i, s) in list.iter().enumerate() {
        match s.as_str() {
            "isolate" => a.isolate = true,
            "pause" => a.pause = true,
            "terminate" => a.terminate = true,
            "alert" => {}
            other => {
                return Err((format!("{field}[{i}]"), format!("unknown action {other:?} (expected isolate, pause, terminate or alert)")));
            }
        }
    }
    Ok(a)
}

/// Reads the DetectorPolicies and pod cgroup annotations of one file. Other documents are
/// left to their readers.
pub fn parse_documents(file: &str, text: &str, into: &mut DetectorInput) -> Result<(), String> {
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let n = i + 1;
        let value = serde_yaml::Value::deserialize(de).map_err(|e| format!("{file} document {n}: {e}"))?;
        let s = |k: &str| value.get(k).and_then(serde_yaml::Value::as_str);
        match (s("apiVersion"), s("kind")) {
            (Some(API_VERSION), Some(KIND)) => into.policies.push(parse_policy(file, n, &value)?),
            (Some("v1"), Some("Pod")) => {
                let meta = value.get("metadata");
                let get = |k: &str| meta.and_then(|m| m.get(k)).and_then(serde_yaml::Value::as_str);
                let cg = meta.and_then(|m| m.get("annotations")).and_then(|a| a.get(CGROUP_ANNOTATION)).and_then(serde_yaml::Value::as_str);
                if let (Some(name), Some(cg)) = (get("name"), cg) {
                    let ns = get("namespace").unwrap_or("default");
                    into.cgroups.insert((ns.to_string(), name.to_string()), PathBuf::from(cg));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn parse_policy(file: &str, n: usize, value: &serde_yaml::Value) -> Result<DetectorPolicy, String> {
    let name = value.get("metadata").and_then(|m| m.get("name")).and_then(serde_yaml::Value::as_str).unwrap_or("?");
    let ns = value.get("metadata").and_then(|m| m.get("namespace")).and_then(serde_yaml::Value::as_str).unwrap_or("default");
    let origin = format!("{file} document {n} ({KIND} {ns}/{name})");
    let err = |field: &str, msg: &str| format!("{origin}: {field}: {msg}");
    // Deserialising from text (not from the Value) lets serde_yaml name the field path.
    let text = serde_yaml::to_string(value).map_err(|e| err("(document)", &e.to_string()))?;
    let doc: Doc = serde_yaml::from_str(&text).map_err(|e| {
        let msg = e.to_string();
        match msg.split_once(": ") {
            Some((path, rest)) if !path.contains(' ') => err(path, rest),
            _ => err("(document)", &msg),
        }
    })?;
    let spec = doc.spec;
    let selector = parse_selector(&spec.selector).map_err(|e| err("spec.selector", &e.to_string()))?;
    let namespace_selector = spec
        .namespace_selector
        .as_deref()
        .map(|s| parse_selector(s).map_err(|e| err("spec.namespaceSelector", &e.to_string())))
        .transpose()?;
    let a = spec.actions.unwrap_or_default();
    let mut actions = match &a.exec {
        Some(l) => exec_actions(l, "spec.actions.exec").map_err(|(f, m)| err(&f, &m))?,
        None => Actions { kill: true, isolate: true, ..Default::default() },
    };
    // Network findings isolate by default. New inbound clients and syscall findings only
    // alert: a new client is often a new replica of a known caller, and the sequence model is
    // statistical, so acting on them is the operator's choice.
    let isolate = NetActions { isolate: true, ..Default::default() };
    let net = |l: &Option<Vec<String>>, field: &str, default: NetActions| -> Result<NetActions, String> {
        match l {
            Some(l) => net_actions(l, field).map_err(|(f, m)| err(&f, &m)),
            None => Ok(default),
        }
    };
    actions.new_peer = net(&a.new_peer, "spec.actions.newPeer", isolate)?;
    actions.new_port = net(&a.new_port, "spec.actions.newPort", isolate)?;
    actions.port_scan = net(&a.port_scan, "spec.actions.portScan", isolate)?;
    actions.new_inbound = net(&a.new_inbound, "spec.actions.newInbound", NetActions::default())?;
    actions.syscall_anomaly = net(&a.syscall_anomaly, "spec.actions.syscallAnomaly", NetActions::default())?;
    // File findings: an unseen write isolates; a sensitive read kills before the file is read
    // and isolates; a new listing only alerts (reconnaissance, rarely harm by itself).
    let file = |l: &Option<Vec<String>>, field: &str, default: FileActions| -> Result<FileActions, String> {
        match l {
            Some(l) => exec_actions(l, field)
                .map(|a| FileActions { kill: a.kill, isolate: a.isolate, pause: a.pause, terminate: a.terminate })
                .map_err(|(f, m)| err(&f, &m)),
            None => Ok(default),
        }
    };
    actions.file_write = file(&a.file_write, "spec.actions.fileWrite", FileActions { isolate: true, ..Default::default() })?;
    actions.sensitive_read = file(&a.sensitive_read, "spec.actions.sensitiveRead", FileActions { kill: true, isolate: true, ..Default::default() })?;
    actions.dir_list = file(&a.dir_list, "spec.actions.dirList", FileActions::default())?;
    let files = match &spec.files {
        None => None,
        Some(f) => {
            let mut cfg = FileConfig::default();
            if let Some(list) = &f.sensitive_paths {
                for (i, p) in list.iter().enumerate() {
                    super::files::check_path(p).map_err(|m| err(&format!("spec.files.sensitivePaths[{i}]"), &format!("{p:?}: {m}")))?;
                }
                cfg.sensitive_paths = list.clone();
            }
            Some(cfg)
        }
    };
    if let Some(cfg) = &spec.syscall_model {
        cfg.validate().map_err(|(f, m)| err(&format!("spec.syscallModel.{f}"), &m))?;
    }
    let scan = spec.port_scan.unwrap_or_default();
    if scan.distinct_ports == 0 || scan.distinct_peers == 0 || scan.window_ms == 0 {
        return Err(err("spec.portScan", "distinctPorts, distinctPeers and windowMs must be above 0"));
    }
    for (i, e) in spec.allowed_execs.iter().enumerate() {
        if !e.starts_with('/') || e.len() >= bulkhead_common::detect::EXEC_PATH_MAX {
            return Err(err(&format!("spec.allowedExecs[{i}]"), &format!("{e:?} is not an absolute path shorter than 256 bytes")));
        }
    }
    if let Some(l) = &spec.profile_labels {
        if l.is_empty() {
            return Err(err("spec.profileLabels", "empty: leave it out to key profiles by all labels"));
        }
    }
    let isolation_allow = spec
        .isolation_allow
        .iter()
        .map(|a| {
            // ICMP towards an IPv6 address is ICMPv6.
            let proto = match (a.protocol, a.address) {
                (Protocol::Tcp, _) => 6,
                (Protocol::Udp, _) => 17,
                (Protocol::Icmp, Some(IpAddr::V6(_))) => 58,
                (Protocol::Icmp, _) => 1,
                (Protocol::Sctp, _) => 132,
            };
            (a.address.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED)), a.port, proto)
        })
        // An ICMP entry without an address covers ICMPv6 too.
        .flat_map(|e| {
            let v6 = (e.2 == 1 && e.0 == IpAddr::V4(Ipv4Addr::UNSPECIFIED)).then_some((e.0, e.1, 58));
            std::iter::once(e).chain(v6)
        })
        .collect();
    Ok(DetectorPolicy {
        namespace: doc.metadata.namespace.unwrap_or_else(|| "default".into()),
        name: doc.metadata.name,
        origin,
        selector,
        namespace_selector,
        mode: spec.mode,
        actions,
        scan,
        profile_labels: spec.profile_labels,
        syscalls: spec.syscalls,
        sequences: spec.syscall_model,
        allowed_execs: spec.allowed_execs,
        isolation_allow,
        files,
    })
}

/// What the policies ask for: workloads (one per matching pod with a cgroup), each with its
/// policy's isolation allow-list.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub workloads: Vec<(WorkloadSpec, WorkloadOptions)>,
    /// Pods a policy selects that have no cgroup annotation (not monitored; logged).
    pub without_cgroup: Vec<String>,
}

/// Matches the policies against the model's pods. A pod selected by two policies is an
/// error (which mode would apply is ambiguous): nothing applies.
pub fn plan(input: &DetectorInput, model: &Model) -> Result<Plan, String> {
    let mut out = Plan::default();
    let mut owner: BTreeMap<(String, String), &DetectorPolicy> = BTreeMap::new();
    for p in &input.policies {
        for pod in model.pods.values() {
            let ns_ok = match &p.namespace_selector {
                None => pod.namespace == p.namespace,
                Some(sel) => model.namespaces.get(&pod.namespace).is_some_and(|n| sel.matches(&n.labels)),
            };
            if !ns_ok || !p.selector.matches(&pod.labels) {
                continue;
            }
            let key = (pod.namespace.clone(), pod.name.clone());
            if let Some(first) = owner.get(&key) {
                return Err(format!(
                    "pod {}/{} is selected by {KIND} {} ({}) and {} ({}): one policy per pod",
                    pod.namespace,
                    pod.name,
                    first.id(),
                    first.origin,
                    p.id(),
                    p.origin
                ));
            }
            owner.insert(key.clone(), p);
            let Some(cg) = input.cgroups.get(&key) else {
                out.without_cgroup.push(format!("{}/{}", pod.namespace, pod.name));
                continue;
            };
            let (profile, labels) = super::profile::key_of(&pod.namespace, &pod.labels, p.profile_labels.as_deref());
            out.workloads.push((
                WorkloadSpec {
                    name: format!("{}/{}", pod.namespace, pod.name),
                    cgroup: cg.clone(),
                    interface: pod.interface.clone(),
                    mode: p.mode,
                    actions: p.actions,
                    syscalls: p.syscalls,
                    allowed_execs: p.allowed_execs.clone(),
                },
                WorkloadOptions {
                    profile: Some(profile),
                    profile_labels: labels,
                    scan: p.scan,
                    policy: Some(p.id()),
                    sequences: p.sequences,
                    isolation_allow: p.isolation_allow.clone(),
                    files: p.files.clone(),
                },
            ));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    const GOOD: &str = "apiVersion: bulkhead.io/v1alpha1
kind: DetectorPolicy
metadata: {name: clients, namespace: d}
spec:
  selector: app == 'client'
  mode: protect
  actions: {exec: [kill], newPeer: [isolate], newPort: [alert], portScan: [pause]}
  portScan: {distinctPorts: 5}
  isolationAllow: [{address: 10.0.0.53, port: 53, protocol: UDP}, {port: 123, protocol: UDP}]
";

    #[test]
    fn parses_and_defaults() {
        let mut input = DetectorInput::default();
        parse_documents("p.yaml", GOOD, &mut input).expect("parses");
        let p = &input.policies[0];
        assert_eq!(p.id(), "d/clients");
        assert_eq!(p.mode, Mode::Protect);
        assert!(p.actions.kill && !p.actions.isolate);
        assert!(p.actions.new_peer.isolate && !p.actions.new_port.isolate && p.actions.port_scan.pause);
        assert_eq!(p.scan.distinct_ports, 5);
        assert_eq!(p.scan.window_ms, ScanConfig::default().window_ms);
        assert_eq!(p.isolation_allow, vec![(IpAddr::from([10, 0, 0, 53]), 53, 17), (Ipv4Addr::UNSPECIFIED.into(), 123, 17)]);
        // IPv6 addresses are taken as they are; ICMP towards one is ICMPv6, and an ICMP entry
        // without an address covers both.
        let mut input = DetectorInput::default();
        let text = GOOD.replace("10.0.0.53", "'fd00::53'").replace("{port: 123, protocol: UDP}", "{port: 0, protocol: ICMP}, {address: 'fd00::1', port: 0, protocol: ICMP}");
        parse_documents("p.yaml", &text, &mut input).expect("IPv6 isolation allow-list entries parse");
        let v6: IpAddr = "fd00::53".parse().expect("literal");
        let any = IpAddr::from(Ipv4Addr::UNSPECIFIED);
        assert_eq!(input.policies[0].isolation_allow, vec![(v6, 53, 17), (any, 0, 1), (any, 0, 58), ("fd00::1".parse().expect("literal"), 0, 58)]);
        assert_eq!(p.sequences, None, "no sequence model unless asked");
        assert_eq!(p.actions.syscall_anomaly, NetActions::default(), "syscall findings alert by default");
        let mut input = DetectorInput::default();
        let text = GOOD.replace("  mode: protect", "  mode: protect\n  syscallModel: {maxPhrases: 8}");
        parse_documents("p.yaml", &text, &mut input).expect("parses");
        let cfg = input.policies[0].sequences.expect("sequence model");
        assert_eq!(cfg, SequenceConfig { max_phrases: 8, ..SequenceConfig::default() });
        // File baselines: off unless asked; defaults for paths and actions.
        assert_eq!(p.files, None);
        assert!(p.actions.file_write.isolate && !p.actions.file_write.kill);
        assert!(p.actions.sensitive_read.kill && p.actions.sensitive_read.isolate);
        assert_eq!(p.actions.dir_list, FileActions::default());
        let mut input = DetectorInput::default();
        let text = GOOD.replace("  mode: protect", "  mode: protect\n  files: {}").replace("portScan: [pause]", "portScan: [pause], fileWrite: [kill, pause]");
        parse_documents("p.yaml", &text, &mut input).expect("parses");
        let p = &input.policies[0];
        assert_eq!(p.files, Some(FileConfig::default()));
        assert_eq!(p.actions.file_write, FileActions { kill: true, pause: true, ..Default::default() });
        let mut input = DetectorInput::default();
        parse_documents("p.yaml", &GOOD.replace("  mode: protect", "  mode: protect\n  files: {sensitivePaths: [/srv/keys/]}"), &mut input).expect("parses");
        assert_eq!(input.policies[0].files.as_ref().map(|f| f.sensitive_paths.clone()), Some(vec!["/srv/keys/".to_string()]));
    }

    fn bad(text: &str) -> String {
        let mut input = DetectorInput::default();
        parse_documents("p.yaml", text, &mut input).expect_err("must be rejected")
    }

    #[test]
    fn errors_name_file_document_and_field() {
        let e = bad(&GOOD.replace("mode: protect", "mode: protekt"));
        assert!(e.contains("p.yaml document 1") && e.contains("spec.mode"), "{e}");
        let e = bad(&GOOD.replace("exec: [kill]", "exec: [kil]"));
        assert!(e.contains("spec.actions.exec[0]") && e.contains("\"kil\""), "{e}");
        let e = bad(&GOOD.replace("app == 'client'", "app == "));
        assert!(e.contains("spec.selector"), "{e}");
        let e = bad(&GOOD.replace("10.0.0.53", "10.0.0.530"));
        assert!(e.contains("spec.isolationAllow"), "{e}");
        let e = bad(&GOOD.replace("10.0.0.53", "'fd00::5g'"));
        assert!(e.contains("spec.isolationAllow[0].address") && e.contains("IP address"), "{e}");
        let e = bad(&GOOD.replace("  mode: protect", "  mode: protect\n  modes: learn"));
        assert!(e.contains("spec") && e.contains("modes"), "{e}");
        let e = bad(&GOOD.replace("  mode: protect", "  mode: protect\n  syscallModel: {window: 80}"));
        assert!(e.contains("spec.syscallModel.window") && e.contains("80"), "{e}");
        let e = bad(&GOOD.replace("  mode: protect", "  mode: protect\n  syscallModel: {windows: 8}"));
        assert!(e.contains("syscallModel") && e.contains("windows"), "{e}");
        let e = bad(&GOOD.replace("portScan: [pause]", "portScan: [pause], syscallAnomaly: [kill]"));
        assert!(e.contains("spec.actions.syscallAnomaly[0]"), "{e}");
        let e = bad(&GOOD.replace("portScan: [pause]", "portScan: [pause], fileWrite: [quarantine]"));
        assert!(e.contains("spec.actions.fileWrite[0]") && e.contains("quarantine"), "{e}");
        let e = bad(&GOOD.replace("  mode: protect", "  mode: protect\n  files: {sensitivePaths: [/etc/shadow, etc/passwd]}"));
        assert!(e.contains("spec.files.sensitivePaths[1]") && e.contains("etc/passwd"), "{e}");
        let e = bad(&GOOD.replace("  mode: protect", "  mode: protect\n  files: {sensitivePaths: [/etc/../shadow]}"));
        assert!(e.contains("spec.files.sensitivePaths[0]") && e.contains("normal form"), "{e}");
        let e = bad(&GOOD.replace("  mode: protect", "  mode: protect\n  files: {sensitive: []}"));
        assert!(e.contains("files") && e.contains("sensitive"), "{e}");
        let e = bad(&format!("---\nkind: Other\n---\n{}", GOOD.replace("distinctPorts: 5", "distinctPorts: 0")));
        assert!(e.contains("document 2") && e.contains("spec.portScan"), "{e}");
    }

    const EXAMPLE: &str = include_str!("../../../deploy/examples/detector/web-protect.yaml");

    #[test]
    fn example_parses() {
        let mut input = DetectorInput::default();
        parse_documents("web-protect.yaml", EXAMPLE, &mut input).expect("the shipped example parses");
        let p = &input.policies[0];
        assert_eq!((p.mode, p.sequences.map(|c| c.max_phrases)), (Mode::Protect, Some(16)));
        assert!(p.actions.kill && p.actions.isolate && p.actions.port_scan.isolate && p.actions.syscall_anomaly == NetActions::default());
        assert!(p.files.as_ref().is_some_and(|f| f.sensitive_paths.len() == 5) && p.actions.sensitive_read.kill);
    }

    /// The fields the parser accepts in `spec` or in the object `spec.<field>`, from serde's
    /// unknown-field error ("expected one of `a`, `b`").
    fn accepted(field: Option<&str>) -> BTreeSet<String> {
        let mut v: serde_yaml::Value = serde_yaml::from_str(GOOD).unwrap();
        let spec = v.get_mut("spec").and_then(serde_yaml::Value::as_mapping_mut).unwrap();
        let unknown: serde_yaml::Mapping = [("zzUnknown".into(), 1.into())].into_iter().collect();
        match field {
            None => drop(spec.insert("zzUnknown".into(), 1.into())),
            Some("isolationAllow") => drop(spec.insert("isolationAllow".into(), serde_yaml::Value::Sequence(vec![unknown.into()]))),
            Some(f) => drop(spec.insert(f.into(), unknown.into())),
        }
        let e = bad(&serde_yaml::to_string(&v).unwrap());
        let list = e.split("expected one of ").nth(1).or_else(|| e.split("expected ").nth(1)).unwrap_or_else(|| panic!("{e}"));
        list.split(['`', ',']).map(str::trim).filter(|s| !s.is_empty() && !s.contains(' ')).map(String::from).collect()
    }

    #[test]
    fn crd_schema_matches_the_parser() {
        // The CRD deploy/ ships (the agent's crds module fails when it is stale).
        let shipped = include_str!("../../../deploy/kubernetes/crds/bulkhead-agent.yaml");
        let crd = serde_yaml::Deserializer::from_str(shipped)
            .map(|d| serde_yaml::Value::deserialize(d).expect("the shipped CRDs parse"))
            .find(|c| c["spec"]["names"]["kind"] == "DetectorPolicy")
            .expect("DetectorPolicy CRD in deploy/kubernetes/crds/bulkhead-agent.yaml");
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let keys = |v: &serde_yaml::Value| -> BTreeSet<String> {
            v["properties"].as_mapping().unwrap().keys().map(|k| k.as_str().unwrap().to_string()).collect()
        };
        assert_eq!(keys(spec), accepted(None), "spec");
        for field in ["actions", "syscallModel", "portScan"] {
            assert_eq!(keys(&spec["properties"][field]), accepted(Some(field)), "spec.{field}");
        }
        assert_eq!(keys(&spec["properties"]["isolationAllow"]["items"]), accepted(Some("isolationAllow")), "spec.isolationAllow[]");
        let d = SequenceConfig::default();
        let m = &spec["properties"]["syscallModel"]["properties"];
        assert_eq!((m["window"]["default"].as_u64(), m["maxPhrases"]["default"].as_u64()), (Some(d.window as u64), Some(d.max_phrases as u64)), "defaults");
        assert_eq!(m["maxSyscalls"]["default"].as_u64(), Some(d.max_syscalls as u64));
    }
}
