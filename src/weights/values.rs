//! Tensor values to and from the bytes of a safetensors file in any floating-point dtype
//! (little-endian, as the format stores them). Weights travel as f16 or bf16 as often as f32.

use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The values of `file`'s tensor `name` (which the caller found there), widened to f64.
pub fn read_f64(file: &SafeTensors, name: &str) -> Result<Vec<f64>> {
    let view = file.tensor(name).map_err(|e| Error::format(name, e.to_string()))?;
    to_f64(name, view.dtype(), view.data())
}

/// `data`, the values of the file's tensor `name`, as a tensor with `like`'s shape, dtype and
/// device. Values that are not finite are converted too, and counted into `non_finite` as
/// "name (bad of total)": the caller refuses the file once every tensor was read, naming them all.
pub fn tensor_like(name: &str, data: &[f64], like: &Tensor, non_finite: &mut Vec<String>) -> Result<Tensor> {
    let bad = data.iter().filter(|v| !v.is_finite()).count();
    if bad > 0 {
        non_finite.push(format!("{name} ({bad} of {})", data.len()));
    }
    Tensor::from_f64(data, like.shape().clone(), like.dtype())?.to_device(like.device())
}

/// The values of `bytes` holding `dtype`, widened to f64 (exactly: every f16, bf16 and f32 is an f64).
pub fn to_f64(name: &str, dtype: Dtype, bytes: &[u8]) -> Result<Vec<f64>> {
    let width = dtype.bitsize() / 8;
    if width == 0 || !bytes.len().is_multiple_of(width) {
        return Err(Error::format(name, format!("{} bytes are not whole {dtype:?} values", bytes.len())));
    }
    let words = bytes.chunks_exact(width);
    Ok(match dtype {
        Dtype::F16 => words.map(|w| f16::from_le_bytes([w[0], w[1]]).to_f64()).collect(),
        Dtype::BF16 => words.map(|w| bf16::from_le_bytes([w[0], w[1]]).to_f64()).collect(),
        Dtype::F32 => words.map(|w| f32::from_le_bytes(w.try_into().expect("4 bytes")) as f64).collect(),
        Dtype::F64 => words.map(|w| f64::from_le_bytes(w.try_into().expect("8 bytes"))).collect(),
        other => return Err(Error::format(name, format!("dtype {other:?} is not a floating-point type"))),
    })
}

/// `values` rounded to the nearest `dtype` value (f16, bf16, f32 or f64), as little-endian bytes.
pub fn from_f64(values: &[f64], dtype: Dtype) -> Vec<u8> {
    match dtype {
        Dtype::F16 => values.iter().flat_map(|&v| f16::from_f64(v).to_le_bytes()).collect(),
        Dtype::BF16 => values.iter().flat_map(|&v| bf16::from_f64(v).to_le_bytes()).collect(),
        Dtype::F32 => values.iter().flat_map(|&v| (v as f32).to_le_bytes()).collect(),
        Dtype::F64 => values.iter().flat_map(|&v| v.to_le_bytes()).collect(),
        other => unreachable!("weights are written as a floating-point type, not {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_dtype_round_trips_the_values_it_can_hold() {
        let values = [0.0, -1.5, 0.333251953125, 65504.0, 1e-3];
        for dtype in [Dtype::F16, Dtype::BF16, Dtype::F32, Dtype::F64] {
            let back = to_f64("t", dtype, &from_f64(&values, dtype)).unwrap();
            let tolerance = match dtype {
                Dtype::F16 => 1e-3,
                Dtype::BF16 => 8e-3,
                _ => 1e-7,
            };
            for (a, b) in values.iter().zip(&back) {
                assert!((a - b).abs() <= tolerance * a.abs().max(1e-3), "{dtype:?}: {a} came back as {b}");
            }
        }
        assert!(to_f64("t", Dtype::F32, &[0, 0, 0]).is_err(), "3 bytes are no f32");
        assert!(to_f64("t", Dtype::I64, &[0; 8]).is_err(), "integers are no weights");
    }
}
