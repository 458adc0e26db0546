//! CLIP_benchmark's tasks on real data: zero-shot classification of an image folder (one
//! sub-folder per class, a prompt ensemble per class) and image-text retrieval on a prepared
//! dataset whose images may have several captions, with CLIP_benchmark's metric names.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use super::encode::{classifier_weights, encode_images, encode_texts};
use super::metrics::{Classification, Ranking, classification, dot, ranking};
use crate::data::decode::prepare_files;
use crate::data::shards::PreparedDataset;
use crate::data::sources::Skipped;
use crate::error::{Error, Result};
use crate::model::{Buffers, ClipModel};
use crate::nn::ParamStore;
use crate::text::Tokenizer;

/// CLIP's default prompt when no templates are given.
pub const DEFAULT_TEMPLATES: [&str; 1] = ["a photo of a {}."];

/// Files whose extension says image.
const IMAGE_EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "webp", "gif", "bmp", "jfif"];

/// An image-folder dataset: `DIR/<class>/<image>`, classes in sorted folder order (torchvision's
/// `ImageFolder`), named by `classnames.txt` (one per line, in that order) when present or given,
/// else by the folder names with underscores as spaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFolder {
    pub classes: Vec<String>,
    /// (image file, class index), by class then file name.
    pub images: Vec<(PathBuf, usize)>,
}

impl ImageFolder {
    pub fn open(dir: &Path, classnames: Option<&Path>) -> Result<Self> {
        let read_dir = |d: &Path| -> Result<Vec<PathBuf>> {
            let mut entries: Vec<PathBuf> =
                std::fs::read_dir(d).map_err(|e| Error::io(d, e))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
            entries.sort();
            Ok(entries)
        };
        let folders: Vec<PathBuf> = read_dir(dir)?.into_iter().filter(|p| p.is_dir()).collect();
        if folders.is_empty() {
            return Err(Error::format(dir.display().to_string(), "no class sub-folders: expected DIR/<class>/<image>"));
        }
        let listed =
            classnames.map(Path::to_path_buf).or_else(|| Some(dir.join("classnames.txt")).filter(|p| p.is_file()));
        let classes: Vec<String> = match listed {
            Some(path) => {
                let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
                let names: Vec<String> =
                    text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
                if names.len() != folders.len() {
                    return Err(Error::format(
                        path.display().to_string(),
                        format!("{} class names for {} class folders", names.len(), folders.len()),
                    ));
                }
                names
            }
            None => {
                folders.iter().map(|f| f.file_name().unwrap_or_default().to_string_lossy().replace('_', " ")).collect()
            }
        };
        let mut images = Vec::new();
        for (class, folder) in folders.iter().enumerate() {
            let is_image = |p: &PathBuf| {
                p.extension()
                    .and_then(|e| e.to_str())
                    .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
            };
            images.extend(read_dir(folder)?.into_iter().filter(is_image).map(|p| (p, class)));
        }
        if images.is_empty() {
            return Err(Error::format(dir.display().to_string(), "no images in the class folders"));
        }
        Ok(ImageFolder { classes, images })
    }
}

/// Every template filled with a class name (`{}` or `{c}` replaced).
fn prompts(templates: &[String], class: &str) -> Vec<String> {
    templates.iter().map(|t| t.replace("{c}", class).replace("{}", class)).collect()
}

/// The image features of `folder`'s readable images, row-major [n, embed_dim], their labels,
/// and the images that could not be read.
pub fn image_folder_features(
    model: &ClipModel,
    params: &ParamStore,
    buffers: &mut Buffers,
    folder: &ImageFolder,
) -> Result<(Vec<f64>, Vec<usize>, Skipped)> {
    let size = model.config.vision.image_size;
    let paths: Vec<&Path> = folder.images.iter().map(|(path, _)| path.as_path()).collect();
    let (prepared, skipped) = prepare_files(&paths, size as u32);
    if prepared.is_empty() {
        return Err(Error::format("image folder", format!("no readable images:\n{}", skipped.summary())));
    }
    let labels: Vec<usize> = prepared.iter().map(|(i, _)| folder.images[*i].1).collect();
    let pixels: Vec<Vec<u8>> = prepared.into_iter().map(|(_, p)| p).collect();
    let refs: Vec<&[u8]> = pixels.iter().map(Vec::as_slice).collect();
    Ok((encode_images(model, params, buffers, &refs, size)?, labels, skipped))
}

/// Zero-shot classification of `folder` with a prompt ensemble per class (CLIP's: the
/// normalised mean of the normalised prompt features). Images that cannot be read are skipped
/// and counted.
pub fn zero_shot_image_folder(
    model: &ClipModel,
    params: &ParamStore,
    buffers: &mut Buffers,
    tokenizer: &Tokenizer,
    folder: &ImageFolder,
    templates: &[String],
) -> Result<(Classification, Skipped)> {
    let per_class: Vec<Vec<String>> = folder.classes.iter().map(|c| prompts(templates, c)).collect();
    let weights = classifier_weights(model, params, tokenizer, &per_class)?;
    let (features, labels, skipped) = image_folder_features(model, params, buffers, folder)?;
    let (dim, classes) = (model.config.embed_dim, folder.classes.len());
    let scores: Vec<f64> = features
        .chunks_exact(dim)
        .flat_map(|f| (0..classes).map(|c| dot(f, &weights[c * dim..(c + 1) * dim])).collect::<Vec<_>>())
        .collect();
    Ok((classification(&scores, &labels, classes), skipped))
}

/// Retrieval results on a dataset whose images may carry several captions.
#[derive(Debug, Clone, PartialEq)]
pub struct Retrieval {
    pub images: usize,
    pub captions: usize,
    /// Captions as queries, images as candidates (CLIP_benchmark's "image retrieval").
    pub text_to_image: Ranking,
    /// Images as queries; any of an image's captions counts (its "text retrieval").
    pub image_to_text: Ranking,
}

impl Retrieval {
    /// CLIP_benchmark's metric names.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        for (prefix, r) in [("image_retrieval", &self.text_to_image), ("text_retrieval", &self.image_to_text)] {
            m.insert(format!("{prefix}_recall@1"), r.r1);
            m.insert(format!("{prefix}_recall@5"), r.r5);
            m.insert(format!("{prefix}_recall@10"), r.r10);
            m.insert(format!("{prefix}_mean_rank"), r.mean_rank);
            m.insert(format!("{prefix}_median_rank"), r.median_rank);
        }
        m
    }

    /// Recall at 1, 5 and 10 both ways, in percent, and the set's size: one line.
    pub fn summary(&self) -> String {
        let recalls = |r: &Ranking| format!("{:.2}/{:.2}/{:.2}%", 100.0 * r.r1, 100.0 * r.r5, 100.0 * r.r10);
        format!(
            "image retrieval R@1/5/10 {}, text retrieval {} ({} images, {} captions)",
            recalls(&self.text_to_image),
            recalls(&self.image_to_text),
            self.images,
            self.captions
        )
    }
}

/// Image-text retrieval on a prepared dataset: samples sharing a key (the same image file or
/// webdataset key) are one image with several captions. The captions are tokenized again with
/// `tokenizer` (the model's, which need not be the one the dataset was prepared with).
pub fn retrieval(
    model: &ClipModel,
    params: &ParamStore,
    buffers: &mut Buffers,
    tokenizer: &Tokenizer,
    data: &PreparedDataset,
) -> Result<Retrieval> {
    let size = model.config.vision.image_size;
    if data.index.resolution != size {
        return Err(Error::config(format!(
            "the dataset was prepared at {} px and model {:?} takes {size} px: prepare it again with --resolution {size}",
            data.index.resolution, model.config.name
        )));
    }
    let mut image_of_key: HashMap<&str, usize> = HashMap::new();
    let mut first_sample = Vec::new();
    let mut image_of_caption = Vec::with_capacity(data.len());
    for i in 0..data.len() {
        let key = data.caption(i).key.as_str();
        let next = image_of_key.len();
        let image = *image_of_key.entry(key).or_insert(next);
        if image == first_sample.len() {
            first_sample.push(i);
        }
        image_of_caption.push(image);
    }
    let pixels: Vec<&[u8]> = first_sample.iter().map(|&i| data.pixels(i)).collect();
    let captions: Vec<&str> = (0..data.len()).map(|i| data.caption(i).caption.as_str()).collect();
    let image_features = encode_images(model, params, buffers, &pixels, size)?;
    let text_features = encode_texts(model, params, tokenizer, &captions)?;
    let dim = model.config.embed_dim;
    let (images, texts) = (pixels.len(), captions.len());
    let text_to_image = ranking(&text_features, &image_features, dim, |t, i| image_of_caption[t] == i);
    let image_to_text = ranking(&image_features, &text_features, dim, |i, t| image_of_caption[t] == i);
    Ok(Retrieval { images, captions: texts, text_to_image, image_to_text })
}
