//! A local identity's verdicts: per context (direction, world), the ordered rules of its
//! applicable tiers evaluated over a partition of (protocol, port) space into cells, once per
//! distinct peer signature, and interned as verdict tables.

use std::collections::BTreeSet;
use std::rc::Rc;

use bulkhead_common::{NO_POLICY, PolicyValueV2, action, direction, ep_flags, proto, verdict_flags};

use crate::classes::{Tables, runs};
use crate::compile::{NO_TIER, Segs, VerdictTable};
use crate::fasthash::HashMap;
use crate::knp;
use crate::model::{NamedPort, Protocol, resolve_named_port};
use crate::reuse::CtxOut;
use crate::select::{PredSet, Universe};
use crate::tiered::{Action, PortItem, TRule, TierDefault, TieredPolicy};

/// Per rule of one direction: (local-side, remote-side) identity predicates.
pub(crate) type RulePreds = Vec<(Rc<PredSet>, Rc<PredSet>)>;

/// A policy of the compile with its indexes and selection.
pub(crate) struct Prep<'m> {
    pub policy: &'m TieredPolicy,
    /// KNP rule origins, for KNPs.
    pub knp: Option<&'m knp::Converted>,
    pub index: u32,
    pub staged: bool,
    /// Position of its tier in evaluation order.
    pub tier_pos: usize,
    /// Per direction (0 ingress, 1 egress): whether it has rules there.
    pub dirs: [bool; 2],
}

/// An applicable tier of one (local, direction).
#[derive(Clone, Copy, Debug)]
pub(crate) struct TierRef {
    pub tier_index: u16,
    pub default: TierDefault,
}

/// A rule in evaluation order for one (local, direction).
pub(crate) struct CRule<'a> {
    /// Index into the tier list of the (local, direction).
    pub tier: usize,
    pub policy_index: u32,
    pub rule_index: u16,
    pub rule: &'a TRule,
    pub remote: &'a PredSet,
}

fn is_port_protocol(p: u8) -> bool {
    matches!(p, proto::TCP | proto::UDP | proto::SCTP)
}

fn model_protocol(p: u8) -> Option<Protocol> {
    match p {
        proto::TCP => Some(Protocol::Tcp),
        proto::UDP => Some(Protocol::Udp),
        proto::SCTP => Some(Protocol::Sctp),
        _ => None,
    }
}

/// Port intervals of port items for protocol `p`, named ports resolved on `dst_ports`.
fn item_intervals(items: &[PortItem], p: u8, dst_ports: &[NamedPort]) -> Vec<(u16, u16)> {
    items
        .iter()
        .filter_map(|it| match it {
            PortItem::Range { start, end } => Some((*start, *end)),
            PortItem::Named(n) => {
                let port = resolve_named_port(dst_ports, n, model_protocol(p)?)?;
                Some((port, port))
            }
        })
        .collect()
}

/// The policy-port condition of a rule under protocol `p`: `None` if the rule cannot match
/// `p`; else (included intervals, `None` = every port; excluded intervals).
#[allow(clippy::type_complexity)]
fn rule_port_sets(rule: &TRule, p: u8, dst_ports: &[NamedPort]) -> Option<(Option<Vec<(u16, u16)>>, Vec<(u16, u16)>)> {
    if rule.protocol.is_some_and(|x| x != p) || rule.not_protocol == Some(p) {
        return None;
    }
    // Source ports cannot be seen by the datapath's lookup; such rules never match.
    if !rule.source.ports.is_empty() || !rule.source.not_ports.is_empty() {
        return None;
    }
    let d = &rule.destination;
    let port_rule = !d.ports.is_empty() || !d.not_ports.is_empty();
    let icmp_rule = rule.icmp.is_some() || rule.not_icmp.is_some();
    if (port_rule && !is_port_protocol(p)) || (icmp_rule && p != proto::ICMP && p != proto::ICMPV6) {
        return None;
    }
    let mut incl = None;
    if !d.ports.is_empty() {
        incl = Some(item_intervals(&d.ports, p, dst_ports));
    }
    if let Some(m) = &rule.icmp {
        incl = Some(vec![m.port_interval()]);
    }
    let mut excl = item_intervals(&d.not_ports, p, dst_ports);
    if let Some(m) = &rule.not_icmp {
        excl.push(m.port_interval());
    }
    Some((incl, excl))
}

fn in_intervals(v: &[(u16, u16)], port: u16) -> bool {
    v.iter().any(|&(s, e)| s <= port && port <= e)
}

struct Candidate<'a> {
    tier: usize,
    policy_index: u32,
    rule_index: u16,
    action: Action,
    incl: Option<Vec<(u16, u16)>>,
    excl: Vec<(u16, u16)>,
    _rule: &'a TRule,
}

/// The tier semantics over the candidate rules (already filtered to those whose identity
/// sides and protocol match) at one port.
fn decide(tiers: &[TierRef], cands: &[Candidate<'_>], port: u16) -> PolicyValueV2 {
    let mut log: Option<(u32, u16)> = None;
    let mut ci = 0;
    for (ti, t) in tiers.iter().enumerate() {
        let mut passed = false;
        while ci < cands.len() && cands[ci].tier < ti {
            ci += 1;
        }
        while ci < cands.len() && cands[ci].tier == ti {
            let c = &cands[ci];
            ci += 1;
            if c.incl.as_ref().is_some_and(|v| !in_intervals(v, port)) || in_intervals(&c.excl, port) {
                continue;
            }
            match c.action {
                Action::Allow | Action::Deny => {
                    let a = if c.action == Action::Allow { action::ALLOW } else { action::DENY };
                    return value(a, c.policy_index, c.rule_index, t.tier_index, 0, log);
                }
                Action::Pass => {
                    passed = true;
                    break;
                }
                Action::Log => {
                    log.get_or_insert((c.policy_index, c.rule_index));
                }
            }
        }
        if !passed && t.default == TierDefault::Deny {
            return value(action::DENY, NO_POLICY, 0, t.tier_index, verdict_flags::END_OF_TIER, log);
        }
    }
    value(action::ALLOW, NO_POLICY, 0, NO_TIER, 0, log)
}

fn value(a: u8, policy_index: u32, rule_index: u16, tier_index: u16, flags: u8, log: Option<(u32, u16)>) -> PolicyValueV2 {
    PolicyValueV2 {
        policy_index,
        log_policy_index: log.map_or(NO_POLICY, |l| l.0),
        rule_index,
        log_rule_index: log.map_or(0, |l| l.1),
        tier_index,
        action: a,
        flags: flags | if log.is_some() { verdict_flags::LOG } else { 0 },
    }
}

/// The verdict function over ports for protocol `p` (merged intervals covering 0..=65535)
/// given the rules whose remote side matches (`matched`: ascending rule indexes, so a peer
/// costs the rules it matches, not every rule of the endpoint).
fn port_function(tiers: &[TierRef], rules: &[CRule<'_>], matched: &[u16], p: u8, dst_ports: &[NamedPort]) -> Segs {
    let mut cands = Vec::new();
    let mut bounds: BTreeSet<u32> = BTreeSet::new();
    bounds.insert(0);
    for r in matched.iter().map(|&i| &rules[usize::from(i)]) {
        let Some((incl, excl)) = rule_port_sets(r.rule, p, dst_ports) else { continue };
        for &(s, e) in incl.iter().flatten().chain(&excl) {
            bounds.insert(u32::from(s));
            bounds.insert(u32::from(e) + 1);
        }
        cands.push(Candidate {
            tier: r.tier,
            policy_index: r.policy_index,
            rule_index: r.rule_index,
            action: r.rule.action,
            incl,
            excl,
            _rule: r.rule,
        });
    }
    bounds.insert(65536);
    let bounds: Vec<u32> = bounds.into_iter().collect();
    let mut segs: Segs = Vec::new();
    for w in bounds.windows(2) {
        let (s, e) = (w[0] as u16, (w[1] - 1) as u16);
        let v = decide(tiers, &cands, s);
        match segs.last_mut() {
            Some(last) if last.2 == v => last.1 = e,
            _ => segs.push((s, e, v)),
        }
    }
    segs
}

/// Protocols that need their own cells for these rules, and a representative of every other
/// protocol.
fn protocol_atoms(rules: &[CRule<'_>]) -> (Vec<u8>, u8) {
    let mut set: BTreeSet<u8> = BTreeSet::new();
    for r in rules {
        let t = r.rule;
        set.extend(t.protocol);
        set.extend(t.not_protocol);
        if !t.destination.ports.is_empty() || !t.destination.not_ports.is_empty() {
            set.extend([proto::TCP, proto::UDP, proto::SCTP]);
        }
        if t.icmp.is_some() || t.not_icmp.is_some() {
            set.insert(t.protocol.unwrap_or(proto::ICMP));
        }
    }
    // Protocol 0 is the key's wildcard; a packet of protocol 0 is judged by the any slices.
    set.remove(&proto::ANY);
    let other = (1..=255u8).rev().find(|p| !set.contains(p)).expect("fewer than 255 protocols named");
    (set.into_iter().collect(), other)
}

fn sig_fn(tiers: &[TierRef], rules: &[CRule<'_>], matched: &[u16], atoms: &(Vec<u8>, u8), dst_ports: &[NamedPort]) -> VerdictTable {
    let other = port_function(tiers, rules, matched, atoms.1, dst_ports);
    debug_assert_eq!(other.len(), 1, "other protocols have no port conditions");
    let other = other[0].2;
    let mut per_proto = Vec::new();
    for &p in &atoms.0 {
        let f = port_function(tiers, rules, matched, p, dst_ports);
        if !(f.len() == 1 && f[0].2 == other) {
            per_proto.push((p, f));
        }
    }
    VerdictTable { other, per_proto }
}

/// A local identity's verdicts: its endpoint flags and, per context (direction, world), the
/// any-peer table and the peers judged otherwise. `sel`: the prepared policies selecting it,
/// in evaluation order, whose identity predicates are in `preds`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn emit_identity(
    l: u32,
    local_ports: &[NamedPort],
    sel: &[usize],
    preps: &[Prep<'_>],
    preds: &[[Option<RulePreds>; 2]],
    in_world_of: &[[bool; 2]],
    tier_ref: &dyn Fn(usize) -> TierRef,
    uni: &Universe<'_>,
    tables: &mut Tables,
) -> (u32, Vec<CtxOut>) {
    let has_staged = sel.iter().any(|&i| preps[i].staged);
    let mut f = if has_staged { ep_flags::HAS_STAGED } else { 0 };
    let mut out = Vec::new();
    for (d, dir) in [(0usize, direction::INGRESS), (1, direction::EGRESS)] {
        for staged_world in [false, true] {
            if staged_world && !has_staged {
                continue;
            }
            let members: Vec<usize> =
                sel.iter().copied().filter(|&i| preps[i].dirs[d] && in_world_of[i][staged_world as usize]).collect();
            if members.is_empty() {
                continue;
            }
            if !staged_world {
                f |= if d == 0 { ep_flags::INGRESS_ISOLATED } else { ep_flags::EGRESS_ISOLATED };
            }
            let applicable: BTreeSet<usize> = members.iter().map(|&i| preps[i].tier_pos).collect();
            let tier_list: Vec<usize> = applicable.iter().copied().collect();
            let trefs: Vec<TierRef> = tier_list.iter().map(|&t| tier_ref(t)).collect();
            let mut rules = Vec::new();
            for &i in &members {
                let p = &preps[i];
                let Some(preds) = &preds[i][d] else { continue };
                let prules = p.policy.rules(d == 0).expect("direction present");
                let tier = tier_list.binary_search(&p.tier_pos).expect("applicable tier");
                for (ri, (rule, (local, remote))) in prules.iter().zip(preds).enumerate() {
                    if !local.holds(l) {
                        continue;
                    }
                    let origin = p.knp.map_or(ri, |c| c.origin(d == 0, ri));
                    rules.push(CRule { tier, policy_index: p.index, rule_index: u16::try_from(origin).unwrap_or(u16::MAX), rule, remote });
                }
            }
            let mut deviating = Vec::new();
            let base = emit_local(uni, dir, &trefs, &rules, local_ports, tables, &mut deviating);
            out.push(CtxOut { dir, staged: staged_world, base, deviating });
        }
    }
    (f, out)
}

/// The verdict tables of a local identity in direction `dir` for these ordered rules: the
/// any-peer table (returned) and, in `out`, (peer, table) for every peer judged otherwise.
fn emit_local(
    uni: &Universe<'_>,
    dir: u8,
    tiers: &[TierRef],
    rules: &[CRule<'_>],
    local_ports: &[NamedPort],
    tables: &mut Tables,
    out: &mut Vec<(u32, u32)>,
) -> u32 {
    let atoms = protocol_atoms(rules);
    let baseline_match: Vec<u16> = rules.iter().enumerate().filter(|(_, r)| r.remote.baseline).map(|(i, _)| i as u16).collect();

    // Inverted index, flat: (peer, rule it answers differently from the baseline), sorted so
    // each peer's rules are contiguous (no allocation per peer). Egress named ports resolve on
    // the peer, so peers defining a used name deviate too, marked with rule `NO_RULE`.
    const NO_RULE: u16 = u16::MAX;
    // Packed as `peer << 16 | rule`: one integer compare per step of the sort.
    let pack = |peer: u32, rule: u16| u64::from(peer) << 16 | u64::from(rule);
    let mut flat: Vec<u64> = Vec::with_capacity(rules.iter().map(|r| r.remote.diff.len()).sum());
    for (i, r) in rules.iter().enumerate() {
        flat.extend(r.remote.diff.iter().map(|&peer| pack(peer, i as u16)));
    }
    let mut used_names: BTreeSet<&str> = BTreeSet::new();
    if dir == direction::EGRESS {
        for r in rules {
            for it in r.rule.destination.ports.iter().chain(&r.rule.destination.not_ports) {
                if let PortItem::Named(n) = it {
                    used_names.insert(n);
                }
            }
        }
        for n in &used_names {
            flat.extend(uni.defining(n).iter().map(|&peer| pack(peer, NO_RULE)));
        }
    }
    crate::radix::sort_u64(&mut flat);
    flat.dedup();
    let rule_ids: Vec<u16> = flat.iter().map(|&f| f as u16).collect();

    let base_ports: &[NamedPort] = if dir == direction::INGRESS { local_ports } else { &[] };
    let base = sig_fn(tiers, rules, &baseline_match, &atoms, base_ports);
    let base_table = tables.intern(base.clone());

    // Signature -> its table, `None` when it equals the any-peer one (no slot needed). On
    // egress with named ports the signature includes the peer's port group: peers with the
    // same named ports resolve every name alike (a group holding names no rule uses may
    // compute an equal function twice; tables are shared by content).
    let by_ports = dir == direction::EGRESS && !used_names.is_empty();
    let mut by_sig: HashMap<(&[u16], u32), Option<u32>> = HashMap::default();
    for run in runs(&flat, |&f| f >> 16) {
        let peer = (flat[run.start] >> 16) as u32;
        // NO_RULE sorts last within the peer's run.
        let mut end = run.end;
        while end > run.start && rule_ids[end - 1] == NO_RULE {
            end -= 1;
        }
        let devs = &rule_ids[run.start..end];
        let (group, peer_ports) = if by_ports { uni.named_ports(peer).unwrap_or((u32::MAX, &[])) } else { (u32::MAX, &[][..]) };
        let f = *by_sig.entry((devs, group)).or_insert_with(|| {
            let matched = symmetric_difference(&baseline_match, devs);
            let dst_ports: &[NamedPort] = if dir == direction::INGRESS { local_ports } else { peer_ports };
            let f = sig_fn(tiers, rules, &matched, &atoms, dst_ports);
            (f != base).then(|| tables.intern(f))
        });
        if let Some(t) = f {
            out.push((peer, t));
        }
    }
    base_table
}

/// The ascending indexes in exactly one of two ascending lists (the rules a peer matches: the
/// baseline's, flipped where the peer answers otherwise).
fn symmetric_difference(a: &[u16], b: &[u16]) -> Vec<u16> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}
