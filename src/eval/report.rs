//! The numbers one evaluation produces, as a flat metric map (for results.jsonl) and as a
//! table for the console.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::localisation::PointingGame;
use super::metrics::{Classification, ModalityGap, Ranking};

/// The accuracy curves drawn into accuracy.png.
pub const PLOTTED_METRICS: &[&str] = &[
    "zeroshot/colour/seen/acc1",
    "zeroshot/shape/seen/acc1",
    "zeroshot/colour/unseen/acc1",
    "zeroshot/shape/unseen/acc1",
    "binding/text_acc",
];

#[derive(Debug, Clone, Default)]
pub struct EvalReport {
    /// (factor, split, metrics).
    pub zero_shot: Vec<(String, String, Classification)>,
    /// (split, image->text, text->image).
    pub retrieval: Vec<(String, Ranking, Ranking)>,
    /// Fraction of binding images that score their caption above the attribute-swapped one.
    pub binding_text_acc: Option<f64>,
    /// (split, the gap between the image and text embeddings of its pairs).
    pub modality_gap: Vec<(String, ModalityGap)>,
    /// Zero-shot localisation on the two-object binding scenes.
    pub pointing_game: Option<PointingGame>,
}

impl EvalReport {
    /// Every metric under a slash-separated key, e.g. `zeroshot/shape/seen/acc1` or
    /// `retrieval/seen/image_to_text_R@1` (open_clip's names), with CLIP_benchmark's
    /// `image_retrieval_recall@k` (text queries, images retrieved) and
    /// `text_retrieval_recall@k` beside them.
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        for (factor, split, c) in &self.zero_shot {
            let key = |name: &str| format!("zeroshot/{factor}/{split}/{name}");
            m.insert(key("acc1"), c.acc1);
            m.insert(key("acc5"), c.acc5);
            m.insert(key("mean_per_class_recall"), c.mean_per_class_recall);
        }
        for (split, i2t, t2i) in &self.retrieval {
            for (direction, r) in [("image_to_text", i2t), ("text_to_image", t2i)] {
                let key = |name: &str| format!("retrieval/{split}/{direction}_{name}");
                m.insert(key("R@1"), r.r1);
                m.insert(key("R@5"), r.r5);
                m.insert(key("R@10"), r.r10);
                m.insert(key("mean_rank"), r.mean_rank);
                m.insert(key("median_rank"), r.median_rank);
            }
            for (k, i2t_recall, t2i_recall) in [(1, i2t.r1, t2i.r1), (5, i2t.r5, t2i.r5), (10, i2t.r10, t2i.r10)] {
                m.insert(format!("retrieval/{split}/text_retrieval_recall@{k}"), i2t_recall);
                m.insert(format!("retrieval/{split}/image_retrieval_recall@{k}"), t2i_recall);
            }
        }
        if let Some(acc) = self.binding_text_acc {
            m.insert("binding/text_acc".into(), acc);
        }
        for (split, gap) in &self.modality_gap {
            m.insert(format!("modality_gap/{split}/centroid_distance"), gap.centroid_distance);
            m.insert(format!("modality_gap/{split}/matched_cosine"), gap.matched_cosine);
            m.insert(format!("modality_gap/{split}/unmatched_cosine"), gap.unmatched_cosine);
        }
        if let Some(game) = self.pointing_game {
            m.insert("localisation/pointing_game".into(), game.accuracy);
            m.insert("localisation/pointing_game_chance".into(), game.chance);
        }
        m
    }

    /// A readable table: zero-shot acc1 per factor on seen and unseen pairs and the gap,
    /// retrieval recalls, binding accuracy.
    pub fn summary(&self) -> String {
        let mut out = String::from("zero-shot acc1        seen   unseen    gap\n");
        let mut factors: Vec<&str> = Vec::new();
        for (f, _, _) in &self.zero_shot {
            if !factors.contains(&f.as_str()) {
                factors.push(f);
            }
        }
        let acc = |factor: &str, split: &str| {
            self.zero_shot.iter().find(|(f, s, _)| f == factor && s == split).map(|(_, _, c)| c.acc1)
        };
        let pct = |v: Option<f64>| v.map_or("     -".to_string(), |v| format!("{:6.1}", 100.0 * v));
        for factor in factors {
            let (seen, unseen) = (acc(factor, "seen"), acc(factor, "unseen"));
            let gap = seen.zip(unseen).map(|(a, b)| a - b);
            let _ = writeln!(out, "  {factor:<18} {}%  {}%  {}", pct(seen), pct(unseen), pct(gap));
        }
        for (split, i2t, t2i) in &self.retrieval {
            let _ = writeln!(
                out,
                "retrieval ({split}): image->text R@1/5/10 {:.1}/{:.1}/{:.1}%, text->image {:.1}/{:.1}/{:.1}%, median rank {}/{}",
                100.0 * i2t.r1,
                100.0 * i2t.r5,
                100.0 * i2t.r10,
                100.0 * t2i.r1,
                100.0 * t2i.r5,
                100.0 * t2i.r10,
                i2t.median_rank,
                t2i.median_rank
            );
        }
        if let Some(acc) = self.binding_text_acc {
            let _ = writeln!(out, "binding (caption vs attribute-swapped caption): {:.1}% (chance 50%)", 100.0 * acc);
        }
        for (split, gap) in &self.modality_gap {
            let _ = writeln!(
                out,
                "modality gap ({split}): centroid distance {:.3}, cosine of matched pairs {:.3}, of unmatched {:.3}",
                gap.centroid_distance, gap.matched_cosine, gap.unmatched_cosine
            );
        }
        if let Some(game) = self.pointing_game {
            let _ = writeln!(
                out,
                "localisation (pointing game, {} objects of two-object scenes): {:.1}% (chance {:.1}%)",
                game.queries,
                100.0 * game.accuracy,
                100.0 * game.chance
            );
        }
        out
    }
}
