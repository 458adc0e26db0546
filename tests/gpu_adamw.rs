//! The fused multi-tensor AdamW (kernels/adamw.cu) against the CPU reference: ragged tensor
//! sizes (empty, 1, 33, 1000, and 4099 = one chunk of 4096 plus a ragged tail), two groups,
//! a clipping scale, several steps, f32 and bf16 gradients, and bf16 copies of the masters.

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

fn step(device: Device, states: &mut [State], grads: &[Tensor], hp: AdamWStep) {
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
            }
        })
        .collect();
    backend::get(device).adamw_multi(&mut updates, hp).unwrap_or_else(|e| panic!("adamw on {device}: {e}"));
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
            let hp = AdamWStep { beta1: 0.9, beta2: 0.95, eps: 1e-8, step: t, grad_scale: 0.6 };
            let grad_dtype = |i: usize| if i == 3 { DType::BF16 } else { DType::F32 };
            let grads: Vec<Tensor> =
                SIZES.iter().enumerate().map(|(i, &n)| randn_as(&mut rng, &[n], 0.5, grad_dtype(i))).collect();
            let device_grads: Vec<Tensor> =
                grads.iter().enumerate().map(|(i, g)| on(g, device, grad_dtype(i))).collect();
            step(Device::Cpu, &mut cpu, &grads, hp);
            step(device, &mut gpu, &device_grads, hp);
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
fn fused_adamw_rejects_bf16_masters() {
    for device in gpu_devices() {
        let t = Tensor::zeros([3], DType::F32);
        let mut state = State::new(&t, device, false);
        state.param = on(&t, device, DType::BF16);
        let hp = AdamWStep { beta1: 0.9, beta2: 0.999, eps: 1e-8, step: 1, grad_scale: 1.0 };
        let grad = on(&t, device, DType::F32);
        let mut updates = [AdamWTensor {
            param: &mut state.param,
            grad: &grad,
            m: &mut state.m,
            v: &mut state.v,
            bf16_copy: None,
            lr: 1e-3,
            weight_decay: 0.0,
        }];
        let err = backend::get(device).adamw_multi(&mut updates, hp).unwrap_err().to_string();
        assert!(err.contains("fp32 master"), "{err}");
    }
}
