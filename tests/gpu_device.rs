//! The GPU devices as a user meets them: moving tensors, copy-on-write, and the error a machine
//! without a usable GPU gives for `cuda`.

use msclip::backend::gpu;
use msclip::{DType, Device, Tensor};

#[test]
fn cuda_without_a_gpu_is_a_clear_error_not_a_panic() {
    match gpu::driver(Device::Cuda) {
        Ok(_) => eprintln!("a GPU is present: nothing to check here"),
        Err(e) => {
            let message = e.to_string();
            assert!(
                ["nvcc", "libcuda", "cuBLASLt", "no GPU", "cuInit"].iter().any(|k| message.contains(k)),
                "unhelpful error: {message}"
            );
            let err = Tensor::zeros([2], DType::F32).to_device(Device::Cuda).unwrap_err();
            assert_eq!(err.to_string(), e.to_string());
        }
    }
}

#[test]
fn tensors_round_trip_through_the_emulator_device() {
    let data = vec![1.5f32, -2.0, 3.25, 0.0, 7.0];
    let t = Tensor::from_vec(data.clone(), [5]).unwrap();
    let on_emu = t.to_device(Device::Emu).unwrap();
    assert_eq!(on_emu.device(), Device::Emu);
    assert!(on_emu.cpu_slice::<f32>().is_err(), "a GPU tensor has no host slice");
    let back = on_emu.to_device(Device::Cpu).unwrap();
    assert_eq!(back.cpu_slice::<f32>().unwrap(), &data[..]);
    for dtype in [DType::F32, DType::BF16] {
        let x = t.to_dtype(dtype).unwrap().to_device(Device::Emu).unwrap();
        assert_eq!(x.dtype(), dtype);
        assert_eq!(x.to_f64_vec(), t.to_dtype(dtype).unwrap().to_f64_vec());
    }
}

#[test]
fn writes_to_a_shared_gpu_tensor_copy_first() {
    let t = Tensor::from_vec(vec![1.0f32, 2.0, 3.0], [3]).unwrap().to_device(Device::Emu).unwrap();
    let alias = t.clone();
    let mut writer = t.clone();
    let before = match writer.storage() {
        msclip::tensor::Storage::Gpu(g) => g.ptr(),
        _ => unreachable!(),
    };
    let after = match writer.storage_mut() {
        msclip::tensor::Storage::Gpu(g) => g.ptr(),
        _ => unreachable!(),
    };
    assert_ne!(before, after, "copy-on-write must move the writer to its own allocation");
    assert_eq!(alias.to_f64_vec(), vec![1.0, 2.0, 3.0]);
    assert_eq!(writer.to_f64_vec(), vec![1.0, 2.0, 3.0]);
}
