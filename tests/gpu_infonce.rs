//! InfoNCE kernels (kernels/infonce.cu) against the CPU reference: the loss, both log-sum-exp
//! vectors and all three gradients, for n in {1, 7, 33, 256, 1000, 4099}, ragged feature widths
//! (1, 3, 33, 64, 96, 512, 600), f32 (SIMT fp32) and bf16 (tensor cores: wgmma and mma.sync
//! variants), with the scale clamp
//! inactive, active, and absent; the data-parallel split of one batch into ranks (CPU and GPU
//! backends), whose combined results must be the whole batch's; and the device memory of a call,
//! which must grow linearly in n.
//!
//! Tolerances `|got - want| <= atol + rtol |want|`: rtol is the dtype's (`rtol_of`); for the
//! gradients atol is a fraction of the largest reference magnitude (bf16 rounds dz before the
//! d features product), for the loss and lse a small absolute error of fp32 sums. Results that the
//! ranks return in bf16 and the test sums (d txt, d logit_scale) get atol from the magnitude of the
//! parts, each rounded on its own.

mod common;

use common::assert_close;
use common::gpu::{gpu_devices, on, plain_emulator, rtol_of, tensor_core_backends};
use msclip::backend::gpu::buffer::measure_allocations;
use msclip::backend::{self, ContrastWeights, InfoNceOut, InfoNcePartial, InfoNceShard};
use msclip::{DType, Device, Rng, Tensor};

/// CLIP's initial temperature, ln(1 / 0.07) = 2.65926.
const LOG_SCALE_INIT: f64 = 2.659_26;
const MAX_SCALE: f64 = 100.0;

struct Case {
    n: usize,
    d: usize,
    log_scale: f64,
    max_scale: Option<f64>,
    weights: ContrastWeights,
}

impl Case {
    fn new(n: usize, d: usize) -> Case {
        Case { n, d, log_scale: LOG_SCALE_INIT, max_scale: Some(MAX_SCALE), weights: ContrastWeights::SYMMETRIC }
    }
}

/// [n, d] rows of unit norm (as the model's features are), representable in `dtype`.
fn unit_rows(rng: &mut Rng, n: usize, d: usize, dtype: DType) -> Tensor {
    let raw = rng.normal_tensor([n, d], 1.0, DType::F64).to_f64_vec();
    let rows: Vec<f64> = raw
        .chunks(d)
        .flat_map(|row| {
            let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
            row.iter().map(move |v| v / norm)
        })
        .collect();
    let t = Tensor::from_f64(&rows, [n, d], dtype).unwrap();
    t.to_dtype(DType::F32).unwrap()
}

/// A one-element f32 tensor holding `value` rounded to `dtype`.
fn scalar_as(value: f64, dtype: DType) -> Tensor {
    Tensor::from_f64(&[value], [1], dtype).unwrap().to_dtype(DType::F32).unwrap()
}

fn max_abs(values: &[f64]) -> f64 {
    values.iter().fold(0.0, |m, v| m.max(v.abs()))
}

fn compare(what: &str, got: &Tensor, want: &Tensor, atol: f64, rtol: f64) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    assert_close(what, &got.to_f64_vec(), &want.to_f64_vec(), atol, rtol);
}

/// Gradients: atol relative to `scale`, the largest magnitude involved.
fn compare_grad_at(what: &str, got: &[f64], want: &[f64], dtype: DType, scale: f64) {
    let scale = scale.max(1e-30);
    let atol = match dtype {
        DType::BF16 => scale / 128.0,
        DType::F32 => scale * 1e-5,
        _ => scale * 1e-12,
    };
    assert_close(what, got, want, atol, rtol_of(dtype));
}

/// Gradients: atol relative to the reference's largest magnitude.
fn compare_grad(what: &str, got: &Tensor, want: &Tensor, dtype: DType) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape");
    let want = want.to_f64_vec();
    compare_grad_at(what, &got.to_f64_vec(), &want, dtype, max_abs(&want));
}

fn check(case: &Case, seed: u64) {
    for dtype in [DType::F32, DType::BF16] {
        let batch = Batch::new(case, dtype, seed);
        let (want, (di, dt, ds)) = reference(&batch);
        let (img, txt, scale, dloss) = (&batch.img, &batch.txt, &batch.scale, &batch.dloss);
        for (device, label, be) in tensor_core_backends(dtype) {
            let name = format!(
                "{label} {dtype} n {} d {} log scale {} max {:?} {:?}",
                case.n, case.d, case.log_scale, case.max_scale, case.weights
            );
            let [img_d, txt_d, scale_d, dloss_d] = [img, txt, scale, dloss].map(|t| on(t, device, dtype));
            let got = be
                .infonce(InfoNceShard::whole(&img_d, &txt_d, &scale_d, case.max_scale).with_weights(case.weights))
                .unwrap();
            // The loss is a mean of fp32 sums of lse values of size ~ln(n) + t.
            let loss_rtol = rtol_of(dtype).min(1.0 / 256.0);
            compare(&format!("{name}: loss"), &got.loss, &want.loss, 1e-5, loss_rtol);
            compare(&format!("{name}: row lse"), &got.row_lse, &want.row_lse, 1e-5, 2e-5);
            compare(&format!("{name}: col lse"), &got.col_lse, &want.col_lse, 1e-5, 2e-5);
            let out = InfoNceOut { loss: got.loss, row_lse: got.row_lse, col_lse: got.col_lse };
            let (gi, gt, gs) = be
                .infonce_backward(
                    InfoNceShard::whole(&img_d, &txt_d, &scale_d, case.max_scale).with_weights(case.weights),
                    &out,
                    &dloss_d,
                )
                .unwrap();
            compare_grad(&format!("{name}: d img"), &gi, &di, dtype);
            compare_grad(&format!("{name}: d txt"), &gt, &dt, dtype);
            // d logit_scale sums n^2 terms that largely cancel: atol scales with the terms (dloss / 2).
            compare(&format!("{name}: d logit_scale"), &gs, &ds, 1e-4, rtol_of(dtype));
        }
    }
}

#[test]
fn a_single_pair() {
    check(&Case::new(1, 64), 1);
}

/// One direction alone (OneR's NCE(a, b), either way round) and unequal weights, at ragged sizes:
/// a kernel that swapped the directions' weights would fail the last two.
#[test]
fn weighted_directions() {
    let weights = [
        ContrastWeights::ROWS,
        ContrastWeights { rows: 0.0, columns: 1.0 },
        ContrastWeights { rows: 0.7, columns: 0.3 },
    ];
    for (i, weights) in weights.into_iter().enumerate() {
        for (j, (n, d)) in [(7, 96), (70, 40)].into_iter().enumerate() {
            check(&Case { weights, ..Case::new(n, d) }, 40 + 2 * i as u64 + j as u64);
        }
    }
}

#[test]
fn ragged_widths() {
    for (i, (n, d)) in [(7, 1), (7, 3), (33, 33), (7, 96)].into_iter().enumerate() {
        check(&Case::new(n, d), 10 + i as u64);
    }
}

#[test]
fn several_row_tiles() {
    check(&Case::new(256, 96), 2);
}

#[test]
fn wide_features() {
    // 512: one backward group of 8 feature chunks; 600: a second group with a ragged last chunk.
    check(&Case::new(70, 512), 7);
    check(&Case::new(9, 600), 8);
}

#[test]
fn a_thousand_pairs() {
    check(&Case::new(1000, 64), 3);
}

#[test]
fn four_thousand_and_ninety_nine_pairs() {
    // 65 row tiles, the last holding 3 rows; 48 features: a ragged single chunk. Ragged tiles are
    // sanitized at smaller n (ragged_widths); 4099^2 logits would take the sanitizer minutes.
    plain_emulator(|| check(&Case::new(4099, 48), 13));
}

#[test]
fn the_clamp_freezes_the_scale() {
    // exp(5) = 148 > 100: the logits use 100 and the scale gets no gradient.
    let clamped = Case { log_scale: 5.0, ..Case::new(33, 64) };
    check(&clamped, 4);
    let unclamped = Case { max_scale: None, ..clamped };
    check(&unclamped, 5);
}

#[test]
fn backward_is_deterministic() {
    let mut rng = Rng::new(6);
    let (img, txt) = (unit_rows(&mut rng, 200, 96, DType::BF16), unit_rows(&mut rng, 200, 96, DType::BF16));
    for device in gpu_devices() {
        let be = backend::get(device);
        let [img, txt, scale, dloss] =
            [&img, &txt, &scalar_as(LOG_SCALE_INIT, DType::BF16), &scalar_as(1.0, DType::BF16)]
                .map(|t| on(t, device, DType::BF16));
        let out = be.infonce(InfoNceShard::whole(&img, &txt, &scale, Some(MAX_SCALE))).unwrap();
        let run = || {
            let (a, b, c) =
                be.infonce_backward(InfoNceShard::whole(&img, &txt, &scale, Some(MAX_SCALE)), &out, &dloss).unwrap();
            [a, b, c].map(|t| t.to_f64_vec())
        };
        assert_eq!(run(), run(), "{device}: two backward passes differ");
    }
}

/// A batch's inputs on the host (f32 values representable in `dtype`).
struct Batch {
    img: Tensor,
    txt: Tensor,
    scale: Tensor,
    dloss: Tensor,
    max_scale: Option<f64>,
    weights: ContrastWeights,
}

impl Batch {
    fn new(case: &Case, dtype: DType, seed: u64) -> Batch {
        let mut rng = Rng::new(seed);
        let img = unit_rows(&mut rng, case.n, case.d, dtype);
        let txt = unit_rows(&mut rng, case.n, case.d, dtype);
        let (scale, dloss) = (scalar_as(case.log_scale, dtype), scalar_as(0.75, dtype));
        Batch { img, txt, scale, dloss, max_scale: case.max_scale, weights: case.weights }
    }

    /// Image rows `offset .. offset + rows`.
    fn img_rows(&self, offset: usize, rows: usize) -> Tensor {
        let d = self.img.dims()[1];
        Tensor::from_f64(&self.img.to_f64_vec()[offset * d..(offset + rows) * d], [rows, d], DType::F32).unwrap()
    }
}

/// The whole batch's loss, log-sum-exps and gradients on the CPU in f64 (its n^2-term sums,
/// d logit_scale, would carry f32 rounding of their own).
fn reference(batch: &Batch) -> (InfoNceOut, (Tensor, Tensor, Tensor)) {
    let cpu = backend::get(Device::Cpu);
    let [img, txt, scale, dloss] =
        [&batch.img, &batch.txt, &batch.scale, &batch.dloss].map(|t| t.to_dtype(DType::F64).unwrap());
    let pairs = InfoNceShard::whole(&img, &txt, &scale, batch.max_scale).with_weights(batch.weights);
    let out = cpu.infonce(pairs).unwrap();
    let grads = cpu.infonce_backward(pairs, &out, &dloss).unwrap();
    (out, grads)
}

/// What a data-parallel caller holds after every rank's forward and backward: the loss shares
/// summed, row log-sum-exps and d img concatenated in rank order, d txt and d logit_scale summed
/// (with the magnitudes of the summed parts, for tolerances), and the column log-sum-exps every
/// rank computed (which must agree exactly).
#[derive(Default)]
struct Combined {
    loss: f64,
    row_lse: Vec<f64>,
    col_lse: Vec<f64>,
    dimg: Vec<f64>,
    dtxt: Vec<f64>,
    dtxt_part_scale: f64,
    dscale: f64,
    dscale_part_scale: f64,
}

/// `batch` split into ranks of `sizes` rows on `device` in `dtype`, as a data-parallel caller
/// runs it: partials per rank, an all-gather of the column partials, finish and backward per rank.
fn run_ranks(batch: &Batch, sizes: &[usize], device: Device, dtype: DType) -> Combined {
    let be = backend::get(device);
    let (n, d) = (batch.txt.dims()[0], batch.txt.dims()[1]);
    assert_eq!(sizes.iter().sum::<usize>(), n, "the ranks cover the batch");
    let [txt, scale, dloss] = [&batch.txt, &batch.scale, &batch.dloss].map(|t| on(t, device, dtype));
    let offsets: Vec<usize> = sizes.iter().scan(0, |next, &rows| Some(std::mem::replace(next, *next + rows))).collect();
    let shards: Vec<(usize, Tensor, InfoNcePartial)> = offsets
        .iter()
        .zip(sizes)
        .map(|(&offset, &rows)| {
            let img = on(&batch.img_rows(offset, rows), device, dtype);
            let shard = InfoNceShard {
                offset,
                ..InfoNceShard::whole(&img, &txt, &scale, batch.max_scale).with_weights(batch.weights)
            };
            let partial = be.infonce_partial(shard).unwrap();
            (offset, img, partial)
        })
        .collect();
    // The all-gather: every rank's partial column log-sum-exps, in rank order.
    let gathered: Vec<f64> = shards.iter().flat_map(|(_, _, p)| p.col_lse.to_f64_vec()).collect();
    let gathered =
        Tensor::from_f64(&gathered, [sizes.len(), n], shards[0].2.col_lse.dtype()).unwrap().to_device(device).unwrap();

    let mut all = Combined { dtxt: vec![0.0; n * d], ..Combined::default() };
    for (offset, img, partial) in &shards {
        let out = be.infonce_finish(partial, &gathered).unwrap();
        let col_lse = out.col_lse.to_f64_vec();
        assert!(all.col_lse.is_empty() || all.col_lse == col_lse, "{device}: ranks disagree on the column lse");
        all.col_lse = col_lse;
        all.loss += out.loss.item().unwrap();
        all.row_lse.extend(out.row_lse.to_f64_vec());
        let shard = InfoNceShard {
            offset: *offset,
            ..InfoNceShard::whole(img, &txt, &scale, batch.max_scale).with_weights(batch.weights)
        };
        let (di, dt, ds) = be.infonce_backward(shard, &out, &dloss).unwrap();
        all.dimg.extend(di.to_f64_vec());
        let dt = dt.to_f64_vec();
        all.dtxt_part_scale = all.dtxt_part_scale.max(max_abs(&dt));
        all.dtxt.iter_mut().zip(&dt).for_each(|(a, b)| *a += b);
        let ds = ds.item().unwrap();
        all.dscale += ds;
        all.dscale_part_scale += ds.abs();
    }
    all
}

/// Splits one batch into ranks of `sizes` rows and checks, on the CPU (f64) and every GPU device
/// (f32, bf16), that the combined ranks give the whole batch's loss, log-sum-exps and gradients.
fn check_ranks(case: &Case, sizes: &[usize], seed: u64) {
    let runs = [(Device::Cpu, DType::F64)]
        .into_iter()
        .chain(gpu_devices().into_iter().flat_map(|device| [(device, DType::F32), (device, DType::BF16)]));
    for (device, dtype) in runs {
        let batch = Batch::new(case, dtype, seed);
        let (want, (di, dt, ds)) = reference(&batch);
        let got = run_ranks(&batch, sizes, device, dtype);

        let name = format!("{device} {dtype} n {} d {} ranks {sizes:?} log scale {}", case.n, case.d, case.log_scale);
        let (lse_tol, loss_rtol) = match dtype {
            DType::F64 => (1e-12, 1e-12),
            _ => (2e-5, rtol_of(dtype).min(1.0 / 256.0)),
        };
        assert_close(&format!("{name}: loss"), &[got.loss], &want.loss.to_f64_vec(), lse_tol, loss_rtol);
        assert_close(&format!("{name}: row lse"), &got.row_lse, &want.row_lse.to_f64_vec(), lse_tol, lse_tol);
        assert_close(&format!("{name}: col lse"), &got.col_lse, &want.col_lse.to_f64_vec(), lse_tol, lse_tol);
        let (di, dt) = (di.to_f64_vec(), dt.to_f64_vec());
        compare_grad_at(&format!("{name}: d img"), &got.dimg, &di, dtype, max_abs(&di));
        compare_grad_at(&format!("{name}: d txt"), &got.dtxt, &dt, dtype, max_abs(&dt).max(got.dtxt_part_scale));
        // As in `check`, plus the rounding of each rank's part for bf16.
        let dscale_atol = match dtype {
            DType::F64 => 1e-12,
            DType::BF16 => (got.dscale_part_scale / 256.0).max(1e-4),
            _ => 1e-4,
        };
        assert_close(&format!("{name}: d logit_scale"), &[got.dscale], &ds.to_f64_vec(), dscale_atol, rtol_of(dtype));
    }
}

#[test]
fn ranks_combine_into_the_batch() {
    check_ranks(&Case::new(77, 33), &[30, 30, 17], 20);
    check_ranks(&Case::new(130, 64), &[64, 66], 21);
    check_ranks(&Case::new(7, 96), &[1, 6], 22);
    check_ranks(&Case::new(40, 600), &[19, 21], 23);
    // Ranks of one and two row blocks against 4 text tiles: their texts split in 4 and 2.
    check_ranks(&Case::new(200, 96), &[40, 80, 80], 28);
}

#[test]
fn ranks_with_weighted_directions() {
    let one_way = Case { weights: ContrastWeights::ROWS, ..Case::new(77, 33) };
    check_ranks(&one_way, &[30, 30, 17], 29);
    check_ranks(&Case { weights: ContrastWeights { rows: 0.25, columns: 1.5 }, ..Case::new(130, 64) }, &[64, 66], 30);
}

#[test]
fn ranks_with_the_clamp() {
    let clamped = Case { log_scale: 5.0, ..Case::new(33, 64) };
    check_ranks(&clamped, &[16, 17], 24);
    check_ranks(&Case { max_scale: None, ..clamped }, &[11, 11, 11], 25);
}

#[test]
fn a_rank_outside_the_batch_is_an_error() {
    let batch = Batch::new(&Case::new(8, 16), DType::F32, 26);
    for device in [Device::Cpu].into_iter().chain(gpu_devices()) {
        let be = backend::get(device);
        let [txt, scale] = [&batch.txt, &batch.scale].map(|t| on(t, device, DType::F32));
        let img = on(&batch.img_rows(4, 4), device, DType::F32);
        let shard = |offset| InfoNceShard { offset, ..InfoNceShard::whole(&img, &txt, &scale, None) };
        assert!(be.infonce_partial(shard(5)).is_err(), "{device}: rows 5..9 of 8");
        let partial = be.infonce_partial(shard(4)).unwrap();
        let wrong = on(&Tensor::zeros([2, 7], DType::F32), device, partial.col_lse.dtype());
        assert!(be.infonce_finish(&partial, &wrong).is_err(), "{device}: partials of 7 columns for 8");
    }
}

/// Device bytes allocated at once during `f`, and the bytes of what it returns.
fn peak_and_outputs(f: impl FnOnce() -> Vec<Tensor>) -> (usize, usize) {
    let (outputs, peak) = measure_allocations(f);
    let output_bytes = outputs.iter().map(|t| t.numel() * t.dtype().size_in_bytes()).sum();
    (peak, output_bytes)
}

/// (peak, output bytes) of the forward and the backward of the first of `ranks` equal ranks of a
/// batch of n pairs (the whole batch for one rank; the forward of a rank is its partial).
fn memory_of(device: Device, n: usize, d: usize, ranks: usize) -> [(usize, usize); 2] {
    let be = backend::get(device);
    let batch = Batch::new(&Case::new(n, d), DType::BF16, 27);
    let [txt, scale, dloss] = [&batch.txt, &batch.scale, &batch.dloss].map(|t| on(t, device, DType::BF16));
    let imgs: Vec<Tensor> =
        (0..ranks).map(|r| on(&batch.img_rows(r * n / ranks, n / ranks), device, DType::BF16)).collect();
    let shard = |r: usize| InfoNceShard { offset: r * n / ranks, ..InfoNceShard::whole(&imgs[r], &txt, &scale, None) };
    let (forward, backward) = if ranks == 1 {
        let mut out = None;
        let forward = peak_and_outputs(|| {
            let o = out.insert(be.infonce(InfoNceShard::whole(&imgs[0], &txt, &scale, None)).unwrap());
            vec![o.loss.clone(), o.row_lse.clone(), o.col_lse.clone()]
        });
        let out = out.unwrap();
        let backward = peak_and_outputs(|| {
            let (a, b, c) =
                be.infonce_backward(InfoNceShard::whole(&imgs[0], &txt, &scale, None), &out, &dloss).unwrap();
            vec![a, b, c]
        });
        (forward, backward)
    } else {
        let mut first = None;
        let forward = peak_and_outputs(|| {
            let p = first.insert(be.infonce_partial(shard(0)).unwrap());
            vec![p.row_lse.clone(), p.col_lse.clone(), p.positive_terms.clone()]
        });
        let partials: Vec<InfoNcePartial> =
            std::iter::once(first.unwrap()).chain((1..ranks).map(|r| be.infonce_partial(shard(r)).unwrap())).collect();
        let gathered: Vec<f64> = partials.iter().flat_map(|p| p.col_lse.to_f64_vec()).collect();
        let gathered = Tensor::from_f64(&gathered, [ranks, n], DType::F32).unwrap().to_device(device).unwrap();
        let out = be.infonce_finish(&partials[0], &gathered).unwrap();
        let backward = peak_and_outputs(|| {
            let (a, b, c) = be.infonce_backward(shard(0), &out, &dloss).unwrap();
            vec![a, b, c]
        });
        (forward, backward)
    };
    [forward, backward]
}

#[test]
fn device_memory_grows_linearly() {
    // Allocation sizes, not kernel behaviour: the plain emulator.
    plain_emulator(device_memory_grows_linearly_on_every_device);
}

fn device_memory_grows_linearly_on_every_device() {
    const SIZES: [usize; 3] = [256, 512, 1024];
    let d = 64;
    for device in gpu_devices() {
        // The whole batch, and a rank of two (whose texts are split in two: fp32 parts of d img).
        for ranks in [1, 2] {
            let bytes = SIZES.map(|n| memory_of(device, n, d, ranks));
            for (pass, name) in ["forward", "backward"].into_iter().enumerate() {
                let name = format!("{device} {name} of a rank of {ranks}");
                let peak = bytes.map(|b| b[pass].0);
                let workspace = bytes.map(|b| b[pass].0 - b[pass].1);
                eprintln!("{name}: n {SIZES:?}, peak bytes {peak:?}, beyond the outputs {workspace:?}");
                for (what, v) in [("peak", peak), ("workspace", workspace)] {
                    // n doubles twice: a linear a n + b doubles its increments, anything quadratic quadruples them.
                    assert_eq!(v[2] - v[1], 2 * (v[1] - v[0]), "{name}: {what} bytes {v:?} are not linear in n");
                }
                // At most an fp32 row of d img and a float per pair.
                for (&n, &w) in SIZES.iter().zip(&workspace) {
                    assert!(w <= 4 * (d + 1) * n, "{name}: {w} workspace bytes for {n} pairs");
                }
                let logits = 4 * SIZES[2] * SIZES[2];
                assert!(peak[2] * 8 < logits, "{name}: {} bytes at n = 1024, the n x n logits are {logits}", peak[2]);
            }
        }
    }
}
