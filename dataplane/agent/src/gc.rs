//! Conntrack garbage collection: the datapath reuses expired slots and overwrites the least
//! recently seen flow of a full bucket; this removes entries whose timeout passed so the
//! table reflects live flows. An expired entry of a flow whose end the
//! datapath did not report (UDP, ICMP, a TCP flow that went quiet) becomes the flow's end
//! record here, with its packets and bytes both ways.

use std::collections::BTreeMap;
use std::time::Duration;

use bulkhead_common::{CtValueV2, FlowEventV5, PolicyValueV2, action, ct_flags, flow_kind, map_names};

use crate::{
    error::{AgentError, DataplaneError},
    loader::Dataplane,
};

/// How often the agent sweeps.
pub const INTERVAL: Duration = Duration::from_secs(10);

/// What a sweep did.
#[derive(Debug, Default)]
pub struct Sweep {
    /// Expired entries removed.
    pub removed: usize,
    /// End records of removed flows whose endpoint reports flows and whose end the datapath
    /// had not reported, oriented as each flow's origin saw it.
    pub ended: Vec<FlowEventV5>,
}

/// Removes expired entries and returns them as end records where flows are reported. Reads
/// and removes through the tables' memory mapping ([`crate::cttable`]): no syscall per entry.
pub fn sweep(dp: &mut Dataplane) -> Result<Sweep, AgentError> {
    let cfg = dp
        .maps
        .config
        .get(&0, 0)
        .map_err(|source| DataplaneError::Map { map: map_names::CONFIG, source })?;
    let now = crate::clock::coarse_ns();
    let mut reports = Reports { flags: cfg.flags, known: BTreeMap::new() };
    let mut out = Sweep::default();
    for e in dp.maps.conntrack.entries().into_iter().filter(|e| e.value.expired(&cfg, now)) {
        // Removed first: an entry the datapath touched or replaced since it was read stays,
        // and is neither removed nor reported.
        if !dp.maps.conntrack.remove(&e) {
            continue;
        }
        out.removed += 1;
        let (k, v) = (e.key, e.value);
        if v.flags & ct_flags::ENDED == 0 && reports.of(&dp.maps.flow_watch, k.ifindex) {
            let (lo, hi) = (widen(k.addr_lo_be), widen(k.addr_hi_be));
            out.ended.push(end_record(k.ifindex, 4, (lo, k.port_lo_be), (hi, k.port_hi_be), k.protocol, &v, now));
        }
    }
    for e in dp.maps.conntrack6.entries().into_iter().filter(|e| e.value.expired(&cfg, now)) {
        if !dp.maps.conntrack6.remove(&e) {
            continue;
        }
        out.removed += 1;
        let (k, v) = (e.key, e.value);
        if v.flags & ct_flags::ENDED == 0 && reports.of(&dp.maps.flow_watch, k.ifindex) {
            out.ended.push(end_record(k.ifindex, 6, (k.addr_lo_be, k.port_lo_be), (k.addr_hi_be, k.port_hi_be), k.protocol, &v, now));
        }
    }
    Ok(out)
}

fn widen(a: [u8; 4]) -> [u8; 16] {
    let mut w = [0; 16];
    w[..4].copy_from_slice(&a);
    w
}

/// Which endpoints report flows: the datapath's rule ([`bulkhead_common::flow_reported`]),
/// read once per interface per sweep.
struct Reports {
    flags: u32,
    known: BTreeMap<u32, bool>,
}

impl Reports {
    fn of(&mut self, flow_watch: &aya::maps::Array<aya::maps::MapData, u32>, ifindex: u32) -> bool {
        let flags = self.flags;
        *self.known.entry(ifindex).or_insert_with(|| {
            let slot = if bulkhead_common::ifindex_is_direct(ifindex) { flow_watch.get(&ifindex, 0).unwrap_or(0) } else { 0 };
            bulkhead_common::flow_reported(flags, ifindex, slot)
        })
    }
}

/// The end record of an expired entry, its ends oriented by [`ct_flags::ORIGIN_HI`].
fn end_record(ifindex: u32, family: u8, lo: ([u8; 16], [u8; 2]), hi: ([u8; 16], [u8; 2]), protocol: u8, v: &CtValueV2, now: u64) -> FlowEventV5 {
    let (src, dst) = if v.flags & ct_flags::ORIGIN_HI != 0 { (hi, lo) } else { (lo, hi) };
    FlowEventV5 {
        // The event clock is CLOCK_MONOTONIC and the entry's is its coarse variant: the
        // same clock at tick resolution.
        ts_ns: now,
        ifindex,
        saddr_be: src.0,
        daddr_be: dst.0,
        sport_be: src.1,
        dport_be: dst.1,
        verdict: PolicyValueV2 { action: action::ALLOW, policy_index: bulkhead_common::NO_POLICY, ..Default::default() },
        protocol,
        direction: v.origin_direction,
        kind: flow_kind::END,
        family,
        start_ns: v.created_ns,
        packets_orig: v.packets_orig,
        bytes_orig: v.bytes_orig,
        packets_reply: v.packets_reply,
        bytes_reply: v.bytes_reply,
        ..Default::default()
    }
}
