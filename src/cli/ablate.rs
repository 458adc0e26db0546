//! `msclip ablate`: both papers' ablations at tiny scale, at equal wall-clock budget per run.

use std::path::PathBuf;

use clap::Args;
use msclip::train::ablation::{self, AblationConfig, AblationReport};

#[derive(Args)]
pub struct AblateArgs {
    /// Arms to run, comma-separated, or all: clip, msclip, msclip-early, msclip-s, oner-itc,
    /// oner-xmc, oner-xmc-cic, oner-xmc-masked.
    #[arg(long, default_value = "all")]
    arms: String,
    /// Seeds, comma-separated; each arm trains once per seed.
    #[arg(long, default_value = "0,1,2", value_delimiter = ',')]
    seeds: Vec<u64>,
    /// Training seconds per run: each arm trains the steps this buys at its measured step time.
    #[arg(long, default_value_t = 120.0)]
    budget: f64,
    /// Steps timed per arm to measure its step time, their median (after one warm-up step).
    #[arg(long, default_value_t = 10)]
    timed_steps: u64,
    /// Train each arm the steps an earlier report (ablations.json) gave it, instead of measuring.
    #[arg(long)]
    steps_of: Option<PathBuf>,
    /// Where the runs (<arm>-s<seed>) and ablations.json / ablations.md go.
    #[arg(long, default_value = "runs/ablations")]
    output: PathBuf,
    /// Images per evaluation split.
    #[arg(long, default_value_t = 1000)]
    eval_samples: usize,
    /// Pairs per batch [default: the presets' 128].
    #[arg(long)]
    batch_size: Option<usize>,
}

pub fn run(args: AblateArgs) -> anyhow::Result<()> {
    let steps_of = match &args.steps_of {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("--steps-of {}: cannot read it: {e}", path.display()))?;
            let report: AblationReport = serde_json::from_str(&text)
                .map_err(|e| anyhow::anyhow!("--steps-of {}: not an ablations.json: {e}", path.display()))?;
            Some(report.steps())
        }
        None => None,
    };
    let config = AblationConfig {
        arms: ablation::arms(&args.arms)?,
        seeds: args.seeds,
        budget_seconds: args.budget,
        timed_steps: args.timed_steps.max(1),
        steps_of,
        output_dir: args.output.clone(),
        eval_samples: args.eval_samples,
        batch_size: args.batch_size,
    };
    let report = ablation::run(&config, |line| println!("{line}"))?;
    std::fs::create_dir_all(&args.output)?;
    ablation::write_report(&report, &args.output)?;
    println!("\n{}", ablation::markdown(&report));
    println!("written: {} and ablations.md", args.output.join("ablations.json").display());
    Ok(())
}
