//! Evaluation on the shapes world, with the metric names of CLIP_benchmark and open_clip:
//! zero-shot classification per factor on seen and unseen colour-shape pairs (the
//! compositional gap), image-text retrieval both ways, attribute binding, and the modality gap
//! (how far apart the image and text embeddings sit), and zero-shot localisation (the pointing
//! game on two-object scenes). On real data, [`benchmark`]: CLIP_benchmark's zero-shot
//! classification of image folders and retrieval on prepared datasets.

pub mod benchmark;
mod encode;
pub mod linear_probe;
pub mod localisation;
pub mod metrics;
mod report;

pub use encode::{encode_images, encode_texts, zero_shot_classifier};
pub use report::{EvalReport, PLOTTED_METRICS};

use crate::data::shapes::{self, ShapesConfig, Split};
use crate::error::Result;
use crate::model::{Buffers, ClipModel};
use crate::nn::ParamStore;
use crate::text::Tokenizer;
use metrics::{classification, dot, modality_gap, ranking};

/// Runs every evaluation on `samples` images per split.
pub fn evaluate(
    model: &ClipModel,
    params: &ParamStore,
    buffers: &mut Buffers,
    tokenizer: &Tokenizer,
    data: &ShapesConfig,
    samples: usize,
) -> Result<EvalReport> {
    let mut report = EvalReport::default();
    let factors = shapes::zero_shot_factors();
    let classifiers: Vec<Vec<f64>> =
        factors.iter().map(|f| zero_shot_classifier(model, params, tokenizer, f)).collect::<Result<_>>()?;
    let dim = model.config.embed_dim;

    for split in [Split::Seen, Split::Unseen, Split::UnseenTemplate] {
        let set = shapes::samples(data, split, 0..samples as u64);
        let images: Vec<&[u8]> = set.iter().map(|s| s.image.as_slice()).collect();
        let image_features = encode_images(model, params, buffers, &images, data.image_size)?;

        if split != Split::UnseenTemplate {
            for (factor, weights) in factors.iter().zip(&classifiers) {
                let labelled: Vec<(usize, usize)> = set
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| shapes::label_of(&s.scene, factor.name).map(|l| (i, l)))
                    .collect();
                // A factor the split does not vary (texture with textures off, count with one
                // object per image) has nothing to classify.
                if labelled.iter().all(|&(_, l)| l == labelled[0].1) {
                    continue;
                }
                let classes = factor.classes.len();
                let scores: Vec<f64> = labelled
                    .iter()
                    .flat_map(|&(i, _)| {
                        let f = &image_features[i * dim..(i + 1) * dim];
                        (0..classes).map(move |c| dot(f, &weights[c * dim..(c + 1) * dim]))
                    })
                    .collect();
                let labels: Vec<usize> = labelled.iter().map(|&(_, l)| l).collect();
                report.zero_shot.push((
                    factor.name.to_string(),
                    split.name().to_string(),
                    classification(&scores, &labels, classes),
                ));
            }
        }

        if split != Split::Unseen {
            let captions: Vec<&str> = set.iter().map(|s| s.caption.as_str()).collect();
            let text_features = encode_texts(model, params, tokenizer, &captions)?;
            // A caption shared by several images is correct for each of them.
            let same = |a: usize, b: usize| captions[a] == captions[b];
            let i2t = ranking(&image_features, &text_features, dim, same);
            let t2i = ranking(&text_features, &image_features, dim, same);
            report.retrieval.push((split.name().to_string(), i2t, t2i));
            if split == Split::Seen {
                let gap = modality_gap(&image_features, &text_features, dim, same);
                report.modality_gap.push((split.name().to_string(), gap));
            }
        }
    }

    // Binding: does the image prefer its caption over the attribute-swapped one?
    let pairs: Vec<(shapes::Sample, String)> = (0..samples as u64).map(|i| shapes::binding_pair(data, i)).collect();
    let images: Vec<&[u8]> = pairs.iter().map(|(s, _)| s.image.as_slice()).collect();
    let image_features = encode_images(model, params, buffers, &images, data.image_size)?;
    let true_captions: Vec<&str> = pairs.iter().map(|(s, _)| s.caption.as_str()).collect();
    let swapped: Vec<&str> = pairs.iter().map(|(_, c)| c.as_str()).collect();
    let (t, w) =
        (encode_texts(model, params, tokenizer, &true_captions)?, encode_texts(model, params, tokenizer, &swapped)?);
    let correct = (0..pairs.len())
        .filter(|&i| {
            let f = &image_features[i * dim..(i + 1) * dim];
            dot(f, &t[i * dim..(i + 1) * dim]) > dot(f, &w[i * dim..(i + 1) * dim])
        })
        .count();
    report.binding_text_acc = Some(correct as f64 / pairs.len().max(1) as f64);

    let colour_shape = factors.iter().position(|f| f.name == "colour_shape").map(|i| &classifiers[i]);
    if let Some(colour_shape) = colour_shape {
        // The binding images above are the pointing game's two-object scenes.
        let scenes: Vec<&shapes::Sample> = pairs.iter().map(|(scene, _)| scene).collect();
        let maps = localisation::heatmaps(model, params, buffers, &scenes, data.image_size, colour_shape)?;
        report.pointing_game = Some(localisation::pointing_game(&maps));
    }
    Ok(report)
}
