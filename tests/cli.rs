//! The `msclip` binary: answers, and bad input that ends with a message and exit status 1
//! instead of a panic.

use std::process::{Command, Output};

fn msclip(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_msclip")).args(args).output().expect("the binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn params_prints_the_reference_counts() {
    let out = msclip(&["params", "--preset", "msclip-s-b32"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for n in ["132408001", "77932800", "8954304", "45520896"] {
        assert!(text.contains(n), "missing {n} in:\n{text}");
    }
}

#[test]
fn unknown_preset_is_an_error_listing_the_presets() {
    for args in
        [&["params", "--preset", "vit-h14"][..], &["train", "--preset", "vit-h14", "--output", "/tmp/msclip-cli-none"]]
    {
        let out = msclip(args);
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(err.contains("unknown preset \"vit-h14\"") && err.contains("msclip-s-b32"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn unavailable_device_and_data_are_errors() {
    let out = msclip(&["train", "--device", "cuda"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cuda"), "{}", stderr(&out));
    let out = msclip(&["train", "--data", "laion.tsv"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("laion.tsv"));
}

#[test]
fn eval_of_a_missing_run_names_the_path() {
    let out = msclip(&["eval", "--run", "/tmp/msclip-no-such-run"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("/tmp/msclip-no-such-run/config.json") && !err.contains("panicked"), "{err}");
}

#[test]
fn data_preview_writes_a_png() {
    let path = std::env::temp_dir().join(format!("msclip-preview-{}.png", std::process::id()));
    let out = msclip(&["data", "preview", "--out", path.to_str().unwrap(), "--count", "4", "--image-size", "32"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn profile_step_counts_the_driver_calls_of_a_tiny_step_on_the_emulator() {
    let json = std::env::temp_dir().join(format!("msclip-profile-{}.json", std::process::id()));
    let out = msclip(&["profile", "step", "--preset", "tiny", "--batch", "2", "--json", json.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for label in [
        "kernel launches",
        "distinct kernels",
        "GEMM calls",
        "driver allocations",
        "cached allocations",
        "H2D copies",
        "D2H copies",
        "D2D copies",
        "memsets",
        "host syncs",
        "top kernels by launches",
        "modelled lower bound per step",
    ] {
        assert!(text.contains(label), "missing {label:?} in:\n{text}");
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    let total = |key: &str| report["totals"][key].as_u64().unwrap_or_else(|| panic!("totals.{key} in {report}"));
    assert_eq!((report["preset"].as_str(), report["batch"].as_u64()), (Some("tiny"), Some(2)));
    // A step reads nothing back (the loss, gradient norm and clipping stay on the device) and
    // its buffers come from the caching allocator, which gives nothing back to the driver.
    assert!(total("launches") > 0 && total("gemms") > 0, "{report}");
    assert_eq!((total("downloads"), total("synchronizes"), total("frees")), (0, 0, 0), "{report}");
    assert_eq!(total("host_syncs"), 0, "uploads are queued, not waited for: {report}");
    assert!(total("cached_allocations") > total("allocations"), "the warm-up step filled the cache: {report}");
    let kernels = report["kernels"].as_array().unwrap();
    assert_eq!(kernels.len() as u64, total("distinct_kernels"));
    assert_eq!(kernels.iter().map(|k| k["launches"].as_u64().unwrap()).sum::<u64>(), total("launches"));
    let bounds = report["modelled_lower_bounds"].as_array().unwrap();
    assert!(bounds.iter().all(|b| b["total_seconds"].as_f64().unwrap() > 0.0), "{report}");
}

#[test]
fn profile_kernels_reports_the_counters_footprint_and_bound_of_every_kernel_of_a_tiny_step() {
    let json = std::env::temp_dir().join(format!("msclip-profile-kernels-{}.json", std::process::id()));
    let args =
        ["profile", "kernels", "--preset", "tiny", "--batch", "2", "--per-kernel", "--json", json.to_str().unwrap()];
    let out = msclip(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for label in ["ld sec/req", "sect.eff", "/footprint", "smem wf/req", "occupancy", "GEMMs", "h100-sxm", "h200"] {
        assert!(text.contains(label), "missing {label:?} in:\n{text}");
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    let kernels = report["kernels"].as_array().unwrap();
    let row = |name: &str| kernels.iter().find(|k| k["kernel"] == name).unwrap_or_else(|| panic!("{name} in {report}"));
    for k in kernels {
        // Every launch of a step comes from the backend, which states its footprint; a broadcast
        // never makes the used bytes exceed the fetched ones.
        assert!(k["unique_over_footprint"].as_f64().is_some(), "{k}");
        assert!(k["sector_efficiency"].as_f64().unwrap() <= 1.0, "{k}");
    }
    // Counters of defects the profiler found and that were fixed (counts, never timings): the
    // column sums once read 29 sectors per request (rows of a chunk were rows_per_chunk apart),
    // LayerNorm read beta one float per lane at a 16-byte stride.
    for name in ["sum_middle_f32", "layernorm_fwd_f32", "layernorm_bwd_f32", "binary_f32", "adamw_multi"] {
        let efficiency = row(name)["sector_efficiency"].as_f64().unwrap();
        assert!(efficiency >= 0.9, "{name}: sector efficiency {efficiency}");
        let ratio = row(name)["unique_over_footprint"].as_f64().unwrap();
        assert!((0.95..=1.1).contains(&ratio), "{name}: unique bytes {ratio} x the footprint");
    }
    // The conv stem's feature maps become tokens through the tiled transpose, not the gather
    // (12-21% sector efficiency); 36-float rows take 5 sectors for 4.5 sectors' worth of bytes.
    assert!(kernels.iter().all(|k| k["kernel"] != "permute_b4"), "{report}");
    assert!(row("transpose_b4")["sector_efficiency"].as_f64().unwrap() >= 0.89, "{report}");
    // The inner loops of attention and InfoNCE stay within 2-way bank conflicts.
    for k in kernels
        .iter()
        .filter(|k| k["kernel"].as_str().is_some_and(|n| n.starts_with("attention") || n.starts_with("infonce")))
    {
        assert!(k["bank_conflict_factor"].as_f64().is_none_or(|f| f <= 2.0), "{k}");
    }
    let bounds = report["modelled_lower_bounds"].as_array().unwrap();
    let total = |i: usize| bounds[i]["total_seconds"].as_f64().unwrap();
    assert_eq!((bounds[0]["device"].as_str(), bounds[1]["device"].as_str()), (Some("h100-sxm"), Some("h200")));
    assert!(total(0) > total(1) && total(1) > 0.0, "the H200's faster HBM lowers the bound: {report}");
}

#[test]
fn profile_step_refuses_bad_input_by_name() {
    let probes: &[(&[&str], &str)] = &[
        (&["--preset", "vit-h14", "--batch", "2"], "unknown preset \"vit-h14\""),
        (&["--batch", "0"], "--batch must be at least 2"),
        (&["--batch", "2", "--steps", "0"], "--steps must be at least 1"),
        (&["--batch", "2", "--device", "cpu"], "use emu or cuda"),
        (&["--batch", "100000000"], "the largest that fits is about"),
        (&["--batch", "2", "--layers", "0"], "--layers 0 does not fit preset tiny"),
    ];
    for (args, fragment) in probes {
        let out = msclip(&[&["profile", "step"], *args].concat());
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(err.contains(fragment) && !err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn bench_step_times_a_tiny_step_on_the_cpu_and_the_emulator() {
    let json = std::env::temp_dir().join(format!("msclip-bench-{}.json", std::process::id()));
    let path = json.to_str().unwrap();
    let common = ["bench", "step", "--preset", "tiny", "--batch", "3", "--steps", "2", "--warmup", "1", "--json", path];
    let trace = json.with_extension("trace.json");
    let out = msclip(&[&common[..], &["--device", "cpu", "--trace", trace.to_str().unwrap()]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    for label in ["pairs/s", "FLOPs per step", "where the time goes", "gemm", "attention", "optimizer", "other"] {
        assert!(text.contains(label), "missing {label:?} in:\n{text}");
    }
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["step_seconds"].as_array().unwrap().len(), 2, "{report}");
    assert!(report["pairs_per_second"].as_f64().unwrap() > 0.0, "{report}");
    let flops = report["training_flops_per_step"].as_f64().unwrap();
    let forward = &report["forward_flops_per_step"];
    let forward_sum: f64 = ["gemm", "attention", "conv", "loss"].iter().map(|k| forward[k].as_f64().unwrap()).sum();
    assert!(flops > 0.0 && (flops - 3.0 * forward_sum).abs() <= 1e-6 * flops, "{report}");
    assert_eq!(report["breakdown"].as_array().unwrap().len(), 7, "{report}");
    assert!(report["mfu"].is_null() && report["driver_per_step"].is_null(), "{report}");

    // The breakdown step as a Chrome trace: one complete event per backend call, in time order,
    // each named by its method and filed under its kind of op.
    let trace_json: serde_json::Value = serde_json::from_slice(&std::fs::read(&trace).unwrap()).unwrap();
    let _ = std::fs::remove_file(&trace);
    let calls: Vec<&serde_json::Value> =
        trace_json["traceEvents"].as_array().unwrap().iter().filter(|e| e["ph"] == "X").collect();
    let named = |name: &str, kind: &str| calls.iter().any(|e| e["name"] == name && e["cat"] == kind);
    assert!(named("matmul", "gemm") && named("adamw_multi", "optimizer"), "{trace_json}");
    let starts: Vec<f64> = calls.iter().map(|e| e["ts"].as_f64().unwrap()).collect();
    assert!(starts.windows(2).all(|w| w[0] <= w[1]), "events in time order: {starts:?}");
    assert!(calls.iter().all(|e| e["dur"].as_f64().unwrap() >= 0.0));

    // The emulator, op by op, two-pass and with attention unfused: driver counts per step, and
    // modelled bounds per kind of op.
    let eager = ["--device", "emu", "--cuda-graph", "off", "--unfused", "modality,attention"];
    let out = msclip(&[&common[..], &eager].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["fusion"], "unfused: modality, attention", "{report}");
    assert_eq!(report["cuda_graph"], false, "{report}");
    let driver = &report["driver_per_step"];
    assert!(driver["launches"].as_f64().unwrap() > 0.0, "{report}");
    assert_eq!(driver["graph_launches"].as_f64(), Some(0.0), "{report}");
    assert_eq!(driver["host_syncs"].as_f64(), Some(1.0), "only the loss read: {report}");
    let gemm = &report["breakdown"][0];
    assert_eq!(gemm["op"], "gemm");
    assert!(gemm["h200_bound_seconds"].as_f64().unwrap() > 0.0, "{report}");

    // The default on a GPU device: each timed step one launch of the step captured after the
    // first warm-up step (so two are needed), here in bf16 with attention forced into one
    // tile shape.
    let graphed = ["--device", "emu", "--precision", "bf16", "--kernel", "attention=q32k32", "--data", "synthetic"];
    let out = msclip(&[&common[..], &graphed].concat());
    assert!(!out.status.success() && stderr(&out).contains("--warmup 2"), "{}", stderr(&out));
    let two_warmups = common.map(|arg| if arg == "1" { "2" } else { arg });
    let out = msclip(&[&two_warmups[..], &graphed].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let _ = std::fs::remove_file(&json);
    assert_eq!(report["kernels"], serde_json::json!(["attention=q32k32"]), "{report}");
    assert_eq!(report["data"], "synthetic", "{report}");
    assert_eq!(report["cuda_graph"], true, "{report}");
    assert_eq!(report["graph_captures_timed"], 0, "{report}");
    let driver = &report["driver_per_step"];
    // The one launch outside the graph casts the step's uploaded images to bf16.
    for (count, want) in [("graph_launches", 1.0), ("launches", 1.0), ("allocations", 0.0), ("host_syncs", 1.0)] {
        assert_eq!(driver[count].as_f64(), Some(want), "{count}: {report}");
    }
}

#[test]
fn bench_chart_draws_our_steps_beside_pytorch_as_one_png() {
    let dir = std::env::temp_dir().join(format!("msclip-chart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ours = dir.join("ours.json");
    let common =
        ["bench", "step", "--preset", "tiny", "--batch", "2", "--steps", "1", "--warmup", "1", "--device", "cpu"];
    let out = msclip(&[&common[..], &["--json", ours.to_str().unwrap()]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    // benches/pytorch_reference.py --json, two models.
    let torch = dir.join("torch.json");
    let result = |model: &str, ms: f64| serde_json::json!({ "model": model, "batch": 2, "step_ms_median": ms });
    let report = serde_json::json!({ "device": "cpu", "results": [result("tiny", 40.0), result("tiny-clip", 30.0)] });
    std::fs::write(&torch, report.to_string()).unwrap();
    let png = dir.join("step.png");
    let out =
        msclip(&["bench", "chart", ours.to_str().unwrap(), torch.to_str().unwrap(), "--out", png.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("(3 bars)"));
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    // The IHDR chunk: 1400 wide, one row of 56 px per bar under a 140 px frame.
    let (width, height) = (&bytes[16..20], &bytes[20..24]);
    assert_eq!(
        (u32::from_be_bytes(width.try_into().unwrap()), u32::from_be_bytes(height.try_into().unwrap())),
        (1400, 308)
    );

    // A file that is neither kind is named in the error, and nothing is written.
    let other = dir.join("other.json");
    std::fs::write(&other, "{\"loss\": 1}").unwrap();
    let png2 = dir.join("none.png");
    let out = msclip(&["bench", "chart", other.to_str().unwrap(), "--out", png2.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("other.json") && err.contains("breakdown"), "{err}");
    assert!(!png2.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bench_step_refuses_a_bad_unfused_name() {
    let out = msclip(&["bench", "step", "--batch", "2", "--unfused", "everything"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("modality"), "{}", stderr(&out));
}

#[test]
fn bench_step_refuses_kernel_choices_that_cannot_apply() {
    let probes: [(&[&str], &str); 3] = [
        (&["--kernel", "attention=q16k16", "--precision", "bf16"], "q64k64"),
        (&["--kernel", "softmax=fast"], "attention does"),
        (&["--kernel", "attention=q32k32"], "--precision bf16"),
    ];
    for (args, fragment) in probes {
        let out = msclip(&[&["bench", "step", "--batch", "2", "--device", "emu"], args].concat());
        let err = stderr(&out);
        assert!(!out.status.success() && err.contains(fragment) && !err.contains("panicked"), "{args:?}: {err}");
    }
}

/// An Nsight Compute CSV (details page, as `--csv --metrics` writes it): two launches of one
/// kernel and one GEMM, with the speed-of-light metrics, units as ncu writes them.
const NCU_CSV: &str = r#"==PROF== Connected to process 7 (msclip)
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"
"0","7","msclip","h","col2im_bf16","1","13","(256, 1, 1)","(2352, 256, 1)","0","9.0","Command line profiler metrics","gpu__time_duration.sum","ns","1,000,000"
"0","7","msclip","h","col2im_bf16","1","13","(256, 1, 1)","(2352, 256, 1)","0","9.0","Command line profiler metrics","dram__bytes_read.sum","byte","600,000,000"
"0","7","msclip","h","col2im_bf16","1","13","(256, 1, 1)","(2352, 256, 1)","0","9.0","Command line profiler metrics","dram__bytes_write.sum","Mbyte","400"
"0","7","msclip","h","col2im_bf16","1","13","(256, 1, 1)","(2352, 256, 1)","0","9.0","Command line profiler metrics","gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed","%","20"
"0","7","msclip","h","col2im_bf16","1","13","(256, 1, 1)","(2352, 256, 1)","0","9.0","Command line profiler metrics","sm__throughput.avg.pct_of_peak_sustained_elapsed","%","40"
"1","7","msclip","h","col2im_bf16","1","13","(256, 1, 1)","(2352, 256, 1)","0","9.0","Command line profiler metrics","gpu__time_duration.sum","us","3,000"
"1","7","msclip","h","col2im_bf16","1","13","(256, 1, 1)","(2352, 256, 1)","0","9.0","Command line profiler metrics","dram__bytes_read.sum","Gbyte","2"
"1","7","msclip","h","col2im_bf16","1","13","(256, 1, 1)","(2352, 256, 1)","0","9.0","Command line profiler metrics","dram__bytes_write.sum","byte","1,000,000,000"
"1","7","msclip","h","col2im_bf16","1","13","(256, 1, 1)","(2352, 256, 1)","0","9.0","Command line profiler metrics","gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed","%","60"
"1","7","msclip","h","col2im_bf16","1","13","(256, 1, 1)","(2352, 256, 1)","0","9.0","Command line profiler metrics","sm__throughput.avg.pct_of_peak_sustained_elapsed","%","20"
"2","7","msclip","h","nvjet_sm90_tst_128x256_64x4_2x1_v_bz_coopA_NNN","1","13","(384, 1, 1)","(2, 66, 1)","0","9.0","Command line profiler metrics","gpu__time_duration.sum","ms","0.5"
"2","7","msclip","h","nvjet_sm90_tst_128x256_64x4_2x1_v_bz_coopA_NNN","1","13","(384, 1, 1)","(2, 66, 1)","0","9.0","Command line profiler metrics","dram__bytes_read.sum","byte","100,000,000"
"2","7","msclip","h","nvjet_sm90_tst_128x256_64x4_2x1_v_bz_coopA_NNN","1","13","(384, 1, 1)","(2, 66, 1)","0","9.0","Command line profiler metrics","dram__bytes_write.sum","byte","50,000,000"
"2","7","msclip","h","nvjet_sm90_tst_128x256_64x4_2x1_v_bz_coopA_NNN","1","13","(384, 1, 1)","(2, 66, 1)","0","9.0","Command line profiler metrics","gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed","%","30"
"2","7","msclip","h","nvjet_sm90_tst_128x256_64x4_2x1_v_bz_coopA_NNN","1","13","(384, 1, 1)","(2, 66, 1)","0","9.0","Command line profiler metrics","sm__throughput.avg.pct_of_peak_sustained_elapsed","%","85"
"#;

/// scripts/kernel_times.py sums an Nsight Compute CSV per kernel and launch shape (times in
/// any unit, bytes scaled or not, the speed of light weighted by time), and `bench roofline`
/// draws its JSON; without the speed-of-light fields the chart is refused and nothing written.
#[test]
fn kernel_times_and_the_roofline_chart_read_nsight_compute() {
    let dir = std::env::temp_dir().join(format!("msclip-roofline-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (csv, json) = (dir.join("ncu.csv"), dir.join("kernels.json"));
    std::fs::write(&csv, NCU_CSV).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/kernel_times.py");
    let out = Command::new("python3")
        .args([script, csv.to_str().unwrap(), "--steps", "1", "--json", json.to_str().unwrap()])
        .output()
        .expect("python3 runs (CI installs it)");
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["launches_per_step"], 3.0, "{report}");
    let col2im = &report["kernels"][0];
    assert_eq!((col2im["name"].as_str(), col2im["calls_per_step"].as_f64()), (Some("col2im_bf16"), Some(2.0)));
    let close = |v: &serde_json::Value, want: f64| (v.as_f64().unwrap() - want).abs() < 1e-9 * want.max(1.0);
    // 4 ms in all; 1 GB + 3 GB over it; (20% x 1 ms + 60% x 3 ms) / 4 ms; (40 x 1 + 20 x 3) / 4.
    assert!(close(&col2im["ms_per_step"], 4.0), "{col2im}");
    assert!(close(&col2im["dram_gb_per_s"], 1000.0), "{col2im}");
    assert!(close(&col2im["memory_sol_percent"], 50.0), "{col2im}");
    assert!(close(&col2im["compute_sol_percent"], 25.0), "{col2im}");
    assert_eq!(report["kernels"][1]["kind"], "gemm", "{report}");

    let png = dir.join("roofline.png");
    let out = msclip(&["bench", "roofline", json.to_str().unwrap(), "--out", png.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!((&bytes[16..20], &bytes[20..24]), (&1100u32.to_be_bytes()[..], &1100u32.to_be_bytes()[..]));

    // Time alone (the quick pass): no chart, and the error says what is missing.
    let timing_only: String =
        NCU_CSV.lines().filter(|l| !l.contains("throughput") && !l.contains("dram")).collect::<Vec<_>>().join("\n");
    std::fs::write(&csv, timing_only).unwrap();
    let out = Command::new("python3")
        .args([script, csv.to_str().unwrap(), "--json", json.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let png2 = dir.join("none.png");
    let out = msclip(&["bench", "roofline", json.to_str().unwrap(), "--out", png2.to_str().unwrap()]);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("memory_sol_percent") && !err.contains("panicked"), "{err}");
    assert!(!png2.exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_data_parallel_world_off_the_gpu_is_refused_on_every_rank() {
    let out = "/tmp/msclip-cli-world";
    // As torchrun would start a rank on the CPU.
    let rank = Command::new(env!("CARGO_BIN_EXE_msclip"))
        .args(["train", "--preset", "tiny-clip", "--steps", "1", "--output", out])
        .envs([("WORLD_SIZE", "2"), ("RANK", "1"), ("LOCAL_RANK", "1")])
        .output()
        .unwrap();
    assert_eq!(rank.status.code(), Some(1));
    assert!(
        stderr(&rank).contains("WORLD_SIZE=2 asks for data-parallel training, which runs on GPUs"),
        "{}",
        stderr(&rank)
    );
    let bad = Command::new(env!("CARGO_BIN_EXE_msclip"))
        .args(["train", "--output", out])
        .envs([("WORLD_SIZE", "2")])
        .output()
        .unwrap();
    assert!(stderr(&bad).contains("RANK must be too"), "{}", stderr(&bad));
    // --nproc starts the ranks, each refuses, and the launcher says which failed.
    let launched = msclip(&["train", "--nproc", "2", "--preset", "tiny-clip", "--steps", "1", "--output", out]);
    assert_eq!(launched.status.code(), Some(1));
    let err = stderr(&launched);
    assert!(err.contains("of 2 failed") && err.contains("runs on GPUs through NCCL"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
