//! Files the project writes: atomically, and (for a run directory) by one process at a time;
//! safetensors with a byte-stable header; NumPy's .npy.

mod atomic;
mod lock;
mod npy;
mod png;
pub(crate) mod safetensors_out;

pub use atomic::{is_temporary, link_atomically, remove_stale_temporaries, write_atomically, write_atomically_with};
pub use lock::DirLock;
pub use npy::{npy_f32, write_npy_f32};
pub use png::write_rgb_png;
