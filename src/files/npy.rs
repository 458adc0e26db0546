//! NumPy's .npy format (version 1.0) for a row-major f32 matrix, as `np.load` reads it.

use std::path::Path;

use super::write_atomically;
use crate::error::{Error, Result};

/// The bytes of a .npy file holding `values` as a float32 [rows, cols] array.
pub fn npy_f32(values: &[f32], rows: usize, cols: usize) -> Result<Vec<u8>> {
    if values.len() != rows * cols {
        return Err(Error::invalid("npy", format!("{} values for a [{rows}, {cols}] array", values.len())));
    }
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + length (2) + header, padded with spaces to a multiple of 64,
    // ending in a newline.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + values.len() * 4);
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    Ok(bytes)
}

/// Writes [`npy_f32`] to `path` atomically.
pub fn write_npy_f32(path: &Path, values: &[f32], rows: usize, cols: usize) -> Result<()> {
    write_atomically(path, &npy_f32(values, rows, cols)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_is_aligned_and_the_data_follows() {
        let bytes = npy_f32(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3).unwrap();
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
        assert_eq!((10 + header_len) % 64, 0);
        let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
        assert!(header.contains("'shape': (2, 3)") && header.ends_with('\n'), "{header:?}");
        assert_eq!(&bytes[10 + header_len..10 + header_len + 4], &1.0f32.to_le_bytes());
        assert_eq!(bytes.len(), 10 + header_len + 24);
        assert!(npy_f32(&[1.0], 2, 3).is_err());
    }
}
