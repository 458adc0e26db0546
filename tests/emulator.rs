//! The SIMT emulator's own tests: the execution model (barriers, warp primitives, shared memory,
//! atomics), the tensor-core wrappers' fragment layouts, and launch validation. Kernels are in
//! kernels/selftest.cu.

use half::bf16;
use msclip::backend::gpu::buffer::Scratch;
use msclip::backend::gpu::emu::EmuDriver;
use msclip::backend::gpu::{Driver, KernelArg, LaunchConfig};
use msclip::{Device, Rng};

/// An emulator allocation holding a copy of `data`.
fn upload<T: bytemuck::Pod>(data: &[T]) -> Scratch {
    Scratch::from_slice(Device::Emu, data).unwrap()
}

fn zeros<T>(len: usize) -> Scratch {
    Scratch::zeros(Device::Emu, len * std::mem::size_of::<T>()).unwrap()
}

fn read<T: bytemuck::Pod + Default>(buffer: &Scratch) -> Vec<T> {
    buffer.read().unwrap()
}

fn arg(buffer: &Scratch) -> KernelArg {
    KernelArg::Ptr(buffer.ptr())
}

fn launch(kernel: &str, config: LaunchConfig, args: &[KernelArg]) {
    EmuDriver.launch(kernel, config, args).unwrap_or_else(|e| panic!("{kernel}: {e}"));
}

#[test]
fn barriers_order_shared_memory_rounds() {
    // 2-D blocks of 7 x 19 = 133 threads (a partial last warp), 3 blocks.
    let (bx, by, blocks, rounds) = (7u32, 19u32, 3u32, 5);
    let n = (bx * by) as usize;
    let out = zeros::<i32>(n * blocks as usize);
    let config = LaunchConfig { grid: [blocks, 1, 1], block: [bx, by, 1], shared_bytes: (n * 4) as u32 };
    launch("selftest_barrier_rounds", config, &[arg(&out), KernelArg::I32(rounds)]);
    let got = read::<i32>(&out);
    for block in 0..blocks as usize {
        for tid in 0..n {
            let want: i32 = (0..rounds).map(|r| ((tid + r as usize + 1) % n) as i32 * 1000 + r).sum();
            assert_eq!(got[block * n + tid], want, "block {block} thread {tid}");
        }
    }
}

/// The scalar model of the warp ops of `selftest_warp_ops` for one lane.
fn warp_model(v: &[f32], lane: usize) -> [f32; 7] {
    let seg_src = (lane & !7) | ((lane ^ 1) & 7);
    [
        v[lane ^ 5],
        if lane + 3 < 32 { v[lane + 3] } else { v[lane] },
        if lane >= 2 { v[lane - 2] } else { v[lane] },
        v[7],
        v[seg_src],
        f32::NAN, // the sum: compared with a tolerance below
        v.iter().copied().fold(f32::NEG_INFINITY, f32::max),
    ]
}

#[test]
fn warp_shuffles_ballot_and_reductions_match_a_scalar_model() {
    let n = 3 * 64 + 13; // the last warp's tail lanes read 0
    let mut rng = Rng::new(7);
    let input: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
    let inp = upload(&input);
    let out = zeros::<f32>(n * 7);
    let ballots = zeros::<u32>(n.div_ceil(32));
    let blocks = n.div_ceil(64) as u32;
    launch(
        "selftest_warp_ops",
        LaunchConfig::linear(blocks, 64, 0),
        &[arg(&inp), arg(&out), arg(&ballots), KernelArg::I32(n as i32)],
    );
    let got = read::<f32>(&out);
    let got_ballots = read::<u32>(&ballots);
    for (warp, &got_ballot) in got_ballots.iter().enumerate() {
        let v: Vec<f32> = (0..32).map(|l| input.get(warp * 32 + l).copied().unwrap_or(0.0)).collect();
        let want_ballot = (0..32).filter(|&l| v[l] > 0.0).fold(0u32, |acc, l| acc | 1 << l);
        assert_eq!(got_ballot, want_ballot, "ballot of warp {warp}");
        let sum: f32 = v.iter().sum();
        for lane in 0..32 {
            let i = warp * 32 + lane;
            if i >= n {
                continue;
            }
            let want = warp_model(&v, lane);
            let row = &got[i * 7..i * 7 + 7];
            for (j, (&g, &w)) in row.iter().zip(&want).enumerate() {
                if j == 5 {
                    assert!((g - sum).abs() <= 1e-5 * (1.0 + sum.abs()), "warp_sum lane {lane}: {g} vs {sum}");
                } else {
                    assert_eq!(g, w, "op {j} lane {lane} of warp {warp}");
                }
            }
        }
    }
}

#[test]
fn shared_memory_is_private_to_each_block_under_parallel_blocks() {
    let blocks = 24u32;
    let threads = 256u32;
    let out = zeros::<i32>(blocks as usize);
    launch(
        "selftest_shared_isolation",
        LaunchConfig::linear(blocks, threads, threads * 4),
        &[arg(&out), KernelArg::I32(20_000)],
    );
    for (b, &sum) in read::<i32>(&out).iter().enumerate() {
        assert_eq!(sum, 3 * b as i32 * threads as i32, "block {b}");
    }
}

#[test]
fn block_sum_over_ragged_widths() {
    for &(rows, width, threads) in &[(1usize, 1usize, 32u32), (3, 1000, 256), (5, 77, 96), (2, 4099, 1024)] {
        let data: Vec<f32> = (0..rows * width).map(|i| ((i * 37 % 101) as f32) * 0.25 - 12.0).collect();
        let inp = upload(&data);
        let out = zeros::<f32>(rows);
        launch(
            "selftest_block_sum",
            LaunchConfig::linear(rows as u32, threads, 0),
            &[arg(&inp), arg(&out), KernelArg::I32(width as i32)],
        );
        for (r, &got) in read::<f32>(&out).iter().enumerate() {
            let want: f64 = data[r * width..(r + 1) * width].iter().map(|&x| x as f64).sum();
            assert!(
                (got as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                "rows {rows} width {width}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn atomics_are_atomic_across_parallel_blocks() {
    let fsum = zeros::<f32>(1);
    let isum = zeros::<i32>(1);
    let (blocks, threads) = (64u32, 128u32);
    launch("selftest_atomics", LaunchConfig::linear(blocks, threads, 0), &[arg(&fsum), arg(&isum)]);
    assert_eq!(read::<f32>(&fsum)[0], (blocks * threads) as f32);
    assert_eq!(read::<i32>(&isum)[0], (blocks * (threads * (threads - 1) / 2)) as i32);
}

#[test]
fn mma_and_ldmatrix_wrappers_match_a_naive_product() {
    let mut rng = Rng::new(11);
    let mut draw = |len: usize| -> Vec<bf16> { (0..len).map(|_| bf16::from_f64(rng.normal())).collect() };
    let a = draw(256);
    let b = draw(256);
    let bt: Vec<bf16> = (0..256).map(|i| b[(i % 16) * 16 + i / 16]).collect();
    let (ba, bb, bbt) = (upload(&a), upload(&b), upload(&bt));
    let d_trans = zeros::<f32>(256);
    let d_plain = zeros::<f32>(256);
    launch(
        "selftest_mma",
        LaunchConfig::linear(1, 32, 0),
        &[arg(&ba), arg(&bb), arg(&bbt), arg(&d_trans), arg(&d_plain)],
    );
    for (name, got) in [("trans", read::<f32>(&d_trans)), ("plain", read::<f32>(&d_plain))] {
        for r in 0..16 {
            for c in 0..16 {
                let want: f64 = (0..16).map(|k| a[r * 16 + k].to_f64() * b[k * 16 + c].to_f64()).sum();
                let g = got[r * 16 + c] as f64;
                assert!((g - want).abs() <= 1e-5 * (1.0 + want.abs()), "{name} d[{r}][{c}] = {g}, want {want}");
            }
        }
    }
}

#[test]
fn launches_outside_the_device_limits_are_rejected() {
    let out = zeros::<i32>(64);
    let bad = [
        LaunchConfig { grid: [1, 1, 1], block: [2048, 1, 1], shared_bytes: 0 },
        LaunchConfig { grid: [1, 1, 1], block: [1, 1, 65], shared_bytes: 0 },
        LaunchConfig { grid: [0, 1, 1], block: [32, 1, 1], shared_bytes: 0 },
        LaunchConfig { grid: [1, 70_000, 1], block: [32, 1, 1], shared_bytes: 0 },
        LaunchConfig { grid: [1, 1, 1], block: [32, 1, 1], shared_bytes: 300 * 1024 },
    ];
    for config in bad {
        let err = EmuDriver.launch("selftest_barrier_rounds", config, &[arg(&out), KernelArg::I32(1)]).unwrap_err();
        assert!(err.to_string().contains("limit") || err.to_string().contains("shared memory"), "{config:?}: {err}");
    }
    let wrong_count = EmuDriver.launch("selftest_atomics", LaunchConfig::linear(1, 32, 0), &[arg(&out)]).unwrap_err();
    assert!(wrong_count.to_string().contains("takes 2 arguments"), "{wrong_count}");
    let wrong_width = EmuDriver
        .launch("selftest_barrier_rounds", LaunchConfig::linear(1, 32, 128), &[arg(&out), arg(&out)])
        .unwrap_err();
    assert!(wrong_width.to_string().contains("argument 1 is 4 bytes"), "{wrong_width}");
    let unknown = EmuDriver.launch("no_such_kernel", LaunchConfig::linear(1, 32, 0), &[]).unwrap_err();
    assert!(unknown.to_string().contains("no kernel named no_such_kernel"), "{unknown}");
}

#[test]
fn a_barrier_that_cannot_complete_is_reported_not_hung() {
    let out = zeros::<i32>(32);
    let err = EmuDriver.launch("selftest_deadlock", LaunchConfig::linear(2, 32, 0), &[arg(&out)]).unwrap_err();
    assert!(err.to_string().contains("deadlocked"), "{err}");
    // The emulator stays usable after an abandoned block.
    launch("selftest_atomics", LaunchConfig::linear(1, 32, 0), &[arg(&out), arg(&out)]);
}

#[test]
fn every_selftest_kernel_is_registered() {
    let names = EmuDriver::kernel_names();
    for k in ["selftest_barrier_rounds", "selftest_warp_ops", "selftest_mma", "selftest_deadlock"] {
        assert!(names.iter().any(|n| n == k), "{k} missing from {names:?}");
    }
}

/// The wgmma wrappers (kernels/wgmma.cuh) on every driver that has them: the emulator always,
/// a compute-capability 9.0 GPU when present (where this checks the emulator's reading of the
/// descriptor and accumulator layouts against the hardware).
#[test]
fn wgmma_wrappers_match_a_naive_product() {
    let mut rng = Rng::new(12);
    let mut draw = |len: usize| -> Vec<bf16> { (0..len).map(|_| bf16::from_f64(rng.normal())).collect() };
    let (a, b) = (draw(64 * 32), draw(64 * 32));
    let mut drivers = vec![Device::Emu];
    match msclip::backend::gpu::driver(Device::Cuda) {
        Ok(d) if d.has_wgmma() => drivers.push(Device::Cuda),
        Ok(_) => eprintln!("wgmma on cuda skipped: the GPU is not compute capability 9.0"),
        Err(e) => eprintln!("wgmma on cuda skipped: {e}"),
    }
    for device in drivers {
        let driver = msclip::backend::gpu::driver(device).unwrap();
        let (ba, bb) = (Scratch::from_slice(device, &a).unwrap(), Scratch::from_slice(device, &b).unwrap());
        let d64 = Scratch::zeros(device, 64 * 64 * 4).unwrap();
        let d32 = Scratch::zeros(device, 64 * 32 * 4).unwrap();
        let smem = (2 * 64 * 32 * std::mem::size_of::<bf16>()) as u32;
        driver
            .launch("selftest_wgmma", LaunchConfig::linear(1, 128, smem), &[arg(&ba), arg(&bb), arg(&d64), arg(&d32)])
            .unwrap_or_else(|e| panic!("{device}: {e}"));
        for (name, got, cols, first) in
            [("n64", d64.read::<f32>().unwrap(), 64, 0), ("n32", d32.read().unwrap(), 32, 32)]
        {
            for r in 0..64 {
                for c in 0..cols {
                    let want: f64 = (0..32).map(|k| a[r * 32 + k].to_f64() * b[(first + c) * 32 + k].to_f64()).sum();
                    let g = got[r * cols + c] as f64;
                    assert!(
                        (g - want).abs() <= 1e-5 * (1.0 + want.abs()),
                        "{device} {name} d[{r}][{c}] = {g}, want {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn wgmma_misuse_is_reported() {
    let a = upload(&vec![bf16::ONE; 64 * 32]);
    let run = |mismatched: i32, wait: i32| {
        let config = LaunchConfig::linear(1, 128, 64 * 32 * 2);
        EmuDriver.launch("selftest_wgmma_misuse", config, &[arg(&a), KernelArg::I32(mismatched), KernelArg::I32(wait)])
    };
    run(0, 1).unwrap();
    let never_waited = run(0, 0).unwrap_err();
    assert!(never_waited.to_string().contains("never waited for"), "{never_waited}");
    let mismatched = run(1, 1).unwrap_err();
    assert!(mismatched.to_string().contains("different wgmma operands"), "{mismatched}");
}
