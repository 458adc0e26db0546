//! The CUDA driver: a real NVIDIA GPU through cudarc's thin `result` layer (driver API and
//! cuBLASLt), loaded dynamically so a machine without CUDA still runs everything else.
//!
//! One device (ordinal 0), its primary context, the legacy default stream: launches run in
//! order and the synchronous copies wait for them. Memory is stream-ordered (cuMemAllocAsync /
//! cuMemFreeAsync on that stream): a buffer freed right after the launch that reads it (a
//! per-launch index table) is released only after the launch, and the pool reuses it without
//! a device-wide synchronisation. The kernel images build.rs embedded are loaded once, when the
//! driver is created.

use std::collections::HashMap;
use std::ffi::{CString, c_void};
use std::sync::Mutex;

use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys as lt_sys;
use cudarc::driver::result as cu;
use cudarc::driver::sys as cu_sys;

use super::driver::{DevicePtr, Driver, GemmSpec, GemmType, KernelArg, LaunchArgs, LaunchConfig};
use super::modules::{GPU_IMAGES_BUILT, MODULES};
use crate::error::{Error, Result};

/// cuBLASLt's scratch space; 32 MiB is what its heuristics want for large bf16 GEMMs on Hopper.
const GEMM_WORKSPACE_BYTES: usize = 32 << 20;
/// Dynamic shared memory a launch gets without opting in.
const DEFAULT_DYNAMIC_SMEM: u32 = 48 * 1024;

/// A loaded kernel and the dynamic shared memory it has been allowed so far.
struct Kernel {
    function: cu_sys::CUfunction,
    max_dynamic_smem: u32,
}

pub struct CudaDriver {
    context: cu_sys::CUcontext,
    kernels: Mutex<HashMap<&'static str, Kernel>>,
    blas: lt_sys::cublasLtHandle_t,
    workspace: DevicePtr,
    pub device_name: String,
    /// Compute capability 9.0 (H100, H200): the sm_90a images, wgmma included, load as built.
    hopper: bool,
}

// SAFETY: the handles are plain identifiers that the CUDA driver and cuBLASLt allow any thread
// to use once the context is current (every entry point makes it current first); the kernel
// table is behind a mutex.
unsafe impl Send for CudaDriver {}
unsafe impl Sync for CudaDriver {}

fn driver_error(what: &str, e: cu::DriverError) -> Error {
    Error::Device(format!("cuda: {what}: {e:?}"))
}

fn blas_error(what: &str, e: lt::CublasError) -> Error {
    Error::Device(format!("cuBLASLt: {what}: {e:?}"))
}

impl CudaDriver {
    /// Opens GPU 0 and loads every kernel module. Fails, never panics, when the build has no
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
        let device = cu::device::get(0).map_err(|e| driver_error("device 0", e))?;
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
            unsafe { cu::malloc_sync(GEMM_WORKSPACE_BYTES) }.map_err(|e| driver_error("GEMM workspace", e))?;
        Ok(CudaDriver { context, kernels: Mutex::new(kernels), blas, workspace, device_name, hopper })
    }

    /// Makes the context current on the calling thread (CUDA contexts are per thread).
    fn bind(&self) -> Result<()> {
        // SAFETY: the primary context stays retained for the driver's lifetime.
        unsafe { cu::ctx::set_current(self.context) }.map_err(|e| driver_error("set context", e))
    }
}

impl Driver for CudaDriver {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn has_wgmma(&self) -> bool {
        self.hopper
    }

    fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
        self.bind()?;
        // SAFETY: the context is current; every use of the memory is on the same (default)
        // stream; pool allocations are aligned to at least 256 bytes.
        unsafe { cu::malloc_async(cu::stream::null(), bytes.max(1)) }
            .map_err(|e| driver_error(&format!("allocate {bytes} bytes"), e))
    }

    unsafe fn free(&self, ptr: DevicePtr, _bytes: usize) {
        if self.bind().is_ok() {
            // SAFETY: the caller passes a live allocation of this driver. A failure here means
            // the context is already broken; the error surfaces at the next checked call.
            let _ = unsafe { cu::free_async(ptr, cu::stream::null()) };
        }
    }

    fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: dst holds at least src.len() bytes.
        unsafe { cu::memcpy_htod_sync(dst, src) }.map_err(|e| driver_error("copy to the GPU", e))
    }

    fn download(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        self.bind()?;
        // SAFETY: src holds at least dst.len() bytes.
        unsafe { cu::memcpy_dtoh_sync(dst, src) }.map_err(|e| driver_error("copy from the GPU", e))
    }

    fn copy(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: both hold at least `bytes`.
        unsafe { cu::memcpy_dtod_sync(dst, src, bytes) }.map_err(|e| driver_error("copy on the GPU", e))
    }

    fn zero(&self, dst: DevicePtr, bytes: usize) -> Result<()> {
        self.bind()?;
        // SAFETY: dst holds at least `bytes`.
        unsafe { cu::memset_d8_sync(dst, 0, bytes) }.map_err(|e| driver_error("zero GPU memory", e))
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
            cu::launch_kernel(
                function,
                (gx, gy, gz),
                (bx, by, bz),
                config.shared_bytes,
                cu::stream::null(),
                params.pointers(),
            )
        }
        .map_err(|e| driver_error(&format!("launch {kernel} {config:?}"), e))
    }

    fn gemm(&self, spec: GemmSpec, a: DevicePtr, b: DevicePtr, bias: Option<DevicePtr>, c: DevicePtr) -> Result<()> {
        self.bind()?;
        // SAFETY: the pointers hold the operands the spec describes (the backend allocates them
        // from the same shapes); descriptors are destroyed before returning.
        unsafe { row_major_gemm(self, spec, a, b, bias, c) }
    }

    fn synchronize(&self) -> Result<()> {
        self.bind()?;
        cu::ctx::synchronize().map_err(|e| driver_error("a kernel failed (synchronize)", e))
    }
}

/// `C = op(A) op(B) (+ bias)` for row-major operands, as cuBLASLt's column-major
/// `C^T = op(B)^T op(A)^T`: B is cuBLASLt's first operand, A its second, and a row-major matrix is
/// its own transpose in column-major order, so the transposes carry over unchanged.
unsafe fn row_major_gemm(
    driver: &CudaDriver,
    spec: GemmSpec,
    a: DevicePtr,
    b: DevicePtr,
    bias: Option<DevicePtr>,
    c: DevicePtr,
) -> Result<()> {
    use lt_sys::cublasLtMatmulDescAttributes_t as Desc;
    use lt_sys::cublasLtMatrixLayoutAttribute_t as Layout;
    let GemmSpec { batch, m, n, k, trans_a, trans_b, dtype } = spec;
    let data_type = match dtype {
        GemmType::F32 => lt_sys::cudaDataType::CUDA_R_32F,
        GemmType::BF16 => lt_sys::cudaDataType::CUDA_R_16BF,
    };
    // cublasOperation_t as the int32 the TRANSA/TRANSB attributes hold: CUBLAS_OP_N = 0, CUBLAS_OP_T = 1.
    let op = |t: bool| -> i32 { i32::from(t) };
    // Stored (column-major) shapes: B is n x k (k x n when trans_b), A is k x m (m x k when trans_a).
    let (b_rows, b_cols) = if trans_b { (k, n) } else { (n, k) };
    let (a_rows, a_cols) = if trans_a { (m, k) } else { (k, m) };
    let layout = |rows: usize, cols: usize| -> Result<lt_sys::cublasLtMatrixLayout_t> {
        let l = lt::create_matrix_layout(data_type, rows as u64, cols as u64, rows as i64)
            .map_err(|e| blas_error("matrix layout", e))?;
        let count = batch as i32;
        let stride = (rows * cols) as i64;
        // SAFETY: attribute buffers of the documented types (int32 count, int64 stride).
        unsafe {
            lt::set_matrix_layout_attribute(
                l,
                Layout::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
                (&count as *const i32).cast(),
                4,
            )
            .and_then(|_| {
                lt::set_matrix_layout_attribute(
                    l,
                    Layout::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
                    (&stride as *const i64).cast(),
                    8,
                )
            })
            .map_err(|e| blas_error("batch layout", e))?;
        }
        Ok(l)
    };
    let first = layout(b_rows, b_cols)?;
    let second = layout(a_rows, a_cols)?;
    let out = layout(n, m)?;
    let desc =
        lt::create_matmul_desc(lt_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, lt_sys::cudaDataType::CUDA_R_32F)
            .map_err(|e| blas_error("matmul descriptor", e))?;
    let (op_first, op_second) = (op(trans_b), op(trans_a));
    let set = |attr: Desc, value: *const c_void, size: usize| {
        // SAFETY: each call passes a buffer of the attribute's documented type and size.
        unsafe { lt::set_matmul_desc_attribute(desc, attr, value, size) }.map_err(|e| blas_error("descriptor", e))
    };
    set(Desc::CUBLASLT_MATMUL_DESC_TRANSA, (&op_first as *const i32).cast(), 4)?;
    set(Desc::CUBLASLT_MATMUL_DESC_TRANSB, (&op_second as *const i32).cast(), 4)?;
    if let Some(bias) = bias {
        let epilogue = lt_sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS;
        set(Desc::CUBLASLT_MATMUL_DESC_EPILOGUE, (&epilogue as *const lt_sys::cublasLtEpilogue_t).cast(), 4)?;
        set(Desc::CUBLASLT_MATMUL_DESC_BIAS_POINTER, (&bias as *const DevicePtr).cast(), 8)?;
    }
    let pref = lt::create_matmul_pref().map_err(|e| blas_error("preference", e))?;
    let workspace_bytes = GEMM_WORKSPACE_BYTES as u64;
    // SAFETY: a u64 byte count, as the attribute documents.
    unsafe {
        lt::set_matmul_pref_attribute(
            pref,
            lt_sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
            (&workspace_bytes as *const u64).cast(),
            8,
        )
    }
    .map_err(|e| blas_error("workspace preference", e))?;
    let (alpha, beta) = (1.0f32, 0.0f32);
    // SAFETY: descriptors built above; operand pointers per the caller's contract.
    let result = unsafe {
        lt::get_matmul_algo_heuristic(driver.blas, desc, first, second, out, out, pref)
            .map_err(|e| blas_error(&format!("no algorithm for {spec:?}"), e))
            .and_then(|heuristic| {
                lt::matmul(
                    driver.blas,
                    desc,
                    (&alpha as *const f32).cast(),
                    (&beta as *const f32).cast(),
                    b as *const c_void,
                    first,
                    a as *const c_void,
                    second,
                    c as *const c_void,
                    out,
                    c as *mut c_void,
                    out,
                    &heuristic.algo,
                    driver.workspace as *mut c_void,
                    GEMM_WORKSPACE_BYTES,
                    std::ptr::null_mut(),
                )
                .map_err(|e| blas_error(&format!("matmul {spec:?}"), e))
            })
    };
    // SAFETY: each descriptor was created above and is destroyed once.
    unsafe {
        let _ = lt::destroy_matmul_pref(pref);
        let _ = lt::destroy_matmul_desc(desc);
        for l in [first, second, out] {
            let _ = lt::destroy_matrix_layout(l);
        }
    }
    result
}
