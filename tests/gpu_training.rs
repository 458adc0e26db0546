//! Training end to end on the GPU backend: the emulator (always) runs every kernel of a tiny
//! MS-CLIP training step, and its loss curve follows the CPU reference's; on a real GPU the same
//! runs when one is present.

mod common;

use std::path::{Path, PathBuf};

use common::gpu::gpu_devices;
use msclip::train::{Precision, RunOptions, TrainConfig, read_jsonl, train};
use msclip::{Device, Result};

const STEPS: u64 = 50;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("msclip-gpu-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// The default tiny model with a small batch, logging every step.
fn config(name: &str, dir: &Path, device: Device, precision: Precision) -> TrainConfig {
    let mut c = TrainConfig::tiny_default();
    c.name = name.into();
    c.output_dir = dir.to_path_buf();
    // One step more than is run: stopping early skips the final evaluation, which on the
    // emulator would take longer than the training itself.
    c.steps = STEPS + 1;
    c.batch_size = 16;
    c.warmup_steps = 5;
    c.log_every = 1;
    c.save_every = 1000;
    c.eval_samples = 16;
    c.device = device;
    c.precision = precision;
    c
}

fn losses(dir: &Path, name: &str) -> Result<Vec<f64>> {
    Ok(read_jsonl(&dir.join(name).join("train_loss.jsonl"))?.iter().map(|r| r["loss"].as_f64().unwrap()).collect())
}

fn run(dir: &Path, name: &str, device: Device, precision: Precision) -> Vec<f64> {
    let options = RunOptions { quiet: true, stop_after: Some(STEPS), ..Default::default() };
    train(&config(name, dir, device, precision), &options).unwrap_or_else(|e| panic!("{name}: {e}"));
    losses(dir, name).unwrap()
}

#[test]
fn gpu_backend_loss_curves_follow_the_cpu_for_fifty_steps() {
    let dir = scratch("curves");
    let cpu = run(&dir, "cpu", Device::Cpu, Precision::Fp32);
    assert_eq!(cpu.len(), STEPS as usize);
    eprintln!("cpu losses: {cpu:?}");
    for device in gpu_devices() {
        // fp32: the same math in another summation order; the curves agree to float rounding,
        // amplified a little over 50 optimizer steps.
        let fp32 = run(&dir, &format!("{device}-fp32"), device, Precision::Fp32);
        eprintln!("{device} fp32 losses: {fp32:?}");
        for (step, (g, c)) in fp32.iter().zip(&cpu).enumerate() {
            assert!((g - c).abs() <= 1e-3 * c.abs(), "{device} fp32 step {}: loss {g} vs cpu {c}", step + 1);
        }
        // bf16: 8-bit mantissas in weights and activations. The stated tolerance: every step
        // within 5% of the CPU's loss, and the mean over the last ten steps within 2%.
        let bf16 = run(&dir, &format!("{device}-bf16"), device, Precision::Bf16);
        eprintln!("{device} bf16 losses: {bf16:?}");
        for (step, (g, c)) in bf16.iter().zip(&cpu).enumerate() {
            assert!((g - c).abs() <= 0.05 * c.abs(), "{device} bf16 step {}: loss {g} vs cpu {c}", step + 1);
        }
        let tail = |v: &[f64]| v[v.len() - 10..].iter().sum::<f64>() / 10.0;
        let (g, c) = (tail(&bf16), tail(&cpu));
        assert!((g - c).abs() <= 0.02 * c, "{device} bf16 last-ten mean {g} vs cpu {c}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
