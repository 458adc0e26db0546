//! Prepared datasets: what `msclip prepare` writes and training and evaluation read back with
//! memory maps. A folder holds, per shard, `shard-NNNNN.pixels` (uint8, [samples, resolution,
//! resolution, 3], RGB, HWC), `shard-NNNNN.tokens` (int32 little-endian, [samples, context])
//! and `shard-NNNNN.captions.jsonl` (one `{"key", "caption"}` line per sample, for reports,
//! retrieval and re-tokenising), then `index.json`, written last.
//!
//! Every file is written to a temporary name and renamed into place, and the index only after
//! every shard, so a folder whose prepare was interrupted has no index and is refused: a
//! half-written dataset never looks complete. Reading checks each file's size against the index.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::files::write_atomically;

pub const INDEX_FILE: &str = "index.json";
const FORMAT: &str = "msclip-shards-v1";
/// Pixels buffered per shard before it is written, which bounds the writer's memory.
const SHARD_PIXEL_BYTES: usize = 256 << 20;

/// A prepared dataset's description, `index.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Index {
    pub format: String,
    /// Side of every (square) image.
    pub resolution: usize,
    /// Token ids per caption row.
    pub context: usize,
    /// Which tokenizer made the ids (`clip`, or a tokenizer.json path).
    pub tokenizer: String,
    pub samples: usize,
    pub shards: Vec<ShardInfo>,
    /// What the listing or tars were.
    pub source: String,
    /// Samples left out, by reason.
    pub skipped: BTreeMap<String, usize>,
    /// Captions longer than the context, cut (EOT kept in the last position, as open_clip).
    pub truncated_captions: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardInfo {
    pub name: String,
    pub samples: usize,
}

fn shard_file(dir: &Path, name: &str, kind: &str) -> PathBuf {
    dir.join(format!("{name}.{kind}"))
}

/// One line of a shard's captions file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaptionLine {
    pub key: String,
    pub caption: String,
}

/// Writes shards one at a time; nothing of a shard is on disk under its name until it is whole.
pub struct ShardWriter {
    dir: PathBuf,
    resolution: usize,
    context: usize,
    per_shard: usize,
    pixels: Vec<u8>,
    tokens: Vec<u8>,
    captions: String,
    buffered: usize,
    shards: Vec<ShardInfo>,
}

impl ShardWriter {
    /// A writer into `dir`, created if missing; refused if it holds anything (an earlier
    /// dataset, or other files that a prepare must not mix with).
    pub fn create(dir: &Path, resolution: usize, context: usize, per_shard: Option<usize>) -> Result<Self> {
        if dir.exists() {
            let mut entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
            if entries.next().is_some() {
                return Err(Error::config(format!(
                    "{} is not empty: prepare writes into a new or empty folder",
                    dir.display()
                )));
            }
        }
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let image_bytes = resolution * resolution * 3;
        let per_shard = per_shard.unwrap_or((SHARD_PIXEL_BYTES / image_bytes.max(1)).max(1)).max(1);
        Ok(ShardWriter {
            dir: dir.to_path_buf(),
            resolution,
            context,
            per_shard,
            pixels: Vec::new(),
            tokens: Vec::new(),
            captions: String::new(),
            buffered: 0,
            shards: Vec::new(),
        })
    }

    /// Adds one sample: HWC RGB pixels of the writer's resolution and one row of token ids.
    pub fn push(&mut self, pixels: &[u8], tokens: &[u32], line: &CaptionLine) -> Result<()> {
        let want = self.resolution * self.resolution * 3;
        if pixels.len() != want || tokens.len() != self.context {
            return Err(Error::invalid(
                "prepare",
                format!(
                    "a sample of {} pixel bytes and {} ids, not {want} and {}",
                    pixels.len(),
                    tokens.len(),
                    self.context
                ),
            ));
        }
        self.pixels.extend_from_slice(pixels);
        self.tokens.extend(tokens.iter().flat_map(|&id| (id as i32).to_le_bytes()));
        let json = serde_json::to_string(line).map_err(|e| Error::format("caption", e.to_string()))?;
        self.captions.push_str(&json);
        self.captions.push('\n');
        self.buffered += 1;
        if self.buffered == self.per_shard {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if self.buffered == 0 {
            return Ok(());
        }
        let name = format!("shard-{:05}", self.shards.len());
        write_atomically(&shard_file(&self.dir, &name, "pixels"), &self.pixels)?;
        write_atomically(&shard_file(&self.dir, &name, "tokens"), &self.tokens)?;
        write_atomically(&shard_file(&self.dir, &name, "captions.jsonl"), self.captions.as_bytes())?;
        self.shards.push(ShardInfo { name, samples: self.buffered });
        self.pixels.clear();
        self.tokens.clear();
        self.captions.clear();
        self.buffered = 0;
        Ok(())
    }

    /// Samples written or buffered so far.
    pub fn samples(&self) -> usize {
        self.shards.iter().map(|s| s.samples).sum::<usize>() + self.buffered
    }

    /// Writes the last shard and then the index. Zero samples is an error (and no index is
    /// written, so the folder is not a dataset).
    pub fn finish(
        mut self,
        tokenizer: String,
        source: String,
        skipped: BTreeMap<String, usize>,
        truncated_captions: usize,
    ) -> Result<Index> {
        if self.samples() == 0 {
            let reasons: Vec<String> = skipped.iter().map(|(r, n)| format!("{n} {r}")).collect();
            return Err(Error::format(
                source,
                format!(
                    "no usable samples (skipped: {})",
                    if reasons.is_empty() { "none".into() } else { reasons.join(", ") }
                ),
            ));
        }
        self.flush()?;
        let index = Index {
            format: FORMAT.into(),
            resolution: self.resolution,
            context: self.context,
            tokenizer,
            samples: self.samples(),
            shards: self.shards,
            source,
            skipped,
            truncated_captions,
        };
        let json = serde_json::to_string_pretty(&index).map_err(|e| Error::format("index", e.to_string()))?;
        write_atomically(&self.dir.join(INDEX_FILE), json.as_bytes())?;
        Ok(index)
    }
}

/// One shard's files, mapped.
struct MappedShard {
    pixels: Mmap,
    tokens: Mmap,
}

/// A prepared dataset read back: pixels and token rows straight from the memory maps.
pub struct PreparedDataset {
    pub index: Index,
    shards: Vec<MappedShard>,
    /// The first sample of each shard, and the total at the end.
    starts: Vec<usize>,
    captions: Vec<CaptionLine>,
}

fn map(path: &Path, expected: usize) -> Result<Mmap> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    if len != expected as u64 {
        return Err(Error::format(
            path.display().to_string(),
            format!("{len} bytes where the index says {expected}: the dataset is damaged; prepare it again"),
        ));
    }
    // SAFETY: the file is only read, and a prepared dataset's files are never rewritten in
    // place (prepare writes new files and renames them); a file truncated by another process
    // while mapped would fault, which is the documented risk of any memory map.
    unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))
}

impl Index {
    /// The index of the prepared dataset in `dir`, without opening its shards.
    pub fn read(dir: &Path) -> Result<Index> {
        let index_path = dir.join(INDEX_FILE);
        let text = std::fs::read_to_string(&index_path).map_err(|e| {
            Error::format(
                dir.display().to_string(),
                format!(
                    "no readable {INDEX_FILE} ({e}): not a prepared dataset, or its `msclip prepare` did not finish"
                ),
            )
        })?;
        let what = index_path.display().to_string();
        let index: Index = serde_json::from_str(&text).map_err(|e| Error::format(&what, e.to_string()))?;
        if index.format != FORMAT {
            return Err(Error::format(what, format!("format {:?}, not {FORMAT:?}", index.format)));
        }
        Ok(index)
    }
}

impl PreparedDataset {
    pub fn open(dir: &Path) -> Result<Self> {
        let index = Index::read(dir)?;
        let image_bytes = index.resolution * index.resolution * 3;
        let mut shards = Vec::with_capacity(index.shards.len());
        let mut starts = vec![0];
        let mut captions = Vec::with_capacity(index.samples);
        for shard in &index.shards {
            let pixels = map(&shard_file(dir, &shard.name, "pixels"), shard.samples * image_bytes)?;
            let tokens = map(&shard_file(dir, &shard.name, "tokens"), shard.samples * index.context * 4)?;
            let path = shard_file(dir, &shard.name, "captions.jsonl");
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            let before = captions.len();
            for line in text.lines() {
                captions.push(
                    serde_json::from_str(line).map_err(|e| Error::format(path.display().to_string(), e.to_string()))?,
                );
            }
            if captions.len() - before != shard.samples {
                return Err(Error::format(
                    path.display().to_string(),
                    "another number of captions than the index says",
                ));
            }
            shards.push(MappedShard { pixels, tokens });
            starts.push(starts.last().unwrap() + shard.samples);
        }
        if *starts.last().unwrap() != index.samples {
            let what = dir.join(INDEX_FILE).display().to_string();
            return Err(Error::format(what, "the shards' samples do not add up to the total"));
        }
        Ok(PreparedDataset { index, shards, starts, captions })
    }

    pub fn len(&self) -> usize {
        self.index.samples
    }

    pub fn is_empty(&self) -> bool {
        self.index.samples == 0
    }

    /// (shard, position in it) of sample `i`.
    fn locate(&self, i: usize) -> (usize, usize) {
        assert!(i < self.len(), "sample {i} of a dataset of {}", self.len());
        let shard = self.starts.partition_point(|&start| start <= i) - 1;
        (shard, i - self.starts[shard])
    }

    /// Sample `i`'s HWC RGB pixels.
    pub fn pixels(&self, i: usize) -> &[u8] {
        let (shard, at) = self.locate(i);
        let bytes = self.index.resolution * self.index.resolution * 3;
        &self.shards[shard].pixels[at * bytes..(at + 1) * bytes]
    }

    /// Sample `i`'s token ids.
    pub fn tokens(&self, i: usize) -> Vec<u32> {
        let (shard, at) = self.locate(i);
        let bytes = self.index.context * 4;
        let row = &self.shards[shard].tokens[at * bytes..(at + 1) * bytes];
        row.chunks_exact(4).map(|w| i32::from_le_bytes(w.try_into().expect("4 bytes")) as u32).collect()
    }

    /// Sample `i`'s source key and caption.
    pub fn caption(&self, i: usize) -> &CaptionLine {
        &self.captions[i]
    }
}
