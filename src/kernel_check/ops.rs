//! The suite's op-level cases: backend ops called directly on emulator tensors, for the kernels
//! no training step of a tiny preset launches. Inputs are seeded draws made inside the case, so
//! every run uploads them under the sanitizer; shapes are small and ragged (partial tiles, odd
//! widths), and each op runs in every dtype its kernels come in.

use super::{Case, Outputs, output};
use crate::backend::gpu::{AttnTiles, GpuBackend};
use crate::backend::{self, Activation, AttnMask, Backend, ContrastWeights, Conv2dGeometry, InfoNceShard, SegmentMask};
use crate::error::Result;
use crate::ops::IGNORE_TARGET;
use crate::tensor::{DType, Device, Rng, Table, Tensor};

const SEED: u64 = 7;
const DTYPES: [DType; 2] = [DType::F32, DType::BF16];

/// The emulator's backend with InfoNCE's bf16 products on mma.sync rather than wgmma. InfoNCE's
/// are the only kernels with both, and no step reaches them in bf16 (its loss runs in f32).
static MMA_ONLY: GpuBackend = GpuBackend::without_wgmma(Device::Emu);

pub(super) fn cases() -> Vec<Case> {
    let mut cases: Vec<Case> = AttnTiles::ALL
        .into_iter()
        .map(|tiles| Case::new(format!("attention bf16 {tiles}"), move || attention_tiles(tiles)))
        .collect();
    cases.extend([
        Case::new("attention f32 head dims 32-128", attention_exact),
        Case::new("infonce f32 two ranks", || infonce_ranks(backend::get(Device::Emu), DType::F32)),
        Case::new("infonce bf16 wgmma two ranks", || infonce_ranks(backend::get(Device::Emu), DType::BF16)),
        Case::new("infonce bf16 mma.sync two ranks", || infonce_ranks(&MMA_ONLY, DType::BF16)),
        Case::new("batchnorm eval", batchnorm_eval),
        Case::new("conv: depthwise dW chunks, col2im", conv_backward_edges),
        Case::new("ema update", ema_update),
        Case::new("softmax", softmax),
        Case::new("column sums in two passes", column_sums),
        Case::new("bias + GELU", bias_gelu),
        Case::new("cross-entropy", cross_entropy),
        Case::new("layout 16-, 4- and 2-byte units", layout_units),
    ]);
    cases
}

/// Seeded N(0, 1) draws of `dims` in `dtype` on the emulator.
fn input(rng: &mut Rng, dims: &[usize], dtype: DType) -> Result<Tensor> {
    rng.normal_tensor(dims.to_vec(), 1.0, dtype).to_device(Device::Emu)
}

fn scalar(value: f64, dtype: DType) -> Result<Tensor> {
    Tensor::scalar(value, dtype).to_device(Device::Emu)
}

/// One attention call: packed qkv [batch, len, 3 * heads * head_dim] and its mask.
struct AttentionCall {
    label: &'static str,
    batch: usize,
    len: usize,
    heads: usize,
    head_dim: usize,
    mask: AttnMask,
}

impl AttentionCall {
    /// Forward and backward on seeded inputs in `dtype`: the output, log-sum-exps and d qkv.
    fn run(&self, be: &dyn Backend, rng: &mut Rng, dtype: DType) -> Result<Outputs> {
        let width = self.heads * self.head_dim;
        let qkv = input(rng, &[self.batch, self.len, 3 * width], dtype)?;
        let dout = input(rng, &[self.batch, self.len, width], dtype)?;
        let (out, lse) = be.attention(&qkv, self.heads, &self.mask)?;
        let dqkv = be.attention_backward(&qkv, &out, &lse, &dout, self.heads, &self.mask)?;
        let label = self.label;
        Ok(vec![
            output(format!("{label} out"), &out)?,
            output(format!("{label} lse"), &lse)?,
            output(format!("{label} dqkv"), &dqkv)?,
        ])
    }
}

/// The bf16 tensor-core kernels in one tile shape, at both head dims: batch rows with ragged
/// key padding (d32), packed causal sequences (d64), each longer than a 64-row tile, and packed
/// joint image+caption sequences under a cross segment mask whose boundary falls inside a tile.
fn attention_tiles(tiles: AttnTiles) -> Result<Outputs> {
    let be = GpuBackend::new(Device::Emu).with_attention_tiles(tiles);
    let calls = [
        AttentionCall {
            label: "d32",
            batch: 2,
            len: 70,
            heads: 2,
            head_dim: 32,
            mask: AttnMask::key_padding(vec![70, 41]),
        },
        AttentionCall {
            label: "d64",
            batch: 1,
            len: 100,
            heads: 2,
            head_dim: 64,
            mask: AttnMask::packed(vec![0, 67, 100], true),
        },
        AttentionCall {
            label: "d32 cross segments",
            batch: 1,
            len: 90,
            heads: 2,
            head_dim: 32,
            mask: AttnMask { segments: Some(SegmentMask::cross(37)), ..AttnMask::packed(vec![0, 50, 90], false) },
        },
    ];
    let mut rng = Rng::new(SEED);
    let mut outputs = Vec::new();
    for call in &calls {
        outputs.extend(call.run(&be, &mut rng, DType::BF16)?);
    }
    Ok(outputs)
}

/// The exact f32 kernels at every head dim they are built for (up to 32, 64, 96 and 128), under
/// causal and key-padding masks together, then under a block-diagonal segment mask.
fn attention_exact() -> Result<Outputs> {
    let mut rng = Rng::new(SEED);
    let mut outputs = Vec::new();
    for (label, head_dim) in [("d32", 32), ("d64", 64), ("d96", 96), ("d128", 128)] {
        let mask = AttnMask { causal: true, ..AttnMask::key_padding(vec![19, 11]) };
        let call = AttentionCall { label, batch: 2, len: 19, heads: 2, head_dim, mask };
        outputs.extend(call.run(backend::get(Device::Emu), &mut rng, DType::F32)?);
    }
    let mask = AttnMask { segments: Some(SegmentMask::block_diagonal(7)), ..AttnMask::key_padding(vec![19, 11]) };
    let call = AttentionCall { label: "d64 block-diagonal", batch: 2, len: 19, heads: 2, head_dim: 64, mask };
    outputs.extend(call.run(backend::get(Device::Emu), &mut rng, DType::F32)?);
    Ok(outputs)
}

/// The fused EMA update over ragged tensors (one of a single element, one past a chunk).
fn ema_update() -> Result<Outputs> {
    let mut rng = Rng::new(SEED);
    let mut targets = Vec::new();
    let mut sources = Vec::new();
    for n in [1, 4099, 300] {
        targets.push(input(&mut rng, &[n], DType::F32)?);
        sources.push(input(&mut rng, &[n], DType::F32)?);
    }
    let mut refs: Vec<&mut Tensor> = targets.iter_mut().collect();
    backend::get(Device::Emu).ema_update(&mut refs, &sources.iter().collect::<Vec<_>>(), 0.01)?;
    targets.iter().enumerate().map(|(i, t)| output(format!("ema target {i}"), t)).collect()
}

/// InfoNCE over 130 pairs split between two data-parallel ranks of 40 and 90 rows, as such a run
/// calls it: partials per rank, the column partials gathered, then finish and backward per rank.
/// Each rank's texts split into row ranges (130 columns against 40 or 90 rows), which adds the
/// kernels that combine the splits' log-sum-exps and sum their image gradients.
fn infonce_ranks(be: &dyn Backend, dtype: DType) -> Result<Outputs> {
    const PAIRS: usize = 130;
    const WIDTH: usize = 72;
    const RANK_ROWS: [usize; 2] = [40, 90];
    let mut rng = Rng::new(SEED);
    let txt = input(&mut rng, &[PAIRS, WIDTH], dtype)?;
    let imgs = [input(&mut rng, &[RANK_ROWS[0], WIDTH], dtype)?, input(&mut rng, &[RANK_ROWS[1], WIDTH], dtype)?];
    let (scale, dloss) = (scalar(2.5, dtype)?, scalar(0.75, dtype)?);
    let offsets = [0, RANK_ROWS[0]];
    // Unequal direction weights, so that a kernel mixing up the two directions cannot pass.
    let weights = ContrastWeights { rows: 0.7, columns: 0.3 };
    let shard = |rank: usize| InfoNceShard {
        offset: offsets[rank],
        ..InfoNceShard::whole(&imgs[rank], &txt, &scale, Some(100.0)).with_weights(weights)
    };
    let partials = [be.infonce_partial(shard(0))?, be.infonce_partial(shard(1))?];
    let rows = [partials[0].col_lse.reshape([1, PAIRS])?, partials[1].col_lse.reshape([1, PAIRS])?];
    let gathered = be.concat(&[&rows[0], &rows[1]], 0)?;
    let mut outputs = Vec::new();
    for (rank, partial) in partials.iter().enumerate() {
        let out = be.infonce_finish(partial, &gathered)?;
        let (dimg, dtxt, dscale) = be.infonce_backward(shard(rank), &out, &dloss)?;
        for (name, t) in [("loss", &out.loss), ("row lse", &out.row_lse), ("col lse", &out.col_lse)] {
            outputs.push(output(format!("rank {rank} {name}"), t)?);
        }
        for (name, t) in [("d img", &dimg), ("d txt", &dtxt), ("d scale", &dscale)] {
            outputs.push(output(format!("rank {rank} {name}"), t)?);
        }
    }
    Ok(outputs)
}

/// BatchNorm with running statistics (evaluation) on [3, 6, 5, 5], alone and with the ReLU
/// fused in.
fn batchnorm_eval() -> Result<Outputs> {
    let mut rng = Rng::new(SEED);
    let mut outputs = Vec::new();
    for dtype in DTYPES {
        let x = input(&mut rng, &[3, 6, 5, 5], dtype)?;
        let gamma = input(&mut rng, &[6], dtype)?;
        let beta = input(&mut rng, &[6], dtype)?;
        let mean = input(&mut rng, &[6], dtype)?;
        let var: Vec<f64> = (0..6).map(|_| 0.5 + rng.uniform()).collect();
        let var = Tensor::from_f64(&var, [6], dtype)?.to_device(Device::Emu)?;
        for relu in [false, true] {
            let out = backend::get(Device::Emu).batch_norm_eval(&x, &gamma, &beta, &mean, &var, 1e-5, relu)?;
            let name = if relu { "relu(y)" } else { "y" };
            outputs.push(output(format!("{dtype} {name}"), &out.y)?);
        }
    }
    Ok(outputs)
}

/// Convolution backward where the tiny steps' batch of 3 does not reach: the depthwise weight
/// gradient over several sample chunks (3 samples of 32x32 under a 3x3 kernel, in chunks of 2)
/// and in two passes of a block (17x17 = 289 taps, more than its 256 threads), and col2im at
/// stride 2 on an odd width (the tiles' element stores) and at stride 3 (the one-pixel form).
fn conv_backward_edges() -> Result<Outputs> {
    let be = backend::get(Device::Emu);
    let mut rng = Rng::new(SEED);
    let mut outputs = Vec::new();
    let geo = |stride, padding, groups| Conv2dGeometry { stride, padding, groups };
    for dtype in DTYPES {
        for (label, x_dims, w_dims, geo) in [
            ("depthwise chunks", [3, 1, 32, 32], [1, 1, 3, 3], geo(1, 1, 1)),
            ("depthwise passes", [2, 2, 17, 34], [2, 1, 17, 17], geo(17, 0, 2)),
            ("dense stride 2", [2, 2, 7, 9], [3, 2, 3, 3], geo(2, 1, 1)),
            ("dense stride 3", [2, 2, 11, 9], [3, 2, 2, 2], geo(3, 1, 1)),
        ] {
            let x = input(&mut rng, &x_dims, dtype)?;
            let w = input(&mut rng, &w_dims, dtype)?;
            let dy = input(&mut rng, be.conv2d(&x, &w, geo)?.dims(), dtype)?;
            let (dx, dw) = be.conv2d_backward(&x, &w, &dy, geo, true)?;
            let dx = dx.expect("dx was asked for");
            outputs.extend([output(format!("{dtype} {label} dx"), &dx)?, output(format!("{dtype} {label} dw"), &dw)?]);
        }
    }
    Ok(outputs)
}

/// Rows of a width the kernels read in vectors (40) and one they read element by element (13).
const ROW_WIDTHS: [usize; 2] = [40, 13];

/// Softmax over rows, forward and backward.
fn softmax() -> Result<Outputs> {
    let be = backend::get(Device::Emu);
    let mut rng = Rng::new(SEED);
    let mut outputs = Vec::new();
    for dtype in DTYPES {
        for width in ROW_WIDTHS {
            let x = input(&mut rng, &[5, width], dtype)?;
            let dy = input(&mut rng, &[5, width], dtype)?;
            let y = be.softmax(&x)?;
            let dx = be.softmax_backward(&y, &dy)?;
            outputs.extend([output(format!("{dtype} {width} y"), &y)?, output(format!("{dtype} {width} dx"), &dx)?]);
        }
    }
    Ok(outputs)
}

/// Column sums over rows enough for two passes (fp32 partials of row chunks, then one rounding
/// into the output), at each row width: a linear layer's bias gradient where cuBLASLt has no
/// bias-gradient epilogue for the shape (the emulator's GEMM always has it, so no step here
/// sums that way), and the model's other sums over rows.
fn column_sums() -> Result<Outputs> {
    let be = backend::get(Device::Emu);
    let mut rng = Rng::new(SEED);
    let mut outputs = Vec::new();
    for dtype in DTYPES {
        for width in ROW_WIDTHS {
            let x = input(&mut rng, &[1, 200, width], dtype)?;
            outputs.push(output(format!("{dtype} {width} sums"), &be.sum_middle(&x, 1, 200, width)?)?);
        }
    }
    Ok(outputs)
}

/// The fused bias + exact GELU, forward and backward (the tiny presets' MLPs use QuickGELU): rows
/// enough for d bias to take several row chunks, at a width of whole 128-bit packs and at an odd
/// one.
fn bias_gelu() -> Result<Outputs> {
    let be = backend::get(Device::Emu);
    let mut rng = Rng::new(SEED);
    let mut outputs = Vec::new();
    for dtype in DTYPES {
        for [rows, width] in [[70, 24], [40, 7]] {
            let x = input(&mut rng, &[rows, width], dtype)?;
            let bias = input(&mut rng, &[width], dtype)?;
            let dy = input(&mut rng, &[rows, width], dtype)?;
            let y = be.bias_activation(&x, &bias, Activation::Gelu)?;
            let (dx, dbias) = be.bias_activation_backward(&x, &bias, &dy, Activation::Gelu)?;
            let label = format!("{dtype} {rows}x{width}");
            outputs.extend([
                output(format!("{label} y"), &y)?,
                output(format!("{label} dx"), &dx)?,
                output(format!("{label} dbias"), &dbias)?,
            ]);
        }
    }
    Ok(outputs)
}

/// Cross-entropy of rows of logits against targets, forward and backward.
fn cross_entropy() -> Result<Outputs> {
    let be = backend::get(Device::Emu);
    let mut rng = Rng::new(SEED);
    let mut outputs = Vec::new();
    for dtype in DTYPES {
        for width in ROW_WIDTHS {
            let logits = input(&mut rng, &[5, width], dtype)?;
            // Row 3 ignored: its terms and gradients are zero and the mean is over the other four.
            let ids = (0..5).map(|row| if row == 3 { IGNORE_TARGET } else { (row * 7 % width) as u32 });
            let targets = Table::new(ids.collect());
            let (loss, lse) = be.cross_entropy(&logits, &targets)?;
            let dz = be.cross_entropy_backward(&logits, &lse, &targets, &scalar(1.0, dtype)?)?;
            for (name, t) in [("loss", &loss), ("lse", &lse), ("dz", &dz)] {
                outputs.push(output(format!("{dtype} {width} {name}"), t)?);
            }
        }
    }
    Ok(outputs)
}

/// The pure moves (slice, permute, repeat, row gather) at widths whose bytes make each access
/// unit the widest that fits: f32 rows of 8 and bf16 rows of 8 (16 bytes), f32 rows of 3 (4
/// bytes), bf16 rows of 3 (2 bytes).
fn layout_units() -> Result<Outputs> {
    let be = backend::get(Device::Emu);
    let mut rng = Rng::new(SEED);
    let mut outputs = Vec::new();
    for dtype in DTYPES {
        for width in [8, 3] {
            let x = input(&mut rng, &[3, 5, width], dtype)?;
            let table = input(&mut rng, &[7, width], dtype)?;
            let moved = [
                ("slice", be.slice(&x, 1, 1, 3)?),
                ("permute", be.permute(&x, &[1, 0, 2])?),
                ("repeat", be.repeat_middle(&x, 3, 2, 5 * width)?),
                ("gather", be.index_rows(&table, &Table::new(vec![6, 0, 3, 3, 1]))?),
            ];
            for (name, t) in &moved {
                outputs.push(output(format!("{dtype} {width} {name}"), t)?);
            }
        }
    }
    Ok(outputs)
}
