//! Serialises tensors in the safetensors format with a byte-stable header. The `safetensors`
//! crate takes the metadata as a `HashMap`, whose iteration order changes from process to
//! process, so the same training state gave different checkpoint bytes on every run. Here the
//! metadata is a `BTreeMap` (sorted keys) and the tensors are laid out in the crate's own order
//! (descending dtype alignment, then name), so identical state gives identical files. Reading
//! stays with the `safetensors` crate, which validates what this writes (tests).

use std::collections::BTreeMap;

use safetensors::Dtype;

use crate::error::{Error, Result};

/// One named tensor: dtype, shape and little-endian bytes.
pub struct Entry<'a> {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: &'a [u8],
}

/// The file's bytes: an 8-byte little-endian header length, the JSON header padded with spaces
/// to a multiple of 8, then the tensors' data back to back.
pub fn serialize(mut entries: Vec<Entry>, metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    entries.sort_by(|a, b| b.dtype.cmp(&a.dtype).then_with(|| a.name.cmp(&b.name)));
    let mut header = format!("{{\"__metadata__\":{}", json(metadata)?);
    let mut offset = 0usize;
    for e in &entries {
        let elements: usize = e.shape.iter().product();
        if elements * e.dtype.bitsize() / 8 != e.data.len() {
            return Err(Error::format(
                &e.name,
                format!("{} bytes for shape {:?} of {:?}", e.data.len(), e.shape, e.dtype),
            ));
        }
        let end = offset + e.data.len();
        header.push_str(&format!(
            ",{}:{{\"dtype\":\"{:?}\",\"shape\":{},\"data_offsets\":[{offset},{end}]}}",
            json(&e.name)?,
            e.dtype,
            json(&e.shape)?
        ));
        offset = end;
    }
    header.push('}');
    let padded = header.len().next_multiple_of(8);
    let mut bytes = Vec::with_capacity(8 + padded + offset);
    bytes.extend_from_slice(&(padded as u64).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.resize(8 + padded, b' ');
    for e in &entries {
        bytes.extend_from_slice(e.data);
    }
    Ok(bytes)
}

fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::format("safetensors header", e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::SafeTensors;

    #[test]
    fn the_crate_reads_what_this_writes_and_the_bytes_are_stable() {
        let a: Vec<u8> = [1.0f32, -2.0, 3.5].iter().flat_map(|v| v.to_le_bytes()).collect();
        let b: Vec<u8> = [0.25f64].iter().flat_map(|v| v.to_le_bytes()).collect();
        let make = || {
            vec![
                Entry { name: "w".into(), dtype: Dtype::F32, shape: vec![3], data: &a },
                Entry { name: "a \"quoted\" name".into(), dtype: Dtype::F64, shape: vec![1, 1], data: &b },
            ]
        };
        let meta: BTreeMap<String, String> = [("step", "7"), ("format", "x"), ("rng", "ab,cd")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let bytes = serialize(make(), &meta).unwrap();
        assert_eq!(bytes, serialize(make(), &meta).unwrap());
        let read = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(read.tensor("w").unwrap().data(), &a[..]);
        assert_eq!(read.tensor("a \"quoted\" name").unwrap().shape(), &[1, 1]);
        let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(header.metadata().as_ref().unwrap()["rng"], "ab,cd");
        let wrong = vec![Entry { name: "w".into(), dtype: Dtype::F32, shape: vec![4], data: &a }];
        assert!(serialize(wrong, &meta).is_err());
    }
}
