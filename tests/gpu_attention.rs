//! Attention kernels (kernels/attention.cu) against the CPU reference: forward output and
//! log-sum-exp, and d qkv, for every mask, ragged sequence lengths (1, 7, 50, 65, 77, 197),
//! odd batch x head counts, head dims 64 and 32, f32 and bf16.
//!
//! Both dtypes run bf16 tensor-core products with fp32 accumulation (f32 inputs are rounded to
//! bf16 in shared memory), so both are held to bf16 tolerances: |got - want| <= atol + rtol |want|
//! with rtol = 1/64 and atol a small fraction of the tensor's largest reference value.

mod common;

use common::assert_close;
use common::gpu::{gpu_devices, on, randn_as};
use msclip::backend::{self, AttnMask};
use msclip::{DType, Device, Rng, Tensor};

const RTOL: f64 = 1.0 / 64.0;
/// atol as a fraction of the largest |reference| value of the compared tensor, or of the inputs'
/// scale (1) when that is smaller: a gradient that cancels to ~0 (a single key) keeps the
/// absolute error of its terms.
const ATOL_OF_MAX: f64 = 1.0 / 128.0;

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
}

fn max_abs(values: &[f64]) -> f64 {
    values.iter().fold(0.0, |m, v| m.max(v.abs()))
}

/// `assert_close` with atol relative to the reference's scale.
fn assert_scaled(what: &str, got: &Tensor, want: &Tensor) {
    let (got, want) = (got.to_f64_vec(), want.to_f64_vec());
    assert_close(what, &got, &want, ATOL_OF_MAX * max_abs(&want).max(1.0), RTOL);
}

/// Log-sum-exp values: -inf exactly where the reference has it (a query that sees no key).
fn assert_lse(what: &str, got: &Tensor, want: &Tensor) {
    let (got, want) = (got.to_f64_vec(), want.to_f64_vec());
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        if w == f64::NEG_INFINITY {
            assert_eq!(g, w, "{what}: element {i} must be -inf");
        }
    }
    let finite = |v: &[f64]| v.iter().map(|&x| if x.is_finite() { x } else { 0.0 }).collect::<Vec<_>>();
    assert_close(what, &finite(&got), &finite(&want), 1e-2, RTOL);
}

/// Runs forward and backward of `case` on every GPU device in both dtypes against the CPU.
fn check(case: &Case, seed: u64) {
    let cpu = backend::get(Device::Cpu);
    for dtype in [DType::F32, DType::BF16] {
        let mut rng = Rng::new(seed);
        let qkv = randn_as(&mut rng, &[case.batch, case.len, 3 * case.width()], 1.0, dtype);
        let dout = randn_as(&mut rng, &[case.batch, case.len, case.width()], 1.0, dtype);
        let (out, lse) = cpu.attention(&qkv, case.heads, &case.mask).unwrap();
        let dqkv = cpu.attention_backward(&qkv, &out, &lse, &dout, case.heads, &case.mask).unwrap();
        for device in gpu_devices() {
            let name = case.name(dtype, device);
            let be = backend::get(device);
            let qkv_d = on(&qkv, device, dtype);
            let (out_d, lse_d) = be.attention(&qkv_d, case.heads, &case.mask).unwrap();
            assert_eq!(out_d.dims(), out.dims(), "{name}: output shape");
            assert_eq!(lse_d.dims(), lse.dims(), "{name}: lse shape");
            assert_scaled(&format!("{name}: output"), &out_d, &out);
            assert_lse(&format!("{name}: lse"), &lse_d, &lse);
            let dqkv_d = be
                .attention_backward(&qkv_d, &out_d, &lse_d, &on(&dout, device, dtype), case.heads, &case.mask)
                .unwrap();
            // q, k and v gradients have different scales: compare each block on its own.
            let dqkv_d = dqkv_d.to_device(Device::Cpu).unwrap().to_dtype(DType::F32).unwrap();
            for (which, part) in ["dq", "dk", "dv"].iter().enumerate() {
                let block = |t: &Tensor| cpu.slice(t, 2, which * case.width(), case.width()).unwrap();
                assert_scaled(&format!("{name}: {part}"), &block(&dqkv_d), &block(&dqkv));
            }
        }
    }
}

#[test]
fn unmasked_attention_matches_the_cpu_at_vision_lengths() {
    check(&Case::new(1, 1, 3, AttnMask::none()), 1);
    check(&Case::new(1, 50, 3, AttnMask::none()), 2);
}

#[test]
fn unmasked_attention_over_several_key_tiles() {
    check(&Case::new(1, 197, 1, AttnMask::none()), 3);
}

#[test]
fn causal_attention_matches_the_cpu_at_text_lengths() {
    check(&Case::new(3, 7, 1, AttnMask::causal()), 4);
    check(&Case::new(1, 77, 1, AttnMask::causal()), 5);
}

#[test]
fn key_padding_with_an_empty_sequence_gives_zeros_and_infinite_lse() {
    check(&Case::new(3, 65, 1, AttnMask::key_padding(vec![65, 0, 3])), 6);
}

#[test]
fn causal_attention_with_key_padding() {
    let mask = AttnMask { causal: true, key_lengths: Some(vec![77, 12, 0]) };
    check(&Case::new(3, 77, 1, mask), 7);
}

#[test]
fn every_mask_at_tile_edge_lengths() {
    for (i, len) in [2, 16, 17, 63, 64, 127, 128, 129, 257].into_iter().enumerate() {
        let lengths = vec![len, len / 2 + 1];
        let mask = match i % 4 {
            0 => AttnMask::none(),
            1 => AttnMask::causal(),
            2 => AttnMask::key_padding(lengths),
            _ => AttnMask { causal: true, key_lengths: Some(lengths) },
        };
        check(&Case::new(2, len, 1, mask), 100 + i as u64);
    }
}

#[test]
fn head_dim_32_of_the_tiny_models() {
    let case = Case { head_dim: 32, ..Case::new(1, 33, 4, AttnMask::causal()) };
    check(&case, 8);
}

#[test]
fn backward_is_deterministic() {
    let case = Case::new(1, 77, 1, AttnMask::causal());
    let mut rng = Rng::new(9);
    let qkv = randn_as(&mut rng, &[case.batch, case.len, 3 * case.width()], 1.0, DType::BF16);
    let dout = randn_as(&mut rng, &[case.batch, case.len, case.width()], 1.0, DType::BF16);
    for device in gpu_devices() {
        let be = backend::get(device);
        let (qkv, dout) = (on(&qkv, device, DType::BF16), on(&dout, device, DType::BF16));
        let (out, lse) = be.attention(&qkv, case.heads, &case.mask).unwrap();
        let run = || be.attention_backward(&qkv, &out, &lse, &dout, case.heads, &case.mask).unwrap().to_f64_vec();
        assert_eq!(run(), run(), "{device}: two backward passes differ");
    }
}

#[test]
fn unsupported_head_dims_are_a_clear_error() {
    let qkv = on(&Tensor::zeros([1, 4, 3 * 48], DType::F32), Device::Emu, DType::F32);
    let err = backend::get(Device::Emu).attention(&qkv, 1, &AttnMask::none()).expect_err("head dim 48 is rejected");
    assert!(err.to_string().contains("head dims 32 and 64"), "{err}");
}
