//! Shapes-world generation throughput: samples per second on one thread and on the rayon
//! pool, at the tiny preset and at the default config from 32 to 224 px. The trainer makes
//! every batch on the fly, so this bounds steps per second on a CPU.
//! Run: `cargo bench --bench shapes_gen`.

use std::time::Instant;

use msclip::data::shapes::{ShapesConfig, Split, sample, samples};

/// Samples per second of `make(start, n)` over about half a second.
fn rate(mut make: impl FnMut(u64, u64)) -> f64 {
    make(0, 64); // warm-up: thread pool start, page faults
    let (mut done, start) = (0u64, Instant::now());
    while start.elapsed().as_secs_f64() < 0.5 {
        make(done, 256);
        done += 256;
    }
    done as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let configs = [
        ("tiny (48 px)", ShapesConfig::tiny()),
        ("tiny at 32 px", ShapesConfig { image_size: 32, ..ShapesConfig::tiny() }),
        ("default 32 px", ShapesConfig { image_size: 32, ..ShapesConfig::default() }),
        ("default 64 px", ShapesConfig::default()),
        ("default 224 px", ShapesConfig { image_size: 224, ..ShapesConfig::default() }),
    ];
    println!("{:<16} {:>14} {:>14}  ({} threads)", "config", "1 thread /s", "pool /s", rayon::current_num_threads());
    for (name, cfg) in configs {
        let single = rate(|start, n| {
            for i in start..start + n {
                std::hint::black_box(sample(&cfg, Split::Train, i));
            }
        });
        let pooled = rate(|start, n| {
            std::hint::black_box(samples(&cfg, Split::Train, start..start + n));
        });
        println!("{name:<16} {single:>14.0} {pooled:>14.0}");
    }
}
