//! MS-CLIP's weights as its original code names them (Hxyou/MSCLIP's `state_dict()`), for our
//! MS-CLIP models: the released checkpoints, converted from their .pth to safetensors by
//! scripts/convert_msclip_pth.py (msclip itself never reads a pickle). [`names`] maps the names;
//! reading a file here:
//!
//! - A modality-shared weight is one tensor of ours and two of the file's: the original ties a
//!   text block to its visual partner by assigning it the same modules, and `state_dict()`
//!   walks both towers. The visual copy is read (or the text copy where a file holds only that
//!   one, as safetensors' `save_model` leaves shared tensors) and the other must be equal.
//!   Copies that differ are an error, not a warning: the original cannot write such a file,
//!   and either copy alone gives another model than the one trained (PyTorch's own
//!   `load_state_dict` would silently keep the text copy, the one it loads last).
//! - BatchNorm's running mean and variance fill our BatchNorm buffers (evaluation normalises
//!   with them); its `num_batches_tracked` step counters are dropped.
//! - `logit_scale` is 0-d there and [1] here; every other tensor has our shape and layout.
//!
//! Every name, shape and dtype is checked first and every problem listed in one error
//! ([`super::check`]); every value is checked finite. On any failure the model keeps its
//! weights.

mod names;

use std::path::Path;

use safetensors::SafeTensors;

pub use names::original_name;
use names::{channel_ladder, step_counter, text_copy};

use super::check::{Expected, not_finite, require_fit};
use super::values;
use crate::error::{Error, Result};
use crate::model::{BufferId, Buffers, ClipModel, ModelConfig, Role, Sharing, TextEncoder, VisionStem};
use crate::nn::{ParamId, ParamStore};

/// Which of our tensors a tensor of the original's state dict fills.
#[derive(Debug, Clone)]
enum Ours {
    Param(ParamId),
    /// A BatchNorm running statistic, by our name.
    Buffer(String),
}

#[derive(Debug, Clone)]
struct OriginalTensor {
    ours: Ours,
    /// The original's name; a modality-shared weight's visual copy.
    name: String,
    /// A modality-shared weight's text copy.
    text_copy: Option<String>,
    /// The shape in the file.
    shape: Vec<usize>,
}

impl OriginalTensor {
    /// The names this tensor may have in a file, the one read first first.
    fn copies(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.name.as_str()).chain(self.text_copy.as_deref())
    }
}

/// A model's tensors as the original's state dict holds them.
#[derive(Debug, Clone)]
pub struct OriginalLayout {
    tensors: Vec<OriginalTensor>,
    /// The BatchNorm step counters the original's state dict holds too, dropped unread.
    counters: Vec<String>,
}

impl OriginalLayout {
    /// The layout of `model`, or why the original code cannot build it.
    pub fn of(model: &ClipModel) -> Result<Self> {
        refuse_unless_original(&model.config)?;
        let mut tensors = Vec::new();
        for (index, spec) in model.spec.params.iter().enumerate() {
            let name = original_name(&spec.name);
            tensors.push(OriginalTensor {
                ours: Ours::Param(ParamId::from_index(index)),
                text_copy: (spec.role == Role::Shared).then(|| text_copy(&name)),
                shape: if spec.name == "logit_scale" { Vec::new() } else { spec.shape.clone() },
                name,
            });
        }
        let mut counters = Vec::new();
        for (ours, shape) in model.spec.buffer_shapes() {
            let name = original_name(ours);
            counters.extend(step_counter(&name));
            tensors.push(OriginalTensor {
                ours: Ours::Buffer(ours.to_string()),
                name,
                text_copy: None,
                shape: shape.to_vec(),
            });
        }
        Ok(OriginalLayout { tensors, counters })
    }

    /// Every tensor of the original's `state_dict()` for this model, name and shape: both copies
    /// of each shared weight and the BatchNorm step counters (0-d) included.
    pub fn state_dict_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let weights = self.tensors.iter().flat_map(|t| t.copies().map(move |name| (name.to_string(), t.shape.clone())));
        weights.chain(self.counters.iter().map(|name| (name.clone(), Vec::new()))).collect()
    }

    /// What `file` must hold: each tensor under its name, a shared weight under the copies the
    /// file has (its visual name when it has neither).
    fn expected_in(&self, file: &SafeTensors) -> Vec<Expected> {
        let mut expected = Vec::new();
        for t in &self.tensors {
            let present: Vec<&str> = t.copies().filter(|name| file.tensor(name).is_ok()).collect();
            let names = if present.is_empty() { vec![t.name.as_str()] } else { present };
            expected.extend(names.into_iter().map(|name| Expected { name: name.to_string(), shape: t.shape.clone() }));
        }
        expected
    }

    /// Reads the safetensors `bytes` into `params` and `buffers`, those of this layout's model,
    /// converting to their dtype and device; `what` (the file) and `model` (the model's name)
    /// name them in errors.
    pub fn read(
        &self,
        bytes: &[u8],
        what: &str,
        model: &str,
        params: &mut ParamStore,
        buffers: &mut Buffers,
    ) -> Result<()> {
        let file = SafeTensors::deserialize(bytes)
            .map_err(|e| Error::format(what, format!("not a readable safetensors file: {e}")))?;
        require_fit(what, model, &self.expected_in(&file), &file, |name| self.counters.iter().any(|c| c == name))?;
        let (mut non_finite, mut untied) = (Vec::new(), Vec::new());
        let mut loaded = Vec::with_capacity(self.tensors.len());
        for t in &self.tensors {
            let mut copies = t.copies().filter(|name| file.tensor(name).is_ok());
            let first = copies.next().expect("require_fit found a copy of every tensor");
            let data = values::read_f64(&file, first)?;
            if let Some(second) = copies.next()
                && let Some(apart) = difference(&data, &values::read_f64(&file, second)?)
            {
                untied.push(format!("{first} and {second}: {apart}"));
            }
            let like = match &t.ours {
                Ours::Param(id) => params.get(*id),
                Ours::Buffer(name) => buffers.get(buffer_id(buffers, name)),
            };
            loaded.push(values::tensor_like(first, &data, like, &mut non_finite)?);
        }
        if !non_finite.is_empty() {
            return Err(not_finite(what, &non_finite));
        }
        if !untied.is_empty() {
            return Err(Error::format(
                what,
                format!(
                    "the two copies of {} modality-shared tensor(s) differ. MS-CLIP's code ties each pair (one \
                     tensor under both towers' names), so a state dict it wrote holds equal copies; this file was \
                     edited or its towers were trained apart, and either copy alone would be another model:\n  {}",
                    untied.len(),
                    untied.join("\n  ")
                ),
            ));
        }
        for (t, value) in self.tensors.iter().zip(loaded) {
            match &t.ours {
                Ours::Param(id) => params.set(*id, value)?,
                Ours::Buffer(name) => buffers.set(buffer_id(buffers, name), value),
            }
        }
        Ok(())
    }
}

fn buffer_id(buffers: &Buffers, name: &str) -> BufferId {
    buffers.find(name).expect("the buffers were made from the model's spec")
}

/// How two copies of a tensor differ ("n of total values, by up to x"), or `None` when equal.
fn difference(a: &[f64], b: &[f64]) -> Option<String> {
    let apart: Vec<f64> = a.iter().zip(b).filter(|(x, y)| x != y).map(|(x, y)| (x - y).abs()).collect();
    let largest = apart.iter().copied().fold(0.0, f64::max);
    (!apart.is_empty()).then(|| format!("{} of {} values, by up to {largest:.3e}", apart.len(), a.len()))
}

/// Fails unless the original code builds `config`'s architecture: MS-CLIP's shared transformer
/// with, where present, its conv stem and parallel branch at the widths it derives from the
/// transformer's (it has no knob for others).
fn refuse_unless_original(config: &ModelConfig) -> Result<()> {
    let refuse = |why: String| {
        Err(Error::config(format!(
            "model {:?} has no layout in MS-CLIP's original code: {why}. The presets it builds are \
             msclip-b32, msclip-es-b32, msclip-s-b32 and msclip-s-b16",
            config.name
        )))
    };
    match config.sharing {
        Sharing::AttnMlp => {}
        Sharing::None => {
            return refuse("its towers share nothing (CLIP's weights travel as open_clip's state dict)".into());
        }
        Sharing::All => return refuse("it is a single tower with one head (OneR's)".into()),
    }
    if config.text.encoder != TextEncoder::Causal {
        return refuse("its text tower is bidirectional and read at the [CLS] token".into());
    }
    if config.type_embedding || config.mlm_head || config.mim_head {
        return refuse("it carries type embeddings or masked-modelling heads".into());
    }
    let width = config.vision.width;
    let ladder = channel_ladder(width);
    if let VisionStem::ConvStem { channels, .. } = &config.vision.stem
        && (!width.is_multiple_of(16) || channels[..] != ladder[..])
    {
        return refuse(format!(
            "its conv stem's channels {channels:?} are not the original's (EarlyconvRes: width/16 doubling to the \
             width in four blocks, {ladder:?} at width {width})"
        ));
    }
    if let Some(branch) = &config.vision.parallel_branch {
        let n = branch.channels.len();
        if n > ladder.len() || branch.channels[..] != ladder[..n] {
            return refuse(format!(
                "its parallel branch's channels {:?} are not the original's (width/16 doubling, at most five \
                 stages: {ladder:?} at width {width})",
                branch.channels
            ));
        }
        if branch.lateral_layers.windows(2).any(|w| w[1] == w[0]) {
            return refuse(format!(
                "it fuses several branch stages before one block (lateral layers {:?}); the original fuses one \
                 stage before each of its lateral layers",
                branch.lateral_layers
            ));
        }
    }
    Ok(())
}

/// Reads the original's state dict in the safetensors file at `path` into `params` and
/// `buffers`, those of `model` ([`OriginalLayout::read`]).
pub fn load(path: &Path, model: &ClipModel, params: &mut ParamStore, buffers: &mut Buffers) -> Result<()> {
    let layout = OriginalLayout::of(model)?;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    layout.read(&bytes, &path.display().to_string(), &model.config.name, params, buffers)
}
