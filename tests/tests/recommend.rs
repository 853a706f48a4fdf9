//! `bulkhead policy recommend` on the lab with real packets (root), on the demo application
//! (deploy/demo, moved to its own subnet): after benign traffic, the recommended set is the
//! same however often it is asked and however much more of the same traffic comes; staged,
//! it counts zero would-deny for benign traffic; enforced (Calico or Kubernetes form), it
//! allows every benign flow and denies every flow never seen.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bulkhead_e2e::{LabAgent, run_bulkhead, workspace_root};
use bulkhead_lab::probe::{PROBE_TIMEOUT, ProbeJob, probe_all};

/// (source pod key or "outside", destination pod key, port)
type Flow = (String, String, u16);

fn benign() -> BTreeSet<Flow> {
    [("outside", "shop/frontend", 80), ("shop/frontend", "shop/api", 8080), ("shop/api", "data/db", 5432)]
        .into_iter()
        .map(|(s, d, p)| (s.to_string(), d.to_string(), p))
        .collect()
}

/// Every source (pods and the outside client) to every other pod's served port.
fn matrix(f: &LabAgent) -> Vec<(Flow, bool)> {
    probe(f, |_| true)
}

/// The cells of the matrix `which` keeps, probed.
fn probe(f: &LabAgent, which: impl Fn(&Flow) -> bool) -> Vec<(Flow, bool)> {
    let ports = [("shop/frontend", 80u16), ("shop/api", 8080), ("data/db", 5432)];
    let mut cells = Vec::new();
    let mut jobs = Vec::new();
    for src in f.lab.pods().iter().chain(std::iter::once(f.lab.outside())) {
        for dst in f.lab.pods() {
            if src.key == dst.key {
                continue;
            }
            let port = ports.iter().find(|(k, _)| *k == dst.key).map(|(_, p)| *p).expect("demo pod");
            let from = if std::ptr::eq(src, f.lab.outside()) { "outside".to_string() } else { src.key.clone() };
            let cell = (from, dst.key.clone(), port);
            if !which(&cell) {
                continue;
            }
            cells.push(cell);
            jobs.push(ProbeJob { from_netns: src.netns.clone(), to_ip: dst.ip.into(), port, protocol: bulkhead_lab::Protocol::Tcp });
        }
    }
    cells.into_iter().zip(probe_all(&jobs, PROBE_TIMEOUT)).collect()
}

fn run_benign(f: &LabAgent) {
    let reached = probe(f, |c| benign().contains(c));
    assert_eq!(reached.len(), benign().len());
    assert!(reached.iter().all(|(_, ok)| *ok), "benign traffic must pass: {reached:?}");
}

fn recommend(instance: &str, f: &LabAgent, output: &str, stable_after: &str) -> (String, String) {
    let ds = f.lab.datastore_dir();
    let out = run_bulkhead(&["policy", "recommend", "--instance", instance, "--datastore", &ds.to_string_lossy(), "-o", output, "--stable-after", stable_after]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(out.status.success(), "recommend -o {output} failed: {stderr}");
    (stdout, stderr)
}

/// Writes `yaml` as the datastore's recommended policies and waits for the agent to apply it.
fn apply(f: &LabAgent, yaml: &str) {
    std::fs::write(f.lab.datastore_dir().join("recommended.yaml"), yaml).expect("write recommended.yaml");
    f.agent().sync_now().unwrap_or_else(|e| panic!("the recommendation does not apply: {e}\n{yaml}"));
}

fn assert_exact(f: &LabAgent, form: &str, yaml: &str) {
    let got = matrix(f);
    let wrong: Vec<String> = got
        .iter()
        .filter(|(c, ok)| *ok != benign().contains(c))
        .map(|((s, d, p), ok)| format!("{s} -> {d}:{p} {}", if *ok { "allowed but never seen" } else { "denied but benign" }))
        .collect();
    assert!(wrong.is_empty(), "{form}: {wrong:?}\n{yaml}");
    assert_eq!(got.iter().filter(|(_, ok)| !ok).count(), got.len() - benign().len(), "{form}: every other flow is denied");
}

#[test]
fn recommended_policies_admit_exactly_the_benign_flows() {
    let topology = std::fs::read_to_string(workspace_root().join("deploy/demo/topology.yaml")).expect("demo topology").replace("10.240.", "10.249.");
    let f = LabAgent::new(&topology, "recommend-demo.yaml", false);
    let instance = f.lab.pin_dir().file_name().expect("instance").to_string_lossy().into_owned();

    run_benign(&f);
    // Records reach the log within the agent's tick: wait for one per benign flow at its
    // destination's interface.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = run_bulkhead(&["flows", "--instance", &instance, "--last", "1000", "--verdict", "allowed", "--direction", "ingress", "-o", "jsonl"]);
        if String::from_utf8_lossy(&out.stdout).lines().count() >= benign().len() {
            break;
        }
        assert!(Instant::now() < deadline, "no flow records for the benign traffic: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(200));
    }
    let (staged, _) = recommend(&instance, &f, "calico-staged", "300s");
    eprintln!("recommended (staged) for the demo application:\n{staged}");
    // outside -> frontend is one rule (frontend ingress); each pod-to-pod flow is two.
    assert_eq!(staged.matches("action: Allow").count(), 2 * benign().len() - 1, "{staged}");
    assert_eq!(staged.matches("kind: StagedNetworkPolicy").count(), 3, "{staged}");
    assert!(staged.contains("name: namespace-isolation.frontend") && staged.contains("tier: namespace-isolation"), "{staged}");
    assert!(staged.contains("# 5432/TCP, from the flows shop/api -> data/db."), "{staged}");
    assert!(staged.contains(&format!("nets: [\"{}/32\"]", f.lab.outside().ip)), "{staged}");

    // Same input, same output; and more of the same traffic changes nothing.
    assert_eq!(recommend(&instance, &f, "calico-staged", "300s").0, staged, "asked twice");
    run_benign(&f);
    std::thread::sleep(Duration::from_millis(500));
    let (again, stderr) = recommend(&instance, &f, "calico-staged", "300s");
    assert_eq!(again, staged, "more of the same traffic changed the recommendation");
    assert!(stderr.contains("0 stable") && stderr.contains("not yet stable"), "{stderr}");
    assert!(recommend(&instance, &f, "calico-staged", "0s").1.contains("3 stable"), "a window of 0 s makes every workload stable");

    // The enforced forms now, before any other traffic is seen (the all-pairs check below
    // would otherwise be learned as traffic).
    let enforced: Vec<(&str, String)> = ["calico", "kubernetes"].into_iter().map(|form| (form, recommend(&instance, &f, form, "300s").0)).collect();

    // Staged: judged in the kernel beside enforcement, zero would-deny for benign traffic.
    apply(&f, &staged);
    run_benign(&f);
    let out = run_bulkhead(&["policy", "stats", "--instance", &instance, "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats JSON");
    let ours: Vec<&serde_json::Value> = rows.as_array().expect("rows").iter().filter(|r| r["tier"] == "namespace-isolation").collect();
    assert_eq!(ours.len(), 3, "{rows:#}");
    assert!(ours.iter().all(|r| r["staged"] == true && r["would_deny"] == 0), "benign traffic would be denied: {rows:#}");
    assert!(ours.iter().map(|r| r["would_allow"].as_u64().unwrap_or(0)).sum::<u64>() >= benign().len() as u64, "{rows:#}");
    // Still enforcing nothing.
    assert!(matrix(&f).iter().all(|(_, ok)| *ok), "staged policies must not enforce");

    // Reviewed, then enforced: exactly the benign flows pass, in either form.
    for (form, yaml) in &enforced {
        eprintln!("recommended (-o {form}):\n{yaml}");
        apply(&f, yaml);
        assert_exact(&f, form, yaml);
    }
}
