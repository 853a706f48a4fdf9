//! `bulkhead-adfa --dataset ZIP [--json] [--learning-curve]`: the syscall model and STIDE
//! n = 3..7 on ADFA-LD, side by side (train on Training_Data_Master; normal =
//! Validation_Data_Master, attack = Attack_Data_Master): AUC and detection rate at 1%, 5% and
//! 10% false alarms. `--learning-curve` adds a diagnostic outside that protocol (the model
//! also learns from validation normals; see `bulkhead_detector_eval::learning`).

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
    /// Also print how the figures move when the model learns from more normal traces (a
    /// quarter of the validation normals held out); outside the evaluation protocol.
    #[arg(long)]
    learning_curve: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let context = || format!("evaluating on {}", args.dataset.display());
    let (report, data) = bulkhead_detector_eval::adfa::run_adfa_keeping_data(&args.dataset).with_context(context)?;
    let curve = if args.learning_curve {
        let seed = bulkhead_detector_eval::learning::CURVE_SEED;
        Some(bulkhead_detector_eval::learning_curve(&data, seed).with_context(context)?)
    } else {
        None
    };
    match (args.json, curve) {
        (true, None) => println!("{}", serde_json::to_string_pretty(&report)?),
        (true, Some(curve)) => {
            let doc = serde_json::json!({ "report": report, "learning_curve": curve });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        (false, curve) => {
            println!("{report}");
            if let Some(curve) = curve {
                println!("\n{curve}");
            }
        }
    }
    Ok(())
}
