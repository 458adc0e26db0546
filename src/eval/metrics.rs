//! Metric arithmetic on score matrices, with CLIP_benchmark's and open_clip's definitions.
//! Pure functions on host slices, so they are tested on hand-made scores.

use rayon::prelude::*;
use serde::Serialize;

/// Zero-shot classification metrics (CLIP_benchmark names).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Classification {
    pub acc1: f64,
    pub acc5: f64,
    /// Balanced accuracy: the mean over classes present of the fraction of that class's
    /// samples predicted correctly.
    pub mean_per_class_recall: f64,
}

/// `scores` is row-major [n, classes]. A sample counts as top-k correct when fewer than k
/// classes score strictly higher than its label (ties favour the label).
pub fn classification(scores: &[f64], labels: &[usize], classes: usize) -> Classification {
    let n = labels.len();
    let mut top1 = 0usize;
    let mut top5 = 0usize;
    let mut per_class = vec![(0usize, 0usize); classes];
    for (i, &label) in labels.iter().enumerate() {
        let row = &scores[i * classes..(i + 1) * classes];
        let higher = row.iter().filter(|&&s| s > row[label]).count();
        top1 += usize::from(higher == 0);
        top5 += usize::from(higher < 5);
        per_class[label].1 += 1;
        per_class[label].0 += usize::from(higher == 0);
    }
    let present: Vec<f64> =
        per_class.iter().filter(|c| c.1 > 0).map(|&(hit, total)| hit as f64 / total as f64).collect();
    Classification {
        acc1: top1 as f64 / n.max(1) as f64,
        acc5: top5 as f64 / n.max(1) as f64,
        mean_per_class_recall: present.iter().sum::<f64>() / present.len().max(1) as f64,
    }
}

/// Retrieval in one direction: recall at 1, 5, 10 and 1-based mean and median rank.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Ranking {
    #[serde(rename = "R@1")]
    pub r1: f64,
    #[serde(rename = "R@5")]
    pub r5: f64,
    #[serde(rename = "R@10")]
    pub r10: f64,
    pub mean_rank: f64,
    pub median_rank: f64,
}

/// Ranks queries against candidates by the dot product of their features (row-major
/// [queries, dim] and [candidates, dim]). `is_positive(q, c)` says which candidates are
/// correct for a query (several may be: an image with five captions, a caption shared by two
/// images). The 0-based rank is the number of wrong candidates scoring strictly above the best
/// correct one. Each query's scores are made, used and dropped in turn, so memory stays at one
/// row per thread whatever the dataset's size (a 5,000 x 25,000 matrix of COCO's would be a
/// gigabyte of f64).
pub fn ranking(
    queries: &[f64],
    candidates: &[f64],
    dim: usize,
    is_positive: impl Fn(usize, usize) -> bool + Sync,
) -> Ranking {
    let n_candidates = candidates.len() / dim.max(1);
    let mut ranks: Vec<usize> = queries
        .par_chunks_exact(dim.max(1))
        .enumerate()
        .map_init(
            || vec![0.0; n_candidates],
            |row, (q, query)| {
                for (score, candidate) in row.iter_mut().zip(candidates.chunks_exact(dim.max(1))) {
                    *score = dot(query, candidate);
                }
                let best =
                    (0..n_candidates).filter(|&c| is_positive(q, c)).map(|c| row[c]).fold(f64::NEG_INFINITY, f64::max);
                (0..n_candidates).filter(|&c| !is_positive(q, c) && row[c] > best).count()
            },
        )
        .collect();
    let n = ranks.len();
    let recall = |k: usize| ranks.iter().filter(|&&r| r < k).count() as f64 / n.max(1) as f64;
    let (r1, r5, r10) = (recall(1), recall(5), recall(10));
    ranks.sort_unstable();
    let mean_rank = ranks.iter().map(|&r| r as f64 + 1.0).sum::<f64>() / n.max(1) as f64;
    let median_rank = match n {
        0 => 0.0,
        n if n % 2 == 1 => ranks[n / 2] as f64 + 1.0,
        n => (ranks[n / 2 - 1] + ranks[n / 2]) as f64 / 2.0 + 1.0,
    };
    Ranking { r1, r5, r10, mean_rank, median_rank }
}

/// The dot product of two feature rows (the cosine, for L2-normalised ones).
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// How far apart the two modalities' embeddings sit (Liang et al., "Mind the Gap", NeurIPS 2022;
/// OneR's claim of one shared space). On n pairs of L2-normalised features.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ModalityGap {
    /// ||mean image feature - mean text feature||: 0 when the two clouds share a centre.
    pub centroid_distance: f64,
    /// Mean cosine of each image with its own caption.
    pub matched_cosine: f64,
    /// Mean cosine of each image with the captions that do not describe it.
    pub unmatched_cosine: f64,
}

/// `image` and `text` are row-major [n, dim] L2-normalised features of n pairs; `is_match(i, j)`
/// says whether caption j describes image i (several may: a caption shared by two images).
pub fn modality_gap(image: &[f64], text: &[f64], dim: usize, is_match: impl Fn(usize, usize) -> bool) -> ModalityGap {
    let n = image.len() / dim.max(1);
    let centroid = |m: &[f64]| -> Vec<f64> {
        (0..dim).map(|k| (0..n).map(|i| m[i * dim + k]).sum::<f64>() / n.max(1) as f64).collect()
    };
    let (ci, ct) = (centroid(image), centroid(text));
    let centroid_distance = ci.iter().zip(&ct).map(|(a, b)| (a - b) * (a - b)).sum::<f64>().sqrt();
    let (mut matched, mut unmatched) = ((0.0, 0usize), (0.0, 0usize));
    for i in 0..n {
        for j in 0..n {
            let cosine = dot(&image[i * dim..][..dim], &text[j * dim..][..dim]);
            let bucket = if i == j || is_match(i, j) { &mut matched } else { &mut unmatched };
            *bucket = (bucket.0 + cosine, bucket.1 + 1);
        }
    }
    let mean = |(sum, count): (f64, usize)| if count == 0 { 0.0 } else { sum / count as f64 };
    ModalityGap { centroid_distance, matched_cosine: mean(matched), unmatched_cosine: mean(unmatched) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_by_hand() {
        // 3 samples, 6 classes. Sample 0: label 2 is best. Sample 1: label 0 is 3rd.
        // Sample 2: label 1 ties the best score (ties favour the label) -> top-1.
        let scores = [
            0.1, 0.2, 0.9, 0.0, 0.0, 0.0, //
            0.5, 0.9, 0.1, 0.7, 0.0, 0.0, //
            0.3, 0.8, 0.8, 0.1, 0.0, 0.0,
        ];
        let m = classification(&scores, &[2, 0, 1], 6);
        assert_eq!(m.acc1, 2.0 / 3.0);
        assert_eq!(m.acc5, 1.0);
        // Classes present: 2 (1/1), 0 (0/1), 1 (1/1).
        assert!((m.mean_per_class_recall - 2.0 / 3.0).abs() < 1e-15);
    }

    #[test]
    fn ranking_by_hand_with_a_shared_caption() {
        // Query 0's positive is candidate 0 (rank 0). Query 1's positive (1) has two wrong
        // candidates above it (rank 2). Query 2's positives are 2 and 3: the best is 3, and
        // nothing wrong beats it.
        let scores = [
            0.9, 0.1, 0.2, 0.0, //
            0.8, 0.3, 0.1, 0.7, //
            0.1, 0.2, 0.3, 0.6,
        ];
        let positive = |q: usize, c: usize| c == q || (q == 2 && c == 3);
        // One-hot candidate features: query q's dot with candidate c is scores[q][c].
        let one_hot: Vec<f64> = (0..16).map(|k| f64::from(k % 5 == 0)).collect();
        let r = ranking(&scores, &one_hot, 4, positive);
        assert_eq!((r.r1, r.r5, r.r10), (2.0 / 3.0, 1.0, 1.0));
        assert_eq!(r.mean_rank, (1.0 + 3.0 + 1.0) / 3.0);
        assert_eq!(r.median_rank, 1.0);
        // The other direction: the columns ask. Column 3's correct row is 2 (0.6), beaten by
        // row 1 (0.7); the other columns' correct rows score highest.
        let columns: Vec<f64> = (0..4).flat_map(|c| (0..3).map(move |q| scores[q * 4 + c])).collect();
        let identity: Vec<f64> = (0..9).map(|k| f64::from(k % 4 == 0)).collect();
        let back = ranking(&columns, &identity, 3, |c, q| positive(q, c));
        assert_eq!((back.r1, back.r5, back.mean_rank, back.median_rank), (0.75, 1.0, 1.25, 1.0));
    }

    #[test]
    fn modality_gap_by_hand() {
        // Images on the x axis, texts tilted 90 degrees towards y: pair 0 (1,0)/(0,1), pair 1
        // (-1,0)/(0,-1), pair 2 (1,0)/(0,1) again, with caption 2 also describing image 0.
        let image = [1.0, 0.0, -1.0, 0.0, 1.0, 0.0];
        let text = [0.0, 1.0, 0.0, -1.0, 0.0, 1.0];
        let shared = |i: usize, j: usize| (i == 0 && j == 2) || (i == 2 && j == 0);
        let gap = modality_gap(&image, &text, 2, shared);
        // Centroids (1/3, 0) and (0, 1/3).
        assert!((gap.centroid_distance - (2.0f64 / 9.0).sqrt()).abs() < 1e-15);
        // Every image-text cosine is 0 here.
        assert_eq!((gap.matched_cosine, gap.unmatched_cosine), (0.0, 0.0));
        // Texts equal to the images: matched cosine 1; unmatched are the pairs (0,1), (1,0),
        // (1,2), (2,1) at -1: mean -1.
        let gap = modality_gap(&image, &image, 2, shared);
        assert_eq!((gap.centroid_distance, gap.matched_cosine, gap.unmatched_cosine), (0.0, 1.0, -1.0));
    }
}
