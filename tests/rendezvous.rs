//! The ranks of a data-parallel world meeting over TCP on this machine (issue 17): a world
//! that starts, and each way one cannot, failing on every rank within a bounded time.

mod common;

use std::time::{Duration, Instant};

use common::world::{free_master, meet};

/// Every rank's result (the payload or the error's text) and how long the slowest took.
fn meet_timed(ranks: &[(usize, usize, &str)], timeout: Duration) -> (Vec<Result<Vec<u8>, String>>, Duration) {
    let start = Instant::now();
    let results = meet(&free_master(), ranks, timeout).into_iter().map(|r| r.map(|m| m.payload)).collect();
    (results, start.elapsed())
}

fn assert_all_fail(results: &[Result<Vec<u8>, String>], says: &str) {
    for (rank, r) in results.iter().enumerate() {
        let err = r.as_ref().expect_err("the world must not start");
        assert!(err.contains(says), "rank {rank}: {err}");
    }
}

#[test]
fn every_rank_gets_rank_0s_bytes() {
    let (results, _) =
        meet_timed(&[(2, 4, "cfg"), (0, 4, "cfg"), (3, 4, "cfg"), (1, 4, "cfg")], Duration::from_secs(20));
    for r in results {
        assert_eq!(r.unwrap(), b"nccl unique id");
    }
    // A world of one needs nobody.
    let (alone, _) = meet_timed(&[(0, 1, "cfg")], Duration::from_secs(1));
    assert_eq!(alone[0].as_deref().unwrap(), b"nccl unique id");
}

#[test]
fn a_rank_started_with_another_config_stops_every_rank() {
    // Long configs: the error shows where they part, not all of them.
    let config = |lr: &str| format!("{{{}\"lr\":{lr},{}}}", "\"a\":1,".repeat(100), "\"z\":2,".repeat(100));
    let (ours, theirs) = (config("0.001"), config("0.0005"));
    let (results, _) = meet_timed(&[(0, 3, &ours), (1, 3, &ours), (2, 3, &theirs)], Duration::from_secs(20));
    assert_all_fail(&results, "rank 2's configuration differs from rank 0's");
    for r in &results {
        let err = r.as_ref().unwrap_err();
        assert!(err.contains("\"lr\":0.0005") && err.contains("\"lr\":0.001") && err.len() < 400, "{err}");
    }
}

#[test]
fn world_sizes_that_differ_stop_every_rank() {
    let (results, _) = meet_timed(&[(0, 2, "cfg"), (1, 3, "cfg")], Duration::from_secs(20));
    assert_all_fail(&results, "rank 1 was started with WORLD_SIZE=3, rank 0 with 2");
}

#[test]
fn two_processes_with_one_rank_stop_every_rank() {
    let (results, _) = meet_timed(&[(0, 3, "cfg"), (1, 3, "cfg"), (1, 3, "cfg")], Duration::from_secs(20));
    assert_all_fail(&results, "two processes claim RANK=1");
}

#[test]
fn a_rank_that_never_comes_is_named_within_the_timeout() {
    let timeout = Duration::from_millis(600);
    let (results, took) = meet_timed(&[(0, 3, "cfg"), (1, 3, "cfg")], timeout);
    assert_all_fail(&results, "rank(s) [2] of 3 did not join");
    assert!(took < timeout * 4, "took {took:?}");
}

#[test]
fn an_unreachable_master_is_an_error_within_the_timeout() {
    let timeout = Duration::from_millis(400);
    let (results, took) = meet_timed(&[(1, 2, "cfg")], timeout);
    assert_all_fail(&results, "could not reach rank 0");
    assert!(took < timeout * 4, "took {took:?}");
}
