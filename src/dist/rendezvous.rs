//! How the ranks of a world find each other before NCCL starts: rank 0 listens on the
//! master's address, every other rank connects and says who it is (its rank, the world size
//! it was started with, and a fingerprint of its configuration), and rank 0 answers every
//! rank with the same verdict: the bytes NCCL needs to join one communicator (its unique id),
//! or the reason the world cannot start. Every wait has a deadline, so a missing rank, an
//! unreachable master or a rank started with another config is a clear error on every rank
//! within a bounded time, never a hang. Once the world starts, its connections stay open for
//! the watchdog ([`super::watchdog`]), which keeps the ranks' deaths from becoming hangs too.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::watchdog::Peers;
use super::world::WorldPlace;
use crate::error::{Error, Result};

/// The first bytes of a rank's greeting; a connection that starts otherwise is not a rank.
const MAGIC: &[u8; 8] = b"msclipRV";
/// Longest fingerprint or verdict accepted, so a stray peer cannot make us allocate much.
const MAX_FRAME: usize = 1 << 16;
/// Pause between a rank's attempts to reach a master that is not listening yet.
const RETRY: Duration = Duration::from_millis(50);

/// A world that started: what rank 0 sent, and the connections that met.
#[derive(Debug)]
pub struct Meeting {
    /// Rank 0's payload, the same on every rank.
    pub payload: Vec<u8>,
    /// The connections, open: for [`super::Watchdog::start`].
    pub peers: Peers,
}

/// Meets the other ranks of `place`'s world. Rank 0 sends `payload` to all; every rank returns
/// it. `fingerprint` must be the same on every rank (a digest of the settings that must agree).
/// Rank 0 waits up to `timeout` for the others; the others try to reach it for up to `timeout`
/// and then wait up to `timeout` for its verdict.
pub fn rendezvous(place: &WorldPlace, fingerprint: &str, payload: &[u8], timeout: Duration) -> Result<Meeting> {
    if fingerprint.len() > MAX_FRAME || payload.len() > MAX_FRAME {
        return Err(Error::invalid("rendezvous", "fingerprint or payload over 64 KiB"));
    }
    if place.world_size == 1 {
        return Ok(Meeting { payload: payload.to_vec(), peers: Peers::new(0, 1, Vec::new()) });
    }
    match place.rank {
        0 => host(place, fingerprint, payload, timeout),
        _ => join(place, fingerprint, timeout),
    }
}

fn fail(message: String) -> Error {
    Error::invalid("data-parallel rendezvous", message)
}

/// A rank that joined: its stream and what it said.
struct Joined {
    stream: TcpStream,
    rank: usize,
    world_size: usize,
    fingerprint: String,
}

fn host(place: &WorldPlace, fingerprint: &str, payload: &[u8], timeout: Duration) -> Result<Meeting> {
    let addr = place.master_addr()?;
    let listener = TcpListener::bind(addr).map_err(|e| {
        fail(format!("rank 0 cannot listen on {addr} ({e}): is another job using MASTER_PORT? choose another"))
    })?;
    listener.set_nonblocking(true).map_err(|e| fail(format!("rank 0: {e}")))?;
    let deadline = Instant::now() + timeout;
    let mut joined: Vec<Joined> = Vec::new();
    while joined.len() + 1 < place.world_size && Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, _)) => {
                // Not a rank (a port scanner, a stray client): drop it and keep waiting.
                if let Ok(j) = read_greeting(stream, deadline) {
                    joined.push(j);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(RETRY / 5),
            Err(e) => return Err(fail(format!("rank 0 stopped accepting ranks: {e}"))),
        }
    }
    let verdict = judge(place, fingerprint, &joined, timeout);
    let reply = match &verdict {
        Ok(()) => (0u8, payload.to_vec()),
        Err(message) => (1u8, message.as_bytes().to_vec()),
    };
    for j in &mut joined {
        // A rank that left already learns nothing (its watchdog link then reads as closed); the
        // others must hear the verdict.
        let _ = j.stream.set_nonblocking(false);
        let _ = write_frame(&mut j.stream, reply.0, &reply.1);
    }
    verdict.map_err(fail)?;
    let streams = joined.into_iter().map(|j| (j.rank, j.stream)).collect();
    Ok(Meeting { payload: payload.to_vec(), peers: Peers::new(0, place.world_size, streams) })
}

/// Whether the ranks that joined make the world rank 0 was started for.
fn judge(
    place: &WorldPlace,
    fingerprint: &str,
    joined: &[Joined],
    timeout: Duration,
) -> std::result::Result<(), String> {
    let world = place.world_size;
    if let Some(j) = joined.iter().find(|j| j.world_size != world) {
        return Err(format!("rank {} was started with WORLD_SIZE={}, rank 0 with {world}", j.rank, j.world_size));
    }
    if let Some(j) = joined.iter().find(|j| j.rank == 0 || j.rank >= world) {
        return Err(format!("a process claims RANK={} in a world of {world}", j.rank));
    }
    let mut seen = vec![false; world];
    seen[0] = true;
    for j in joined {
        if std::mem::replace(&mut seen[j.rank], true) {
            return Err(format!("two processes claim RANK={}", j.rank));
        }
    }
    let missing: Vec<usize> = (0..world).filter(|&r| !seen[r]).collect();
    if !missing.is_empty() {
        return Err(format!(
            "rank(s) {missing:?} of {world} did not join within {:.0} s (not started, crashed, or pointed at another MASTER_ADDR:MASTER_PORT)",
            timeout.as_secs_f64()
        ));
    }
    if let Some(j) = joined.iter().find(|j| j.fingerprint != fingerprint) {
        let (theirs, ours) = first_difference(&j.fingerprint, fingerprint);
        return Err(format!(
            "rank {}'s configuration differs from rank 0's: ...{theirs}... against ...{ours}...; every rank must run the \
             same command",
            j.rank
        ));
    }
    Ok(())
}

/// The stretch of each fingerprint around where they first differ (a whole config can be long).
fn first_difference<'a>(a: &'a str, b: &'a str) -> (&'a str, &'a str) {
    let at = a.char_indices().zip(b.chars()).find(|((_, x), y)| x != y).map_or(a.len().min(b.len()), |((i, _), _)| i);
    let around = |s: &'a str| {
        let start = s.floor_char_boundary(at.saturating_sub(24));
        &s[start..s.ceil_char_boundary((at + 24).min(s.len()))]
    };
    (around(a), around(b))
}

fn read_greeting(mut stream: TcpStream, deadline: Instant) -> std::io::Result<Joined> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(RETRY)))?;
    let mut magic = [0u8; 8];
    stream.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(ErrorKind::InvalidData.into());
    }
    let rank = read_u32(&mut stream)? as usize;
    let world_size = read_u32(&mut stream)? as usize;
    let fingerprint = String::from_utf8(read_bytes(&mut stream)?).map_err(|_| ErrorKind::InvalidData)?;
    Ok(Joined { stream, rank, world_size, fingerprint })
}

fn join(place: &WorldPlace, fingerprint: &str, timeout: Duration) -> Result<Meeting> {
    let addr = place.master_addr()?;
    let deadline = Instant::now() + timeout;
    let mut stream = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match TcpStream::connect_timeout(&addr, left.max(RETRY)) {
            Ok(s) => break s,
            Err(_) if Instant::now() + RETRY < deadline => std::thread::sleep(RETRY),
            Err(e) => {
                return Err(fail(format!(
                    "rank {} could not reach rank 0 at {addr} within {:.0} s ({e}): is rank 0 running, with the same MASTER_ADDR and MASTER_PORT?",
                    place.rank,
                    timeout.as_secs_f64()
                )));
            }
        }
    };
    let lost =
        |e: std::io::Error| fail(format!("rank {} lost rank 0 at {addr} before the world started: {e}", place.rank));
    let mut greeting = MAGIC.to_vec();
    greeting.extend((place.rank as u32).to_le_bytes());
    greeting.extend((place.world_size as u32).to_le_bytes());
    greeting.extend((fingerprint.len() as u32).to_le_bytes());
    greeting.extend(fingerprint.as_bytes());
    stream.write_all(&greeting).map_err(lost)?;
    // Rank 0 answers once every rank joined or its own deadline passed, which is at most
    // `timeout` after this rank reached it.
    stream.set_read_timeout(Some(timeout + RETRY)).map_err(lost)?;
    let mut status = [0u8; 1];
    stream.read_exact(&mut status).map_err(lost)?;
    let body = read_bytes(&mut stream).map_err(lost)?;
    match status[0] {
        0 => Ok(Meeting { payload: body, peers: Peers::new(place.rank, place.world_size, vec![(0, stream)]) }),
        _ => Err(fail(format!("rank 0 refused the world: {}", String::from_utf8_lossy(&body)))),
    }
}

fn write_frame(stream: &mut TcpStream, status: u8, body: &[u8]) -> std::io::Result<()> {
    let mut frame = vec![status];
    frame.extend((body.len() as u32).to_le_bytes());
    frame.extend(body);
    stream.write_all(&frame)
}

fn read_u32(stream: &mut TcpStream) -> std::io::Result<u32> {
    let mut word = [0u8; 4];
    stream.read_exact(&mut word)?;
    Ok(u32::from_le_bytes(word))
}

fn read_bytes(stream: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let len = read_u32(stream)? as usize;
    if len > MAX_FRAME {
        return Err(ErrorKind::InvalidData.into());
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    Ok(body)
}
