//! The conformance runner: every case in its own lab, real probes, matrices compared.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde::Serialize;

use policy_compiler::k8s::is_supported;
use crate::case::{Case, PortRef, Step};
use crate::datastore::Datastore;
use crate::error::{LabError, Result};
use crate::lab::{Lab, LabOptions};
use crate::matrix::{Matrix, Verdict};
use crate::probe::{PROBE_TIMEOUT, ProbeJob, probe_all};
use crate::topology::{Protocol, Topology};

/// Runner options.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Unsupported cases do not make the run fail.
    pub allow_unsupported: bool,
    /// Cases run concurrently.
    pub jobs: usize,
    /// Print progress as text on stdout (false: on stderr, leaving stdout to JSON).
    pub text_on_stdout: bool,
    /// Lab options for every case.
    pub lab: LabOptions,
    /// Where the agent reads the case's state.
    pub datastore: DatastoreKind,
    /// Kubernetes only: every change arrives through a 410 Gone and a relist.
    pub force_relist: bool,
}

/// The agent's datastore in a conformance run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DatastoreKind {
    /// A folder of YAML files.
    #[default]
    Files,
    /// The Kubernetes API (an emulator per case).
    Kubernetes,
}

/// Outcome of one case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Every probe matched.
    Passed,
    /// Some probe did not match.
    Failed,
    /// Uses kinds the agent does not support; not run.
    Unsupported,
    /// Could not be run (bad input, lab or agent error); counts as a failure.
    Error,
}

/// One differing pair.
#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    /// Source.
    pub from: String,
    /// Destination.
    pub to: String,
    /// What the case expects.
    pub expected: Verdict,
    /// What the probe saw.
    pub observed: Verdict,
}

/// Report of one probe step.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// Index in the case's `steps`.
    pub step: usize,
    /// `port/protocol`.
    pub probe: String,
    /// Pairs probed.
    pub probed: usize,
    /// Pairs skipped (named port missing on the destination).
    pub skipped: usize,
    /// Differences.
    pub mismatches: Vec<Mismatch>,
}

/// Report of one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    /// Case name (the file stem if the file could not be parsed).
    pub name: String,
    /// Case file.
    pub file: PathBuf,
    /// Outcome.
    pub status: Status,
    /// The lab's id, if one was created.
    pub lab_id: Option<String>,
    /// Error message for `error`.
    pub error: Option<String>,
    /// `apiVersion/kind` the agent does not support.
    pub unsupported_kinds: Vec<String>,
    /// Probe steps.
    pub steps: Vec<StepReport>,
    /// Wall time.
    pub duration_ms: u64,
}

/// Report of a whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Cases in input order.
    pub cases: Vec<CaseReport>,
    /// Passed cases.
    pub passed: usize,
    /// Failed or errored cases.
    pub failed: usize,
    /// Unsupported cases.
    pub unsupported: usize,
    /// Wall time of the run.
    pub wall_ms: u64,
}

impl Report {
    /// 0 if everything passed (unsupported allowed or absent), else 1.
    pub fn exit_code(&self, allow_unsupported: bool) -> i32 {
        if self.failed > 0 || (self.unsupported > 0 && !allow_unsupported) || self.cases.is_empty() { 1 } else { 0 }
    }
}

/// Expands paths: files are taken as given, folders contribute every `*.yaml` with `kind: Case`.
pub fn collect_cases(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| LabError::io(p, e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "yaml"))
                .collect();
            files.sort();
            for f in files {
                let text = std::fs::read_to_string(&f).map_err(|e| LabError::io(&f, e))?;
                if Case::is_case_file(&text) {
                    out.push(f);
                }
            }
        } else {
            std::fs::metadata(p).map_err(|e| LabError::io(p, e))?;
            out.push(p.clone());
        }
    }
    Ok(out)
}

/// Finds the topology named `name` beside `case_file`: `<name>.yaml` first, then any
/// `kind: Topology` file in the folder with that `name:`.
pub fn find_topology(case_file: &Path, name: &str) -> Result<Topology> {
    let dir = case_file.parent().unwrap_or(Path::new("."));
    let direct = dir.join(format!("{name}.yaml"));
    if direct.exists() {
        let t = Topology::load(&direct)?;
        if t.name == name {
            return Ok(t);
        }
    }
    let rd = std::fs::read_dir(dir).map_err(|e| LabError::io(dir, e))?;
    for f in rd.filter_map(|e| e.ok().map(|e| e.path())) {
        if f.extension().is_some_and(|x| x == "yaml") && f != direct {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            if text.lines().any(|l| l.trim_end() == "kind: Topology") && text.lines().any(|l| l.trim_end() == format!("name: {name}")) {
                return Topology::load(&f);
            }
        }
    }
    Err(LabError::invalid(&case_file.display().to_string(), "topology", format!("no topology named {name:?} in {}", dir.display())))
}

/// Runs every case (up to `opts.jobs` at once) and prints progress.
pub fn run(paths: &[PathBuf], opts: &RunOptions) -> Result<Report> {
    let started = Instant::now();
    let files = collect_cases(paths)?;
    let slots: Vec<Mutex<Option<CaseReport>>> = files.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    let print = Mutex::new(());
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.max(1).min(files.len().max(1)) {
            s.spawn(|| {
                loop {
                    if crate::teardown::shutting_down() {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(file) = files.get(i) else { break };
                    let mut text = String::new();
                    let rep = run_file(file, opts, &mut text);
                    let _g = print.lock().unwrap();
                    if opts.text_on_stdout {
                        print!("{text}");
                        std::io::stdout().flush().ok();
                    } else {
                        eprint!("{text}");
                    }
                    *slots[i].lock().unwrap() = Some(rep);
                }
            });
        }
    });
    crate::teardown::park_if_shutting_down();
    let cases: Vec<CaseReport> = slots.into_iter().map(|m| m.into_inner().unwrap().expect("every case ran")).collect();
    let count = |st: &[Status]| cases.iter().filter(|c| st.contains(&c.status)).count();
    Ok(Report {
        passed: count(&[Status::Passed]),
        failed: count(&[Status::Failed, Status::Error]),
        unsupported: count(&[Status::Unsupported]),
        wall_ms: started.elapsed().as_millis() as u64,
        cases,
    })
}

/// Loads and runs one case file; all output goes to `out`.
fn run_file(file: &Path, opts: &RunOptions, out: &mut String) -> CaseReport {
    let started = Instant::now();
    let mut rep = CaseReport {
        name: file.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
        file: file.to_path_buf(),
        status: Status::Error,
        lab_id: None,
        error: None,
        unsupported_kinds: Vec::new(),
        steps: Vec::new(),
        duration_ms: 0,
    };
    let result = Case::load(file).and_then(|case| {
        rep.name = case.name.clone();
        rep.unsupported_kinds = case
            .applied_types()
            .into_iter()
            .filter(|(a, k)| !is_supported(a, k))
            .map(|(a, k)| format!("{a}/{k}"))
            .collect();
        if !rep.unsupported_kinds.is_empty() {
            rep.status = Status::Unsupported;
            return Ok(());
        }
        let topo = find_topology(file, &case.topology)?;
        run_case(&case, &topo, opts, &mut rep, out)
    });
    rep.duration_ms = started.elapsed().as_millis() as u64;
    let secs = rep.duration_ms as f64 / 1000.0;
    match result {
        Err(e) => {
            rep.status = Status::Error;
            rep.error = Some(e.to_string());
            *out = format!("ERROR {} ({secs:.1}s): {e}\n{out}", rep.name);
        }
        Ok(()) if rep.status == Status::Unsupported => {
            *out = format!("UNSUPPORTED {}: {}\n", rep.name, rep.unsupported_kinds.join(", "));
        }
        Ok(()) => {
            let failed = rep.steps.iter().any(|s| !s.mismatches.is_empty());
            rep.status = if failed { Status::Failed } else { Status::Passed };
            *out = format!("{} {} ({secs:.1}s)\n{out}", if failed { "FAIL" } else { "PASS" }, rep.name);
        }
    }
    rep
}

/// Runs a loaded case in a fresh lab, appending probe steps to `rep` and details to `out`.
pub fn run_case(case: &Case, topo: &Topology, opts: &RunOptions, rep: &mut CaseReport, out: &mut String) -> Result<()> {
    let lab = Lab::create(topo, &opts.lab)?;
    rep.lab_id = Some(lab.id().to_string());
    let mut ds = Datastore::for_lab(&lab);
    let mut kube = match opts.datastore {
        DatastoreKind::Files => {
            ds.flush()?;
            None
        }
        DatastoreKind::Kubernetes => Some(crate::kube::KubeLab::start(&lab, &mut ds, opts.force_relist)?),
    };
    // Declared after `lab` and `kube`, so it is dropped (programs detached) before they go.
    let agent = match kube.as_mut() {
        None => lab.start_agent(false)?,
        Some(k) => k.start_agent(&lab, false)?,
    };
    for (i, step) in case.steps.iter().enumerate() {
        let changed = match step {
            Step::Apply(text) => ds.apply(text).map(|_| ()),
            Step::Delete(refs) => ds.delete(refs),
            Step::Label { target, set, remove } => ds.label(target, set, remove),
            Step::Probe { port, protocol, ipv6, expect } => {
                let (expected, observed, skipped) = probe_step(&lab, port, *protocol, *ipv6, expect);
                let diff = expected.diff(&observed);
                let probe = if *ipv6 { format!("{port}/{protocol}/IPv6") } else { format!("{port}/{protocol}") };
                if !diff.is_empty() {
                    out.push_str(&format!("  step {i} probe {probe}: {} pair(s) differ\n", diff.len()));
                    for block in [expected.render("  expected:", None), observed.render("  observed (* = differs):", Some(&expected))] {
                        for l in block.lines() {
                            out.push_str(&format!("    {l}\n"));
                        }
                    }
                    for (f, t, e, o) in &diff {
                        out.push_str(&format!("    {f} -> {t}: expected {e:?}, observed {o:?}\n"));
                    }
                }
                let probed = expected.cells.iter().flatten().flatten().count();
                rep.steps.push(StepReport {
                    step: i,
                    probe,
                    probed,
                    skipped,
                    mismatches: diff.into_iter().map(|(from, to, expected, observed)| Mismatch { from, to, expected, observed }).collect(),
                });
                continue;
            }
        };
        changed.map_err(|e| LabError::invalid(&case.file.display().to_string(), format!("steps[{i}]"), e))?;
        match &kube {
            None => ds.flush()?,
            Some(k) => k.push(&mut ds).map_err(|e| LabError::Agent(format!("steps[{i}]: {e}")))?,
        }
        agent.sync_now().map_err(|e| LabError::Agent(format!("steps[{i}]: {e}")))?;
    }
    drop(agent);
    drop(kube);
    drop(lab);
    Ok(())
}

/// Probes every ordered pair of pods (between their IPv6 addresses with `ipv6`); returns
/// (expected, observed, skipped pairs).
fn probe_step(lab: &Lab, port: &PortRef, protocol: Protocol, ipv6: bool, expect: &crate::matrix::Expect) -> (Matrix, Matrix, usize) {
    let topo = lab.topology();
    let keys: Vec<String> = lab.pods().iter().map(|p| p.key.clone()).collect();
    let mut expected = Matrix::expand(expect, &keys, &keys);
    let mut jobs = Vec::new();
    let mut cells = Vec::new();
    let mut skipped = 0;
    for (r, from) in lab.pods().iter().enumerate() {
        for (c, to) in lab.pods().iter().enumerate() {
            if r == c {
                continue;
            }
            let number = match port {
                PortRef::Number(n) => Some(*n),
                // As upstream (cyclonus/policy-assistant), a destination without the named
                // port is not probed rather than counted as a deny.
                PortRef::Name(name) => topo
                    .ports_of(&topo.pods[c])
                    .iter()
                    .find(|p| p.name.as_deref() == Some(name.as_str()) && p.protocol == protocol)
                    .map(|p| p.port),
            };
            // FORMAT.md: an IPv6 probe skips pairs where either pod has no IPv6 address.
            let to_ip: Option<std::net::IpAddr> = if !ipv6 {
                Some(to.ip.into())
            } else if from.ip6.is_some() {
                to.ip6.map(Into::into)
            } else {
                None
            };
            match number.zip(to_ip) {
                Some((n, to_ip)) => {
                    jobs.push(ProbeJob { from_netns: from.netns.clone(), to_ip, port: n, protocol });
                    cells.push((r, c));
                }
                None => {
                    expected.cells[r][c] = None;
                    skipped += 1;
                }
            }
        }
    }
    let results = probe_all(&jobs, PROBE_TIMEOUT);
    let mut observed = Matrix { from: keys.clone(), to: keys, cells: expected.cells.iter().map(|row| vec![None; row.len()]).collect() };
    for ((r, c), ok) in cells.into_iter().zip(results) {
        observed.cells[r][c] = Some(Verdict::from_reachable(ok));
    }
    (expected, observed, skipped)
}
