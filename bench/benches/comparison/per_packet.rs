//! The report's per-packet table: every program of the product through BPF_PROG_TEST_RUN
//! against a no-op program at the same hook, at each rule count, medians of interleaved rounds
//! of 1e6 runs (the kernel's own average per run). See `bulkhead_bench::datapath` for the setup.

use std::fmt::Write as _;

use bulkhead_bench::datapath::{Bench, Family, PathKind, REPEAT, Shape, median};
use bulkhead_bench::result;

/// Rows of the table: label, the row's no-op baseline (index into `ROWS`), and what it runs.
#[derive(Clone, Copy)]
enum What {
    Tc(PathKind),
    /// The same path with the IPv6 frames of the same flows.
    Tc6(PathKind),
    XdpNoop,
    XdpPrefilter,
    UplinkPass,
    UplinkDrop,
}

const ROWS: [(&str, usize, What); 17] = [
    ("TC no-op (`r0 = TC_ACT_UNSPEC`)", 0, What::Tc(PathKind::Noop)),
    ("`bh_to_pod`: new flow from a peer pod, denied", 0, What::Tc(PathKind::Deny)),
    ("`bh_to_pod`: new flow from outside the cluster, denied", 0, What::Tc(PathKind::DenyWorld)),
    ("`bh_to_pod`: established flow (conntrack)", 0, What::Tc(PathKind::Established)),
    ("`bh_from_pod`: new flow, denied by egress policy", 0, What::Tc(PathKind::EgressDeny)),
    ("`bh_from_pod`: established flow (conntrack)", 0, What::Tc(PathKind::EgressEstablished)),
    ("`bh_from_pod`: the pod's reply on a flow into it (conntrack)", 0, What::Tc(PathKind::Reply)),
    ("XDP no-op (`r0 = XDP_PASS`)", 7, What::XdpNoop),
    ("`bh_xdp_prefilter` (opt-in, veth): the pod's own source", 7, What::XdpPrefilter),
    ("`bh_xdp_uplink`: source not denied (N denied /32s)", 7, What::UplinkPass),
    ("`bh_xdp_uplink`: denied source (N denied /32s)", 7, What::UplinkDrop),
    ("IPv6 `bh_to_pod`: new flow from a peer pod, denied", 0, What::Tc6(PathKind::Deny)),
    ("IPv6 `bh_to_pod`: new flow from outside the cluster, denied", 0, What::Tc6(PathKind::DenyWorld)),
    ("IPv6 `bh_to_pod`: established flow (conntrack)", 0, What::Tc6(PathKind::Established)),
    ("IPv6 `bh_from_pod`: new flow, denied by egress policy", 0, What::Tc6(PathKind::EgressDeny)),
    ("IPv6 `bh_from_pod`: established flow (conntrack)", 0, What::Tc6(PathKind::EgressEstablished)),
    ("IPv6 `bh_from_pod`: the pod's reply on a flow into it (conntrack)", 0, What::Tc6(PathKind::Reply)),
];

/// The first IPv6 row; row `FIRST_V6 + k` is the IPv6 twin of row `1 + k`.
const FIRST_V6: usize = 11;

/// Medians per row and rule count, plus the single-run allowed new flow.
pub struct PerPacket {
    sizes: Vec<usize>,
    /// `ns[row][size]`.
    ns: Vec<Vec<f64>>,
    /// Per size: (allowed new flow, no-op), one run per sample, timer overhead included.
    single: Vec<(f64, f64)>,
    rounds: usize,
}

/// Measures every row at every size (`sizes` rules of NetworkPolicy; the uplink rows deny as
/// many /32s).
pub fn measure(sizes: &[usize], rounds: usize) -> PerPacket {
    let mut ns = vec![vec![f64::NAN; sizes.len()]; ROWS.len()];
    let mut single = Vec::new();
    for (si, &n) in sizes.iter().enumerate() {
        let mut b = Bench::new(n, Shape::NetworkPolicies);
        let tc: Vec<(usize, PathKind, Family)> = ROWS
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match r.2 {
                What::Tc(p) => Some((i, p, Family::V4)),
                What::Tc6(p) => Some((i, p, Family::V6)),
                _ => None,
            })
            .collect();
        let mut k: Vec<Vec<f64>> = vec![Vec::new(); tc.len()];
        for _ in 0..rounds {
            for (j, &(_, p, f)) in tc.iter().enumerate() {
                k[j].push(b.run_path_in(p, f, REPEAT).kernel_ns as f64);
            }
        }
        for (j, &(i, _, _)) in tc.iter().enumerate() {
            ns[i][si] = median(std::mem::take(&mut k[j]));
        }
        // The deny list holds at most its map's capacity.
        let prefixes = n.min(bulkhead_common::capacity::UPLINK_DENY as usize);
        let (noop, prefilter, pass, drop) = b.xdp_figures(prefixes, rounds);
        for (i, row) in ROWS.iter().enumerate() {
            match row.2 {
                What::Tc(_) | What::Tc6(_) => {}
                What::XdpNoop => ns[i][si] = noop,
                What::XdpPrefilter => ns[i][si] = prefilter,
                What::UplinkPass => ns[i][si] = pass,
                What::UplinkDrop => ns[i][si] = drop,
            }
        }
        single.push(b.single_shot_allow(5_000));
        eprintln!("comparison per-packet @ {n}: {:?}", ns.iter().map(|r| r[si].round()).collect::<Vec<_>>());
    }
    PerPacket { sizes: sizes.to_vec(), ns, single, rounds }
}

/// The Markdown section, and RESULT lines for the 10k ratios.
pub fn render(p: &PerPacket) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## Per-packet cost of every program (BPF_PROG_TEST_RUN)\n");
    let _ = writeln!(
        md,
        "Kernel-reported ns per run, median of {} interleaved rounds of {REPEAT} runs; (x) = ratio to the no-op program at the same hook in the same round set. N = NetworkPolicy ingress rules on the pod (plus one egress policy), and as many denied /32s on the uplink rows (at most the deny list's capacity, 65,536). Goals (issue 12): a new flow <= 3x the no-op at 10k rules, an established flow <= 2x.\n",
        p.rounds
    );
    header(&mut md, "program: path", &p.sizes);
    for (i, (label, base, _)) in ROWS.iter().enumerate() {
        let _ = write!(md, "| {label} |");
        for si in 0..p.sizes.len() {
            let (v, b) = (p.ns[i][si], p.ns[*base][si]);
            if i == *base {
                let _ = write!(md, " {v:.0} |");
            } else {
                let _ = write!(md, " {v:.0} ({:.2}) |", v / b);
            }
        }
        md.push('\n');
    }
    let _ = write!(md, "| `bh_to_pod`: new flow allowed, one run per sample (timer included) / no-op the same way |");
    for (a, n) in &p.single {
        let _ = write!(md, " {a:.0} / {n:.0} |");
    }
    md.push('\n');
    render_v6(p, &mut md);
    if let Some(si) = p.sizes.iter().position(|&n| n == 10_000) {
        for (i, name) in [(1, "deny_new_flow"), (2, "deny_new_flow_world"), (3, "established"), (4, "egress_deny_new_flow"), (5, "egress_established")] {
            result(&format!("per_packet_{name}_ratio_10k"), format!("{:.2}", p.ns[i][si] / p.ns[0][si]));
        }
        result("per_packet_uplink_pass_ratio_10k", format!("{:.2}", p.ns[9][si] / p.ns[7][si]));
    }
    md
}

/// The IPv6 rows against their IPv4 twins (issue 14: within 10 %), per rule count, with a
/// RESULT line per rule count for the largest ratio.
fn render_v6(p: &PerPacket, md: &mut String) {
    let _ = writeln!(md, "\n### IPv6 against IPv4\n");
    let _ = writeln!(md, "The same flows between the same dual-stack pods, IPv6 frames against IPv4 frames, from the table above (same rounds, interleaved): IPv6 ns / IPv4 ns. Goal (issue 14): within 10 %.\n");
    header(md, "path", &p.sizes);
    let mut worst = vec![0f64; p.sizes.len()];
    for (k, (label, _, _)) in ROWS[FIRST_V6..].iter().enumerate() {
        let _ = write!(md, "| {} |", label.trim_start_matches("IPv6 "));
        for si in 0..p.sizes.len() {
            let (v6, v4) = (p.ns[FIRST_V6 + k][si], p.ns[1 + k][si]);
            let _ = write!(md, " {v6:.0} / {v4:.0} = {:.2} |", v6 / v4);
            worst[si] = worst[si].max(v6 / v4);
        }
        md.push('\n');
    }
    for (si, &n) in p.sizes.iter().enumerate() {
        result(&format!("per_packet_v6_v4_worst_ratio_{}", super::rules_label(n)), format!("{:.2}", worst[si]));
    }
}

/// A table's header: the first column's title, then one column per rule count.
fn header(md: &mut String, first: &str, sizes: &[usize]) {
    let _ = write!(md, "| {first} |");
    for &n in sizes {
        let _ = write!(md, " N = {} |", super::rules_label(n));
    }
    let _ = write!(md, "\n|---|");
    for _ in sizes {
        let _ = write!(md, "---|");
    }
    md.push('\n');
}
