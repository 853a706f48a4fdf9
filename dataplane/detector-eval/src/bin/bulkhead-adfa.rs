//! `bulkhead-adfa --dataset ZIP [--json]`: the syscall model and STIDE n = 3..7 on ADFA-LD,
//! side by side (train on Training_Data_Master; normal = Validation_Data_Master, attack =
//! Attack_Data_Master): AUC and detection rate at 1%, 5% and 10% false alarms.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;

#[derive(Parser)]
#[command(about = "Evaluate Bulkhead's syscall model on ADFA-LD")]
struct Args {
    /// The ADFA-LD zip.
    #[arg(long)]
    dataset: PathBuf,
    #[arg(long)]
    json: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let report = bulkhead_detector_eval::run_adfa(&args.dataset).with_context(|| format!("evaluating on {}", args.dataset.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}
