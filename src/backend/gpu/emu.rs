//! The emulator driver: "device" memory is host memory, kernels are the host build of
//! `kernels/*.cu` run by the SIMT emulator (`kernels/emu/`), GEMMs are the CPU reference's.

use std::alloc::Layout;
use std::ffi::{CStr, CString, c_char, c_int, c_void};

use gemm::Parallelism;
use half::bf16;

use super::driver::{DevicePtr, Driver, GemmSpec, GemmType, KernelArg, LaunchArgs, LaunchConfig};
use crate::backend::cpu::matmul::gemm_into;
use crate::error::{Error, Result};

unsafe extern "C" {
    fn msclip_emu_launch(
        name: *const c_char,
        grid: *const u32,
        block: *const u32,
        smem_bytes: usize,
        args: *mut *mut c_void,
        arg_sizes: *const usize,
        n_args: c_int,
        error: *mut c_char,
        error_len: usize,
    ) -> c_int;
    fn msclip_emu_kernel_name(i: c_int, name: *mut *const c_char) -> c_int;
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

    fn has_wgmma(&self) -> bool {
        true
    }

    fn alloc(&self, bytes: usize) -> Result<DevicePtr> {
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout(bytes)) };
        if ptr.is_null() {
            return Err(Error::Device(format!("emu: cannot allocate {bytes} bytes")));
        }
        Ok(ptr as DevicePtr)
    }

    unsafe fn free(&self, ptr: DevicePtr, bytes: usize) {
        // SAFETY: the caller guarantees ptr came from alloc(bytes), i.e. from this layout.
        unsafe { std::alloc::dealloc(ptr as *mut u8, layout(bytes)) }
    }

    fn upload(&self, dst: DevicePtr, src: &[u8]) -> Result<()> {
        // SAFETY: dst is an allocation of at least src.len() bytes (the backend's invariant).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }

    fn download(&self, src: DevicePtr, dst: &mut [u8]) -> Result<()> {
        // SAFETY: src is an allocation of at least dst.len() bytes.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn copy(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> Result<()> {
        // SAFETY: both are allocations of at least `bytes`; `copy` allows overlap.
        unsafe { std::ptr::copy(src as *const u8, dst as *mut u8, bytes) };
        Ok(())
    }

    fn zero(&self, dst: DevicePtr, bytes: usize) -> Result<()> {
        // SAFETY: dst is an allocation of at least `bytes`.
        unsafe { std::ptr::write_bytes(dst as *mut u8, 0, bytes) };
        Ok(())
    }

    fn launch(&self, kernel: &str, config: LaunchConfig, args: &[KernelArg]) -> Result<()> {
        let name = CString::new(kernel).map_err(|_| Error::Device(format!("kernel name {kernel:?} has a NUL")))?;
        let mut marshalled = LaunchArgs::new(args);
        let sizes = marshalled.sizes();
        let mut error = vec![0 as c_char; 512];
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
                error.as_mut_ptr(),
                error.len(),
            )
        };
        if status != 0 {
            // SAFETY: the runtime NUL-terminates the message (snprintf).
            let message = unsafe { CStr::from_ptr(error.as_ptr()) }.to_string_lossy().into_owned();
            return Err(Error::Device(format!("emu: {message}")));
        }
        Ok(())
    }

    fn gemm(&self, spec: GemmSpec, a: DevicePtr, b: DevicePtr, bias: Option<DevicePtr>, c: DevicePtr) -> Result<()> {
        let GemmSpec { batch, m, n, k, .. } = spec;
        let a = read_as_f32(spec.dtype, a, batch * m * k);
        let b = read_as_f32(spec.dtype, b, batch * k * n);
        let mut out = vec![0f32; batch * m * n];
        if let Some(bias) = bias {
            let bias = read_as_f32(spec.dtype, bias, n);
            for row in out.chunks_mut(n) {
                row.copy_from_slice(&bias);
            }
        }
        let threads = rayon::current_num_threads();
        let par = if threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
        for (i, dst) in out.chunks_mut(m * n).enumerate() {
            let lhs = &a[i * m * k..(i + 1) * m * k];
            let rhs = &b[i * k * n..(i + 1) * k * n];
            gemm_into(dst, lhs, rhs, (m, n, k), spec.trans_a, spec.trans_b, bias.is_some(), par);
        }
        write_from_f32(spec.dtype, c, &out);
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }
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
    unsafe {
        match dtype {
            GemmType::F32 => std::slice::from_raw_parts_mut(ptr as *mut f32, values.len()).copy_from_slice(values),
            GemmType::BF16 => {
                let dst = std::slice::from_raw_parts_mut(ptr as *mut bf16, values.len());
                for (d, v) in dst.iter_mut().zip(values) {
                    *d = bf16::from_f32(*v);
                }
            }
        }
    }
}
