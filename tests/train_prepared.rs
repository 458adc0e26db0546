//! Training on a prepared dataset (`msclip train --data DIR`, issue 16): the batch of a step is
//! a pure function of (seed, step), so a run stopped mid-epoch resumes to the same bits; the
//! captions are tokenized again with the run's tokenizer; a dataset at another resolution, one
//! that changed under a resumed run, a missing index and too few samples are clear errors; and
//! the command line prepares, trains and evaluates retrieval end to end.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use msclip::data::shapes::{self, ShapesConfig, Split};
use msclip::data::shards::ShardWriter;
use msclip::train::{
    PreparedData, Resume, RunOptions, TrainConfig, TrainingData, new_run_tokenizer, read_jsonl, train,
};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("msclip-prepared-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Stored ids of the fixture: a context of 4 zeros, which a batch must never use (the run's
/// tokenizer makes its own rows).
const STORED_CONTEXT: usize = 4;

/// `dir`, a prepared dataset of shapes-world pairs `0..n` at `size` px, in shards of 7.
fn prepared(dir: &Path, n: usize, size: usize) -> PathBuf {
    let world = ShapesConfig { image_size: size, ..ShapesConfig::tiny() };
    let mut writer = ShardWriter::create(dir, size, STORED_CONTEXT, Some(7)).unwrap();
    for (i, sample) in shapes::samples(&world, Split::Seen, 0..n as u64).into_iter().enumerate() {
        let line = msclip::data::shards::CaptionLine { key: format!("{i:03}"), caption: sample.caption };
        writer.push(&sample.image, &[0; STORED_CONTEXT], &line).unwrap();
    }
    writer.finish("none".into(), format!("{n} shapes-world pairs"), BTreeMap::new(), 0).unwrap();
    dir.to_path_buf()
}

/// A few-second run of `tiny` on the prepared dataset in `data`, batches of 8.
fn config(name: &str, out: &Path, data: &Path, steps: u64) -> TrainConfig {
    let mut c = TrainConfig::tiny_default();
    (c.name, c.output_dir, c.steps, c.batch_size, c.warmup_steps) = (name.into(), out.to_path_buf(), steps, 8, 2);
    (c.save_every, c.eval_samples, c.quick_eval_every) = (1000, 16, 0);
    c.train_data = Some(PreparedData::read(data).unwrap());
    c
}

fn quiet() -> RunOptions {
    RunOptions { quiet: true, ..Default::default() }
}

fn losses(run_dir: &Path) -> Vec<u64> {
    read_jsonl(&run_dir.join("train_loss.jsonl"))
        .unwrap()
        .iter()
        .map(|r| r["loss"].as_f64().unwrap().to_bits())
        .collect()
}

fn param_bits(summary: &msclip::train::RunSummary) -> Vec<Vec<u64>> {
    summary.params.ids().map(|id| summary.params.get(id).to_f64_vec().iter().map(|v| v.to_bits()).collect()).collect()
}

#[test]
fn a_steps_batch_depends_on_the_step_alone_and_its_captions_are_tokenized_again() {
    let dir = scratch("batches");
    let data = prepared(&dir.join("d"), 21, 48);
    let config = config("b", &dir, &data, 10);
    let model = config.model_config().unwrap();
    let tokenizer = new_run_tokenizer(&config, &msclip::model::ClipModel::new(model.clone()).unwrap()).unwrap();
    let walked = TrainingData::open(&config, &model).unwrap();
    let path: Vec<_> = (0..8).map(|k| walked.batch(k, &tokenizer, &model).unwrap()).collect();
    for k in [6u64, 2, 7, 0] {
        let fresh = TrainingData::open(&config, &model).unwrap().batch(k, &tokenizer, &model).unwrap();
        let want = &path[k as usize];
        assert_eq!((&fresh.captions, &fresh.tokens), (&want.captions, &want.tokens), "step {k}");
        assert_eq!(fresh.images.to_f64_vec(), want.images.to_f64_vec(), "step {k}");
    }
    // 21 pairs in batches of 8 make two batches an epoch; the next epoch is another order.
    assert_ne!(path[0].captions, path[2].captions);
    // Rows of the run's tokenizer in the model's context, not the stored zeros.
    let context = model.text.context;
    assert_eq!(path[0].tokens.len(), 8 * context);
    assert!(path[0].tokens.chunks(context).all(|row| row[0] == tokenizer.sot() && row.contains(&tokenizer.eot())));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_run_stopped_mid_epoch_resumes_to_the_same_bits_and_evaluates_retrieval() {
    let dir = scratch("resume");
    let data = prepared(&dir.join("d"), 21, 48);
    let val = prepared(&dir.join("val"), 12, 48);
    // 7 steps of two batches an epoch: the stop after step 3 is inside the second epoch.
    let with_val = |name: &str| TrainConfig { val_data: Some(val.clone()), ..config(name, &dir, &data, 7) };
    let full = train(&with_val("full"), &quiet()).unwrap();
    let half = with_val("half");
    train(&half, &RunOptions { stop_after: Some(3), quiet: true, ..Default::default() }).unwrap();
    let resumed =
        train(&half, &RunOptions { resume: Some(Resume::Latest), quiet: true, ..Default::default() }).unwrap();
    assert_eq!(resumed.steps_done, 7);
    assert_eq!(losses(&dir.join("half")), losses(&dir.join("full")), "the losses of the 7 steps");
    assert_eq!(param_bits(&resumed), param_bits(&full), "resumed weights differ from the uninterrupted run");
    // The final evaluation: retrieval of the validation set, CLIP_benchmark's names.
    let results = read_jsonl(&dir.join("half/results.jsonl")).unwrap();
    let last = results.last().unwrap();
    assert_eq!((last["step"].as_u64(), last["val_images"].as_u64()), (Some(7), Some(12)), "{last}");
    for key in ["image_retrieval_recall@1", "text_retrieval_recall@5", "image_retrieval_median_rank"] {
        assert!(last[key].is_number(), "{key} missing from {last}");
    }
    assert!(full.eval.is_none(), "no shapes-world probes on prepared data");
    for file in ["tokenizer.json", "loss.png", "accuracy.png"] {
        assert!(dir.join("half").join(file).exists(), "missing {file}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn another_resolution_a_changed_dataset_and_too_few_samples_are_clear_errors() {
    let dir = scratch("errors");
    let small = prepared(&dir.join("small"), 9, 32);
    let err = train(&config("r", &dir, &small, 2), &quiet()).unwrap_err().to_string();
    assert!(err.contains("32 px") && err.contains("48 px") && err.contains("--resolution 48"), "{err}");
    let data = prepared(&dir.join("d"), 21, 48);
    let mut val = config("v", &dir, &data, 2);
    val.val_data = Some(small.clone());
    let err = train(&val, &quiet()).unwrap_err().to_string();
    assert!(err.contains("--val-data") && err.contains("32 px"), "{err}");
    assert!(!dir.join("r").exists() && !dir.join("v").exists(), "refused before anything was written");

    // The folder is prepared again, with fewer pairs, under a run that stopped.
    let run = config("c", &dir, &data, 4);
    train(&run, &RunOptions { stop_after: Some(1), quiet: true, ..Default::default() }).unwrap();
    std::fs::remove_dir_all(&data).unwrap();
    prepared(&data, 17, 48);
    let err = train(&run, &RunOptions { resume: Some(Resume::Latest), quiet: true, ..Default::default() })
        .unwrap_err()
        .to_string();
    assert!(err.contains("changed since the run began") && err.contains("21 samples then, 17 now"), "{err}");

    // Fewer pairs than a batch, none at all, and no index.
    let five = prepared(&dir.join("five"), 5, 48);
    let err = train(&config("f", &dir, &five, 2), &quiet()).unwrap_err().to_string();
    assert!(err.contains("5 samples, fewer than one batch of 8"), "{err}");
    let empty = dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let err = PreparedData::read(&empty).unwrap_err().to_string();
    assert!(err.contains("no readable index.json"), "{err}");
    let mut index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(five.join("index.json")).unwrap()).unwrap();
    (index["samples"], index["shards"]) = (0.into(), serde_json::json!([]));
    std::fs::write(empty.join("index.json"), index.to_string()).unwrap();
    let err = train(&config("e", &dir, &empty, 2), &quiet()).unwrap_err().to_string();
    assert!(err.contains("holds no samples"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

fn msclip_in(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_msclip")).current_dir(dir).args(args).output().expect("the binary runs")
}

fn assert_success(out: &Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{what} failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

#[test]
fn the_command_line_prepares_trains_and_evaluates_retrieval() {
    let dir = scratch("cli");
    let colours =
        [("red", [220, 30, 30]), ("green", [30, 200, 60]), ("blue", [40, 60, 220]), ("yellow", [240, 220, 40])];
    let mut listing = String::from("filepath\ttitle\n");
    for (i, (name, rgb)) in colours.iter().cycle().take(12).enumerate() {
        let mut image = image::RgbImage::from_pixel(40 + i as u32, 48, image::Rgb(*rgb));
        image.put_pixel(3, 3 + i as u32, image::Rgb([0, 0, 0]));
        image.save(dir.join(format!("{i}.png"))).unwrap();
        listing.push_str(&format!("{i}.png\ta {name} picture number {i}\n"));
    }
    std::fs::write(dir.join("pairs.tsv"), listing).unwrap();
    let out = msclip_in(&dir, &["prepare", "--input", "pairs.tsv", "--out", "d", "--resolution", "48"]);
    assert_success(&out, "prepare");

    let run = ["train", "--data", "d", "--val-data", "d", "--steps", "3", "--batch-size", "4", "--name", "p"];
    let stdout = assert_success(&msclip_in(&dir, &run), "train");
    assert!(stdout.contains("training on 12 pairs: 3 batches an epoch"), "{stdout}");
    assert!(stdout.contains("validation retrieval: image retrieval R@1/5/10"), "{stdout}");
    let results = read_jsonl(&dir.join("runs/p/results.jsonl")).unwrap();
    assert_eq!(results.last().unwrap()["step"].as_u64(), Some(3));
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("runs/p/config.json")).unwrap()).unwrap();
    assert_eq!(saved["train"]["train_data"]["samples"].as_u64(), Some(12), "{saved}");

    // `eval` measures what the run's evaluations measured: the validation retrieval.
    let stdout = assert_success(&msclip_in(&dir, &["eval", "--run", "runs/p"]), "eval");
    assert!(stdout.contains("at step 3\nvalidation retrieval: image retrieval R@1/5/10"), "{stdout}");
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("runs/p/eval.json")).unwrap()).unwrap();
    assert_eq!((record["task"].as_str(), record["images"].as_u64()), (Some("zeroshot_retrieval"), Some(12)));
    let logged = &results.last().unwrap()["image_retrieval_recall@1"];
    assert_eq!(&record["metrics"]["image_retrieval_recall@1"], logged, "the same weights, the same recall");
    let out = msclip_in(&dir, &["eval", "--run", "runs/p", "--heatmaps", "h.png"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--heatmaps draws the shapes world"));

    // Shapes-world flags and a resume on other data (a copy elsewhere) are refused.
    let out = msclip_in(&dir, &["train", "--data", "d", "--hard-negatives", "2", "--name", "q"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--hard-negatives belongs to the shapes world"));
    std::fs::create_dir_all(dir.join("e")).unwrap();
    for entry in std::fs::read_dir(dir.join("d")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join("e").join(path.file_name().unwrap())).unwrap();
    }
    let out = msclip_in(&dir, &["train", "--resume", "latest", "--name", "p", "--data", "e", "--steps", "4"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success() && err.contains("train_data"), "{err}");
    // A run without a validation dataset is pointed to `benchmark`.
    assert_success(
        &msclip_in(&dir, &["train", "--data", "d", "--steps", "1", "--batch-size", "4", "--name", "nv"]),
        "train",
    );
    let out = msclip_in(&dir, &["eval", "--run", "runs/nv"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success() && err.contains("msclip benchmark --run runs/nv --task zeroshot_retrieval"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
