//! Both papers' ablations at tiny scale (`msclip ablate`): each arm (a preset and its training
//! objectives) trains for the same wall-clock budget on this machine, on several seeds, and is
//! evaluated on everything `msclip eval` reports; the table gives each metric's mean and spread
//! over the seeds.
//!
//! Equal wall clock, reproducibly: each arm's seconds per step are measured first (a few steps
//! after a warm-up, on the arm's real batches), and the arm trains `budget / seconds per step`
//! steps under the default cosine schedule. The step counts go in the report, so a rerun with
//! `--steps-of` the same report trains the same steps on any machine; the measured seconds say
//! what the budget bought here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use super::log::read_jsonl;
use super::run::{RunOptions, new_run_tokenizer, train};
use super::run_dir::read_run_config;
use super::step::Steps;
use crate::error::{Error, Result};
use crate::model::{ClipModel, Objectives, preset};

/// One configuration of the ablation: a tiny preset trained with some objectives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arm {
    pub name: &'static str,
    pub preset: &'static str,
    /// `--loss` of the arm.
    pub loss: &'static str,
    /// What the arm stands for in the papers.
    pub what: &'static str,
}

/// MS-CLIP's ladder (table 1 of the paper: no sharing, sharing, early specialisation, the
/// parallel branch) and OneR's (the naive one-tower contrast, then the mixup contrasts, then
/// the masked terms of the talk's recipe). OneR's arms keep ITC beside XMC: XMC alone collapses
/// at this scale (docs/oner.md).
pub const ARMS: [Arm; 8] = [
    Arm { name: "clip", preset: "tiny-clip", loss: "itc", what: "CLIP: two towers, nothing shared" },
    Arm { name: "msclip", preset: "tiny-msclip", loss: "itc", what: "MS-CLIP: attention and MLP shared" },
    Arm {
        name: "msclip-early",
        preset: "tiny",
        loss: "itc",
        what: "+ early specialisation (conv stem, own first text layer)",
    },
    Arm { name: "msclip-s", preset: "tiny-msclip-s", loss: "itc", what: "MS-CLIP-S: + the parallel conv branch" },
    Arm { name: "oner-itc", preset: "tiny-oner", loss: "itc", what: "one tower, one head, naive ITC" },
    Arm { name: "oner-xmc", preset: "tiny-oner", loss: "itc,xmc", what: "one tower, ITC + XMC" },
    Arm { name: "oner-xmc-cic", preset: "tiny-oner", loss: "itc,xmc,cic", what: "one tower, ITC + XMC + CIC" },
    Arm {
        name: "oner-xmc-masked",
        preset: "tiny-oner",
        loss: "itc,xmc,mlm,mim",
        what: "one tower, ITC + XMC + MLM + MIM",
    },
];

/// The arms named in `spec` (comma-separated, or `all`), in the table's order.
pub fn arms(spec: &str) -> Result<Vec<Arm>> {
    if spec.trim() == "all" {
        return Ok(ARMS.to_vec());
    }
    let names: Vec<&str> = spec.split(',').map(str::trim).collect();
    if let Some(unknown) = names.iter().find(|n| !ARMS.iter().any(|a| a.name == **n)) {
        let known: Vec<&str> = ARMS.iter().map(|a| a.name).collect();
        return Err(Error::config(format!("--arms: unknown arm {unknown:?}; known: all, {}", known.join(", "))));
    }
    Ok(ARMS.iter().filter(|a| names.contains(&a.name)).copied().collect())
}

/// What an ablation runs.
#[derive(Debug, Clone)]
pub struct AblationConfig {
    pub arms: Vec<Arm>,
    pub seeds: Vec<u64>,
    /// Training seconds each run gets (evaluation not counted).
    pub budget_seconds: f64,
    /// Steps timed per arm (their median counts), after one warm-up step.
    pub timed_steps: u64,
    /// Each arm's steps from an earlier report instead of measuring them.
    pub steps_of: Option<BTreeMap<String, u64>>,
    /// Where the runs (`<arm>-s<seed>`) and the reports go.
    pub output_dir: PathBuf,
    /// Images per evaluation split.
    pub eval_samples: usize,
    /// Pairs per batch instead of the presets' (128).
    pub batch_size: Option<usize>,
}

/// One run's outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SeedResult {
    pub seed: u64,
    /// Wall seconds the run took here, its tokenizer and final evaluation included (0 when an
    /// earlier run was reused).
    pub train_seconds: f64,
    pub metrics: BTreeMap<String, f64>,
}

/// An arm's runs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArmResult {
    pub name: String,
    pub preset: String,
    pub loss: String,
    pub what: String,
    pub params: usize,
    pub seconds_per_step: Option<f64>,
    pub steps: u64,
    pub seeds: Vec<SeedResult>,
}

/// The whole ablation, as `ablations.json` holds it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AblationReport {
    pub budget_seconds: f64,
    pub eval_samples: usize,
    pub arms: Vec<ArmResult>,
}

impl AblationReport {
    /// Each arm's step count, for `--steps-of`.
    pub fn steps(&self) -> BTreeMap<String, u64> {
        self.arms.iter().map(|a| (a.name.clone(), a.steps)).collect()
    }
}

/// The training config of an arm: the preset's defaults, the arm's objectives, `steps` steps
/// with a warm-up of at most a tenth of them, and one full evaluation at the end.
pub fn arm_config(arm: &Arm, seed: u64, steps: u64, config: &AblationConfig) -> Result<TrainConfig> {
    let mut c = TrainConfig::for_preset(arm.preset)?;
    c.name = format!("{}-s{seed}", arm.name);
    c.output_dir = config.output_dir.clone();
    c.seed = seed;
    c.objectives = Objectives::parse(arm.loss)?;
    c.steps = steps;
    c.warmup_steps = c.warmup_steps.min(steps / 10);
    c.eval_every = steps;
    c.save_every = steps;
    c.quick_eval_every = 0;
    c.eval_samples = config.eval_samples;
    if let Some(batch) = config.batch_size {
        c.batch_size = batch;
    }
    c.validate()?;
    Ok(c)
}

/// Seconds per training step of `arm` here: the median of `timed` steps after a warm-up step,
/// on the batches the run would train on (a mean of a few steps let one slow step, another
/// process's, cost an arm a quarter of its budget).
pub fn seconds_per_step(arm: &Arm, timed: u64, config: &AblationConfig) -> Result<f64> {
    let c = arm_config(arm, 0, timed + 1, config)?;
    let model = ClipModel::new(c.model_config()?)?;
    let tokenizer = new_run_tokenizer(&c, &model)?;
    let mut steps = Steps::new(&model, &c, &tokenizer)?;
    steps.run(0)?.loss.item()?;
    let mut seconds = Vec::new();
    for step in 1..=timed {
        let started = Instant::now();
        steps.run(step)?.loss.item()?;
        seconds.push(started.elapsed().as_secs_f64());
    }
    seconds.sort_by(f64::total_cmp);
    Ok(seconds[seconds.len() / 2])
}

/// The smallest run worth evaluating: below it the cosine schedule has barely left its warm-up.
const MIN_STEPS: u64 = 20;

/// Runs every arm on every seed (reusing a run already finished with the same config) and
/// returns the report; `say` hears each stage.
pub fn run(config: &AblationConfig, mut say: impl FnMut(&str)) -> Result<AblationReport> {
    if config.seeds.is_empty() || config.arms.is_empty() {
        return Err(Error::config("an ablation needs at least one arm and one seed"));
    }
    if config.eval_samples == 0 {
        return Err(Error::config("--eval-samples must be at least 1: the ablation compares the runs' evaluations"));
    }
    if !(config.budget_seconds.is_finite() && config.budget_seconds > 0.0) {
        return Err(Error::config(format!(
            "--budget must be a positive number of seconds, got {}",
            config.budget_seconds
        )));
    }
    // Every step count first, so the runs do not slow the timing of later arms.
    let mut planned = Vec::new();
    for arm in &config.arms {
        let (seconds, steps) = match config.steps_of.as_ref().map(|s| s.get(arm.name)) {
            Some(Some(&steps)) => (None, steps),
            Some(None) => return Err(Error::config(format!("--steps-of has no step count for the arm {}", arm.name))),
            None => {
                let seconds = seconds_per_step(arm, config.timed_steps, config)?;
                (Some(seconds), ((config.budget_seconds / seconds) as u64).max(MIN_STEPS))
            }
        };
        let timing = seconds.map_or("steps from --steps-of".to_string(), |s| format!("{:.0} ms per step", 1e3 * s));
        let width = ARMS.iter().map(|a| a.name.len()).max().unwrap_or(0);
        say(&format!("{:<width$} {} --loss {}: {timing}, {steps} steps", arm.name, arm.preset, arm.loss));
        planned.push((arm, seconds, steps));
    }
    let mut arms = Vec::new();
    for (arm, seconds_per_step, steps) in planned {
        let mut seeds = Vec::new();
        for &seed in &config.seeds {
            let c = arm_config(arm, seed, steps, config)?;
            let result = match finished_run(&c)? {
                Some(metrics) => {
                    say(&format!("{}: reusing the finished run {}", c.name, c.run_dir().display()));
                    SeedResult { seed, train_seconds: 0.0, metrics }
                }
                None => {
                    say(&format!("{}: training {steps} steps", c.name));
                    let started = Instant::now();
                    let options = RunOptions { overwrite: true, quiet: true, ..RunOptions::default() };
                    let summary = train(&c, &options)?;
                    let train_seconds = started.elapsed().as_secs_f64();
                    let report = summary.eval.ok_or_else(|| Error::invalid("ablation", "the run was not evaluated"))?;
                    SeedResult { seed, train_seconds, metrics: report.metrics() }
                }
            };
            seeds.push(result);
        }
        // The model evaluation runs: the masked objectives' heads train only, and are not counted.
        let params = ClipModel::new(preset(arm.preset)?)?.counts().total;
        arms.push(ArmResult {
            name: arm.name.into(),
            preset: arm.preset.into(),
            loss: arm.loss.into(),
            what: arm.what.into(),
            params,
            seconds_per_step,
            steps,
            seeds,
        });
    }
    Ok(AblationReport { budget_seconds: config.budget_seconds, eval_samples: config.eval_samples, arms })
}

/// The final metrics of a run already trained with exactly this config, if there is one.
fn finished_run(config: &TrainConfig) -> Result<Option<BTreeMap<String, f64>>> {
    let dir = config.run_dir();
    if !dir.join("config.json").exists() || read_run_config(&dir)?.0 != *config {
        return Ok(None);
    }
    let results = read_jsonl(&dir.join("results.jsonl"))?;
    let last = results.iter().rev().find(|r| r["step"].as_u64() == Some(config.steps));
    Ok(last.and_then(|r| r.as_object()).map(|r| {
        r.iter().filter(|(k, _)| k.contains('/')).filter_map(|(k, v)| Some((k.clone(), v.as_f64()?))).collect()
    }))
}

/// The columns of the table: (heading, metric key, shown as a percentage).
pub const COLUMNS: [(&str, &str, bool); 8] = [
    ("shape seen", "zeroshot/shape/seen/acc1", true),
    ("shape unseen", "zeroshot/shape/unseen/acc1", true),
    ("colour seen", "zeroshot/colour/seen/acc1", true),
    ("I->T R@1", "retrieval/seen/image_to_text_R@1", true),
    ("T->I R@1", "retrieval/seen/text_to_image_R@1", true),
    ("binding", "binding/text_acc", true),
    ("modality gap", "modality_gap/seen/centroid_distance", false),
    ("pointing", "localisation/pointing_game", true),
];

/// Mean and sample standard deviation (0 for one value).
pub fn mean_and_spread(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let spread = match values.len() {
        0 | 1 => 0.0,
        _ => (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt(),
    };
    (mean, spread)
}

/// The report as a Markdown table: one row per arm, each metric as mean ± spread over seeds.
pub fn markdown(report: &AblationReport) -> String {
    let mut out = String::from("| arm | preset, --loss | params | steps |");
    let mut rule = String::from("|---|---|---:|---:|");
    for (heading, _, _) in COLUMNS {
        out.push_str(&format!(" {heading} |"));
        rule.push_str("---:|");
    }
    out.push('\n');
    out.push_str(&rule);
    out.push('\n');
    for arm in &report.arms {
        out.push_str(&format!("| {} | {}, {} | {} | {} |", arm.name, arm.preset, arm.loss, arm.params, arm.steps));
        for (_, key, percent) in COLUMNS {
            let values: Vec<f64> = arm.seeds.iter().filter_map(|s| s.metrics.get(key).copied()).collect();
            if values.is_empty() {
                out.push_str(" - |");
                continue;
            }
            let (mean, spread) = mean_and_spread(&values);
            match percent {
                true => out.push_str(&format!(" {:.1} ± {:.1} |", 100.0 * mean, 100.0 * spread)),
                false => out.push_str(&format!(" {mean:.3} ± {spread:.3} |")),
            }
        }
        out.push('\n');
    }
    out
}

/// Writes `ablations.json` and `ablations.md` into `dir`, each atomically.
pub fn write_report(report: &AblationReport, dir: &Path) -> Result<()> {
    let json = serde_json::to_string_pretty(report).map_err(|e| Error::invalid("ablation", e.to_string()))?;
    crate::files::write_atomically(&dir.join("ablations.json"), json.as_bytes())?;
    crate::files::write_atomically(&dir.join("ablations.md"), markdown(report).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arms_are_named_and_unknown_ones_refused() {
        assert_eq!(arms("all").unwrap().len(), ARMS.len());
        let picked: Vec<&str> = arms("oner-itc, clip").unwrap().iter().map(|a| a.name).collect();
        assert_eq!(picked, ["clip", "oner-itc"], "the table's order");
        assert!(arms("clip,gpt").unwrap_err().to_string().contains("unknown arm \"gpt\""));
        for arm in ARMS {
            Objectives::parse(arm.loss).unwrap().check_model(&preset(arm.preset).unwrap()).unwrap();
        }
    }

    #[test]
    fn spread_is_the_sample_standard_deviation() {
        assert_eq!(mean_and_spread(&[0.5]), (0.5, 0.0));
        let (mean, spread) = mean_and_spread(&[1.0, 2.0, 3.0]);
        assert_eq!((mean, spread), (2.0, 1.0));
    }

    #[test]
    fn the_table_shows_mean_and_spread_per_arm() {
        let seed = |seed, acc| SeedResult {
            seed,
            train_seconds: 1.0,
            metrics: [("zeroshot/shape/seen/acc1".to_string(), acc)].into_iter().collect(),
        };
        let report = AblationReport {
            budget_seconds: 60.0,
            eval_samples: 10,
            arms: vec![ArmResult {
                name: "clip".into(),
                preset: "tiny-clip".into(),
                loss: "itc".into(),
                what: String::new(),
                params: 1234,
                seconds_per_step: Some(0.5),
                steps: 120,
                seeds: vec![seed(0, 0.5), seed(1, 0.7)],
            }],
        };
        let table = markdown(&report);
        assert!(table.contains("| clip | tiny-clip, itc | 1234 | 120 | 60.0 ± 14.1 | - |"), "{table}");
    }
}
