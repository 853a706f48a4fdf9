//! The service map: workloads as nodes grouped by namespace (addresses outside the cluster in
//! an `outside` group), flows as edges coloured by verdict, each edge naming the policy, rule
//! and tier that decided it. Built from the tail of an instance's flow log, drawn as a static
//! SVG ([`render_svg`], `bulkhead flows graph -o svg`) or by a self-contained page
//! ([`PAGE_HTML`]) that the agent's metrics endpoint and `bulkhead ui` serve with the model at
//! [`API_PATH`].
//!
//! One flow is usually seen twice: at the source pod's egress and at the destination's
//! ingress. Records are first grouped per flow (protocol and both address:port pairs), so a
//! flow is one edge: denied if any observation point denied or revoked it (the source's egress
//! may have let it out before the destination refused it), dropped if the datapath dropped it,
//! allowed otherwise. Edges of the same pair and port that had different verdicts over time
//! (allowed before a policy, denied after) stay separate; the one seen last is `current`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::path::Path;

use serde::{Deserialize, Serialize};

mod http;
mod layout;

pub use http::{ServeError, handler, respond, serve};
pub use layout::{EdgePath, GroupBox, Layout, NodeBox, colour, layout, render_svg};

/// Where `bulkhead ui` listens unless told otherwise: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9965";
/// How many of the flow log's last records a map is built from.
pub const MAX_RECORDS: usize = 20_000;
/// Addresses outside the cluster drawn as nodes of their own; the rest (the least busy) share
/// one node, so a map of an Internet-facing service stays readable.
pub const MAX_EXTERNAL: usize = 40;
/// The group of addresses outside the cluster.
pub const OUTSIDE: &str = "outside";
/// The node standing for external addresses beyond [`MAX_EXTERNAL`].
pub const OTHER_ADDRESSES: &str = "other addresses";
/// The model as JSON (with its layout), for the page.
pub const API_PATH: &str = "/api/servicemap";
/// The static picture.
pub const SVG_PATH: &str = "/servicemap.svg";
/// The page: one HTML file with its script and style inline (works offline), drawing the map
/// from [`API_PATH`].
pub const PAGE_HTML: &str = include_str!("servicemap/page.html");

/// A flow's verdict as the map shows it.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Allowed,
    Denied,
    /// Dropped by the datapath for another reason than policy (spoofed source, isolation...).
    Dropped,
}

impl Verdict {
    /// The word used in JSON and in the page's `data-verdict`.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allowed => "allowed",
            Verdict::Denied => "denied",
            Verdict::Dropped => "dropped",
        }
    }
}

/// One verdict as the flow log names it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Judgement {
    /// `allow` or `deny`.
    #[serde(default)]
    pub action: String,
    pub tier: Option<String>,
    /// `None` for an end of tier or "no tier applies".
    pub policy: Option<String>,
    pub rule: Option<u32>,
    #[serde(default)]
    pub end_of_tier: bool,
}

impl Judgement {
    /// "POLICY rule N", "end of tier T" or "default (no tier applies)", as `bulkhead flows`
    /// prints it.
    pub fn describe(&self) -> String {
        match (&self.policy, &self.tier) {
            (Some(p), _) => format!("{p} rule {}", self.rule.map_or_else(|| "?".into(), |r| r.to_string())),
            (None, Some(t)) if self.end_of_tier => format!("end of tier {t}"),
            _ => "default (no tier applies)".into(),
        }
    }
}

/// The verdict one observation point gave a flow.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Decision {
    /// `egress` (at the source's interface) or `ingress` (at the destination's).
    pub direction: String,
    #[serde(flatten)]
    pub judgement: Judgement,
    /// What the staged policies would have decided.
    pub staged: Option<Judgement>,
}

/// A workload, or an address outside the cluster.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Node {
    /// `namespace/name` for a workload, the address otherwise (or [`OTHER_ADDRESSES`]).
    pub id: String,
    /// The namespace, or [`OUTSIDE`].
    pub group: String,
    pub name: String,
    pub external: bool,
    pub labels: BTreeMap<String, String>,
    pub addresses: Vec<String>,
}

/// Flows from one node to another on one port with one verdict.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Edge {
    pub from: String,
    pub to: String,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, `sctp` or the protocol number.
    pub protocol: String,
    /// The destination port (none for ICMP).
    pub port: Option<u16>,
    pub verdict: Verdict,
    /// Distinct flows (a flow seen at both ends counts once).
    pub flows: u64,
    /// Bytes both ways of the flows that ended.
    pub bytes: u64,
    /// The verdict of the last flow between these nodes on this port is this one.
    pub current: bool,
    /// The deciding verdict in words: for a denied flow the point that denied it, for an
    /// allowed one the destination's admission (else the source's).
    pub decided_by: String,
    pub tier: Option<String>,
    pub policy: Option<String>,
    pub rule: Option<u32>,
    pub staged: Option<Judgement>,
    pub drop_reason: Option<String>,
    /// Every observation point's verdict on the last flow, egress first.
    pub decisions: Vec<Decision>,
    #[serde(skip)]
    last_seen: usize,
}

/// The map: nodes ordered by group ([`OUTSIDE`] first, then namespaces) and name; edges by
/// source, destination, protocol, port and verdict.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct ServiceMap {
    /// Flow records read.
    pub records: usize,
    pub nodes: Vec<Node>,
    pub edges: Vec<Edge>,
}

#[derive(Deserialize)]
struct WorkloadRec {
    namespace: String,
    name: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct TotalsRec {
    #[serde(default)]
    bytes_sent: u64,
    #[serde(default)]
    bytes_received: u64,
}

/// The fields of a flow record the map needs (others are ignored).
#[derive(Deserialize)]
struct Rec {
    kind: String,
    #[serde(default)]
    direction: String,
    #[serde(default)]
    src: String,
    #[serde(default)]
    dst: String,
    #[serde(default)]
    protocol: u8,
    #[serde(default)]
    src_port: u16,
    #[serde(default)]
    dst_port: u16,
    verdict: Option<Judgement>,
    staged: Option<Judgement>,
    drop_reason: Option<String>,
    src_workload: Option<WorkloadRec>,
    dst_workload: Option<WorkloadRec>,
    totals: Option<TotalsRec>,
}

/// A flow's end: a workload (namespace, name) or an address outside the cluster.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    Workload(String, String),
    External(String),
}

#[derive(Default)]
struct FlowAgg {
    ends: Option<(End, End)>,
    denied: Option<Decision>,
    dropped: Option<String>,
    egress: Option<Decision>,
    ingress: Option<Decision>,
    bytes: u64,
    last: usize,
}

fn protocol_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}

/// Workloads seen, by (namespace, name): their labels and addresses.
type Workloads = BTreeMap<(String, String), (BTreeMap<String, String>, BTreeSet<String>)>;

fn end_of(w: Option<WorkloadRec>, addr: &str, workloads: &mut Workloads) -> End {
    match w {
        Some(w) => {
            let entry = workloads.entry((w.namespace.clone(), w.name.clone())).or_default();
            // Labels as of the latest record: a relabelled pod shows its labels of now.
            entry.0 = w.labels;
            entry.1.insert(addr.to_string());
            End::Workload(w.namespace, w.name)
        }
        None => End::External(addr.to_string()),
    }
}

impl ServiceMap {
    /// The map of flow records given as JSON lines, oldest first; lines that are not flow
    /// records are skipped.
    pub fn from_lines<'a>(lines: impl IntoIterator<Item = &'a str>) -> ServiceMap {
        let mut workloads = Workloads::new();
        // Per flow: protocol, source address and port, destination address and port.
        let mut flows: BTreeMap<(u8, String, u16, String, u16), FlowAgg> = BTreeMap::new();
        let mut records = 0;
        for (seq, line) in lines.into_iter().enumerate() {
            let Ok(r) = serde_json::from_str::<Rec>(line) else { continue };
            if r.src.is_empty() || r.dst.is_empty() || !matches!(r.kind.as_str(), "new-allowed" | "denied" | "revoked" | "dropped" | "end") {
                continue;
            }
            records += 1;
            let src = end_of(r.src_workload, &r.src, &mut workloads);
            let dst = end_of(r.dst_workload, &r.dst, &mut workloads);
            let f = flows.entry((r.protocol, r.src.clone(), r.src_port, r.dst.clone(), r.dst_port)).or_default();
            f.ends = Some((src, dst));
            f.last = seq;
            let decision = r.verdict.map(|judgement| Decision { direction: r.direction.clone(), judgement, staged: r.staged });
            match r.kind.as_str() {
                "denied" | "revoked" => f.denied = decision.clone(),
                "dropped" => f.dropped = Some(r.drop_reason.unwrap_or_else(|| "unknown".into())),
                "end" => {
                    let t = r.totals.map_or(0, |t| t.bytes_sent + t.bytes_received);
                    // Both ends report the same flow's end.
                    f.bytes = f.bytes.max(t);
                    continue;
                }
                _ => {}
            }
            if r.kind != "dropped" {
                match r.direction.as_str() {
                    "egress" => f.egress = decision,
                    _ => f.ingress = decision,
                }
            }
        }

        // The busiest external addresses get nodes of their own.
        let mut by_external: BTreeMap<&str, u64> = BTreeMap::new();
        for f in flows.values() {
            if let Some((a, b)) = &f.ends {
                for e in [a, b] {
                    if let End::External(addr) = e {
                        *by_external.entry(addr).or_default() += 1;
                    }
                }
            }
        }
        let mut busiest: Vec<(&str, u64)> = by_external.into_iter().collect();
        busiest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let own_node: BTreeSet<String> = busiest.iter().take(MAX_EXTERNAL).map(|(a, _)| a.to_string()).collect();
        let mut external_nodes: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut node_id = |e: &End| match e {
            End::Workload(ns, name) => format!("{ns}/{name}"),
            End::External(addr) => {
                let id = if own_node.contains(addr) { addr.clone() } else { OTHER_ADDRESSES.to_string() };
                external_nodes.entry(id.clone()).or_default().insert(addr.clone());
                id
            }
        };

        let mut edges: BTreeMap<(String, String, String, Option<u16>, Verdict), Edge> = BTreeMap::new();
        for ((proto, _, _, _, dst_port), f) in flows {
            let Some((src, dst)) = &f.ends else { continue };
            let (from, to) = (node_id(src), node_id(dst));
            let verdict = if f.denied.is_some() {
                Verdict::Denied
            } else if f.dropped.is_some() {
                Verdict::Dropped
            } else {
                Verdict::Allowed
            };
            let port = (!matches!(proto, 1 | 58)).then_some(dst_port);
            let e = edges.entry((from.clone(), to.clone(), protocol_name(proto), port, verdict)).or_insert_with(|| Edge {
                from,
                to,
                protocol: protocol_name(proto),
                port,
                verdict,
                flows: 0,
                bytes: 0,
                current: false,
                decided_by: String::new(),
                tier: None,
                policy: None,
                rule: None,
                staged: None,
                drop_reason: None,
                decisions: Vec::new(),
                last_seen: 0,
            });
            e.flows += 1;
            e.bytes += f.bytes;
            if f.last >= e.last_seen {
                e.last_seen = f.last;
                e.describe(&f);
            }
        }
        let mut edges: Vec<Edge> = edges.into_values().collect();
        let mut latest: BTreeMap<(&str, &str, &str, Option<u16>), usize> = BTreeMap::new();
        for e in &edges {
            let l = latest.entry((e.from.as_str(), e.to.as_str(), e.protocol.as_str(), e.port)).or_default();
            *l = (*l).max(e.last_seen);
        }
        let current: Vec<bool> = edges.iter().map(|e| latest[&(e.from.as_str(), e.to.as_str(), e.protocol.as_str(), e.port)] == e.last_seen).collect();
        for (e, c) in edges.iter_mut().zip(current) {
            e.current = c;
        }

        let mut nodes: Vec<Node> = workloads
            .into_iter()
            .map(|((ns, name), (labels, addrs))| Node { id: format!("{ns}/{name}"), group: ns, name, external: false, labels, addresses: addrs.into_iter().collect() })
            .collect();
        nodes.extend(external_nodes.into_iter().map(|(id, addrs)| Node {
            name: id.clone(),
            id,
            group: OUTSIDE.into(),
            external: true,
            labels: BTreeMap::new(),
            addresses: addrs.into_iter().collect(),
        }));
        // Traffic from outside enters on the left.
        nodes.sort_by(|a, b| (!a.external, &a.group, &a.name).cmp(&(!b.external, &b.group, &b.name)));
        ServiceMap { records, nodes, edges }
    }

    /// The map of the last `max_records` records of the flow log at `path` (continuing into
    /// the rotated `<path>.1` when the current file holds fewer).
    pub fn from_flow_log(path: &Path, max_records: usize) -> std::io::Result<ServiceMap> {
        let mut lines = tail_lines(path, max_records)?;
        if lines.len() < max_records {
            let mut rotated = path.as_os_str().to_owned();
            rotated.push(".1");
            if let Ok(mut older) = tail_lines(Path::new(&rotated), max_records - lines.len()) {
                older.append(&mut lines);
                lines = older;
            }
        }
        Ok(ServiceMap::from_lines(lines.iter().map(String::as_str)))
    }

    /// "3 workloads, 1 outside address, 5 edges (2 denied)", counting current edges, plus the
    /// earlier verdicts kept beside them.
    pub fn summary(&self) -> String {
        let workloads = self.nodes.iter().filter(|n| !n.external).count();
        let outside = self.nodes.iter().filter(|n| n.external).count();
        let current: Vec<&Edge> = self.edges.iter().filter(|e| e.current).collect();
        let denied = current.iter().filter(|e| e.verdict == Verdict::Denied).count();
        let earlier = self.edges.len() - current.len();
        let plural = |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let mut s = format!(
            "{}, {}, {} ({denied} denied)",
            plural(workloads, "workload", "workloads"),
            plural(outside, "outside address", "outside addresses"),
            plural(current.len(), "edge", "edges")
        );
        if earlier > 0 {
            s.push_str(&format!(", {}", plural(earlier, "earlier verdict", "earlier verdicts")));
        }
        s
    }
}

impl Edge {
    fn describe(&mut self, f: &FlowAgg) {
        self.decisions = f.egress.iter().chain(f.ingress.iter()).cloned().collect();
        self.drop_reason = f.dropped.clone();
        let deciding = match self.verdict {
            Verdict::Denied => f.denied.as_ref(),
            Verdict::Dropped => None,
            Verdict::Allowed => f.ingress.as_ref().or(f.egress.as_ref()),
        };
        self.decided_by = match (deciding, &f.dropped) {
            (Some(d), _) => format!("{} at {}: {}", d.judgement.action, d.direction, d.judgement.describe()),
            (None, Some(reason)) => format!("dropped: {reason}"),
            (None, None) => "unknown (the flow's first records are older than the map)".into(),
        };
        self.tier = deciding.and_then(|d| d.judgement.tier.clone());
        self.policy = deciding.and_then(|d| d.judgement.policy.clone());
        self.rule = deciding.and_then(|d| d.judgement.rule);
        self.staged = deciding.and_then(|d| d.staged.clone());
    }
}

/// The last `max` complete lines of a file, read backwards in chunks (the flow log grows to
/// 64 MiB; a map needs its end only).
fn tail_lines(path: &Path, max: usize) -> std::io::Result<Vec<String>> {
    const CHUNK: u64 = 1 << 20;
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    let mut pos = len;
    let mut buf: Vec<u8> = Vec::new();
    let mut newlines = 0;
    while pos > 0 && newlines <= max {
        let start = pos.saturating_sub(CHUNK);
        let mut chunk = vec![0; (pos - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut chunk)?;
        newlines += chunk.iter().filter(|&&b| b == b'\n').count();
        chunk.extend_from_slice(&buf);
        buf = chunk;
        pos = start;
    }
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.split('\n').collect();
    // The last piece is empty or a line still being written; the first is cut unless the
    // read reached the file's start.
    lines.pop();
    if pos > 0 && !lines.is_empty() {
        lines.remove(0);
    }
    let skip = lines.len().saturating_sub(max);
    Ok(lines[skip..].iter().map(|l| l.to_string()).collect())
}

#[cfg(test)]
mod tests;
