//! CPU reference backend microbenchmarks at the shapes of a ViT-B/32 layer (batch 32:
//! 32 x 50 = 1600 tokens, width 768). Prints GFLOP/s for the GEMMs and GB/s for LayerNorm,
//! fused residual-add LayerNorm against the unfused pair. Run: `cargo bench --bench cpu_ops`.
//! `benches/cpu_ops_numpy.py` times the same shapes in numpy for the ratio in
//! docs/benchmarks.md.

use std::time::Instant;

use msclip::backend::{self, BinaryOp, LnAffine};
use msclip::{DType, Device, Rng};

/// Median seconds per call over enough repetitions to fill about half a second.
fn time(mut f: impl FnMut()) -> f64 {
    f(); // warm-up: page faults, thread pool start
    let start = Instant::now();
    f();
    let once = start.elapsed().as_secs_f64().max(1e-6);
    let reps = ((0.5 / once) as usize).clamp(3, 200);
    let mut samples: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    samples.sort_by(f64::total_cmp);
    samples[reps / 2]
}

fn main() {
    let cpu = backend::get(Device::Cpu);
    let mut rng = Rng::new(0);
    println!("threads: {}", rayon::current_num_threads());
    println!("{:<44} {:>10} {:>12}", "op (f32)", "ms", "rate");

    let tokens = 1600;
    for (name, k, n) in
        [("qkv in-proj", 768, 2304), ("attn out-proj", 768, 768), ("mlp c_fc", 768, 3072), ("mlp c_proj", 3072, 768)]
    {
        let x = rng.normal_tensor([1, tokens, k], 1.0, DType::F32);
        let w = rng.normal_tensor([1, n, k], 0.02, DType::F32);
        let b = rng.normal_tensor([n], 0.02, DType::F32);
        let secs = time(|| {
            cpu.matmul(&x, &w, false, true, Some(&b)).unwrap();
        });
        let gflops = 2.0 * (tokens * k * n) as f64 / secs / 1e9;
        println!(
            "{:<44} {:>10.3} {:>7.1} GFLOP/s",
            format!("linear {name} [{tokens}x{k}]x[{k}x{n}]"),
            secs * 1e3,
            gflops
        );
    }

    let d = 768;
    let x = rng.normal_tensor([tokens, d], 1.0, DType::F32);
    let res = rng.normal_tensor([tokens, d], 1.0, DType::F32);
    let gamma = rng.normal_tensor([d], 1.0, DType::F32);
    let beta = rng.normal_tensor([d], 1.0, DType::F32);
    let affine = LnAffine::new(&gamma, &beta);
    let bytes = (tokens * d * 4) as f64;
    let report = |name: &str, secs: f64, tensors_moved: f64| {
        println!("{:<44} {:>10.3} {:>7.1} GB/s", name, secs * 1e3, tensors_moved * bytes / secs / 1e9);
    };

    let secs = time(|| {
        cpu.layer_norm(&x, None, &affine, 1e-5).unwrap();
    });
    report(&format!("layer_norm fwd [{tokens}x{d}]"), secs, 2.0); // read x, write y

    let out = cpu.layer_norm(&x, None, &affine, 1e-5).unwrap();
    let secs = time(|| {
        cpu.layer_norm_backward(&x, &affine, &out.mean, &out.rstd, &res, None).unwrap();
    });
    report(&format!("layer_norm bwd [{tokens}x{d}]"), secs, 3.0); // read x, dy; write dx

    let fused = time(|| {
        cpu.layer_norm(&x, Some(&res), &affine, 1e-5).unwrap();
    });
    report(&format!("residual add + layer_norm fused [{tokens}x{d}]"), fused, 4.0); // read x, r; write sum, y
    let unfused = time(|| {
        let sum = cpu.binary(BinaryOp::Add, &x, &res).unwrap();
        cpu.layer_norm(&sum, None, &affine, 1e-5).unwrap();
    });
    report(&format!("residual add, then layer_norm [{tokens}x{d}]"), unfused, 4.0);
    println!("fused / unfused time: {:.2}", fused / unfused);
}
