//! The ranks of a running world watching each other, so that a rank that dies mid-run (killed,
//! out of memory, crashed, its node lost) is a clear error on every other rank within a bounded
//! time instead of a hang: NCCL waits forever for a peer that will never send.
//!
//! The rendezvous's connections stay open for the run ([`Peers`]): rank 0 holds one to every
//! rank, the others one to rank 0. A thread on each rank sends a heartbeat on each of its
//! connections every [`Settings::heartbeat`] and reads what arrives. A connection that closes
//! without a goodbye, or says nothing for [`Settings::silence`], is a lost peer; rank 0 passes
//! the news to every other rank, which hears of deaths only through it. On a loss the thread
//! prints which rank was lost and how, runs the abort hook (NCCL's communicator abort, which
//! makes blocked collectives return), and, if the process is still running
//! [`Settings::grace`] later (its main thread stuck in a wait that never ends), calls the exit
//! hook ([`end_process`] outside tests).
//!
//! A rank that is alive but stuck (a hung data read, a GPU hang, ranks that issued different
//! collectives) still heartbeats, while the others wait for it in their next collective. So
//! each heartbeat carries its sender's step count ([`Progress`], which the training loop
//! reports), and rank 0 declares a stall when no rank's count went up for
//! [`Settings::stall`]; it tells the others as of a lost rank, naming the ranks furthest
//! behind (the likely stuck ones). The clock starts at the first step and stops when rank 0's
//! training loop is over (the final evaluation, which the others wait for, is not timed).
//!
//! A run that ends says goodbye ([`Watchdog::finish`]; dropping the watchdog instead says the
//! rank failed, which stops the others too), so a normal exit is never taken for a death. A
//! goodbye retires its connection: once rank 0 has finished, its collectives are all done, so
//! every other rank's are complete too and nothing is left to watch.

mod link;
mod loss;
mod progress;
mod stall;
mod wire;

pub use link::Peers;
pub use loss::{LossCause, PeerLost};
pub use progress::Progress;
pub use stall::Stall;

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use link::{Heard, Link};
use stall::StallWatch;
use wire::Message;

/// The exit status of a process that [`end_process`] ends.
pub const PEER_LOST_EXIT: i32 = 3;
/// How often the watchdog's thread looks at its connections and at the main thread's requests.
const TICK: Duration = Duration::from_millis(20);

/// The watchdog's timing.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Between two heartbeats on a connection.
    pub heartbeat: Duration,
    /// How long a peer may send nothing before it counts as lost (a frozen process, a lost node
    /// or network), many heartbeats long so a busy machine is not taken for a dead one.
    pub silence: Duration,
    /// How long the main thread has, after a loss, to end by itself before the exit hook runs;
    /// also the longest a goodbye waits for the other end.
    pub grace: Duration,
    /// How long no rank may finish a step before rank 0 declares the world stalled; zero: never
    /// (600 s by default, torch's NCCL timeout, so that a long evaluation or checkpoint on rank
    /// 0, which the others wait for, still fits).
    pub stall: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            heartbeat: Duration::from_secs(1),
            silence: Duration::from_secs(30),
            grace: Duration::from_secs(5),
            stall: Duration::from_secs(600),
        }
    }
}

type AbortHook = Box<dyn FnOnce() + Send>;

/// What the main thread and the watchdog's thread share.
#[derive(Default)]
struct Shared {
    lost: Mutex<Option<PeerLost>>,
    abort: Mutex<Option<AbortHook>>,
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding it leaves the value itself whole.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// This rank's watch over the others, for as long as the run lasts.
pub struct Watchdog {
    shared: Arc<Shared>,
    /// This rank's steps, which its heartbeats carry.
    progress: Progress,
    /// The goodbye for the watchdog's thread to send before it stops.
    goodbye: mpsc::Sender<Message>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    /// Starts watching `peers`. `exit` runs on the watchdog's thread when a peer was lost and
    /// the process is still running `settings.grace` later.
    pub fn start(peers: Peers, settings: Settings, exit: impl FnOnce(&PeerLost) + Send + 'static) -> Result<Self> {
        let failed = |e: std::io::Error| Error::Device(format!("the data-parallel watchdog cannot start: {e}"));
        let links =
            peers.streams.into_iter().map(|(peer, stream)| Link::new(peer, stream)).collect::<std::io::Result<_>>();
        let shared = Arc::new(Shared::default());
        let progress = Progress::default();
        let (goodbye, requests) = mpsc::channel();
        let watches_stalls = peers.rank == 0 && !settings.stall.is_zero();
        let watcher = Watcher {
            rank: peers.rank,
            world_size: peers.world_size,
            links: links.map_err(failed)?,
            settings,
            progress: progress.clone(),
            stalls: watches_stalls.then(|| StallWatch::new(peers.world_size, settings.stall)),
            shared: Arc::clone(&shared),
            requests,
            exit: Box::new(exit),
        };
        let thread =
            std::thread::Builder::new().name("msclip-watchdog".into()).spawn(move || watcher.run()).map_err(failed)?;
        Ok(Watchdog { shared, progress, goodbye, thread: Some(thread) })
    }

    /// Where the training loop reports its steps ([`Progress::reached`]), and the end of its
    /// loop ([`Progress::finished`]), for the stall check.
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    /// Sets what a loss runs first, on a thread of its own: whatever unblocks the main thread
    /// (NCCL's abort). Set once the communicator exists; a loss before then goes straight to
    /// the exit after the grace period.
    pub fn set_abort(&self, abort: impl FnOnce() + Send + 'static) {
        *locked(&self.shared.abort) = Some(Box::new(abort));
    }

    /// The run ended normally: says goodbye to the other ranks and stops watching. The loss,
    /// if a peer was lost before.
    pub fn finish(mut self) -> std::result::Result<(), PeerLost> {
        self.stop(Message::Finished)
    }

    fn stop(&mut self, goodbye: Message) -> std::result::Result<(), PeerLost> {
        // After a loss the thread is in its grace period: no goodbye, and no waiting for it.
        if let Some(lost) = locked(&self.shared.lost).clone() {
            return Err(lost);
        }
        let Some(thread) = self.thread.take() else { return Ok(()) };
        let _ = self.goodbye.send(goodbye);
        let _ = thread.join();
        locked(&self.shared.lost).clone().map_or(Ok(()), Err)
    }
}

impl Drop for Watchdog {
    /// A watchdog dropped without [`Watchdog::finish`] belongs to a rank that ends with an
    /// error (or a panic): the others would wait for it forever, so they must stop too.
    fn drop(&mut self) {
        let _ = self.stop(Message::Failed);
    }
}

/// Ends this process with [`PEER_LOST_EXIT`] at once: the exit hook of a real run, whose main
/// thread is still blocked `grace` after a peer was lost.
pub fn end_process(_: &PeerLost) {
    // SAFETY: _exit(2) ends the process and has no preconditions. It skips the atexit handlers
    // that exit(3) would run on purpose: CUDA's and NCCL's may wait on the stuck GPU themselves.
    unsafe { libc::_exit(PEER_LOST_EXIT) }
}

/// The watchdog's thread.
struct Watcher {
    rank: usize,
    world_size: usize,
    /// The connections to peers that have not said goodbye.
    links: Vec<Link>,
    settings: Settings,
    progress: Progress,
    /// Rank 0's watch for a stall, until its training loop is over; None on the other ranks.
    stalls: Option<StallWatch>,
    shared: Arc<Shared>,
    requests: mpsc::Receiver<Message>,
    exit: Box<dyn FnOnce(&PeerLost) + Send>,
}

impl Watcher {
    fn run(mut self) {
        let mut next_heartbeat = Instant::now();
        loop {
            match self.requests.recv_timeout(TICK) {
                Ok(goodbye) => return self.say_goodbye(goodbye),
                // The watchdog is gone without a word (it always sends one): treat it as a failure.
                Err(RecvTimeoutError::Disconnected) => return self.say_goodbye(Message::Failed),
                Err(RecvTimeoutError::Timeout) => {}
            }
            if let Some(lost) = self.listen().or_else(|| self.stalled()) {
                return self.stop_for(lost);
            }
            let now = Instant::now();
            if now >= next_heartbeat {
                // A heartbeat that cannot go out at once is skipped: the buffer is full, so the
                // peer has read nothing for long and will be lost for its silence.
                let heartbeat = Message::Heartbeat { steps: self.progress.steps() };
                self.links.iter_mut().for_each(|link| link.send(&heartbeat, now));
                next_heartbeat = now + self.settings.heartbeat;
            }
        }
    }

    /// Reads every connection; the first loss found. Connections whose peer said goodbye, or
    /// was lost, are dropped.
    fn listen(&mut self) -> Option<PeerLost> {
        let mut lost = None;
        self.links.retain_mut(|link| {
            if lost.is_some() {
                return true;
            }
            match link.listen(self.settings.silence) {
                Heard::Alive => true,
                Heard::Finished => false,
                Heard::Lost { rank, cause, reported_by } => {
                    lost =
                        Some(PeerLost { rank: self.rank, world_size: self.world_size, lost: rank, cause, reported_by });
                    false
                }
            }
        });
        lost
    }

    /// Rank 0: the stall, when no rank's step count (its own, and each one's last heartbeat's)
    /// went up for the stall time. A rank that said goodbye keeps its last count.
    fn stalled(&mut self) -> Option<PeerLost> {
        if self.progress.is_finished() {
            // The others wait for the end of the run (rank 0's final evaluation): no step follows.
            self.stalls = None;
        }
        let stalls = self.stalls.as_mut()?;
        let now = Instant::now();
        stalls.heard(self.rank, self.progress.steps(), now);
        self.links.iter().for_each(|link| stalls.heard(link.peer(), link.steps(), now));
        let stall = stalls.stalled(now)?;
        let lost = stall.behind[0];
        Some(PeerLost {
            rank: self.rank,
            world_size: self.world_size,
            lost,
            cause: LossCause::Stalled(stall),
            reported_by: None,
        })
    }

    fn stop_for(mut self, lost: PeerLost) {
        *locked(&self.shared.lost) = Some(lost.clone());
        if self.rank == 0 {
            // The others hear of any other rank's death only from rank 0.
            let deadline = Instant::now() + self.settings.heartbeat;
            let news = Message::Lost { rank: lost.lost, cause: lost.cause.clone() };
            self.links.iter_mut().for_each(|link| link.send(&news, deadline));
        }
        eprintln!("error: {lost}");
        if let Some(abort) = locked(&self.shared.abort).take() {
            // Its own thread: an abort that blocks must not hold up the exit below.
            let _ = std::thread::Builder::new().name("msclip-watchdog-abort".into()).spawn(abort);
        }
        std::thread::sleep(self.settings.grace);
        (self.exit)(&lost);
    }

    /// Sends `goodbye` on every connection and waits (up to the grace period) for each peer to
    /// close its end, so that the goodbye arrives before the end of the stream.
    fn say_goodbye(mut self, goodbye: Message) {
        let deadline = Instant::now() + self.settings.grace;
        for link in &mut self.links {
            link.send(&goodbye, deadline);
            link.stop_sending();
        }
        while !self.links.is_empty() && Instant::now() < deadline {
            self.links.retain_mut(|link| !link.drained());
            std::thread::sleep(TICK);
        }
    }
}
