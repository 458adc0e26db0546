//! Whether a file's tensors fit a model: the same names, the same shapes, floating-point
//! dtypes. Every problem is collected before anything is reported, so one run of the command
//! shows everything that is wrong with a file, not the first thing.

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

/// A tensor the model needs, named and shaped as the file should hold it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub name: String,
    pub shape: Vec<usize>,
}

/// Whether values of `dtype` can be read as weights.
pub fn is_float(dtype: Dtype) -> bool {
    matches!(dtype, Dtype::F16 | Dtype::BF16 | Dtype::F32 | Dtype::F64)
}

/// Every difference between `file`'s tensors and `expected`, one line each, in the order of
/// `expected` then the file's unexpected names (sorted); empty when the file fits. Names for
/// which `dropped` is true may be in the file and are not read (BatchNorm's
/// `num_batches_tracked` counters in MS-CLIP's state dict).
pub fn mismatches(expected: &[Expected], file: &SafeTensors, dropped: impl Fn(&str) -> bool) -> Vec<String> {
    let mut problems = Vec::new();
    for want in expected {
        match file.tensor(&want.name) {
            Err(_) => problems.push(format!("missing {} {:?}", want.name, want.shape)),
            Ok(view) => {
                if view.shape() != want.shape.as_slice() {
                    problems.push(format!(
                        "{}: shape {:?} in the file, {:?} in the model",
                        want.name,
                        view.shape(),
                        want.shape
                    ));
                }
                if !is_float(view.dtype()) {
                    problems.push(format!("{}: dtype {:?}, not a floating-point type", want.name, view.dtype()));
                }
            }
        }
    }
    let mut unexpected: Vec<String> = file
        .names()
        .into_iter()
        .filter(|&name| !dropped(name) && !expected.iter().any(|e| e.name == name))
        .map(String::from)
        .collect();
    unexpected.sort();
    problems.extend(unexpected.into_iter().map(|name| format!("unexpected {name}")));
    problems
}

/// Fails, listing every mismatch, unless `file` holds exactly the `expected` tensors (and any
/// of the `dropped` ones).
pub fn require_fit(
    what: &str,
    model: &str,
    expected: &[Expected],
    file: &SafeTensors,
    dropped: impl Fn(&str) -> bool,
) -> Result<()> {
    let problems = mismatches(expected, file, dropped);
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::format(
        what,
        format!("does not fit model {model:?}: {} problem(s):\n  {}", problems.len(), problems.join("\n  ")),
    ))
}

/// The error for a file whose tensors hold NaN or infinite values: `found` lists each such
/// tensor as "name (bad of total)"; the first five are named.
pub fn not_finite(what: &str, found: &[String]) -> Error {
    Error::format(
        what,
        format!(
            "holds values that are not finite (NaN or infinite) in {} tensor(s): {}{}",
            found.len(),
            found[..found.len().min(5)].join(", "),
            if found.len() > 5 { ", ..." } else { "" }
        ),
    )
}
