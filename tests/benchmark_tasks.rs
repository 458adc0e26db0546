//! `msclip benchmark`: CLIP_benchmark's zero-shot classification of an image folder and
//! retrieval on a prepared dataset with several captions per image, for a run's model; the
//! record written and appended to the run's results.jsonl; bad inputs refused by name.

use std::path::{Path, PathBuf};
use std::process::Output;

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
