//! The emulator driver: "device" memory is host memory, kernels are the host build of
//! `kernels/*.cu` run by the SIMT emulator (`kernels/emu/`), GEMMs are the CPU reference's.
//!
//! Launches from a thread run the plain copy of the kernels, or the instrumented copy under the
//! sanitizer or the profiler ([`instrument`]); the driver tells the emulator of every allocation,
//! free and host write, so the sanitizer knows what memory is live and what was written.

mod graph;

use std::alloc::Layout;
use std::cell::{Cell, RefCell};
use std::ffi::{CStr, CString, c_char, c_int, c_void};

use gemm::Parallelism;
use half::bf16;

use super::driver::{
    DevicePtr, Driver, GemmEpilogue, GemmSpec, GemmType, GraphId, KernelArg, LaunchArgs, LaunchConfig,
};
use super::footprint::Footprint;
use crate::backend::cpu::matmul::gemm_into;
use crate::error::{Error, Result};
use graph::Node;

unsafe extern "C" {
    fn msclip_emu_launch(
        name: *const c_char,
        grid: *const u32,
        block: *const u32,
        smem_bytes: usize,
        args: *mut *mut c_void,
        arg_sizes: *const usize,
        n_args: c_int,
        options: *const LaunchOptions,
        counters: *mut KernelCounters,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
    fn msclip_emu_kernel_name(i: c_int, name: *mut *const c_char) -> c_int;
    fn msclip_emu_note_alloc(base: usize, bytes: usize, tracked: c_int);
    fn msclip_emu_note_free(base: usize);
    fn msclip_emu_note_written(base: usize, bytes: usize);
}

/// How launches from a thread run (the emulator's `MsclipEmuLaunchOptions`).
#[repr(C)]
struct LaunchOptions {
    instrumentation: c_int,
    schedule: c_int,
    seed: u64,
}

/// What the emulator does with a launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Instrumentation {
    /// The plain copy of the kernels, blocks on every core.
    Off,
    /// The instrumented copy under the sanitizer: bounds, use after free, alignment, unwritten
    /// reads, shared- and global-memory races, barrier and warp-mask rules, Hopper's proxy
    /// fences. A finding fails the launch with its report.
    Sanitizer,
    /// The instrumented copy under the profiler: each launch's memory and tensor-core counters
    /// are kept ([`take_profiles`]).
    Profiler,
}

/// The order a block's threads are resumed in between barriers (instrumented launches): a
/// kernel whose results depend on it has a race the barriers do not cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schedule {
    Forward,
    Reverse,
    Shuffled(u64),
}

/// The counters of one profiled launch (the emulator's `MsclipEmuCounters`, field for field).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub global_load_requests: u64,
    pub global_load_sectors: u64,
    pub global_load_bytes: u64,
    pub global_store_requests: u64,
    pub global_store_sectors: u64,
    pub global_store_bytes: u64,
    pub unique_bytes_read: u64,
    pub unique_bytes_written: u64,
    pub unique_sectors_read: u64,
    pub unique_sectors_written: u64,
    pub shared_load_requests: u64,
    pub shared_load_wavefronts: u64,
    pub shared_store_requests: u64,
    pub shared_store_wavefronts: u64,
    /// What the shared-memory requests would take without bank conflicts.
    pub shared_load_ideal_wavefronts: u64,
    pub shared_store_ideal_wavefronts: u64,
    pub mma_sync_instructions: u64,
    pub wgmma_instructions: u64,
    pub tensor_flops: u64,
}

/// One profiled launch.
#[derive(Debug, Clone)]
pub struct LaunchProfile {
    pub kernel: String,
    pub config: LaunchConfig,
    pub counters: KernelCounters,
    /// What the launch code said the launch must move; None for a launch made on the driver
    /// directly (tests of single kernels).
    pub footprint: Option<Footprint>,
}

thread_local! {
    static MODE: Cell<Option<(Instrumentation, Schedule)>> = const { Cell::new(None) };
    static PROFILES: RefCell<Vec<LaunchProfile>> = const { RefCell::new(Vec::new()) };
    static FOOTPRINT: Cell<Option<Footprint>> = const { Cell::new(None) };
}

/// Runs `f` (which launches one kernel) with `footprint` as what that launch must move, for
/// the profile of the launch.
pub fn with_footprint<R>(footprint: Footprint, f: impl FnOnce() -> R) -> R {
    FOOTPRINT.set(Some(footprint));
    let result = f();
    FOOTPRINT.set(None);
    result
}

/// The calling thread's mode: what [`instrument`] set, else `MSCLIP_EMU_SANITIZE=1` in the
/// environment puts every launch under the sanitizer (as `compute-sanitizer ./app` would).
fn mode() -> (Instrumentation, Schedule) {
    MODE.get().unwrap_or_else(|| {
        static FROM_ENV: std::sync::OnceLock<Instrumentation> = std::sync::OnceLock::new();
        let default = *FROM_ENV.get_or_init(|| match std::env::var("MSCLIP_EMU_SANITIZE").as_deref() {
            Ok("1") => Instrumentation::Sanitizer,
            _ => Instrumentation::Off,
        });
        (default, Schedule::Forward)
    })
}

/// Runs `f` with every emulator launch, allocation and copy it makes on this thread under
/// `instrumentation`, threads resumed in `schedule`'s order; the previous mode comes back after.
pub fn instrument<R>(instrumentation: Instrumentation, schedule: Schedule, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<(Instrumentation, Schedule)>);
    impl Drop for Restore {
        fn drop(&mut self) {
            MODE.set(self.0);
        }
    }
    let _restore = Restore(MODE.replace(Some((instrumentation, schedule))));
    f()
}

/// Puts this thread's launches under `instrumentation` from now on, unless an enclosing
/// [`instrument`] chose already (tests that run a whole test body under the sanitizer).
pub fn instrument_this_thread_by_default(instrumentation: Instrumentation) {
    if MODE.get().is_none() {
        MODE.set(Some((instrumentation, Schedule::Forward)));
    }
}

/// The profiles of the launches this thread made under the profiler since the last call.
pub fn take_profiles() -> Vec<LaunchProfile> {
    PROFILES.take()
}

fn note_written(ptr: DevicePtr, bytes: usize) {
    // SAFETY: plain values; the emulator only records the range.
    unsafe { msclip_emu_note_written(ptr as usize, bytes) }
}

/// Alignment of every allocation, as cudaMalloc's (256 bytes).
const ALIGN: usize = 256;

pub struct EmuDriver;

impl EmuDriver {
    /// Every kernel the emulator holds.
    pub fn kernel_names() -> Vec<String> {
        let mut first = std::ptr::null();
        // SAFETY: the runtime writes a pointer to a static NUL-terminated name, or nothing.
        let count = unsafe { msclip_emu_kernel_name(0, &mut first) };
        (0..count)
            .map(|i| {
                let mut name = std::ptr::null();
                // SAFETY: as above; i is in range.
                unsafe {
                    msclip_emu_kernel_name(i, &mut name);
                    CStr::from_ptr(name).to_string_lossy().into_owned()
                }
            })
            .collect()
    }
}

fn layout(bytes: usize) -> Layout {
    Layout::from_size_align(bytes.max(1), ALIGN).expect("an allocation size below isize::MAX")
}

impl Driver for EmuDriver {
    fn name(&self) -> &'static str {
        "emu"
    }

    fn device_name(&self) -> String {
        "the SIMT emulator, on the host".into()
    }

    fn has_wgmma(&self) -> bool {
        true
    }

    fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout(bytes)) };
        if ptr.is_null() {
            return Err(Error::Device(format!("emu: cannot allocate {bytes} bytes")));
        }
        self.reuse(ptr as DevicePtr, bytes);
        Ok(ptr as DevicePtr)
    }

    fn reuse(&self, ptr: DevicePtr, bytes: usize) {
        if graph::record(|| Node::Reuse { ptr, bytes }) {
            return;
        }
        let tracked = mode().0 == Instrumentation::Sanitizer;
        // SAFETY: plain values; the emulator records the range (replacing any record of the
        // same base), with nothing written yet.
        unsafe { msclip_emu_note_alloc(ptr as usize, bytes, tracked as c_int) };
    }

    fn retire(&self, ptr: DevicePtr) {
        if graph::record(|| Node::Retire { ptr }) {
            return;
        }
        // SAFETY: a plain value; the emulator forgets the range, so any access is flagged.
        unsafe { msclip_emu_note_free(ptr as usize) };
    }

    unsafe fn free(&self, ptr: DevicePtr, bytes: usize) {
        // SAFETY: the caller guarantees ptr came from alloc(bytes), i.e. from this layout; the
        // emulator forgets the range first, so no launch sees it live after the free.
        unsafe {
            msclip_emu_note_free(ptr as usize);
            std::alloc::dealloc(ptr as *mut u8, layout(bytes))
        }
    }

    fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        if graph::record(|| Node::Upload { dst, bytes: src.to_vec() }) {
            return Ok(());
        }
        // SAFETY: dst is an allocation of at least src.len() bytes (the backend's invariant).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        note_written(dst, src.len());
        Ok(())
    }

    fn download(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        graph::refuse_while_capturing("downloading")?;
        // SAFETY: src is an allocation of at least dst.len() bytes.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn copy(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<()> {
        if graph::record(|| Node::Copy { dst, src, bytes }) {
            return Ok(());
        }
        // SAFETY: both are allocations of at least `bytes`; `copy` allows overlap.
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
        note_written(dst, bytes);
        Ok(())
    }

    fn zero(&self, dst: DevicePtr, bytes: usize) -> Result<()> {
        if graph::record(|| Node::Zero { dst, bytes }) {
            return Ok(());
        }
        // SAFETY: dst is an allocation of at least `bytes`.
        unsafe { std::ptr::write_bytes(dst as *mut u8, 0, bytes) };
        note_written(dst, bytes);
        Ok(())
    }

    fn launch(&self, kernel: &str, config: LaunchConfig, args: &[KernelArg]) -> Result<()> {
        let recorded =
            || Node::Launch { kernel: kernel.into(), config, args: args.to_vec(), footprint: FOOTPRINT.get() };
        if graph::record(recorded) {
            return Ok(());
        }
        let name = CString::new(kernel).map_err(|_| Error::Device(format!("kernel name {kernel:?} has a NUL")))?;
        let mut marshalled = LaunchArgs::new(args);
        let sizes = marshalled.sizes();
        let (instrumentation, schedule) = mode();
        let (schedule, seed) = match schedule {
            Schedule::Forward => (0, 0),
            Schedule::Reverse => (1, 0),
            Schedule::Shuffled(seed) => (2, seed),
        };
        let instrumentation = match instrumentation {
            Instrumentation::Off => 0,
            Instrumentation::Sanitizer => 1,
            Instrumentation::Profiler => 2,
        };
        let options = LaunchOptions { instrumentation, schedule, seed };
        let mut counters = KernelCounters::default();
        let mut error = vec![0 as c_char; 16 * 1024];
        // SAFETY: every pointer names a live buffer of the size passed beside it; the runtime
        // checks the count and sizes against the kernel's signature before calling it, and
        // writes at most error.len() bytes of message.
        let status = unsafe {
            msclip_emu_launch(
                name.as_ptr(),
                config.grid.as_ptr(),
                config.block.as_ptr(),
                config.shared_bytes as usize,
                marshalled.pointers().as_mut_ptr(),
                sizes.as_ptr(),
                args.len() as c_int,
                &options,
                &mut counters,
                error.as_mut_ptr(),
                error.len(),
            )
        };
        if status != 0 {
            // SAFETY: the runtime NUL-terminates the message (snprintf).
            let message = unsafe { CStr::from_ptr(error.as_ptr()) }.to_string_lossy().into_owned();
            return Err(Error::Device(format!("emu: {message}")));
        }
        if instrumentation == 2 {
            let footprint = FOOTPRINT.get();
            PROFILES.with_borrow_mut(|p| {
                p.push(LaunchProfile { kernel: kernel.to_string(), config, counters, footprint });
            });
        }
        Ok(())
    }

    fn gemm(&self, spec: GemmSpec, a: DevicePtr, b: DevicePtr, epilogue: GemmEpilogue, c: DevicePtr) -> Result<()> {
        if graph::record(|| Node::Gemm { spec, a, b, epilogue, c }) {
            return Ok(());
        }
        spec.check()?;
        epilogue.check(&spec)?;
        let GemmSpec { dtype, m, n, k, .. } = spec;
        let [a_len, b_len, c_len] = spec.matrix_elements();
        // The address of batch entry i of an operand whose entries are `stride` elements apart.
        let entry = |base: DevicePtr, stride: usize, i: usize| base + (i * stride * dtype.size_in_bytes()) as u64;
        let [a_stride, b_stride, c_stride] = spec.batch_strides;
        let bias = match epilogue {
            GemmEpilogue::Bias(bias) => Some(read_as_f32(dtype, bias, n)),
            _ => None,
        };
        let threads = rayon::current_num_threads();
        let par = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
        for i in 0..spec.batch {
            let lhs = read_as_f32(dtype, entry(a, a_stride, i), a_len);
            let rhs = read_as_f32(dtype, entry(b, b_stride, i), b_len);
            let mut out = vec![0f32; c_len];
            if let Some(bias) = &bias {
                for row in out.chunks_mut(n) {
                    row.copy_from_slice(bias);
                }
            }
            gemm_into(&mut out, &lhs, &rhs, (m, n, k), spec.trans_a, spec.trans_b, bias.is_some(), par);
            write_from_f32(dtype, entry(c, c_stride, i), &out);
            if let GemmEpilogue::BiasGrad(bias_grad) = epilogue {
                write_from_f32(dtype, bias_grad, &row_sums(&lhs, (m, k), spec.trans_a));
            }
        }
        Ok(())
    }

    fn has_bias_grad_epilogue(&self, _spec: GemmSpec) -> bool {
        true
    }

    fn synchronize(&self) -> Result<()> {
        graph::refuse_while_capturing("synchronizing")
    }

    fn begin_capture(&self) -> Result<()> {
        graph::begin()
    }

    fn end_capture(&self) -> Result<GraphId> {
        graph::end()
    }

    /// Runs the nodes in order on this thread, in this thread's instrumentation mode.
    fn launch_graph(&self, id: GraphId) -> Result<()> {
        for node in graph::nodes(id)?.iter() {
            match node {
                Node::Launch { kernel, config, args, footprint } => {
                    FOOTPRINT.set(*footprint);
                    let result = self.launch(kernel, *config, args);
                    FOOTPRINT.set(None);
                    result?
                }
                &Node::Gemm { spec, a, b, epilogue, c } => self.gemm(spec, a, b, epilogue, c)?,
                Node::Upload { dst, bytes } => self.upload(*dst, bytes)?,
                &Node::Copy { dst, src, bytes } => self.copy(dst, src, bytes)?,
                &Node::Zero { dst, bytes } => self.zero(dst, bytes)?,
                &Node::Reuse { ptr, bytes } => self.reuse(ptr, bytes),
                &Node::Retire { ptr } => self.retire(ptr),
            }
        }
        Ok(())
    }

    fn destroy_graph(&self, id: GraphId) {
        graph::destroy(id)
    }
}

/// The sums over k of op(a)'s m rows, a's elements stored [m, k] ([k, m] when `trans`), each
/// added in order of k in f32, as a GEMM's bias-gradient epilogue reduces.
fn row_sums(a: &[f32], (m, k): (usize, usize), trans: bool) -> Vec<f32> {
    let at = |i: usize, j: usize| if trans { a[j * m + i] } else { a[i * k + j] };
    (0..m).map(|i| (0..k).fold(0.0f32, |sum, j| sum + at(i, j))).collect()
}

/// `len` elements at `ptr` widened to f32.
fn read_as_f32(dtype: GemmType, ptr: DevicePtr, len: usize) -> Vec<f32> {
    // SAFETY: the backend passes allocations holding `len` elements of `dtype`.
    unsafe {
        match dtype {
            GemmType::F32 => std::slice::from_raw_parts(ptr as *const f32, len).to_vec(),
            GemmType::BF16 => std::slice::from_raw_parts(ptr as *const bf16, len).iter().map(|x| x.to_f32()).collect(),
        }
    }
}

/// Stores f32 values at `ptr` as `dtype` (round to nearest even for bf16).
fn write_from_f32(dtype: GemmType, ptr: DevicePtr, values: &[f32]) {
    // SAFETY: the backend passes an allocation holding values.len() elements of `dtype`.
    let bytes = unsafe {
        match dtype {
            GemmType::F32 => {
                let dst = std::slice::from_raw_parts_mut(ptr as *mut f32, values.len());
                dst.copy_from_slice(values);
                size_of_val(dst)
            }
            GemmType::BF16 => {
                let dst = std::slice::from_raw_parts_mut(ptr as *mut bf16, values.len());
                for (d, v) in dst.iter_mut().zip(values) {
                    *d = bf16::from_f32(*v);
                }
                size_of_val(dst)
            }
        }
    };
    note_written(ptr, bytes);
}
