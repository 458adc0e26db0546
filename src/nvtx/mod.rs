//! NVTX ranges for Nsight Systems: named spans of host time (a training step, its forward and
//! backward, each backend op) that `nsys profile --trace nvtx` draws above the CUDA timeline.
//!
//! NVTX v3 has no library to link: the program carries the loader, and a profiler announces
//! itself through the `NVTX_INJECTION64_PATH` environment variable. The `inject` module is that
//! loader, written from the protocol of the official headers. The first call here attaches the
//! tool; with no tool every call is one load of an initialised [`OnceLock`] and a branch: no
//! allocation, no formatting.
//!
//! Ranges nest per thread: a [`range_pop`] ends the innermost range its thread pushed.

mod inject;

use std::cell::RefCell;
use std::ffi::CStr;
use std::fmt::{Display, Write};
use std::marker::PhantomData;
use std::sync::OnceLock;

use inject::Tool;

/// The attached tool, found on first use; None without one (or when it failed to attach).
fn tool() -> Option<&'static Tool> {
    static TOOL: OnceLock<Option<Tool>> = OnceLock::new();
    TOOL.get_or_init(inject::attach).as_ref()
}

/// Whether a tool records NVTX ranges in this process (attaching it on the first call).
pub fn enabled() -> bool {
    tool().is_some()
}

/// Opens a range named `name` on this thread. `name` is formatted only when a tool is attached,
/// so a `format_args!` costs nothing otherwise. A NUL inside the name ends it for the tool.
pub fn range_push(name: impl Display) {
    let Some(tool) = tool() else { return };
    thread_local! {
        /// The name as a C string: a tool reads it during the call, so one buffer per thread,
        /// reused, spares an allocation per range.
        static NAME: RefCell<String> = const { RefCell::new(String::new()) };
    }
    NAME.with_borrow_mut(|buffer| {
        buffer.clear();
        // Writing into a String fails only when a Display impl reports an error; the range then
        // carries what it wrote.
        let _ = write!(buffer, "{name}");
        buffer.push('\0');
        let name = CStr::from_bytes_until_nul(buffer.as_bytes()).expect("ends with a NUL");
        tool.push(name);
    });
}

/// Ends this thread's innermost range.
pub fn range_pop() {
    if let Some(tool) = tool() {
        tool.pop();
    }
}

/// A range that ends when the guard drops, on the thread that opened it (the guard is not
/// `Send`).
#[must_use = "the range ends when this guard is dropped"]
pub struct Range(PhantomData<*const ()>);

/// Opens a range named `name` until the returned guard drops ([`range_push`]).
pub fn range(name: impl Display) -> Range {
    range_push(name);
    Range(PhantomData)
}

impl Drop for Range {
    fn drop(&mut self) {
        range_pop();
    }
}
