//! The `bulkhead` command.
use std::{
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bulkhead", version, about = "Microsegmentation dataplane for Kubernetes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: load the eBPF programs, attach them to the pods' interfaces and keep the
    /// maps in step with the datastore until interrupted.
    Agent {
        /// Folder of Kubernetes-style YAML (Namespaces, Pods, NetworkPolicies), watched live.
        #[arg(long)]
        datastore: PathBuf,
        /// Network namespace holding the pods' host-side veths (default: the current one).
        #[arg(long)]
        node_netns: Option<String>,
        /// Instance name: maps are pinned under /sys/fs/bpf/bulkhead/INSTANCE.
        #[arg(long, default_value = "node")]
        instance: String,
    },
    /// Show an agent instance's state from its pinned maps: entries and datapath counters.
    Status {
        /// Instance name (the folder under /sys/fs/bpf/bulkhead).
        #[arg(long, default_value = "node")]
        instance: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Network-namespace lab: pods, echo servers, conformance runner, demo.
    #[command(subcommand)]
    Lab(bulkhead_lab::LabCommand),
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn run_agent(datastore: PathBuf, node_netns: Option<String>, instance: String) -> anyhow::Result<i32> {
    let cfg = bulkhead_agent::AgentConfig {
        datastore_dir: datastore,
        node_netns,
        pin_dir: bulkhead_agent::AgentConfig::default_pin_dir(&instance),
        watch: true,
    };
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as libc::sighandler_t);
    }
    let agent = bulkhead_agent::Agent::start(cfg).context("starting the agent")?;
    eprintln!("bulkhead agent running; Ctrl-C stops it and removes its programs and pins");
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(agent);
    Ok(0)
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BULKHEAD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Agent { datastore, node_netns, instance } => run_agent(datastore, node_netns, instance)?,
        Command::Status { instance, json } => {
            let dir = bulkhead_agent::AgentConfig::default_pin_dir(&instance);
            let st = bulkhead_agent::status::read(&dir)
                .with_context(|| format!("is an agent instance {instance:?} running? (no pins at {})", dir.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                println!("instance {} (pins in {})", instance, st.pin_dir);
                println!("  policy revision   {}", st.policy_rev);
                println!("  endpoints         {}", st.endpoints);
                println!("  ip cache entries  {}", st.ipcache_entries);
                println!("  policy slices     {} (+{} port, {} range exceptions)", st.policy_slices, st.policy_ports, st.policy_ranges);
                println!("  conntrack entries {}", st.conntrack_entries);
                println!("  datapath counters:");
                for (k, v) in &st.counters {
                    println!("    {k:<34} {v}");
                }
            }
            0
        }
        Command::Lab(cmd) => bulkhead_lab::run(cmd)?,
    };
    std::process::exit(code);
}
