//! Bulkhead lab (being written).
use clap::Subcommand;

/// `bulkhead lab` subcommands.
#[derive(Subcommand, Debug)]
pub enum LabCommand {
    /// Placeholder until the lab lands.
    Cleanup,
}

/// Runs a lab subcommand; returns the process exit code.
pub fn run(_cmd: LabCommand) -> anyhow::Result<i32> {
    anyhow::bail!("the lab is not written yet")
}
