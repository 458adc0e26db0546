//! Attention kernels (kernels/attention.cu, kernels/attention_exact.cu) against the CPU
//! reference: forward output and log-sum-exp, and d qkv, for every mask, ragged sequence
//! lengths (1, 33, 50, 65, 77, 197, 257, the edges of 32- and 64-row tiles), varlen packed
//! sequences, odd batch x head counts, f32 and bf16.
//!
//! bf16 runs tensor-core products (head dims 32 and 64) in every tile shape of the kernels
//! ([`AttnTiles::ALL`]), each forced in turn, and is held to bf16 tolerances; f32 runs
//! the exact fp32 kernels (any head dim up to 128, swept here) and is held to f32 tolerances:
//! |got - want| <= atol + rtol |want|, atol a small fraction of the tensor's largest reference
//! value (or of the inputs' scale, 1, when that is smaller: a gradient that cancels to ~0, as
//! with a single key, keeps the absolute error of its terms).

mod common;

use common::assert_close;
use common::gpu::{gpu_devices, on, randn_as};
use msclip::backend::gpu::{AttnTiles, GpuBackend};
use msclip::backend::{self, AttnMask, Backend, SegmentMask};
use msclip::{DType, Device, Rng, Tensor};

/// How close a dtype's results must be to the CPU's.
struct Tolerance {
    rtol: f64,
    /// atol as a fraction of max(1, largest |reference| value).
    atol_of_max: f64,
    /// atol of the log-sum-exp (values of a few units).
    lse_atol: f64,
}

fn tolerance(dtype: DType) -> Tolerance {
    match dtype {
        // 8-bit mantissas in the products' operands.
        DType::BF16 => Tolerance { rtol: 1.0 / 64.0, atol_of_max: 1.0 / 128.0, lse_atol: 1e-2 },
        // fp32 throughout, against the CPU's own f32 rounding: the worst measured error over this
        // file's cases is 1.2e-6 of the tensor's scale.
        _ => Tolerance { rtol: 1e-4, atol_of_max: 1e-5, lse_atol: 1e-5 },
    }
}

struct Case {
    batch: usize,
    len: usize,
    heads: usize,
    head_dim: usize,
    mask: AttnMask,
}

impl Case {
    fn new(batch: usize, len: usize, heads: usize, mask: AttnMask) -> Case {
        Case { batch, len, heads, head_dim: 64, mask }
    }
    fn width(&self) -> usize {
        self.heads * self.head_dim
    }
    fn name(&self, dtype: DType, device: Device) -> String {
        format!(
            "{device} {dtype} batch {} len {} heads {} x {} {:?}",
            self.batch, self.len, self.heads, self.head_dim, self.mask
        )
    }
    /// f32 always; bf16 where its tensor-core kernels exist.
    fn dtypes(&self) -> Vec<DType> {
        if matches!(self.head_dim, 32 | 64) { vec![DType::F32, DType::BF16] } else { vec![DType::F32] }
    }
}

/// The tile shapes a dtype runs in: each of the bf16 kernels' forced in turn (the backend's own
/// pick is one of them), none for f32.
fn tile_shapes(dtype: DType) -> Vec<Option<AttnTiles>> {
    if dtype == DType::BF16 { AttnTiles::ALL.map(Some).to_vec() } else { vec![None] }
}

/// Every mask over a batch of one or two sequences of `len`: none, causal, key padding (len / 2
/// keys, none at all for len 1; then all of them) and causal with key padding.
fn every_mask(batch: usize, len: usize) -> [AttnMask; 4] {
    let lengths = [len / 2, len][..batch].to_vec();
    [
        AttnMask::none(),
        AttnMask::causal(),
        AttnMask::key_padding(lengths.clone()),
        AttnMask { causal: true, key_lengths: Some(lengths), ..AttnMask::none() },
    ]
}

fn max_abs(values: &[f64]) -> f64 {
    values.iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// `assert_close` with atol relative to the reference's scale.
fn assert_scaled(what: &str, got: &Tensor, want: &Tensor, tol: &Tolerance) {
    let (got, want) = (got.to_f64_vec(), want.to_f64_vec());
    assert_close(what, &got, &want, tol.atol_of_max * max_abs(&want).max(1.0), tol.rtol);
}

/// Log-sum-exp values: -inf exactly where the reference has it (a query that sees no key).
fn assert_lse(what: &str, got: &Tensor, want: &Tensor, tol: &Tolerance) {
    let (got, want) = (got.to_f64_vec(), want.to_f64_vec());
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        if w == f64::NEG_INFINITY {
            assert_eq!(g, w, "{what}: element {i} must be -inf");
        }
    }
    let finite = |v: &[f64]| v.iter().map(|&x| if x.is_finite() { x } else { 0.0 }).collect::<Vec<_>>();
    assert_close(what, &finite(&got), &finite(&want), tol.lse_atol, tol.rtol);
}

/// Runs forward and backward of `case` on every GPU device in both dtypes against the CPU.
fn check(case: &Case, seed: u64) {
    let cpu = backend::get(Device::Cpu);
    for dtype in case.dtypes() {
        let tol = tolerance(dtype);
        let mut rng = Rng::new(seed);
        let qkv = randn_as(&mut rng, &[case.batch, case.len, 3 * case.width()], 1.0, dtype);
        let dout = randn_as(&mut rng, &[case.batch, case.len, case.width()], 1.0, dtype);
        let (out, lse) = cpu.attention(&qkv, case.heads, &case.mask).unwrap();
        let dqkv = cpu.attention_backward(&qkv, &out, &lse, &dout, case.heads, &case.mask).unwrap();
        for (device, tiles) in
            gpu_devices().into_iter().flat_map(|d| tile_shapes(dtype).into_iter().map(move |t| (d, t)))
        {
            let name = match tiles {
                Some(tiles) => format!("{} {tiles}", case.name(dtype, device)),
                None => case.name(dtype, device),
            };
            let gpu = match tiles {
                Some(tiles) => GpuBackend::new(device).with_attention_tiles(tiles),
                None => GpuBackend::new(device),
            };
            let qkv_d = on(&qkv, device, dtype);
            let (out_d, lse_d) = gpu.attention(&qkv_d, case.heads, &case.mask).unwrap();
            assert_eq!(out_d.dims(), out.dims(), "{name}: output shape");
            assert_eq!(lse_d.dims(), lse.dims(), "{name}: lse shape");
            assert_scaled(&format!("{name}: output"), &out_d, &out, &tol);
            assert_lse(&format!("{name}: lse"), &lse_d, &lse, &tol);
            let dqkv_d = gpu
                .attention_backward(&qkv_d, &out_d, &lse_d, &on(&dout, device, dtype), case.heads, &case.mask)
                .unwrap();
            // q, k and v gradients have different scales: compare each block on its own.
            let dqkv_d = dqkv_d.to_device(Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
            for (which, part) in ["dq", "dk", "dv"].iter().enumerate() {
                let block = |t: &Tensor| cpu.slice(t, 2, which * case.width(), case.width()).unwrap();
                assert_scaled(&format!("{name}: {part}"), &block(&dqkv_d), &block(&dqkv), &tol);
            }
        }
    }
}

/// `check` with every mask at each of `lengths`.
fn check_every_mask(batch: usize, heads: usize, lengths: &[usize], seed: u64) {
    for (i, &len) in lengths.iter().enumerate() {
        for (m, mask) in every_mask(batch, len).into_iter().enumerate() {
            check(&Case::new(batch, len, heads, mask), seed + 10 * i as u64 + m as u64);
        }
    }
}

#[test]
fn every_mask_at_clip_lengths() {
    // 1 token (with key padding: a sequence that sees nothing), 33 (one past a 32-row tile) and
    // the ViT-B/32 (50) and text (77) lengths.
    check_every_mask(2, 3, &[1, 33, 50, 77], 10);
}

#[test]
fn every_mask_over_several_tiles() {
    // ViT-B/16's 197 tokens (7 tiles of 32, 4 of 64) and 257 (one past four 64-row tiles): one
    // sequence, to keep the emulator's time down.
    check_every_mask(1, 1, &[197, 257], 60);
}

#[test]
fn key_padding_with_an_empty_sequence_gives_zeros_and_infinite_lse() {
    check(&Case::new(3, 65, 1, AttnMask::key_padding(vec![65, 0, 3])), 6);
}

#[test]
fn causal_attention_with_key_padding() {
    let mask = AttnMask { causal: true, key_lengths: Some(vec![77, 12, 0]), ..AttnMask::none() };
    check(&Case::new(3, 77, 1, mask), 7);
}

#[test]
fn masks_at_tile_edge_lengths() {
    // Around the edges of 16-row warps and 32- and 64-row tiles, one mask each in turn.
    for (i, len) in [2, 16, 17, 31, 32, 63, 64, 65, 95, 96, 97, 127, 128, 129].into_iter().enumerate() {
        let mask = every_mask(2, len)[i % 4].clone();
        check(&Case::new(2, len, 1, mask), 100 + i as u64);
    }
}

#[test]
fn head_dim_32_of_the_tiny_models() {
    let case = Case { head_dim: 32, ..Case::new(1, 33, 4, AttnMask::causal()) };
    check(&case, 8);
}

#[test]
fn f32_takes_any_head_dim_up_to_128() {
    for (i, head_dim) in [1, 3, 31, 33, 48, 96, 100, 128].into_iter().enumerate() {
        let mask = match i % 4 {
            0 => AttnMask::none(),
            1 => AttnMask::causal(),
            2 => AttnMask::key_padding(vec![5, 37]),
            _ => AttnMask { causal: true, key_lengths: Some(vec![0, 20]), ..AttnMask::none() },
        };
        check(&Case { head_dim, ..Case::new(2, 37, 2, mask) }, 200 + i as u64);
    }
}

#[test]
fn packed_sequences_of_different_lengths_share_one_launch() {
    // Trimmed captions and image sequences back to back: lengths 7, 0, 77, 1, 50, 65.
    let offsets = vec![0, 7, 7, 84, 85, 135, 200];
    check(&Case::new(1, 200, 2, AttnMask::packed(offsets.clone(), true)), 300);
    let padded = AttnMask { key_lengths: Some(vec![7, 0, 30, 0, 50, 64]), ..AttnMask::packed(offsets.clone(), false) };
    check(&Case::new(1, 200, 1, padded), 301);
    check(&Case { head_dim: 32, ..Case::new(1, 200, 3, AttnMask::packed(offsets.clone(), false)) }, 302);
    check(&Case { head_dim: 48, ..Case::new(1, 200, 1, AttnMask::packed(offsets, true)) }, 303);
}

#[test]
fn images_in_full_then_causal_captions_share_one_launch() {
    // A modality-fused layer's rows: three images of 50 tokens, then captions of 7, 0, 77, 1.
    let offsets = vec![0, 50, 100, 150, 157, 157, 234, 235];
    check(&Case::new(1, 235, 2, AttnMask::packed_causal_after(offsets.clone(), 3)), 310);
    check(&Case { head_dim: 32, ..Case::new(1, 235, 1, AttnMask::packed_causal_after(offsets, 3)) }, 311);
}

#[test]
fn segment_masks_on_joint_image_and_caption_sequences() {
    // OneR's joint rows: pairs of a 50-token image (a boundary inside a 32- and a 64-row tile)
    // and a caption of 7, 0, 27 or 1 tokens, then a padding sequence of 3 (all segment 0: shorter
    // than the boundary).
    let offsets = vec![0, 57, 107, 184, 235, 238];
    for (i, segments) in
        [SegmentMask::full(50), SegmentMask::block_diagonal(50), SegmentMask::cross(50)].into_iter().enumerate()
    {
        let packed = AttnMask { segments: Some(segments), ..AttnMask::packed(offsets.clone(), false) };
        check(&Case::new(1, 238, 2, packed), 320 + i as u64);
        // Under the causal mask and key padding too, and over batch rows with a boundary of 33.
        let padded = AttnMask {
            segments: Some(segments),
            key_lengths: Some(vec![57, 40, 70, 20, 3]),
            ..AttnMask::packed(offsets.clone(), true)
        };
        check(&Case { head_dim: 32, ..Case::new(1, 238, 1, padded) }, 330 + i as u64);
        let rows = AttnMask { segments: Some(SegmentMask { boundary: 33, ..segments }), ..AttnMask::none() };
        check(&Case { head_dim: 48, ..Case::new(2, 77, 1, rows) }, 340 + i as u64);
    }
}

#[test]
fn backward_is_deterministic() {
    let case = Case::new(1, 77, 1, AttnMask::causal());
    for dtype in case.dtypes() {
        let mut rng = Rng::new(9);
        let qkv = randn_as(&mut rng, &[case.batch, case.len, 3 * case.width()], 1.0, dtype);
        let dout = randn_as(&mut rng, &[case.batch, case.len, case.width()], 1.0, dtype);
        for device in gpu_devices() {
            let be = backend::get(device);
            let (qkv, dout) = (on(&qkv, device, dtype), on(&dout, device, dtype));
            let (out, lse) = be.attention(&qkv, case.heads, &case.mask).unwrap();
            let run = || be.attention_backward(&qkv, &out, &lse, &dout, case.heads, &case.mask).unwrap().to_f64_vec();
            assert_eq!(run(), run(), "{device} {dtype}: two backward passes differ");
        }
    }
}

#[test]
fn tile_shapes_follow_the_padded_work_at_clip_lengths() {
    let gpu = GpuBackend::new(Device::Emu);
    let pick = |batch: usize, len: usize, heads: usize, mask: AttnMask| {
        let qkv = Tensor::zeros([batch, len, 3 * 64 * heads], DType::BF16);
        gpu.attention_tiles(&qkv, heads, &mask).unwrap().map(|t| t.to_string())
    };
    let pick = |batch, len, heads, mask| pick(batch, len, heads, mask).expect("bf16 has tile shapes");
    // 50 pads to 64 x 64 in every shape: 32 x 12 blocks of 64 rows fill the GPU, and fewer,
    // larger blocks stage the keys less often; 12 blocks would leave it idle, 32 rows give 24.
    assert_eq!(pick(32, 50, 12, AttnMask::none()), "q64k64");
    assert_eq!(pick(1, 50, 12, AttnMask::none()), "q32k64");
    // 77 pads to 96 x 96 with 32 x 32 tiles (128 x 128 with 64 x 64), 197 to 224 x 224.
    assert_eq!(pick(4, 77, 8, AttnMask::causal()), "q32k32");
    assert_eq!(pick(64, 197, 12, AttnMask::none()), "q32k32");
    // Packed sequences count each one's padding: 128 tokens pad to nothing in any shape, 32
    // only with 32 x 32 tiles.
    assert_eq!(pick(1, 160, 12, AttnMask::packed(vec![0, 128, 160], false)), "q32k32");
    let f32 = Tensor::zeros([1, 50, 3 * 64], DType::F32);
    assert_eq!(gpu.attention_tiles(&f32, 1, &AttnMask::none()).unwrap(), None, "f32 runs the exact kernels");
}

#[test]
fn unsupported_head_dims_are_a_clear_error() {
    let emu = backend::get(Device::Emu);
    let bf16 = on(&Tensor::zeros([1, 4, 3 * 48], DType::F32), Device::Emu, DType::BF16);
    let err = emu.attention(&bf16, 1, &AttnMask::none()).expect_err("bf16 head dim 48 is rejected");
    assert!(err.to_string().contains("head dims 32 and 64"), "{err}");
    let f32 = on(&Tensor::zeros([1, 4, 3 * 160], DType::F32), Device::Emu, DType::F32);
    let err = emu.attention(&f32, 1, &AttnMask::none()).expect_err("f32 head dim 160 is rejected");
    assert!(err.to_string().contains("head dims 1 to 128"), "{err}");
    let f32 = on(&Tensor::zeros([1, 4, 3 * 64], DType::F32), Device::Emu, DType::F32);
    let err = GpuBackend::new(Device::Emu)
        .with_attention_tiles(AttnTiles::ALL[0])
        .attention(&f32, 1, &AttnMask::none())
        .expect_err("f32 has no tile shapes to force");
    assert!(err.to_string().contains("f32 has none"), "{err}");
}
