//! The CUDA driver: a real NVIDIA GPU through cudarc's thin `result` layer (driver API and
//! cuBLASLt), loaded dynamically so a machine without CUDA still runs everything else.
//!
//! One device (ordinal 0), its primary context and one non-blocking stream that every call
//! queues its work on, in call order: launches, GEMMs, copies, memsets, allocations and frees
//! (cuMemAllocAsync / cuMemFreeAsync). Nothing waits for the device except a download (the
//! host needs the bytes) and `synchronize`: uploads are staged through pinned memory
//! ([`staging`]), and GEMM plans are cached per shape ([`gemm`]). A non-blocking stream, unlike
//! the legacy default stream, can be captured into a CUDA graph. The kernel images build.rs
//! embedded are loaded once, when the driver is created.

mod gemm;
mod graph;
mod staging;

use std::collections::HashMap;
use std::ffi::CString;
use std::sync::{Mutex, MutexGuard};

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys as lt_sys;
use cudarc::driver::result as cu;
use cudarc::driver::sys as cu_sys;

use super::driver::{DevicePtr, Driver, GemmEpilogue, GemmSpec, GraphId, KernelArg, LaunchArgs, LaunchConfig};
use super::modules::{GPU_IMAGES_BUILT, MODULES};
use crate::error::{Error, Result};
use gemm::GemmPlans;
use graph::Graphs;
use staging::PinnedRing;
/// Dynamic shared memory a launch gets without opting in.
const DEFAULT_DYNAMIC_SMEM: u32 = 48 * 1024;

/// A loaded kernel and the dynamic shared memory it has been allowed so far.
struct Kernel {
    function: cu_sys::CUfunction,
    max_dynamic_smem: u32,
}

pub struct CudaDriver {
    context: cu_sys::CUcontext,
    /// The one stream all work goes on.
    stream: cu_sys::CUstream,
    kernels: Mutex<HashMap<&'static str, Kernel>>,
    blas: lt_sys::cublasLtHandle_t,
    workspace: DevicePtr,
    gemm_plans: Mutex<GemmPlans>,
    staging: Mutex<PinnedRing>,
    graphs: Mutex<Graphs>,
    pub device_name: String,
    /// Compute capability 9.0 (H100, H200): the sm_90a images, wgmma included, load as built.
    hopper: bool,
}

// SAFETY: the handles are plain identifiers that the CUDA driver and cuBLASLt allow any thread
// to use once the context is current (every entry point makes it current first); the kernel
// table, the GEMM plans and the staging ring are behind mutexes.
unsafe impl Send for CudaDriver {}
unsafe impl Sync for CudaDriver {}

pub(super) fn driver_error(what: &str, e: cu::DriverError) -> Error {
    Error::Device(format!("cuda: {what}: {e:?}"))
}

pub(super) fn blas_error(what: &str, e: lt::CublasError) -> Error {
    Error::Device(format!("cuBLASLt: {what}: {e:?}"))
}

/// The GPU this process drives: 0, or in a data-parallel world (WORLD_SIZE set, as torchrun
/// and `msclip train --nproc` do) the one LOCAL_RANK names, one per process on each machine.
fn gpu_ordinal(count: i32) -> Result<i32> {
    let local_rank = match (std::env::var("WORLD_SIZE"), std::env::var("LOCAL_RANK")) {
        (Ok(_), Ok(local)) => local
            .trim()
            .parse::<i32>()
            .map_err(|_| Error::Device(format!("LOCAL_RANK={local:?} is not a GPU index")))?,
        _ => 0,
    };
    if !(0..count).contains(&local_rank) {
        return Err(Error::Device(format!(
            "LOCAL_RANK={local_rank} names a GPU this machine does not have (it shows {count}): start at most {count} \
             processes per machine"
        )));
    }
    Ok(local_rank)
}

impl CudaDriver {
    /// Opens the process's GPU (`gpu_ordinal`) and loads every kernel module. Fails, never panics, when the build has no
    /// GPU images, the CUDA driver library or cuBLASLt is missing, or there is no device.
    pub fn new() -> Result<Self> {
        if !GPU_IMAGES_BUILT {
            return Err(Error::Device(
                "this build has no GPU kernels: nvcc was not found when it was compiled. Run \
                 scripts/install-cuda-toolchain.sh (or set NVCC / CUDA_HOME), then rebuild"
                    .into(),
            ));
        }
        // SAFETY: only probes whether the shared libraries can be opened.
        if !unsafe { cu_sys::is_culib_present() } {
            return Err(Error::Device(
                "the CUDA driver library (libcuda.so) was not found: --device cuda needs an NVIDIA GPU and its driver"
                    .into(),
            ));
        }
        // SAFETY: as above.
        if !unsafe { lt_sys::is_culib_present() } {
            return Err(Error::Device(
                "cuBLASLt (libcublasLt.so.13) was not found: install the CUDA 13 runtime libraries or add their \
                 directory to LD_LIBRARY_PATH"
                    .into(),
            ));
        }
        cu::init().map_err(|e| driver_error("cuInit (is there a GPU and a working driver?)", e))?;
        let count = cu::device::get_count().map_err(|e| driver_error("device count", e))?;
        if count == 0 {
            return Err(Error::Device("cuda: the driver sees no GPU".into()));
        }
        let ordinal = gpu_ordinal(count)?;
        let device = cu::device::get(ordinal).map_err(|e| driver_error(&format!("device {ordinal}"), e))?;
        let device_name = cu::device::get_name(device).map_err(|e| driver_error("device name", e))?;
        let attribute = |a| {
            // SAFETY: a valid device ordinal and attribute.
            unsafe { cu::device::get_attribute(device, a) }.map_err(|e| driver_error("compute capability", e))
        };
        use cu_sys::CUdevice_attribute::{
            CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR as MAJOR,
            CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR as MINOR,
        };
        let hopper = (attribute(MAJOR)?, attribute(MINOR)?) == (9, 0);
        // SAFETY: `device` is a valid ordinal; the primary context lives as long as the process.
        let context = unsafe { cu::primary_ctx::retain(device) }.map_err(|e| driver_error("primary context", e))?;
        // SAFETY: a context just retained.
        unsafe { cu::ctx::set_current(context) }.map_err(|e| driver_error("set context", e))?;
        // Keep freed memory in the pool across synchronisations (the default threshold of 0
        // returns it to the OS at every sync, and a training step would re-map it each time).
        // SAFETY: a valid device; the attribute takes a u64.
        unsafe {
            let pool = cu::device::get_default_mem_pool(device).map_err(|e| driver_error("memory pool", e))?;
            let mut threshold = u64::MAX;
            cu::mem_pool::set_attribute(
                pool,
                cu_sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                (&mut threshold as *mut u64).cast(),
            )
            .map_err(|e| driver_error("memory pool release threshold", e))?;
        }
        let mut kernels = HashMap::new();
        for module in MODULES {
            let image = module.image.expect("GPU_IMAGES_BUILT implies every module has an image");
            // SAFETY: the image is a fatbin produced by nvcc and lives for the whole program.
            let handle = unsafe { cu::module::load_data(image.as_ptr().cast()) }
                .map_err(|e| driver_error(&format!("load module {} (GPU older than sm_90?)", module.name), e))?;
            for &name in module.kernels {
                let c_name = CString::new(name).expect("kernel names have no NUL");
                // SAFETY: a loaded module and a NUL-terminated name.
                let function = unsafe { cu::module::get_function(handle, c_name) }
                    .map_err(|e| driver_error(&format!("find kernel {name}"), e))?;
                kernels.insert(name, Kernel { function, max_dynamic_smem: DEFAULT_DYNAMIC_SMEM });
            }
        }
        let blas = lt::create_handle().map_err(|e| blas_error("create handle", e))?;
        // SAFETY: the context is current.
        let workspace =
            unsafe { cu::malloc_sync(gemm::WORKSPACE_BYTES) }.map_err(|e| driver_error("GEMM workspace", e))?;
        let stream = cu::stream::create(cu::stream::StreamKind::NonBlocking).map_err(|e| driver_error("stream", e))?;
        // SAFETY: the context is current.
        let staging = unsafe { PinnedRing::new()? };
        Ok(CudaDriver {
            context,
            stream,
            kernels: Mutex::new(kernels),
            blas,
            workspace,
            gemm_plans: Mutex::new(GemmPlans::default()),
            staging: Mutex::new(staging),
            graphs: Mutex::new(Graphs::default()),
            device_name,
            hopper,
        })
    }

    /// Makes the context current on the calling thread (CUDA contexts are per thread).
    fn bind(&self) -> Result<()> {
        // SAFETY: the primary context stays retained for the driver's lifetime.
        unsafe { cu::ctx::set_current(self.context) }.map_err(|e| driver_error("set context", e))
    }
}

/// A lock that a panic elsewhere did not break (what it guards stays consistent: every update
/// is one insert or one call).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Driver for CudaDriver {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn device_name(&self) -> String {
        self.device_name.clone()
    }

    fn has_wgmma(&self) -> bool {
        self.hopper
    }

    fn raw_stream(&self) -> Option<usize> {
        Some(self.stream as usize)
    }

    fn free_memory(&self) -> Result<Option<u64>> {
        self.bind()?;
        let (free, _total) = cu::mem_get_info().map_err(|e| driver_error("read the free device memory", e))?;
        Ok(Some(free as u64))
    }

    fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
        self.bind()?;
        let mut graphs = lock(&self.graphs);
        // SAFETY: the context is current; every use of the memory is on the same stream; both
        // kinds of allocation are aligned to at least 256 bytes.
        let allocated = unsafe {
            match graphs.is_capturing() {
                // A stream-ordered allocation would be captured as a node and freed with the
                // graph; a plain one is not captured (legal in relaxed capture mode).
                true => cu::malloc_sync(bytes.max(1)).inspect(|&ptr| graphs.note_plain_allocation(ptr)),
                false => cu::malloc_async(self.stream, bytes.max(1)),
            }
        };
        allocated.map_err(|e| driver_error(&format!("allocate {bytes} bytes"), e))
    }

    unsafe fn free(&self, ptr: DevicePtr, _bytes: usize) {
        if self.bind().is_ok() {
            // SAFETY: the caller passes a live allocation of this driver, made one way or the
            // other. A failure here means the context is already broken; the error surfaces at
            // the next checked call.
            let _ = unsafe {
                match lock(&self.graphs).forget_plain_allocation(ptr) {
                    true => cu::free_sync(ptr),
                    false => cu::free_async(ptr, self.stream),
                }
            };
        }
    }

    fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        self.bind()?;
        let mut graphs = lock(&self.graphs);
        // SAFETY: dst holds at least src.len() bytes; the stream is this context's (and, in
        // a capture, dst outlives the graph: the caching allocator keeps captured blocks).
        unsafe {
            match graphs.is_capturing() {
                true => graphs.upload(dst, src, self.stream),
                false => lock(&self.staging).upload(dst, src, self.stream),
            }
        }
    }

    fn download(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        self.bind()?;
        lock(&self.graphs).refuse_while_capturing("downloading")?;
        // SAFETY: src holds at least dst.len() bytes. Queued behind the work that writes src;
        // the host then waits for the stream, so the bytes are there on return.
        unsafe {
            cu::memcpy_dtoh_async(dst, src, self.stream)
                .and_then(|_| cu::stream::synchronize(self.stream))
                .map_err(|e| driver_error("copy from the GPU", e))
        }
    }

    fn copy(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: both hold at least `bytes`.
        unsafe { cu::memcpy_dtod_async(dst, src, bytes, self.stream) }.map_err(|e| driver_error("copy on the GPU", e))
    }

    fn zero(&self, dst: DevicePtr, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: dst holds at least `bytes`.
        unsafe { cu::memset_d8_async(dst, 0, bytes, self.stream) }.map_err(|e| driver_error("zero GPU memory", e))
    }

    fn launch(&self, kernel: &str, config: LaunchConfig, args: &[KernelArg]) -> Result<()> {
        self.bind()?;
        let function = {
            let mut kernels = self.kernels.lock().expect("kernel table lock");
            let k = kernels.get_mut(kernel).ok_or_else(|| Error::Device(format!("cuda: no kernel named {kernel}")))?;
            if config.shared_bytes > k.max_dynamic_smem {
                // SAFETY: a function of a loaded module; the driver validates the size.
                unsafe {
                    cu::function::set_function_attribute(
                        k.function,
                        cu_sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        config.shared_bytes as i32,
                    )
                }
                .map_err(|e| driver_error(&format!("{kernel}: allow {} B of shared memory", config.shared_bytes), e))?;
                k.max_dynamic_smem = config.shared_bytes;
            }
            k.function
        };
        let mut params = LaunchArgs::new(args);
        let [gx, gy, gz] = config.grid;
        let [bx, by, bz] = config.block;
        // SAFETY: `params` points at one value per kernel parameter, of the parameter's width
        // (the emulator checks the same argument lists against the kernels' signatures in CI);
        // device pointers among them are live allocations of this driver.
        unsafe {
            cu::launch_kernel(function, (gx, gy, gz), (bx, by, bz), config.shared_bytes, self.stream, params.pointers())
        }
        .map_err(|e| driver_error(&format!("launch {kernel} {config:?}"), e))
    }

    fn gemm(&self, spec: GemmSpec, a: DevicePtr, b: DevicePtr, epilogue: GemmEpilogue, c: DevicePtr) -> Result<()> {
        spec.check()?;
        epilogue.check(&spec)?;
        self.bind()?;
        // SAFETY: the pointers hold the operands the spec describes (the backend allocates them
        // from the same shapes); the workspace and stream are this driver's.
        unsafe { lock(&self.gemm_plans).run(self.blas, self.workspace, self.stream, spec, (a, b, epilogue, c)) }
    }

    fn has_bias_grad_epilogue(&self, spec: GemmSpec) -> bool {
        // SAFETY: the heuristic runs in this driver's context, bound first.
        self.bind().is_ok() && unsafe { lock(&self.gemm_plans).has_bias_grad(self.blas, spec) }
    }

    fn synchronize(&self) -> Result<()> {
        self.bind()?;
        lock(&self.graphs).refuse_while_capturing("synchronizing")?;
        // SAFETY: this context's stream.
        unsafe { cu::stream::synchronize(self.stream) }.map_err(|e| driver_error("a kernel failed (synchronize)", e))
    }

    fn begin_capture(&self) -> Result<()> {
        self.bind()?;
        // SAFETY: the context is current; the stream is its own.
        unsafe { lock(&self.graphs).begin(self.stream) }
    }

    fn end_capture(&self) -> Result<GraphId> {
        self.bind()?;
        // SAFETY: as above.
        unsafe { lock(&self.graphs).end(self.stream) }
    }

    fn launch_graph(&self, graph: GraphId) -> Result<()> {
        self.bind()?;
        // SAFETY: as above.
        unsafe { lock(&self.graphs).launch(graph, self.stream) }
    }

    fn destroy_graph(&self, graph: GraphId) {
        // A launch still queued may read the graph's constants: wait for the stream first.
        if self.bind().is_ok() {
            // SAFETY: this context's stream; an error here surfaces at the next checked call.
            let _ = unsafe { cu::stream::synchronize(self.stream) };
            // SAFETY: the context is current and nothing queued uses the graph any more.
            unsafe { lock(&self.graphs).destroy(graph) }
        }
    }
}
