//! open_clip's state dict, for the share-nothing models (CLIP's two towers with a patchify
//! stem: `clip-b32`, `clip-b16` and their `-gelu` twins, `tiny-clip`). Our parameter names were
//! chosen as open_clip's (`visual.conv1.weight`, `transformer.resblocks.N.attn.in_proj_weight`,
//! ...) and every weight is stored in PyTorch's layout (linear weights [out, in], the
//! projections [width, embed_dim]), so the mapping is the identity except for `logit_scale`, a
//! 0-d tensor in open_clip and [1] here. open_clip's CLIP has no other persistent tensor (its
//! causal `attn_mask` is a non-persistent buffer), so `model.load_state_dict` takes a written
//! file with `strict=True`. docs/interop.md has the table and the Python that loads a file.
//!
//! What open_clip cannot hold is refused with the reason: shared weights (MS-CLIP, a single
//! tower), conv stems and the parallel branch, a [CLS]-read bidirectional text tower, type
//! embeddings and masked-modelling heads.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};
use serde_json::json;

use super::check::{Expected, not_finite, require_fit};
use super::values;
use crate::error::{Error, Result};
use crate::files::safetensors_out::{Entry, serialize};
use crate::files::write_atomically;
use crate::model::{Activation, ModelConfig, Sharing, TextEncoder, VisionStem};
use crate::nn::ParamStore;

/// The metadata `format` of a file written here.
const FORMAT: &str = "open_clip-state-dict";
/// torch.nn.LayerNorm's default eps, which open_clip's model configs do not change.
pub const OPEN_CLIP_LAYER_NORM_EPS: f64 = 1e-5;

/// How open_clip builds the architecture of a model config.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenClipModel {
    /// open_clip's registered name of the architecture, where it has one.
    pub name: Option<&'static str>,
    /// The keyword arguments of `open_clip.model.CLIP(**config)`.
    pub config: serde_json::Value,
    /// The model's LayerNorm eps; where it is not open_clip's 1e-5, the loader sets it.
    pub layer_norm_eps: f64,
}

/// open_clip's registered architectures our presets reproduce (`clip-b32`, `clip-b32-gelu`,
/// `clip-b16`, `clip-b16-gelu`), as `CLIP(**config)` arguments: open_clip's
/// `model_configs/*.json`, which carry `quick_gelu: true` in the `-quickgelu` models only (its
/// default is false, nn.GELU), with `head_width` written out at its default, 64, as
/// [`describe`] writes it.
fn registered() -> [(&'static str, serde_json::Value); 4] {
    let vit_b = |patch: usize, quick_gelu: bool| {
        let mut config = json!({
            "embed_dim": 512,
            "vision_cfg": {"image_size": 224, "layers": 12, "width": 768, "patch_size": patch, "head_width": 64},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 512, "heads": 8, "layers": 12},
        });
        if quick_gelu {
            config["quick_gelu"] = json!(true);
        }
        config
    };
    [
        ("ViT-B-32-quickgelu", vit_b(32, true)),
        ("ViT-B-32", vit_b(32, false)),
        ("ViT-B-16-quickgelu", vit_b(16, true)),
        ("ViT-B-16", vit_b(16, false)),
    ]
}

/// The open_clip architecture of `config`, or why open_clip has none.
pub fn describe(config: &ModelConfig) -> Result<OpenClipModel> {
    let refuse = |why: &str| {
        Err(Error::config(format!(
            "model {:?} has no open_clip layout: {why}. open_clip's CLIP holds share-nothing models with a \
             patchify stem (the presets tiny-clip, clip-b32, clip-b32-gelu, clip-b16, clip-b16-gelu)",
            config.name
        )))
    };
    if config.sharing != Sharing::None {
        return refuse("its towers share weights (MS-CLIP or a single tower)");
    }
    let VisionStem::Patchify { patch } = config.vision.stem else {
        return refuse("its image tower starts with a conv stem (early specialisation)");
    };
    if config.vision.parallel_branch.is_some() {
        return refuse("its image tower has the parallel conv branch");
    }
    if config.text.encoder != TextEncoder::Causal {
        return refuse("its text tower is bidirectional and read at the [CLS] token");
    }
    if config.type_embedding {
        return refuse("it adds modality-type embeddings");
    }
    if config.mlm_head || config.mim_head {
        return refuse("it carries masked-modelling heads");
    }
    let (v, t) = (&config.vision, &config.text);
    let mut arguments = json!({
        "embed_dim": config.embed_dim,
        "vision_cfg": {
            "image_size": v.image_size,
            "layers": v.layers,
            "width": v.width,
            "patch_size": patch,
            "head_width": v.width / v.heads,
        },
        "text_cfg": {
            "context_length": t.context,
            "vocab_size": t.vocab,
            "width": t.width,
            "heads": t.heads,
            "layers": t.layers,
        },
    });
    // QuickGELU is open_clip's `-quickgelu` models; without the key open_clip builds nn.GELU,
    // the exact GELU, as its plain model configs do.
    if config.activation == Activation::QuickGelu {
        arguments["quick_gelu"] = json!(true);
    }
    let same_eps = config.ln_eps == OPEN_CLIP_LAYER_NORM_EPS;
    let name = registered().into_iter().find(|(_, known)| same_eps && *known == arguments).map(|(name, _)| name);
    Ok(OpenClipModel { name, config: arguments, layer_norm_eps: config.ln_eps })
}

/// The shape open_clip gives a parameter: the logit scale is 0-d there.
fn file_shape(name: &str, dims: &[usize]) -> Vec<usize> {
    if name == "logit_scale" { Vec::new() } else { dims.to_vec() }
}

/// The tensors a file must hold for a model with these parameters (name, shape): from a
/// [`ParamStore`], or from a model's specs without allocating them (`ClipModel::spec`).
pub fn expected_tensors<'a>(params: impl IntoIterator<Item = (&'a str, &'a [usize])>) -> Vec<Expected> {
    params.into_iter().map(|(name, dims)| Expected { name: name.to_string(), shape: file_shape(name, dims) }).collect()
}

/// The weights of a model of `config` as an open_clip state dict in `dtype` (f32, f16 or bf16),
/// with the architecture in the metadata (`open_clip_config`, `open_clip_model`,
/// `layer_norm_eps`, and `msclip_config`, this project's model config).
pub fn to_bytes(config: &ModelConfig, params: &ParamStore, dtype: Dtype) -> Result<Vec<u8>> {
    if !matches!(dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16) {
        return Err(Error::config(format!("weights are written as f32, f16 or bf16, not {dtype:?}")));
    }
    let model = describe(config)?;
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = params
        .ids()
        .map(|id| {
            let (name, t) = (params.name(id), params.get(id));
            (name.to_string(), file_shape(name, t.dims()), values::from_f64(&t.to_f64_vec(), dtype))
        })
        .collect();
    let entries = data
        .iter()
        .map(|(name, shape, bytes)| Entry { name: name.clone(), dtype, shape: shape.clone(), data: bytes })
        .collect();
    let msclip_config = serde_json::to_string(config).map_err(|e| Error::format("model config", e.to_string()))?;
    let metadata = BTreeMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("open_clip_config".to_string(), model.config.to_string()),
        ("open_clip_model".to_string(), model.name.unwrap_or("").to_string()),
        ("layer_norm_eps".to_string(), format!("{:e}", model.layer_norm_eps)),
        ("msclip_config".to_string(), msclip_config),
    ]);
    serialize(entries, &metadata)
}

/// Writes the weights to `path` atomically ([`to_bytes`]).
pub fn save(path: &Path, config: &ModelConfig, params: &ParamStore, dtype: Dtype) -> Result<()> {
    write_atomically(path, &to_bytes(config, params, dtype)?)
}

/// Reads an open_clip state dict (written here, by open_clip's `state_dict()` saved with
/// safetensors, or converted from its .pt files) into `params`, the parameters of a model of
/// `config`, converting to their dtype and device. Every name, shape and dtype is checked
/// first, and every value is checked finite; on any failure `params` is unchanged and the
/// error lists every problem.
pub fn load(path: &Path, config: &ModelConfig, params: &mut ParamStore) -> Result<()> {
    describe(config)?;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    load_bytes(&bytes, &path.display().to_string(), config, params)
}

/// [`load`] from the file's bytes; `what` names the file in errors.
pub fn load_bytes(bytes: &[u8], what: &str, config: &ModelConfig, params: &mut ParamStore) -> Result<()> {
    let file = SafeTensors::deserialize(bytes)
        .map_err(|e| Error::format(what, format!("not a readable safetensors file: {e}")))?;
    let expected = expected_tensors(params.ids().map(|id| (params.name(id), params.get(id).dims())));
    require_fit(what, &config.name, &expected, &file, |_| false)?;
    let mut loaded = Vec::with_capacity(params.len());
    let mut non_finite = Vec::new();
    for id in params.ids() {
        let name = params.name(id);
        let data = values::read_f64(&file, name)?;
        loaded.push((id, values::tensor_like(name, &data, params.get(id), &mut non_finite)?));
    }
    if !non_finite.is_empty() {
        return Err(not_finite(what, &non_finite));
    }
    for (id, value) in loaded {
        params.set(id, value)?;
    }
    Ok(())
}
