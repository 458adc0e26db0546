//! Segment masks ([`SegmentMask`], OneR's joint image+text sequences) on the CPU reference: the
//! output and log-sum-exp against attention written out query by query in f64 from the mask's
//! definition, for full, block-diagonal and cross visibility, over batch rows and packed
//! sequences, with the causal mask and key padding on top and boundaries past a sequence's end;
//! block-diagonal segments get what each segment gets alone; the gradient matches finite
//! differences. (GPU parity: tests/gpu_attention.rs.)

mod common;

use common::{assert_close, gradcheck, randn};
use msclip::backend::{self, AttnMask, SegmentMask};
use msclip::{Device, Rng, Tensor, ops};

const HEADS: usize = 2;
const WIDTH: usize = 8;

/// Whether query `q` of a sequence sees key `k`, from the definitions: its segment's visibility
/// of the key's segment, then the causal mask, then key padding.
fn sees(segments: &SegmentMask, causal: bool, key_length: usize, q: usize, k: usize) -> bool {
    let segment = |t: usize| usize::from(t >= segments.boundary);
    segments.visible[segment(q)][segment(k)] && (!causal || k <= q) && k < key_length
}

/// Attention of one sequence (tokens `start..start + len` of batch row `row` of qkv [batch, len,
/// 3 width]) query by query in f64: its output rows and each head's log-sum-exp per query.
fn naive(
    qkv: &[f64],
    row_len: usize,
    row: usize,
    start: usize,
    len: usize,
    visible: impl Fn(usize, usize) -> bool,
) -> (Vec<f64>, Vec<f64>) {
    let head_dim = WIDTH / HEADS;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let at = |t: usize, which: usize, h: usize, d: usize| {
        qkv[((row * row_len + start + t) * 3 + which) * WIDTH + h * head_dim + d]
    };
    let (mut out, mut lse) = (vec![0.0; len * WIDTH], vec![f64::NEG_INFINITY; HEADS * len]);
    for h in 0..HEADS {
        for q in 0..len {
            let keys: Vec<usize> = (0..len).filter(|&k| visible(q, k)).collect();
            if keys.is_empty() {
                continue;
            }
            let scores: Vec<f64> = keys
                .iter()
                .map(|&k| (0..head_dim).map(|d| at(q, 0, h, d) * at(k, 1, h, d)).sum::<f64>() * scale)
                .collect();
            let max = scores.iter().fold(f64::NEG_INFINITY, |m, &s| m.max(s));
            let sum: f64 = scores.iter().map(|s| (s - max).exp()).sum();
            lse[h * len + q] = max + sum.ln();
            for (&k, s) in keys.iter().zip(&scores) {
                let p = (s - max).exp() / sum;
                (0..head_dim).for_each(|d| out[q * WIDTH + h * head_dim + d] += p * at(k, 2, h, d));
            }
        }
    }
    (out, lse)
}

/// Every segment visibility with the other masks over it.
fn segment_masks(boundary: usize) -> [SegmentMask; 3] {
    [SegmentMask::full(boundary), SegmentMask::block_diagonal(boundary), SegmentMask::cross(boundary)]
}

#[test]
fn segments_match_attention_written_from_the_definition() {
    let cpu = backend::get(Device::Cpu);
    let mut rng = Rng::new(31);
    // Packed sequences of 9, 0, 4, 13 and 2 tokens with a boundary of 4: segment 1 empty in one,
    // the boundary past the end of another. Then two batch rows of 7 with a boundary of 3.
    let packed = vec![0, 9, 9, 13, 26, 28];
    let layouts: [(usize, usize, Option<Vec<usize>>, usize); 2] = [(1, 28, Some(packed), 4), (2, 7, None, 3)];
    for (batch, len, offsets, boundary) in layouts {
        let sequences = offsets.as_ref().map_or(batch, |o| o.len() - 1);
        let seq = |s: usize| match &offsets {
            Some(o) => (0, o[s], o[s + 1] - o[s]),
            None => (s, 0, len),
        };
        for segments in segment_masks(boundary) {
            for causal in [false, true] {
                for key_lengths in
                    [None, Some((0..sequences).map(|s| seq(s).2.saturating_sub(s % 3)).collect::<Vec<_>>())]
                {
                    let mask = AttnMask {
                        causal,
                        key_lengths: key_lengths.clone(),
                        sequence_offsets: offsets.clone(),
                        segments: Some(segments),
                        ..AttnMask::none()
                    };
                    let qkv = randn(&mut rng, &[batch, len, 3 * WIDTH]);
                    let (out, lse) = cpu.attention(&qkv, HEADS, &mask).unwrap();
                    let (out, lse, xs) = (out.to_f64_vec(), lse.to_f64_vec(), qkv.to_f64_vec());
                    for s in 0..sequences {
                        let (row, start, n) = seq(s);
                        let key_length = key_lengths.as_ref().map_or(n, |l| l[s]);
                        let (want_out, want_lse) =
                            naive(&xs, len, row, start, n, |q, k| sees(&segments, causal, key_length, q, k));
                        let what = format!("{mask:?}, sequence {s}");
                        let got_out = &out[(row * len + start) * WIDTH..][..n * WIDTH];
                        assert_close(&format!("{what}: output"), got_out, &want_out, 1e-12, 1e-12);
                        for h in 0..HEADS {
                            let got = &lse[(row * HEADS + h) * len + start..][..n];
                            let want = &want_lse[h * n..][..n];
                            for (q, (g, w)) in got.iter().zip(want).enumerate() {
                                let close = g == w || (g - w).abs() <= 1e-12 * w.abs().max(1.0);
                                assert!(close, "{what}: head {h} query {q} lse {g} against {w}");
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn block_diagonal_segments_get_what_each_segment_gets_alone() {
    let cpu = backend::get(Device::Cpu);
    let mut rng = Rng::new(32);
    let (len, boundary) = (11, 5);
    let mask = AttnMask { segments: Some(SegmentMask::block_diagonal(boundary)), ..AttnMask::none() };
    let qkv = randn(&mut rng, &[1, len, 3 * WIDTH]);
    let dout = randn(&mut rng, &[1, len, WIDTH]);
    let (out, lse) = cpu.attention(&qkv, HEADS, &mask).unwrap();
    let dqkv = cpu.attention_backward(&qkv, &out, &lse, &dout, HEADS, &mask).unwrap();
    for (start, n) in [(0, boundary), (boundary, len - boundary)] {
        let part = |t: &Tensor| cpu.slice(t, 1, start, n).unwrap();
        let (out_s, lse_s) = cpu.attention(&part(&qkv), HEADS, &AttnMask::none()).unwrap();
        let dqkv_s =
            cpu.attention_backward(&part(&qkv), &out_s, &lse_s, &part(&dout), HEADS, &AttnMask::none()).unwrap();
        let what = format!("tokens {start}..{}", start + n);
        assert_close(&format!("{what}: output"), &part(&out).to_f64_vec(), &out_s.to_f64_vec(), 1e-12, 1e-12);
        let lse_part = cpu.slice(&lse, 2, start, n).unwrap();
        assert_close(&format!("{what}: lse"), &lse_part.to_f64_vec(), &lse_s.to_f64_vec(), 1e-12, 1e-12);
        assert_close(&format!("{what}: dqkv"), &part(&dqkv).to_f64_vec(), &dqkv_s.to_f64_vec(), 1e-12, 1e-12);
    }
}

#[test]
fn segment_mask_gradients() {
    let mut r = Rng::new(33);
    for segments in segment_masks(3) {
        let masks = [
            AttnMask { segments: Some(segments), ..AttnMask::packed(vec![0, 5, 7, 9], false) },
            AttnMask {
                segments: Some(segments),
                key_lengths: Some(vec![4, 2, 1]),
                ..AttnMask::packed(vec![0, 5, 7, 9], true)
            },
        ];
        for mask in masks {
            gradcheck("attention with segments", &[randn(&mut r, &[1, 9, 3 * 12])], |t| {
                ops::attention(&t[0], 3, &mask)
            });
        }
    }
}

#[test]
fn the_visibility_bits_the_kernels_take() {
    assert_eq!(SegmentMask::full(3).bits(), 0xF);
    assert_eq!(SegmentMask::block_diagonal(3).bits(), 0x9);
    assert_eq!(SegmentMask::cross(3).bits(), 0x6);
    // Cross segments: a query sees the other segment's keys, then the causal mask cuts them.
    let mask = AttnMask { causal: true, segments: Some(SegmentMask::cross(2)), ..AttnMask::none() };
    assert_eq!(mask.key_range(0, 0, 5), 0..0, "an image query under the causal mask sees no caption key");
    assert_eq!(mask.key_range(0, 3, 5), 0..2);
    assert_eq!(mask.key_range(0, 5, 5), 0..0, "past the end");
}
