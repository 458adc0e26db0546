//! `msclip kernels --check`: the suite of [`msclip::kernel_check`], one case after the other (the
//! emulator runs one sanitized launch at a time, on one core, so cases on more threads would only
//! wait for each other). Prints a line per case as it ends, then the kernels no case launched,
//! then a summary; any failure or uncovered kernel makes the command fail.

use std::time::Instant;

use msclip::kernel_check::{self, CaseReport, SCHEDULES, TEST_ONLY_MODULES};

pub fn run() -> anyhow::Result<()> {
    let suite = kernel_check::suite();
    println!(
        "kernels --check: {} cases under the emulator's sanitizer, each in the schedules {SCHEDULES:?}",
        suite.len()
    );
    let start = Instant::now();
    let reports: Vec<CaseReport> = suite
        .iter()
        .map(|case| {
            let report = kernel_check::check(case);
            print_case(&report);
            report
        })
        .collect();
    let uncovered = kernel_check::uncovered(&reports);
    let test_only = TEST_ONLY_MODULES.join(", ");
    if uncovered.is_empty() {
        println!("coverage: every kernel was launched (test-only modules left out: {test_only})");
    } else {
        println!("coverage: {} kernels no case launched (test-only modules left out: {test_only}):", uncovered.len());
        for kernel in &uncovered {
            println!("    {kernel}");
        }
    }
    let failed = reports.iter().filter(|r| r.failure.is_some()).count();
    println!(
        "summary: {} of {} cases clean, {failed} failed, {} kernels not covered; {:.1} s",
        reports.len() - failed,
        reports.len(),
        uncovered.len(),
        start.elapsed().as_secs_f64()
    );
    if failed > 0 || !uncovered.is_empty() {
        anyhow::bail!("kernels --check: {failed} cases failed, {} kernels not covered", uncovered.len());
    }
    Ok(())
}

fn print_case(report: &CaseReport) {
    let status = if report.failure.is_some() { "FAILED" } else { "clean" };
    println!(
        "  {:<36} {:>3} kernels {:>6} launches {:>7.1} s  {status}",
        report.name,
        report.counts.distinct_kernels(),
        report.counts.launches(),
        report.wall.as_secs_f64()
    );
    if let Some(failure) = &report.failure {
        for line in failure.lines() {
            println!("      {line}");
        }
    }
}
