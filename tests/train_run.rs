//! Whole training runs on the CPU: resume exactness, checkpoints of the wrong config,
//! corrupt files, NaN loss, and a short run that learns.

use std::path::{Path, PathBuf};

use msclip::model::{ClipModel, preset};
use msclip::nn::{AdamW, AdamWConfig, ParamGroup};
use msclip::train::checkpoint::{self, TrainingState};
use msclip::train::{Resume, RunOptions, TrainConfig, train};
use msclip::{DType, Rng, Tensor};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("msclip-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A few-second configuration: tiny model, small batches, evaluation kept small.
fn small_config(name: &str, dir: &Path, steps: u64) -> TrainConfig {
    let mut c = TrainConfig::tiny_default();
    c.name = name.into();
    c.output_dir = dir.to_path_buf();
    c.steps = steps;
    c.batch_size = 8;
    c.warmup_steps = 2;
    c.save_every = 1000;
    c.eval_samples = 16;
    c
}

fn quiet() -> RunOptions {
    RunOptions { quiet: true, ..Default::default() }
}

fn param_bits(summary: &msclip::train::RunSummary) -> Vec<Vec<u64>> {
    summary.params.ids().map(|id| summary.params.get(id).to_f64_vec().iter().map(|v| v.to_bits()).collect()).collect()
}

#[test]
fn half_run_plus_resume_equals_full_run_bit_for_bit() {
    let dir = scratch("resume");
    let full = train(&small_config("full", &dir, 6), &quiet()).unwrap();
    let half = small_config("half", &dir, 6);
    let first = train(&half, &RunOptions { stop_after: Some(3), quiet: true, ..Default::default() }).unwrap();
    assert_eq!(first.steps_done, 3);
    assert!(first.eval.is_none(), "an interrupted run does not evaluate");
    assert!(dir.join("half/checkpoints/step_3.safetensors").exists());
    let resumed =
        train(&half, &RunOptions { resume: Some(Resume::Latest), quiet: true, ..Default::default() }).unwrap();
    assert_eq!(resumed.steps_done, 6);
    assert_eq!(param_bits(&resumed), param_bits(&full), "resumed weights differ from the uninterrupted run");
    assert_eq!(resumed.final_loss.to_bits(), full.final_loss.to_bits());
    for file in ["config.json", "tokenizer.json", "results.jsonl", "train_loss.jsonl", "loss.png", "accuracy.png"] {
        assert!(dir.join("half").join(file).exists(), "missing {file}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn checkpoints_of_another_config_missing_or_corrupt_are_clear_errors() {
    let dir = scratch("badckpt");
    let run = train(&small_config("a", &dir, 1), &quiet()).unwrap();
    let ckpt = run.run_dir.join("checkpoints/latest.safetensors");

    // Another model config.
    let other = ClipModel::new(preset("tiny-clip").unwrap()).unwrap();
    let (mut p, mut b) = other.init_params(&mut Rng::new(0), DType::F32).unwrap();
    let err = checkpoint::load(&ckpt, &other.config, &mut p, &mut b, None).unwrap_err().to_string();
    assert!(err.contains("\"tiny\"") && err.contains("tiny-clip"), "{err}");

    // Missing and corrupt files.
    let model = ClipModel::new(preset("tiny").unwrap()).unwrap();
    let (mut p, mut b) = model.init_params(&mut Rng::new(0), DType::F32).unwrap();
    let missing = dir.join("nope.safetensors");
    let err = checkpoint::load(&missing, &model.config, &mut p, &mut b, None).unwrap_err().to_string();
    assert!(err.contains("nope.safetensors"), "{err}");
    let corrupt = dir.join("corrupt.safetensors");
    let mut bytes = std::fs::read(&ckpt).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&corrupt, &bytes).unwrap();
    let before = p.get(p.ids().next().unwrap()).to_f64_vec();
    let err = checkpoint::load(&corrupt, &model.config, &mut p, &mut b, None).unwrap_err().to_string();
    assert!(err.contains("corrupt.safetensors") && err.contains("checkpoint"), "{err}");
    assert_eq!(p.get(p.ids().next().unwrap()).to_f64_vec(), before, "a failed load changes nothing");

    // Resuming a run that has no checkpoint.
    let fresh = small_config("never-ran", &dir, 2);
    let err = train(&fresh, &RunOptions { resume: Some(Resume::Latest), quiet: true, ..Default::default() });
    assert!(err.unwrap_err().to_string().contains("config.json"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint() {
    let dir = scratch("nan");
    let config = small_config("nan", &dir, 4);
    train(&config, &RunOptions { stop_after: Some(2), quiet: true, ..Default::default() }).unwrap();
    // Poison the saved weights, as a diverged run would have them.
    let ckpt = dir.join("nan/checkpoints/latest.safetensors");
    let model = ClipModel::new(preset("tiny").unwrap()).unwrap();
    let (mut p, mut b) = model.init_params(&mut Rng::new(0), DType::F32).unwrap();
    let groups = vec![ParamGroup { name: "all".into(), weight_decay: 0.0, lr_scale: 1.0 }];
    let mut opt = AdamW::new(&p, AdamWConfig::default(), groups, |_, _| 0).unwrap();
    let restored = checkpoint::load(&ckpt, &model.config, &mut p, &mut b, Some(&mut opt)).unwrap();
    let id = p.find("visual.proj").unwrap();
    let shape = p.get(id).shape().clone();
    p.set(id, Tensor::full(shape, f64::NAN, DType::F32)).unwrap();
    let state = TrainingState {
        config: &model.config,
        params: &p,
        buffers: &b,
        optimizer: &opt,
        step: restored.step,
        samples_seen: restored.samples_seen,
        rng: &restored.rng,
    };
    checkpoint::save(&ckpt, &state).unwrap();
    let saved = std::fs::read(&ckpt).unwrap();

    let err =
        train(&config, &RunOptions { resume: Some(Resume::Latest), quiet: true, ..Default::default() }).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("NaN") && msg.contains("step 3"), "{msg}");
    assert_eq!(std::fs::read(&ckpt).unwrap(), saved, "nothing is written after a NaN");
    assert!(!dir.join("nan/checkpoints/step_3.safetensors").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_short_run_learns_far_above_chance() {
    let dir = scratch("learn");
    let mut config = small_config("learn", &dir, 150);
    config.batch_size = 64;
    config.warmup_steps = 20;
    config.log_every = 1;
    config.eval_samples = 200;
    let summary = train(&config, &quiet()).unwrap();
    let metrics = summary.eval.expect("a finished run evaluates").metrics();
    let losses = msclip::train::read_jsonl(&summary.run_dir.join("train_loss.jsonl")).unwrap();
    let first = losses.first().unwrap()["loss"].as_f64().unwrap();
    // A contrastive loss starts near ln(batch).
    assert!((first - 64f64.ln()).abs() < 0.5, "initial loss {first}");
    assert!(summary.final_loss < 0.6 * first, "loss {first} -> {}", summary.final_loss);
    // Chance: 1/8 for colour, 10/200 for retrieval R@10.
    let report = format!("{metrics:#?}");
    assert!(metrics["zeroshot/colour/seen/acc1"] > 0.6, "{report}");
    assert!(metrics["retrieval/seen/image_to_text_R@10"] > 0.25, "{report}");
    assert!(metrics["retrieval/seen/text_to_image_R@10"] > 0.25, "{report}");
    let _ = std::fs::remove_dir_all(&dir);
}
