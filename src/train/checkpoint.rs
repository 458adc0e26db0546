//! Checkpoints: one safetensors file holding the parameters, the BatchNorm running
//! statistics, the AdamW moments and the momentum copy when the run has one, with the step,
//! samples seen, RNG state and the model config in its metadata. Written atomically, so a crash mid-write never leaves a truncated
//! checkpoint under the real name, and with a byte-stable header. Loading refuses tensors that
//! are not finite: a run resumed from NaN weights would only diverge later, further from the cause.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::{Dtype as StDtype, SafeTensors};

use super::momentum::Momentum;
use crate::error::{Error, Result};
use crate::files::safetensors_out::{Entry, serialize};
use crate::files::write_atomically;
use crate::model::{Buffers, ModelConfig};
use crate::nn::{AdamW, ParamStore};
use crate::tensor::{CpuStorage, DType, Rng, Storage, Tensor};

const FORMAT: &str = "msclip-checkpoint-v1";

/// Everything a run needs to continue exactly where it stopped.
pub struct TrainingState<'a> {
    pub config: &'a ModelConfig,
    pub params: &'a ParamStore,
    pub buffers: &'a Buffers,
    pub optimizer: &'a AdamW,
    pub momentum: Option<&'a Momentum>,
    pub step: u64,
    pub samples_seen: u64,
    pub rng: &'a Rng,
}

/// The counters a checkpoint restores beside the tensors.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub step: u64,
    pub samples_seen: u64,
    pub rng: Rng,
}

fn st_dtype(dtype: DType) -> StDtype {
    match dtype {
        DType::F32 => StDtype::F32,
        DType::F64 => StDtype::F64,
        DType::BF16 => StDtype::BF16,
    }
}

/// Every tensor a checkpoint holds, named as in its file: each parameter followed by its AdamW
/// moments, then the BatchNorm statistics, then the momentum copy's parameters and statistics.
pub fn named_tensors<'a>(
    params: &'a ParamStore,
    optimizer: &'a AdamW,
    buffers: &'a Buffers,
    momentum: Option<&'a Momentum>,
) -> Vec<(String, &'a Tensor)> {
    let mut entries = Vec::new();
    for id in params.ids() {
        let name = params.name(id);
        entries.push((format!("param/{name}"), params.get(id)));
        let (m, v) = optimizer.moments(id);
        entries.push((format!("adam_m/{name}"), m));
        entries.push((format!("adam_v/{name}"), v));
    }
    for (name, t) in buffers.iter() {
        entries.push((format!("buffer/{name}"), t));
    }
    if let Some(m) = momentum {
        entries.extend(m.params.ids().map(|id| (format!("momentum_param/{}", m.params.name(id)), m.params.get(id))));
        entries.extend(m.buffers.iter().map(|(name, t)| (format!("momentum_buffer/{name}"), t)));
    }
    entries
}

/// The checkpoint file's bytes; identical state gives identical bytes.
pub fn to_bytes(state: &TrainingState) -> Result<Vec<u8>> {
    let entries = named_tensors(state.params, state.optimizer, state.buffers, state.momentum);
    let hosts: Vec<_> = entries.iter().map(|(_, t)| t.host_storage()).collect::<Result<_>>()?;
    let views: Vec<Entry> = entries
        .iter()
        .zip(&hosts)
        .map(|((name, t), host)| Entry {
            name: name.clone(),
            dtype: st_dtype(t.dtype()),
            shape: t.dims().to_vec(),
            data: host.as_bytes(),
        })
        .collect();
    let config_json = serde_json::to_string(state.config).map_err(|e| Error::format("model config", e.to_string()))?;
    let rng = state.rng.state().iter().map(|w| format!("{w:016x}")).collect::<Vec<_>>().join(",");
    let metadata = BTreeMap::from([
        ("format".to_string(), FORMAT.to_string()),
        ("config".to_string(), config_json),
        ("step".to_string(), state.step.to_string()),
        ("optimizer_steps".to_string(), state.optimizer.steps().to_string()),
        ("samples_seen".to_string(), state.samples_seen.to_string()),
        ("rng".to_string(), rng),
    ]);
    serialize(views, &metadata)
}

/// Writes the state to `path` atomically.
pub fn save(path: &Path, state: &TrainingState) -> Result<()> {
    write_atomically(path, &to_bytes(state)?)
}

/// Loads a checkpoint into an already-built model's parameters, buffers and (when given,
/// for resuming) optimizer and momentum copy. Fails, changing nothing, if the file is missing
/// or corrupt or was written for another model config.
pub fn load(
    path: &Path,
    config: &ModelConfig,
    params: &mut ParamStore,
    buffers: &mut Buffers,
    mut optimizer: Option<&mut AdamW>,
    momentum: Option<&mut Momentum>,
) -> Result<Restored> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let what = path.display().to_string();
    let corrupt = |detail: String| Error::format(what.clone(), format!("not a readable msclip checkpoint: {detail}"));
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let meta = header.metadata().clone().unwrap_or_default();
    let field = |key: &str| meta.get(key).cloned().ok_or_else(|| corrupt(format!("metadata has no {key:?}")));
    if field("format")? != FORMAT {
        return Err(corrupt(format!("format {:?}", meta.get("format"))));
    }
    let saved: ModelConfig = serde_json::from_str(&field("config")?).map_err(|e| corrupt(e.to_string()))?;
    if &saved != config {
        return Err(Error::format(
            what,
            format!(
                "checkpoint is for model {:?} with another configuration than this run's {:?}",
                saved.name, config.name
            ),
        ));
    }
    let number = |key: &str| field(key)?.parse::<u64>().map_err(|e| corrupt(format!("{key}: {e}")));
    let (step, samples_seen, optimizer_steps) = (number("step")?, number("samples_seen")?, number("optimizer_steps")?);
    let words: Vec<u64> = field("rng")?
        .split(',')
        .map(|w| u64::from_str_radix(w, 16))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| corrupt(e.to_string()))?;
    let rng_state: [u64; 4] = words.try_into().map_err(|_| corrupt("rng state is not four words".into()))?;

    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(e.to_string()))?;
    let non_finite = std::cell::RefCell::new(Vec::new());
    let read = |name: &str| -> Result<Tensor> {
        let view = tensors.tensor(name).map_err(|_| corrupt(format!("missing tensor {name}")))?;
        let dtype = match view.dtype() {
            StDtype::F32 => DType::F32,
            StDtype::F64 => DType::F64,
            StDtype::BF16 => DType::BF16,
            other => return Err(corrupt(format!("{name} has dtype {other:?}"))),
        };
        let storage =
            CpuStorage::from_bytes(dtype, view.data()).ok_or_else(|| corrupt(format!("{name}: ragged data")))?;
        let bad = storage.to_f64_vec().iter().filter(|v| !v.is_finite()).count();
        if bad > 0 {
            non_finite.borrow_mut().push(format!("{name} ({bad} of {})", view.shape().iter().product::<usize>()));
        }
        Tensor::from_storage(Storage::Cpu(storage), view.shape().to_vec())
    };
    // Read everything first, so a failure leaves the run's state untouched.
    let mut new_params = Vec::new();
    for id in params.ids() {
        let name = params.name(id).to_string();
        let moments = match optimizer {
            Some(_) => Some((read(&format!("adam_m/{name}"))?, read(&format!("adam_v/{name}"))?)),
            None => None,
        };
        new_params.push((id, read(&format!("param/{name}"))?, moments));
    }
    let new_buffers: Vec<(String, Tensor)> = buffers
        .iter()
        .map(|(name, _)| Ok((name.to_string(), read(&format!("buffer/{name}"))?)))
        .collect::<Result<_>>()?;
    let new_momentum = match &momentum {
        Some(m) => {
            let params: Vec<Tensor> = m
                .params
                .ids()
                .map(|id| read(&format!("momentum_param/{}", m.params.name(id))))
                .collect::<Result<_>>()?;
            let buffers: Vec<Tensor> =
                m.buffers.iter().map(|(name, _)| read(&format!("momentum_buffer/{name}"))).collect::<Result<_>>()?;
            Some((params, buffers))
        }
        None => None,
    };
    let non_finite = non_finite.into_inner();
    if !non_finite.is_empty() {
        return Err(crate::weights::check::not_finite(&what, &non_finite));
    }
    for (id, p, moments) in new_params {
        params.set(id, p)?;
        if let (Some(opt), Some((m, v))) = (optimizer.as_deref_mut(), moments) {
            opt.set_moments(id, m, v)?;
        }
    }
    for (name, t) in new_buffers {
        let id = buffers.find(&name).expect("name comes from this buffer set");
        buffers.set(id, t);
    }
    if let Some(opt) = optimizer {
        opt.set_steps(optimizer_steps);
    }
    if let (Some(m), Some((new_params, new_buffers))) = (momentum, new_momentum) {
        for (id, p) in m.params.ids().collect::<Vec<_>>().into_iter().zip(new_params) {
            m.params.set(id, p)?;
        }
        m.buffers.values_mut().iter_mut().zip(new_buffers).for_each(|(t, new)| *t = new);
    }
    Ok(Restored { step, samples_seen, rng: Rng::from_state(rng_state) })
}
