//! Prepared-dataset loader throughput (`msclip train --data DIR`): pairs per second that
//! `TrainingData::batch` makes (the epoch's permutation, the pixels gathered from the memory
//! maps and normalised, the captions tokenized again), and the two halves apart, at the tiny
//! preset (48 px, a BPE trained on the captions) and at B/32 (224 px, CLIP's tokenizer). The
//! datasets are written first to a temporary folder, so their pages are in the page cache: this
//! is the loader's CPU cost, not the disk's. Run: `cargo bench --bench prepared_loader`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use msclip::data::shapes::{ShapesConfig, caption_corpus};
use msclip::data::shards::{CaptionLine, PreparedDataset, ShardWriter};
use msclip::data::{PixelStats, images_to_tensor};
use msclip::model::ClipModel;
use msclip::text::Truncation;
use msclip::train::{PreparedData, TokenizerSource, TrainConfig, TrainingData, new_run_tokenizer};
use msclip::{DType, Rng};

/// Pairs per second of `make_batch(k)` (which makes `batch` pairs) over about a second.
fn rate(batch: usize, mut make_batch: impl FnMut(u64)) -> f64 {
    make_batch(0); // warm-up: thread pool start, the first permutation
    let (mut k, start) = (1u64, Instant::now());
    while start.elapsed().as_secs_f64() < 1.0 {
        make_batch(k);
        k += 1;
    }
    ((k - 1) as usize * batch) as f64 / start.elapsed().as_secs_f64()
}

/// Writes `n` pairs of random pixels at `size` px with shapes-world captions into `dir`.
fn write_dataset(dir: &Path, n: usize, size: usize) {
    let captions = caption_corpus(&ShapesConfig::tiny(), n);
    let mut writer = ShardWriter::create(dir, size, 1, None).unwrap();
    let mut rng = Rng::new(1);
    let mut pixels = vec![0u8; size * size * 3];
    for (i, caption) in captions.into_iter().take(n).enumerate() {
        pixels.iter_mut().for_each(|p| *p = rng.below(256) as u8);
        writer.push(&pixels, &[0], &CaptionLine { key: i.to_string(), caption }).unwrap();
    }
    writer.finish("none".into(), "bench".into(), BTreeMap::new(), 0).unwrap();
}

fn main() {
    let root = std::env::temp_dir().join(format!("msclip-bench-loader-{}", std::process::id()));
    println!(
        "{:<34} {:>12} {:>14} {:>12}  ({} threads)",
        "preset, batch, dataset",
        "batch /s",
        "pixels only /s",
        "tokens /s",
        rayon::current_num_threads()
    );
    for (preset, batch, samples, tokenizer) in
        [("tiny", 128, 8192, TokenizerSource::TrainedBpe), ("clip-b32", 64, 1024, TokenizerSource::Clip)]
    {
        let mut config = TrainConfig::for_preset(preset).unwrap();
        let model = ClipModel::new(config.model_config().unwrap()).unwrap();
        let size = model.config.vision.image_size;
        let dir = root.join(preset);
        write_dataset(&dir, samples, size);
        (config.batch_size, config.tokenizer) = (batch, tokenizer);
        config.train_data = Some(PreparedData::read(&dir).unwrap());
        let tokenizer = new_run_tokenizer(&config, &model).unwrap();
        let data = TrainingData::open(&config, &model.config).unwrap();
        let whole = rate(batch, |k| {
            std::hint::black_box(data.batch(k, &tokenizer, &model.config).unwrap());
        });
        // The halves, on consecutive samples (the permutation's gather order costs nothing
        // extra once the pages are cached).
        let dataset = PreparedDataset::open(&dir).unwrap();
        let at = |k: u64| (k as usize * batch) % (samples - batch);
        let pixels = rate(batch, |k| {
            let images: Vec<&[u8]> = (at(k)..at(k) + batch).map(|i| dataset.pixels(i)).collect();
            std::hint::black_box(images_to_tensor(&images, size, PixelStats::Clip, DType::F32).unwrap());
        });
        let context = model.config.text.context;
        let tokens = rate(batch, |k| {
            let texts: Vec<&str> = (at(k)..at(k) + batch).map(|i| dataset.caption(i).caption.as_str()).collect();
            std::hint::black_box(tokenizer.tokenize_batch(&texts, context, Truncation::ForceEot).unwrap());
        });
        let what = format!("{preset} ({size} px), {batch}, {samples} pairs");
        println!("{what:<34} {whole:>12.0} {pixels:>14.0} {tokens:>12.0}");
    }
    let _ = std::fs::remove_dir_all(&root);
}
