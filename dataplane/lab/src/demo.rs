//! `bulkhead lab demo`: a three-tier shop, reachability before and after policy.
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::datastore::Datastore;
use crate::error::{LabError, Result};
use crate::lab::{Lab, LabOptions};
use crate::matrix::{Expect, Matrix, Verdict};
use crate::probe::{PROBE_TIMEOUT, ProbeJob, probe_all};
use crate::topology::Topology;

#[derive(Deserialize)]
struct Expected {
    before: Expect,
    after: Expect,
}

/// Finds the demo folder: the given one, else `deploy/demo` under the working directory or the
/// source tree.
pub fn demo_dir(given: Option<PathBuf>) -> PathBuf {
    if let Some(d) = given {
        return d;
    }
    let cwd = PathBuf::from("deploy/demo");
    if cwd.exists() {
        return cwd;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/demo")
}

/// Runs the demo; returns the exit code (1 on any unexpected cell).
pub fn run(dir: &Path, lab_opts: &LabOptions) -> Result<i32> {
    run_with_ui(dir, lab_opts, None)
}

/// As [`run`]; with `ui`, also serves the demo lab's service map at `http://UI/` and, after the
/// demo, keeps the lab up until Ctrl-C (the signal thread tears it down and exits, as for
/// `lab up`), so the map can be looked at.
pub fn run_with_ui(dir: &Path, lab_opts: &LabOptions, ui: Option<std::net::SocketAddr>) -> Result<i32> {
    let topo = Topology::load(&dir.join("topology.yaml"))?;
    let exp_path = dir.join("expected.yaml");
    let exp_text = std::fs::read_to_string(&exp_path).map_err(|e| LabError::io(&exp_path, e))?;
    let expected: Expected =
        serde_yaml::from_str(&exp_text).map_err(|source| LabError::Yaml { file: exp_path.display().to_string(), source })?;
    let mut policies: Vec<PathBuf> = std::fs::read_dir(dir.join("policies"))
        .map_err(|e| LabError::io(dir.join("policies"), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    policies.sort();

    println!("building lab from {} ...", dir.join("topology.yaml").display());
    let lab = Lab::create(&topo, lab_opts)?;
    println!("lab {}: {} pods + outside client; node netns {}", lab.id(), lab.pods().len(), lab.node_netns());
    let mut ds = Datastore::for_lab(&lab);
    ds.flush()?;
    let agent = lab.start_agent(false)?;
    // Bound before the probes: a port already taken fails now, not after them.
    let map_server = match ui {
        Some(addr) => Some(
            bulkhead_agent::servicemap::serve(&addr.to_string(), lab.agent_config(false).state_dir()).map_err(|e| LabError::Agent(e.to_string()))?,
        ),
        None => None,
    };

    let before = probe_matrix(&lab);
    let exp_before = expect_over(&expected.before, &before);
    println!("\n{}", before.render("before policy (rows = from, columns = to; . allow, X deny, * unexpected):", Some(&exp_before)));

    for p in &policies {
        let text = std::fs::read_to_string(p).map_err(|e| LabError::io(p, e))?;
        ds.apply(&text).map_err(|e| LabError::invalid(&p.display().to_string(), "document", e))?;
        println!("applied {}", p.display());
    }
    ds.flush()?;
    agent.sync_now().map_err(|e| LabError::Agent(e.to_string()))?;

    let after = probe_matrix(&lab);
    let exp_after = expect_over(&expected.after, &after);
    println!("\n{}", after.render("after policy:", Some(&exp_after)));

    let mut unexpected = exp_before.diff(&before);
    let after_diff = exp_after.diff(&after);
    for (f, t, e, o) in unexpected.iter().map(|d| ("before", d)).chain(after_diff.iter().map(|d| ("after", d))).map(|(w, (f, t, e, o))| (format!("{w}: {f}"), t, e, o)) {
        println!("unexpected {f} -> {t}: expected {e:?}, observed {o:?}");
    }
    unexpected.extend(after_diff);
    let (allowed, denied) = after.counts();
    let verdict = if unexpected.is_empty() { "policy enforced" } else { "POLICY NOT AS EXPECTED" };
    println!("{verdict}: {allowed} allowed, {denied} denied, {} unexpected", unexpected.len());
    match &map_server {
        Some(server) => {
            println!("service map: http://{}/ (Ctrl-C ends the demo and tears the lab down)", server.addr());
            loop {
                std::thread::sleep(std::time::Duration::from_secs(3600));
            }
        }
        None => println!("service map of these flows: bulkhead lab demo --ui 127.0.0.1:9965, then open http://127.0.0.1:9965/"),
    }
    drop(agent);
    drop(lab);
    Ok(if unexpected.is_empty() { 0 } else { 1 })
}

/// Rows = every pod and the outside client, columns = pods; each cell probes the destination's
/// first served port.
fn probe_matrix(lab: &Lab) -> Matrix {
    let topo = lab.topology();
    let sources: Vec<_> = lab.pods().iter().chain(std::iter::once(lab.outside())).collect();
    let from: Vec<String> = sources.iter().map(|p| p.key.clone()).collect();
    let to: Vec<String> = lab
        .pods()
        .iter()
        .zip(&topo.pods)
        .map(|(ep, pod)| match topo.ports_of(pod).first() {
            Some(p) => format!("{}:{}/{}", ep.key, p.port, p.protocol),
            None => ep.key.clone(),
        })
        .collect();
    let mut jobs = Vec::new();
    let mut at = Vec::new();
    let mut cells = vec![vec![None; to.len()]; from.len()];
    for (r, src) in sources.iter().enumerate() {
        for (c, (dst, pod)) in lab.pods().iter().zip(&topo.pods).enumerate() {
            if src.key == dst.key {
                continue;
            }
            if let Some(p) = topo.ports_of(pod).first() {
                jobs.push(ProbeJob { from_netns: src.netns.clone(), to_ip: dst.ip.into(), port: p.port, protocol: p.protocol });
                at.push((r, c));
            }
        }
    }
    for ((r, c), ok) in at.into_iter().zip(probe_all(&jobs, PROBE_TIMEOUT)) {
        cells[r][c] = Some(Verdict::from_reachable(ok));
    }
    Matrix { from, to, cells }
}

/// The expected matrix over the same rows and columns (columns matched by their pod key).
fn expect_over(expect: &Expect, observed: &Matrix) -> Matrix {
    let to_keys: Vec<String> = observed.to.iter().map(|t| t.split(':').next().unwrap_or(t).to_string()).collect();
    let mut m = Matrix::expand(expect, &observed.from, &to_keys);
    m.to = observed.to.clone();
    for (r, row) in m.cells.iter_mut().enumerate() {
        for (c, cell) in row.iter_mut().enumerate() {
            if observed.cells[r][c].is_none() {
                *cell = None;
            }
        }
    }
    m
}
