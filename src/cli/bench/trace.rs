//! `msclip bench step --trace F.json`: the breakdown step's backend calls as a Chrome trace
//! (the JSON `chrome://tracing` and https://ui.perfetto.dev open): one complete event ("ph":
//! "X") per call on one track, named by the backend method, its category the kind of op, so
//! the viewer colours GEMMs, attention, LayerNorm and the rest apart. The gaps between events
//! are the host's own work (the tape, batch preparation).
//!
//! The times are those `backend::timed` measured: on a GPU each call waits for the device
//! before and after, so an event is the call's device time plus one synchronisation; on the
//! emulator they are the emulator's wall time.

use msclip::backend::timed::OpEvent;
use serde_json::{Value, json};

/// The trace of `events` under a process named `process` (what ran, and where).
pub fn chrome_trace(events: &[OpEvent], process: &str) -> Value {
    let micros = |seconds: f64| seconds * 1e6;
    let mut trace: Vec<Value> = vec![
        json!({ "name": "process_name", "ph": "M", "pid": 1, "tid": 1, "args": { "name": process } }),
        json!({ "name": "thread_name", "ph": "M", "pid": 1, "tid": 1, "args": { "name": "backend calls" } }),
    ];
    trace.extend(events.iter().map(|e| {
        json!({
            "name": e.name, "cat": e.kind.name(), "ph": "X", "pid": 1, "tid": 1,
            "ts": micros(e.start_seconds), "dur": micros(e.seconds),
        })
    }));
    json!({ "traceEvents": trace, "displayTimeUnit": "ms" })
}
