//! The `fw-sync` command.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use fw_sync::config::DaemonConfig;

/// Keeps firewall address groups in step with pod IPs.
#[derive(Parser)]
#[command(name = "fw-sync", version)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Runs the daemon: syncs on every datastore change and reconciles periodically.
    Run {
        /// Daemon config file.
        #[arg(long)]
        config: PathBuf,
        /// Print the diff that would be applied, apply nothing, and exit.
        #[arg(long)]
        dry_run: bool,
        /// `kubernetes`: read pods, namespaces and AddressGroups from the Kubernetes API
        /// (overrides the config file's `datastore`); or a folder.
        #[arg(long)]
        datastore: Option<PathBuf>,
        /// With the Kubernetes datastore: the kubeconfig (default: KUBECONFIG, ~/.kube/config,
        /// then in-cluster).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// With the Kubernetes datastore: write to the firewalls only while holding this
        /// coordination.k8s.io Lease (NAMESPACE/NAME), so one replica writes at a time.
        #[arg(long)]
        leader_lease: Option<String>,
    },
    /// Prints the groups, their members and each firewall's drift.
    Status {
        /// Daemon config file.
        #[arg(long)]
        config: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Cmd::Run { config, dry_run, datastore, kubeconfig, leader_lease } => {
            let mut cfg = DaemonConfig::load(&config)?;
            match datastore {
                Some(d) if d.as_os_str() == "kubernetes" => cfg.kubernetes = Some(cfg.kubernetes.unwrap_or_default()),
                Some(d) => {
                    cfg.datastore = d;
                    cfg.kubernetes = None;
                }
                None => {}
            }
            if kubeconfig.is_some() || leader_lease.is_some() {
                let k = cfg.kubernetes.as_mut().context("--kubeconfig and --leader-lease need the Kubernetes datastore")?;
                if kubeconfig.is_some() {
                    k.kubeconfig = kubeconfig;
                }
                if let Some(l) = leader_lease {
                    let (ns, name) = l.split_once('/').context("--leader-lease: expected NAMESPACE/NAME")?;
                    // The pod name (the downward API sets POD_NAME), else the host name.
                    let identity = std::env::var("POD_NAME")
                        .ok()
                        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()))
                        .unwrap_or_else(|| format!("fw-sync-{}", std::process::id()));
                    k.election = Some(bulkhead_kube::lease::Election::new(ns, name, &identity));
                }
            }
            if dry_run && cfg.kubernetes.is_some() {
                anyhow::bail!("--dry-run reads the datastore folder; it does not support the Kubernetes datastore yet");
            }
            if dry_run {
                print!("{}", fw_sync::daemon::dry_run(cfg)?);
                return Ok(());
            }
            fw_sync::daemon::run(cfg).with_context(|| format!("fw-sync run --config {}", config.display()))
        }
        Cmd::Status { config } => {
            let cfg = DaemonConfig::load(&config)?;
            print!("{}", fw_sync::daemon::status(cfg)?);
            Ok(())
        }
    }
}
