//! The kept output of a job read by offset (`GET /v1/jobs/{id}/output`): one log per stream,
//! capped the way a streamed job's output is — the first half of the cap kept as it came,
//! the most recent half kept in a ring, the middle dropped and counted — but readable while
//! the job runs. Offsets are byte positions in what the tool wrote, so they stay meaningful
//! across the gap: a reader that fell behind is told how many bytes it missed, and where
//! the kept ones resume.

use std::collections::VecDeque;

/// One stream's log.
#[derive(Debug)]
pub struct OutputLog {
    head: Vec<u8>,
    head_cap: usize,
    tail: VecDeque<u8>,
    tail_cap: usize,
    /// Every byte the tool wrote to the stream.
    total: u64,
}

/// A piece of a read: bytes from `offset` on, or the bytes from `offset` on that were not
/// kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Data { offset: u64, bytes: Vec<u8> },
    Gap { offset: u64, dropped: u64 },
}

/// What a read found: its pieces, and the offset to read from next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Read {
    pub pieces: Vec<Piece>,
    pub next: u64,
}

impl OutputLog {
    /// A log of at most `limit` bytes, split as a streamed job's cap is.
    pub fn new(limit: u64) -> OutputLog {
        let head = limit - limit / 2;
        OutputLog {
            head: Vec::new(),
            head_cap: usize::try_from(head).unwrap_or(usize::MAX),
            tail: VecDeque::new(),
            tail_cap: usize::try_from(limit / 2).unwrap_or(usize::MAX),
            total: 0,
        }
    }

    pub fn push(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        let room = self.head_cap - self.head.len();
        if room > 0 {
            let take = room.min(data.len());
            self.head.extend_from_slice(&data[..take]);
            data = &data[take..];
        }
        if data.len() >= self.tail_cap {
            self.tail.clear();
            self.tail.extend(&data[data.len() - self.tail_cap..]);
            return;
        }
        let over = (self.tail.len() + data.len()).saturating_sub(self.tail_cap);
        self.tail.drain(..over);
        self.tail.extend(data);
    }

    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bytes held (what the log costs).
    pub fn held(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    /// Where the kept tail begins.
    fn tail_start(&self) -> u64 {
        self.total - self.tail.len() as u64
    }

    /// Everything from `since` on. Unless the stream has `ended`, a UTF-8 character cut at
    /// the very end is held back for the next read (text stays text).
    pub fn read(&self, since: u64, ended: bool) -> Read {
        let since = since.min(self.total);
        let mut pieces = Vec::new();
        let head_end = self.head.len() as u64;
        if since < head_end {
            pieces.push(Piece::Data {
                offset: since,
                bytes: self.head[since as usize..].to_vec(),
            });
        }
        let tail_start = self.tail_start();
        let gap_from = since.max(head_end);
        if gap_from < tail_start {
            pieces.push(Piece::Gap {
                offset: gap_from,
                dropped: tail_start - gap_from,
            });
        }
        let from = since.max(tail_start).max(head_end);
        if from < self.total {
            let skip = (from - tail_start) as usize;
            pieces.push(Piece::Data {
                offset: from,
                bytes: self.tail.iter().skip(skip).copied().collect(),
            });
        }
        let mut next = self.total;
        if !ended {
            if let Some(Piece::Data { bytes, .. }) = pieces.last_mut() {
                let cut = unfinished_utf8(bytes);
                bytes.truncate(bytes.len() - cut);
                next -= cut as u64;
                if bytes.is_empty() {
                    pieces.pop();
                }
            }
        }
        Read { pieces, next }
    }
}

/// How many bytes at the end of `bytes` are the start of a UTF-8 character still to come.
fn unfinished_utf8(bytes: &[u8]) -> usize {
    match std::str::from_utf8(&bytes[bytes.len().saturating_sub(3)..]) {
        Ok(_) => 0,
        Err(e) if e.error_len().is_none() => {
            let checked = bytes.len().saturating_sub(3);
            bytes.len() - (checked + e.valid_up_to())
        }
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(offset: u64, bytes: &[u8]) -> Piece {
        Piece::Data {
            offset,
            bytes: bytes.to_vec(),
        }
    }

    #[test]
    fn reads_resume_where_the_last_one_ended() {
        let mut log = OutputLog::new(1024);
        log.push(b"hello ");
        let first = log.read(0, false);
        assert_eq!(first.pieces, vec![data(0, b"hello ")]);
        log.push(b"world");
        let second = log.read(first.next, false);
        assert_eq!(second.pieces, vec![data(6, b"world")]);
        assert_eq!(second.next, 11);
        assert_eq!(log.read(11, false).pieces, vec![]);
        // Past the end reads as the end.
        assert_eq!(log.read(99, true).next, 11);
    }

    #[test]
    fn the_gap_is_marked_and_offsets_stay_those_of_the_stream() {
        // 8 bytes: 4 of head, 4 of tail.
        let mut log = OutputLog::new(8);
        log.push(b"0123456789abcdef");
        assert_eq!(log.total(), 16);
        assert_eq!(log.held(), 8);
        let all = log.read(0, true);
        assert_eq!(
            all.pieces,
            vec![
                data(0, b"0123"),
                Piece::Gap {
                    offset: 4,
                    dropped: 8
                },
                data(12, b"cdef"),
            ]
        );
        assert_eq!(all.next, 16);
        // A reader inside the gap is told what it missed from where it stood.
        assert_eq!(
            log.read(6, true).pieces,
            vec![
                Piece::Gap {
                    offset: 6,
                    dropped: 6
                },
                data(12, b"cdef")
            ]
        );
        // Inside the kept tail: no gap.
        assert_eq!(log.read(14, true).pieces, vec![data(14, b"ef")]);
        // Writes in small pieces keep the same layout.
        let mut small = OutputLog::new(8);
        for byte in b"0123456789abcdef" {
            small.push(&[*byte]);
        }
        assert_eq!(small.read(0, true), all);
    }

    #[test]
    fn a_character_cut_at_the_end_waits_for_the_rest_until_the_stream_ends() {
        let euro = "€".as_bytes();
        let mut log = OutputLog::new(1024);
        log.push(&[b"a".as_slice(), &euro[..2]].concat());
        let read = log.read(0, false);
        assert_eq!(read.pieces, vec![data(0, b"a")]);
        assert_eq!(read.next, 1);
        log.push(&euro[2..]);
        let read = log.read(read.next, false);
        assert_eq!(read.pieces, vec![data(1, euro)]);
        // Bytes that never become text go out as they are once the stream ended.
        let mut bad = OutputLog::new(1024);
        bad.push(&[0xe2, 0x82]);
        assert_eq!(bad.read(0, false).pieces, vec![]);
        assert_eq!(bad.read(0, true).pieces, vec![data(0, &[0xe2, 0x82])]);
    }
}
