//! The momentum copy of a model (MoCo v3's momentum encoder; an option for the targets of
//! OneR's contrasts, `--momentum-targets DECAY`): parameters that follow the trained ones as an
//! exponential moving average, `ema = decay * ema + (1 - decay) * params` after every optimizer
//! step (one fused launch on a GPU, [`crate::backend::Backend::ema_update`]), and BatchNorm
//! running statistics of its own, so its forward passes never touch the trained model's.

use crate::backend;
use crate::error::{Error, Result};
use crate::model::Buffers;
use crate::nn::ParamStore;
use crate::tensor::Device;

pub struct Momentum {
    pub params: ParamStore,
    pub buffers: Buffers,
    pub decay: f64,
}

impl Momentum {
    /// A copy of `params` and `buffers` in storage of its own.
    pub fn new(params: &ParamStore, buffers: &Buffers, decay: f64) -> Result<Self> {
        if !(0.0..1.0).contains(&decay) {
            return Err(Error::config(format!("--momentum-targets: the decay must be in [0, 1), got {decay}")));
        }
        let mut copy = ParamStore::new();
        for id in params.ids() {
            copy.add(params.name(id), params.get(id).deep_copy()?)?;
        }
        let mut own_buffers = buffers.clone();
        for t in own_buffers.values_mut() {
            *t = t.deep_copy()?;
        }
        Ok(Momentum { params: copy, buffers: own_buffers, decay })
    }

    /// One step of the moving average toward `online` (the same parameters, in order).
    pub fn update(&mut self, online: &ParamStore) -> Result<()> {
        let sources: Vec<_> = online.ids().map(|id| online.get(id)).collect();
        if sources.len() != self.params.len() {
            let detail = format!("{} parameters for a momentum copy of {}", sources.len(), self.params.len());
            return Err(Error::shape("momentum update", detail));
        }
        let device = self.params.device();
        let mut targets: Vec<_> = self.params.values_mut().collect();
        backend::get(device).ema_update(&mut targets, &sources, 1.0 - self.decay)
    }

    pub fn to_device(&mut self, device: Device) -> Result<()> {
        self.params.to_device(device)?;
        self.buffers.to_device(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ClipModel, preset};
    use crate::tensor::{DType, Rng};

    /// After k updates toward fixed parameters p from e0, the copy is p + decay^k (e0 - p); the
    /// copy starts as the model and never shares its storage.
    #[test]
    fn the_copy_moves_toward_the_parameters_geometrically() {
        let model = ClipModel::new(preset("tiny-oner").unwrap()).unwrap();
        let (start, buffers) = model.init_params(&mut Rng::new(1), DType::F64).unwrap();
        let mut momentum = Momentum::new(&start, &buffers, 0.9).unwrap();
        let (target, _) = model.init_params(&mut Rng::new(2), DType::F64).unwrap();
        for _ in 0..3 {
            momentum.update(&target).unwrap();
        }
        for id in start.ids() {
            let (e0, p, got) =
                (start.get(id).to_f64_vec(), target.get(id).to_f64_vec(), momentum.params.get(id).to_f64_vec());
            for ((e0, p), got) in e0.iter().zip(&p).zip(&got) {
                let want = p + 0.9f64.powi(3) * (e0 - p);
                assert!((got - want).abs() <= 1e-14 * (1.0 + want.abs()), "{}: {got} against {want}", start.name(id));
            }
        }
        let err = Momentum::new(&start, &buffers, 1.0).map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("[0, 1)"), "{err}");
    }
}
