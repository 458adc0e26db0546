//! The one error type of the library. Every variant names the op that failed, so a
//! shape bug deep inside a model reads as "layer_norm: ... [4, 7] vs [8]", not as a panic.

/// What went wrong, and in which op.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op}: shape mismatch: {detail}")]
    Shape { op: &'static str, detail: String },
    #[error("{op}: dtype mismatch: {detail}")]
    DType { op: &'static str, detail: String },
    #[error("{op}: index out of range: {detail}")]
    Index { op: &'static str, detail: String },
    #[error("{op}: invalid argument: {detail}")]
    Invalid { op: &'static str, detail: String },
    #[error("device: {0}")]
    Device(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn shape(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Shape { op, detail: detail.into() }
    }
    pub fn dtype(op: &'static str, detail: impl Into<String>) -> Self {
        Error::DType { op, detail: detail.into() }
    }
    pub fn index(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Index { op, detail: detail.into() }
    }
    pub fn invalid(op: &'static str, detail: impl Into<String>) -> Self {
        Error::Invalid { op, detail: detail.into() }
    }
}
