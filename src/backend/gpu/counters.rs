//! What the GPU backend asks of its driver, counted: launches, GEMMs, allocations, copies and
//! host synchronisations. A step that allocates or waits for the device inside its loop is slow
//! on any GPU, and these counts show it without one (DESIGN 6): the emulator receives exactly
//! the calls a real GPU would.
//!
//! Every driver the backend uses is wrapped so that each call is recorded here before it runs
//! (`counted.rs`), whatever the device. The counts are kept per thread, like the allocation
//! counter of `buffer.rs`, so tests running in parallel never see each other's calls; a call
//! made on another thread (say, a tensor dropped there) counts on that thread.

use std::cell::RefCell;
use std::collections::BTreeMap;

use super::driver::GemmSpec;

/// How many calls of one kind, and the bytes they moved or reserved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Calls {
    pub count: u64,
    pub bytes: u64,
}

impl Calls {
    fn add(&mut self, bytes: usize) {
        self.count += 1;
        self.bytes += bytes as u64;
    }

    fn since(self, earlier: Calls) -> Calls {
        Calls { count: self.count.saturating_sub(earlier.count), bytes: self.bytes.saturating_sub(earlier.bytes) }
    }
}

/// Driver calls made on one thread. Totals that several fields make up (all launches, host
/// synchronisations) are methods, so no two fields can disagree.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DriverCounters {
    /// Kernel launches by kernel name.
    pub launches_by_kernel: BTreeMap<String, u64>,
    /// GEMM calls by shape and type.
    pub gemms_by_spec: BTreeMap<GemmSpec, u64>,
    /// Driver allocations: the caching allocator ([`super::pool`]) found no free block.
    pub allocations: Calls,
    /// Requests the caching allocator served from a free block, with no driver call.
    pub cached_allocations: Calls,
    /// Driver frees: the caching allocator released blocks (out of memory, or on request).
    pub frees: Calls,
    /// Host to device copies, queued without waiting (staged through pinned memory on a GPU).
    pub uploads: Calls,
    /// Device to host copies.
    pub downloads: Calls,
    /// Device to device copies: ordered on the device, the host does not wait for them.
    pub device_copies: Calls,
    /// Device memory set to zero: asynchronous for the host too.
    pub memsets: Calls,
    /// Explicit waits for the device (`Driver::synchronize`).
    pub synchronizes: u64,
    /// Launches of captured graphs, each queuing a whole recorded step at once. The calls made
    /// while capturing are counted above as the host made them; a replay adds only this.
    pub graph_launches: u64,
}

impl DriverCounters {
    pub const fn new() -> Self {
        DriverCounters {
            launches_by_kernel: BTreeMap::new(),
            gemms_by_spec: BTreeMap::new(),
            allocations: Calls { count: 0, bytes: 0 },
            cached_allocations: Calls { count: 0, bytes: 0 },
            frees: Calls { count: 0, bytes: 0 },
            uploads: Calls { count: 0, bytes: 0 },
            downloads: Calls { count: 0, bytes: 0 },
            device_copies: Calls { count: 0, bytes: 0 },
            memsets: Calls { count: 0, bytes: 0 },
            synchronizes: 0,
            graph_launches: 0,
        }
    }

    /// Kernel launches of every kernel (GEMMs are counted apart, in [`Self::gemms`]).
    pub fn launches(&self) -> u64 {
        self.launches_by_kernel.values().sum()
    }

    /// How many different kernels were launched.
    pub fn distinct_kernels(&self) -> usize {
        self.launches_by_kernel.len()
    }

    /// Buffers asked of the caching allocator, whether the driver or the cache served them.
    pub fn buffer_requests(&self) -> u64 {
        self.allocations.count + self.cached_allocations.count
    }

    pub fn gemms(&self) -> u64 {
        self.gemms_by_spec.values().sum()
    }

    /// Times the host waited for the device: every download (the host needs the bytes, so it
    /// waits for the work that writes them) and every explicit synchronize. Uploads are not
    /// among them: the CUDA driver stages them through pinned memory and queues the copy
    /// (`cuda/staging.rs`), so the host goes on at once.
    pub fn host_syncs(&self) -> u64 {
        self.downloads.count + self.synchronizes
    }

    /// The `n` most launched kernels, most launches first (ties by name).
    pub fn top_kernels(&self, n: usize) -> Vec<(&str, u64)> {
        let mut kernels: Vec<(&str, u64)> = self.launches_by_kernel.iter().map(|(k, &c)| (k.as_str(), c)).collect();
        kernels.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        kernels.truncate(n);
        kernels
    }

    /// The calls made after `earlier`, an earlier snapshot of the same thread.
    pub fn since(&self, earlier: &DriverCounters) -> DriverCounters {
        DriverCounters {
            launches_by_kernel: difference(&self.launches_by_kernel, &earlier.launches_by_kernel),
            gemms_by_spec: difference(&self.gemms_by_spec, &earlier.gemms_by_spec),
            allocations: self.allocations.since(earlier.allocations),
            cached_allocations: self.cached_allocations.since(earlier.cached_allocations),
            frees: self.frees.since(earlier.frees),
            uploads: self.uploads.since(earlier.uploads),
            downloads: self.downloads.since(earlier.downloads),
            device_copies: self.device_copies.since(earlier.device_copies),
            memsets: self.memsets.since(earlier.memsets),
            synchronizes: self.synchronizes.saturating_sub(earlier.synchronizes),
            graph_launches: self.graph_launches.saturating_sub(earlier.graph_launches),
        }
    }
}

/// Per-key counts of `now` minus those of `earlier`, without the keys that did not grow.
fn difference<K: Ord + Clone>(now: &BTreeMap<K, u64>, earlier: &BTreeMap<K, u64>) -> BTreeMap<K, u64> {
    now.iter()
        .map(|(k, &n)| (k, n.saturating_sub(earlier.get(k).copied().unwrap_or(0))))
        .filter(|&(_, d)| d > 0)
        .map(|(k, d)| (k.clone(), d))
        .collect()
}

thread_local! {
    static COUNTERS: RefCell<DriverCounters> = const { RefCell::new(DriverCounters::new()) };
}

/// Everything this thread has asked of any driver so far.
pub fn snapshot() -> DriverCounters {
    COUNTERS.with_borrow(Clone::clone)
}

/// Runs `f` and returns, beside its result, the driver calls this thread made during it.
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, DriverCounters) {
    let before = snapshot();
    let result = f();
    (result, snapshot().since(&before))
}

/// Adds one call to this thread's counts. A call made while the thread is exiting, after its
/// counts are gone, is not counted.
fn record(update: impl FnOnce(&mut DriverCounters)) {
    let _ = COUNTERS.try_with(|c| update(&mut c.borrow_mut()));
}

pub(super) fn launch(kernel: &str) {
    record(|c| match c.launches_by_kernel.get_mut(kernel) {
        Some(n) => *n += 1,
        None => {
            c.launches_by_kernel.insert(kernel.to_string(), 1);
        }
    });
}

pub(super) fn gemm(spec: GemmSpec) {
    record(|c| *c.gemms_by_spec.entry(spec).or_insert(0) += 1);
}

pub(super) fn allocation(bytes: usize) {
    record(|c| c.allocations.add(bytes));
}

pub(super) fn cached_allocation(bytes: usize) {
    record(|c| c.cached_allocations.add(bytes));
}

pub(super) fn free(bytes: usize) {
    record(|c| c.frees.add(bytes));
}

pub(super) fn upload(bytes: usize) {
    record(|c| c.uploads.add(bytes));
}

pub(super) fn download(bytes: usize) {
    record(|c| c.downloads.add(bytes));
}

pub(super) fn device_copy(bytes: usize) {
    record(|c| c.device_copies.add(bytes));
}

pub(super) fn memset(bytes: usize) {
    record(|c| c.memsets.add(bytes));
}

pub(super) fn graph_launch() {
    record(|c| c.graph_launches += 1);
}

pub(super) fn synchronize() {
    record(|c| c.synchronizes += 1);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::gpu::GemmType;

    fn spec(m: usize) -> GemmSpec {
        GemmSpec::new(GemmType::F32, 1, (m, 4, 4), (false, true))
    }

    #[test]
    fn measure_reports_only_the_calls_inside_it() {
        launch("before");
        let ((), counts) = measure(|| {
            launch("k");
            launch("k");
            launch("before");
            gemm(spec(8));
            upload(100);
            download(12);
            synchronize();
            allocation(256);
            cached_allocation(128);
            free(256);
            device_copy(64);
            memset(32);
        });
        assert_eq!(counts.launches(), 3);
        assert_eq!(counts.distinct_kernels(), 2);
        assert_eq!(counts.top_kernels(5), vec![("k", 2), ("before", 1)]);
        assert_eq!(counts.gemms_by_spec, BTreeMap::from([(spec(8), 1)]));
        assert_eq!(counts.uploads, Calls { count: 1, bytes: 100 });
        assert_eq!(counts.downloads, Calls { count: 1, bytes: 12 });
        assert_eq!(
            (counts.allocations, counts.frees),
            (Calls { count: 1, bytes: 256 }, Calls { count: 1, bytes: 256 })
        );
        assert_eq!(counts.cached_allocations, Calls { count: 1, bytes: 128 });
        assert_eq!(
            (counts.device_copies, counts.memsets),
            (Calls { count: 1, bytes: 64 }, Calls { count: 1, bytes: 32 })
        );
        assert_eq!(counts.host_syncs(), 2, "one download, one synchronize; the upload is queued");
    }

    #[test]
    fn a_shared_operand_counts_as_a_spec_of_its_own() {
        let ((), counts) = measure(|| {
            gemm(spec(8));
            gemm(spec(8).with_shared_a());
            gemm(spec(8).with_shared_a());
        });
        assert_eq!(counts.gemms_by_spec, BTreeMap::from([(spec(8), 1), (spec(8).with_shared_a(), 2)]));
    }

    #[test]
    fn other_threads_calls_are_theirs() {
        let ((), counts) = measure(|| {
            std::thread::spawn(|| launch("elsewhere")).join().unwrap();
        });
        assert_eq!(counts, DriverCounters::new());
    }

    #[test]
    fn top_kernels_breaks_ties_by_name_and_truncates() {
        let mut c = DriverCounters::new();
        c.launches_by_kernel = BTreeMap::from([("b".into(), 2), ("a".into(), 2), ("c".into(), 5), ("d".into(), 1)]);
        assert_eq!(c.top_kernels(3), vec![("c", 5), ("a", 2), ("b", 2)]);
    }
}
