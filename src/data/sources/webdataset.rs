//! webdataset tar shards: files grouped into samples by key (the path up to the first dot of
//! the file name), here `key.jpg|jpeg|png|webp` with `key.txt`, a sample's files next to each
//! other in the tar. Shard lists come as brace patterns (`shards-{0000..0099}.tar`), as
//! webdataset and open_clip take them.
//!
//! A tar is untrusted input: entries with absolute paths or `..` are skipped and counted, never
//! followed; sizes are read from the headers and bounded before an entry is read; links and
//! other non-files are ignored.

use std::io::Read;
use std::path::{Component, Path, PathBuf};

use super::{EncodedImage, MAX_IMAGE_BYTES, RawSample, Skipped};
use crate::error::{Error, Result};

/// The longest caption file read.
const MAX_CAPTION_BYTES: u64 = 1 << 20;
const IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// Every path `pattern` names: `{a..b}` (numbers, zero padding kept from `a`) and `{x,y,z}`
/// expanded, several braces multiplied out left to right.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>> {
    let Some(open) = pattern.find('{') else { return Ok(vec![pattern.to_string()]) };
    let close = pattern[open..]
        .find('}')
        .map(|c| open + c)
        .ok_or_else(|| Error::config(format!("{pattern:?}: a '{{' without its '}}'")))?;
    let (head, body, tail) = (&pattern[..open], &pattern[open + 1..close], &pattern[close + 1..]);
    let choices: Vec<String> = match body.split_once("..") {
        Some((from, to)) => {
            let bad = || Error::config(format!("{pattern:?}: {{{body}}} is not a range of numbers"));
            let (a, b) = (from.parse::<u64>().map_err(|_| bad())?, to.parse::<u64>().map_err(|_| bad())?);
            if b < a || b - a >= 1_000_000 {
                return Err(Error::config(format!("{pattern:?}: the range {{{body}}} is empty or too long")));
            }
            (a..=b).map(|n| format!("{n:0width$}", width = from.len())).collect()
        }
        None => body.split(',').map(String::from).collect(),
    };
    // Left to right: the first brace varies slowest.
    let tails = expand_braces(tail)?;
    Ok(choices.iter().flat_map(|c| tails.iter().map(move |rest| format!("{head}{c}{rest}"))).collect())
}

/// A tar path is safe when every component is a plain name: no root, no `..`, no prefix.
fn is_safe(path: &Path) -> bool {
    path.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

/// (key, extension) of a member: the extension is everything after the file name's first dot.
fn split_key(path: &Path) -> Option<(String, String)> {
    let name = path.file_name()?.to_str()?;
    let (stem, extension) = name.split_once('.')?;
    let folder = path.parent().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    let key = if folder.is_empty() { stem.to_string() } else { format!("{folder}/{stem}") };
    Some((key, extension.to_ascii_lowercase()))
}

/// The files of one sample seen so far.
#[derive(Default)]
struct Group {
    key: String,
    image: Option<Vec<u8>>,
    caption: Option<String>,
    /// Why the sample is already lost (an oversized or undecodable member).
    lost: Option<&'static str>,
}

impl Group {
    fn finish(self, tar: &str, emit: &mut impl FnMut(RawSample) -> Result<()>, skipped: &mut Skipped) -> Result<()> {
        let which = format!("{tar}:{}", self.key);
        match (self.lost, self.image, self.caption) {
            (Some(reason), _, _) => skipped.add(reason, which),
            (None, None, _) => skipped.add("sample without an image (jpg, jpeg, png, webp)", which),
            (None, Some(_), None) => skipped.add("sample without a caption (txt)", which),
            (None, Some(_), Some(caption)) if caption.trim().is_empty() => skipped.add("empty caption", which),
            (None, Some(image), Some(caption)) => {
                emit(RawSample { key: which, image: EncodedImage::Bytes(image), caption: caption.trim().to_string() })?
            }
        }
        Ok(())
    }
}

/// Reads the tars at `paths` in order and hands each complete sample to `emit`, counting what
/// it skips. A tar that cannot be opened or read is an error naming it.
pub fn read_shards(paths: &[PathBuf], mut emit: impl FnMut(RawSample) -> Result<()>) -> Result<Skipped> {
    let mut skipped = Skipped::default();
    for path in paths {
        let name = path.display().to_string();
        let broken = |e: std::io::Error| Error::format(&name, format!("not a readable tar: {e}"));
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut archive = tar::Archive::new(std::io::BufReader::new(file));
        let mut group: Option<Group> = None;
        for entry in archive.entries().map_err(broken)? {
            let mut entry = entry.map_err(broken)?;
            if !entry.header().entry_type().is_file() {
                continue;
            }
            let member = entry.path().map_err(broken)?.into_owned();
            if !is_safe(&member) {
                skipped.add("unsafe tar path (absolute or ..)", format!("{name}:{}", member.display()));
                continue;
            }
            let Some((key, extension)) = split_key(&member) else { continue };
            if group.as_ref().is_some_and(|g| g.key != key)
                && let Some(done) = group.take()
            {
                done.finish(&name, &mut emit, &mut skipped)?;
            }
            let g = group.get_or_insert_with(|| Group { key: key.clone(), ..Group::default() });
            let size = entry.header().size().map_err(broken)?;
            if IMAGE_EXTENSIONS.contains(&extension.as_str()) {
                if size > MAX_IMAGE_BYTES {
                    g.lost = Some("image file over 256 MiB");
                } else {
                    let mut bytes = Vec::with_capacity(size as usize);
                    entry.read_to_end(&mut bytes).map_err(broken)?;
                    g.image = Some(bytes);
                }
            } else if extension == "txt" {
                if size > MAX_CAPTION_BYTES {
                    g.lost = Some("caption file over 1 MiB");
                } else {
                    let mut bytes = Vec::with_capacity(size as usize);
                    entry.read_to_end(&mut bytes).map_err(broken)?;
                    match String::from_utf8(bytes) {
                        Ok(text) => g.caption = Some(text),
                        Err(_) => g.lost = Some("caption not UTF-8"),
                    }
                }
            }
        }
        if let Some(done) = group {
            done.finish(&name, &mut emit, &mut skipped)?;
        }
    }
    Ok(skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn braces_expand_as_webdataset_does() {
        assert_eq!(expand_braces("a-{08..11}.tar").unwrap(), ["a-08.tar", "a-09.tar", "a-10.tar", "a-11.tar"]);
        assert_eq!(expand_braces("{x,y}-{0..1}.tar").unwrap(), ["x-0.tar", "x-1.tar", "y-0.tar", "y-1.tar"]);
        assert_eq!(expand_braces("plain.tar").unwrap(), ["plain.tar"]);
        assert!(expand_braces("a-{1..x}.tar").is_err());
        assert!(expand_braces("a-{3..1}.tar").is_err());
        assert!(expand_braces("a-{1..3.tar").is_err());
    }

    #[test]
    fn keys_split_at_the_first_dot_and_unsafe_paths_are_spotted() {
        assert_eq!(split_key(Path::new("d/000123.seg.jpg")), Some(("d/000123".into(), "seg.jpg".into())));
        assert_eq!(split_key(Path::new("x.TXT")), Some(("x".into(), "txt".into())));
        assert!(is_safe(Path::new("a/b.jpg")) && is_safe(Path::new("./a.jpg")));
        assert!(!is_safe(Path::new("/etc/passwd")) && !is_safe(Path::new("a/../../b.jpg")));
    }
}
