//! The contrastive objectives a model trains with, each weighted (`--loss itc=1,xmc=1`).
//!
//! - `itc`: CLIP's symmetric image-text contrast, `(NCE(z_I, z_T) + NCE(z_T, z_I)) / 2`.
//! - `xmc`: OneR's cross-modal mixup contrast (reconstructed, `../shared/reference/oner-notes.md`
//!   section 3): the mixture `m = normalize(z_I + z_T)` of each pair's two embeddings is the
//!   target both modalities contrast against, `NCE(z_I, m) + NCE(z_T, m)`, each row picking its own
//!   pair's mixture among the batch's.
//! - `cmc`: the contrast OneR's authors ended with (their DEVIEW 2023 talk, notes section 2,
//!   formula reconstructed): the embedding j of the joint sequence (the pair's image tokens then
//!   its caption's, through the single tower, read at the image's CLS) against the mixture,
//!   `(NCE(j, m) + NCE(m, j)) / 2`. Single-tower models only.
//! - `cic`: OneR's contextual invariance contrast (arXiv v1; notes sections 2-3, reconstructed):
//!   the joint sequence again, under a cross segment mask (image queries attend only to the
//!   caption's keys and values, caption queries only to the image's), read at both [CLS] tokens,
//!   c = normalize(c_I|T + c_T|I), against the mixture: `(NCE(c, m) + NCE(m, c)) / 2`. Single-tower
//!   models only.
//!
//! - `mlm`: masked language modelling on masked copies of the captions (15% whole-word masking,
//!   two copies: OneR's collator, notes sections 4-5), BERT's head tied to the token embeddings.
//!   Needs the bidirectional text encoder.
//! - `mim`: masked image modelling, the masked patches' pixels regressed (the target OneR used is
//!   not known; pixels as in SimMIM and MAE). Needs a patchify stem without the parallel branch.
//!
//! The masked objectives are auxiliary: a run needs a contrastive one beside them. Their inputs
//! and heads are in `masked.rs` and `masked_heads.rs`.
//!
//! By default the mixture is a target only (no gradient flows through it, as through MoCo's key
//! branch); the switch `through-mixture` lets it flow.
//!
//! `NCE(a, b)` is the one-directional InfoNCE of [`crate::ops::contrast`] with
//! [`ContrastWeights::ROWS`]; every term shares the model's learnable logit scale. In a
//! data-parallel world every contrast spans the global batch ([`Negatives::AcrossRanks`]): a
//! row's negatives are every rank's pairs, its positive (its own pair's text or mixture) its own.

use serde::{Deserialize, Serialize};

use super::config::{ModelConfig, Sharing};
use crate::backend::ContrastWeights;
use crate::dist::Negatives;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// The names `--loss` accepts, for help texts and errors.
pub const OBJECTIVES: &[&str] = &["itc", "xmc", "cmc", "cic", "mlm", "mim"];

/// Each objective's weight in the training loss (0: not computed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Objectives {
    pub itc: f64,
    pub xmc: f64,
    #[serde(default)]
    pub cmc: f64,
    #[serde(default)]
    pub cic: f64,
    #[serde(default)]
    pub mlm: f64,
    #[serde(default)]
    pub mim: f64,
    /// Whether the gradients of XMC, CMC and CIC also flow through the mixture target (default: no).
    #[serde(default)]
    pub through_mixture: bool,
}

/// A batch's weighted training loss and, when there is more than one objective, each one's
/// unweighted value (detached: for the log only), in the order of [`OBJECTIVES`].
pub struct LossTerms {
    pub total: Tensor,
    pub terms: Vec<(&'static str, Tensor)>,
}

/// What the objectives are computed from: L2-normalised [n, d] image and text embeddings of n
/// pairs (pair i in row i of both) and, when CMC or CIC is on, the joint sequences' (CIC's:
/// the normalised sum of their two cross-attended [CLS] embeddings).
pub struct PairFeatures {
    pub img: Tensor,
    pub txt: Tensor,
    /// The embeddings the mixture target is made of, when not `img` and `txt`: a momentum
    /// copy's of the same pairs (no gradient reaches them).
    pub mixture_from: Option<(Tensor, Tensor)>,
    pub joint: Option<Tensor>,
    pub contextual: Option<Tensor>,
    /// The masked objectives' losses, when on (computed by the towers, not from embeddings).
    pub mlm: Option<Tensor>,
    pub mim: Option<Tensor>,
}

impl Default for Objectives {
    /// CLIP's contrast alone.
    fn default() -> Self {
        Objectives { itc: 1.0, xmc: 0.0, cmc: 0.0, cic: 0.0, mlm: 0.0, mim: 0.0, through_mixture: false }
    }
}

impl Objectives {
    /// Parses `--loss`: comma-separated `name=weight` pairs (`itc=1,xmc=0.5`); a name without a
    /// weight counts 1. Objectives not named weigh 0; `through-mixture` is a switch.
    pub fn parse(spec: &str) -> Result<Objectives> {
        let mut objectives = Objectives { itc: 0.0, ..Objectives::default() };
        for item in spec.split(',').map(str::trim) {
            let (name, weight) = match item.split_once('=') {
                Some((name, weight)) => {
                    let value = weight.trim().parse::<f64>().map_err(|_| {
                        Error::config(format!("--loss {spec:?}: the weight of {name:?} is not a number: {weight:?}"))
                    })?;
                    (name.trim(), value)
                }
                None => (item, 1.0),
            };
            match name {
                "itc" => objectives.itc = weight,
                "xmc" => objectives.xmc = weight,
                "cmc" => objectives.cmc = weight,
                "cic" => objectives.cic = weight,
                "mlm" => objectives.mlm = weight,
                "mim" => objectives.mim = weight,
                "through-mixture" if weight == 1.0 => objectives.through_mixture = true,
                _ => {
                    return Err(Error::config(format!(
                        "--loss {spec:?}: unknown objective {name:?}; known: {} (and the switch through-mixture)",
                        OBJECTIVES.join(", ")
                    )));
                }
            }
        }
        objectives.validate()?;
        Ok(objectives)
    }

    /// Every weight finite and non-negative, a contrastive one above zero.
    pub fn validate(&self) -> Result<()> {
        let contrastive = [("itc", self.itc), ("xmc", self.xmc), ("cmc", self.cmc), ("cic", self.cic)];
        let masked = [("mlm", self.mlm), ("mim", self.mim)];
        let all = contrastive.iter().chain(&masked);
        if let Some((name, w)) = all.clone().find(|(_, w)| !(w.is_finite() && *w >= 0.0)) {
            return Err(Error::config(format!("--loss: the weight of {name} must be a finite number >= 0, got {w}")));
        }
        if all.clone().all(|(_, w)| *w == 0.0) {
            return Err(Error::config(format!(
                "--loss: every objective weighs 0; give one of {} a positive weight",
                OBJECTIVES.join(", ")
            )));
        }
        if contrastive.iter().all(|(_, w)| *w == 0.0) {
            return Err(Error::config(
                "--loss: mlm and mim train beside a contrastive objective, not alone (nothing would train the \
                 embeddings evaluation reads); add itc, xmc, cmc or cic",
            ));
        }
        Ok(())
    }

    /// A preset's training objectives: CLIP's contrast for two towers; for a single tower
    /// OneR's, ITC with XMC (on the shapes world ITC + XMC beat ITC alone and ITC + XMC + CMC
    /// matched it at twice the cost, docs/oner.md).
    pub fn for_model(model: &ModelConfig) -> Objectives {
        match model.sharing {
            Sharing::All => Objectives { xmc: 1.0, ..Objectives::default() },
            Sharing::None | Sharing::AttnMlp => Objectives::default(),
        }
    }

    /// Refuses, before a run starts, an objective the model cannot compute: the joint sequence
    /// of CMC and CIC needs one tower for both modalities.
    pub fn check_model(&self, model: &ModelConfig) -> Result<()> {
        let joint = [("cmc", self.cmc), ("cic", self.cic)];
        if let Some((name, _)) = joint.iter().find(|(_, w)| *w > 0.0)
            && model.sharing != Sharing::All
        {
            return Err(Error::config(format!(
                "--loss {name} runs the image and caption through one tower as one sequence: {} has two towers \
                 (sharing {:?}); use a single-tower preset (tiny-oner, oner-b32, oner-b16)",
                model.name, model.sharing
            )));
        }
        // The heads' own conditions (a bidirectional text encoder, a patchify stem).
        for (name, on, with_head) in [
            ("mlm", self.mlm > 0.0, ModelConfig { mlm_head: true, ..model.clone() }),
            ("mim", self.mim > 0.0, ModelConfig { mim_head: true, ..model.clone() }),
        ] {
            if on {
                with_head.validate().map_err(|e| Error::config(format!("--loss {name}: {e}")))?;
            }
        }
        Ok(())
    }

    /// Whether the model needs its masked-modelling heads: (MLM, MIM).
    pub fn masked_heads(&self) -> (bool, bool) {
        (self.mlm > 0.0, self.mim > 0.0)
    }

    /// Whether any objective contrasts against the mixture target (XMC, CMC, CIC).
    pub fn uses_mixture(&self) -> bool {
        self.xmc > 0.0 || self.cmc > 0.0 || self.cic > 0.0
    }

    /// Whether the model must encode the joint image+caption sequences in full (CMC).
    pub fn needs_joint(&self) -> bool {
        self.cmc > 0.0
    }

    /// Whether the model must encode them under the cross segment mask (CIC).
    pub fn needs_contextual(&self) -> bool {
        self.cic > 0.0
    }

    /// The weighted loss of a batch; `logit_scale` and `max_scale` as [`crate::ops::infonce`] takes
    /// them.
    pub fn loss(&self, f: &PairFeatures, logit_scale: &Tensor, max_scale: Option<f64>) -> Result<Tensor> {
        Ok(self.loss_terms(f, logit_scale, max_scale, &Negatives::Local)?.total)
    }

    /// [`Objectives::loss`] with each objective's value beside it, the contrasts finding their
    /// negatives as `negatives` says (across ranks: every value is this rank's share).
    pub fn loss_terms(
        &self,
        f: &PairFeatures,
        logit_scale: &Tensor,
        max_scale: Option<f64>,
        negatives: &Negatives,
    ) -> Result<LossTerms> {
        let mut terms = Vec::new();
        let contrast = |rows: &Tensor, columns: &Tensor, weights| {
            negatives.contrast(rows, columns, logit_scale, max_scale, weights)
        };
        if self.itc > 0.0 {
            terms.push(("itc", self.itc, contrast(&f.img, &f.txt, ContrastWeights::SYMMETRIC)?));
        }
        if self.uses_mixture() {
            let (img, txt) = f.mixture_from.as_ref().map_or((&f.img, &f.txt), |(i, t)| (i, t));
            let mixture = img.add(txt)?.l2_normalize(1e-12)?;
            let mixture = if self.through_mixture && f.mixture_from.is_none() { mixture } else { mixture.detach() };
            let nce = |rows: &Tensor, weights| contrast(rows, &mixture, weights);
            if self.xmc > 0.0 {
                let from_images = nce(&f.img, ContrastWeights::ROWS)?;
                terms.push(("xmc", self.xmc, from_images.add(&nce(&f.txt, ContrastWeights::ROWS)?)?));
            }
            if self.cmc > 0.0 {
                let joint = f.joint.as_ref().ok_or_else(|| {
                    Error::invalid("objectives", "cmc needs the joint sequences' embeddings, which were not computed")
                })?;
                terms.push(("cmc", self.cmc, nce(joint, ContrastWeights::SYMMETRIC)?));
            }
            if self.cic > 0.0 {
                let contextual = f.contextual.as_ref().ok_or_else(|| {
                    Error::invalid("objectives", "cic needs the cross-attended embeddings, which were not computed")
                })?;
                terms.push(("cic", self.cic, nce(contextual, ContrastWeights::SYMMETRIC)?));
            }
        }
        for (name, weight, loss) in [("mlm", self.mlm, &f.mlm), ("mim", self.mim, &f.mim)] {
            if weight > 0.0 {
                let loss = loss.as_ref().ok_or_else(|| {
                    Error::invalid("objectives", format!("{name} needs this step's masks, which were not drawn"))
                })?;
                terms.push((name, weight, negatives.share_of_mean(loss.clone())?));
            }
        }
        let mut total: Option<Tensor> = None;
        for (_, weight, term) in &terms {
            // A weight of 1 adds no op, so CLIP's loss alone is exactly its contrast.
            let term = if *weight == 1.0 { term.clone() } else { term.scale(*weight)? };
            total = Some(match total {
                Some(sum) => sum.add(&term)?,
                None => term,
            });
        }
        let total = total.ok_or_else(|| Error::config("--loss: every objective weighs 0"))?;
        let terms = match terms.len() {
            1 => Vec::new(),
            _ => terms.into_iter().map(|(name, _, term)| (name, term.detach())).collect(),
        };
        Ok(LossTerms { total, terms })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reads_weights_and_switches() {
        let o = Objectives::parse("itc=1, xmc=0.5").unwrap();
        assert_eq!((o.itc, o.xmc, o.cmc, o.through_mixture), (1.0, 0.5, 0.0, false));
        let o = Objectives::parse("xmc,cmc=2,through-mixture").unwrap();
        assert_eq!((o.itc, o.xmc, o.cmc, o.through_mixture), (0.0, 1.0, 2.0, true));
        assert_eq!(Objectives::parse("xmc,cic=0.5").unwrap().cic, 0.5);
        let o = Objectives::parse("itc,mlm=0.5,mim").unwrap();
        assert_eq!((o.mlm, o.mim, o.masked_heads()), (0.5, 1.0, (true, true)));
    }

    #[test]
    fn parse_refuses_what_it_cannot_run() {
        for (spec, says) in [
            ("itc=1,mmm=1", "unknown objective \"mmm\""),
            ("mlm,mim", "beside a contrastive objective"),
            ("itc,through-mixture=2", "unknown objective \"through-mixture\""),
            ("itc=x", "is not a number"),
            ("itc=-1", "finite number >= 0"),
            ("itc=inf", "finite number >= 0"),
            ("itc=0", "every objective weighs 0"),
            ("through-mixture", "every objective weighs 0"),
        ] {
            let err = Objectives::parse(spec).unwrap_err().to_string();
            assert!(err.contains(says), "{spec:?}: {err}");
        }
    }

    #[test]
    fn single_towers_train_with_xmc_by_default() {
        let of = |name: &str| Objectives::for_model(&crate::model::preset(name).unwrap());
        assert_eq!((of("tiny-oner").itc, of("tiny-oner").xmc), (1.0, 1.0));
        assert_eq!(of("tiny"), Objectives::default());
        assert_eq!(of("clip-b32"), Objectives::default());
    }

    #[test]
    fn cmc_and_cic_need_a_single_tower() {
        for spec in ["itc,cmc", "xmc,cic"] {
            let joint = Objectives::parse(spec).unwrap();
            let err = joint.check_model(&crate::model::preset("tiny").unwrap()).unwrap_err().to_string();
            assert!(err.contains("single-tower preset") && err.contains(&spec[4..]), "{err}");
            joint.check_model(&crate::model::preset("tiny-oner").unwrap()).unwrap();
        }
        Objectives::parse("itc,xmc").unwrap().check_model(&crate::model::preset("tiny-clip").unwrap()).unwrap();
    }

    #[test]
    fn masked_objectives_need_their_encoder_and_stem() {
        let of = |name: &str| crate::model::preset(name).unwrap();
        let mlm = Objectives::parse("itc,mlm").unwrap();
        let err = mlm.check_model(&of("tiny-clip")).unwrap_err().to_string();
        assert!(err.contains("--loss mlm") && err.contains("bidirectional"), "{err}");
        mlm.check_model(&of("tiny-oner")).unwrap();
        let mim = Objectives::parse("itc,mim").unwrap();
        let err = mim.check_model(&of("tiny")).unwrap_err().to_string();
        assert!(err.contains("--loss mim") && err.contains("patchify"), "{err}");
        mim.check_model(&of("tiny-clip")).unwrap();
        mim.check_model(&of("tiny-oner")).unwrap();
    }
}
