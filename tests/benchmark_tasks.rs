//! `msclip benchmark`: CLIP_benchmark's zero-shot classification of an image folder and
//! retrieval on a prepared dataset with several captions per image, for a run's model; the
//! record written and appended to the run's results.jsonl; bad inputs refused by name.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::reference::{MSCLIP_WEIGHTS, msclip_config};

use image::{DynamicImage, ImageBuffer, ImageFormat, Rgb};

fn msclip_in(dir: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_msclip")).current_dir(dir).args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("msclip-benchmark-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write_png(path: &Path, rgb: [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    DynamicImage::ImageRgb8(ImageBuffer::from_pixel(40, 30, Rgb(rgb)))
        .save_with_format(path, ImageFormat::Png)
        .unwrap();
}

fn record(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn both_tasks_report_clip_benchmark_metrics_and_refuse_bad_input() {
    let dir = scratch("tasks");
    let train =
        ["train", "--preset", "tiny-clip", "--name", "c", "--steps", "2", "--batch-size", "4", "--eval-samples", "4"];
    let out = msclip_in(&dir, &train);
    assert!(out.status.success(), "{}", stderr(&out));

    // Zero-shot classification: three classes named by classnames.txt, one unreadable image.
    for (class, rgb) in [("a_red", [250, 0, 0]), ("b_green", [0, 250, 0]), ("c_blue", [0, 0, 250])] {
        for i in 0..2 {
            write_png(&dir.join("folder").join(class).join(format!("{i}.png")), rgb);
        }
    }
    std::fs::write(dir.join("folder/c_blue/broken.jpg"), b"not an image").unwrap();
    std::fs::write(dir.join("folder/classnames.txt"), "red square\ngreen square\nblue square\n").unwrap();
    std::fs::write(dir.join("templates.txt"), "a {} on white\na picture of a {c}\n").unwrap();
    let args = ["benchmark", "--run", "runs/c", "--task", "zeroshot_classification", "--dataset", "folder"];
    let out = msclip_in(&dir, &[&args[..], &["--templates", "templates.txt", "--output", "zs.json"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("(3 classes, 6 images, 2 templates)") && printed.contains("skipped 1 image"), "{printed}");
    let zs = record(&dir.join("zs.json"));
    assert_eq!(zs["task"], "zeroshot_classification");
    assert_eq!(zs["checkpoint_step"], 2);
    let metrics = &zs["metrics"];
    assert_eq!(metrics["acc5"], 1.0, "three classes are always in the top five");
    for key in ["acc1", "mean_per_class_recall"] {
        let v = metrics[key].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&v), "{key} {v}");
    }

    // Retrieval: four captions of three images (red twice), prepared at the model's 48 px.
    write_png(&dir.join("img/red.png"), [250, 0, 0]);
    write_png(&dir.join("img/green.png"), [0, 250, 0]);
    write_png(&dir.join("img/blue.png"), [0, 0, 250]);
    let listing = "filepath\ttitle\nimg/red.png\ta red square\nimg/green.png\ta green square\nimg/red.png\tsomething red\nimg/blue.png\ta blue square\n";
    std::fs::write(dir.join("pairs.tsv"), listing).unwrap();
    for (out_dir, resolution) in [("p48", "48"), ("p32", "32")] {
        let args = ["prepare", "--input", "pairs.tsv", "--out", out_dir, "--resolution", resolution, "--context", "32"];
        let out = msclip_in(&dir, &args);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let args = ["benchmark", "--run", "runs/c", "--task", "zeroshot_retrieval", "--dataset", "p48"];
    let out = msclip_in(&dir, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("(3 images, 4 captions)"));
    let metrics = &record(&dir.join("runs/c/benchmark_zeroshot_retrieval.json"))["metrics"];
    assert_eq!(metrics["image_retrieval_recall@5"], 1.0, "every caption's image is among the three");
    assert_eq!(metrics["text_retrieval_recall@5"], 1.0, "every image's captions are among the four");
    assert!(metrics["image_retrieval_mean_rank"].as_f64().unwrap() <= 3.0);
    let results = std::fs::read_to_string(dir.join("runs/c/results.jsonl")).unwrap();
    let tasks: Vec<serde_json::Value> = results
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r.get("task").is_some())
        .collect();
    assert_eq!(tasks.len(), 2, "both records appended to results.jsonl");

    // The linear probe: fitted on one folder, tested on another with the same classes.
    for (class, rgb) in [("a_red", [240, 10, 10]), ("b_green", [10, 240, 10]), ("c_blue", [10, 10, 240])] {
        for i in 0..4 {
            write_png(&dir.join("train").join(class).join(format!("{i}.png")), rgb);
        }
    }
    std::fs::write(dir.join("train/classnames.txt"), "red square\ngreen square\nblue square\n").unwrap();
    write_png(&dir.join("other/x/0.png"), [1, 2, 3]);
    let args =
        ["benchmark", "--run", "runs/c", "--task", "linear_probe", "--dataset", "folder", "--train-dataset", "train"];
    let out = msclip_in(&dir, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let probe = record(&dir.join("runs/c/benchmark_linear_probe.json"));
    // Solid colours are separable on any features that see colour: the probe finds them.
    assert_eq!(probe["metrics"]["acc1"], 1.0, "{probe}");
    assert!(probe["metrics"]["l2_penalty"].as_f64().unwrap() > 0.0);

    for (args, want) in [
        (vec!["--task", "zeroshot_retrieval", "--dataset", "p32"], "prepare it again with --resolution 48"),
        (vec!["--task", "zeroshot_retrieval", "--dataset", "folder"], "not a prepared dataset"),
        (vec!["--task", "zeroshot_classification", "--dataset", "img"], "no class sub-folders"),
        (
            vec!["--task", "zeroshot_classification", "--dataset", "folder", "--classnames", "pairs.tsv"],
            "class names for 3 class folders",
        ),
        (
            vec!["--task", "zeroshot_classification", "--dataset", "folder", "--templates", "pairs.tsv"],
            "each with {} or {c}",
        ),
        (
            vec!["--task", "zeroshot_retrieval", "--dataset", "p48", "--templates", "templates.txt"],
            "belongs to --task zeroshot_classification",
        ),
        (vec!["--task", "linear_probe", "--dataset", "folder"], "--train-dataset"),
        (vec!["--task", "zeroshot_classification", "--dataset", "folder", "--train-dataset", "train"], "only with it"),
        (vec!["--task", "linear_probe", "--dataset", "folder", "--train-dataset", "other"], "other classes"),
    ] {
        let out = msclip_in(&dir, &[&["benchmark", "--run", "runs/c"][..], &args].concat());
        assert!(
            !out.status.success() && stderr(&out).contains(want),
            "{args:?}: expected {want:?} in:\n{}",
            stderr(&out)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A float32 .npy's shape and values.
fn read_npy(path: &Path) -> ((usize, usize), Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + len]).unwrap();
    assert!(header.contains("'descr': '<f4'"), "{header}");
    let shape = header.split("'shape': (").nth(1).unwrap().split(')').next().unwrap();
    let dims: Vec<usize> = shape.split(',').filter_map(|d| d.trim().parse().ok()).collect();
    let values = bytes[10 + len..].chunks_exact(4).map(|w| f32::from_le_bytes(w.try_into().unwrap())).collect();
    ((dims[0], dims[1]), values)
}

#[test]
fn encode_writes_normalised_embeddings_and_their_names() {
    let dir = scratch("encode");
    let train =
        ["train", "--preset", "tiny-clip", "--name", "c", "--steps", "1", "--batch-size", "4", "--eval-samples", "0"];
    assert!(msclip_in(&dir, &train).status.success());
    write_png(&dir.join("imgs/b.png"), [0, 0, 250]);
    write_png(&dir.join("imgs/a.png"), [250, 0, 0]);
    std::fs::write(dir.join("imgs/notes.txt"), "not an image").unwrap();
    std::fs::write(dir.join("imgs/c.jpg"), "not a jpeg").unwrap();
    std::fs::write(dir.join("texts.txt"), "a red square\n\na blue square\na red square\n").unwrap();
    let run = ["encode", "--run", "runs/c"];
    let out = msclip_in(&dir, &[&run[..], &["--images", "imgs", "--out", "i.npy"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("skipped 1 image(s): imgs/c.jpg"), "{}", stderr(&out));
    let ((n, d), values) = read_npy(&dir.join("i.npy"));
    assert_eq!((n, d), (2, 128));
    assert_eq!(std::fs::read_to_string(dir.join("i.txt")).unwrap(), "imgs/a.png\nimgs/b.png\n");
    for row in values.chunks_exact(d) {
        let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    }
    let out = msclip_in(&dir, &[&run[..], &["--texts", "texts.txt", "--out", "t.npy"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let ((n, d), values) = read_npy(&dir.join("t.npy"));
    assert_eq!((n, d), (3, 128));
    assert_eq!(values[..d], values[2 * d..], "the same text, the same embedding");
    assert_ne!(values[..d], values[d..2 * d]);
    for (args, want) in [
        (vec!["--out", "x.npy"], "--images"),
        (vec!["--images", "nowhere", "--out", "x.npy"], "--images nowhere"),
        (vec!["--texts", "imgs/notes.txt", "--images", "imgs", "--out", "x.npy"], "cannot be used with"),
        (vec!["--images", "imgs", "--out", "imgs"], "is a directory"),
    ] {
        let out = msclip_in(&dir, &[&run[..], &args].concat());
        assert!(
            !out.status.success() && stderr(&out).contains(want),
            "{args:?}: expected {want:?} in:\n{}",
            stderr(&out)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn encode_reads_the_original_msclip_codes_weights_into_an_msclip_run() {
    // A run directory of the reference MS-CLIP-S (tests/common/reference.rs): a tiny-msclip-s
    // run whose config names that model instead; its own checkpoint is not read.
    let dir = scratch("encode-msclip");
    let train = [
        "train",
        "--preset",
        "tiny-msclip-s",
        "--name",
        "m",
        "--steps",
        "1",
        "--batch-size",
        "4",
        "--eval-samples",
        "0",
    ];
    assert!(msclip_in(&dir, &train).status.success());
    let config_path = dir.join("runs/m/config.json");
    let mut config = record(&config_path);
    config["model"] = serde_json::to_value(msclip_config()).unwrap();
    std::fs::write(&config_path, config.to_string()).unwrap();
    write_png(&dir.join("imgs/a.png"), [250, 0, 0]);
    write_png(&dir.join("imgs/b.png"), [0, 0, 250]);
    let weights = Path::new(env!("CARGO_MANIFEST_DIR")).join(MSCLIP_WEIGHTS);
    let args =
        ["encode", "--run", "runs/m", "--weights", weights.to_str().unwrap(), "--images", "imgs", "--out", "i.npy"];
    let out = msclip_in(&dir, &args);
    assert!(out.status.success(), "{}", stderr(&out));
    let ((n, d), values) = read_npy(&dir.join("i.npy"));
    assert_eq!((n, d), (2, 20));
    for row in values.chunks_exact(d) {
        let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{norm}");
    }
    let not_weights = ["encode", "--run", "runs/m", "--weights", "i.npy", "--images", "imgs", "--out", "j.npy"];
    let out = msclip_in(&dir, &not_weights);
    assert!(
        !out.status.success() && stderr(&out).contains("i.npy: not a readable safetensors file"),
        "{}",
        stderr(&out)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
