//! Atomic policy swaps, checked in the kernel: random policy and label changes are replayed
//! through the agent's own writer ([`bulkhead_agent::apply::commit`]) while, after every
//! single map write, the real TC programs judge every probe (each peer x port x direction,
//! through BPF_PROG_TEST_RUN). Every verdict vector seen must be exactly the old policy's
//! until the flip and exactly the new one's from it: so no packet is ever allowed that both
//! policies deny, and none denied that both allow. A control replays the issue's own case
//! ("deny P, allow all" -> "deny all") written in place, the way the agent wrote before, and
//! must catch P let through. Needs root (loads BPF programs).

use std::net::Ipv4Addr;

use aya::programs::{TestRun as _, TestRunOptions};
use bulkhead_agent::{
    apply::{self, EndpointTable, Generations, KernelState},
    loader::{Dataplane, programs},
};
use bulkhead_bench::DataplaneGuard;
use bulkhead_bench::packet::{TCP_SYN, tcp_frame};
use bulkhead_common::ConfigV2;
use policy_compiler::{Compiler, compile::Compiled};

const RET_PASS: u32 = u32::MAX;
const RET_DROP: u32 = 2;
const TARGET: Ipv4Addr = Ipv4Addr::new(10, 40, 0, 1);
/// Three peers share one slot of the direct-mapped address array (same low 16 bits), so as
/// pods come and go an address moves between the array and the hash behind it.
const PEERS: [Ipv4Addr; 5] =
    [Ipv4Addr::new(10, 40, 0, 11), Ipv4Addr::new(10, 41, 0, 11), Ipv4Addr::new(10, 42, 0, 11), Ipv4Addr::new(10, 40, 0, 14), Ipv4Addr::new(10, 40, 0, 15)];
const PORTS: [u16; 2] = [80, 443];
const APPS: [&str; 3] = ["a", "b", "c"];

/// A small deterministic generator (no test depends on the machine's randomness).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
}

/// Pods: the target (its interface is `lo`, where BPF_PROG_TEST_RUN runs TC programs) and up
/// to five peers, with random labels (so identities change between steps).
fn pods_yaml(rng: &mut Rng) -> String {
    let mut y = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {ns: x}}\n");
    y += &format!(
        "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: target, namespace: x, labels: {{app: {}, role: target}}, annotations: {{bulkhead.io/interface: lo}}}}\nstatus: {{podIP: {TARGET}}}\n",
        rng.pick(&APPS)
    );
    for (i, ip) in PEERS.iter().enumerate() {
        if rng.below(5) == 0 {
            continue; // this peer does not exist now: its address is WORLD
        }
        y += &format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: x, labels: {{app: {}}}}}\nstatus: {{podIP: {ip}}}\n", rng.pick(&APPS));
    }
    y
}

/// Random Kubernetes NetworkPolicies and Calico GlobalNetworkPolicies (Allow and Deny rules,
/// orders) over the same labels and ports.
fn policies_yaml(rng: &mut Rng) -> String {
    let mut y = String::new();
    for i in 0..rng.below(4) {
        let sel = if rng.below(3) == 0 { "{}".to_string() } else { format!("{{matchLabels: {{app: {}}}}}", rng.pick(&APPS)) };
        let (types, key, peer) = match rng.below(3) {
            0 => ("[Ingress]", "ingress", "from"),
            1 => ("[Egress]", "egress", "to"),
            _ => ("[Ingress, Egress]", "ingress", "from"),
        };
        let mut rules = Vec::new();
        for _ in 0..rng.below(3) {
            let port = if rng.below(2) == 0 { format!(", ports: [{{port: {}, protocol: TCP}}]", PORTS[rng.below(2)]) } else { String::new() };
            rules.push(format!("{{{peer}: [{{podSelector: {{matchLabels: {{app: {}}}}}}}]{port}}}", rng.pick(&APPS)));
        }
        y += &format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np{i}, namespace: x}}\nspec: {{podSelector: {sel}, policyTypes: {types}, {key}: [{}]}}\n",
            rules.join(", ")
        );
    }
    for i in 0..rng.below(3) {
        let sel = if rng.below(3) == 0 { "all()".to_string() } else { format!("app == '{}'", rng.pick(&APPS)) };
        let ingress = rng.below(2) == 0;
        let mut rules = Vec::new();
        for _ in 0..1 + rng.below(2) {
            let action = if rng.below(2) == 0 { "Deny" } else { "Allow" };
            let side = if ingress { "source" } else { "destination" };
            let who = if rng.below(3) == 0 { String::new() } else { format!(", {side}: {{selector: \"app == '{}'\"}}", rng.pick(&APPS)) };
            let port = if rng.below(2) == 0 { format!(", protocol: TCP, destination: {{ports: [{}]}}", PORTS[rng.below(2)]) } else { String::new() };
            // A rule with both a destination selector and ports: one destination block.
            let rule = if !ingress && !who.is_empty() && !port.is_empty() {
                format!("{{action: {action}, protocol: TCP, destination: {{selector: \"app == '{}'\", ports: [{}]}}}}", rng.pick(&APPS), PORTS[rng.below(2)])
            } else {
                format!("{{action: {action}{who}{port}}}")
            };
            rules.push(rule);
        }
        let (types, key) = if ingress { ("[Ingress]", "ingress") } else { ("[Egress]", "egress") };
        y += &format!(
            "---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: gnp{i}}}\nspec: {{order: {}, selector: \"{sel}\", types: {types}, {key}: [{}]}}\n",
            rng.below(100),
            rules.join(", ")
        );
    }
    y
}

fn compile(yaml: &str) -> Compiled {
    let docs = policy_compiler::k8s::parse_documents("swap.yaml", yaml).unwrap_or_else(|e| panic!("generated YAML parses: {e}\n{yaml}"));
    let model = policy_compiler::k8s::build_model(docs).unwrap_or_else(|e| panic!("generated model builds: {e}\n{yaml}"));
    Compiler::default().compile(&model).unwrap_or_else(|e| panic!("compiles: {e}\n{yaml}"))
}

/// The real programs' verdict on every probe: TCP SYNs from each peer to the target's ports
/// (ingress) and from the target to each peer's ports (egress).
fn verdicts(dp: &mut Dataplane) -> Vec<bool> {
    let mut out = Vec::new();
    let mut sport = 20000u16;
    for peer in PEERS {
        for port in PORTS {
            for (prog, frame) in [
                (programs::TO_POD, tcp_frame(peer, TARGET, sport, port, TCP_SYN)),
                (programs::FROM_POD, tcp_frame(TARGET, peer, sport, port, TCP_SYN)),
            ] {
                let p = dp.classifier(prog).expect("program");
                let r = p.test_run(TestRunOptions { data_in: Some(&frame), repeat: 1, ..TestRunOptions::new() }).expect("BPF_PROG_TEST_RUN");
                out.push(r.return_value == RET_PASS);
            }
            sport += 1;
        }
    }
    out
}

/// The compiler's own answer for every probe of [`verdicts`] (`policy_compiler::lookup`, the
/// same check `explain` gives): the kernel must agree.
fn expected(c: &Compiled) -> Vec<bool> {
    use bulkhead_common::{direction, proto};
    let target = &c.endpoints[&policy_compiler::model::PodRef::new("x", "target")];
    let mut out = Vec::new();
    for peer in PEERS {
        for port in PORTS {
            for dir in [direction::INGRESS, direction::EGRESS] {
                out.push(policy_compiler::lookup::check(c, target, peer, dir, proto::TCP, port).allowed);
            }
        }
    }
    out
}

fn describe(i: usize) -> String {
    let (peer, rest) = (i / 4, i % 4);
    format!("{} {} port {}", PEERS[peer], if rest % 2 == 0 { "-> target" } else { "<- target" }, PORTS[rest / 2])
}

/// A loaded dataplane in its own pin folder (unloaded on drop, also when a test panics).
struct Guard(DataplaneGuard);

impl Guard {
    fn new(tag: &str) -> Guard {
        // SAFETY: trivial syscall.
        assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root (loads BPF programs); CI runs it as root");
        let mut g = DataplaneGuard::load(&format!("bhs-{tag}-{}", std::process::id()));
        g.dp().maps.config.set(0, ConfigV2::with_default_timeouts(0), 0).expect("config");
        Guard(g)
    }
    fn dp(&mut self) -> &mut Dataplane {
        self.0.dp()
    }
}

/// Commits `yaml` through the agent's writer, checking the verdicts after every write against
/// `before` (until the flip) and the new policy's (from the flip). Returns the new verdicts and
/// the number of checks.
fn replay(dp: &mut Dataplane, gens: &mut Generations, eps: &mut EndpointTable, before: &[bool], yaml: &str) -> (Vec<bool>, usize) {
    let compiled = compile(yaml);
    let kernel = KernelState::of(&compiled);
    let rev0 = apply::current_revision(dp).expect("revision");
    let mut seen: Vec<(bool, Vec<bool>)> = Vec::new();
    let mut obs = |dp: &mut Dataplane| {
        let flipped = apply::current_revision(dp).expect("revision") != rev0;
        seen.push((flipped, verdicts(dp)));
    };
    let mut o: Option<apply::Observer<'_>> = Some(&mut obs);
    apply::commit(dp, gens, kernel, &compiled, eps, &mut o).expect("commit");
    // The grace the agent keeps between flips (a packet in flight may still read the old one).
    std::thread::sleep(std::time::Duration::from_millis(5));
    let after = verdicts(dp);
    let want = expected(&compiled);
    for (i, (got, exp)) in after.iter().zip(&want).enumerate() {
        assert_eq!(got, exp, "after the flip: {} was {} where the compiler says {}\n{yaml}", describe(i), if *got { "allowed" } else { "denied" }, if *exp { "allow" } else { "deny" });
    }
    for (step, (flipped, v)) in seen.iter().enumerate() {
        let want = if *flipped { &after } else { before };
        for (i, (got, exp)) in v.iter().zip(want.iter()).enumerate() {
            assert_eq!(
                got,
                exp,
                "after map write {step} ({}): {} was {} (old policy {}, new policy {})\n{yaml}",
                if *flipped { "flipped" } else { "before the flip" },
                describe(i),
                if *got { "allowed" } else { "denied" },
                if before[i] { "allows" } else { "denies" },
                if after[i] { "allows" } else { "denies" },
            );
        }
    }
    assert!(seen.last().is_some_and(|(f, _)| *f), "the last observation is the flip");
    (after, seen.len())
}

#[test]
fn random_policy_and_label_changes_never_judge_a_packet_by_a_mix_of_two_policies() {
    let mut g = Guard::new("rand");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut gens, mut eps) = (Generations::default(), EndpointTable::new());
    let first = pods_yaml(&mut rng) + &policies_yaml(&mut rng);
    let (mut before, _) = replay(g.dp(), &mut gens, &mut eps, &vec![false; PEERS.len() * 4], &first);
    let (mut checks, mut changed) = (0, 0);
    for _ in 0..40 {
        let yaml = pods_yaml(&mut rng) + &policies_yaml(&mut rng);
        let (after, n) = replay(g.dp(), &mut gens, &mut eps, &before, &yaml);
        checks += n;
        changed += before.iter().zip(&after).filter(|(a, b)| a != b).count();
        before = after;
    }
    // The sequence must really move verdicts, or it proves nothing.
    assert!(changed > 40, "the random changes moved only {changed} verdicts");
    println!("40 random changes: {checks} checks after single map writes, {changed} verdict changes");
}

/// The issue's case: "deny P; allow all" -> "deny all" for the target's ingress.
const DENY_P_ALLOW_ALL: &str = "---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: t}\nspec: {selector: \"role == 'target'\", types: [Ingress], ingress: [{action: Deny, source: {selector: \"app == 'p'\"}}, {action: Allow}]}\n";
const DENY_ALL: &str = "---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: t}\nspec: {selector: \"role == 'target'\", types: [Ingress], ingress: [{action: Deny}]}\n";

fn issue_pods() -> String {
    let mut y = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n");
    y += &format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: target, namespace: x, labels: {{app: a, role: target}}, annotations: {{bulkhead.io/interface: lo}}}}\nstatus: {{podIP: {TARGET}}}\n");
    y += &format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p, namespace: x, labels: {{app: p}}}}\nstatus: {{podIP: {}}}\n", PEERS[0]);
    y
}

#[test]
fn the_issues_case_is_atomic_and_writing_in_place_would_let_p_through() {
    // Through the agent's writer: exact old verdicts, then exact new ones.
    let mut g = Guard::new("issue");
    let (mut gens, mut eps) = (Generations::default(), EndpointTable::new());
    let (before, _) = replay(g.dp(), &mut gens, &mut eps, &vec![false; PEERS.len() * 4], &(issue_pods() + DENY_P_ALLOW_ALL));
    assert!(!before[0], "P denied by the first policy");
    let (after, n) = replay(g.dp(), &mut gens, &mut eps, &before, &(issue_pods() + DENY_ALL));
    assert!(!after[0] && !after[4], "everything denied by the second policy");
    assert!(n >= 2, "the change took map writes");

    // Control: the same change written in place into the enforced generation, removals
    // first (how the agent wrote before generations). The checker must see P allowed.
    let mut c = Guard::new("inplace");
    let (mut gens, mut eps) = (Generations::default(), EndpointTable::new());
    replay(c.dp(), &mut gens, &mut eps, &vec![false; PEERS.len() * 4], &(issue_pods() + DENY_P_ALLOW_ALL));
    let active = bulkhead_common::generation(apply::current_revision(c.dp()).expect("revision"));
    let old = gens.held[active].clone().expect("the enforced generation is known");
    let new = KernelState::of(&compile(&(issue_pods() + DENY_ALL)));
    let mut p_let_through = false;
    let mut obs = |dp: &mut Dataplane| p_let_through |= verdicts(dp)[0];
    let mut o: Option<apply::Observer<'_>> = Some(&mut obs);
    apply::write_generation(c.dp(), active, Some(&old), &new, &mut o).expect("in-place write");
    assert!(p_let_through, "the control must catch P allowed between the in-place writes (the checker has teeth)");
}

#[test]
fn a_policy_change_revokes_an_established_flow_on_its_next_packet() {
    let mut g = Guard::new("reeval");
    let (mut gens, mut eps) = (Generations::default(), EndpointTable::new());
    let pods = issue_pods();
    let (before, _) = replay(g.dp(), &mut gens, &mut eps, &vec![false; PEERS.len() * 4], &pods);
    assert!(before.iter().all(|v| *v), "no policy: everything allowed");
    // P opens a connection to the target; the target answers (tracked, both ways).
    let syn = tcp_frame(PEERS[0], TARGET, 47000, 80, TCP_SYN);
    let run = |dp: &mut Dataplane, prog: &str, f: &[u8]| {
        dp.classifier(prog).expect("program").test_run(TestRunOptions { data_in: Some(f), repeat: 1, ..TestRunOptions::new() }).expect("run").return_value
    };
    assert_eq!(run(g.dp(), programs::TO_POD, &syn), RET_PASS);
    assert_eq!(run(g.dp(), programs::FROM_POD, &tcp_frame(TARGET, PEERS[0], 80, 47000, 0x12)), RET_PASS);
    let ack = tcp_frame(PEERS[0], TARGET, 47000, 80, 0x10);
    assert_eq!(run(g.dp(), programs::TO_POD, &ack), RET_PASS, "established");
    // Deny P: the flow's next packet (either direction) is judged again and dropped.
    replay(g.dp(), &mut gens, &mut eps, &before, &(pods + DENY_P_ALLOW_ALL));
    assert_eq!(run(g.dp(), programs::FROM_POD, &tcp_frame(TARGET, PEERS[0], 80, 47000, 0x10)), RET_DROP, "the reply is judged again and dropped");
    assert_eq!(run(g.dp(), programs::TO_POD, &ack), RET_DROP, "and so is P's next packet");
    let c = g.dp().counters().expect("counters");
    let get = |n: &str| c.iter().find(|(k, _)| k == n).map(|(_, v)| *v).unwrap_or(0);
    assert_eq!(get("ct_reeval_deny"), 1, "{c:?}");
    let events = g.dp().maps.flows.as_mut().expect("flow ring").read_all();
    let revoked = events.iter().filter(|e| e.kind == bulkhead_common::flow_kind::REVOKED).count();
    assert_eq!(revoked, 1, "the revoked flow is reported");
}

/// Every peer entry and port exception moved from its slot into the hash behind it, the
/// slots left marked MORE: how the kernel finds keys whose slot another key took.
fn spilled(mut k: KernelState) -> KernelState {
    use bulkhead_common::{ip_slot_flags, slots};
    for s in k.peer_slots.values_mut() {
        k.peer_spill.insert(s.key, s.value);
        *s = slots::PeerSlotV1 { flags: ip_slot_flags::MORE, ..Default::default() };
    }
    for s in k.port_slots.values_mut() {
        k.port_spill.insert(s.key, s.verdict);
        *s = slots::PortSlotV1 { flags: ip_slot_flags::MORE, ..Default::default() };
    }
    k
}

#[test]
fn entries_in_the_hash_behind_the_slots_judge_as_entries_in_their_slots() {
    // Alternating between every entry in its slot and every entry spilled: each change moves
    // all keys between the arrays and the hashes, and the kernel must agree with the compiler
    // either way. A kernel that ignored MORE would allow what the spilled entries deny.
    let mut g = Guard::new("spill");
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let (mut gens, mut eps) = (Generations::default(), EndpointTable::new());
    let (mut spilled_keys, mut denied) = (0, 0);
    for i in 0..20 {
        let yaml = pods_yaml(&mut rng) + &policies_yaml(&mut rng);
        let compiled = compile(&yaml);
        let mut kernel = KernelState::of(&compiled);
        if i % 2 == 1 {
            kernel = spilled(kernel);
            spilled_keys += kernel.peer_spill.len() + kernel.port_spill.len();
        }
        apply::commit(g.dp(), &mut gens, kernel, &compiled, &mut eps, &mut None).expect("commit");
        let (got, want) = (verdicts(g.dp()), expected(&compiled));
        denied += want.iter().filter(|a| !**a).count();
        for (j, (a, b)) in got.iter().zip(&want).enumerate() {
            assert_eq!(a, b, "change {i} ({}): {} was {}\n{yaml}", if i % 2 == 1 { "spilled" } else { "in slots" }, describe(j), if *a { "allowed" } else { "denied" });
        }
    }
    assert!(spilled_keys > 20 && denied > 20, "the changes must spill keys ({spilled_keys}) and deny probes ({denied}) to prove anything");
}
