//! The driver counters (issue 12) on the real GPU backend: short call sequences whose every
//! driver call is known give exactly those counts, on the emulator and, when present, the GPU.

mod common;

use std::collections::BTreeMap;

use common::gpu::gpu_devices;
use msclip::backend::gpu::counters::{Calls, DriverCounters, measure};
use msclip::backend::gpu::{self, GemmSpec, GemmType, GpuStorage};
use msclip::backend::{self, UnaryOp};
use msclip::{DType, Device, Tensor};

/// A 2 x 3 f32 tensor (24 bytes) on `device`.
fn on_device(device: Device) -> Tensor {
    Tensor::from_f64(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [2, 3], DType::F32).unwrap().to_device(device).unwrap()
}

/// The counts without the buffer requests, which the caching allocator serves from the driver
/// or from its cache depending on what tests on other threads gave back before.
fn without_buffers(counts: &DriverCounters) -> DriverCounters {
    assert_eq!(counts.frees, Calls::default(), "the cache frees nothing");
    DriverCounters { allocations: Calls::default(), cached_allocations: Calls::default(), ..counts.clone() }
}

#[test]
fn an_upload_a_launch_and_a_download_count_as_exactly_that() {
    for device in gpu_devices() {
        let (values, counts) = measure(|| {
            let x = on_device(device);
            let y = backend::get(device).unary(UnaryOp::Scale(2.0), &x).unwrap();
            y.to_f64_vec()
        });
        assert_eq!(values, [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]);
        let want = DriverCounters {
            launches_by_kernel: BTreeMap::from([("unary_f32".to_string(), 1)]),
            uploads: Calls { count: 1, bytes: 24 },
            downloads: Calls { count: 1, bytes: 24 },
            ..DriverCounters::new()
        };
        assert_eq!(without_buffers(&counts), want, "{device}");
        assert_eq!(counts.buffer_requests(), 2, "{device}: the input and the output");
        assert_eq!((counts.launches(), counts.distinct_kernels(), counts.host_syncs()), (1, 1, 1), "{device}");
    }
}

#[test]
fn gemms_are_counted_by_spec_and_item_is_a_host_sync() {
    for device in gpu_devices() {
        let (_, counts) = measure(|| {
            let a = on_device(device); // [2, 3]
            let b = a.reshape([3, 2]).unwrap();
            let product = a.matmul(&b).unwrap(); // [2, 2]
            product.sum_all().unwrap().item().unwrap()
        });
        let spec = GemmSpec::new(GemmType::F32, 1, (2, 2, 3), (false, false));
        assert_eq!(counts.gemms_by_spec, BTreeMap::from([(spec, 1)]), "{device}");
        assert_eq!(counts.uploads.count, 1, "{device}");
        assert_eq!(counts.downloads, Calls { count: 1, bytes: 4 }, "{device}: item() reads one f32");
        assert!(counts.launches() >= 1, "{device}: the sum is a kernel");
    }
}

#[test]
fn copies_memsets_and_synchronize_are_counted_and_do_not_wait_except_synchronize() {
    for device in gpu_devices() {
        let ((), counts) = measure(|| {
            let zeros = GpuStorage::zeros(device, DType::F32, 10).unwrap();
            let _copy = zeros.clone();
            gpu::driver(device).unwrap().synchronize().unwrap();
        });
        let want = DriverCounters {
            device_copies: Calls { count: 1, bytes: 40 },
            memsets: Calls { count: 1, bytes: 40 },
            synchronizes: 1,
            ..DriverCounters::new()
        };
        assert_eq!(without_buffers(&counts), want, "{device}");
        assert_eq!(counts.buffer_requests(), 2, "{device}");
        assert_eq!(counts.host_syncs(), 1, "{device}");
    }
}

#[test]
fn calls_on_another_thread_are_not_this_threads() {
    let ((), counts) = measure(|| {
        std::thread::spawn(|| on_device(Device::Emu).to_f64_vec()).join().unwrap();
    });
    assert_eq!(counts, DriverCounters::new());
}
