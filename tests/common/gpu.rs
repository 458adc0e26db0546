//! Helpers for kernel parity tests: the devices to run on, and inputs both backends see exactly.

use msclip::backend::gpu::emu::{self, Instrumentation};
use msclip::backend::{self, Backend, gpu};
use msclip::{DType, Device, Rng, Tensor};

/// The GPU devices a kernel parity test runs on: the emulator always, with this test's launches
/// under its sanitizer (so every kernel test also proves its kernels free of races, out-of-bounds
/// accesses, unwritten reads and barrier misuse at the shapes it uses); a real GPU when the CUDA
/// driver and a device are present (otherwise a line says the GPU half was skipped).
pub fn gpu_devices() -> Vec<Device> {
    emu::instrument_this_thread_by_default(Instrumentation::Sanitizer);
    model_devices()
}

/// Runs `f` (a kernel test at a scale the sanitizer would take minutes over) on the plain
/// emulator; its kernels are checked by the same test file at smaller shapes.
pub fn plain_emulator<R>(f: impl FnOnce() -> R) -> R {
    emu::instrument(Instrumentation::Off, emu::Schedule::Forward, f)
}

/// The devices of a model-level test, which runs the plain (uninstrumented) emulator: whole
/// training steps under the sanitizer would take minutes.
///
/// A kernel test whose shape is too large for the sanitizer wraps itself in [`plain_emulator`].
pub fn model_devices() -> Vec<Device> {
    // scripts/gpu-session.sh sets this: there a missing GPU is a failure, not a skip, and the
    // emulator halves, which CI runs, are left out to spend the short lease on the GPU.
    let gpu_session = std::env::var_os("MSCLIP_REQUIRE_GPU").is_some();
    match gpu::driver(Device::Cuda) {
        Ok(_) if gpu_session => vec![Device::Cuda],
        Ok(_) => vec![Device::Emu, Device::Cuda],
        Err(e) if gpu_session => panic!("MSCLIP_REQUIRE_GPU is set: {e}"),
        Err(e) => {
            eprintln!("GPU parity skipped, no usable GPU: {e}");
            vec![Device::Emu]
        }
    }
}

/// The GPU backends a parity test of a tensor-core kernel runs, with a label each: every device's
/// default backend (wgmma where its driver has it: the emulator, a compute-capability 9.0 GPU)
/// and, for bf16, the same device with every product on mma.sync.
pub fn tensor_core_backends(dtype: DType) -> Vec<(Device, String, &'static dyn Backend)> {
    let mut all = Vec::new();
    for device in gpu_devices() {
        all.push((device, device.to_string(), backend::get(device)));
        if dtype == DType::BF16 {
            static EMU_MMA_ONLY: gpu::GpuBackend = gpu::GpuBackend::without_wgmma(Device::Emu);
            static CUDA_MMA_ONLY: gpu::GpuBackend = gpu::GpuBackend::without_wgmma(Device::Cuda);
            let mma_only: &'static dyn Backend = if device == Device::Cuda { &CUDA_MMA_ONLY } else { &EMU_MMA_ONLY };
            all.push((device, format!("{device} mma.sync"), mma_only));
        }
    }
    all
}

/// A seeded N(0, std^2) CPU tensor in f32 whose values are exactly representable in `dtype`, so
/// the CPU reference (f32) and a kernel (f32 or bf16) start from identical inputs.
pub fn randn_as(rng: &mut Rng, shape: &[usize], std: f64, dtype: DType) -> Tensor {
    let t = rng.normal_tensor(shape.to_vec(), std, DType::F32);
    if dtype == DType::BF16 { t.to_dtype(DType::BF16).unwrap().to_dtype(DType::F32).unwrap() } else { t }
}

/// `t` (a CPU f32 tensor) on `device` in `dtype`.
pub fn on(t: &Tensor, device: Device, dtype: DType) -> Tensor {
    t.to_dtype(dtype).unwrap().to_device(device).unwrap()
}

/// Relative tolerance of results computed in `dtype` with fp32 accumulation: a few units of the
/// format's last place (bf16 has 8 significant bits, f32 24).
pub fn rtol_of(dtype: DType) -> f64 {
    match dtype {
        DType::BF16 => 1.0 / 64.0,
        _ => 2e-5,
    }
}
