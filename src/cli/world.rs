//! `msclip train` as one process of a data-parallel world: joining the world torchrun's
//! variables describe (NCCL on GPUs, watched by the ranks' watchdog for the whole run), and
//! `--nproc N`, which starts N such processes on this machine as torchrun would.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use msclip::dist::{
    Collective, NcclRanks, Progress, Watchdog, WatchdogSettings, WorldPlace, end_process, nccl_unique_id, rendezvous,
};
use msclip::train::TrainConfig;

/// How long the ranks wait for each other before the world starts.
const RENDEZVOUS_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the other ranks may take to exit once one has failed, before they are killed.
const GRACE: Duration = Duration::from_secs(10);

/// This process's place in a running data-parallel world: its communicator, and its watch over
/// the other ranks. End it with [`World::finish`] when the run ends normally; dropped without
/// that, it stops the other ranks as well.
pub struct World {
    nccl: Arc<NcclRanks>,
    /// None once finished.
    watchdog: Option<Watchdog>,
    progress: Progress,
}

impl World {
    /// The ranks, for the training loop.
    pub fn ranks(&self) -> Arc<dyn Collective> {
        self.nccl.clone()
    }

    /// Where the training loop reports its steps, which the watchdog checks for a stall.
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    /// Ends a run that finished normally (or stopped together on a signal): frees the
    /// communicator, still watched since that waits for the node's other ranks, then says
    /// goodbye to the others. No collective may run after this. An error if a rank was lost.
    pub fn finish(mut self) -> anyhow::Result<()> {
        self.nccl.destroy()?;
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.finish()?;
        }
        Ok(())
    }
}

impl Drop for World {
    /// A run that ended with an error: the watchdog tells the other ranks, which stop, and the
    /// communicator is aborted, not destroyed, since destroying it would wait for them.
    fn drop(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            drop(watchdog);
            let _ = self.nccl.abort();
        }
    }
}

/// The world this process belongs to (torchrun's variables), joined; None when it runs alone.
/// `stall`: how long no rank may finish a step before the run stops (zero: no limit).
pub fn join_world(config: &TrainConfig, stall: Duration) -> anyhow::Result<Option<World>> {
    let Some(place) = WorldPlace::from_env()? else { return Ok(None) };
    if config.device != msclip::Device::Cuda {
        anyhow::bail!(
            "WORLD_SIZE={} asks for data-parallel training, which runs on GPUs through NCCL (--device cuda); \
             --device {} trains in one process",
            place.world_size,
            config.device
        );
    }
    // Every rank must train the same run: its whole config is compared.
    let fingerprint = serde_json::to_string(config)?;
    let id = if place.rank == 0 { nccl_unique_id()? } else { Vec::new() };
    let meeting = rendezvous(&place, &fingerprint, &id, RENDEZVOUS_TIMEOUT)?;
    // Watched from here on: NCCL's own setup below waits for every rank too.
    let settings = WatchdogSettings { stall, ..WatchdogSettings::default() };
    let watchdog = Watchdog::start(meeting.peers, settings, end_process)?;
    let nccl = Arc::new(NcclRanks::join(&place, &meeting.payload)?);
    watchdog.set_abort(nccl.abort_handle());
    let progress = watchdog.progress();
    Ok(Some(World { nccl, watchdog: Some(watchdog), progress }))
}

/// Starts `nproc` copies of this command (without `--nproc`), one per GPU of this machine, as
/// ranks 0..nproc of one world, and waits for them. When one fails, the others get a grace
/// period and are then killed, so a dead rank never leaves the rest hanging. The ranks run in
/// their own process group: a Ctrl-C or SIGTERM reaches the launcher alone, which passes one
/// SIGTERM to each rank per signal it gets (the first stops them together at their next logged
/// step, with a checkpoint; a second ends them at once, as for one process).
pub fn launch_local(nproc: usize) -> anyhow::Result<()> {
    if nproc == 0 {
        anyhow::bail!("--nproc must be at least 1");
    }
    let signals = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&signals);
    ctrlc::set_handler(move || {
        counter.fetch_add(1, Ordering::SeqCst);
    })?;
    let exe = std::env::current_exe()?;
    let args = args_without_nproc(std::env::args().skip(1));
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut children: Vec<Child> = (0..nproc)
        .map(|rank| {
            Command::new(&exe)
                .args(&args)
                .env("WORLD_SIZE", nproc.to_string())
                .env("RANK", rank.to_string())
                .env("LOCAL_RANK", rank.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .process_group(0)
                .spawn()
        })
        .collect::<Result<_, _>>()?;
    let mut failed: Option<(usize, std::process::ExitStatus, Instant)> = None;
    let mut running: Vec<usize> = (0..nproc).collect();
    let mut forwarded = 0;
    while !running.is_empty() {
        let received = signals.load(Ordering::SeqCst);
        if received > forwarded {
            forwarded = received;
            terminate(&children, &running);
        }
        running.retain(|&rank| match children[rank].try_wait() {
            Ok(Some(status)) => {
                if !status.success() && failed.is_none() {
                    failed = Some((rank, status, Instant::now()));
                }
                false
            }
            _ => true,
        });
        if let Some((_, _, at)) = failed
            && at.elapsed() > GRACE
        {
            for &rank in &running {
                let _ = children[rank].kill();
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    match failed {
        Some((rank, status, _)) => anyhow::bail!("rank {rank} of {nproc} failed ({status}); the others were stopped"),
        None => Ok(()),
    }
}

/// Sends SIGTERM to the `running` ones of `children`.
fn terminate(children: &[Child], running: &[usize]) {
    for &rank in running {
        // SAFETY: kill(2) on the id of a child this process started and has not reaped (it is
        // running), so the id names that child.
        unsafe { libc::kill(children[rank].id() as libc::pid_t, libc::SIGTERM) };
    }
}

/// The command line minus `--nproc N` / `--nproc=N`.
fn args_without_nproc(args: impl Iterator<Item = String>) -> Vec<String> {
    let mut out = Vec::new();
    let mut skip_value = false;
    for arg in args {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        if arg == "--nproc" {
            skip_value = true;
        } else if !arg.starts_with("--nproc=") {
            out.push(arg);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signal_to_the_launcher_is_passed_to_each_running_rank() {
        use std::os::unix::process::ExitStatusExt;
        let mut children: Vec<Child> =
            (0..2).map(|_| Command::new("sleep").arg("30").process_group(0).spawn().unwrap()).collect();
        terminate(&children, &[0, 1]);
        for child in &mut children {
            assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGTERM));
        }
    }

    #[test]
    fn children_get_the_command_without_nproc() {
        let args = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        assert_eq!(
            args_without_nproc(args("train --nproc 4 --device cuda --nproc=2 --steps 5").into_iter()),
            args("train --device cuda --steps 5")
        );
    }
}
