//! The fused multi-tensor AdamW (kernels/adamw.cu) against the CPU reference: ragged tensor
//! sizes (empty, 1, 33, 1000, and 4099 = one chunk of 4096 plus a ragged tail), two groups,
//! global-norm clipping, a clamped tensor, several steps, f32 and bf16 gradients, bf16 copies
//! of the masters, and the skipped update of a non-finite gradient. The fused EMA update
//! (kernels/ema.cu) of the same ragged tensors, bit for bit.

mod common;

use common::assert_close;
use common::gpu::{gpu_devices, on, randn_as};
use half::bf16;
use msclip::backend::{self, AdamWStep, AdamWTensor};
use msclip::{DType, Device, Rng, Tensor};

const SIZES: [usize; 5] = [1, 0, 33, 1000, 4099];

/// One parameter's state on one device.
struct State {
    param: Tensor,
    m: Tensor,
    v: Tensor,
    copy: Option<Tensor>,
}

impl State {
    fn new(init: &Tensor, device: Device, with_copy: bool) -> State {
        let zeros = Tensor::zeros(init.shape().clone(), DType::F32);
        let copy = with_copy.then(|| on(&zeros, device, DType::BF16));
        State {
            param: on(init, device, DType::F32),
            m: on(&zeros, device, DType::F32),
            v: on(&zeros, device, DType::F32),
            copy,
        }
    }
}

/// (lr, weight decay) of the two groups; tensors alternate between them.
fn group_of(i: usize) -> (f64, f64) {
    if i.is_multiple_of(2) { (1e-2, 0.1) } else { (3e-3, 0.0) }
}

/// Tensor 2 is clamped to this range, which its updates cross.
const CLAMP: (f64, f64) = (-0.5, 0.5);

/// One step; returns the global gradient norm.
fn step(device: Device, states: &mut [State], grads: &[Tensor], hp: AdamWStep) -> f64 {
    let mut updates: Vec<AdamWTensor<'_>> = states
        .iter_mut()
        .zip(grads)
        .enumerate()
        .map(|(i, (s, grad))| {
            let (lr, weight_decay) = group_of(i);
            AdamWTensor {
                param: &mut s.param,
                grad,
                m: &mut s.m,
                v: &mut s.v,
                bf16_copy: s.copy.as_mut(),
                lr,
                weight_decay,
                row: i,
                clamp: (i == 2).then_some(CLAMP),
            }
        })
        .collect();
    let norm = backend::get(device).adamw_multi(&mut updates, hp).unwrap_or_else(|e| panic!("adamw on {device}: {e}"));
    norm.item().unwrap()
}

#[test]
fn fused_adamw_matches_the_cpu_over_ragged_tensors_and_steps() {
    for device in gpu_devices() {
        let mut rng = Rng::new(5);
        let inits: Vec<Tensor> = SIZES.iter().map(|&n| randn_as(&mut rng, &[n], 1.0, DType::F32)).collect();
        let mut cpu: Vec<State> = inits.iter().map(|t| State::new(t, Device::Cpu, false)).collect();
        // Odd tensors carry a bf16 copy; tensor 3 gets bf16 gradients.
        let mut gpu: Vec<State> = inits.iter().enumerate().map(|(i, t)| State::new(t, device, i % 2 == 1)).collect();
        for t in 1..=3u64 {
            // The gradients' norm is about 0.5 * sqrt(5166) = 36: clipped to 20 on steps 1 and 3.
            let max_grad_norm = (t != 2).then_some(20.0);
            let hp = AdamWStep { beta1: 0.9, beta2: 0.95, eps: 1e-8, step: t, max_grad_norm, constants: None };
            let grad_dtype = |i: usize| if i == 3 { DType::BF16 } else { DType::F32 };
            let grads: Vec<Tensor> =
                SIZES.iter().enumerate().map(|(i, &n)| randn_as(&mut rng, &[n], 0.5, grad_dtype(i))).collect();
            let device_grads: Vec<Tensor> =
                grads.iter().enumerate().map(|(i, g)| on(g, device, grad_dtype(i))).collect();
            let cpu_norm = step(Device::Cpu, &mut cpu, &grads, hp);
            let gpu_norm = step(device, &mut gpu, &device_grads, hp);
            assert_close(&format!("{device} step {t} norm"), &[gpu_norm], &[cpu_norm], 0.0, 1e-6);
            for (i, (c, g)) in cpu.iter().zip(&gpu).enumerate() {
                let what = |name: &str| format!("{device} step {t} tensor {i} ({} elements) {name}", SIZES[i]);
                // Identical f32 arithmetic; a GPU may contract to FMA (an ulp or so).
                assert_close(&what("param"), &g.param.to_f64_vec(), &c.param.to_f64_vec(), 1e-7, 1e-6);
                assert_close(&what("m"), &g.m.to_f64_vec(), &c.m.to_f64_vec(), 1e-7, 1e-6);
                assert_close(&what("v"), &g.v.to_f64_vec(), &c.v.to_f64_vec(), 1e-7, 1e-6);
                if let Some(copy) = &g.copy {
                    let want: Vec<f64> =
                        g.param.to_f64_vec().iter().map(|&p| bf16::from_f32(p as f32).to_f64()).collect();
                    assert_eq!(copy.to_f64_vec(), want, "{}", what("bf16 copy"));
                }
            }
        }
    }
}

#[test]
fn a_non_finite_gradient_norm_skips_the_step_on_the_gpu() {
    for device in gpu_devices() {
        let mut rng = Rng::new(6);
        let inits: Vec<Tensor> = SIZES.iter().map(|&n| randn_as(&mut rng, &[n], 1.0, DType::F32)).collect();
        let mut gpu: Vec<State> = inits.iter().map(|t| State::new(t, device, true)).collect();
        let before: Vec<Vec<f64>> = gpu.iter().map(|s| s.param.to_f64_vec()).collect();
        let mut grads: Vec<Tensor> = SIZES.iter().map(|&n| randn_as(&mut rng, &[n], 0.5, DType::F32)).collect();
        // One infinite element in the last tensor's ragged tail.
        let mut last = grads[4].to_f64_vec();
        last[4098] = f64::INFINITY;
        grads[4] = Tensor::from_f64(&last, [4099], DType::F32).unwrap();
        let device_grads: Vec<Tensor> = grads.iter().map(|g| on(g, device, DType::F32)).collect();
        let hp = AdamWStep { beta1: 0.9, beta2: 0.95, eps: 1e-8, step: 1, max_grad_norm: Some(1.0), constants: None };
        let norm = step(device, &mut gpu, &device_grads, hp);
        assert!(norm.is_infinite(), "{device}: norm {norm}");
        for (i, (s, b)) in gpu.iter().zip(&before).enumerate() {
            assert_eq!(&s.param.to_f64_vec(), b, "{device} tensor {i} changed");
            assert!(s.m.to_f64_vec().iter().all(|&m| m == 0.0), "{device} tensor {i} moments changed");
            assert!(s.copy.as_ref().unwrap().to_f64_vec().iter().all(|&c| c == 0.0), "{device} copy {i} written");
        }
    }
}

#[test]
fn fused_adamw_rejects_bf16_masters() {
    for device in gpu_devices() {
        let t = Tensor::zeros([3], DType::F32);
        let mut state = State::new(&t, device, false);
        state.param = on(&t, device, DType::BF16);
        let hp = AdamWStep { beta1: 0.9, beta2: 0.999, eps: 1e-8, step: 1, max_grad_norm: None, constants: None };
        let grad = on(&t, device, DType::F32);
        let mut updates = [AdamWTensor {
            param: &mut state.param,
            grad: &grad,
            m: &mut state.m,
            v: &mut state.v,
            bf16_copy: None,
            lr: 1e-3,
            weight_decay: 0.0,
            row: 0,
            clamp: None,
        }];
        let err = backend::get(device).adamw_multi(&mut updates, hp).unwrap_err().to_string();
        assert!(err.contains("fp32 master"), "{err}");
    }
}

#[test]
fn fused_ema_update_matches_the_cpu_bit_for_bit() {
    let cpu = backend::get(Device::Cpu);
    let mut rng = Rng::new(41);
    let sizes = [1, 0, 33, 4096, 4099, 10_000];
    let sources: Vec<Tensor> = sizes.iter().map(|&n| randn_as(&mut rng, &[n], 1.0, DType::F32)).collect();
    let start: Vec<Tensor> = sizes.iter().map(|&n| randn_as(&mut rng, &[n], 1.0, DType::F32)).collect();
    let mut want = start.clone();
    for _ in 0..3 {
        let mut targets: Vec<&mut Tensor> = want.iter_mut().collect();
        cpu.ema_update(&mut targets, &sources.iter().collect::<Vec<_>>(), 0.01).unwrap();
    }
    for device in gpu_devices() {
        let gpu = backend::get(device);
        let mut got: Vec<Tensor> = start.iter().map(|t| on(t, device, DType::F32)).collect();
        let on_device: Vec<Tensor> = sources.iter().map(|t| on(t, device, DType::F32)).collect();
        for _ in 0..3 {
            let mut targets: Vec<&mut Tensor> = got.iter_mut().collect();
            gpu.ema_update(&mut targets, &on_device.iter().collect::<Vec<_>>(), 0.01).unwrap();
        }
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_f64_vec(), w.to_f64_vec(), "{device}: tensor {i} of {} elements", sizes[i]);
        }
        let bf16_target = on(&start[2], device, DType::BF16);
        let err = gpu.ema_update(&mut [&mut bf16_target.clone()], &[&on_device[2]], 0.01).unwrap_err();
        assert!(err.to_string().contains("fp32"), "{device}: {err}");
    }
}
