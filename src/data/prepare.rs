//! `msclip prepare`: image-caption pairs from a CSV/TSV listing or webdataset tars, decoded,
//! resized and centre-cropped as the reference evaluation does ([`super::decode`]), captions
//! tokenized, written as memory-mapped shards ([`super::shards`]). Samples are decoded in
//! parallel a chunk at a time and written in source order, so the same input gives the same
//! dataset whatever the thread count.

use std::path::PathBuf;

use rayon::prelude::*;

use super::decode::{DecodeError, prepare_image};
use super::shards::{CaptionLine, Index, ShardWriter};
use super::sources::csv::{CsvFormat, read_listing};
use super::sources::webdataset::read_shards;
use super::sources::{RawSample, Skipped};
use crate::error::Result;
use crate::text::{Tokenizer, Truncation};

/// Samples decoded in parallel before they are written.
const CHUNK: usize = 256;

/// What to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// An open_clip-style CSV/TSV listing.
    Listing(PathBuf, CsvFormat),
    /// webdataset tar shards, in order.
    Tars(Vec<PathBuf>),
}

impl Input {
    fn describe(&self) -> String {
        match self {
            Input::Listing(path, _) => path.display().to_string(),
            Input::Tars(paths) => match paths.as_slice() {
                [one] => one.display().to_string(),
                [first, .., last] => format!("{} tars, {} to {}", paths.len(), first.display(), last.display()),
                [] => "no tars".into(),
            },
        }
    }
}

/// Where and how to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrepareConfig {
    pub out: PathBuf,
    pub resolution: usize,
    pub context: usize,
    /// Samples per shard; by default as many as 256 MiB of pixels hold.
    pub per_shard: Option<usize>,
    /// How the tokenizer is named in the index (`clip` or its file).
    pub tokenizer_name: String,
}

/// What a finished prepare reports.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub index: Index,
    pub skipped: Skipped,
}

/// One sample ready for the writer, or why it was left out.
type Outcome = std::result::Result<(Vec<u8>, Vec<u32>, bool), (&'static str, String)>;

struct Pipeline<'a> {
    writer: ShardWriter,
    tokenizer: &'a Tokenizer,
    config: &'a PrepareConfig,
    chunk: Vec<RawSample>,
    skipped: Skipped,
    truncated: usize,
    progress: &'a mut dyn FnMut(usize, usize),
}

impl Pipeline<'_> {
    fn push(&mut self, sample: RawSample) -> Result<()> {
        self.chunk.push(sample);
        if self.chunk.len() == CHUNK { self.drain() } else { Ok(()) }
    }

    /// Decodes the buffered samples in parallel and writes them in order.
    fn drain(&mut self) -> Result<()> {
        let chunk = std::mem::take(&mut self.chunk);
        let (resolution, context, tokenizer) = (self.config.resolution, self.config.context, self.tokenizer);
        let outcomes: Vec<(String, String, Outcome)> = chunk
            .into_par_iter()
            .map(|sample| {
                let outcome = process(sample.image, &sample.caption, resolution, context, tokenizer);
                (sample.key, sample.caption, outcome)
            })
            .collect();
        for (key, caption, outcome) in outcomes {
            match outcome {
                Ok((pixels, tokens, truncated)) => {
                    self.truncated += usize::from(truncated);
                    self.writer.push(&pixels, &tokens, &CaptionLine { key, caption })?;
                }
                Err((reason, detail)) => {
                    let which = if detail.is_empty() { key } else { format!("{key}: {detail}") };
                    self.skipped.add(reason, which);
                }
            }
        }
        (self.progress)(self.writer.samples(), self.skipped.total());
        Ok(())
    }
}

fn process(
    image: super::sources::EncodedImage,
    caption: &str,
    resolution: usize,
    context: usize,
    tokenizer: &Tokenizer,
) -> Outcome {
    let bytes = image.bytes().map_err(|reason| (reason, String::new()))?;
    let pixels = prepare_image(&bytes, resolution as u32).map_err(|e| match e {
        DecodeError::TooLarge { .. } => ("image over 89,478,485 pixels", e.to_string()),
        DecodeError::Unreadable(_) => ("unreadable image", e.to_string()),
    })?;
    let (tokens, cut) = tokenizer
        .tokenize_and_tell(caption, context, Truncation::ForceEot)
        .map_err(|e| ("caption the tokenizer refused", e.to_string()))?;
    Ok((pixels, tokens, cut))
}

/// Runs the whole prepare; `progress(samples written, samples skipped)` after each chunk.
pub fn prepare(
    input: &Input,
    tokenizer: &Tokenizer,
    config: &PrepareConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Prepared> {
    let writer = ShardWriter::create(&config.out, config.resolution, config.context, config.per_shard)?;
    let mut pipeline =
        Pipeline { writer, tokenizer, config, chunk: Vec::new(), skipped: Skipped::default(), truncated: 0, progress };
    match input {
        Input::Listing(path, format) => {
            let (samples, skipped) = read_listing(path, format)?;
            pipeline.skipped.merge(skipped);
            for sample in samples {
                pipeline.push(sample)?;
            }
        }
        Input::Tars(paths) => {
            let skipped = read_shards(paths, |sample| pipeline.push(sample))?;
            pipeline.skipped.merge(skipped);
        }
    }
    pipeline.drain()?;
    let Pipeline { writer, skipped, truncated, .. } = pipeline;
    let index = writer.finish(config.tokenizer_name.clone(), input.describe(), skipped.counts(), truncated)?;
    Ok(Prepared { index, skipped })
}
