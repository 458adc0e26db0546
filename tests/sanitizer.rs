//! The emulator's sanitizer: each defect of kernels/broken.cu is caught with the right report
//! (and never crashes the test process), and correct kernels (kernels/selftest.cu) run clean.

use half::bf16;
use msclip::Device;
use msclip::backend::gpu::buffer::Scratch;
use msclip::backend::gpu::emu::{EmuDriver, Instrumentation, Schedule, instrument};
use msclip::backend::gpu::{Driver, KernelArg, LaunchConfig};

fn sanitized<R>(f: impl FnOnce() -> R) -> R {
    instrument(Instrumentation::Sanitizer, Schedule::Forward, f)
}

fn zeros(bytes: usize) -> Scratch {
    Scratch::zeros(Device::Emu, bytes).unwrap()
}

fn arg(buffer: &Scratch) -> KernelArg {
    KernelArg::Ptr(buffer.ptr())
}

/// Launches `kernel` under the sanitizer, expecting a report: returns it.
fn report_of(kernel: &str, config: LaunchConfig, args: &[KernelArg]) -> String {
    match EmuDriver.launch(kernel, config, args) {
        Ok(()) => panic!("{kernel}: the sanitizer found nothing"),
        Err(e) => e.to_string(),
    }
}

fn assert_reports(report: &str, kernel: &str, expected: &[&str]) {
    assert!(report.contains(&format!("kernel {kernel}")), "the report does not name {kernel}:\n{report}");
    for want in expected {
        assert!(report.contains(want), "{kernel}: expected {want:?} in the report:\n{report}");
    }
}

fn one_block(threads: u32) -> LaunchConfig {
    LaunchConfig::linear(1, threads, 0)
}

#[test]
fn a_missing_barrier_is_a_shared_memory_race() {
    sanitized(|| {
        let out = zeros(64 * 4);
        let report = report_of("broken_missing_barrier", one_block(64), &[arg(&out)]);
        assert_reports(&report, "broken_missing_barrier", &["race (read after write)", "__shared__", "slot"]);
    });
}

#[test]
fn lanes_of_a_warp_are_not_ordered_without_a_syncwarp() {
    sanitized(|| {
        let out = zeros(32 * 4);
        let report = report_of("broken_missing_syncwarp", one_block(32), &[arg(&out)]);
        assert_reports(&report, "broken_missing_syncwarp", &["race", "lanes"]);
    });
}

#[test]
fn an_off_by_one_store_is_out_of_bounds_and_names_the_allocation() {
    sanitized(|| {
        let n = 100;
        let out = zeros(n * 4);
        let report = report_of(
            "broken_off_by_one_store",
            LaunchConfig::linear(4, 32, 0),
            &[arg(&out), KernelArg::I32(n as i32)],
        );
        assert_reports(
            &report,
            "broken_off_by_one_store",
            &[
                "out of bounds",
                "write of 4 bytes",
                "thread (4, 0, 0)",
                "block (3, 0, 0)",
                "past the end of its 400 bytes",
            ],
        );
    });
}

#[test]
fn a_store_past_a_static_shared_array_is_reported_not_a_crash() {
    sanitized(|| {
        let out = zeros(32 * 4);
        let report = report_of("broken_shared_overflow", one_block(32), &[arg(&out)]);
        assert_reports(&report, "broken_shared_overflow", &["out of bounds", "thread (31, 0, 0)"]);
    });
}

#[test]
fn a_barrier_reached_from_two_branches_is_divergent() {
    sanitized(|| {
        let out = zeros(32 * 4);
        let report = report_of("broken_divergent_barrier", one_block(32), &[arg(&out)]);
        assert_reports(&report, "broken_divergent_barrier", &["divergent barrier"]);
    });
    // The plain copy reports it too: it is a defect however the kernel runs.
    let out = zeros(32 * 4);
    let report = report_of("broken_divergent_barrier", one_block(32), &[arg(&out)]);
    assert!(report.contains("divergent __syncthreads"), "{report}");
}

#[test]
fn a_shuffle_from_a_lane_outside_its_mask_is_reported() {
    sanitized(|| {
        let out = zeros(32 * 4);
        let report = report_of("broken_shuffle_outside_mask", one_block(32), &[arg(&out)]);
        assert_reports(&report, "broken_shuffle_outside_mask", &["shuffle outside its mask", "lane 20"]);
    });
}

#[test]
fn reading_memory_nothing_wrote_is_reported() {
    sanitized(|| {
        let input = Scratch::uninit(Device::Emu, 32 * 4).unwrap();
        let out = zeros(32 * 4);
        let report = report_of("broken_unwritten_read", one_block(32), &[arg(&input), arg(&out)]);
        assert_reports(&report, "broken_unwritten_read", &["unwritten read", "nothing wrote since it was allocated"]);
        // Once the host writes it, the same launch is clean.
        let input = Scratch::from_slice(Device::Emu, &[1.0f32; 32]).unwrap();
        EmuDriver.launch("broken_unwritten_read", one_block(32), &[arg(&input), arg(&out)]).unwrap();
    });
}

#[test]
fn plain_stores_from_two_blocks_to_one_address_race() {
    sanitized(|| {
        let out = zeros(4);
        let report = report_of("broken_block_race", LaunchConfig::linear(3, 32, 0), &[arg(&out)]);
        assert_reports(&report, "broken_block_race", &["race (write after write)", "another block of this launch"]);
    });
}

#[test]
fn a_misaligned_vector_load_is_reported() {
    sanitized(|| {
        let input = Scratch::from_slice(Device::Emu, &[1.0f32; 8]).unwrap();
        let out = zeros(32 * 4);
        let report = report_of("broken_misaligned_load", one_block(32), &[arg(&input), arg(&out)]);
        assert_reports(&report, "broken_misaligned_load", &["misaligned access", "16-byte access"]);
    });
}

#[test]
fn a_use_after_free_is_reported() {
    sanitized(|| {
        // Retired, as the arena frees a range, while the host bytes stay held: a real free would
        // let another test thread be handed the same address, which would then look live.
        let out = zeros(32 * 4);
        EmuDriver.retire(out.ptr());
        let report = report_of("broken_block_race", one_block(32), &[arg(&out)]);
        assert_reports(&report, "broken_block_race", &["out of bounds", "already freed: a use after free"]);
    });
}

#[test]
fn a_wgmma_without_a_proxy_fence_after_the_stores_is_reported() {
    sanitized(|| {
        let a: Vec<bf16> = (0..64 * 32).map(|i| bf16::from_f32((i % 7) as f32)).collect();
        let a = Scratch::from_slice(Device::Emu, &a).unwrap();
        let out = zeros(128 * 4);
        let config = LaunchConfig::linear(1, 128, 64 * 32 * 2);
        let report = report_of("broken_missing_proxy_fence", config, &[arg(&a), arg(&out)]);
        assert_reports(&report, "broken_missing_proxy_fence", &["missing fence.proxy.async"]);
    });
}

#[test]
fn correct_kernels_run_clean_under_every_schedule() {
    for schedule in [Schedule::Forward, Schedule::Reverse, Schedule::Shuffled(7)] {
        instrument(Instrumentation::Sanitizer, schedule, || {
            let out = zeros(133 * 3 * 4);
            let config = LaunchConfig { grid: [3, 1, 1], block: [7, 19, 1], shared_bytes: 133 * 4 };
            EmuDriver.launch("selftest_barrier_rounds", config, &[arg(&out), KernelArg::I32(4)]).unwrap();
            let input =
                Scratch::from_slice(Device::Emu, &(0..70).map(|i| i as f32 - 30.0).collect::<Vec<_>>()).unwrap();
            let out = zeros(70 * 7 * 4);
            let ballots = zeros(3 * 4);
            let args = [arg(&input), arg(&out), arg(&ballots), KernelArg::I32(70)];
            EmuDriver.launch("selftest_warp_ops", LaunchConfig::linear(3, 32, 0), &args).unwrap();
            let fsum = zeros(4);
            let isum = zeros(4);
            EmuDriver.launch("selftest_atomics", LaunchConfig::linear(4, 64, 0), &[arg(&fsum), arg(&isum)]).unwrap();
        });
    }
}
