//! AdamW over a [`ParamStore`], with parameter groups (each its own weight decay and learning
//! rate multiplier, as open_clip's decay / no-decay split and MS-CLIP's shared-weight group).

use crate::autograd::Gradients;
use crate::backend::{self, AdamWStep, AdamWTensor};
use crate::error::{Error, Result};
use crate::nn::{ComputeCopies, ParamId, ParamStore};
use crate::tensor::{Device, Table, Tensor};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

impl Default for AdamWConfig {
    /// PyTorch's defaults.
    fn default() -> Self {
        AdamWConfig { beta1: 0.9, beta2: 0.999, eps: 1e-8 }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParamGroup {
    pub name: String,
    pub weight_decay: f64,
    /// Multiplies the scheduled learning rate.
    pub lr_scale: f64,
}

pub struct AdamW {
    config: AdamWConfig,
    groups: Vec<ParamGroup>,
    /// Per parameter: its group and its first and second moments.
    state: Vec<(usize, Tensor, Tensor)>,
    step: u64,
    /// The constants of the step under way, one row per parameter (its id's index): made at
    /// the first step and rewritten in place by each [`AdamW::advance`], so that a captured
    /// graph of [`AdamW::apply`] reads each step's own.
    constants: Option<Table>,
}

impl AdamW {
    /// `assign` maps each parameter (by name and value) to an index into `groups`.
    pub fn new(
        store: &ParamStore,
        config: AdamWConfig,
        groups: Vec<ParamGroup>,
        assign: impl Fn(&str, &Tensor) -> usize,
    ) -> Result<Self> {
        let mut state = Vec::with_capacity(store.len());
        for id in store.ids() {
            let p = store.get(id);
            let g = assign(store.name(id), p);
            if g >= groups.len() {
                return Err(Error::invalid(
                    "adamw",
                    format!("group {g} for {:?}, only {} groups", store.name(id), groups.len()),
                ));
            }
            let zeros = Tensor::zeros(p.shape().clone(), p.dtype()).to_device(p.device())?;
            state.push((g, zeros.clone(), zeros));
        }
        Ok(AdamW { config, groups, state, step: 0, constants: None })
    }

    pub fn groups(&self) -> &[ParamGroup] {
        &self.groups
    }

    /// Number of steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The group a parameter belongs to.
    pub fn group_of(&self, id: ParamId) -> &ParamGroup {
        &self.groups[self.state[id.index()].0]
    }

    /// The first and second moments of a parameter.
    pub fn moments(&self, id: ParamId) -> (&Tensor, &Tensor) {
        let (_, m, v) = &self.state[id.index()];
        (m, v)
    }

    /// Restores a parameter's moments (from a checkpoint) onto the parameter's device; shapes
    /// must match.
    pub fn set_moments(&mut self, id: ParamId, m: Tensor, v: Tensor) -> Result<()> {
        let (_, old_m, old_v) = &mut self.state[id.index()];
        if m.shape() != old_m.shape() || v.shape() != old_v.shape() {
            return Err(Error::shape(
                "adamw",
                format!("moments {} / {} for a {} parameter", m.shape(), v.shape(), old_m.shape()),
            ));
        }
        let device = old_m.device();
        (*old_m, *old_v) = (m.to_device(device)?, v.to_device(device)?);
        Ok(())
    }

    /// Moves the moments to `device` (where the parameters have gone).
    pub fn to_device(&mut self, device: Device) -> Result<()> {
        for (_, m, v) in &mut self.state {
            (*m, *v) = (m.to_device(device)?, v.to_device(device)?);
        }
        Ok(())
    }

    /// Restores the step counter (from a checkpoint).
    pub fn set_steps(&mut self, steps: u64) {
        self.step = steps;
    }

    /// [`AdamW::advance`] to the next step at `update.lr`, then [`AdamW::apply`] it.
    pub fn step(
        &mut self,
        store: &mut ParamStore,
        copies: Option<&mut ComputeCopies>,
        grads: &Gradients,
        update: Update<'_>,
    ) -> Result<Tensor> {
        self.advance(update.lr)?;
        self.apply(store, copies, grads, update)
    }

    /// Counts one more step and writes its constants (bias corrections, each group's decay and
    /// step size at learning rate `lr`) into the table the update reads, already on the
    /// moments' device: outside a graph capture, so that the captured update reads whatever
    /// the table holds at each launch.
    pub fn advance(&mut self, lr: f64) -> Result<()> {
        self.step += 1;
        let rows = self.state.iter().map(|(g, _, _)| (lr * self.groups[*g].lr_scale, self.groups[*g].weight_decay));
        let words = backend::adamw_constants(self.config.beta1, self.config.beta2, self.step, rows);
        match &self.constants {
            Some(table) => table.rewrite(&words)?,
            None => self.constants = Some(Table::new(words)),
        }
        if let Some(device) = self.state.first().map(|(_, m, _)| m.device()).filter(|d| d.is_gpu()) {
            self.constants.as_ref().expect("made above").device_ptr(device)?;
        }
        Ok(())
    }

    /// The update of the step [`AdamW::advance`] counted: every gradient (looked up on the compute copy of a parameter where `copies`
    /// has one, which AdamW then rewrites from the new master) clipped to the global norm and
    /// applied at the scheduled learning rate times each group's scale, as one multi-tensor call
    /// to the device. Parameters without a gradient (unused by this loss) are left as they are,
    /// as in PyTorch. Returns the gradients' global norm before clipping, on the device; when
    /// it is not finite nothing was updated (see [`crate::backend::Backend::adamw_multi`]).
    /// `update.lr` must be the learning rate the step advanced with.
    pub fn apply(
        &mut self,
        store: &mut ParamStore,
        copies: Option<&mut ComputeCopies>,
        grads: &Gradients,
        update: Update<'_>,
    ) -> Result<Tensor> {
        if self.state.len() != store.len() || copies.as_ref().is_some_and(|c| c.len() != store.len()) {
            return Err(Error::invalid("adamw", "the parameter store changed after the optimizer was built"));
        }
        if self.step == 0 {
            return Err(Error::invalid("adamw", "apply before the first advance"));
        }
        let hp = AdamWStep {
            beta1: self.config.beta1,
            beta2: self.config.beta2,
            eps: self.config.eps,
            step: self.step,
            max_grad_norm: update.max_grad_norm,
            constants: self.constants.as_ref(),
        };
        let device = store.device();
        // Looked up before the parameters are borrowed mutably below.
        let grads: Vec<Option<Tensor>> = store
            .ids()
            .map(|id| {
                let used = copies.as_ref().and_then(|c| c.get(id)).unwrap_or(store.get(id));
                grads.get(used).cloned()
            })
            .collect();
        let mut copy_slots: Vec<Option<&mut Tensor>> = match copies {
            Some(c) => c.values_mut().map(Option::as_mut).collect(),
            None => (0..store.len()).map(|_| None).collect(),
        };
        let mut updates = Vec::with_capacity(grads.len());
        let params = store.values_mut().zip(self.state.iter_mut()).zip(&grads).zip(copy_slots.iter_mut());
        for (index, (((param, (g, m, v)), grad), copy)) in params.enumerate() {
            let Some(grad) = grad else { continue };
            let group = &self.groups[*g];
            let clamp = update.clamps.iter().find(|(id, _)| id.index() == index).map(|(_, range)| *range);
            updates.push(AdamWTensor {
                param,
                grad,
                m,
                v,
                bf16_copy: copy.take(),
                lr: update.lr * group.lr_scale,
                weight_decay: group.weight_decay,
                row: index,
                clamp,
            });
        }
        if let Some(other) = updates.iter().find(|u| u.param.device() != device) {
            return Err(Error::invalid(
                "adamw",
                format!("parameters on {device} and {}: one step updates one device", other.param.device()),
            ));
        }
        backend::get(device).adamw_multi(&mut updates, hp)
    }
}

/// What one optimizer step applies besides the gradients.
#[derive(Debug, Clone, Copy)]
pub struct Update<'a> {
    /// The scheduled learning rate (each group multiplies it by its scale).
    pub lr: f64,
    /// Global-norm gradient clipping (torch.nn.utils.clip_grad_norm_); None: none.
    pub max_grad_norm: Option<f64>,
    /// Parameters clamped to a range after their update (open_clip's logit scale).
    pub clamps: &'a [(ParamId, (f64, f64))],
}

impl Update<'_> {
    /// A plain step at `lr`: no clipping, no clamps.
    pub fn at(lr: f64) -> Update<'static> {
        Update { lr, max_grad_norm: None, clamps: &[] }
    }
}
