//! Model-building blocks that sit above the ops: the named parameter registry and optimizers.

mod adamw;
mod compute_copies;
mod params;

pub use adamw::{AdamW, AdamWConfig, ParamGroup, Update};
pub use compute_copies::ComputeCopies;
pub use params::{ParamId, ParamStore};
