//! Will it fit? Estimates of the host memory a training step and an evaluation take, checked
//! against what the machine has before anything is allocated, so `--batch-size 100000000`
//! is refused at once with the numbers instead of growing until the OOM killer ends it.
//!
//! The estimates are models, not measurements: they count the activations the tape keeps per
//! pair (every op output of a transformer block, the conv maps of stems and branches, the batch
//! itself) with a margin for the backward pass's transients, and the n x n similarity matrices
//! of retrieval. docs/training.md compares them with measured peak memory.

use super::config::TrainConfig;
use crate::backend::gpu;
use crate::error::{Error, Result};
use crate::model::{ClipModel, ModelConfig, VisionStem};
use crate::tensor::Device;

const F32: u64 = 4;
/// Per token of a pre-norm block the tape keeps 18 widths (LN out, QKV 3, attention out, out
/// projection, residual sum and LN 2, fc1 4, GELU 4, fc2, residual 1) and one value per head.
const BLOCK_WIDTHS_PER_TOKEN: u64 = 18;
/// Conv, BatchNorm and ReLU outputs, residual sums and shortcut paths per conv stage.
const MAPS_PER_CONV_STAGE: u64 = 6;
/// The backward pass holds gradients of a few layers beside the kept activations.
const BACKWARD_MARGIN: f64 = 1.25;
/// Refuse above this share of the available memory (allocator slack, the rest of the process).
const USABLE_SHARE: f64 = 0.9;

/// Bytes of activations and inputs one image-text pair adds to a training step.
pub fn training_bytes_per_pair(model: &ModelConfig) -> u64 {
    let (v, t) = (&model.vision, &model.text);
    let block = |tokens: u64, width: u64, heads: u64| tokens * (BLOCK_WIDTHS_PER_TOKEN * width + heads);
    let vision_blocks = (v.layers - v.first_block()) as u64;
    let vision = vision_blocks * block(v.tokens() as u64, v.width as u64, v.heads as u64);
    let text = t.layers as u64 * block(t.context as u64, t.width as u64, t.heads as u64);
    let pixels = (v.image_size * v.image_size) as u64;
    let mut maps = 0;
    if let VisionStem::ConvStem { channels, strides } = &v.stem {
        let mut side = v.image_size as u64 / 2;
        maps += channels[0] as u64 * side * side;
        for (&c, &s) in channels[1..].iter().zip(strides) {
            side /= s as u64;
            maps += c as u64 * side * side;
        }
    }
    if let Some(branch) = &v.parallel_branch {
        let mut side = v.image_size as u64;
        for (&c, &s) in branch.channels.iter().zip(&branch.strides) {
            side = side.div_ceil(s as u64);
            maps += c as u64 * side * side;
        }
    }
    // The batch: rendered u8 pixels, their f64 normalisation buffer and the f32 tensor.
    let batch = pixels * 3 * (1 + 8 + 4);
    let kept = F32 * (vision + text + MAPS_PER_CONV_STAGE * maps);
    (kept as f64 * BACKWARD_MARGIN) as u64 + batch
}

/// Bytes of weights, gradients and the two AdamW moments.
pub fn training_state_bytes(parameters: u64) -> u64 {
    4 * F32 * parameters
}

/// Bytes an evaluation of `samples` images per split holds at once: the rendered images and
/// their features, and the similarity matrix of retrieval with its transpose (f64).
pub fn evaluation_bytes(model: &ModelConfig, samples: u64) -> u64 {
    let pixels = (model.vision.image_size * model.vision.image_size) as u64;
    let features = 3 * 8 * model.embed_dim as u64;
    samples.saturating_mul(3 * pixels + features).saturating_add(samples.saturating_mul(samples).saturating_mul(16))
}

/// Refuses a training config whose batch or evaluation would not fit. The CPU and the emulator
/// hold everything in host memory; on a GPU the step's state and activations must fit in the
/// device's free memory (the evaluation's similarity matrices stay on the host there).
pub fn check_training(config: &TrainConfig) -> Result<()> {
    let model = ClipModel::new(config.model_config()?)?;
    check_batch(&model, config.device, "--batch-size", config.batch_size as u64)?;
    check_evaluation(&model, "--eval-samples", config.eval_samples as u64)?;
    check_evaluation(&model, "--quick-eval-samples", config.quick_eval_samples as u64)
}

/// Refuses a training batch of `pairs` (set by `flag`) that would not fit on `device` beside
/// the model's weights and optimizer state: the planned memory (the state, and activations per
/// pair) against the device's free memory on a GPU, the host's otherwise.
pub fn check_batch(model: &ClipModel, device: Device, flag: &str, pairs: u64) -> Result<()> {
    let state = training_state_bytes(model.counts().total as u64);
    let per_pair = training_bytes_per_pair(&model.config);
    let (available, place) = match device {
        Device::Cuda => (gpu::driver(device)?.free_memory()?, "device memory"),
        _ => (available_bytes(), "memory"),
    };
    check_fits_in(available, place, flag, pairs, 2, |b| state.saturating_add(b.saturating_mul(per_pair)))
}

/// Refuses an evaluation of `samples` images per split (set by `flag`) that would not fit
/// beside the model's weights and optimizer state.
pub fn check_evaluation(model: &ClipModel, flag: &str, samples: u64) -> Result<()> {
    let state = training_state_bytes(model.counts().total as u64);
    check_fits(flag, samples, 1, |n| state.saturating_add(evaluation_bytes(&model.config, n)))
}

/// Refuses `what` (a flag and its value) when `bytes(value)` exceeds the usable host memory,
/// naming the estimate, what is available and the largest value that fits.
pub fn check_fits(what: &str, value: u64, minimum: u64, bytes: impl Fn(u64) -> u64) -> Result<()> {
    check_fits_in(available_bytes(), "memory", what, value, minimum, bytes)
}

/// [`check_fits`] against `available` bytes of `place` (None: unknown, nothing refused).
pub fn check_fits_in(
    available: Option<u64>,
    place: &str,
    what: &str,
    value: u64,
    minimum: u64,
    bytes: impl Fn(u64) -> u64,
) -> Result<()> {
    let Some(available) = available else { return Ok(()) };
    let usable = (available as f64 * USABLE_SHARE) as u64;
    let need = bytes(value);
    if need <= usable {
        return Ok(());
    }
    // bytes() grows with the value: bisect for the largest that fits.
    let (mut lo, mut hi) = (minimum, value);
    while lo + 1 < hi {
        let mid = lo + (hi - lo) / 2;
        if bytes(mid) <= usable { lo = mid } else { hi = mid }
    }
    let largest = if bytes(lo) <= usable {
        format!("the largest that fits is about {lo}")
    } else {
        format!("not even {minimum} fits")
    };
    Err(Error::config(format!(
        "{what} {value} needs an estimated {} of {place}, and {} is available (90% of it usable); {largest}",
        human(need),
        human(available)
    )))
}

/// Memory this process may still take: the kernel's MemAvailable, capped by a cgroup limit
/// when one is set. None where neither can be read (then nothing is refused).
pub fn available_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    let mut available = kib * 1024;
    let read = |path: &str| std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse::<u64>().ok());
    if let (Some(max), Some(current)) = (read("/sys/fs/cgroup/memory.max"), read("/sys/fs/cgroup/memory.current")) {
        available = available.min(max.saturating_sub(current));
    }
    Some(available)
}

fn human(bytes: u64) -> String {
    let units = ["B", "KB", "MB", "GB", "TB", "PB", "EB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", units[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_name_the_estimate_and_the_largest_value_that_fits() {
        let available = available_bytes().expect("Linux reports MemAvailable");
        let err = check_fits("--batch-size", u64::MAX / 2, 2, |n| n.saturating_mul(1 << 20)).unwrap_err().to_string();
        let largest: u64 = err.rsplit("about ").next().unwrap().parse().unwrap();
        assert!(err.contains("--batch-size") && err.contains("available"), "{err}");
        // 1 MiB per unit: the answer is the usable share of what is available, in MiB.
        let expected = (available as f64 * USABLE_SHARE) as u64 >> 20;
        assert!(largest.abs_diff(expected) <= expected / 50 + 1, "{largest} vs {expected}");
        check_fits("--batch-size", 128, 2, |n| n * 1000).unwrap();
    }

    #[test]
    fn a_gpu_batch_is_held_to_the_device_memory_it_reports() {
        // An 80 GB device, 40 GB of state and 100 MB per pair: 90% usable leaves room for 320.
        let plan = |pairs: u64| pairs.saturating_mul(100_000_000).saturating_add(40_000_000_000);
        let fits = |pairs| check_fits_in(Some(80_000_000_000), "device memory", "--batch", pairs, 2, plan);
        fits(320).unwrap();
        let err = fits(512).unwrap_err().to_string();
        for fragment in
            ["--batch 512 needs an estimated 91.2 GB of device memory", "the largest that fits is about 320"]
        {
            assert!(err.contains(fragment), "{err}");
        }
        // Unknown availability refuses nothing.
        check_fits_in(None, "device memory", "--batch", u64::MAX / 2, 2, plan).unwrap();
    }
}
