//! Which fused ops run as compositions of plain ops instead, so that a fusion's worth is
//! measured on the same model and step without touching the model code
//! (`msclip bench step --unfused layernorm,bias-gelu,infonce,attention,batchnorm-relu,bias-grad`).
//!
//! The switch lives on the calling thread for the length of [`unfused`], as the op timing of
//! `backend::timed` does: a step is issued from one thread, and tests on other threads are not
//! affected. Each fused op checks it at its entry and, when off, builds its result from the
//! ops in `super::unfused`, which record their own backward passes.

use std::cell::Cell;

/// A fused op that can run as its unfused composition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fusion {
    /// `add_layer_norm`: the residual add and the LayerNorm in one kernel; unfused, an `add`
    /// then a `layer_norm`.
    ResidualLayerNorm,
    /// `bias_activation` (`bias_quick_gelu`, `bias_gelu`): the MLP's bias and activation in one
    /// kernel; unfused, an `add_broadcast` then the activation (`quick_gelu` or `gelu`).
    BiasGelu,
    /// `infonce`: the tiled contrastive loss that never stores the logits; unfused, a logits
    /// GEMM, the temperature and two cross-entropies over the stored [n, n] logits.
    InfoNce,
    /// `attention`: flash-style attention; unfused, the scores materialised per head as
    /// PyTorch's math path does (GEMM, mask, softmax, GEMM) over sequences padded to the longest.
    Attention,
    /// `batch_norm_relu2d`: BatchNorm with the ReLU after it in its kernels; unfused, a
    /// `batch_norm2d` then a `relu`.
    BatchNormRelu,
    /// `linear`'s backward: the bias gradient taken by the weight gradient's GEMM
    /// (`matmul_bias_grad`); unfused, the GEMM then a `sum_middle` over dy.
    BiasGrad,
}

impl Fusion {
    pub const ALL: [Fusion; 6] = [
        Fusion::ResidualLayerNorm,
        Fusion::BiasGelu,
        Fusion::InfoNce,
        Fusion::Attention,
        Fusion::BatchNormRelu,
        Fusion::BiasGrad,
    ];

    fn bit(self) -> u8 {
        1 << self as u8
    }
}

thread_local! {
    /// The fusions switched off on this thread, one bit per [`Fusion`].
    static OFF: Cell<u8> = const { Cell::new(0) };
}

/// Runs `f` with `fusions` switched off on this thread (in addition to any an enclosing call
/// switched off); they are back on when it returns, or unwinds.
pub fn unfused<R>(fusions: &[Fusion], f: impl FnOnce() -> R) -> R {
    struct Restore(u8);
    impl Drop for Restore {
        fn drop(&mut self) {
            OFF.set(self.0);
        }
    }
    let outer = OFF.get();
    let _restore = Restore(outer);
    OFF.set(fusions.iter().fold(outer, |bits, f| bits | f.bit()));
    f()
}

/// Whether `fusion` is switched off on this thread.
pub fn is_off(fusion: Fusion) -> bool {
    OFF.get() & fusion.bit() != 0
}
