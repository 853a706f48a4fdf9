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
        Cmd::Run { config, dry_run } => {
            let cfg = DaemonConfig::load(&config)?;
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
