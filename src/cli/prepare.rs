//! `msclip prepare --input data.tsv|shards-{000..009}.tar|DIR --out DIR --resolution R`:
//! image-caption pairs packed into memory-mapped shards, with a progress line, images/s and a
//! report of every sample left out and why.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use msclip::data::prepare::{Input, PrepareConfig, prepare};
use msclip::data::sources::csv::CsvFormat;
use msclip::data::sources::webdataset::expand_braces;
use msclip::text::Tokenizer;

#[derive(Args)]
pub struct PrepareArgs {
    /// A CSV/TSV listing (open_clip's), one webdataset tar, a brace pattern of tars
    /// (`shards-{0000..0099}.tar`), or a folder of tars.
    #[arg(long)]
    input: String,
    /// The folder to write (new or empty).
    #[arg(long)]
    out: PathBuf,
    /// Side of the square images: the shorter side is resized to it (bicubic), then centre-cropped.
    #[arg(long, default_value_t = 224)]
    resolution: usize,
    /// Token ids per caption (longer captions are cut, EOT kept last).
    #[arg(long, default_value_t = 77)]
    context: usize,
    /// `clip` (OpenAI CLIP's BPE) or a tokenizer.json (e.g. a run's).
    #[arg(long, default_value = "clip")]
    tokenizer: String,
    /// The listing's separator: `tab`, `comma` or one character [default: comma for .csv, tab otherwise].
    #[arg(long)]
    csv_separator: Option<String>,
    /// The listing's image path column.
    #[arg(long, default_value = "filepath")]
    csv_img_key: String,
    /// The listing's caption column.
    #[arg(long, default_value = "title")]
    csv_caption_key: String,
    /// Samples per shard [default: as many as 256 MiB of pixels hold].
    #[arg(long)]
    shard_size: Option<usize>,
}

fn separator(name: &str) -> anyhow::Result<u8> {
    match name {
        "tab" | "\\t" | "\t" => Ok(b'\t'),
        "comma" | "," => Ok(b','),
        other if other.len() == 1 && other.is_ascii() => Ok(other.as_bytes()[0]),
        other => anyhow::bail!("--csv-separator {other:?}: give tab, comma or one ASCII character"),
    }
}

fn tars_in(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut tars: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "tar"))
        .collect();
    tars.sort();
    if tars.is_empty() {
        anyhow::bail!("--input {}: a folder with no .tar files", dir.display());
    }
    Ok(tars)
}

fn input_of(args: &PrepareArgs) -> anyhow::Result<Input> {
    let path = Path::new(&args.input);
    if args.input.contains('{') {
        let tars: Vec<PathBuf> = expand_braces(&args.input)?.into_iter().map(PathBuf::from).collect();
        if let Some(missing) = tars.iter().find(|p| !p.is_file()) {
            anyhow::bail!("--input {}: {} does not exist", args.input, missing.display());
        }
        return Ok(Input::Tars(tars));
    }
    if path.is_dir() {
        return Ok(Input::Tars(tars_in(path)?));
    }
    if !path.is_file() {
        anyhow::bail!("--input {}: no such file or folder", args.input);
    }
    if path.extension().is_some_and(|x| x == "tar") {
        return Ok(Input::Tars(vec![path.to_path_buf()]));
    }
    let mut format = CsvFormat::for_path(path);
    if let Some(name) = &args.csv_separator {
        format.separator = separator(name)?;
    }
    format.image_column = args.csv_img_key.clone();
    format.caption_column = args.csv_caption_key.clone();
    Ok(Input::Listing(path.to_path_buf(), format))
}

pub fn run(args: PrepareArgs) -> anyhow::Result<()> {
    if !(8..=4096).contains(&args.resolution) {
        anyhow::bail!("--resolution {}: give a side between 8 and 4096 pixels", args.resolution);
    }
    if args.context < 2 {
        anyhow::bail!("--context {}: a caption row needs room for SOT and EOT", args.context);
    }
    if args.shard_size == Some(0) {
        anyhow::bail!("--shard-size must be at least 1");
    }
    let input = input_of(&args)?;
    let tokenizer = match args.tokenizer.as_str() {
        "clip" => Tokenizer::clip()?,
        file => Tokenizer::from_file(Path::new(file))?,
    };
    let config = PrepareConfig {
        out: args.out.clone(),
        resolution: args.resolution,
        context: args.context,
        per_shard: args.shard_size,
        tokenizer_name: args.tokenizer.clone(),
    };
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("the template is valid"));
    let start = Instant::now();
    let mut progress = |written: usize, skipped: usize| {
        let rate = written as f64 / start.elapsed().as_secs_f64().max(1e-9);
        bar.set_message(format!("{written} samples written, {skipped} skipped, {rate:.0} images/s"));
    };
    let prepared = prepare(&input, &tokenizer, &config, &mut progress)?;
    bar.finish_and_clear();
    let seconds = start.elapsed().as_secs_f64();
    let index = &prepared.index;
    println!(
        "{} samples in {} shard(s) at {} px, context {}, written to {} in {seconds:.1} s ({:.0} images/s)",
        index.samples,
        index.shards.len(),
        index.resolution,
        index.context,
        args.out.display(),
        index.samples as f64 / seconds.max(1e-9)
    );
    if index.truncated_captions > 0 {
        println!("{} caption(s) longer than the context were cut, EOT kept last", index.truncated_captions);
    }
    if prepared.skipped.total() > 0 {
        println!("skipped {} sample(s):\n{}", prepared.skipped.total(), prepared.skipped.summary());
    }
    Ok(())
}
