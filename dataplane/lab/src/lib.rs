//! Bulkhead lab: pods as network namespaces with veths and cgroups, echo servers, real-packet
//! probes, a datastore writer for the agent, the conformance runner and the demo.
//!
//! Every lab has a random 5-hex-digit id; all it creates (netns `bh-<id>-*`, veths `bh<id>*`,
//! cgroups `bh-<id>`, pins `/sys/fs/bpf/bulkhead/bh-<id>`) carries it, so labs run in parallel.
use std::path::PathBuf;

use clap::Subcommand;

pub mod case;
pub mod datastore;
pub mod demo;
pub mod error;
pub mod kube;
pub mod lab;
pub mod matrix;
pub mod netns;
pub mod probe;
pub mod rtnl;
pub mod runner;
pub mod scenario;
pub mod server;
pub mod soak;
pub mod teardown;
pub mod topology;

/// The agent the lab starts (its detector API is used by the detector's tests and benchmark).
pub use bulkhead_agent as agent;
pub use error::{LabError, Result};
pub use lab::{Lab, LabOptions, PodNetns};
pub use topology::{Protocol, Topology};

/// `bulkhead lab` subcommands.
#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// Echo server (run inside a pod by the lab): TCP and UDP echo on 0.0.0.0.
    Serve {
        /// TCP ports, comma-separated.
        #[arg(long, value_delimiter = ',')]
        tcp: Vec<u16>,
        /// UDP ports, comma-separated.
        #[arg(long, value_delimiter = ',')]
        udp: Vec<u16>,
    },
    /// Run conformance cases (files, or folders of `kind: Case` files) against the agent.
    Conformance {
        /// Case files or folders.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Print a JSON report on stdout (progress goes to stderr).
        #[arg(long)]
        json: bool,
        /// Do not fail the run because of unsupported cases.
        #[arg(long)]
        allow_unsupported: bool,
        /// Cases run concurrently, each in its own lab.
        #[arg(long, default_value_t = 3)]
        jobs: usize,
        /// Where the agent reads each case's state: `files` (a folder of YAML) or
        /// `kubernetes` (every step written through an API-server emulator and read by the
        /// agent's Kubernetes datastore).
        #[arg(long, value_enum, default_value_t = runner::DatastoreKind::Files)]
        datastore: runner::DatastoreKind,
        /// With `--datastore kubernetes`: after every write, break the agent's watches and
        /// compact the API history, so each change arrives through a 410 Gone and a relist.
        #[arg(long)]
        force_relist: bool,
    },
    /// Demo: a shop with frontend, api and db; reachability before and after policy.
    Demo {
        /// Folder with topology.yaml, policies/ and expected.yaml (default deploy/demo).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Serve the demo's service map at http://ADDR/ (e.g. 127.0.0.1:9965) and keep the
        /// lab up after the demo until Ctrl-C.
        #[arg(long, value_name = "ADDR")]
        ui: Option<std::net::SocketAddr>,
    },
    /// Build a lab from a topology file and keep it running with the agent watching its
    /// datastore folder (write policy files there); Ctrl-C tears everything down.
    Up {
        /// Topology file (the conformance topology format).
        topology: PathBuf,
    },
    /// Validate a topology file and print a summary.
    Topology {
        /// The file.
        file: PathBuf,
    },
    /// Detector soak: learn a benign workload (HTTP-like server and client, a cron-like job),
    /// then run it under protect (kill + isolate) for N minutes and report every action taken,
    /// the client's requests and the probes' event drops. Exits 1 on any action or failure.
    Soak {
        /// Length of the protect phase in minutes (fractions allowed).
        #[arg(long, default_value_t = 30.0)]
        minutes: f64,
        /// Length of the learn phase in seconds (default: a quarter of the protect phase,
        /// within 5..=60).
        #[arg(long)]
        learn_secs: Option<f64>,
        /// Print the report as JSON on stdout (progress goes to stderr).
        #[arg(long)]
        json: bool,
        /// Negative control for tests: run one binary outside the profile during protect.
        #[arg(long, hide = true)]
        inject_violation: bool,
    },
    /// The soak's HTTP-like server (run inside a pod by `lab soak`).
    #[command(hide = true)]
    SoakServe {
        #[arg(long)]
        port: u16,
    },
    /// The soak's client (run inside a pod by `lab soak`).
    #[command(hide = true)]
    SoakClient {
        #[arg(long)]
        to: std::net::SocketAddr,
        #[arg(long)]
        interval_ms: u64,
    },
    /// Remove leftovers of crashed labs (netns, cgroups, pins, state).
    Cleanup {
        /// Only this lab id (default: every `bh-*`).
        #[arg(long)]
        id: Option<String>,
    },
}

/// Runs a lab subcommand; returns the process exit code.
pub fn run(cmd: LabCommand) -> anyhow::Result<i32> {
    match cmd {
        LabCommand::Serve { tcp, udp } => {
            server::serve(&tcp, &udp)?;
            Ok(0)
        }
        LabCommand::Conformance { paths, json, allow_unsupported, jobs, datastore, force_relist } => {
            teardown::install_signal_teardown();
            let opts = runner::RunOptions { allow_unsupported, jobs, text_on_stdout: !json, lab: LabOptions::default(), datastore, force_relist };
            let report = runner::run(&paths, &opts)?;
            let summary = format!(
                "{} passed, {} failed, {} unsupported in {:.1}s",
                report.passed,
                report.failed,
                report.unsupported,
                report.wall_ms as f64 / 1000.0
            );
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                eprintln!("{summary}");
            } else {
                println!("{summary}");
            }
            Ok(report.exit_code(allow_unsupported))
        }
        LabCommand::Demo { dir, ui } => {
            teardown::install_signal_teardown();
            let res = demo::run_with_ui(&demo::demo_dir(dir), &LabOptions::default(), ui);
            teardown::park_if_shutting_down();
            Ok(res?)
        }
        LabCommand::Up { topology } => {
            teardown::install_signal_teardown();
            up(&topology)?;
            Ok(0)
        }
        LabCommand::Soak { minutes, learn_secs, json, inject_violation } => {
            anyhow::ensure!(minutes.is_finite() && minutes >= 0.0, "--minutes: {minutes} is not a length");
            teardown::install_signal_teardown();
            let res = soak::run(&soak::SoakOptions { minutes, learn_secs, inject_violation }, &LabOptions::default());
            teardown::park_if_shutting_down();
            let report = res?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
                eprintln!("{}", if report.passed() { "soak PASSED".to_string() } else { format!("soak FAILED: {}", report.failures.join("; ")) });
            } else {
                println!("{report}");
            }
            Ok(if report.passed() { 0 } else { 1 })
        }
        LabCommand::SoakServe { port } => {
            soak::serve(port)?;
            Ok(0)
        }
        LabCommand::SoakClient { to, interval_ms } => {
            soak::client(to, std::time::Duration::from_millis(interval_ms))?;
            Ok(0)
        }
        LabCommand::Topology { file } => {
            let t = Topology::load(&file)?;
            println!("{}: topology {:?}: {} namespaces, {} pods, {} default ports", file.display(), t.name, t.namespaces.len(), t.pods.len(), t.ports.len());
            Ok(0)
        }
        LabCommand::Cleanup { id } => {
            let n = teardown::cleanup(id.as_deref());
            println!("removed {n} leftover object(s)");
            Ok(0)
        }
    }
}

/// `bulkhead lab up`: runs until interrupted (the signal thread tears the lab down and exits).
fn up(topology: &std::path::Path) -> anyhow::Result<()> {
    let topo = Topology::load(topology)?;
    let lab = Lab::create(&topo, &LabOptions::default())?;
    let mut ds = datastore::Datastore::for_lab(&lab);
    ds.flush()?;
    let agent = lab.start_agent(true)?;
    let instance = lab.pin_dir().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    println!("lab {} is up (node netns {}):", lab.id(), lab.node_netns());
    println!("  {:<28} {:<15} {:<18} {:<14} cgroup", "POD", "IP", "NETNS", "HOST VETH");
    for p in lab.pods().iter().chain(std::iter::once(lab.outside())) {
        let cg = p.cgroup.as_ref().map(|c| c.display().to_string()).unwrap_or_else(|| "-".into());
        println!("  {:<28} {:<15} {:<18} {:<14} {cg}", p.key, p.ip.to_string(), p.netns, p.host_veth);
    }
    println!("datastore (watched by the agent): {}", lab.datastore_dir().display());
    println!("  write NetworkPolicy / Calico / AdminNetworkPolicy YAML there; changes apply at once");
    println!("try: ip netns exec {} nc -zv <pod ip> <port>", lab.pods().first().map(|p| p.netns.as_str()).unwrap_or("<netns>"));
    println!("     bulkhead status --instance {instance}; bulkhead policy stats --instance {instance}; bulkhead flows --instance {instance}");
    println!("Ctrl-C tears the lab down.");
    let _keep = (lab, agent);
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
