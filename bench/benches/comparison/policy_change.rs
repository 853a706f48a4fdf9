//! The report's policy-change table: time from a change to the kernel enforcing it, for
//! Bulkhead with 10 / 1k / 10k NetworkPolicies in place (the agent watching its file
//! datastore: write -> inotify -> load -> compile -> maps) next to iptables (legacy and nft)
//! adding or deleting one rule in a FORWARD chain of 10k, and nftables adding or deleting one
//! element of a 10k set.
//!
//! Each flip alternates allow and deny of client -> server and is timed from just before the
//! change (the file write; the command's spawn, through `ip netns exec` into the node
//! namespace, as an operator's script would run it) to the start of the first real TCP probe
//! that sees the new verdict (`bulkhead_bench::time_to_verdict`, a probe every 2 ms).

use std::fmt::Write as _;
use std::process::Command;
use std::time::{Duration, Instant};

use bulkhead_agent::{Agent, AgentConfig};
use bulkhead_bench::{Probing, percentile, result, time_to_verdict};

use super::{Bench, Config, ECHO_PORT, Impl, decoy, rules_label};

const PROBING: Probing = Probing { interval: Duration::from_millis(2), timeout: Duration::from_millis(50), give_up: Duration::from_secs(30) };
/// Pause after each flip, so the next one starts from a settled state.
const SETTLE: Duration = Duration::from_millis(100);

/// One configuration's flips.
pub struct Change {
    name: String,
    samples: Vec<Duration>,
    failures: usize,
}

fn toggle(allow: bool) -> String {
    let ingress = if allow { "\n  - from: [{podSelector: {matchLabels: {app: client}}}]" } else { " []" };
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: toggle, namespace: bench}}\nspec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  policyTypes: [Ingress]\n  ingress:{ingress}\n"
    )
}

fn background(i: usize) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: bg-{i}, namespace: bench}}\nspec:\n  podSelector: {{matchLabels: {{app: server}}}}\n  policyTypes: [Ingress]\n  ingress:\n  - from: [{{ipBlock: {{cidr: {}/32}}}}]\n    ports: [{{protocol: TCP, port: {ECHO_PORT}}}]\n",
        decoy(i)
    )
}

/// Runs `flips` changes with `change(allow)` making the change; the state before is deny.
fn flips(b: &Bench, name: String, flips: usize, mut change: impl FnMut(bool)) -> Change {
    let mut c = Change { name, samples: Vec::new(), failures: 0 };
    let mut allow = false;
    for _ in 0..flips {
        allow = !allow;
        let t0 = Instant::now();
        change(allow);
        match time_to_verdict(&b.client, b.server.ip, ECHO_PORT, allow, t0, PROBING) {
            Some(d) => c.samples.push(d),
            None => {
                c.failures += 1;
                eprintln!("comparison policy change {}: verdict did not flip to {allow} within {:?}", c.name, PROBING.give_up);
            }
        }
        std::thread::sleep(SETTLE);
    }
    // Leave it denied, the state the next configuration expects from its own setup.
    if allow {
        change(false);
    }
    c
}

fn bulkhead(b: &mut Bench, n: usize, count: usize) -> Change {
    b.switch(Config { imp: Impl::NoPolicy, rules: 0 });
    let _ = b.ds.delete(&[bulkhead_lab::case::DeleteRef { api_version: None, kind: "NetworkPolicy".into(), namespace: Some("bench".into()), name: "guard".into() }]);
    for i in 0..n {
        b.ds.apply(&background(i)).expect("background policy");
    }
    b.ds.apply(&toggle(false)).expect("toggle policy");
    b.ds.flush().expect("datastore");
    let agent = Agent::start(AgentConfig { datastore_dir: b.lab.datastore_dir(), node_netns: Some(b.node()), pin_dir: b.lab.pin_dir(), watch: true, flow_records: true }).expect("agent");
    b.agent = Some(agent);
    assert!(
        time_to_verdict(&b.client, b.server.ip, ECHO_PORT, false, Instant::now(), PROBING).is_some(),
        "Bulkhead with {n} policies: the client still reaches the server under deny"
    );
    let mut ds = std::mem::replace(&mut b.ds, bulkhead_lab::datastore::Datastore::for_lab(&b.lab));
    let c = flips(b, format!("Bulkhead, {} NetworkPolicies in place (file write -> enforced)", rules_label(n)), count, |allow| {
        ds.apply(&toggle(allow)).expect("toggle");
        ds.flush().expect("writing the policy file");
    });
    b.agent.take();
    let refs: Vec<_> = (0..n)
        .map(|i| format!("bg-{i}"))
        .chain(["toggle".to_string()])
        .map(|name| bulkhead_lab::case::DeleteRef { api_version: None, kind: "NetworkPolicy".into(), namespace: Some("bench".into()), name })
        .collect();
    ds.delete(&refs).expect("removing the bench policies");
    ds.flush().expect("datastore");
    b.ds = ds;
    c
}

/// Runs a command in the node namespace, as an operator's script would.
fn node_cmd(node: &str, program: &str, args: &[String]) {
    let out = Command::new("ip").args(["netns", "exec", node, program]).args(args).output().expect("spawning");
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn kernel_rules(b: &mut Bench, imp: Impl, n: usize, count: usize) -> Change {
    b.switch(Config { imp, rules: n });
    let node = b.node();
    let (client, server) = (b.client.ip.to_string(), b.server.ip.to_string());
    let (program, add, del, what): (&str, Vec<String>, Vec<String>, &str) = match imp {
        Impl::IptablesLegacy { .. } | Impl::IptablesNft { .. } => {
            let program = if matches!(imp, Impl::IptablesLegacy { .. }) { "iptables-legacy" } else { "iptables-nft" };
            let rule = |op: &str| [op, "FORWARD", "-s", &client, "-d", &server, "-j", "ACCEPT"].map(String::from).to_vec();
            (program, rule("-A"), rule("-D"), "one rule added to / deleted from")
        }
        Impl::NftSet => {
            let el = |op: &str| [op, "element", "inet", "bhcmp", "allowed", &format!("{{ {client} }}")].map(String::from).to_vec();
            ("nft", el("add"), el("delete"), "one element added to / deleted from")
        }
        other => panic!("{other:?} is not a kernel-rule rendering"),
    };
    // The rendering admits the client; remove that so flips start from deny.
    node_cmd(&node, program, &del);
    flips(b, format!("{}: {what} {} in place", imp.label(), rules_label(n)), count, |allow| node_cmd(&node, program, if allow { &add } else { &del }))
}

/// Measures every configuration with `count` flips each.
pub fn measure(b: &mut Bench, counts: &[usize], count: usize) -> Vec<Change> {
    let mut out = Vec::new();
    for &n in counts.iter().filter(|&&n| n <= 10_000) {
        out.push(bulkhead(b, n, count));
    }
    let big = counts.iter().copied().filter(|&n| n <= 10_000).max().unwrap_or(10);
    for imp in [Impl::IptablesLegacy { stateful: true }, Impl::IptablesNft { stateful: true }, Impl::NftSet] {
        out.push(kernel_rules(b, imp, big, count));
    }
    b.switch(Config { imp: Impl::NoPolicy, rules: 0 });
    out
}

/// The Markdown section, and RESULT lines.
pub fn render(changes: &[Change]) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "## Policy change to enforced\n");
    let _ = writeln!(
        md,
        "Alternating allow and deny of client -> server; from just before the change (file write, or the command's spawn into the node namespace) to the first real TCP probe seeing the new verdict (a probe every {} ms, so that is the resolution).\n",
        PROBING.interval.as_millis()
    );
    let _ = writeln!(md, "| change | flips | p50 ms | p99 ms | max ms | not enforced within {} s |", PROBING.give_up.as_secs());
    let _ = writeln!(md, "|---|---|---|---|---|---|");
    for c in changes {
        let mut s = c.samples.clone();
        s.sort();
        let ms = |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.1}", d.as_secs_f64() * 1e3));
        let _ = writeln!(md, "| {} | {} | {} | {} | {} | {} |", c.name, s.len(), ms(percentile(&s, 50.0)), ms(percentile(&s, 99.0)), ms(s.last().copied()), c.failures);
        let key: String = c.name.chars().map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '_' }).collect();
        if let Some(p) = percentile(&s, 50.0) {
            result(&format!("policy_change_{key}_p50_ms"), format!("{:.1}", p.as_secs_f64() * 1e3));
        }
    }
    md
}
