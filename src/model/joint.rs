//! OneR's joint sequence (the input of its CMC and CIC objectives, oner-notes.md sections 2-3):
//! each pair's image tokens followed by its caption's tokens, one sequence per pair, through the
//! single tower. For CMC every token attends to the whole pair and the image's CLS token is read
//! by the one head; for CIC a cross segment mask lets the image's tokens attend only to the
//! caption's and the caption's only to the image's, and both [CLS] tokens are read (the image's
//! and the caption's first), their embeddings summed and normalised.
//!
//! The rows are gathered from the two embeddings (stem tokens and packed caption tokens, each with
//! its own positional embedding, so the modalities stay distinguishable) into pairs, and the
//! existing varlen attention runs them as packed sequences: no new kernel. Any padding sequences
//! of a captured graph's caption packing follow the pairs as sequences of their own (never
//! pooled), and every table is derived from the captions' offsets, so a graph's next batch
//! rewrites them.

use super::ClipModel;
use super::builder::Buffers;
use super::config::Sharing;
use super::convnet::Mode;
use super::packing::CaptionPacking;
use super::transformer::Pooled;
use crate::backend::{AttnMask, SegmentMask};
use crate::error::{Error, Result};
use crate::nn::ParamStore;
use crate::tensor::Tensor;

/// How the two segments of a joint sequence attend, and what is read from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JointAttention {
    /// Every token to the whole pair; read at the image's CLS token (CMC).
    Full,
    /// Each segment to the other only; read at both [CLS] tokens (CIC).
    Cross,
}

/// L2-normalised [batch, embed_dim] embeddings of the batch's joint image+caption sequences.
pub(super) fn encode_joint(
    model: &ClipModel,
    p: &ParamStore,
    bufs: &mut Buffers,
    images: &Tensor,
    captions: &CaptionPacking,
    attention: JointAttention,
) -> Result<Tensor> {
    if model.config.sharing != Sharing::All {
        return Err(Error::config(format!(
            "{}: a joint image+text sequence needs a single tower (sharing all, as tiny-oner, oner-b32, oner-b16)",
            model.config.name
        )));
    }
    let image = model.vision.embed(p, bufs, images, Mode::Train)?;
    let (batch, tokens, width) = (image.dims()[0], image.dims()[1], image.dims()[2]);
    if captions.captions() != batch {
        let detail = format!("{} captions for {batch} images", captions.captions());
        return Err(Error::shape("encode_joint", detail));
    }
    let text = model.text.embed(p, captions)?;
    let rows =
        crate::ops::concat(&[&image.reshape([batch * tokens, width])?, &text.reshape([captions.tokens(), width])?], 0)?;
    let layout = JointLayout { batch, tokens };
    let order = captions.offsets.derived(&layout.key("rows"), move |offsets| layout.order(offsets));
    let offsets = captions.offsets.derived(&layout.key("offsets"), move |offsets| layout.offsets(offsets));
    let pooled_rows = match attention {
        JointAttention::Full => offsets.derived(&layout.key("cls rows"), move |joint| joint[..batch].to_vec()),
        JointAttention::Cross => offsets.derived(&layout.key("both cls rows"), move |joint| {
            let caption_cls = joint[..batch].iter().map(|&start| start + tokens as u32);
            joint[..batch].iter().copied().chain(caption_cls).collect()
        }),
    };
    let sequences = offsets.len() - 1;
    // No causal mask: the first `sequences` of the mask are its non-causal ones.
    let longest = captions.longest_bound().map(|bound| bound + tokens);
    let segments = match attention {
        JointAttention::Full => None,
        JointAttention::Cross => Some(SegmentMask::cross(tokens)),
    };
    let mask = AttnMask { segments, ..captions.mask_with(offsets, sequences, longest) };
    let mut x = rows.index_rows_by(&order)?.reshape([1, batch * tokens + captions.tokens(), width])?;
    let pooled = Pooled::Rows { rows: &pooled_rows, split: 0 };
    let embeddings = match model.vision.blocks.split_last() {
        None => model.vision.head.forward(p, &pooled.select(&x)?)?,
        Some(((_, last), blocks)) => {
            for (_, block) in blocks {
                x = block.forward(p, &x, &mask)?;
            }
            model.vision.head.forward(p, &last.forward_pooled(p, &x, &mask, pooled)?)?
        }
    };
    match attention {
        JointAttention::Full => Ok(embeddings),
        JointAttention::Cross => {
            let (image_cls, caption_cls) = (embeddings.slice(0, 0, batch)?, embeddings.slice(0, batch, batch)?);
            image_cls.add(&caption_cls)?.l2_normalize(1e-12)
        }
    }
}

/// Where the joint rows come from: the concatenation of `batch x tokens` image rows and the packed
/// caption rows, regrouped pair by pair.
#[derive(Clone, Copy)]
struct JointLayout {
    batch: usize,
    tokens: usize,
}

impl JointLayout {
    fn key(&self, what: &str) -> String {
        format!("joint {what} of {} images of {} tokens", self.batch, self.tokens)
    }

    /// Per joint row, its row in the concatenation: pair b's image rows, then caption b's rows;
    /// after the pairs, the packing's padding sequences. `offsets` are the captions' offsets.
    fn order(&self, offsets: &[u32]) -> Vec<u32> {
        let image_rows = (self.batch * self.tokens) as u32;
        let caption = |s: usize| image_rows + offsets[s]..image_rows + offsets[s + 1];
        let pairs = (0..self.batch).flat_map(|b| {
            let image = (b * self.tokens) as u32..((b + 1) * self.tokens) as u32;
            image.chain(caption(b))
        });
        pairs.chain((self.batch..offsets.len() - 1).flat_map(caption)).collect()
    }

    /// The joint sequences' offsets: each pair (image tokens + caption), then each padding sequence.
    fn offsets(&self, offsets: &[u32]) -> Vec<u32> {
        let length = |s: usize| offsets[s + 1] - offsets[s] + if s < self.batch { self.tokens as u32 } else { 0 };
        let mut out = vec![0u32];
        for s in 0..offsets.len() - 1 {
            out.push(out[s] + length(s));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_gather_their_image_then_their_caption_and_padding_follows() {
        // Two images of 3 tokens (rows 0-5), captions of 2 and 3 tokens (rows 6-7, 8-10), one
        // padding sequence of 2 (rows 11-12).
        let layout = JointLayout { batch: 2, tokens: 3 };
        let offsets = [0, 2, 5, 7];
        assert_eq!(layout.order(&offsets), vec![0, 1, 2, 6, 7, 3, 4, 5, 8, 9, 10, 11, 12]);
        assert_eq!(layout.offsets(&offsets), vec![0, 5, 11, 13]);
    }

    /// The packed joint sequences against each pair run alone: its image's embedded tokens and
    /// its caption's, concatenated, through every block unmasked (CMC), read at token 0 by the
    /// head, or under a cross mask of the same boundary (CIC), read at token 0 and at the
    /// caption's first token, the two embeddings summed and normalised.
    #[test]
    fn packed_pairs_match_each_pair_run_alone() {
        use crate::model::preset;
        use crate::tensor::{DType, Rng};
        let model = ClipModel::new(preset("tiny-oner").unwrap()).unwrap();
        let c = &model.config;
        let mut rng = Rng::new(5);
        let (p, mut bufs) = model.init_params(&mut rng, DType::F64).unwrap();
        let size = c.vision.image_size;
        let images = rng.normal_tensor([3, 3, size, size], 1.0, DType::F64);
        let (sot, eot, context) = (c.text.vocab as u32 - 2, c.text.vocab as u32 - 1, c.text.context);
        let mut tokens = vec![0u32; 3 * context];
        for (b, len) in [4usize, 9, 2].into_iter().enumerate() {
            let row = &mut tokens[b * context..(b + 1) * context];
            row[0] = sot;
            (1..len - 1).for_each(|i| row[i] = 1 + rng.below(c.text.vocab - 3) as u32);
            row[len - 1] = eot;
        }
        let captions = model.pack_captions(&tokens, None).unwrap();
        let image = model.vision.embed(&p, &mut bufs, &images, Mode::Train).unwrap();
        let text = model.text.embed(&p, &captions).unwrap();
        let offsets = captions.offsets.words().to_vec();
        let (tokens_per_image, width) = (image.dims()[1], image.dims()[2]);
        for attention in [JointAttention::Full, JointAttention::Cross] {
            let got = encode_joint(&model, &p, &mut bufs, &images, &captions, attention).unwrap().to_f64_vec();
            let (mask, read) = match attention {
                JointAttention::Full => (AttnMask::none(), vec![0]),
                JointAttention::Cross => {
                    let cross = AttnMask { segments: Some(SegmentMask::cross(tokens_per_image)), ..AttnMask::none() };
                    (cross, vec![0, tokens_per_image])
                }
            };
            for b in 0..3 {
                let (start, end) = (offsets[b] as usize, offsets[b + 1] as usize);
                let pair = crate::ops::concat(
                    &[&image.slice(0, b, 1).unwrap(), &text.slice(1, start, end - start).unwrap()],
                    1,
                )
                .unwrap();
                let mut x = pair.reshape([1, tokens_per_image + end - start, width]).unwrap();
                for (_, block) in &model.vision.blocks {
                    x = block.forward(&p, &x, &mask).unwrap();
                }
                let cls: Vec<Tensor> =
                    read.iter().map(|&r| x.slice(1, r, 1).unwrap().reshape([1, width]).unwrap()).collect();
                let heads: Vec<Tensor> = cls.iter().map(|c| model.vision.head.forward(&p, c).unwrap()).collect();
                let sum = heads.iter().skip(1).fold(heads[0].clone(), |acc, h| acc.add(h).unwrap());
                let want = sum.l2_normalize(1e-12).unwrap().to_f64_vec();
                let dim = want.len();
                for (g, w) in got[b * dim..(b + 1) * dim].iter().zip(&want) {
                    assert!((g - w).abs() <= 1e-12, "{attention:?} pair {b}: {g} against {w} run alone");
                }
            }
        }
        let tiny = ClipModel::new(preset("tiny").unwrap()).unwrap();
        let err = encode_joint(&tiny, &p, &mut bufs, &images, &captions, JointAttention::Full);
        assert!(err.unwrap_err().to_string().contains("single tower"));
    }
}
