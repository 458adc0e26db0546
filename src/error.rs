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
    /// A file that cannot be read or written.
    #[error("{}: {source}", path.display())]
    Io { path: std::path::PathBuf, source: std::io::Error },
    /// Input whose content is wrong: a corrupt file, a malformed row, a checkpoint of
    /// another config.
    #[error("{what}: {detail}")]
    Format { what: String, detail: String },
    /// A configuration that cannot work (unknown preset, width not divisible by heads).
    #[error("config: {0}")]
    Config(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn io(path: impl Into<std::path::PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub fn format(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Format { what: what.into(), detail: detail.into() }
    }
    pub fn config(detail: impl Into<String>) -> Self {
        Error::Config(detail.into())
    }
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
