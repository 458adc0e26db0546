//! Feature extraction for evaluation: batched, without the tape, BatchNorm in eval mode.

use crate::autograd::no_grad;
use crate::data::images_to_tensor;
use crate::data::shapes::Factor;
use crate::error::Result;
use crate::model::{Buffers, ClipModel, Mode};
use crate::nn::ParamStore;
use crate::tensor::{DType, Tensor};
use crate::text::Tokenizer;

/// Rows per forward pass during evaluation.
const EVAL_BATCH: usize = 256;

/// L2-normalised image features, row-major [n, embed_dim], as f64.
pub fn encode_images(
    model: &ClipModel,
    params: &ParamStore,
    buffers: &mut Buffers,
    images: &[&[u8]],
    size: usize,
) -> Result<Vec<f64>> {
    in_batches(model, params, images, size, |x| model.encode_image(params, buffers, x, Mode::Eval))
}

/// L2-normalised patch embeddings through the image head, row-major [n, grid^2, embed_dim], as
/// f64 (see [`ClipModel::encode_patches`]).
pub fn encode_patches(
    model: &ClipModel,
    params: &ParamStore,
    buffers: &mut Buffers,
    images: &[&[u8]],
    size: usize,
) -> Result<Vec<f64>> {
    in_batches(model, params, images, size, |x| model.encode_patches(params, buffers, x, Mode::Eval))
}

/// `encode` over `images` in batches of EVAL_BATCH, without the tape, in the model's dtype (its
/// logit scale's) and on the device of `params`; the outputs concatenated as f64.
fn in_batches(
    model: &ClipModel,
    params: &ParamStore,
    images: &[&[u8]],
    size: usize,
    mut encode: impl FnMut(&Tensor) -> Result<Tensor>,
) -> Result<Vec<f64>> {
    let dtype = params.get(model.logit_scale()).dtype();
    let mut out = Vec::new();
    for chunk in images.chunks(EVAL_BATCH) {
        let x = images_to_tensor(chunk, size, model.config.pixel_stats, dtype)?.to_device(params.device())?;
        out.extend(no_grad(|| encode(&x))?.to_f64_vec());
    }
    Ok(out)
}

/// L2-normalised text features, row-major [n, embed_dim], as f64.
pub fn encode_texts(model: &ClipModel, params: &ParamStore, tokenizer: &Tokenizer, texts: &[&str]) -> Result<Vec<f64>> {
    let context = model.config.text.context;
    let mut out = Vec::with_capacity(texts.len() * model.config.embed_dim);
    for chunk in texts.chunks(EVAL_BATCH) {
        let tokens = tokenizer.tokenize_batch(chunk, context, model.config.text.truncation)?;
        out.extend(no_grad(|| model.encode_text(params, &tokens))?.to_f64_vec());
    }
    Ok(out)
}

/// CLIP's zero-shot classifier for a shapes-world factor ([`classifier_weights`] of its prompts).
pub fn zero_shot_classifier(
    model: &ClipModel,
    params: &ParamStore,
    tokenizer: &Tokenizer,
    factor: &Factor,
) -> Result<Vec<f64>> {
    let prompts: Vec<Vec<String>> = (0..factor.classes.len()).map(|class| factor.prompts(class)).collect();
    classifier_weights(model, params, tokenizer, &prompts)
}

/// CLIP's zero-shot classifier: per class, the normalised mean of the normalised features of
/// every prompt of the class. Row-major [classes, embed_dim].
pub fn classifier_weights(
    model: &ClipModel,
    params: &ParamStore,
    tokenizer: &Tokenizer,
    prompts: &[Vec<String>],
) -> Result<Vec<f64>> {
    let dim = model.config.embed_dim;
    let mut weights = Vec::with_capacity(prompts.len() * dim);
    for class_prompts in prompts {
        let refs: Vec<&str> = class_prompts.iter().map(String::as_str).collect();
        let features = encode_texts(model, params, tokenizer, &refs)?;
        let mean = Tensor::from_f64(&features, [class_prompts.len(), dim], DType::F64)?.mean_dim(0)?;
        weights.extend(mean.reshape([1, dim])?.l2_normalize(1e-12)?.to_f64_vec());
    }
    Ok(weights)
}
