//! The contrastive objectives a model trains with, each weighted (`--loss itc=1,xmc=1`).
//!
//! - `itc`: CLIP's symmetric image-text contrast, `(NCE(z_I, z_T) + NCE(z_T, z_I)) / 2`.
//! - `xmc`: OneR's cross-modal mixup contrast (reconstructed, `../shared/reference/oner-notes.md`
//!   section 3): the mixture `m = normalize(z_I + z_T)` of each pair's two embeddings is the
//!   target both modalities contrast against, `NCE(z_I, m) + NCE(z_T, m)`, each row picking its own
//!   pair's mixture among the batch's. By default the mixture is a target only (no gradient flows
//!   through it, as through MoCo's key branch); `xmc-through-mixture` lets it flow.
//!
//! `NCE(a, b)` is the one-directional InfoNCE of [`ops::contrast`] with [`ContrastWeights::ROWS`];
//! every term shares the model's learnable logit scale.

use serde::{Deserialize, Serialize};

use crate::backend::ContrastWeights;
use crate::error::{Error, Result};
use crate::ops;
use crate::tensor::Tensor;

/// The names `--loss` accepts, for help texts and errors.
pub const OBJECTIVES: &[&str] = &["itc", "xmc"];

/// Each objective's weight in the training loss (0: not computed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Objectives {
    pub itc: f64,
    pub xmc: f64,
    /// Whether XMC's gradient also flows through the mixture target (default: it does not).
    #[serde(default)]
    pub xmc_through_mixture: bool,
}

impl Default for Objectives {
    /// CLIP's contrast alone.
    fn default() -> Self {
        Objectives { itc: 1.0, xmc: 0.0, xmc_through_mixture: false }
    }
}

impl Objectives {
    /// Parses `--loss`: comma-separated `name=weight` pairs (`itc=1,xmc=0.5`); a name without a
    /// weight counts 1. Objectives not named weigh 0; `xmc-through-mixture` is a switch.
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
                "xmc-through-mixture" if weight == 1.0 => objectives.xmc_through_mixture = true,
                _ => {
                    return Err(Error::config(format!(
                        "--loss {spec:?}: unknown objective {name:?}; known: {} (and the switch xmc-through-mixture)",
                        OBJECTIVES.join(", ")
                    )));
                }
            }
        }
        objectives.validate()?;
        Ok(objectives)
    }

    /// Every weight finite and non-negative, at least one above zero.
    pub fn validate(&self) -> Result<()> {
        let weights = [("itc", self.itc), ("xmc", self.xmc)];
        if let Some((name, w)) = weights.iter().find(|(_, w)| !(w.is_finite() && *w >= 0.0)) {
            return Err(Error::config(format!("--loss: the weight of {name} must be a finite number >= 0, got {w}")));
        }
        if weights.iter().all(|(_, w)| *w == 0.0) {
            return Err(Error::config(format!(
                "--loss: every objective weighs 0; give one of {} a positive weight",
                OBJECTIVES.join(", ")
            )));
        }
        Ok(())
    }

    /// The weighted loss of a batch of L2-normalised image and text features [n, d] (pair i in
    /// row i of both); `logit_scale` and `max_scale` as [`ops::infonce`] takes them.
    pub fn loss(&self, img: &Tensor, txt: &Tensor, logit_scale: &Tensor, max_scale: Option<f64>) -> Result<Tensor> {
        let mut terms = Vec::new();
        if self.itc > 0.0 {
            terms.push((self.itc, ops::infonce(img, txt, logit_scale, max_scale)?));
        }
        if self.xmc > 0.0 {
            terms.push((self.xmc, self.cross_modal_mixup(img, txt, logit_scale, max_scale)?));
        }
        let mut total: Option<Tensor> = None;
        for (weight, term) in terms {
            // A weight of 1 adds no op, so CLIP's loss alone is exactly `ops::infonce`.
            let term = if weight == 1.0 { term } else { term.scale(weight)? };
            total = Some(match total {
                Some(sum) => sum.add(&term)?,
                None => term,
            });
        }
        total.ok_or_else(|| Error::config("--loss: every objective weighs 0"))
    }

    /// `NCE(z_I, m) + NCE(z_T, m)`, m the normalised mean of each pair's embeddings.
    fn cross_modal_mixup(
        &self,
        img: &Tensor,
        txt: &Tensor,
        logit_scale: &Tensor,
        max_scale: Option<f64>,
    ) -> Result<Tensor> {
        let mixture = img.add(txt)?.l2_normalize(1e-12)?;
        let mixture = if self.xmc_through_mixture { mixture } else { mixture.detach() };
        let from_images = ops::contrast(img, &mixture, logit_scale, max_scale, ContrastWeights::ROWS)?;
        let from_texts = ops::contrast(txt, &mixture, logit_scale, max_scale, ContrastWeights::ROWS)?;
        from_images.add(&from_texts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_reads_weights_and_switches() {
        let o = Objectives::parse("itc=1, xmc=0.5").unwrap();
        assert_eq!((o.itc, o.xmc, o.xmc_through_mixture), (1.0, 0.5, false));
        let o = Objectives::parse("xmc,xmc-through-mixture").unwrap();
        assert_eq!((o.itc, o.xmc, o.xmc_through_mixture), (0.0, 1.0, true));
    }

    #[test]
    fn parse_refuses_what_it_cannot_run() {
        for (spec, says) in [
            ("itc=1,cic=1", "unknown objective \"cic\""),
            ("itc=x", "is not a number"),
            ("itc=-1", "finite number >= 0"),
            ("itc=inf", "finite number >= 0"),
            ("itc=0", "every objective weighs 0"),
            ("xmc-through-mixture", "every objective weighs 0"),
        ] {
            let err = Objectives::parse(spec).unwrap_err().to_string();
            assert!(err.contains(says), "{spec:?}: {err}");
        }
    }
}
