//! `msclip encode --run R (--images DIR | --texts FILE) --out F.npy`: L2-normalised embeddings
//! of a run's model for downstream use, as a float32 .npy [n, embed_dim], with the names of
//! the rows (image files, or the texts) in F.npy's order beside it in F.txt.

use std::path::PathBuf;

use clap::Args;
use msclip::data::decode::prepare_files;
use msclip::eval::{encode_images, encode_texts};
use msclip::files::{write_atomically, write_npy_f32};

use super::run_model::{RunModel, RunWeightsArgs};

#[derive(Args)]
pub struct EncodeArgs {
    #[command(flatten)]
    source: RunWeightsArgs,
    /// A folder of images (its image files, in sorted order; sub-folders are not read).
    #[arg(long, conflicts_with = "texts", required_unless_present = "texts")]
    images: Option<PathBuf>,
    /// A text file, one text per line (empty lines skipped).
    #[arg(long)]
    texts: Option<PathBuf>,
    /// The .npy file to write; the row names go to the same path with .txt.
    #[arg(long)]
    out: PathBuf,
}

const IMAGE_EXTENSIONS: [&str; 7] = ["jpg", "jpeg", "png", "webp", "gif", "bmp", "jfif"];

pub fn run(args: EncodeArgs) -> anyhow::Result<()> {
    if args.out.is_dir() {
        anyhow::bail!("--out {} is a directory; give the path of the .npy file to write", args.out.display());
    }
    let names_path = args.out.with_extension("txt");
    // Inputs first, so a wrong path costs no model load.
    let (images, texts) = match (&args.images, &args.texts) {
        (Some(dir), _) => {
            let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
                .map_err(|e| anyhow::anyhow!("--images {}: {e}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .and_then(|e| e.to_str())
                        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
                })
                .collect();
            files.sort();
            if files.is_empty() {
                anyhow::bail!("--images {}: no image files there", dir.display());
            }
            (files, Vec::new())
        }
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("--texts {}: {e}", file.display()))?;
            let lines: Vec<String> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect();
            if lines.is_empty() {
                anyhow::bail!("--texts {}: no texts in it", file.display());
            }
            (Vec::new(), lines)
        }
        (None, None) => unreachable!("clap requires --images or --texts"),
    };
    let RunModel { model, params, mut buffers, tokenizer, .. } = args.source.load()?;
    let dim = model.config.embed_dim;
    let (features, names) = if texts.is_empty() {
        let size = model.config.vision.image_size;
        let paths: Vec<&std::path::Path> = images.iter().map(PathBuf::as_path).collect();
        let (prepared, skipped) = prepare_files(&paths, size as u32);
        for (_, count, examples) in skipped.iter() {
            eprintln!("skipped {count} image(s): {}", examples.join("; "));
        }
        if prepared.is_empty() {
            anyhow::bail!("no image could be read");
        }
        let names: Vec<String> = prepared.iter().map(|(i, _)| images[*i].display().to_string()).collect();
        let pixels: Vec<Vec<u8>> = prepared.into_iter().map(|(_, p)| p).collect();
        let refs: Vec<&[u8]> = pixels.iter().map(Vec::as_slice).collect();
        (encode_images(&model, &params, &mut buffers, &refs, size)?, names)
    } else {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        (encode_texts(&model, &params, &tokenizer, &refs)?, texts.clone())
    };
    let values: Vec<f32> = features.iter().map(|&v| v as f32).collect();
    write_npy_f32(&args.out, &values, names.len(), dim)?;
    write_atomically(&names_path, (names.join("\n") + "\n").as_bytes())?;
    println!(
        "{} embeddings of {dim} ({}) written to {}, their names to {}",
        names.len(),
        model.config.name,
        args.out.display(),
        names_path.display()
    );
    Ok(())
}
