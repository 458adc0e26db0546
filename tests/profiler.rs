//! The emulator's profiler on performance twins whose counters are known exactly
//! (kernels/selftest.cu): sectors per request of coalesced and strided loads, and shared-memory
//! wavefronts of a transpose with and without padding.

use msclip::backend::gpu::GpuBackend;
use msclip::backend::gpu::buffer::Scratch;
use msclip::backend::gpu::emu::{EmuDriver, Instrumentation, KernelCounters, Schedule, instrument, take_profiles};
use msclip::backend::gpu::kernel_stats::{Grouping, KernelStats};
use msclip::backend::gpu::{Driver, KernelArg, LaunchConfig};
use msclip::backend::{Backend, InfoNceShard};
use msclip::{DType, Device, Rng, Tensor};

mod common;

use common::gpu::{on, randn_as};

/// The counters of one profiled launch.
fn profile(kernel: &str, config: LaunchConfig, args: &[KernelArg]) -> KernelCounters {
    instrument(Instrumentation::Profiler, Schedule::Forward, || {
        take_profiles();
        EmuDriver.launch(kernel, config, args).unwrap_or_else(|e| panic!("{kernel}: {e}"));
        let profiles = take_profiles();
        assert_eq!(profiles.len(), 1, "{kernel}: one launch profiled");
        assert_eq!(profiles[0].kernel, kernel);
        profiles[0].counters
    })
}

fn floats(n: usize) -> Scratch {
    Scratch::from_slice(Device::Emu, &(0..n).map(|i| i as f32).collect::<Vec<_>>()).unwrap()
}

#[test]
fn coalesced_loads_take_4_sectors_per_request_and_strided_ones_32() {
    let n = 4096;
    let (input, out) = (floats(n), floats(n));
    for (stride, sectors_per_request) in [(1, 4), (8, 32)] {
        let args =
            [KernelArg::Ptr(input.ptr()), KernelArg::Ptr(out.ptr()), KernelArg::I32(n as i32), KernelArg::I32(stride)];
        let c = profile("selftest_strided_copy", LaunchConfig::linear(16, 256, 0), &args);
        assert_eq!(c.global_load_requests, (n / 32) as u64, "stride {stride}");
        assert_eq!(c.global_load_sectors, (n / 32 * sectors_per_request) as u64, "stride {stride}");
        assert_eq!(c.global_store_sectors, c.global_store_requests * 4, "stride {stride}: stores stay coalesced");
        assert_eq!(c.global_load_bytes, (n * 4) as u64);
        assert_eq!(c.unique_bytes_written, (n * 4) as u64);
        // Stride 8 reads every 8th float only (the index wraps onto the same ones).
        assert_eq!(c.unique_bytes_read, (n * 4 / stride as usize) as u64, "stride {stride}");
    }
}

#[test]
fn an_unpadded_transpose_has_32_way_bank_conflicts_and_a_padded_one_none() {
    let (input, out) = (floats(1024), floats(1024));
    let config = LaunchConfig { grid: [1, 1, 1], block: [32, 32, 1], shared_bytes: 0 };
    let args = [KernelArg::Ptr(input.ptr()), KernelArg::Ptr(out.ptr())];
    for (kernel, wavefronts_per_load) in [("selftest_transpose_unpadded", 32), ("selftest_transpose_padded", 1)] {
        let c = profile(kernel, config, &args);
        assert_eq!(c.shared_store_requests, 32, "{kernel}");
        assert_eq!(c.shared_store_wavefronts, 32, "{kernel}: row stores are conflict-free");
        assert_eq!(c.shared_load_requests, 32, "{kernel}");
        assert_eq!(c.shared_load_wavefronts, 32 * wavefronts_per_load, "{kernel}");
        assert_eq!(c.shared_load_ideal_wavefronts, 32, "{kernel}: one wavefront per load without conflicts");
        assert_eq!(c.global_load_sectors, 32 * 4, "{kernel}");
    }
}

#[test]
fn a_broadcast_load_fetches_one_sector_and_uses_each_byte_once() {
    let n = 1024;
    let (input, out) = (floats(n), floats(n));
    let args = [KernelArg::Ptr(input.ptr()), KernelArg::Ptr(out.ptr()), KernelArg::I32(n as i32), KernelArg::I32(0)];
    let c = profile("selftest_strided_copy", LaunchConfig::linear(4, 256, 0), &args);
    // Every lane reads in[0]: one sector per request, of which the warp uses 4 bytes.
    assert_eq!(c.global_load_requests, (n / 32) as u64);
    assert_eq!(c.global_load_sectors, c.global_load_requests);
    assert_eq!(c.global_load_bytes, c.global_load_requests * 4);
    assert_eq!(c.unique_bytes_read, 4);
}

#[test]
fn a_vector_copy_counts_16_byte_loads_and_stores_of_16_sectors_per_request() {
    // copy_block_b16 assigns uint4 to uint4: the emulator's vector assignment reports the load
    // of the right-hand side as well as the store (emu.h).
    let units = 1024;
    let (input, out) = (floats(units * 4), floats(units * 4));
    let args = [
        KernelArg::Ptr(input.ptr()),
        KernelArg::I32(units as i32),
        KernelArg::Ptr(out.ptr()),
        KernelArg::I32(units as i32),
        KernelArg::I32(1),
        KernelArg::I32(units as i32),
    ];
    let c = profile("copy_block_b16", LaunchConfig::linear(4, 256, 0), &args);
    let requests = (units / 32) as u64;
    assert_eq!((c.global_load_requests, c.global_store_requests), (requests, requests));
    assert_eq!((c.global_load_sectors, c.global_store_sectors), (requests * 16, requests * 16));
    assert_eq!((c.global_load_bytes, c.global_store_bytes), ((units * 16) as u64, (units * 16) as u64));
    assert_eq!((c.unique_bytes_read, c.unique_bytes_written), ((units * 16) as u64, (units * 16) as u64));
}

#[test]
fn infonce_inner_loops_stay_within_two_way_bank_conflicts_on_every_path() {
    // 160 pairs of CLIP-width (512) embeddings, through the f32 SIMT kernels, bf16 on wgmma and
    // bf16 on mma.sync: shared-memory wavefronts over the conflict-free count (issue 12's goal).
    let (pairs, width) = (160, 512);
    let mut rng = Rng::new(7);
    let (img, txt) =
        (randn_as(&mut rng, &[pairs, width], 0.05, DType::F32), randn_as(&mut rng, &[pairs, width], 0.05, DType::F32));
    let paths = [
        ("f32", GpuBackend::new(Device::Emu), DType::F32),
        ("bf16 wgmma", GpuBackend::new(Device::Emu), DType::BF16),
        ("bf16 mma.sync", GpuBackend::without_wgmma(Device::Emu), DType::BF16),
    ];
    let mut over = Vec::new();
    for (label, be, dtype) in paths {
        let (img, txt) = (on(&img, Device::Emu, dtype), on(&txt, Device::Emu, dtype));
        let scale = on(&Tensor::scalar(2.0, DType::F32), Device::Emu, dtype);
        let dloss = on(&Tensor::scalar(1.0, DType::F32), Device::Emu, dtype);
        let profiles = instrument(Instrumentation::Profiler, Schedule::Forward, || {
            take_profiles();
            let out = be.infonce(InfoNceShard::whole(&img, &txt, &scale, None)).unwrap();
            be.infonce_backward(InfoNceShard::whole(&img, &txt, &scale, None), &out, &dloss).unwrap();
            take_profiles()
        });
        let rows = KernelStats::group(&profiles, Grouping::Kernel);
        let tiles: Vec<&KernelStats> = rows
            .iter()
            .filter(|r| r.kernel.starts_with("infonce_fwd") || r.kernel.starts_with("infonce_bwd"))
            .collect();
        assert_eq!(tiles.len(), 2, "{label}: {rows:?}");
        for row in tiles {
            let factor =
                row.bank_conflict_factor().unwrap_or_else(|| panic!("{label}: {} uses no shared memory", row.kernel));
            eprintln!("{label}: {} bank-conflict factor {factor:.3}", row.kernel);
            if factor > 2.0 {
                over.push(format!("{label}: {} at {factor:.2}-way bank conflicts", row.kernel));
            }
        }
    }
    assert!(over.is_empty(), "{over:?}");
}
