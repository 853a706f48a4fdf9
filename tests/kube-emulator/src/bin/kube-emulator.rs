//! Runs the Kubernetes API-server emulator on its own, for kubectl and other clients.
use std::time::Duration;

use clap::Parser;

/// A Kubernetes API-server emulator (see the crate's docs for what it covers).
#[derive(Parser)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Write a kubeconfig for the emulator to this file.
    #[arg(long)]
    kubeconfig: Option<std::path::PathBuf>,
    /// Seconds between bookmarks on an idle watch.
    #[arg(long, default_value_t = 1.0)]
    bookmark_every: f64,
    /// Events kept for resuming watches.
    #[arg(long, default_value_t = 10_000)]
    history: usize,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let emu = bulkhead_kube_emulator::Emulator::start_with(bulkhead_kube_emulator::Options {
        listen: a.listen,
        bookmark_every: Duration::from_secs_f64(a.bookmark_every),
        history: a.history,
    })?;
    if let Some(p) = &a.kubeconfig {
        std::fs::write(p, emu.kubeconfig())?;
    }
    println!("{}", emu.url());
    use std::io::Write as _;
    std::io::stdout().flush()?;
    loop {
        std::thread::park();
    }
}
