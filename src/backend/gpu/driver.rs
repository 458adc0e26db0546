//! What the GPU backend needs from a device: memory, copies, kernel launches and GEMM. Two
//! implementations: the CUDA driver (cudarc) and the SIMT emulator, which runs the same kernels
//! on the host, so everything above this trait is tested without a GPU.

use std::ffi::c_void;

use crate::error::{Error, Result};

/// An address in the driver's memory (a CUDA device pointer, or a host address for the
/// emulator). Plain integers keep the launch boundary identical to `cuLaunchKernel`'s.
pub type DevicePtr = u64;

/// One kernel argument, passed by value as the kernel's parameter of the same width.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KernelArg {
    Ptr(DevicePtr),
    I32(i32),
    U32(u32),
    F32(f32),
}

impl KernelArg {
    /// The argument's bytes, as the kernel's parameter holds them.
    pub fn bytes(&self) -> Vec<u8> {
        match self {
            KernelArg::Ptr(p) => p.to_ne_bytes().to_vec(),
            KernelArg::I32(v) => v.to_ne_bytes().to_vec(),
            KernelArg::U32(v) => v.to_ne_bytes().to_vec(),
            KernelArg::F32(v) => v.to_ne_bytes().to_vec(),
        }
    }
}

/// A launch's arguments as both drivers hand them over: each value in a buffer of its own, and
/// the array of pointers to those buffers (`cuLaunchKernel`'s `void**`, which the emulator's
/// launch takes too).
pub struct LaunchArgs {
    /// The bytes `pointers` points into. Moving this Vec leaves the inner buffers in place, so
    /// the pointers stay valid for as long as `self` lives.
    values: Vec<Vec<u8>>,
    pointers: Vec<*mut c_void>,
}

impl LaunchArgs {
    pub fn new(args: &[KernelArg]) -> Self {
        let mut values: Vec<Vec<u8>> = args.iter().map(KernelArg::bytes).collect();
        let pointers = values.iter_mut().map(|v| v.as_mut_ptr().cast()).collect();
        LaunchArgs { values, pointers }
    }

    /// Each argument's size in bytes, in order.
    pub fn sizes(&self) -> Vec<usize> {
        self.values.iter().map(Vec::len).collect()
    }

    /// One pointer per argument, valid while `self` lives.
    pub fn pointers(&mut self) -> &mut [*mut c_void] {
        &mut self.pointers
    }
}

/// Grid and block sizes and dynamic shared memory of one launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchConfig {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub shared_bytes: u32,
}

impl LaunchConfig {
    /// A one-dimensional grid of `blocks` blocks of `threads` threads.
    pub fn linear(blocks: u32, threads: u32, shared_bytes: u32) -> Self {
        LaunchConfig { grid: [blocks, 1, 1], block: [threads, 1, 1], shared_bytes }
    }
}

/// Element type of a GEMM operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GemmType {
    F32,
    BF16,
}

impl GemmType {
    pub fn name(self) -> &'static str {
        match self {
            GemmType::F32 => "f32",
            GemmType::BF16 => "bf16",
        }
    }

    /// Bytes of one element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            GemmType::F32 => 4,
            GemmType::BF16 => 2,
        }
    }
}

/// `c[i] = op(a[i]) @ op(b[i]) (+ bias)` for every batch entry i, each matrix row-major and
/// contiguous; accumulation in fp32 and `c` of the same type as the inputs. Entry i of an
/// operand starts `batch_strides` elements after entry i - 1. Ordered (field by field) so that
/// counts, and cuBLASLt's plans, can be kept per spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct GemmSpec {
    pub dtype: GemmType,
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    /// Elements from one batch entry of a, b and c to the next: a matrix's size when the
    /// entries lie back to back ([`GemmSpec::new`]), 0 for an operand every entry shares (a
    /// weight applied to each sample, [`GemmSpec::with_shared_a`]). The entries of c never
    /// overlap.
    pub batch_strides: [usize; 3],
}

impl GemmSpec {
    /// `batch` products of `op(a)` (m x k) and `op(b)` (k x n), the entries of every operand
    /// back to back.
    pub fn new(dtype: GemmType, batch: usize, mnk: (usize, usize, usize), trans: (bool, bool)) -> Self {
        let ((m, n, k), (trans_a, trans_b)) = (mnk, trans);
        GemmSpec { dtype, batch, m, n, k, trans_a, trans_b, batch_strides: [m * k, k * n, m * n] }
    }

    /// The same `a` for every batch entry.
    pub fn with_shared_a(self) -> Self {
        let [_, b, c] = self.batch_strides;
        GemmSpec { batch_strides: [0, b, c], ..self }
    }

    /// Elements of one matrix of a, b and c.
    pub fn matrix_elements(&self) -> [usize; 3] {
        [self.m * self.k, self.k * self.n, self.m * self.n]
    }

    /// Distinct elements of a, b and c over the whole batch: a shared operand's once. Entries
    /// closer than their size overlap into one contiguous run; farther apart, none overlap.
    pub fn distinct_elements(&self) -> [usize; 3] {
        let (strides, sizes) = (self.batch_strides, self.matrix_elements());
        std::array::from_fn(|i| match self.batch {
            0 => 0,
            b => (b * sizes[i]).min((b - 1) * strides[i] + sizes[i]),
        })
    }

    /// Refuses batch entries of c that overlap: products would write the same elements.
    pub fn check(&self) -> Result<()> {
        let c = self.m * self.n;
        if self.batch > 1 && c > 0 && self.batch_strides[2] < c {
            return Err(Error::invalid(
                "gemm",
                format!("output entries of {c} elements {} apart overlap", self.batch_strides[2]),
            ));
        }
        Ok(())
    }
}

/// What a GEMM does besides `c = op(a) @ op(b)`, with the vector it reads or writes (of c's
/// type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmEpilogue {
    None,
    /// Adds `bias` ([n]) to every row of c.
    Bias(DevicePtr),
    /// Also writes the sums of op(a)'s rows ([m], a reduction over k) into `bias_grad`: with c
    /// = dy^T x a linear layer's weight gradient, the sums are its bias gradient, taken inside
    /// the product instead of by another pass over dy (cuBLASLt's BGRADB epilogue, B being its
    /// name for our a). A single product only (batch 1).
    BiasGrad(DevicePtr),
}

/// A [`GemmEpilogue`] without its pointer: what a GEMM's plan depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EpilogueKind {
    None,
    Bias,
    BiasGrad,
}

impl GemmEpilogue {
    pub fn kind(self) -> EpilogueKind {
        match self {
            GemmEpilogue::None => EpilogueKind::None,
            GemmEpilogue::Bias(_) => EpilogueKind::Bias,
            GemmEpilogue::BiasGrad(_) => EpilogueKind::BiasGrad,
        }
    }

    /// Refuses a bias gradient over a batch of products, which would sum across them.
    pub fn check(self, spec: &GemmSpec) -> Result<()> {
        match self {
            GemmEpilogue::BiasGrad(_) if spec.batch != 1 => Err(Error::invalid(
                "gemm",
                format!("a bias gradient epilogue takes a single product, not a batch of {}", spec.batch),
            )),
            _ => Ok(()),
        }
    }
}

/// A captured graph of device work, as the driver that captured it names it.
pub type GraphId = u64;

pub trait Driver: Send + Sync {
    fn name(&self) -> &'static str;
    /// The device in words, as its vendor names it (the emulator names itself).
    fn device_name(&self) -> String {
        self.name().to_string()
    }
    /// Whether kernels built on wgmma (kernels/wgmma.cuh) run here: the emulator models it; a GPU
    /// needs compute capability 9.0, the one the sm_90a images run on.
    fn has_wgmma(&self) -> bool;
    /// The raw CUDA stream all work goes on, for a library that queues its own work there in
    /// order with ours (NCCL's collectives); None on the emulator.
    fn raw_stream(&self) -> Option<usize> {
        None
    }
    /// Device memory still free, in bytes, where the device has its own (a GPU); None where
    /// device memory is host memory (the emulator), which the host's checks cover.
    fn free_memory(&self) -> Result<Option<u64>> {
        Ok(None)
    }
    /// `bytes` of uninitialised memory (at least 256-byte aligned).
    fn alloc(&self, bytes: usize) -> Result<DevicePtr>;
    /// Returns memory from `alloc`, with the same size.
    ///
    /// # Safety
    /// `ptr` came from `alloc(bytes)` of this driver and nothing uses it afterwards.
    unsafe fn free(&self, ptr: DevicePtr, bytes: usize);
    /// A block from `alloc` is handed out (again) for `bytes` of new contents, at most its
    /// size: the emulator checks accesses against that extent and as uninitialised. Nothing
    /// to do on a GPU.
    fn reuse(&self, _ptr: DevicePtr, _bytes: usize) {}
    /// A block goes back into the caching allocator: nothing may touch it until it is reused
    /// (the emulator flags any access). Nothing to do on a GPU.
    fn retire(&self, _ptr: DevicePtr) {}
    fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<()>;
    fn download(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()>;
    fn copy(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<()>;
    fn zero(&self, dst: DevicePtr, bytes: usize) -> Result<()>;
    /// Launches `kernel` (an entry point of one of the built modules) and reports launch errors;
    /// kernels run in launch order.
    fn launch(&self, kernel: &str, config: LaunchConfig, args: &[KernelArg]) -> Result<()>;
    fn gemm(&self, spec: GemmSpec, a: DevicePtr, b: DevicePtr, epilogue: GemmEpilogue, c: DevicePtr) -> Result<()>;
    /// Whether [`Self::gemm`] takes [`GemmEpilogue::BiasGrad`] for `spec`: cuBLASLt has the
    /// epilogue for some types and layouts only, and says so by finding no algorithm.
    fn has_bias_grad_epilogue(&self, spec: GemmSpec) -> bool;
    /// Waits for every launched kernel and reports asynchronous errors.
    fn synchronize(&self) -> Result<()>;

    /// From now until [`Self::end_capture`], the calling thread's launches, GEMMs, copies,
    /// memsets and uploads are recorded into a graph instead of run (CUDA's stream capture).
    /// An upload's bytes are copied when it is recorded: a replay writes those same bytes
    /// again, so an upload inside a capture is a constant of the graph. Memory allocated while
    /// capturing is allocated at once, not by the graph. Downloading or synchronising while
    /// capturing is an error; so is a second capture.
    fn begin_capture(&self) -> Result<()>;
    /// Ends the calling thread's capture and makes its graph, ready to launch.
    fn end_capture(&self) -> Result<GraphId>;
    /// Queues the whole graph's work, in the order it was captured, as one launch.
    fn launch_graph(&self, graph: GraphId) -> Result<()>;
    /// Forgets a graph once the work queued before is done with it.
    fn destroy_graph(&self, graph: GraphId);
}
