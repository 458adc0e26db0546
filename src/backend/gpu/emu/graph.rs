//! Graph capture on the emulator, as CUDA's stream capture behaves: while a thread captures,
//! its driver calls are recorded as nodes rather than run, and a launch of the graph runs the
//! nodes in order. The caching allocator's hand-outs and returns made during the capture are
//! nodes too, so that under the sanitizer a replay sees each block's lifetime exactly as the
//! captured work had it.
//!
//! Captures are per thread (tests capture in parallel on one emulator); a graph, once made,
//! may be launched from any thread.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::super::driver::{DevicePtr, GemmEpilogue, GemmSpec, GraphId, KernelArg, LaunchConfig};
use super::super::footprint::Footprint;
use crate::error::{Error, Result};

/// One recorded driver call.
#[derive(Debug, Clone)]
pub(super) enum Node {
    Launch {
        kernel: String,
        config: LaunchConfig,
        args: Vec<KernelArg>,
        footprint: Option<Footprint>,
    },
    Gemm {
        spec: GemmSpec,
        a: DevicePtr,
        b: DevicePtr,
        epilogue: GemmEpilogue,
        c: DevicePtr,
    },
    /// The bytes as they were when the upload was recorded.
    Upload {
        dst: DevicePtr,
        bytes: Vec<u8>,
    },
    Copy {
        dst: DevicePtr,
        src: DevicePtr,
        bytes: usize,
    },
    Zero {
        dst: DevicePtr,
        bytes: usize,
    },
    Reuse {
        ptr: DevicePtr,
        bytes: usize,
    },
    Retire {
        ptr: DevicePtr,
    },
}

thread_local! {
    static CAPTURE: RefCell<Option<Vec<Node>>> = const { RefCell::new(None) };
}

static GRAPHS: Mutex<Option<HashMap<GraphId, Arc<Vec<Node>>>>> = Mutex::new(None);
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn with_graphs<R>(f: impl FnOnce(&mut HashMap<GraphId, Arc<Vec<Node>>>) -> R) -> R {
    let mut guard = GRAPHS.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    f(guard.get_or_insert_with(HashMap::new))
}

pub(super) fn is_capturing() -> bool {
    CAPTURE.with_borrow(Option::is_some)
}

/// Records the node `make` builds when this thread captures; returns whether it did (and the
/// call must then not run).
pub(super) fn record(make: impl FnOnce() -> Node) -> bool {
    CAPTURE.with_borrow_mut(|capture| match capture {
        Some(nodes) => {
            nodes.push(make());
            true
        }
        None => false,
    })
}

/// An error for a call that a capture cannot hold, when this thread captures.
pub(super) fn refuse_while_capturing(call: &str) -> Result<()> {
    match is_capturing() {
        true => Err(Error::Device(format!("emu: {call} while capturing a graph (it would wait for the device)"))),
        false => Ok(()),
    }
}

pub(super) fn begin() -> Result<()> {
    CAPTURE.with_borrow_mut(|capture| match capture {
        Some(_) => Err(Error::Device("emu: a graph capture is already under way on this thread".into())),
        None => {
            *capture = Some(Vec::new());
            Ok(())
        }
    })
}

pub(super) fn end() -> Result<GraphId> {
    let nodes = CAPTURE
        .with_borrow_mut(Option::take)
        .ok_or_else(|| Error::Device("emu: end of a graph capture that never began".into()))?;
    let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    with_graphs(|graphs| graphs.insert(id, Arc::new(nodes)));
    Ok(id)
}

/// The nodes of a graph, to run in order.
pub(super) fn nodes(id: GraphId) -> Result<Arc<Vec<Node>>> {
    refuse_while_capturing("launching a graph")?;
    with_graphs(|graphs| graphs.get(&id).cloned()).ok_or_else(|| Error::Device(format!("emu: no graph {id}")))
}

pub(super) fn destroy(id: GraphId) {
    with_graphs(|graphs| graphs.remove(&id));
}
