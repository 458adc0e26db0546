//! The image tower: stem (patchify conv or early-specialisation conv stem), CLS and
//! positional embeddings, ln_pre, transformer blocks with the parallel branch fused in
//! before its lateral layers, ln_post on CLS, projection.

use super::builder::{Buffers, Init, ModelSpec, Role};
use super::config::{InitStyle, ModelConfig, TYPE_EMBEDDING_STD, VisionStem};
use super::convnet::{BranchGeometry, EarlyConvStem, Mode, ParallelBranchNet, map_to_tokens};
use super::masked::MaskedPatches;
use super::masked_heads::MimHead;
use super::transformer::{Block, LayerNorm, Pooled};
use crate::backend::{AttnMask, Conv2dGeometry};
use crate::error::{Error, Result};
use crate::nn::{ParamId, ParamStore};
use crate::ops;
use crate::tensor::Tensor;

#[derive(Debug, Clone)]
enum Stem {
    Patchify { weight: ParamId, patch: usize },
    Conv(EarlyConvStem),
}

/// LayerNorm and projection applied to the pooled token. With sharing `All` the image and
/// text towers use one head.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Head {
    pub ln: LayerNorm,
    pub proj: ParamId,
}

impl Head {
    pub fn new(
        spec: &mut ModelSpec,
        (ln_name, proj_name): (&str, &str),
        width: usize,
        config: &ModelConfig,
        std: f64,
        role: Role,
    ) -> Self {
        Head {
            ln: LayerNorm::new(spec, ln_name, width, config.ln_eps, role),
            proj: spec.param(proj_name, &[width, config.embed_dim], Init::Normal(std), role),
        }
    }

    /// [batch, width] pooled tokens to L2-normalised [batch, embed_dim] features.
    pub fn forward(&self, p: &ParamStore, pooled: &Tensor) -> Result<Tensor> {
        self.ln.forward(p, pooled)?.matmul(p.get(self.proj))?.l2_normalize(1e-12)
    }
}

#[derive(Debug, Clone)]
pub struct VisionTower {
    stem: Stem,
    class_embedding: ParamId,
    positional_embedding: ParamId,
    /// Added to every token ([`crate::model::ModelConfig::type_embedding`]).
    type_embedding: Option<ParamId>,
    ln_pre: LayerNorm,
    /// (transformer layer index, block); the conv stem, when present, is layer 0.
    pub blocks: Vec<(usize, Block)>,
    branch: Option<(ParallelBranchNet, Vec<usize>)>,
    pub head: Head,
    /// Masked image modelling's mask token and head ([`ModelConfig::mim_head`]).
    mim: Option<MimHead>,
    image_size: usize,
    width: usize,
}

impl VisionTower {
    /// Declares the tower; `blocks` are built by the caller (they may be shared with text).
    pub fn new(spec: &mut ModelSpec, config: &ModelConfig, blocks: Vec<(usize, Block)>, head: Head) -> Self {
        let v = &config.vision;
        let scale = (v.width as f64).powf(-0.5);
        let stem = match &v.stem {
            VisionStem::Patchify { patch } => {
                let init = match config.init {
                    InitStyle::MsClip => Init::Normal(0.02),
                    // PyTorch's default conv init: U(+-1/sqrt(fan_in)).
                    InitStyle::OpenAiClip => Init::Uniform(1.0 / ((3 * patch * patch) as f64).sqrt()),
                };
                let weight = spec.param("visual.conv1.weight", &[v.width, 3, *patch, *patch], init, Role::Vision);
                Stem::Patchify { weight, patch: *patch }
            }
            VisionStem::ConvStem { channels, strides } => {
                Stem::Conv(EarlyConvStem::new(spec, "visual.stem", channels, strides, v.width, config.bn_eps))
            }
        };
        let class_embedding = spec.param("visual.class_embedding", &[v.width], Init::Normal(scale), Role::Vision);
        let positional_embedding =
            spec.param("visual.positional_embedding", &[v.tokens(), v.width], Init::Normal(scale), Role::Vision);
        let type_embedding = config
            .type_embedding
            .then(|| spec.param("visual.type_embedding", &[v.width], Init::Normal(TYPE_EMBEDDING_STD), Role::Vision));
        let ln_pre = LayerNorm::new(spec, "visual.ln_pre", v.width, config.ln_eps, Role::Vision);
        let branch = v.parallel_branch.as_ref().map(|pb| {
            let geo = BranchGeometry {
                channels: &pb.channels,
                strides: &pb.strides,
                image_size: v.image_size,
                grid: v.grid(),
                width: v.width,
            };
            let eps = (config.bn_eps, config.bn_eps_branch_blocks, config.ln_eps);
            (ParallelBranchNet::new(spec, "visual.branch", geo, eps), pb.lateral_layers.clone())
        });
        let mim = match (&v.stem, config.mim_head) {
            (VisionStem::Patchify { patch }, true) => Some(MimHead::new(spec, v.width, *patch, config.ln_eps)),
            _ => None, // ModelConfig::validate refuses a MIM head on any other stem
        };
        VisionTower {
            stem,
            class_embedding,
            positional_embedding,
            type_embedding,
            ln_pre,
            blocks,
            branch,
            head,
            mim,
            image_size: v.image_size,
            width: v.width,
        }
    }

    /// [batch, 3, size, size] normalised images to L2-normalised features.
    pub fn forward(&self, p: &ParamStore, bufs: &mut Buffers, images: &Tensor, mode: Mode) -> Result<Tensor> {
        // The last block computes only the CLS rows the head reads.
        let x = self.trunk(p, bufs, images, mode, Some(Pooled::FirstToken), None)?;
        let pooled = if self.blocks.is_empty() { self.pool(&x)? } else { x };
        self.head.forward(p, &pooled)
    }

    /// The patch tokens of the last block through the head: L2-normalised [batch, grid^2,
    /// embed_dim] patch embeddings in row-major grid order (dense features for zero-shot
    /// localisation: each patch compared with a text embedding).
    pub fn forward_patches(&self, p: &ParamStore, bufs: &mut Buffers, images: &Tensor, mode: Mode) -> Result<Tensor> {
        let x = self.trunk(p, bufs, images, mode, None, None)?;
        let (batch, tokens) = (x.dims()[0], x.dims()[1]);
        let patches = x.slice(1, 1, tokens - 1)?.reshape([batch * (tokens - 1), self.width])?;
        let features = self.head.forward(p, &patches)?;
        let dim = features.dims()[1];
        features.reshape([batch, tokens - 1, dim])
    }

    /// Masked image modelling's loss on `masked`: the images with their masked patches' tokens
    /// replaced by the mask token through the trunk, the masked patches' rows through the MIM head
    /// against their pixels.
    pub fn mim_loss(
        &self,
        p: &ParamStore,
        bufs: &mut Buffers,
        images: &Tensor,
        masked: &MaskedPatches,
        mode: Mode,
    ) -> Result<Tensor> {
        let head = self.mim.as_ref().ok_or_else(|| {
            Error::config("--loss mim needs the model's MIM head, which this model was built without (mim_head)")
        })?;
        let x = self.trunk(p, bufs, images, mode, None, Some((head, masked)))?;
        let (batch, tokens) = (x.dims()[0], x.dims()[1]);
        let rows = x.reshape([batch * tokens, self.width])?.index_rows_by(&masked.rows)?;
        head.loss(p, &rows, images, &masked.pixels)
    }

    /// The stem and the blocks, with the parallel branch fused in; the last block computes only
    /// the `last` rows when given ([batch, width]), else every token ([batch, tokens, width]).
    /// With `masked`, the masked patches' tokens are the mask token's.
    fn trunk(
        &self,
        p: &ParamStore,
        bufs: &mut Buffers,
        images: &Tensor,
        mode: Mode,
        last: Option<Pooled>,
        masked: Option<(&MimHead, &MaskedPatches)>,
    ) -> Result<Tensor> {
        let mut x = self.embed_masked(p, bufs, images, mode, masked)?;
        let mut branch = BranchProgress::start(images);
        for (i, (layer, block)) in self.blocks.iter().enumerate() {
            while self.lateral_before(&branch, *layer) {
                x = self.fuse_branch(&mut branch, p, bufs, &x, mode)?;
            }
            x = match last {
                Some(pooled) if i + 1 == self.blocks.len() => block.forward_pooled(p, &x, &AttnMask::none(), pooled)?,
                _ => block.forward(p, &x, &AttnMask::none())?,
            };
        }
        Ok(x)
    }

    /// The trunk's input: stem tokens after the CLS token, positional embeddings added and
    /// ln_pre applied, [batch, tokens, width].
    pub fn embed(&self, p: &ParamStore, bufs: &mut Buffers, images: &Tensor, mode: Mode) -> Result<Tensor> {
        self.embed_masked(p, bufs, images, mode, None)
    }

    /// [`VisionTower::embed`] with the stem tokens of `masked`'s patches replaced by the mask token.
    fn embed_masked(
        &self,
        p: &ParamStore,
        bufs: &mut Buffers,
        images: &Tensor,
        mode: Mode,
        masked: Option<(&MimHead, &MaskedPatches)>,
    ) -> Result<Tensor> {
        let dims = images.dims();
        if dims.len() != 4 || dims[1] != 3 || dims[2] != self.image_size || dims[3] != self.image_size {
            return Err(Error::shape(
                "encode_image",
                format!("images must be [batch, 3, {s}, {s}], got {}", images.shape(), s = self.image_size),
            ));
        }
        let batch = dims[0];
        let map = match &self.stem {
            Stem::Patchify { weight, patch } => {
                ops::conv2d(images, p.get(*weight), Conv2dGeometry { stride: *patch, padding: 0, groups: 1 })?
            }
            Stem::Conv(stem) => stem.forward(p, bufs, images, mode)?,
        };
        let cls = Tensor::zeros([batch, 1, self.width], images.dtype())
            .to_device(images.device())?
            .add_broadcast(&p.get(self.class_embedding).reshape([1, self.width])?)?;
        let patches = map_to_tokens(&map)?;
        let patches = match masked {
            Some((head, masked)) => {
                let n = patches.dims()[1];
                let rows = patches.reshape([batch * n, self.width])?;
                let with_mask = ops::concat(&[&rows, &p.get(head.mask_token).reshape([1, self.width])?], 0)?;
                with_mask.index_rows_by(&masked.tokens)?.reshape([batch, n, self.width])?
            }
            None => patches,
        };
        let x = ops::concat(&[&cls, &patches], 1)?.add_broadcast(p.get(self.positional_embedding))?;
        let x = match self.type_embedding {
            Some(t) => x.add_broadcast(p.get(t))?,
            None => x,
        };
        self.ln_pre.forward(p, &x)
    }

    /// The block of transformer layer `layer`, if the tower has one there (the conv stem takes
    /// the place of layer 0).
    pub fn block_at(&self, layer: usize) -> Option<&Block> {
        self.blocks.iter().find(|(l, _)| *l == layer).map(|(_, block)| block)
    }

    /// Whether the parallel branch's next stage fuses into the trunk just before `layer` (ask
    /// again after fusing it: the stage after may fuse there too).
    pub fn lateral_before(&self, branch: &BranchProgress, layer: usize) -> bool {
        self.branch.as_ref().is_some_and(|(_, laterals)| laterals.get(branch.next_stage) == Some(&layer))
    }

    /// Runs the parallel branch's next stage and fuses it into the trunk `x` [batch, tokens,
    /// width] through its lateral adapter; returns the new trunk.
    pub fn fuse_branch(
        &self,
        branch: &mut BranchProgress,
        p: &ParamStore,
        bufs: &mut Buffers,
        x: &Tensor,
        mode: Mode,
    ) -> Result<Tensor> {
        let Some((net, _)) = &self.branch else {
            return Err(Error::invalid("encode_image", "the tower has no parallel branch to fuse"));
        };
        let (stage, x) = net.fuse(branch.next_stage, p, bufs, &branch.state, x, mode)?;
        *branch = BranchProgress { state: stage, next_stage: branch.next_stage + 1 };
        Ok(x)
    }

    /// The CLS token of each image: [batch, width] from the trunk's [batch, tokens, width].
    pub fn pool(&self, x: &Tensor) -> Result<Tensor> {
        Pooled::FirstToken.select(x)
    }
}

/// How far the parallel branch has run in a forward: its latest stage's output (the images
/// before stage 0) and the stage to run next.
pub struct BranchProgress {
    state: Tensor,
    next_stage: usize,
}

impl BranchProgress {
    pub fn start(images: &Tensor) -> Self {
        BranchProgress { state: images.clone(), next_stage: 0 }
    }
}
