//! A world that stopped making progress: every rank alive (heartbeats keep coming) but none
//! finishing a step, as when one rank is stuck (a hung data read, a GPU hang, ranks that
//! issued different collectives) and the others wait for it in their next collective. Rank 0
//! hears every rank's step count with its heartbeats and notices; the ranks furthest behind
//! are the likely stuck ones.

use std::fmt;
use std::time::{Duration, Instant};

/// Rank 0's finding that no rank finished a step for a while.
#[derive(Debug, Clone, PartialEq)]
pub struct Stall {
    /// How long no rank finished a step.
    pub quiet: Duration,
    /// The step that the ranks furthest behind reached (0: none yet).
    pub step: u64,
    /// Those ranks, in rank order: every rank when all are at `step`.
    pub behind: Vec<usize>,
    /// The lowest and highest step of the other ranks; None when every rank is at `step`.
    pub others: Option<(u64, u64)>,
}

impl fmt::Display for Stall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Stall { quiet, step, behind, others } = self;
        write!(f, "no rank finished a step for {:.1} s; ", quiet.as_secs_f64())?;
        match (others, behind.as_slice()) {
            (None, _) => write!(f, "every rank is at step {step}")?,
            (Some(_), [rank]) => write!(f, "rank {rank} is at step {step}")?,
            (Some(_), ranks) => {
                let ranks: Vec<_> = ranks.iter().map(usize::to_string).collect();
                write!(f, "ranks {} are at step {step}", ranks.join(", "))?;
            }
        }
        match others {
            Some((low, high)) if low == high => write!(f, ", the others at {low}")?,
            Some((low, high)) => write!(f, ", the others at {low} to {high}")?,
            None => {}
        }
        write!(
            f,
            ": a rank is stuck (a hung data read, a GPU hang, ranks out of step), or an evaluation or checkpoint on \
             rank 0 took longer than --stall-timeout allows (raise it if so)"
        )
    }
}

/// Rank 0's watch over every rank's step count.
pub(super) struct StallWatch {
    /// How long no rank may finish a step.
    stall: Duration,
    /// Each rank's steps, as last heard.
    steps: Vec<u64>,
    /// When a rank's count last went up; None before any rank's first step, so that the
    /// start (NCCL's setup, a checkpoint's load, the first step's warm-up) is not timed.
    advanced: Option<Instant>,
}

impl StallWatch {
    pub(super) fn new(world_size: usize, stall: Duration) -> StallWatch {
        StallWatch { stall, steps: vec![0; world_size], advanced: None }
    }

    /// Rank `rank` has done `steps` steps, as heard at `now`.
    pub(super) fn heard(&mut self, rank: usize, steps: u64, now: Instant) {
        if steps > self.steps[rank] {
            self.steps[rank] = steps;
            self.advanced = Some(now);
        }
    }

    /// The stall, when no rank's count went up for the stall time before `now`.
    pub(super) fn stalled(&self, now: Instant) -> Option<Stall> {
        let quiet = now.saturating_duration_since(self.advanced?);
        if quiet < self.stall {
            return None;
        }
        let step = *self.steps.iter().min().expect("a world has ranks");
        let (behind, ahead): (Vec<_>, Vec<_>) = (0..self.steps.len()).partition(|&rank| self.steps[rank] == step);
        let ahead = ahead.iter().map(|&rank| self.steps[rank]);
        let others = ahead.clone().min().zip(ahead.max());
        Some(Stall { quiet, step, behind, others })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(600);

    /// A watch of `steps.len()` ranks that reached `steps` at `start`.
    fn watch(steps: &[u64], start: Instant) -> StallWatch {
        let mut watch = StallWatch::new(steps.len(), STALL);
        for (rank, &count) in steps.iter().enumerate() {
            watch.heard(rank, count, start);
        }
        watch
    }

    #[test]
    fn the_ranks_furthest_behind_are_named_with_their_step() {
        let start = Instant::now();
        let stall = watch(&[1205, 1205, 1205, 1204], start).stalled(start + STALL).unwrap();
        assert_eq!((stall.step, stall.behind.as_slice(), stall.others), (1204, &[3][..], Some((1205, 1205))));
        let text = stall.to_string();
        for part in ["no rank finished a step for 600.0 s", "rank 3 is at step 1204, the others at 1205", "stuck"] {
            assert!(text.contains(part), "{part:?} missing from {text}");
        }
        let several = watch(&[1206, 1204, 1205, 1204], start).stalled(start + STALL).unwrap();
        assert!(several.to_string().contains("ranks 1, 3 are at step 1204, the others at 1205 to 1206"), "{several}");
        let level = watch(&[7, 7], start).stalled(start + STALL).unwrap();
        assert_eq!((level.behind.as_slice(), level.others), (&[0, 1][..], None));
        assert!(level.to_string().contains("; every rank is at step 7: "), "{level}");
    }

    #[test]
    fn any_rank_that_advances_restarts_the_clock() {
        let start = Instant::now();
        let mut watch = watch(&[3, 3, 3], start);
        assert_eq!(watch.stalled(start + STALL - Duration::from_millis(1)), None);
        watch.heard(1, 4, start + STALL / 2);
        // A count heard again, or lower, is no progress.
        watch.heard(2, 3, start + STALL);
        watch.heard(0, 2, start + STALL);
        assert_eq!(watch.stalled(start + STALL), None);
        let stall = watch.stalled(start + STALL / 2 + STALL).unwrap();
        assert_eq!((stall.quiet, stall.step, stall.behind, stall.others), (STALL, 3, vec![0, 2], Some((4, 4))));
    }

    #[test]
    fn nothing_is_timed_before_the_first_step() {
        let start = Instant::now();
        let mut watch = watch(&[0, 0], start);
        assert_eq!(watch.stalled(start + STALL * 10), None);
        watch.heard(1, 1, start + STALL * 10);
        assert_eq!(watch.stalled(start + STALL * 11).map(|s| (s.behind, s.step)), Some((vec![0], 0)));
    }
}
