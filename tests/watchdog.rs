//! The watchdog of a running data-parallel world (issue 17): a rank that dies, freezes or fails
//! mid-run is named on every other rank within a bounded time, its abort hook run, then its
//! exit, and so is a world where no rank finishes a step for too long (a rank stuck); a run that
//! ends normally, in whatever order the ranks finish, reports nothing. Ranks
//! are threads of this process, or where a real death matters a child process (this test
//! binary again, running `rank_process`).

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::world::{free_master, meet};
use msclip::dist::{
    LossCause, Meeting, PEER_LOST_EXIT, PeerLost, Progress, Stall, Watchdog, WatchdogSettings, WorldPlace, end_process,
    rendezvous,
};

/// Short enough for tests, the proportions of a real run's (1 s, 30 s, 5 s) but for the stall
/// (600 s), which is only a few heartbeats long.
const SETTINGS: WatchdogSettings = WatchdogSettings {
    heartbeat: Duration::from_millis(100),
    silence: Duration::from_millis(800),
    grace: Duration::from_millis(300),
    stall: Duration::from_millis(600),
};
/// How long a test waits for every rank's hooks.
const PATIENCE: Duration = Duration::from_secs(5);
/// Set for a child process that is to run `rank_process`.
const CHILD: &str = "MSCLIP_WATCHDOG_TEST_CHILD";

/// What one rank's hooks did.
#[derive(Debug)]
enum Hook {
    Aborted,
    Exited(PeerLost),
}

/// The meetings of a world of `n` ranks, in rank order.
fn meet_world(n: usize) -> Vec<Meeting> {
    let ranks: Vec<_> = (0..n).map(|rank| (rank, n, "cfg")).collect();
    meet(&free_master(), &ranks, Duration::from_secs(20)).into_iter().map(Result::unwrap).collect()
}

/// Starts `rank`'s watchdog with hooks that report to `hooks`.
fn watch(rank: usize, meeting: Meeting, hooks: &mpsc::Sender<(usize, Hook)>) -> Watchdog {
    watch_with(SETTINGS, rank, meeting, hooks)
}

fn watch_with(
    settings: WatchdogSettings,
    rank: usize,
    meeting: Meeting,
    hooks: &mpsc::Sender<(usize, Hook)>,
) -> Watchdog {
    let exits = hooks.clone();
    let watchdog =
        Watchdog::start(meeting.peers, settings, move |lost| exits.send((rank, Hook::Exited(lost.clone()))).unwrap())
            .unwrap();
    let aborts = hooks.clone();
    watchdog.set_abort(move || aborts.send((rank, Hook::Aborted)).unwrap());
    watchdog
}

/// Watches every rank of `meetings` but those in `apart`, which are handed back.
fn watch_all_but(
    meetings: Vec<Meeting>,
    apart: &[usize],
    hooks: &mpsc::Sender<(usize, Hook)>,
) -> (BTreeMap<usize, Watchdog>, BTreeMap<usize, Meeting>) {
    let (mut watched, mut left) = (BTreeMap::new(), BTreeMap::new());
    for (rank, meeting) in meetings.into_iter().enumerate() {
        if apart.contains(&rank) {
            left.insert(rank, meeting);
        } else {
            watched.insert(rank, watch(rank, meeting, hooks));
        }
    }
    (watched, left)
}

/// Waits for each of `ranks` to abort and then exit; each one's loss and when it aborted.
fn losses(hooks: &mpsc::Receiver<(usize, Hook)>, ranks: &[usize]) -> BTreeMap<usize, (PeerLost, Instant)> {
    let deadline = Instant::now() + PATIENCE;
    let (mut aborted, mut exited) = (BTreeMap::new(), BTreeMap::new());
    while exited.len() < ranks.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let (rank, hook) =
            hooks.recv_timeout(left).unwrap_or_else(|_| panic!("after {PATIENCE:?} only {exited:?} exited"));
        assert!(ranks.contains(&rank), "rank {rank}'s hooks ran: {hook:?}");
        match hook {
            Hook::Aborted => assert!(aborted.insert(rank, Instant::now()).is_none(), "rank {rank} aborted twice"),
            Hook::Exited(lost) => {
                assert!(aborted.contains_key(&rank), "rank {rank} exited before it aborted");
                assert!(exited.insert(rank, lost).is_none(), "rank {rank} exited twice");
            }
        }
    }
    exited.into_iter().map(|(rank, lost)| (rank, (lost, aborted[&rank]))).collect()
}

/// Asserts that `lost` is rank `rank`'s news of rank `gone`'s loss, passed on by rank 0 unless
/// `rank` is rank 0 or `gone` itself is.
fn assert_names(rank: usize, lost: &PeerLost, gone: usize) {
    assert_eq!((lost.rank, lost.lost), (rank, gone), "{lost}");
    let relayed = rank != 0 && gone != 0;
    assert_eq!(lost.reported_by, relayed.then_some(0), "{lost}");
    let text = lost.to_string();
    assert!(text.contains(&format!("rank {gone} of ")) && text.contains(&format!("rank {rank} stops")), "{text}");
}

#[test]
fn a_rank_that_dies_is_named_on_every_other_rank() {
    let (hooks, heard) = mpsc::channel();
    let (watchdogs, mut dying) = watch_all_but(meet_world(4), &[2], &hooks);
    std::thread::sleep(SETTINGS.heartbeat * 3);
    let died = Instant::now();
    // Its connection closes with no goodbye, as the kernel closes a killed process's.
    drop(dying.remove(&2));
    for (rank, (lost, aborted)) in losses(&heard, &[0, 1, 3]) {
        assert_names(rank, &lost, 2);
        assert_eq!(lost.cause, LossCause::Closed);
        assert!(aborted - died < Duration::from_secs(1), "rank {rank} aborted {:?} after", aborted - died);
    }
    // The main thread, once unblocked, ends with the same news.
    for (rank, watchdog) in watchdogs {
        assert_eq!(watchdog.finish().unwrap_err().lost, 2, "rank {rank}");
    }
}

#[test]
fn a_silent_rank_is_lost_after_the_heartbeat_timeout() {
    let (hooks, heard) = mpsc::channel();
    let start = Instant::now();
    // Rank 3 is frozen: its connection stays open, and it never says a word.
    let (_watchdogs, _frozen) = watch_all_but(meet_world(4), &[3], &hooks);
    for (rank, (lost, aborted)) in losses(&heard, &[0, 1, 2]) {
        assert_names(rank, &lost, 3);
        let LossCause::Silent(quiet) = lost.cause else { panic!("{lost}") };
        assert!(quiet >= SETTINGS.silence && aborted - start >= SETTINGS.silence, "{lost}");
        assert!(aborted - start < SETTINGS.silence + Duration::from_secs(1), "rank {rank}: {:?}", aborted - start);
    }
}

#[test]
fn rank_0_dying_is_seen_by_every_other_rank() {
    let (hooks, heard) = mpsc::channel();
    let (_watchdogs, mut dying) = watch_all_but(meet_world(4), &[0], &hooks);
    std::thread::sleep(SETTINGS.heartbeat * 3);
    drop(dying.remove(&0));
    for (rank, (lost, _)) in losses(&heard, &[1, 2, 3]) {
        assert_names(rank, &lost, 0);
        assert_eq!(lost.cause, LossCause::Closed);
    }
}

#[test]
fn a_rank_that_fails_stops_every_other_rank() {
    let (hooks, heard) = mpsc::channel();
    let (mut watchdogs, _) = watch_all_but(meet_world(3), &[], &hooks);
    std::thread::sleep(SETTINGS.heartbeat * 3);
    // A watchdog dropped without finish: its rank's run returned an error.
    drop(watchdogs.remove(&1));
    for (rank, (lost, _)) in losses(&heard, &[0, 2]) {
        assert_names(rank, &lost, 1);
        assert_eq!(lost.cause, LossCause::Failed);
    }
}

/// No hook runs for a while longer than a loss would take to be noticed.
fn assert_quiet(heard: &mpsc::Receiver<(usize, Hook)>) {
    if let Ok(hook) = heard.recv_timeout(SETTINGS.silence + SETTINGS.grace * 2) {
        panic!("a run that ended normally reported {hook:?}");
    }
}

#[test]
fn ranks_that_finish_in_any_order_report_nothing() {
    let (hooks, heard) = mpsc::channel();
    let (mut watchdogs, _) = watch_all_but(meet_world(4), &[], &hooks);
    // Longer than the silence allowed: the heartbeats keep every rank alive.
    std::thread::sleep(SETTINGS.silence + SETTINGS.heartbeat * 2);
    watchdogs.remove(&2).unwrap().finish().unwrap();
    watchdogs.remove(&0).unwrap().finish().unwrap();
    // Ranks that go on longer than the silence allowed after rank 0 said goodbye.
    std::thread::sleep(SETTINGS.silence + SETTINGS.heartbeat * 2);
    for (rank, watchdog) in watchdogs {
        assert_eq!(watchdog.finish(), Ok(()), "rank {rank}");
    }
    assert_quiet(&heard);
}

#[test]
fn ranks_that_finish_at_the_same_moment_report_nothing() {
    let (hooks, heard) = mpsc::channel();
    let (watchdogs, _) = watch_all_but(meet_world(6), &[], &hooks);
    std::thread::sleep(SETTINGS.heartbeat * 3);
    let together = std::sync::Barrier::new(watchdogs.len());
    std::thread::scope(|scope| {
        for (rank, watchdog) in watchdogs {
            let together = &together;
            scope.spawn(move || {
                together.wait();
                assert_eq!(watchdog.finish(), Ok(()), "rank {rank}");
            });
        }
    });
    assert_quiet(&heard);
}

/// Each rank's progress, in rank order.
fn progress_of(watchdogs: &BTreeMap<usize, Watchdog>) -> Vec<Progress> {
    watchdogs.values().map(Watchdog::progress).collect()
}

/// Every rank of `progress` does steps 1 to `last` together, a step per `pace`.
fn step_together(progress: &[Progress], last: u64, pace: Duration) {
    for step in 1..=last {
        progress.iter().for_each(|p| p.reached(step));
        std::thread::sleep(pace);
    }
}

/// Finishes every watchdog, none having heard of a loss.
fn finish_all(watchdogs: BTreeMap<usize, Watchdog>) {
    for (rank, watchdog) in watchdogs {
        assert_eq!(watchdog.finish(), Ok(()), "rank {rank}");
    }
}

#[test]
fn ranks_that_keep_stepping_report_no_stall() {
    let (hooks, heard) = mpsc::channel();
    let (watchdogs, _) = watch_all_but(meet_world(3), &[], &hooks);
    // Steps a few heartbeats apart, for several stall times.
    let pace = SETTINGS.heartbeat * 2;
    step_together(&progress_of(&watchdogs), (SETTINGS.stall * 3).div_duration_f64(pace) as u64, pace);
    finish_all(watchdogs);
    assert_quiet(&heard);
}

#[test]
fn a_rank_that_stops_stepping_stalls_every_rank_with_its_name() {
    let (hooks, heard) = mpsc::channel();
    let (watchdogs, _) = watch_all_but(meet_world(4), &[], &hooks);
    let progress = progress_of(&watchdogs);
    step_together(&progress, 5, SETTINGS.heartbeat);
    // Rank 2 is stuck in step 6; the others finish it and wait for rank 2 in step 7.
    for rank in [0, 1, 3] {
        progress[rank].reached(6);
    }
    let stuck = Instant::now();
    let expected = Stall { quiet: SETTINGS.stall, step: 5, behind: vec![2], others: Some((6, 6)) };
    for (rank, (lost, aborted)) in losses(&heard, &[0, 1, 2, 3]) {
        assert_eq!((lost.rank, lost.lost, lost.reported_by), (rank, 2, (rank != 0).then_some(0)), "{lost}");
        let LossCause::Stalled(stall) = &lost.cause else { panic!("{lost}") };
        assert!(stall.quiet >= SETTINGS.stall, "{lost}");
        assert_eq!(Stall { quiet: SETTINGS.stall, ..stall.clone() }, expected);
        let text = lost.to_string();
        assert!(text.contains("rank 2 is at step 5, the others at 6") && text.contains(&format!("rank {rank} stops")));
        // Rank 0 hears the others' counts once a heartbeat, and notices within a few ticks.
        let after = aborted - stuck;
        assert!(after >= SETTINGS.stall && after < SETTINGS.stall + SETTINGS.heartbeat * 5, "rank {rank}: {after:?}");
    }
}

#[test]
fn no_stall_is_timed_before_the_first_step() {
    let (hooks, heard) = mpsc::channel();
    // NCCL's setup, a checkpoint's load, the first step's warm-up: no rank reports a step.
    let (watchdogs, _) = watch_all_but(meet_world(3), &[], &hooks);
    assert_quiet(&heard);
    finish_all(watchdogs);
}

#[test]
fn a_stall_time_of_zero_is_no_limit() {
    let (hooks, heard) = mpsc::channel();
    let off = WatchdogSettings { stall: Duration::ZERO, ..SETTINGS };
    let watchdogs: BTreeMap<_, _> =
        meet_world(2).into_iter().enumerate().map(|(rank, m)| (rank, watch_with(off, rank, m, &hooks))).collect();
    step_together(&progress_of(&watchdogs), 3, SETTINGS.heartbeat);
    assert_quiet(&heard);
    finish_all(watchdogs);
}

#[test]
fn the_end_of_the_run_after_the_last_step_is_not_timed() {
    let (hooks, heard) = mpsc::channel();
    let (mut watchdogs, _) = watch_all_but(meet_world(3), &[], &hooks);
    let progress = progress_of(&watchdogs);
    step_together(&progress, 4, SETTINGS.heartbeat);
    progress.iter().for_each(Progress::finished);
    // Rank 0's final evaluation, longer than the stall time; the others wait for it (in
    // NCCL's destroy), then all say goodbye, rank 0 first.
    assert_quiet(&heard);
    watchdogs.remove(&0).unwrap().finish().unwrap();
    finish_all(watchdogs);
}

/// Starts this test binary as rank `rank` of `world_size` meeting at `master`, running
/// `rank_process`: it watches with the real exit, [`end_process`], while its main thread
/// blocks as in a collective that never returns.
fn spawn_rank(rank: usize, world_size: usize, master: &str) -> Child {
    let (addr, port) = master.rsplit_once(':').unwrap();
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "rank_process", "--nocapture", "--test-threads", "1"])
        .env(CHILD, "1")
        .envs([("RANK", rank.to_string()), ("WORLD_SIZE", world_size.to_string()), ("LOCAL_RANK", rank.to_string())])
        .envs([("MASTER_ADDR", addr), ("MASTER_PORT", port)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A rank of a world that other tests start as a child process; nothing otherwise.
#[test]
fn rank_process() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    let place = WorldPlace::from_env().unwrap().expect("WORLD_SIZE is set");
    let meeting = rendezvous(&place, "cfg", b"", Duration::from_secs(20)).unwrap();
    let _watchdog = Watchdog::start(meeting.peers, SETTINGS, end_process).unwrap();
    // Bounded, so that a broken watchdog leaves no process behind.
    std::thread::sleep(PATIENCE * 2);
    panic!("rank {} was still running {:?} after it started", place.rank, PATIENCE * 2);
}

#[test]
fn a_killed_rank_process_is_named_on_every_other_rank() {
    let master = free_master();
    let mut child = spawn_rank(1, 3, &master);
    let meetings = meet(&master, &[(0, 3, "cfg"), (2, 3, "cfg")], Duration::from_secs(20));
    let (hooks, heard) = mpsc::channel();
    let _watchdogs: Vec<_> =
        [0, 2].into_iter().zip(meetings).map(|(rank, meeting)| watch(rank, meeting.unwrap(), &hooks)).collect();
    std::thread::sleep(SETTINGS.heartbeat * 3);
    child.kill().unwrap(); // SIGKILL: no goodbye, no destructor
    child.wait().unwrap();
    for (rank, (lost, _)) in losses(&heard, &[0, 2]) {
        assert_names(rank, &lost, 1);
        assert_eq!(lost.cause, LossCause::Closed);
    }
}

#[test]
fn a_rank_blocked_forever_exits_with_the_news_when_rank_0_dies() {
    let master = free_master();
    let mut child = spawn_rank(1, 2, &master);
    let rank_0 = meet(&master, &[(0, 2, "cfg")], Duration::from_secs(20)).pop().unwrap().unwrap();
    std::thread::sleep(SETTINGS.heartbeat * 3);
    let died = Instant::now();
    drop(rank_0);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if died.elapsed() > PATIENCE {
            child.kill().unwrap();
            panic!("rank 1 still runs {PATIENCE:?} after rank 0 died");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = died.elapsed();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(PEER_LOST_EXIT), "{status}: {stderr}");
    assert!(took >= SETTINGS.grace && took < SETTINGS.grace + Duration::from_secs(1), "exited after {took:?}");
    let says = "error: rank 0 of 2 was lost (its connection closed without a goodbye";
    assert!(stderr.contains(says) && stderr.contains("rank 1 stops"), "{stderr}");
}
