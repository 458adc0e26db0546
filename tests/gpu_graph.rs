//! Graph capture (issue 13): work captured once and launched again does what the captured calls
//! would do on the inputs of the moment, with one driver call per launch; uploads made while
//! capturing are constants; what a capture cannot hold is refused; the captured work's memory
//! is its own. On the emulator under its sanitizer, and on a GPU when there is one.

mod common;

use common::gpu::gpu_devices;
use msclip::backend::gpu::counters::{DriverCounters, measure};
use msclip::backend::gpu::graph::{self, Graph};
use msclip::backend::gpu::{self as gpu_backend, DevicePtr};
use msclip::backend::{self, BinaryOp, UnaryOp};
use msclip::error::Result;
use msclip::tensor::Storage;
use msclip::{DType, Device, Tensor};
use std::sync::{Mutex, MutexGuard};

/// One test at a time: on CUDA every thread of the process shares the driver's one stream, so
/// a capture in one test would refuse another's ("already under way") or take in its eager
/// work. Seen on an H200 (2026-12-04) when the test threads happened to overlap; the
/// emulator's driver state is per thread, so it did not show there.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn alone() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn on_device(values: &[f64], device: Device) -> Tensor {
    Tensor::from_f64(values, [values.len()], DType::F32).unwrap().to_device(device).unwrap()
}

fn address(t: &Tensor) -> DevicePtr {
    match t.storage() {
        Storage::Gpu(g) => g.ptr(),
        Storage::Cpu(_) => panic!("a device tensor"),
    }
}

/// Overwrites a device tensor's f32 elements in place, as a step's inputs are refreshed.
fn write(t: &Tensor, values: &[f32]) {
    gpu_backend::driver(t.device()).unwrap().upload(address(t), bytemuck::cast_slice(values)).unwrap();
}

/// 3x + 1 through a temporary: the temporaries are freed inside the work.
fn three_x_plus_one(x: &Tensor) -> Result<Tensor> {
    let be = backend::get(x.device());
    let doubled = be.unary(UnaryOp::Scale(2.0), x)?;
    let tripled = be.binary(BinaryOp::Add, &doubled, x)?;
    let one = on_device(&vec![1.0; x.numel()], x.device());
    be.binary(BinaryOp::Add, &tripled, &one)
}

fn capture_three_x_plus_one(x: &Tensor) -> (Tensor, Graph) {
    graph::capture(x.device(), || three_x_plus_one(x)).unwrap()
}

#[test]
fn a_launch_runs_the_captured_work_on_the_inputs_of_the_moment_in_one_driver_call() {
    let _alone = alone();
    for device in gpu_devices() {
        let x = on_device(&[0.0; 5], device);
        let (out, graph) = capture_three_x_plus_one(&x);
        for round in 0..3 {
            let values: Vec<f32> = (0..5).map(|i| (i * 10 + round) as f32 - 7.5).collect();
            write(&x, &values);
            let ((), counts) = measure(|| graph.launch().unwrap());
            let want = DriverCounters { graph_launches: 1, ..DriverCounters::new() };
            assert_eq!(counts, want, "{device}: a launch is one call, with no upload, allocation or kernel of its own");
            let got = out.to_f64_vec();
            let expected: Vec<f64> = values.iter().map(|&v| 3.0 * v as f64 + 1.0).collect();
            assert_eq!(got, expected, "{device}, round {round}");
        }
    }
}

#[test]
fn an_upload_made_while_capturing_is_repeated_with_the_bytes_it_had() {
    let _alone = alone();
    for device in gpu_devices() {
        let x = on_device(&[0.0; 3], device);
        let (out, graph) = graph::capture(device, || {
            let constant = on_device(&[1.0, 2.0, 3.0], device);
            backend::get(device).binary(BinaryOp::Mul, &x, &constant)
        })
        .unwrap();
        write(&x, &[5.0, 5.0, 5.0]);
        graph.launch().unwrap();
        assert_eq!(out.to_f64_vec(), [5.0, 10.0, 15.0], "{device}");
    }
}

#[test]
fn reading_back_or_waiting_inside_a_capture_is_refused_and_leaves_no_capture_behind() {
    let _alone = alone();
    for device in gpu_devices() {
        let x = on_device(&[1.0, 2.0], device);
        let read = graph::capture(device, || three_x_plus_one(&x)?.host_storage().map(|_| ()));
        let err = read.err().expect("a download inside a capture").to_string();
        assert!(err.contains("capturing"), "{device}: {err}");
        let nested = graph::capture(device, || graph::capture(device, || Ok(())).map(|_| ()));
        let err = nested.err().expect("a capture inside a capture").to_string();
        assert!(err.contains("already"), "{device}: {err}");
        // Nothing is left capturing: eager work runs again.
        assert_eq!(three_x_plus_one(&x).unwrap().to_f64_vec(), [4.0, 7.0], "{device}");
    }
}

#[test]
fn the_captured_work_keeps_its_memory_while_the_graph_lives() {
    let _alone = alone();
    for device in gpu_devices() {
        let x = on_device(&[1.0; 7], device);
        let (out, graph) = capture_three_x_plus_one(&x);
        // Buffers of the same sizes as the work's temporaries, made and filled after the
        // capture: none may be one the graph writes.
        let others: Vec<Tensor> = (0..4).map(|i| on_device(&[100.0 + i as f64; 7], device)).collect();
        for t in &others {
            assert!(!graph.owns_block(address(t)), "{device}: a graph's block handed out");
        }
        graph.launch().unwrap();
        assert_eq!(out.to_f64_vec(), [4.0; 7], "{device}");
        for (i, t) in others.iter().enumerate() {
            assert_eq!(t.to_f64_vec(), [100.0 + i as f64; 7], "{device}: the launch wrote another buffer");
        }
        drop(graph);
        assert_eq!(out.to_f64_vec(), [4.0; 7], "{device}: the output outlives the graph");
    }
}

mod whole_step {
    use msclip::model::{ClipModel, preset};
    use msclip::train::checkpoint::named_tensors;
    use msclip::train::{Precision, Steps, TrainConfig, new_run_tokenizer};
    use msclip::{Device, Tensor};

    /// Every tensor a checkpoint would hold after the step, with the step's loss and norm.
    fn state_after(steps: &Steps, loss: &Tensor, grad_norm: &Tensor) -> Vec<(String, Vec<f64>)> {
        let s = &steps.state;
        let mut all = vec![("loss".to_string(), loss.to_f64_vec()), ("grad_norm".to_string(), grad_norm.to_f64_vec())];
        all.extend(named_tensors(&s.params, &s.optimizer, &s.buffers).into_iter().map(|(n, t)| (n, t.to_f64_vec())));
        all
    }

    /// A training step captured whole (batch upload, forward, backward, clipping, AdamW in one
    /// graph) and launched once leaves exactly the state the same step run eagerly leaves, from
    /// the same starting state: the step holds nothing a capture cannot (no read-back, no wait).
    #[test]
    fn a_captured_training_step_launched_once_equals_the_eager_step_bit_for_bit() {
        let _alone = super::alone();
        for precision in [Precision::Fp32, Precision::Bf16] {
            let config = TrainConfig::for_steps("tiny", 4, Device::Emu, precision, 2).unwrap();
            let model = ClipModel::new(preset("tiny").unwrap()).unwrap();
            let tokenizer = new_run_tokenizer(&config, &model).unwrap();
            // Step 0 eagerly on both, so the capture also sees a state with bf16 copies and
            // moments in place; then step 1 eagerly on one and captured on the other.
            let mut eager = Steps::new(&model, &config, &tokenizer).unwrap();
            let mut captured = Steps::new(&model, &config, &tokenizer).unwrap();
            eager.run(0).unwrap();
            captured.run(0).unwrap();
            let want = eager.run(1).unwrap();
            let want = state_after(&eager, &want.loss, &want.grad_norm);
            let (out, graph) = captured.capture(1).unwrap();
            graph.launch().unwrap();
            let got = state_after(&captured, &out.loss, &out.grad_norm);
            assert_eq!(got.len(), want.len());
            for ((name, g), (_, w)) in got.iter().zip(&want) {
                assert!(g == w, "{precision:?}: {name} differs after the captured step");
            }
        }
    }
}
