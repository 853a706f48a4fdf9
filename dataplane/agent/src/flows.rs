//! Flow events from the kernel's ring buffer: named after the policies that decided them and
//! appended as JSON lines to the instance's flow log (Log rules, denied and revoked flows,
//! rate-limited drops with their reason, and every new flow when enabled).

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    io::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use bulkhead_common::{FlowEventV5, NO_POLICY, PolicyValueV2, action, direction, flow_kind, verdict_flags};
use policy_compiler::compile::Compiled;
use serde::Serialize;

/// The flow log's file name in an instance's state folder (rotated to `<name>.1`).
pub const FLOW_LOG_FILE: &str = "flows.jsonl";

/// One verdict as users read it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct VerdictRecord {
    pub action: &'static str,
    /// Deciding tier, when a tier decided.
    pub tier: Option<String>,
    /// Deciding policy, or `None` for a tier default or "no tier applies".
    pub policy: Option<String>,
    pub rule: Option<u16>,
    pub end_of_tier: bool,
    /// A Log rule passed on the way.
    pub log_policy: Option<String>,
    pub log_rule: Option<u16>,
}

/// The pod behind an address, as of the last sync.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct WorkloadRef {
    pub namespace: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

/// Pods by address (both families), from the last sync's model.
pub type PodsByAddress = HashMap<IpAddr, Arc<WorkloadRef>>;

/// The address -> pod table of `model`.
pub fn pods_by_address(model: &policy_compiler::Model) -> PodsByAddress {
    let mut out = HashMap::new();
    for (r, pod) in &model.pods {
        let owner = Arc::new(WorkloadRef { namespace: r.namespace.clone(), name: r.name.clone(), labels: pod.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect() });
        for ip in pod.addrs() {
            out.insert(ip, owner.clone());
        }
    }
    out
}

/// A flow event as written to the flow log.
#[derive(Clone, Debug, Serialize)]
pub struct FlowRecord {
    pub ts_ns: u64,
    pub kind: &'static str,
    pub direction: &'static str,
    pub interface_index: u32,
    pub src: String,
    pub dst: String,
    pub protocol: u8,
    pub src_port: u16,
    pub dst_port: u16,
    pub verdict: VerdictRecord,
    pub staged: Option<VerdictRecord>,
    /// For `dropped`: why (the datapath counter's name, e.g. `drop_spoofed_source_fail_closed`).
    pub drop_reason: Option<&'static str>,
    /// The endpoint's and the remote address's identities (0 = not known at the drop).
    pub local_identity: u32,
    pub peer_identity: u32,
    /// The pods behind the source and destination addresses (none for addresses outside
    /// the cluster).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_workload: Option<WorkloadRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_workload: Option<WorkloadRef>,
    /// For `end`: the flow's packets and bytes both ways and how long it lasted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub totals: Option<FlowTotals>,
}

/// A finished flow's traffic, as its source (`src` of the record) sent it and got back.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct FlowTotals {
    pub packets_sent: u64,
    pub bytes_sent: u64,
    pub packets_received: u64,
    pub bytes_received: u64,
    /// From the flow's first packet to its end (the last packet, or the closing one).
    pub duration_ms: u64,
}

fn name_policy(c: &Compiled, i: u32) -> Option<String> {
    (i != NO_POLICY).then(|| {
        c.policy_table.get(i as usize).map(|p| p.id.to_string()).unwrap_or_else(|| format!("policy #{i}"))
    })
}

/// Names a kernel verdict with the compiled tables.
pub fn verdict_record(c: &Compiled, v: &PolicyValueV2) -> VerdictRecord {
    let tier = c.tier_table.get(v.tier_index as usize).cloned();
    VerdictRecord {
        action: if v.action == action::ALLOW { "allow" } else { "deny" },
        tier: if v.policy_index == NO_POLICY && v.flags & verdict_flags::END_OF_TIER == 0 { None } else { tier },
        policy: name_policy(c, v.policy_index),
        rule: (v.policy_index != NO_POLICY).then_some(v.rule_index),
        end_of_tier: v.flags & verdict_flags::END_OF_TIER != 0,
        log_policy: if v.flags & verdict_flags::LOG != 0 { name_policy(c, v.log_policy_index) } else { None },
        log_rule: (v.flags & verdict_flags::LOG != 0).then_some(v.log_rule_index),
    }
}

/// Turns a raw event into a record, naming the pods behind its addresses from `pods`.
pub fn record(c: &Compiled, pods: &PodsByAddress, e: &FlowEventV5) -> FlowRecord {
    let pod = |a: Option<IpAddr>| a.and_then(|a| pods.get(&a).map(|w| (**w).clone()));
    FlowRecord {
        src_workload: pod(e.saddr()),
        dst_workload: pod(e.daddr()),
        ts_ns: e.ts_ns,
        kind: match e.kind {
            flow_kind::NEW_ALLOWED => "new-allowed",
            flow_kind::DENIED => "denied",
            flow_kind::REVOKED => "revoked",
            flow_kind::DROPPED => "dropped",
            flow_kind::END => "end",
            _ => "unknown",
        },
        direction: if e.direction == direction::INGRESS { "ingress" } else { "egress" },
        interface_index: e.ifindex,
        src: e.saddr().map_or_else(String::new, |a| a.to_string()),
        dst: e.daddr().map_or_else(String::new, |a| a.to_string()),
        protocol: e.protocol,
        src_port: u16::from_be_bytes(e.sport_be),
        dst_port: u16::from_be_bytes(e.dport_be),
        verdict: verdict_record(c, &e.verdict),
        staged: (e.has_staged != 0).then(|| verdict_record(c, &e.staged)),
        drop_reason: (e.kind == flow_kind::DROPPED)
            .then(|| bulkhead_common::counters::NAMES.get(usize::from(e.drop_reason)).copied().unwrap_or("unknown")),
        local_identity: e.local_identity,
        peer_identity: e.peer_identity,
        totals: (e.kind == flow_kind::END).then(|| FlowTotals {
            packets_sent: e.packets_orig,
            bytes_sent: e.bytes_orig,
            packets_received: e.packets_reply,
            bytes_received: e.bytes_reply,
            duration_ms: e.ts_ns.saturating_sub(e.start_ns) / 1_000_000,
        }),
    }
}

/// The flow log: a bounded in-memory tail plus a JSON-lines file.
pub struct FlowLog {
    path: PathBuf,
    recent: VecDeque<FlowRecord>,
    /// The last sync's model, and its address index built the first time a flow needs it
    /// (a sync with no flow after it pays nothing).
    model: Option<policy_compiler::Model>,
    pods: Option<PodsByAddress>,
}

/// Records kept in memory.
const RECENT: usize = 10_000;

/// Size at which the flow log file is rotated.
const MAX_LOG_BYTES: u64 = 64 << 20;

impl FlowLog {
    /// A log writing to `path` (its folder is created).
    pub fn new(path: &Path) -> Self {
        if let Some(d) = path.parent() {
            let _ = std::fs::create_dir_all(d);
        }
        FlowLog { path: path.to_path_buf(), recent: VecDeque::new(), model: None, pods: None }
    }

    /// Names flows after the pods of `model` from now on (each sync).
    pub fn set_model(&mut self, model: policy_compiler::Model) {
        self.model = Some(model);
        self.pods = None;
    }

    /// Where the JSON lines go.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Names and writes events already read from the ring.
    pub fn log(&mut self, c: &Compiled, events: &[FlowEventV5]) {
        if events.is_empty() {
            return;
        }
        let model = &self.model;
        let pods = self.pods.get_or_insert_with(|| model.as_ref().map(pods_by_address).unwrap_or_default());
        let out: Vec<FlowRecord> = events.iter().map(|e| record(c, pods, e)).collect();
        // Bounded on disk: past the limit the log moves to `<name>.1` (replacing the older one).
        if std::fs::metadata(&self.path).is_ok_and(|m| m.len() > MAX_LOG_BYTES) {
            let mut old = self.path.clone().into_os_string();
            old.push(".1");
            let _ = std::fs::rename(&self.path, old);
        }
        if let Ok(f) = std::fs::OpenOptions::new().create(true).append(true).open(&self.path) {
            // One write per batch, not per record: a flood of new flows is a flood of records.
            let mut f = std::io::BufWriter::with_capacity(1 << 16, f);
            for r in &out {
                if serde_json::to_writer(&mut f, r).is_ok() {
                    let _ = f.write_all(b"\n");
                }
            }
            let _ = f.flush();
        }
        for r in out {
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(r);
        }
    }

    /// The most recent records, oldest first.
    pub fn recent(&self) -> impl Iterator<Item = &FlowRecord> {
        self.recent.iter()
    }
}
