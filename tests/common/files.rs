//! Editing safetensors files, to make the broken files the importers must refuse.

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// One tensor of a file: name, dtype, shape, little-endian bytes.
pub type RawTensor = (String, Dtype, Vec<usize>, Vec<u8>);

/// The tensors of `bytes` (a safetensors file) passed through `edit`, written again.
pub fn rewritten(bytes: &[u8], edit: impl FnOnce(&mut Vec<RawTensor>)) -> Vec<u8> {
    let file = SafeTensors::deserialize(bytes).unwrap();
    let mut tensors: Vec<RawTensor> =
        file.tensors().into_iter().map(|(name, v)| (name, v.dtype(), v.shape().to_vec(), v.data().to_vec())).collect();
    edit(&mut tensors);
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| (name.clone(), TensorView::new(*dtype, shape.clone(), data).unwrap()))
        .collect();
    safetensors::serialize(views, None).unwrap()
}
