//! Files the project writes: atomically, and (for a run directory) by one process at a time.

mod atomic;
mod lock;
mod png;

pub use atomic::{is_temporary, link_atomically, remove_stale_temporaries, write_atomically, write_atomically_with};
pub use lock::DirLock;
pub use png::write_rgb_png;
