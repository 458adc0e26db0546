//! The watchdog's messages, sent on the rendezvous's connections once the world has started:
//! a heartbeat with the sender's step count, the two goodbyes, and rank 0's word that some
//! rank was lost or that the world stalled. Each is a tag byte and a body whose length the
//! bytes before it fix, so a reader needs no length prefix.

use std::time::Duration;

use super::loss::LossCause;
use super::stall::Stall;

const HEARTBEAT: u8 = b'h';
const FINISHED: u8 = b'f';
const FAILED: u8 = b'x';
const LOST: u8 = b'l';
/// More ranks than any world has: a stall naming more is garbled.
const MOST_RANKS: u32 = 1 << 16;

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Message {
    /// The sender is alive, and has done `steps` training steps.
    Heartbeat { steps: u64 },
    /// The sender's run ended normally: its connection closing next is no loss.
    Finished,
    /// The sender stopped with an error: the others cannot go on without it.
    Failed,
    /// Rank 0's word that `rank` was lost (for a stall, the first of the ranks behind).
    Lost { rank: usize, cause: LossCause },
}

/// What the front of a stream of received bytes holds.
#[derive(Debug, PartialEq)]
pub(super) enum Decoded {
    /// A message, and how many bytes it took.
    Message(Message, usize),
    /// The start of a message whose rest has not arrived yet.
    Incomplete,
    /// Bytes that are no message.
    Invalid,
}

impl Message {
    pub(super) fn encode(&self) -> Vec<u8> {
        match self {
            Message::Heartbeat { steps } => [&[HEARTBEAT][..], &steps.to_le_bytes()].concat(),
            Message::Finished => vec![FINISHED],
            Message::Failed => vec![FAILED],
            Message::Lost { rank, cause } => {
                // The lost rank (u32), the cause (u8), a silence's length in ms (u32), then a
                // stall's findings.
                let (code, quiet) = match cause {
                    LossCause::Closed => (0u8, Duration::ZERO),
                    LossCause::Silent(quiet) => (1, *quiet),
                    LossCause::Failed => (2, Duration::ZERO),
                    LossCause::Garbled => (3, Duration::ZERO),
                    LossCause::Stalled(stall) => (4, stall.quiet),
                };
                let mut bytes = vec![LOST];
                bytes.extend((*rank as u32).to_le_bytes());
                bytes.push(code);
                bytes.extend((quiet.as_millis().min(u32::MAX as u128) as u32).to_le_bytes());
                if let LossCause::Stalled(stall) = cause {
                    encode_stall(stall, &mut bytes);
                }
                bytes
            }
        }
    }

    pub(super) fn decode(bytes: &[u8]) -> Decoded {
        let mut reader = Reader { bytes, used: 0 };
        match reader.message() {
            Ok(message) => Decoded::Message(message, reader.used),
            Err(incomplete_or_invalid) => incomplete_or_invalid,
        }
    }
}

/// A stall's step (u64), whether other ranks are ahead (u8) and their lowest and highest step
/// (u64 each), then how many ranks are behind (u32) and which (u32 each).
fn encode_stall(stall: &Stall, bytes: &mut Vec<u8>) {
    let (low, high) = stall.others.unwrap_or_default();
    bytes.extend(stall.step.to_le_bytes());
    bytes.push(u8::from(stall.others.is_some()));
    bytes.extend(low.to_le_bytes());
    bytes.extend(high.to_le_bytes());
    bytes.extend((stall.behind.len() as u32).to_le_bytes());
    for &rank in &stall.behind {
        bytes.extend((rank as u32).to_le_bytes());
    }
}

/// Reads a message off the front of received bytes: each read fails with
/// [`Decoded::Incomplete`] when its bytes have not arrived yet.
struct Reader<'a> {
    bytes: &'a [u8],
    used: usize,
}

impl Reader<'_> {
    fn message(&mut self) -> Result<Message, Decoded> {
        Ok(match self.u8()? {
            HEARTBEAT => Message::Heartbeat { steps: self.u64()? },
            FINISHED => Message::Finished,
            FAILED => Message::Failed,
            LOST => {
                let rank = self.u32()? as usize;
                let code = self.u8()?;
                let quiet = Duration::from_millis(self.u32()?.into());
                let cause = match code {
                    0 => LossCause::Closed,
                    1 => LossCause::Silent(quiet),
                    2 => LossCause::Failed,
                    3 => LossCause::Garbled,
                    4 => LossCause::Stalled(self.stall(quiet)?),
                    _ => return Err(Decoded::Invalid),
                };
                Message::Lost { rank, cause }
            }
            _ => return Err(Decoded::Invalid),
        })
    }

    fn stall(&mut self, quiet: Duration) -> Result<Stall, Decoded> {
        let step = self.u64()?;
        let ahead = match self.u8()? {
            0 => false,
            1 => true,
            _ => return Err(Decoded::Invalid),
        };
        let (low, high) = (self.u64()?, self.u64()?);
        let behind = self.u32()?;
        if behind == 0 || behind > MOST_RANKS {
            return Err(Decoded::Invalid);
        }
        let behind = (0..behind).map(|_| self.u32().map(|rank| rank as usize)).collect::<Result<_, _>>()?;
        Ok(Stall { quiet, step, behind, others: ahead.then_some((low, high)) })
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], Decoded> {
        let end = self.used + N;
        let taken = self.bytes.get(self.used..end).ok_or(Decoded::Incomplete)?;
        self.used = end;
        Ok(taken.try_into().expect("N bytes"))
    }

    fn u8(&mut self) -> Result<u8, Decoded> {
        Ok(self.take::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, Decoded> {
        self.take().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, Decoded> {
        self.take().map(u64::from_le_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stall(others: Option<(u64, u64)>) -> LossCause {
        LossCause::Stalled(Stall { quiet: Duration::from_secs(600), step: 1204, behind: vec![3, 1023], others })
    }

    #[test]
    fn every_message_reads_back_as_sent() {
        let causes = [
            LossCause::Closed,
            LossCause::Silent(Duration::from_millis(31_250)),
            LossCause::Failed,
            LossCause::Garbled,
            stall(Some((1205, 1207))),
            stall(None),
        ];
        let messages = [Message::Heartbeat { steps: 0 }, Message::Heartbeat { steps: u64::MAX - 1 }]
            .into_iter()
            .chain([Message::Finished, Message::Failed])
            .chain(causes.map(|cause| Message::Lost { rank: 1023, cause }));
        for message in messages {
            let bytes = message.encode();
            assert_eq!(Message::decode(&bytes), Decoded::Message(message.clone(), bytes.len()));
            // A message cut anywhere waits for its rest.
            for cut in 0..bytes.len() {
                assert_eq!(Message::decode(&bytes[..cut]), Decoded::Incomplete, "{message:?} cut at {cut}");
            }
            // What follows it is left for the next read.
            let two = [bytes.clone(), Message::Failed.encode()].concat();
            assert_eq!(Message::decode(&two), Decoded::Message(message, bytes.len()));
        }
    }

    #[test]
    fn bytes_that_are_no_message_are_invalid() {
        assert_eq!(Message::decode(b"GET / HTTP/1.1"), Decoded::Invalid);
        let mut lost = Message::Lost { rank: 2, cause: LossCause::Closed }.encode();
        lost[5] = 9;
        assert_eq!(Message::decode(&lost), Decoded::Invalid);
        // A stall's flag byte, and its count of ranks behind (none, or more than any world).
        let stalled = Message::Lost { rank: 3, cause: stall(None) }.encode();
        let flag = 1 + 9 + 8;
        let count = flag + 1 + 16;
        let mut bad_flag = stalled.clone();
        bad_flag[flag] = 2;
        assert_eq!(Message::decode(&bad_flag), Decoded::Invalid);
        for behind in [0, MOST_RANKS + 1] {
            let mut bad_count = stalled.clone();
            bad_count[count..count + 4].copy_from_slice(&behind.to_le_bytes());
            assert_eq!(Message::decode(&bad_count), Decoded::Invalid, "{behind} ranks behind");
        }
    }
}
