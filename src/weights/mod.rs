//! Weights in and out of other projects' files. A checkpoint (`train::checkpoint`) holds a
//! whole training state in this project's own names; the files here hold a model's weights
//! alone, named and shaped as another project expects them: [`open_clip`]'s state dict for the
//! share-nothing models. Whatever comes in is checked against the model first ([`check`]):
//! every tensor's name, shape and dtype, every mismatch listed in one error.

pub mod check;
pub mod open_clip;
mod values;
