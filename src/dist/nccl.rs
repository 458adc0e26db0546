//! The collective of real ranks: NCCL on the GPU's stream, through cudarc's bindings (the
//! library is loaded at run time, so builds and CPU runs need no NCCL). One communicator per
//! process; rank 0 makes its id and the rendezvous hands it to the others.
//!
//! Not yet here (docs/scaling.md): a watchdog that aborts the communicator when a peer dies
//! mid-step (NCCL waits on the stream forever; torch's NCCL_TIMEOUT plays that role there).

use cudarc::nccl::result as nccl;
use cudarc::nccl::sys;

use super::Collective;
use super::world::WorldPlace;
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

/// This process's NCCL communicator, on the GPU device's one stream.
pub struct NcclRanks {
    comm: sys::ncclComm_t,
    rank: usize,
    world_size: usize,
}

// SAFETY: a communicator may be used from any thread as long as calls do not overlap; the
// training loop issues every collective from one thread at a time, in order.
unsafe impl Send for NcclRanks {}
// SAFETY: as above.
unsafe impl Sync for NcclRanks {}

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
        Ok(NcclRanks { comm, rank: place.rank, world_size: place.world_size })
    }

    fn stream(&self) -> Result<sys::cudaStream_t> {
        let stream = gpu::driver(Device::Cuda)?
            .raw_stream()
            .ok_or_else(|| Error::Device("nccl: the CUDA driver has no stream".into()))?;
        Ok(stream as sys::cudaStream_t)
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
        // SAFETY: both buffers live on this device and hold the counts given; the stream is the
        // device's, so the collective is ordered with the kernels around it.
        unsafe { nccl::all_gather(send, recv, x.numel(), dtype, self.comm, self.stream()?) }
            .map_err(|e| nccl_error("all_gather", e))?;
        Ok(out)
    }

    fn all_reduce_sum(&self, x: &Tensor) -> Result<Tensor> {
        let (send, dtype) = input("all_reduce", x)?;
        let (out, recv) = Self::output(x.dims().to_vec(), x.dtype())?;
        let sum = sys::ncclRedOp_t::ncclSum;
        // SAFETY: as in all_gather.
        unsafe { nccl::all_reduce(send, recv, x.numel(), dtype, sum, self.comm, self.stream()?) }
            .map_err(|e| nccl_error("all_reduce", e))?;
        Ok(out)
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
        // SAFETY: as in all_gather.
        unsafe { nccl::reduce_scatter(send, recv, count, dtype, sum, self.comm, self.stream()?) }
            .map_err(|e| nccl_error("reduce_scatter", e))?;
        Ok(out)
    }
}

impl Drop for NcclRanks {
    fn drop(&mut self) {
        // SAFETY: the communicator is this value's and nothing uses it afterwards.
        let _ = unsafe { nccl::comm_destroy(self.comm) };
    }
}
