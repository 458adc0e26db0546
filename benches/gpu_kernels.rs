//! GPU kernel microbenchmarks: achieved bandwidth of each memory-bound kernel, its fraction of
//! the device's copy bandwidth (measured here) and of the H100 SXM datasheet figure, and the
//! fused kernel beside the unfused sequence of kernels doing the same math.
//!
//! `cargo bench --bench gpu_kernels` on a machine with a GPU (bf16 at ViT-B/32 shapes, batch
//! 256: 12,800 tokens x 768). Without one it says so and exits. `-- --device emu` runs the same
//! cases at small sizes on the emulator, which checks the harness, not the speed. Results also go
//! to target/bench/gpu_kernels.json.

use std::time::Instant;

use msclip::backend::gpu::buffer::{Scratch, measure_allocations};
use msclip::backend::gpu::{AttnTiles, GpuBackend};
use msclip::backend::{
    self, Activation, AdamWStep, AdamWTensor, AttnMask, Backend, BinaryOp, Conv2dGeometry, InfoNceShard, LnAffine,
    UnaryOp,
};
use msclip::{DType, Device, Rng, Table, Tensor};
use serde_json::json;

/// H100 SXM HBM3 bandwidth from the datasheet.
const DATASHEET_BYTES_PER_SECOND: f64 = 3.35e12;
/// H100 SXM dense bf16 tensor-core rate from the datasheet.
const DATASHEET_BF16_FLOPS: f64 = 989e12;

struct Sizes {
    tokens: usize,
    width: usize,
}

/// Seconds per call: warm-up, then `reps` calls between two device synchronisations.
fn time(device: Device, reps: usize, mut f: impl FnMut()) -> f64 {
    let driver = backend::gpu::driver(device).expect("the device was checked at start");
    f();
    driver.synchronize().unwrap();
    let start = Instant::now();
    for _ in 0..reps {
        f();
    }
    driver.synchronize().unwrap();
    start.elapsed().as_secs_f64() / reps as f64
}

struct Row {
    name: String,
    bytes: f64,
    seconds: f64,
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let device = match args.iter().position(|a| a == "--device") {
        Some(i) => args[i + 1].parse::<Device>().expect("--device cuda|emu"),
        None => Device::Cuda,
    };
    if let Err(e) = backend::gpu::driver(device) {
        println!("gpu_kernels: no {device} device ({e}); nothing measured");
        return;
    }
    let (sizes, reps) = match device {
        Device::Cuda => (Sizes { tokens: 12_800, width: 768 }, 50),
        _ => (Sizes { tokens: 96, width: 72 }, 1),
    };
    let gpu = backend::get(device);
    let copy_rate = measure_copy_bandwidth(device, reps);
    let mut rows = Vec::new();
    for dtype in [DType::BF16, DType::F32] {
        layernorm_cases(gpu, device, dtype, &sizes, reps, &mut rows);
        bias_gelu_cases(gpu, device, dtype, &sizes, reps, &mut rows);
        l2_cases(gpu, device, dtype, &sizes, reps, &mut rows);
        row_op_cases(gpu, device, dtype, &sizes, reps, &mut rows);
        conv_branch_cases(gpu, device, dtype, &sizes, reps, &mut rows);
    }
    cast_cases(gpu, device, &sizes, reps, &mut rows);
    adamw_case(gpu, device, &sizes, reps, &mut rows);

    println!("device copy bandwidth (read + write): {:.0} GB/s", copy_rate / 1e9);
    println!("{:<58} {:>9} {:>9} {:>8} {:>8}", "kernel", "us", "GB/s", "% copy", "% spec");
    let mut records = Vec::new();
    for r in &rows {
        let rate = r.bytes / r.seconds;
        println!(
            "{:<58} {:>9.1} {:>9.0} {:>7.1}% {:>7.1}%",
            r.name,
            r.seconds * 1e6,
            rate / 1e9,
            100.0 * rate / copy_rate,
            100.0 * rate / DATASHEET_BYTES_PER_SECOND
        );
        records.push(json!({"kernel": r.name, "seconds": r.seconds, "bytes": r.bytes, "bytes_per_second": rate}));
    }
    let flop_rows = compute_bound_cases(gpu, device);
    println!("{:<64} {:>9} {:>9} {:>8}", "kernel (matrix-bound)", "us", "TFLOP/s", "% spec");
    for r in &flop_rows {
        let rate = r.flops / r.seconds;
        println!(
            "{:<64} {:>9.1} {:>9.1} {:>7.1}%",
            r.name,
            r.seconds * 1e6,
            rate / 1e12,
            100.0 * rate / DATASHEET_BF16_FLOPS
        );
        records.push(json!({"kernel": r.name, "seconds": r.seconds, "flops": r.flops, "flops_per_second": rate}));
    }
    let report = json!({"device": device.to_string(), "copy_bytes_per_second": copy_rate, "kernels": records});
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("gpu_kernels.json"), serde_json::to_string_pretty(&report).unwrap()).unwrap();
}

/// A device-to-device copy of 1 GiB (16 MiB on the emulator): the practical bandwidth ceiling.
fn measure_copy_bandwidth(device: Device, reps: usize) -> f64 {
    let bytes = if device == Device::Cuda { 1 << 30 } else { 1 << 24 };
    let driver = backend::gpu::driver(device).unwrap();
    let src = Scratch::zeros(device, bytes).unwrap();
    let dst = Scratch::uninit(device, bytes).unwrap();
    let seconds = time(device, reps, || driver.copy(dst.ptr(), src.ptr(), bytes).unwrap());
    2.0 * bytes as f64 / seconds
}

fn random(rng: &mut Rng, shape: &[usize], device: Device, dtype: DType) -> Tensor {
    rng.normal_tensor(shape.to_vec(), 1.0, DType::F32).to_dtype(dtype).unwrap().to_device(device).unwrap()
}

/// Residual add + LayerNorm fused against the add kernel followed by LayerNorm, and the
/// backward. Bytes are the minimum each must move: every input read once, every output written
/// once (fp32 statistics included).
fn layernorm_cases(gpu: &dyn Backend, device: Device, dtype: DType, s: &Sizes, reps: usize, rows: &mut Vec<Row>) {
    let mut rng = Rng::new(1);
    let (n, d) = (s.tokens, s.width);
    let x = random(&mut rng, &[n, d], device, dtype);
    let res = random(&mut rng, &[n, d], device, dtype);
    let gamma = random(&mut rng, &[d], device, dtype);
    let beta = random(&mut rng, &[d], device, dtype);
    let affine = LnAffine::new(&gamma, &beta);
    let dy = random(&mut rng, &[n, d], device, dtype);
    let e = dtype.size_in_bytes() as f64;
    let act = (n * d) as f64 * e;
    let stats = (2 * n * 4) as f64;
    let shape = format!("{n}x{d} {dtype}");

    let fwd = time(device, reps, || {
        gpu.layer_norm(&x, None, &affine, 1e-5).unwrap();
    });
    rows.push(Row { name: format!("layernorm fwd {shape}"), bytes: 2.0 * act + stats, seconds: fwd });
    let fused = time(device, reps, || {
        gpu.layer_norm(&x, Some(&res), &affine, 1e-5).unwrap();
    });
    rows.push(Row {
        name: format!("residual add + layernorm fwd, fused {shape}"),
        bytes: 4.0 * act + stats,
        seconds: fused,
    });
    let unfused = time(device, reps, || {
        let sum = gpu.binary(BinaryOp::Add, &x, &res).unwrap();
        gpu.layer_norm(&sum, None, &affine, 1e-5).unwrap();
    });
    // The unfused pair needs the same outputs; its extra traffic (re-reading the sum) is what
    // fusion saves, so it is rated against the fused minimum.
    rows.push(Row {
        name: format!("residual add, then layernorm (unfused) {shape}"),
        bytes: 4.0 * act + stats,
        seconds: unfused,
    });
    let out = gpu.layer_norm(&x, None, &affine, 1e-5).unwrap();
    let bwd = time(device, reps, || {
        gpu.layer_norm_backward(&x, &affine, &out.mean, &out.rstd, &dy, None).unwrap();
    });
    rows.push(Row { name: format!("layernorm bwd {shape}"), bytes: 3.0 * act + stats, seconds: bwd });
}

/// The MLP activation: bias + QuickGELU (and the exact GELU of the -gelu presets) over [tokens,
/// 4 x width], fused against the bias add followed by the activation (what a GEMM without such an
/// epilogue leaves), and the backward.
fn bias_gelu_cases(gpu: &dyn Backend, device: Device, dtype: DType, s: &Sizes, reps: usize, rows: &mut Vec<Row>) {
    let mut rng = Rng::new(2);
    let (n, d) = (s.tokens, 4 * s.width);
    let x = random(&mut rng, &[n, d], device, dtype);
    let bias = random(&mut rng, &[d], device, dtype);
    let dy = random(&mut rng, &[n, d], device, dtype);
    let act = (n * d * dtype.size_in_bytes()) as f64;
    let shape = format!("{n}x{d} {dtype}");
    for (activation, unary, name) in
        [(Activation::QuickGelu, UnaryOp::QuickGelu, "quick_gelu"), (Activation::Gelu, UnaryOp::Gelu, "gelu")]
    {
        let fused = time(device, reps, || {
            gpu.bias_activation(&x, &bias, activation).unwrap();
        });
        rows.push(Row { name: format!("bias + {name} fwd, fused {shape}"), bytes: 2.0 * act, seconds: fused });
        let unfused = time(device, reps, || {
            let sum = gpu.binary(BinaryOp::Add, &x, &bias).unwrap();
            gpu.unary(unary, &sum).unwrap();
        });
        rows.push(Row { name: format!("bias add, then {name} (unfused) {shape}"), bytes: 2.0 * act, seconds: unfused });
        let bwd = time(device, reps, || {
            gpu.bias_activation_backward(&x, &bias, &dy, activation).unwrap();
        });
        rows.push(Row { name: format!("bias + {name} bwd {shape}"), bytes: 3.0 * act, seconds: bwd });
    }
}

/// L2 normalisation of a batch of embeddings (the features entering the loss), and backward.
fn l2_cases(gpu: &dyn Backend, device: Device, dtype: DType, s: &Sizes, reps: usize, rows: &mut Vec<Row>) {
    let mut rng = Rng::new(3);
    let (n, d) = (s.tokens, s.width);
    let x = random(&mut rng, &[n, d], device, dtype);
    let dy = random(&mut rng, &[n, d], device, dtype);
    let act = (n * d * dtype.size_in_bytes()) as f64;
    let shape = format!("{n}x{d} {dtype}");
    let fwd = time(device, reps, || {
        gpu.l2_normalize(&x, 1e-12).unwrap();
    });
    rows.push(Row { name: format!("l2_normalize fwd {shape}"), bytes: 2.0 * act + (n * 4) as f64, seconds: fwd });
    let (y, norm) = gpu.l2_normalize(&x, 1e-12).unwrap();
    let bwd = time(device, reps, || {
        gpu.l2_normalize_backward(&y, &norm, &dy, 1e-12).unwrap();
    });
    rows.push(Row { name: format!("l2_normalize bwd {shape}"), bytes: 3.0 * act + (n * 4) as f64, seconds: bwd });
}

/// The remaining row-wise and data-movement kernels at activation size: softmax (fwd, bwd), the
/// attention head split (a permute of [tokens / 50, 50, 3, heads, 64] into [3, ..., heads, 50, 64])
/// and cross-entropy over 1000 classes (a zero-shot classifier's logits), fwd and bwd.
fn row_op_cases(gpu: &dyn Backend, device: Device, dtype: DType, s: &Sizes, reps: usize, rows: &mut Vec<Row>) {
    let mut rng = Rng::new(7);
    let (n, d) = (s.tokens, s.width);
    let e = dtype.size_in_bytes() as f64;
    let act = (n * d) as f64 * e;
    let shape = format!("{n}x{d} {dtype}");
    let x = random(&mut rng, &[n, d], device, dtype);
    let dy = random(&mut rng, &[n, d], device, dtype);
    let fwd = time(device, reps, || {
        gpu.softmax(&x).unwrap();
    });
    rows.push(Row { name: format!("softmax fwd {shape}"), bytes: 2.0 * act, seconds: fwd });
    let y = gpu.softmax(&x).unwrap();
    let bwd = time(device, reps, || {
        gpu.softmax_backward(&y, &dy).unwrap();
    });
    rows.push(Row { name: format!("softmax bwd {shape}"), bytes: 3.0 * act, seconds: bwd });

    let heads = (d / 64).max(1);
    let qkv = random(&mut rng, &[n / 50, 50, 3, heads, 64], device, dtype);
    let split = time(device, reps, || {
        gpu.permute(&qkv, &[2, 0, 3, 1, 4]).unwrap();
    });
    let qkv_bytes = (qkv.numel() as f64) * e;
    rows.push(Row {
        name: format!("permute qkv head split {:?} {dtype}", qkv.dims()),
        bytes: 2.0 * qkv_bytes,
        seconds: split,
    });

    let (batch, classes) = (n / 8, 1000);
    let logits = random(&mut rng, &[batch, classes], device, dtype);
    let targets = Table::new((0..batch as u32).map(|i| (i * 7) % classes as u32).collect());
    let logit_bytes = (batch * classes) as f64 * e;
    let ce = time(device, reps, || {
        gpu.cross_entropy(&logits, &targets).unwrap();
    });
    let ce_name = format!("cross_entropy {batch}x{classes} {dtype}");
    rows.push(Row { name: format!("{ce_name} fwd"), bytes: logit_bytes + (batch * 8) as f64, seconds: ce });
    let (loss, lse) = gpu.cross_entropy(&logits, &targets).unwrap();
    let dloss = Tensor::scalar(1.0, dtype).to_device(device).unwrap();
    let ce_bwd = time(device, reps, || {
        gpu.cross_entropy_backward(&logits, &lse, &targets, &dloss).unwrap();
    });
    drop(loss);
    rows.push(Row { name: format!("{ce_name} bwd"), bytes: 2.0 * logit_bytes + (batch * 4) as f64, seconds: ce_bwd });
}

/// MS-CLIP's parallel conv branch on a ViT-B/32 token grid (7 x 7, width channels): the depthwise
/// 3 x 3 convolution and BatchNorm with batch statistics, forward and backward. Bytes: every
/// input read once, every output written once.
fn conv_branch_cases(gpu: &dyn Backend, device: Device, dtype: DType, s: &Sizes, reps: usize, rows: &mut Vec<Row>) {
    let mut rng = Rng::new(8);
    let (batch, c) = (s.tokens / 50, s.width);
    let x = random(&mut rng, &[batch, c, 7, 7], device, dtype);
    let w = random(&mut rng, &[c, 1, 3, 3], device, dtype);
    let dy = random(&mut rng, &[batch, c, 7, 7], device, dtype);
    let e = dtype.size_in_bytes() as f64;
    let act = (x.numel() as f64) * e;
    let shape = format!("{batch}x{c}x7x7 {dtype}");
    let geo = Conv2dGeometry { stride: 1, padding: 1, groups: c };
    let conv = time(device, reps, || {
        gpu.conv2d(&x, &w, geo).unwrap();
    });
    rows.push(Row { name: format!("depthwise conv 3x3 fwd {shape}"), bytes: 2.0 * act, seconds: conv });
    let conv_bwd = time(device, reps, || {
        gpu.conv2d_backward(&x, &w, &dy, geo, true).unwrap();
    });
    rows.push(Row { name: format!("depthwise conv 3x3 bwd (dx, dw) {shape}"), bytes: 3.0 * act, seconds: conv_bwd });
    let gamma = random(&mut rng, &[c], device, DType::F32);
    let beta = random(&mut rng, &[c], device, DType::F32);
    let stats = (4 * c * 4) as f64;
    let bn = time(device, reps, || {
        gpu.batch_norm_train(&x, &gamma, &beta, 1e-5, false).unwrap();
    });
    rows.push(Row { name: format!("batchnorm train fwd {shape}"), bytes: 2.0 * act + stats, seconds: bn });
    let out = gpu.batch_norm_train(&x, &gamma, &beta, 1e-5, false).unwrap();
    let bn_bwd = time(device, reps, || {
        gpu.batch_norm_backward(&x, &gamma, &out.mean, &out.var, &out.affine, &dy, 1e-5, true, false).unwrap();
    });
    rows.push(Row { name: format!("batchnorm bwd {shape}"), bytes: 3.0 * act + stats, seconds: bn_bwd });
    batchnorm_relu_rows(gpu, device, reps, [&x, &gamma, &beta, &dy], (&shape, act + stats), rows);
}

/// BatchNorm + ReLU fused (the ReLU inside the BatchNorm's kernels) against BatchNorm, then a
/// ReLU, forward and backward. The bytes are the fused op's minimum: the unfused rows move more
/// for the same result, which their lower GB/s shows.
fn batchnorm_relu_rows(
    gpu: &dyn Backend,
    device: Device,
    reps: usize,
    [x, gamma, beta, dy]: [&Tensor; 4],
    (shape, pass): (&str, f64),
    rows: &mut Vec<Row>,
) {
    let fused = time(device, reps, || {
        gpu.batch_norm_train(x, gamma, beta, 1e-5, true).unwrap();
    });
    rows.push(Row { name: format!("batchnorm+relu fused fwd {shape}"), bytes: 2.0 * pass, seconds: fused });
    let unfused = time(device, reps, || {
        let out = gpu.batch_norm_train(x, gamma, beta, 1e-5, false).unwrap();
        gpu.unary(UnaryOp::Relu, &out.y).unwrap();
    });
    rows.push(Row { name: format!("batchnorm, relu unfused fwd {shape}"), bytes: 2.0 * pass, seconds: unfused });
    let out = gpu.batch_norm_train(x, gamma, beta, 1e-5, false).unwrap();
    let fused_bwd = time(device, reps, || {
        gpu.batch_norm_backward(x, gamma, &out.mean, &out.var, &out.affine, dy, 1e-5, true, true).unwrap();
    });
    rows.push(Row { name: format!("batchnorm+relu fused bwd {shape}"), bytes: 3.0 * pass, seconds: fused_bwd });
    let unfused_bwd = time(device, reps, || {
        // The ReLU's input stands in for its output too: the mask is the same.
        let masked = gpu.unary_backward(UnaryOp::Relu, &out.y, &out.y, dy).unwrap();
        gpu.batch_norm_backward(x, gamma, &out.mean, &out.var, &out.affine, &masked, 1e-5, true, false).unwrap();
    });
    rows.push(Row { name: format!("batchnorm, relu unfused bwd {shape}"), bytes: 3.0 * pass, seconds: unfused_bwd });
}

/// fp32 -> bf16 and back over one activation tensor.
fn cast_cases(gpu: &dyn Backend, device: Device, s: &Sizes, reps: usize, rows: &mut Vec<Row>) {
    let mut rng = Rng::new(4);
    let n = s.tokens * s.width;
    let x = random(&mut rng, &[n], device, DType::F32);
    let xb = random(&mut rng, &[n], device, DType::BF16);
    let down = time(device, reps, || {
        gpu.cast(&x, DType::BF16).unwrap();
    });
    rows.push(Row { name: format!("cast f32 -> bf16 {n}"), bytes: 6.0 * n as f64, seconds: down });
    let up = time(device, reps, || {
        gpu.cast(&xb, DType::F32).unwrap();
    });
    rows.push(Row { name: format!("cast bf16 -> f32 {n}"), bytes: 6.0 * n as f64, seconds: up });
}

/// One fused AdamW step over a ViT-B/32-like set of tensors (12 blocks of 768-wide matrices,
/// about 85 M parameters; 1/1000 of that on the emulator): fp32 weights, gradients and moments,
/// bf16 copies written in the same pass. 30 bytes per parameter at the minimum.
fn adamw_case(gpu: &dyn Backend, device: Device, s: &Sizes, reps: usize, rows: &mut Vec<Row>) {
    let mut rng = Rng::new(5);
    let w = s.width;
    let mut shapes = Vec::new();
    for _ in 0..12 {
        shapes.extend([vec![3 * w, w], vec![3 * w], vec![w, w], vec![w], vec![4 * w, w], vec![4 * w], vec![w, 4 * w]]);
        shapes.extend([vec![w], vec![w], vec![w], vec![w], vec![w]]);
    }
    let make = |rng: &mut Rng, shape: &[usize], dtype: DType| random(rng, shape, device, dtype);
    let mut params: Vec<Tensor> = shapes.iter().map(|sh| make(&mut rng, sh, DType::F32)).collect();
    let grads: Vec<Tensor> = shapes.iter().map(|sh| make(&mut rng, sh, DType::F32)).collect();
    let mut ms: Vec<Tensor> = shapes.iter().map(|sh| make(&mut rng, sh, DType::F32)).collect();
    let mut vs: Vec<Tensor> =
        shapes.iter().map(|sh| make(&mut rng, sh, DType::F32).mul(&make(&mut rng, sh, DType::F32)).unwrap()).collect();
    let mut copies: Vec<Tensor> = shapes.iter().map(|sh| make(&mut rng, sh, DType::BF16)).collect();
    let count: usize = params.iter().map(Tensor::numel).sum();
    let hp = AdamWStep { beta1: 0.9, beta2: 0.98, eps: 1e-6, step: 10, max_grad_norm: None, constants: None };
    let seconds = time(device, reps, || {
        let mut updates: Vec<AdamWTensor> = params
            .iter_mut()
            .zip(&grads)
            .zip(ms.iter_mut().zip(vs.iter_mut()))
            .zip(copies.iter_mut())
            .map(|(((param, grad), (m, v)), copy)| AdamWTensor {
                param,
                grad,
                m,
                v,
                bf16_copy: Some(copy),
                lr: 1e-4,
                weight_decay: 0.1,
                row: 0,
                clamp: None,
            })
            .collect();
        gpu.adamw_multi(&mut updates, hp).unwrap();
    });
    rows.push(Row { name: format!("adamw fused, {count} params, + bf16 copies"), bytes: 30.0 * count as f64, seconds });
}

struct FlopRow {
    name: String,
    flops: f64,
    seconds: f64,
}

/// One attention benchmark: packed projections [batch, len, 3 * 64 heads], the mask, and the
/// useful forward FLOPs (4 L^2 d per head and sequence, QK^T and PV; half under the causal mask).
struct AttentionCase {
    name: String,
    qkv_shape: [usize; 3],
    heads: usize,
    mask: AttnMask,
    fwd_flops: f64,
}

/// CLIP's attention shapes: B/32 vision (50 tokens), B/16 vision (197), text (77, causal, padded)
/// and the same captions trimmed to their lengths and packed (varlen; lengths 8..77 spread
/// evenly, as `AttnMask::packed` takes them from the text tower). Cut down on the emulator.
fn attention_cases(full: bool) -> Vec<AttentionCase> {
    let dense = |name: &str, batch: usize, len: usize, heads: usize, causal: bool| {
        let useful = if causal { 0.5 } else { 1.0 };
        AttentionCase {
            name: format!("{name} b{batch} L{len} h{heads}"),
            qkv_shape: [batch, len, 3 * 64 * heads],
            heads,
            mask: if causal { AttnMask::causal() } else { AttnMask::none() },
            fwd_flops: useful * 4.0 * (batch * heads * len * len * 64) as f64,
        }
    };
    let packed = |batch: usize, heads: usize| {
        let lengths: Vec<usize> = (0..batch).map(|i| 8 + (i * 37) % 70).collect();
        let mut offsets = vec![0];
        offsets.extend(lengths.iter().scan(0, |end, len| {
            *end += len;
            Some(*end)
        }));
        let total = *offsets.last().unwrap();
        let squares: usize = lengths.iter().map(|l| l * l).sum();
        AttentionCase {
            name: format!("text packed b{batch} ({total} tok) h{heads}"),
            qkv_shape: [1, total, 3 * 64 * heads],
            heads,
            mask: AttnMask::packed(offsets, true),
            fwd_flops: 0.5 * 4.0 * (squares * heads * 64) as f64,
        }
    };
    match full {
        true => vec![
            dense("B/32 vision", 256, 50, 12, false),
            dense("B/16 vision", 64, 197, 12, false),
            dense("text causal", 256, 77, 8, true),
            packed(256, 8),
        ],
        false => vec![
            dense("B/32 vision", 2, 50, 2, false),
            dense("B/16 vision", 1, 197, 1, false),
            dense("text causal", 2, 77, 1, true),
            packed(2, 1),
        ],
    }
}

/// Attention (bf16, forward and forward + backward) in every tile shape of its kernels, the one
/// the backend picks marked `chosen` (the measurement that can replace `AttnTiles::choose`), and
/// InfoNCE beside the three N x N x D GEMMs it must at least do. FLOPs count the useful products
/// only: attention's forward as `AttentionCase` says, 2.5x that more for the backward; InfoNCE
/// 2 N^2 D forward and 6 N^2 D forward + backward (the logits once, d img and d txt; the kernels'
/// recomputation of logit tiles is not counted), on wgmma and on mma.sync. On the emulator every
/// size is cut down so the harness runs in seconds.
fn compute_bound_cases(gpu: &dyn Backend, device: Device) -> Vec<FlopRow> {
    let full = device == Device::Cuda;
    let reps = if full { 20 } else { 1 };
    let mut rng = Rng::new(6);
    let mut rows = Vec::new();
    for case in attention_cases(full) {
        let [batch, len, packed_width] = case.qkv_shape;
        let (heads, mask) = (case.heads, &case.mask);
        let qkv = random(&mut rng, &case.qkv_shape, device, DType::BF16);
        let dout = random(&mut rng, &[batch, len, packed_width / 3], device, DType::BF16);
        let chosen = GpuBackend::new(device).attention_tiles(&qkv, heads, mask).unwrap();
        for tiles in AttnTiles::ALL {
            let tiled = GpuBackend::new(device).with_attention_tiles(tiles);
            let fwd = time(device, reps, || {
                tiled.attention(&qkv, heads, mask).unwrap();
            });
            let (out, lse) = tiled.attention(&qkv, heads, mask).unwrap();
            let both = time(device, reps, || {
                tiled.attention(&qkv, heads, mask).unwrap();
                tiled.attention_backward(&qkv, &out, &lse, &dout, heads, mask).unwrap();
            });
            let mark = if chosen == Some(tiles) { ", chosen" } else { "" };
            let shape = format!("{} bf16 {tiles}{mark}", case.name);
            rows.push(FlopRow { name: format!("attention fwd {shape}"), flops: case.fwd_flops, seconds: fwd });
            rows.push(FlopRow {
                name: format!("attention fwd+bwd {shape}"),
                flops: 3.5 * case.fwd_flops,
                seconds: both,
            });
        }
    }
    let sizes: &[usize] = if full { &[4096, 16384, 65536] } else { &[128] };
    for &n in sizes {
        let d = 512;
        let img = random(&mut rng, &[n, d], device, DType::BF16);
        let txt = random(&mut rng, &[n, d], device, DType::BF16);
        let (img, _) = gpu.l2_normalize(&img, 1e-12).unwrap();
        let (txt, _) = gpu.l2_normalize(&txt, 1e-12).unwrap();
        let scale = Tensor::scalar(100f64.ln(), DType::F32).to_device(device).unwrap().to_dtype(DType::BF16).unwrap();
        let dloss = Tensor::scalar(1.0, DType::BF16).to_device(device).unwrap();
        let nn = (n * n * d) as f64;
        // The wgmma kernels where the device has them (the backend's default), beside mma.sync.
        let mma_only = GpuBackend::without_wgmma(device);
        let engines: Vec<(&str, &dyn Backend)> = match backend::gpu::driver(device).unwrap().has_wgmma() {
            true => vec![("wgmma", gpu), ("mma.sync", &mma_only)],
            false => vec![("mma.sync", gpu)],
        };
        for (engine, be) in engines {
            let (out, peak) =
                measure_allocations(|| be.infonce(InfoNceShard::whole(&img, &txt, &scale, None)).unwrap());
            let fwd = time(device, reps, || {
                be.infonce(InfoNceShard::whole(&img, &txt, &scale, None)).unwrap();
            });
            let both = time(device, reps, || {
                let out = be.infonce(InfoNceShard::whole(&img, &txt, &scale, None)).unwrap();
                be.infonce_backward(InfoNceShard::whole(&img, &txt, &scale, None), &out, &dloss).unwrap();
            });
            drop(out);
            let shape = format!("N{n} D{d} bf16 {engine}");
            rows.push(FlopRow { name: format!("infonce fwd {shape}"), flops: 2.0 * nn, seconds: fwd });
            let name = format!("infonce fwd+bwd {shape} (peak fwd {} MiB)", peak >> 20);
            rows.push(FlopRow { name, flops: 6.0 * nn, seconds: both });
        }
        let (a, b) = (img.reshape([1, n, d]).unwrap(), txt.reshape([1, n, d]).unwrap());
        let gemms = time(device, reps, || {
            let z = gpu.matmul(&a, &b, false, true, None).unwrap();
            gpu.matmul(&z, &b, false, false, None).unwrap();
            gpu.matmul(&z, &a, true, false, None).unwrap();
        });
        rows.push(FlopRow { name: format!("its three NxNxD GEMMs (cuBLASLt) N{n}"), flops: 6.0 * nn, seconds: gemms });
    }
    bias_grad_rows(gpu, device, reps, &mut rng, &mut rows);
    rows
}

/// A linear layer's weight and bias gradients (dW = dy^T x, db = dy's column sums), the sums
/// in the GEMM's epilogue against a GEMM and then `sum_middle`: ViT-B/32's MLP at batch 256
/// (12,800 image tokens; 96 on the emulator), the out-projection and fc2 shapes.
fn bias_grad_rows(gpu: &dyn Backend, device: Device, reps: usize, rng: &mut Rng, rows: &mut Vec<FlopRow>) {
    let tokens = if device == Device::Cuda { 12_800 } else { 96 };
    for (outputs, inputs) in [(768, 768), (768, 3072)] {
        let dy = random(rng, &[1, tokens, outputs], device, DType::BF16);
        let x = random(rng, &[1, tokens, inputs], device, DType::BF16);
        let flops = 2.0 * (tokens * outputs * inputs) as f64;
        let fused = time(device, reps, || {
            gpu.matmul_bias_grad(&dy, &x, true, false).unwrap();
        });
        let unfused = time(device, reps, || {
            gpu.matmul(&dy, &x, true, false, None).unwrap();
            gpu.sum_middle(&dy, 1, tokens, outputs).unwrap();
        });
        let shape = format!("{outputs}x{inputs} over {tokens} rows bf16");
        rows.push(FlopRow { name: format!("linear dW + db, bias-grad epilogue {shape}"), flops, seconds: fused });
        rows.push(FlopRow { name: format!("linear dW, then db by sum_middle {shape}"), flops, seconds: unfused });
    }
}
