//! What a rank is told when another rank is lost, or the world stalled, and how it words it.

use std::fmt;
use std::time::Duration;

use super::stall::Stall;

/// How a rank was lost.
#[derive(Debug, Clone, PartialEq)]
pub enum LossCause {
    /// Its connection closed without a goodbye: its process ended mid-run.
    Closed,
    /// Nothing arrived from it for this long (heartbeats come every second or so).
    Silent(Duration),
    /// It said it stopped with an error.
    Failed,
    /// It sent bytes that are not the watchdog's.
    Garbled,
    /// Every rank is alive but none finished a step for too long: some rank is stuck, and the
    /// lost rank is the first of those furthest behind.
    Stalled(Stall),
}

impl fmt::Display for LossCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LossCause::Closed => write!(
                f,
                "its connection closed without a goodbye: the process died (killed, out of memory, crashed) or its \
                 node went down"
            ),
            LossCause::Silent(quiet) => write!(
                f,
                "no heartbeat for {:.1} s: its process is frozen, or its node or the network to it is down",
                quiet.as_secs_f64()
            ),
            LossCause::Failed => write!(f, "it stopped with an error, which its own output shows"),
            LossCause::Garbled => {
                write!(f, "it sent bytes this build does not understand: do all ranks run the same msclip?")
            }
            LossCause::Stalled(stall) => write!(f, "{stall}"),
        }
    }
}

/// One rank's news that another rank of its world is gone: the run cannot go on.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerLost {
    /// The rank that noticed (this process).
    pub rank: usize,
    pub world_size: usize,
    /// The rank that is gone (for a stall, the first of the ranks furthest behind).
    pub lost: usize,
    pub cause: LossCause,
    /// Who noticed first, when another rank did (rank 0, which watches every rank).
    pub reported_by: Option<usize>,
}

impl fmt::Display for PeerLost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let PeerLost { rank, world_size, lost, cause, reported_by } = self;
        match cause {
            LossCause::Stalled(_) => write!(f, "the world of {world_size} ranks stalled ({cause})")?,
            _ => write!(f, "rank {lost} of {world_size} was lost ({cause})")?,
        }
        if let Some(reporter) = reported_by {
            write!(f, ", as rank {reporter} reported")?;
        }
        write!(
            f,
            "; rank {rank} stops, since a data-parallel run needs every rank. Once all can run, start every rank \
             again with --resume latest to continue from the last checkpoint"
        )
    }
}

impl std::error::Error for PeerLost {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_both_ranks_and_the_cause() {
        let lost = PeerLost {
            rank: 3,
            world_size: 8,
            lost: 5,
            cause: LossCause::Silent(Duration::from_millis(30_400)),
            reported_by: Some(0),
        };
        let text = lost.to_string();
        for part in ["rank 5 of 8 was lost (no heartbeat for 30.4 s", "as rank 0 reported", "rank 3 stops", "--resume"]
        {
            assert!(text.contains(part), "{part:?} missing from {text}");
        }
    }

    #[test]
    fn a_stall_is_no_rank_lost_but_the_world_stalled() {
        let stall = Stall { quiet: Duration::from_secs(600), step: 1204, behind: vec![5], others: Some((1205, 1205)) };
        let lost = PeerLost { rank: 3, world_size: 8, lost: 5, cause: LossCause::Stalled(stall), reported_by: Some(0) };
        let text = lost.to_string();
        assert!(!text.contains("was lost"), "{text}");
        for part in [
            "the world of 8 ranks stalled (no rank finished a step for 600.0 s; rank 5 is at step 1204",
            "as rank 0 reported",
            "rank 3 stops",
        ] {
            assert!(text.contains(part), "{part:?} missing from {text}");
        }
    }
}
