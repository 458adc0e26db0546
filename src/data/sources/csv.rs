//! open_clip's CSV/TSV datasets (`--train-data x.csv --csv-img-key filepath --csv-caption-key
//! title --csv-separator "\t"`): a header row naming the columns, one image path and caption per
//! row. Quoted fields may hold the separator and newlines. Relative image paths are taken from
//! the listing's own folder (open_clip takes them from the working directory), so a dataset
//! folder can move.

use std::path::{Path, PathBuf};

use super::{EncodedImage, RawSample, Skipped};
use crate::error::{Error, Result};

/// How to read a listing; the defaults are open_clip's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsvFormat {
    pub separator: u8,
    pub image_column: String,
    pub caption_column: String,
}

impl CsvFormat {
    /// open_clip's defaults: tab-separated, `filepath` and `title`.
    pub fn open_clip() -> Self {
        CsvFormat { separator: b'\t', image_column: "filepath".into(), caption_column: "title".into() }
    }

    /// The separator a file's extension suggests: `,` for .csv, a tab otherwise.
    pub fn for_path(path: &Path) -> Self {
        let comma = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("csv"));
        CsvFormat { separator: if comma { b',' } else { b'\t' }, ..Self::open_clip() }
    }
}

/// Every usable row of the listing at `path`, in file order, and what was skipped: rows with
/// another number of fields than the header, rows that are not UTF-8, empty captions or image
/// paths. A missing file, or a header without the named columns, is an error that lists the
/// columns there are.
pub fn read_listing(path: &Path, format: &CsvFormat) -> Result<(Vec<RawSample>, Skipped)> {
    let what = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = csv::ReaderBuilder::new().delimiter(format.separator).flexible(true).from_reader(file);
    let headers =
        reader.headers().map_err(|e| Error::format(&what, format!("cannot read the header row: {e}")))?.clone();
    let column = |name: &str| {
        headers.iter().position(|h| h.trim() == name).ok_or_else(|| {
            let seen: Vec<&str> = headers.iter().collect();
            Error::format(
                &what,
                format!(
                    "no column {name:?} in the header; it has {seen:?} (separator {:?}; see --csv-separator, \
                     --csv-img-key, --csv-caption-key)",
                    format.separator as char
                ),
            )
        })
    };
    let (image_at, caption_at) = (column(&format.image_column)?, column(&format.caption_column)?);
    let folder = path.parent().unwrap_or(Path::new("."));
    let mut samples = Vec::new();
    let mut skipped = Skipped::default();
    for (i, record) in reader.records().enumerate() {
        // Line numbers as an editor shows them, the header being line 1 (exact for rows
        // without quoted newlines).
        let row = format!("row {}", i + 2);
        let record = match record {
            Ok(r) => r,
            Err(e) if matches!(e.kind(), csv::ErrorKind::Utf8 { .. }) => {
                skipped.add("row not UTF-8", row);
                continue;
            }
            Err(e) => return Err(Error::format(&what, format!("{row}: {e}"))),
        };
        if record.len() != headers.len() {
            skipped.add("malformed row (wrong number of fields)", row);
            continue;
        }
        let (image, caption) = (record[image_at].trim(), record[caption_at].trim());
        if image.is_empty() {
            skipped.add("empty image path", row);
            continue;
        }
        if caption.is_empty() {
            skipped.add("empty caption", format!("{row} ({image})"));
            continue;
        }
        let file: PathBuf = folder.join(image);
        samples.push(RawSample {
            key: image.to_string(),
            image: EncodedImage::File(file),
            caption: caption.to_string(),
        });
    }
    Ok((samples, skipped))
}
