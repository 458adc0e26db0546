//! The ranks of a data-parallel world simulated as threads of one test process, meeting over
//! TCP on this machine.

use std::net::TcpListener;
use std::time::Duration;

use msclip::dist::{Meeting, WorldPlace, rendezvous};

/// An address on this machine where nobody listens right now, for rank 0 to listen on.
pub fn free_master() -> String {
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!("127.0.0.1:{port}")
}

/// Runs one thread per (rank, world size it was started with, fingerprint), all meeting at
/// `master`; each rank's meeting (rank 0's payload is "nccl unique id") or the error's text.
pub fn meet(master: &str, ranks: &[(usize, usize, &str)], timeout: Duration) -> Vec<Result<Meeting, String>> {
    std::thread::scope(|scope| {
        let threads: Vec<_> = ranks
            .iter()
            .map(|&(rank, world_size, fingerprint)| {
                let place = WorldPlace { rank, world_size, local_rank: rank, master: master.to_string() };
                scope.spawn(move || {
                    rendezvous(&place, fingerprint, b"nccl unique id", timeout).map_err(|e| e.to_string())
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().unwrap()).collect()
    })
}
