//! `msclip export --run runs/NAME --out model.safetensors`: a run's weights as open_clip's state
//! dict, with the architecture in the file's metadata and the Python that loads it printed.

use std::path::PathBuf;

use clap::{Args, ValueEnum};
use msclip::weights::open_clip;
use safetensors::Dtype;

use super::run_model::{self, WeightsSource};

#[derive(Args)]
pub struct ExportArgs {
    /// The run directory (holds config.json and checkpoints/).
    #[arg(long, default_value = "runs/tiny-clip")]
    run: PathBuf,
    /// A checkpoint file; defaults to the run's checkpoints/latest.safetensors.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// The safetensors file to write (replaced atomically if it exists).
    #[arg(long)]
    out: PathBuf,
    /// The dtype of the written weights.
    #[arg(long, value_enum, default_value_t = WeightDtype::F32)]
    dtype: WeightDtype,
}

#[derive(Clone, Copy, ValueEnum)]
enum WeightDtype {
    F32,
    F16,
    Bf16,
}

impl WeightDtype {
    fn safetensors(self) -> Dtype {
        match self {
            WeightDtype::F32 => Dtype::F32,
            WeightDtype::F16 => Dtype::F16,
            WeightDtype::Bf16 => Dtype::BF16,
        }
    }
}

pub fn run(args: ExportArgs) -> anyhow::Result<()> {
    if args.out.is_dir() {
        anyhow::bail!("--out {} is a directory; give the path of the safetensors file to write", args.out.display());
    }
    let run = run_model::load(&args.run, WeightsSource::Checkpoint(args.checkpoint))?;
    let described = open_clip::describe(&run.model.config)?;
    open_clip::save(&args.out, &run.model.config, &run.params, args.dtype.safetensors())?;
    let step = run.step.map(|s| format!(" at step {s}")).unwrap_or_default();
    println!(
        "{} ({}{step}) written as open_clip's state dict to {}",
        run.model.config.name,
        run.source.display(),
        args.out.display()
    );
    println!("{}", python_loader(&described, &args.out));
    Ok(())
}

/// The Python lines that build the architecture in open_clip and load the file.
fn python_loader(model: &open_clip::OpenClipModel, file: &std::path::Path) -> String {
    let build = match model.name {
        Some(name) => format!("model = open_clip.create_model({name:?}, pretrained=None)"),
        None => format!("model = open_clip.model.CLIP(**json.loads({:?}))", model.config.to_string()),
    };
    let eps = if model.layer_norm_eps == open_clip::OPEN_CLIP_LAYER_NORM_EPS {
        String::new()
    } else {
        format!(
            "\nfor m in model.modules():  # this model's LayerNorm eps, not torch's 1e-5\n    if isinstance(m, torch.nn.LayerNorm):\n        m.eps = {:e}",
            model.layer_norm_eps
        )
    };
    format!(
        "load it in open_clip:\n\nimport json, torch, open_clip\nfrom safetensors.torch import load_file\n{build}\nmodel.load_state_dict(load_file({:?}), strict=True){eps}",
        file.display().to_string()
    )
}
