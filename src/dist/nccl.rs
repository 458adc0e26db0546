//! The collective of real ranks: NCCL on the GPU's stream, through cudarc's bindings (the
//! library is loaded at run time, so builds and CPU runs need no NCCL). One communicator per
//! process; rank 0 makes its id and the rendezvous hands it to the others. When a peer dies
//! mid-step NCCL waits on the stream forever; the watchdog (`super::watchdog`) then aborts the
//! communicator from its own thread ([`NcclRanks::abort_handle`]), which ends the wait.

use std::sync::{Arc, Mutex, PoisonError};

use cudarc::nccl::result::{self as nccl, NcclError, NcclStatus};
use cudarc::nccl::sys;

use super::side_stream::SideStream;
use super::world::WorldPlace;
use super::{Collective, PendingSum};
use crate::backend::gpu::{self, GpuStorage};
use crate::error::{Error, Result};
use crate::tensor::{DType, Device, Storage, Tensor};

/// The bytes of an `ncclUniqueId`.
const ID_BYTES: usize = 128;

fn nccl_error(what: &str, e: impl std::fmt::Debug) -> Error {
    Error::Device(format!("nccl: {what}: {e:?}"))
}

fn check_library() -> Result<()> {
    // SAFETY: only probes whether the shared library can be opened.
    if unsafe { sys::is_culib_present() } {
        Ok(())
    } else {
        Err(Error::Device(
            "NCCL (libnccl.so.2) was not found: data-parallel training needs it; install the nvidia-nccl wheel \
             PyTorch uses, or add NCCL's directory to LD_LIBRARY_PATH"
                .into(),
        ))
    }
}

/// A fresh id for a new communicator, made by rank 0 and sent to the others.
pub fn unique_id() -> Result<Vec<u8>> {
    check_library()?;
    let id = nccl::get_uniqueid().map_err(|e| nccl_error("unique id", e))?;
    Ok(id.internal.iter().map(|&c| c as u8).collect())
}

/// What cudarc's NCCL calls return.
type NcclResult = std::result::Result<NcclStatus, NcclError>;

/// A communicator and whether it was freed, which happens once: by `ncclCommDestroy` at a
/// normal end, or by `ncclCommAbort` when a peer was lost or this rank fails. Every call takes
/// the lock, so an abort from the watchdog's thread never frees the communicator under a call
/// (it comes while the main thread waits on the stream, after the call has returned).
struct Comm {
    raw: sys::ncclComm_t,
    freed: Mutex<bool>,
}

// SAFETY: a communicator may be used from any thread as long as calls do not overlap, and
// every call goes through `Comm::call`'s lock.
unsafe impl Send for Comm {}
// SAFETY: as above.
unsafe impl Sync for Comm {}

impl Comm {
    /// `f` on the communicator, unless it was freed.
    fn call(&self, what: &str, f: impl FnOnce(sys::ncclComm_t) -> NcclResult) -> Result<()> {
        let freed = self.freed.lock().unwrap_or_else(PoisonError::into_inner);
        if *freed {
            return Err(Error::Device(format!(
                "nccl {what}: the communicator was aborted or destroyed: a rank was lost (the watchdog's message \
                 above says which) or the run ended"
            )));
        }
        f(self.raw).map(drop).map_err(|e| nccl_error(what, e))
    }

    /// Frees the communicator by `free` (destroy or abort), unless it was freed already.
    fn free(&self, what: &str, free: unsafe fn(sys::ncclComm_t) -> NcclResult) -> Result<()> {
        let mut freed = self.freed.lock().unwrap_or_else(PoisonError::into_inner);
        if std::mem::replace(&mut *freed, true) {
            return Ok(());
        }
        // SAFETY: the communicator is live (not freed, checked under the lock that every call
        // holds) and no call uses it after this.
        unsafe { free(self.raw) }.map(drop).map_err(|e| nccl_error(what, e))
    }
}

/// This process's NCCL communicator, on the GPU device's one stream.
pub struct NcclRanks {
    comm: Arc<Comm>,
    rank: usize,
    world_size: usize,
    /// Where the gradient buckets' sums run beside the backward
    /// ([`Collective::start_all_reduce_sum`]); the other collectives run on the device's stream.
    side: Arc<SideStream>,
}

impl NcclRanks {
    /// Joins the communicator whose id rank 0 made (`unique_id`), as `place` says.
    pub fn join(place: &WorldPlace, id: &[u8]) -> Result<Self> {
        check_library()?;
        let id: [u8; ID_BYTES] = id
            .try_into()
            .map_err(|_| Error::invalid("nccl", format!("an id of {} bytes, not {ID_BYTES}", id.len())))?;
        // The device's context must be current on this thread before NCCL touches the GPU.
        gpu::driver(Device::Cuda)?;
        let unique = sys::ncclUniqueId { internal: id.map(|b| b as std::ffi::c_char) };
        let mut comm = std::ptr::null_mut();
        let (world, rank) = (place.world_size as i32, place.rank as i32);
        // SAFETY: `comm` receives the new communicator; every rank passes the same id and world.
        unsafe { nccl::comm_init_rank(&mut comm, world, unique, rank) }.map_err(|e| nccl_error("join", e))?;
        let comm = Arc::new(Comm { raw: comm, freed: Mutex::new(false) });
        let side = Arc::new(SideStream::new()?);
        Ok(NcclRanks { comm, rank: place.rank, world_size: place.world_size, side })
    }

    /// Frees the communicator at the normal end of a run. Every rank of this node must call it
    /// (NCCL makes it a collective of the node's ranks); no collective may follow.
    pub fn destroy(&self) -> Result<()> {
        self.comm.free("destroy", nccl::comm_destroy)
    }

    /// Aborts the communicator: a collective waiting on the stream returns, and later calls
    /// are errors. Unlike [`NcclRanks::destroy`] it waits for no other rank, so it is the way
    /// out of a run that failed.
    pub fn abort(&self) -> Result<()> {
        self.comm.free("abort", nccl::comm_abort)
    }

    /// [`NcclRanks::abort`] for another thread (the watchdog's), whatever became of `self`.
    pub fn abort_handle(&self) -> impl FnOnce() + Send + 'static {
        let comm = Arc::clone(&self.comm);
        move || {
            if let Err(e) = comm.free("abort", nccl::comm_abort) {
                eprintln!("{e}");
            }
        }
    }

    /// The device's stream, which every kernel goes on.
    fn main_stream(&self) -> Result<usize> {
        gpu::driver(Device::Cuda)?
            .raw_stream()
            .ok_or_else(|| Error::Device("nccl: the CUDA driver has no stream".into()))
    }

    fn stream(&self) -> Result<sys::cudaStream_t> {
        Ok(self.main_stream()? as sys::cudaStream_t)
    }

    /// A new tensor of `numel` elements on the GPU, uninitialised (the collective writes it).
    fn output(dims: Vec<usize>, dtype: DType) -> Result<(Tensor, *mut std::ffi::c_void)> {
        let numel = dims.iter().product();
        let storage = GpuStorage::uninit(Device::Cuda, dtype, numel)?;
        let ptr = storage.ptr() as *mut std::ffi::c_void;
        Ok((Tensor::from_storage(Storage::Gpu(storage), dims)?, ptr))
    }
}

fn input(op: &str, x: &Tensor) -> Result<(*const std::ffi::c_void, sys::ncclDataType_t)> {
    let Storage::Gpu(g) = x.storage() else {
        return Err(Error::Device(format!("nccl {op}: {x:?} is not on the GPU")));
    };
    let dtype = match x.dtype() {
        DType::F32 => sys::ncclDataType_t::ncclFloat32,
        DType::BF16 => sys::ncclDataType_t::ncclBfloat16,
        DType::F64 => sys::ncclDataType_t::ncclFloat64,
    };
    Ok((g.ptr() as *const std::ffi::c_void, dtype))
}

impl Collective for NcclRanks {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_gather(&self, x: &Tensor) -> Result<Tensor> {
        let (send, dtype) = input("all_gather", x)?;
        let mut dims = x.dims().to_vec();
        dims[0] *= self.world_size;
        let (out, recv) = Self::output(dims, x.dtype())?;
        let stream = self.stream()?;
        // SAFETY: both buffers live on this device and hold the counts given; the stream is the
        // device's, so the collective is ordered with the kernels around it.
        self.comm.call("all_gather", |comm| unsafe { nccl::all_gather(send, recv, x.numel(), dtype, comm, stream) })?;
        Ok(out)
    }

    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor> {
        let (send, dtype) = input("all_reduce", x)?;
        let (out, recv) = Self::output(x.dims().to_vec(), x.dtype())?;
        let sum = sys::ncclRedOp_t::ncclSum;
        let stream = self.stream()?;
        // SAFETY: as in all_gather.
        self.comm
            .call("all_reduce", |comm| unsafe { nccl::all_reduce(send, recv, x.numel(), dtype, sum, comm, stream) })?;
        Ok(out)
    }

    /// The sum on the side stream: it starts after the work queued so far on the device's
    /// stream (the gradients, the output's allocation) and runs beside what is queued there
    /// next; `finish` makes the device's stream wait for it, and only then lets `x` go, so its
    /// memory is not reused under the collective.
    fn start_all_reduce_sum(&self, x: Tensor) -> Result<PendingSum> {
        let (send, dtype) = input("all_reduce", &x)?;
        let (out, recv) = Self::output(x.dims().to_vec(), x.dtype())?;
        let sum = sys::ncclRedOp_t::ncclSum;
        let main = self.main_stream()?;
        self.side.wait_for(main)?;
        let stream = self.side.raw() as sys::cudaStream_t;
        // SAFETY: both buffers live on this device and hold the counts given; the side stream
        // waits for the work that wrote `x` and allocated `out`, and `x` lives until the device's
        // stream has waited for the collective (below).
        self.comm
            .call("all_reduce", |comm| unsafe { nccl::all_reduce(send, recv, x.numel(), dtype, sum, comm, stream) })?;
        let side = Arc::clone(&self.side);
        Ok(PendingSum::later(move || {
            side.join_into(main)?;
            drop(x);
            Ok(out)
        }))
    }

    fn reduce_scatter_sum(&self, x: &Tensor) -> Result<Tensor> {
        let (send, dtype) = input("reduce_scatter", x)?;
        let mut dims = x.dims().to_vec();
        if dims.first().is_none_or(|&rows| rows % self.world_size != 0) {
            return Err(Error::shape(
                "nccl reduce_scatter",
                format!("{} rows over {} ranks", x.shape(), self.world_size),
            ));
        }
        dims[0] /= self.world_size;
        let count = x.numel() / self.world_size;
        let (out, recv) = Self::output(dims, x.dtype())?;
        let sum = sys::ncclRedOp_t::ncclSum;
        let stream = self.stream()?;
        // SAFETY: as in all_gather.
        self.comm.call("reduce_scatter", |comm| unsafe {
            nccl::reduce_scatter(send, recv, count, dtype, sum, comm, stream)
        })?;
        Ok(out)
    }
}

impl Drop for NcclRanks {
    fn drop(&mut self) {
        let _ = self.destroy();
    }
}
