//! Varlen packed attention ([`AttnMask::sequence_offsets`]) on the CPU reference: sequences
//! packed back to back get exactly what each gets alone, forward and backward, with every mask
//! (the causal one also on the later sequences only);
//! the gradient matches finite differences; offsets that do not split the tokens are errors.
//! (GPU parity of packed calls: tests/gpu_attention.rs.)

mod common;

use common::{gradcheck, randn};
use msclip::backend::{self, AttnMask};
use msclip::{Device, Rng, Tensor, ops};

const HEADS: usize = 2;
const WIDTH: usize = 8;

#[test]
fn packed_sequences_get_what_each_gets_alone() {
    let cpu = backend::get(Device::Cpu);
    let mut rng = Rng::new(11);
    // Lengths 3, 0, 7, 1, 5: an empty sequence and a single token among them.
    let offsets = vec![0, 3, 3, 10, 11, 16];
    let total = offsets[offsets.len() - 1];
    // No causal mask, a causal mask on all, on the sequences from 2 on (a fused layer's captions
    // after its images).
    for (causal, first_causal_sequence) in [(false, 0), (true, 0), (true, 2)] {
        for key_lengths in [None, Some(vec![2, 0, 7, 0, 4])] {
            let mask = AttnMask {
                first_causal_sequence,
                key_lengths: key_lengths.clone(),
                ..AttnMask::packed(offsets.clone(), causal)
            };
            let qkv = randn(&mut rng, &[1, total, 3 * WIDTH]);
            let dout = randn(&mut rng, &[1, total, WIDTH]);
            let (out, lse) = cpu.attention(&qkv, HEADS, &mask).unwrap();
            let dqkv = cpu.attention_backward(&qkv, &out, &lse, &dout, HEADS, &mask).unwrap();
            for (s, w) in offsets.windows(2).enumerate().filter(|(_, w)| w[1] > w[0]) {
                let what = format!("{mask:?}, sequence {s}");
                let part = |t: &Tensor, dim: usize| cpu.slice(t, dim, w[0], w[1] - w[0]).unwrap().to_f64_vec();
                let alone = AttnMask {
                    causal: mask.is_causal(s),
                    key_lengths: key_lengths.as_ref().map(|l| vec![l[s]]),
                    ..AttnMask::none()
                };
                let (qkv_s, dout_s) =
                    (cpu.slice(&qkv, 1, w[0], w[1] - w[0]).unwrap(), cpu.slice(&dout, 1, w[0], w[1] - w[0]).unwrap());
                let (out_s, lse_s) = cpu.attention(&qkv_s, HEADS, &alone).unwrap();
                let dqkv_s = cpu.attention_backward(&qkv_s, &out_s, &lse_s, &dout_s, HEADS, &alone).unwrap();
                assert_eq!(part(&out, 1), out_s.to_f64_vec(), "{what}: output");
                assert_eq!(part(&lse, 2), lse_s.to_f64_vec(), "{what}: lse");
                assert_eq!(part(&dqkv, 1), dqkv_s.to_f64_vec(), "{what}: dqkv");
            }
        }
    }
}

#[test]
fn packed_attention_gradient() {
    let mut r = Rng::new(12);
    let masks = [
        AttnMask::packed(vec![0, 4, 4, 9], true),
        AttnMask::packed(vec![0, 1, 6, 9], false),
        AttnMask { key_lengths: Some(vec![1, 0, 3]), ..AttnMask::packed(vec![0, 2, 6, 9], true) },
        AttnMask::packed_causal_after(vec![0, 3, 6, 9], 2),
    ];
    for mask in masks {
        gradcheck("attention packed", &[randn(&mut r, &[1, 9, 3 * 12])], |t| ops::attention(&t[0], 3, &mask));
    }
}

#[test]
fn masks_that_do_not_fit_the_tokens_are_errors() {
    let qkv = Tensor::zeros([1, 6, 3 * WIDTH], msclip::DType::F32);
    let attend = |qkv: &Tensor, mask: AttnMask| ops::attention(qkv, HEADS, &mask).map(|_| ()).unwrap_err().to_string();
    for offsets in [vec![0, 4], vec![1, 6], vec![0, 4, 3, 6], vec![]] {
        let err = attend(&qkv, AttnMask::packed(offsets.clone(), false));
        assert!(err.contains("do not split 6 tokens"), "{offsets:?}: {err}");
    }
    let batch_of_two = Tensor::zeros([2, 3, 3 * WIDTH], msclip::DType::F32);
    let err = attend(&batch_of_two, AttnMask::packed(vec![0, 3], false));
    assert!(err.contains("batch of 1"), "{err}");
    let lengths = AttnMask { key_lengths: Some(vec![2]), ..AttnMask::packed(vec![0, 2, 6], false) };
    assert!(attend(&qkv, lengths).contains("1 key lengths for 2 sequences"));
    let too_long = AttnMask { key_lengths: Some(vec![3, 4]), ..AttnMask::packed(vec![0, 2, 6], false) };
    assert!(attend(&qkv, too_long).contains("key length 3 for sequence 0 of length 2"));
    let past_the_end = AttnMask::packed_causal_after(vec![0, 2, 6], 3);
    assert!(attend(&qkv, past_the_end).contains("causal mask starts at sequence 3 of 2"));
}
