//! Where image-caption pairs come from before `msclip prepare` packs them: open_clip-style
//! CSV/TSV files ([`csv`]) and webdataset tar shards ([`webdataset`]). Each yields samples in
//! a fixed order and counts, in a [`Skipped`] tally, what it could not use and why, so a
//! malformed row or a hostile tar entry costs one sample, never the run.

pub mod csv;
pub mod webdataset;

use std::collections::BTreeMap;
use std::path::PathBuf;

/// One pair, before decoding: where it came from, its encoded image and its caption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawSample {
    /// The image path (CSV) or the webdataset key, for reports.
    pub key: String,
    pub image: EncodedImage,
    pub caption: String,
}

/// An encoded image: a file read when the sample is decoded (so a listing of millions of rows
/// costs no image memory), or bytes already read from a tar stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodedImage {
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// The largest encoded image read: a bound on the bytes read before the decoder's own pixel
/// limit applies (`data::decode::MAX_PIXELS`).
pub const MAX_IMAGE_BYTES: u64 = 256 << 20;

impl EncodedImage {
    /// The encoded bytes, or why they cannot be had (the reason, for a [`Skipped`] tally).
    pub fn bytes(self) -> Result<Vec<u8>, &'static str> {
        match self {
            EncodedImage::Bytes(bytes) => Ok(bytes),
            EncodedImage::File(path) => {
                let size = std::fs::metadata(&path).map_err(|_| "missing image file")?.len();
                if size > MAX_IMAGE_BYTES {
                    return Err("image file over 256 MiB");
                }
                std::fs::read(&path).map_err(|_| "unreadable image file")
            }
        }
    }
}

/// Samples left out, by reason, with the first few of each named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Skipped {
    reasons: BTreeMap<String, (usize, Vec<String>)>,
}

/// How many examples of each reason a report names.
const EXAMPLES_KEPT: usize = 3;

impl Skipped {
    /// Counts one sample left out for `reason`; `which` names it (a row number, a path).
    pub fn add(&mut self, reason: &str, which: impl Into<String>) {
        let (count, examples) = self.reasons.entry(reason.to_string()).or_default();
        *count += 1;
        if examples.len() < EXAMPLES_KEPT {
            examples.push(which.into());
        }
    }

    /// Adds every count of `other`.
    pub fn merge(&mut self, other: Skipped) {
        for (reason, (count, examples)) in other.reasons {
            let (mine, kept) = self.reasons.entry(reason).or_default();
            *mine += count;
            kept.extend(examples.into_iter().take(EXAMPLES_KEPT.saturating_sub(kept.len())));
        }
    }

    pub fn total(&self) -> usize {
        self.reasons.values().map(|(count, _)| count).sum()
    }

    /// (reason, count, first examples), by reason.
    pub fn iter(&self) -> impl Iterator<Item = (&str, usize, &[String])> {
        self.reasons.iter().map(|(reason, (count, examples))| (reason.as_str(), *count, examples.as_slice()))
    }

    /// One line per reason: `  3 missing image file (e.g. a.jpg, b.jpg)`.
    pub fn summary(&self) -> String {
        self.iter()
            .map(|(reason, count, examples)| format!("  {count} {reason} (e.g. {})", examples.join(", ")))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// As JSON: {reason: count}.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        self.reasons.iter().map(|(reason, (count, _))| (reason.clone(), *count)).collect()
    }
}
