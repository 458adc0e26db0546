//! The open connections between the ranks, and one of them watched: what the peer said since
//! last looked at, and whether it went quiet or closed.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use super::loss::LossCause;
use super::wire::{Decoded, Message};

/// The rendezvous's connections, kept open for the run: rank 0's to every other rank, another
/// rank's to rank 0. Dropping them closes them, which the other ends take for this rank's
/// death unless a [`super::Watchdog`] said goodbye first.
#[derive(Debug)]
pub struct Peers {
    pub(super) rank: usize,
    pub(super) world_size: usize,
    pub(super) streams: Vec<(usize, TcpStream)>,
}

impl Peers {
    /// `streams`: (the peer's rank, the connection to it), for rank `rank` of `world_size`.
    pub(crate) fn new(rank: usize, world_size: usize, streams: Vec<(usize, TcpStream)>) -> Peers {
        Peers { rank, world_size, streams }
    }
}

/// One connection, read without blocking.
pub(super) struct Link {
    peer: usize,
    stream: TcpStream,
    /// Received bytes not yet decoded (the start of a message whose rest is on its way).
    unread: Vec<u8>,
    /// When a byte last arrived.
    heard: Instant,
    /// The training steps the peer last said it has done.
    steps: u64,
}

/// What a look at a link found.
pub(super) enum Heard {
    /// Heartbeats, or nothing yet within the silence allowed.
    Alive,
    /// The peer said goodbye after a normal end.
    Finished,
    /// The peer, or (as the peer reported) another rank, is gone.
    Lost { rank: usize, cause: LossCause, reported_by: Option<usize> },
}

impl Link {
    pub(super) fn new(peer: usize, stream: TcpStream) -> std::io::Result<Link> {
        stream.set_nonblocking(true)?;
        Ok(Link { peer, stream, unread: Vec::new(), heard: Instant::now(), steps: 0 })
    }

    pub(super) fn peer(&self) -> usize {
        self.peer
    }

    /// The training steps the peer has done, as of its last heartbeat.
    pub(super) fn steps(&self) -> u64 {
        self.steps
    }

    /// Reads what arrived and says what it means; the peer may say nothing for `silence`.
    pub(super) fn listen(&mut self, silence: Duration) -> Heard {
        let closed = self.read_arrived();
        let gone = |cause| Heard::Lost { rank: self.peer, cause, reported_by: None };
        // Messages come before the close that may follow them (a goodbye, then the end).
        loop {
            match Message::decode(&self.unread) {
                Decoded::Message(message, used) => {
                    self.unread.drain(..used);
                    match message {
                        Message::Heartbeat { steps } => self.steps = steps,
                        Message::Finished => return Heard::Finished,
                        Message::Failed => return gone(LossCause::Failed),
                        Message::Lost { rank, cause } => {
                            return Heard::Lost { rank, cause, reported_by: Some(self.peer) };
                        }
                    }
                }
                Decoded::Incomplete => break,
                Decoded::Invalid => return gone(LossCause::Garbled),
            }
        }
        let quiet = self.heard.elapsed();
        if closed {
            gone(LossCause::Closed)
        } else if quiet > silence {
            gone(LossCause::Silent(quiet))
        } else {
            Heard::Alive
        }
    }

    /// Moves every byte that has arrived into `unread`; true once the peer's side is closed
    /// (an end of stream, or a reset).
    fn read_arrived(&mut self) -> bool {
        let mut chunk = [0u8; 512];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(0) => return true,
                Ok(n) => {
                    self.unread.extend_from_slice(&chunk[..n]);
                    self.heard = Instant::now();
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return false,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return true,
            }
        }
    }

    /// Sends `message`, giving up at `deadline` (a peer that reads nothing fills the buffer).
    /// A failure is not reported here: a broken connection shows as closed when next read,
    /// after whatever the peer sent before it broke.
    pub(super) fn send(&mut self, message: &Message, deadline: Instant) {
        let bytes = message.encode();
        let mut sent = 0;
        while sent < bytes.len() {
            match self.stream.write(&bytes[sent..]) {
                Ok(0) => return,
                Ok(n) => sent += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return,
            }
        }
    }

    /// Sends nothing more: the peer reads an end of stream after what was sent.
    pub(super) fn stop_sending(&self) {
        let _ = self.stream.shutdown(Shutdown::Write);
    }

    /// Whether the peer has closed its side, reading (and dropping) what it sent meanwhile.
    /// Closing ours only after that makes the close an orderly end of stream: a socket closed
    /// with unread bytes sends a reset, which may discard what was sent just before.
    pub(super) fn drained(&mut self) -> bool {
        let closed = self.read_arrived();
        self.unread.clear();
        closed
    }
}
