//! Model-building blocks that sit above the ops: the named parameter registry and optimizers.

mod adamw;
mod params;

pub use adamw::{AdamW, AdamWConfig, ParamGroup};
pub use params::{ParamId, ParamStore};
