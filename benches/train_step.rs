//! CPU training-step time of the tiny presets: forward, backward and AdamW on one batch,
//! no data loading. `benches/train_step_torch.py` builds the same `tiny` model in PyTorch
//! with the same shapes for the ratio in docs/benchmarks.md.
//! Run: `cargo bench --bench train_step`.

use std::time::Instant;

use msclip::autograd;
use msclip::model::{ClipModel, preset};
use msclip::nn::{AdamW, AdamWConfig, ParamGroup, Update};
use msclip::{DType, Rng};

const BATCH: usize = 128;
/// Tokens per caption including SOT and EOT, the same in the PyTorch script.
const CAPTION_TOKENS: usize = 16;
const STEPS: usize = 10;

/// The command line's allocator, so the step is timed as `msclip train` runs it.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    msclip::allocator::keep_freed_pages();
    println!("threads: {}, batch {BATCH}, captions of {CAPTION_TOKENS} tokens", rayon::current_num_threads());
    for name in ["tiny", "tiny-clip", "tiny-msclip", "tiny-msclip-s", "tiny-oner"] {
        let model = ClipModel::new(preset(name).unwrap()).unwrap();
        let mut rng = Rng::new(0);
        let (mut params, mut buffers) = model.init_params(&mut rng, DType::F32).unwrap();
        let groups = vec![ParamGroup { name: "all".into(), weight_decay: 0.1, lr_scale: 1.0 }];
        let mut opt = AdamW::new(&params, AdamWConfig::default(), groups, |_, _| 0).unwrap();
        let c = &model.config;
        let size = c.vision.image_size;
        let images = rng.normal_tensor([BATCH, 3, size, size], 1.0, DType::F32);
        let vocab = c.text.vocab as u32;
        let mut tokens = vec![0u32; BATCH * c.text.context];
        for row in tokens.chunks_mut(c.text.context) {
            row[0] = vocab - 2;
            for slot in &mut row[1..CAPTION_TOKENS - 1] {
                *slot = 1 + rng.below(vocab as usize - 3) as u32;
            }
            row[CAPTION_TOKENS - 1] = vocab - 1;
        }
        let mut times = Vec::new();
        for _ in 0..STEPS + 1 {
            let start = Instant::now();
            let loss = model.contrastive_loss(&params, &mut buffers, &images, &tokens, None).unwrap();
            let grads = autograd::backward(&loss).unwrap();
            opt.step(&mut params, None, &grads, Update::at(1e-4)).unwrap();
            times.push(start.elapsed().as_secs_f64());
        }
        times.remove(0); // warm-up
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!(
            "{name:<14} {:>9} params  {:>8.1} ms/step  {:>7.1} pairs/s",
            model.counts().total,
            median * 1e3,
            BATCH as f64 / median
        );
    }
}
