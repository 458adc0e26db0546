//! `msclip benchmark`: CLIP_benchmark's tasks on real data for a run's model, named and
//! reported as `clip_benchmark eval` does: `--task zeroshot_classification` on an image folder
//! (acc1, acc5, mean per-class recall) and `--task zeroshot_retrieval` on a prepared dataset
//! (image and text retrieval recall@1/5/10, mean and median rank), `--task linear_probe`
//! (logistic regression on frozen image features of `--train-dataset`, scored on `--dataset`).
//! The record goes to `--output`
//! and is appended to the run's results.jsonl.

use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use msclip::data::shards::PreparedDataset;
use msclip::eval::benchmark::{
    DEFAULT_TEMPLATES, ImageFolder, image_folder_features, retrieval, zero_shot_image_folder,
};
use msclip::eval::linear_probe::{Labelled, linear_probe};
use msclip::train::append_jsonl;
use serde_json::json;

use super::run_model::{RunModel, RunWeightsArgs};

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "snake_case")]
enum Task {
    ZeroshotClassification,
    ZeroshotRetrieval,
    LinearProbe,
}

#[derive(Args)]
pub struct BenchmarkArgs {
    #[command(flatten)]
    source: RunWeightsArgs,
    #[arg(long, value_enum)]
    task: Task,
    /// zeroshot_classification and linear_probe (its test split): an image folder
    /// (DIR/<class>/<image>); zeroshot_retrieval: a folder `msclip prepare` wrote (samples with
    /// the same image key are one image).
    #[arg(long)]
    dataset: PathBuf,
    /// linear_probe: the image folder the probe is fitted on (same classes as --dataset).
    #[arg(long)]
    train_dataset: Option<PathBuf>,
    /// linear_probe: the seed of the validation split that chooses the L2 penalty.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Class names, one per line in sorted folder order [default: DIR/classnames.txt, else the
    /// folder names].
    #[arg(long)]
    classnames: Option<PathBuf>,
    /// Prompt templates, one per line, `{}` or `{c}` standing for the class name [default: "a photo of a {}."].
    #[arg(long)]
    templates: Option<PathBuf>,
    /// Where to write the JSON record [default: <run>/benchmark_<task>.json].
    #[arg(long)]
    output: Option<PathBuf>,
}

fn read_templates(path: Option<&Path>) -> anyhow::Result<Vec<String>> {
    let Some(path) = path else { return Ok(DEFAULT_TEMPLATES.iter().map(|t| t.to_string()).collect()) };
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("--templates {}: {e}", path.display()))?;
    let templates: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
    if templates.is_empty() || templates.iter().any(|t| !t.contains("{}") && !t.contains("{c}")) {
        anyhow::bail!(
            "--templates {}: give one template per line, each with {{}} or {{c}} for the class name",
            path.display()
        );
    }
    Ok(templates)
}

pub fn run(args: BenchmarkArgs) -> anyhow::Result<()> {
    let name = match args.task {
        Task::ZeroshotClassification => "zeroshot_classification",
        Task::ZeroshotRetrieval => "zeroshot_retrieval",
        Task::LinearProbe => "linear_probe",
    };
    let output = args.output.clone().unwrap_or_else(|| args.source.run.join(format!("benchmark_{name}.json")));
    if output.is_dir() {
        anyhow::bail!("--output {} is a directory; give the path of the JSON file to write", output.display());
    }
    if args.task != Task::ZeroshotClassification && args.templates.is_some() {
        anyhow::bail!("--templates belongs to --task zeroshot_classification");
    }
    if args.task == Task::ZeroshotRetrieval && args.classnames.is_some() {
        anyhow::bail!("--classnames belongs to the image-folder tasks");
    }
    if (args.task == Task::LinearProbe) != args.train_dataset.is_some() {
        anyhow::bail!(
            "--train-dataset (the folder the probe is fitted on) goes with --task linear_probe, and only with it"
        );
    }
    // Inputs first, so a wrong path costs no model load.
    let templates = read_templates(args.templates.as_deref())?;
    let folder = match args.task {
        Task::ZeroshotRetrieval => None,
        _ => Some(ImageFolder::open(&args.dataset, args.classnames.as_deref())?),
    };
    let train_folder = match &args.train_dataset {
        Some(dir) => {
            let train = ImageFolder::open(dir, args.classnames.as_deref())?;
            if Some(&train.classes) != folder.as_ref().map(|f| &f.classes) {
                anyhow::bail!(
                    "--train-dataset {} has other classes than --dataset {}",
                    dir.display(),
                    args.dataset.display()
                );
            }
            Some(train)
        }
        None => None,
    };
    let prepared = match args.task {
        Task::ZeroshotRetrieval => Some(PreparedDataset::open(&args.dataset)?),
        _ => None,
    };
    let RunModel { model, params, mut buffers, tokenizer, step, source, .. } = args.source.load()?;
    let metrics = if let (Some(test), Some(train)) = (&folder, &train_folder) {
        let (train_x, train_y, train_skipped) = image_folder_features(&model, &params, &mut buffers, train)?;
        let (test_x, test_y, test_skipped) = image_folder_features(&model, &params, &mut buffers, test)?;
        let dim = model.config.embed_dim;
        let result = linear_probe(
            &Labelled { features: &train_x, labels: &train_y, dim },
            &Labelled { features: &test_x, labels: &test_y, dim },
            test.classes.len(),
            args.seed,
        );
        println!(
            "{name} on {} (fitted on {} images of {}, tested on {}): acc1 {:.2}%, acc5 {:.2}%, mean per-class recall {:.2}% \
             (L2 penalty {:e}, validation acc1 {:.2}%)",
            args.dataset.display(),
            train_y.len(),
            train.classes.len(),
            test_y.len(),
            100.0 * result.test.acc1,
            100.0 * result.test.acc5,
            100.0 * result.test.mean_per_class_recall,
            result.penalty,
            100.0 * result.validation_acc1
        );
        for skipped in [train_skipped, test_skipped].iter().filter(|s| s.total() > 0) {
            println!("skipped {} image(s):\n{}", skipped.total(), skipped.summary());
        }
        let mut metrics = serde_json::to_value(result.test)?;
        metrics["l2_penalty"] = json!(result.penalty);
        metrics
    } else if let Some(folder) = &folder {
        let (result, skipped) = zero_shot_image_folder(&model, &params, &mut buffers, &tokenizer, folder, &templates)?;
        println!(
            "{name} on {} ({} classes, {} images, {} templates): acc1 {:.2}%, acc5 {:.2}%, mean per-class recall {:.2}%",
            args.dataset.display(),
            folder.classes.len(),
            folder.images.len() - skipped.total(),
            templates.len(),
            100.0 * result.acc1,
            100.0 * result.acc5,
            100.0 * result.mean_per_class_recall
        );
        if skipped.total() > 0 {
            println!("skipped {} image(s):\n{}", skipped.total(), skipped.summary());
        }
        serde_json::to_value(result)?
    } else {
        let data = prepared.as_ref().expect("a retrieval task opened its dataset");
        let result = retrieval(&model, &params, &mut buffers, &tokenizer, data)?;
        println!("{name} on {}: {}", args.dataset.display(), result.summary());
        serde_json::to_value(result.metrics())?
    };
    let record = json!({
        "dataset": args.dataset.display().to_string(),
        "model": model.config.name,
        "pretrained": source.display().to_string(),
        "checkpoint_step": step,
        "task": name,
        "metrics": metrics,
    });
    msclip::files::write_atomically(&output, serde_json::to_string_pretty(&record)?.as_bytes())?;
    append_jsonl(&args.source.run.join("results.jsonl"), &record)?;
    println!("written to {} and appended to {}", output.display(), args.source.run.join("results.jsonl").display());
    Ok(())
}
