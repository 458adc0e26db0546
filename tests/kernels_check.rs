//! `msclip kernels --check` in small: one case of its suite runs clean under the three
//! schedules, and the check fails, naming what, on a sanitizer report and on outputs that
//! differ between runs.

use std::sync::atomic::{AtomicU8, Ordering};

use msclip::backend::gpu::buffer::Scratch;
use msclip::backend::gpu::{KernelArg, LaunchConfig, driver};
use msclip::kernel_check::{Case, check, first_difference, suite};
use msclip::{Device, Error};

#[test]
fn a_case_of_the_suite_is_clean_under_every_schedule() {
    let name = "infonce bf16 mma.sync two ranks";
    let case = suite().into_iter().find(|c| c.name == name).expect("the suite has the case");
    let report = check(&case);
    assert_eq!(report.failure, None);
    for kernel in ["infonce_fwd_bf16", "infonce_bwd_bf16", "infonce_combine_f32", "infonce_sum_splits_bf16"] {
        assert!(report.counts.launches_by_kernel.contains_key(kernel), "{name} launches {kernel}");
    }
}

#[test]
fn the_first_differing_output_is_named() {
    let run = |last: u8| vec![("loss".to_string(), vec![1, 2]), ("param/w".to_string(), vec![0, 0, last])];
    assert_eq!(first_difference(&run(0), &run(0)), None);
    let difference = first_difference(&run(0), &run(9)).expect("a difference");
    assert!(difference.contains("param/w") && difference.contains("byte 2"), "{difference}");
    let shorter = vec![run(0)[0].clone()];
    assert!(first_difference(&run(0), &shorter).is_some_and(|d| d.contains("2 outputs")));
}

#[test]
fn outputs_that_change_between_schedules_fail_the_case() {
    let runs = AtomicU8::new(0);
    let case =
        Case::new("order-dependent", move || Ok(vec![("sum".to_string(), vec![runs.fetch_add(1, Ordering::Relaxed)])]));
    let failure = check(&case).failure.expect("the second run differs from the first");
    assert!(failure.contains("Forward and Reverse schedules differ") && failure.contains("sum"), "{failure}");
}

#[test]
fn a_sanitizer_report_fails_the_case_with_the_report() {
    let case = Case::new("missing barrier", || {
        let out = Scratch::zeros(Device::Emu, 64 * 4)?;
        let config = LaunchConfig::linear(1, 64, 0);
        driver(Device::Emu)?.launch("broken_missing_barrier", config, &[KernelArg::Ptr(out.ptr())])?;
        Ok::<_, Error>(vec![])
    });
    let failure = check(&case).failure.expect("a report");
    assert!(failure.starts_with("Forward schedule") && failure.contains("race (read after write)"), "{failure}");
}
