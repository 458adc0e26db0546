//! The watchdog's messages, sent on the rendezvous's connections once the world has started:
//! a heartbeat, the two goodbyes, and rank 0's word that some rank was lost. Each is a tag
//! byte, and the loss report a fixed body after it, so a reader needs no lengths.

use std::time::Duration;

use super::loss::LossCause;

const HEARTBEAT: u8 = b'h';
const FINISHED: u8 = b'f';
const FAILED: u8 = b'x';
const LOST: u8 = b'l';
/// A loss report's body: the lost rank (u32), its cause (u8), a silence's length in ms (u32).
const LOST_BODY: usize = 9;

#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Message {
    Heartbeat,
    /// The sender's run ended normally: its connection closing next is no loss.
    Finished,
    /// The sender stopped with an error: the others cannot go on without it.
    Failed,
    /// Rank 0's word that `rank` was lost.
    Lost {
        rank: usize,
        cause: LossCause,
    },
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
    pub(super) fn encode(self) -> Vec<u8> {
        match self {
            Message::Heartbeat => vec![HEARTBEAT],
            Message::Finished => vec![FINISHED],
            Message::Failed => vec![FAILED],
            Message::Lost { rank, cause } => {
                let (code, quiet) = match cause {
                    LossCause::Closed => (0u8, Duration::ZERO),
                    LossCause::Silent(quiet) => (1, quiet),
                    LossCause::Failed => (2, Duration::ZERO),
                    LossCause::Garbled => (3, Duration::ZERO),
                };
                let mut bytes = vec![LOST];
                bytes.extend((rank as u32).to_le_bytes());
                bytes.push(code);
                bytes.extend((quiet.as_millis().min(u32::MAX as u128) as u32).to_le_bytes());
                bytes
            }
        }
    }

    pub(super) fn decode(bytes: &[u8]) -> Decoded {
        let message = match bytes.first() {
            None => return Decoded::Incomplete,
            Some(&HEARTBEAT) => Message::Heartbeat,
            Some(&FINISHED) => Message::Finished,
            Some(&FAILED) => Message::Failed,
            Some(&LOST) => {
                let Some(body) = bytes.get(1..1 + LOST_BODY) else { return Decoded::Incomplete };
                let word = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
                let cause = match body[4] {
                    0 => LossCause::Closed,
                    1 => LossCause::Silent(Duration::from_millis(word(5).into())),
                    2 => LossCause::Failed,
                    3 => LossCause::Garbled,
                    _ => return Decoded::Invalid,
                };
                return Decoded::Message(Message::Lost { rank: word(0) as usize, cause }, 1 + LOST_BODY);
            }
            Some(_) => return Decoded::Invalid,
        };
        Decoded::Message(message, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_reads_back_as_sent() {
        let causes = [
            LossCause::Closed,
            LossCause::Silent(Duration::from_millis(31_250)),
            LossCause::Failed,
            LossCause::Garbled,
        ];
        let messages = [Message::Heartbeat, Message::Finished, Message::Failed]
            .into_iter()
            .chain(causes.map(|cause| Message::Lost { rank: 1023, cause }));
        for message in messages {
            let bytes = message.encode();
            assert_eq!(Message::decode(&bytes), Decoded::Message(message, bytes.len()));
            // A message cut anywhere waits for its rest.
            for cut in 0..bytes.len() {
                assert_eq!(Message::decode(&bytes[..cut]), Decoded::Incomplete, "{message:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn bytes_that_are_no_message_are_invalid() {
        assert_eq!(Message::decode(b"GET / HTTP/1.1"), Decoded::Invalid);
        let mut lost = Message::Lost { rank: 2, cause: LossCause::Closed }.encode();
        lost[5] = 9;
        assert_eq!(Message::decode(&lost), Decoded::Invalid);
    }
}
