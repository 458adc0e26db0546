//! PyTorch's reference states (DESIGN section 8, level 3; tests/data/reference_*state.safetensors,
//! written by scripts/make_reference_state*.py): reading their tensors, and holding a model's
//! gradients against theirs.

use std::collections::HashMap;

use msclip::autograd::Gradients;
use msclip::model::{ModelConfig, ParallelBranch, TextConfig, VisionConfig, VisionStem, preset};
use msclip::nn::ParamStore;
use msclip::{DType, Tensor};
use safetensors::SafeTensors;

use super::relative_error;

/// The weights of scripts/make_reference_state_msclip.py's tiny MS-CLIP-S, in the original MS-CLIP
/// code's names, and what PyTorch computed with them.
pub const MSCLIP_WEIGHTS: &str = "tests/data/reference_msclip_s.safetensors";
pub const MSCLIP_STATE: &str = "tests/data/reference_msclip_s_state.safetensors";

/// That script's TINY model: MS-CLIP-S's layout (msclip-s-b32's LayerNorm and BatchNorm eps,
/// QuickGELU, unshared text layer 0) at ragged small sizes: 24 px images through the conv stem
/// (channels width/16 doubling to the width, as the original derives them) to a 3 x 3 grid,
/// width 32 with 2 heads, three branch stages fused before blocks 1, 2 and 3, context 11,
/// vocabulary 89, embeddings of 20.
pub fn msclip_config() -> ModelConfig {
    let mut config = preset("msclip-s-b32").unwrap();
    config.name = "reference-msclip-s".into();
    config.embed_dim = 20;
    config.vision = VisionConfig {
        image_size: 24,
        width: 32,
        layers: 4,
        heads: 2,
        stem: VisionStem::ConvStem { channels: vec![2, 4, 8, 16, 32], strides: vec![2, 2, 1, 1] },
        parallel_branch: Some(ParallelBranch {
            channels: vec![2, 4, 8],
            strides: vec![2, 2, 2],
            lateral_layers: vec![1, 2, 3],
        }),
    };
    config.text = TextConfig { context: 11, vocab: 89, width: 32, layers: 4, heads: 2, ..config.text };
    config.validate().unwrap();
    config
}

/// A reference state's tensors, widened to f64, and its metadata.
pub struct State {
    /// The normalised input images, [batch, 3, size, size].
    pub images: Tensor,
    /// The captions' token ids, row-major [batch, context].
    pub tokens: Vec<u32>,
    pub image_features: Vec<f64>,
    pub text_features: Vec<f64>,
    pub loss: f64,
    /// Every parameter's gradient, by PyTorch's name of the parameter.
    pub grads: Vec<(String, Vec<f64>)>,
    /// BatchNorm running statistics after the step, by PyTorch's names (none without BatchNorm).
    pub running: Vec<(String, Vec<f64>)>,
    /// The losses after each AdamW step.
    pub adamw_losses: Vec<f64>,
    /// The file's metadata: how it was made, the model's architecture.
    pub metadata: HashMap<String, String>,
}

/// The reference state in the safetensors file at `path`.
pub fn read_state(path: &str) -> State {
    let bytes = std::fs::read(path).unwrap();
    let file = SafeTensors::deserialize(&bytes).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    State {
        images: images(&file),
        tokens: tokens(&file),
        image_features: f64s(&file, "image_features"),
        text_features: f64s(&file, "text_features"),
        loss: f64s(&file, "loss")[0],
        grads: under(&file, "grad/"),
        running: under(&file, "running/"),
        adamw_losses: f64s(&file, "adamw_losses"),
        metadata: header.metadata().clone().unwrap_or_default(),
    }
}

/// The float64 tensor `name` of a reference file.
pub fn f64s(file: &SafeTensors, name: &str) -> Vec<f64> {
    let view = file.tensor(name).unwrap_or_else(|_| panic!("the reference state has no {name}"));
    assert_eq!(view.dtype(), safetensors::Dtype::F64, "{name}");
    view.data().chunks_exact(8).map(|w| f64::from_le_bytes(w.try_into().unwrap())).collect()
}

/// The normalised input images, [batch, 3, size, size] in f64.
fn images(file: &SafeTensors) -> Tensor {
    let shape = file.tensor("images").unwrap().shape().to_vec();
    Tensor::from_f64(&f64s(file, "images"), shape, DType::F64).unwrap()
}

/// The token ids of the captions (int32 in the file), row-major [batch, context].
fn tokens(file: &SafeTensors) -> Vec<u32> {
    let view = file.tensor("tokens").unwrap();
    assert_eq!(view.dtype(), safetensors::Dtype::I32);
    view.data().chunks_exact(4).map(|w| i32::from_le_bytes(w.try_into().unwrap()) as u32).collect()
}

/// Every float64 tensor whose name starts with `prefix` ("grad/"), by the rest of its name.
fn under(file: &SafeTensors, prefix: &str) -> Vec<(String, Vec<f64>)> {
    file.names()
        .into_iter()
        .filter_map(|name| name.strip_prefix(prefix).map(|rest| (rest.to_string(), f64s(file, name))))
        .collect()
}

/// Relative errors allowed against PyTorch's float64 numbers.
pub struct Tolerances {
    pub features: f64,
    pub loss: f64,
    pub gradient: f64,
}

/// The largest relative error (norm) over every parameter's gradient, and its parameter's name;
/// panics if one is over `rtol` or the reference lacks one. `reference` names the gradients as
/// PyTorch's model does; `theirs` gives that name of one of ours.
pub fn worst_gradient(
    what: &str,
    (params, grads): (&ParamStore, &Gradients),
    reference: &[(String, Vec<f64>)],
    theirs: impl Fn(&str) -> String,
    rtol: f64,
) -> (f64, String) {
    assert_eq!(reference.len(), params.len(), "{what}: the reference has a gradient per parameter");
    let mut worst = (0.0, String::new());
    for id in params.ids() {
        let name = theirs(params.name(id));
        let want =
            &reference.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("no reference gradient of {name}")).1;
        let have = grads.get(params.get(id)).unwrap_or_else(|| panic!("{what}: no gradient of {name}")).to_f64_vec();
        let err = relative_error(&have, want);
        assert!(err <= rtol, "{what}: gradient of {name} off by {err:.2e} (allowed {rtol:.0e})");
        if err > worst.0 {
            worst = (err, name);
        }
    }
    worst
}
