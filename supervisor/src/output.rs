//! Capping one output stream: the head passes through live, the tail is kept in a ring,
//! everything between is counted and dropped. Memory stays bounded by the tail, whatever
//! the tool writes, and the tool is never blocked by the cap.

/// The cap of one stream, split between a live head and a kept tail.
#[derive(Debug)]
pub struct Capper {
    head_left: u64,
    tail: Ring,
    total: u64,
}

/// What is left to write once the stream has ended.
#[derive(Debug, PartialEq, Eq)]
pub struct Ending {
    /// Bytes neither streamed nor kept.
    pub dropped: u64,
    /// The kept tail, in order.
    pub tail: Vec<u8>,
}

impl Capper {
    /// `limit` bytes at most reach the reader: the first half live, the last half at the end.
    pub fn new(limit: u64) -> Capper {
        let head = limit - limit / 2;
        Capper {
            head_left: head,
            tail: Ring::new((limit / 2) as usize),
            total: 0,
        }
    }

    /// The same cap, counting only: no tail is kept (for a caller that keeps its own log of
    /// every byte, a detached job's); [`Capper::finish`] gives the count and no tail.
    pub fn counting(limit: u64) -> Capper {
        let mut capper = Capper::new(limit);
        capper.tail.keep = false;
        capper
    }

    /// Take a chunk the tool wrote; returns the part to stream now.
    pub fn push<'a>(&mut self, chunk: &'a [u8]) -> &'a [u8] {
        self.total += chunk.len() as u64;
        let live = chunk
            .len()
            .min(usize::try_from(self.head_left).unwrap_or(usize::MAX));
        self.head_left -= live as u64;
        self.tail.push(&chunk[live..]);
        &chunk[..live]
    }

    /// Once the live head is out, how many bytes at the end the cap keeps: a reader may
    /// then drop, unread, all but that many of what it holds, and say so with
    /// [`Capper::skip`]. `None` while the head streams, and for a counting cap (its caller
    /// keeps every byte).
    pub fn keeps_only_tail(&self) -> Option<usize> {
        (self.head_left == 0 && self.tail.keep).then_some(self.tail.capacity)
    }

    /// `bytes` the tool wrote were dropped unread, with at least the tail's worth written
    /// after them (see [`Capper::keeps_only_tail`]): they, and all the tail held so far,
    /// are out of the kept tail.
    pub fn skip(&mut self, bytes: u64) {
        self.total += bytes;
        self.tail.skip(bytes);
    }

    /// Every byte the tool wrote to this stream.
    pub fn total(&self) -> u64 {
        self.total
    }

    pub fn finish(self) -> Ending {
        Ending {
            dropped: self.tail.dropped,
            tail: self.tail.into_vec(),
        }
    }
}

/// The last `capacity` bytes pushed; allocated on first use, so a quiet tool costs nothing.
#[derive(Debug)]
struct Ring {
    buf: Vec<u8>,
    capacity: usize,
    /// Where the next byte goes once `buf` is full.
    start: usize,
    dropped: u64,
    /// Whether the bytes are kept, or only counted (`held` of them would be).
    keep: bool,
    held: usize,
}

impl Ring {
    fn new(capacity: usize) -> Ring {
        Ring {
            buf: Vec::new(),
            capacity,
            start: 0,
            dropped: 0,
            keep: true,
            held: 0,
        }
    }

    fn push(&mut self, mut data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if !self.keep {
            let now = self.held + data.len();
            self.dropped += now.saturating_sub(self.capacity) as u64;
            self.held = now.min(self.capacity);
            return;
        }
        if data.len() >= self.capacity {
            // Everything held so far, and the front of this chunk, fall out.
            let skip = data.len() - self.capacity;
            self.dropped += (self.buf.len() + skip) as u64;
            self.buf.clear();
            self.start = 0;
            data = &data[skip..];
            self.buf.extend_from_slice(data);
            return;
        }
        let room = self.capacity - self.buf.len();
        if room > 0 {
            let now = data.len().min(room);
            self.buf.extend_from_slice(&data[..now]);
            data = &data[now..];
        }
        // Full: overwrite the oldest bytes.
        self.dropped += data.len() as u64;
        while !data.is_empty() {
            let run = data.len().min(self.capacity - self.start);
            self.buf[self.start..self.start + run].copy_from_slice(&data[..run]);
            self.start = (self.start + run) % self.capacity;
            data = &data[run..];
        }
    }

    /// `bytes` more fell out unseen, and everything held with them.
    fn skip(&mut self, bytes: u64) {
        self.dropped += (self.buf.len() + self.held) as u64 + bytes;
        self.buf.clear();
        self.start = 0;
        self.held = 0;
    }

    fn into_vec(mut self) -> Vec<u8> {
        self.buf.rotate_left(self.start);
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(limit: u64, chunks: &[&[u8]]) -> (Vec<u8>, Ending) {
        let mut capper = Capper::new(limit);
        let mut live = Vec::new();
        for chunk in chunks {
            live.extend_from_slice(capper.push(chunk));
        }
        (live, capper.finish())
    }

    #[test]
    fn short_output_passes_through_whole() {
        let (live, end) = run(10, &[b"abc", b"de"]);
        assert_eq!(live, b"abcde");
        assert_eq!(
            end,
            Ending {
                dropped: 0,
                tail: vec![]
            }
        );
    }

    #[test]
    fn output_just_over_the_head_is_complete_with_nothing_dropped() {
        let (live, end) = run(10, &[b"abcdefg"]);
        assert_eq!(live, b"abcde");
        assert_eq!(
            end,
            Ending {
                dropped: 0,
                tail: b"fg".to_vec()
            }
        );
    }

    #[test]
    fn long_output_keeps_head_and_tail_and_counts_the_middle() {
        let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let chunks: Vec<&[u8]> = data.chunks(7).collect();
        let (live, end) = run(100, &chunks);
        assert_eq!(live, &data[..50]);
        assert_eq!(end.tail, &data[data.len() - 50..]);
        assert_eq!(end.dropped, 10_000 - 100);
    }

    #[test]
    fn one_huge_chunk_and_odd_limits() {
        let data: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        let (live, end) = run(11, &[&data]);
        assert_eq!(live, &data[..6]);
        assert_eq!(end.tail, &data[data.len() - 5..]);
        assert_eq!(end.dropped, 5000 - 11);
        let (live, end) = run(1, &[b"xyz"]);
        assert_eq!(
            (live.as_slice(), end.tail.as_slice(), end.dropped),
            (&b"x"[..], &b""[..], 2)
        );
    }

    #[test]
    fn a_counting_cap_keeps_nothing_and_counts_the_same() {
        let data: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        for chunk_size in [1, 7, 100, 10_000] {
            let mut keeping = Capper::new(100);
            let mut counting = Capper::counting(100);
            for chunk in data.chunks(chunk_size) {
                assert_eq!(keeping.push(chunk), counting.push(chunk));
            }
            let (kept, counted) = (keeping.finish(), counting.finish());
            assert_eq!(kept.dropped, counted.dropped, "chunks of {chunk_size}");
            assert!(counted.tail.is_empty());
        }
    }

    #[test]
    fn dropping_unread_all_but_the_tail_ends_as_reading_every_byte() {
        // A reader of a pipe that, once the head is out, drops unread whatever the pipe
        // holds beyond the tail (the tail's worth stays in the pipe, to be read or dropped
        // later), against one that reads it all.
        let data: Vec<u8> = (0..=250u8).cycle().take(20_000).collect();
        for (limit, write, read) in [(100, 7, 13), (100, 300, 64), (101, 1, 1), (2, 5, 3)] {
            let (live, whole) = run(limit, &data.chunks(write).collect::<Vec<_>>());
            let mut capper = Capper::new(limit);
            let (mut streamed, mut at, mut written) = (Vec::new(), 0, 0);
            let mut skipped = false;
            while at < data.len() {
                // The tool writes one chunk; the pipe holds data[at..written].
                written = (written + write).min(data.len());
                if let Some(keep) = capper.keeps_only_tail() {
                    let held = written - at;
                    if held > keep {
                        capper.skip((held - keep) as u64);
                        at += held - keep;
                        skipped = true;
                    }
                }
                if written == data.len() || capper.keeps_only_tail().is_none() {
                    let upto = (at + read).min(written);
                    streamed.extend_from_slice(capper.push(&data[at..upto]));
                    at = upto;
                }
            }
            assert!(skipped, "limit {limit}: nothing was dropped unread");
            assert_eq!(capper.total(), data.len() as u64);
            assert_eq!(streamed, live, "limit {limit}");
            assert_eq!(capper.finish(), whole, "limit {limit}");
        }
        // What the tail held is out with what was dropped after it.
        let mut capper = Capper::new(10);
        assert_eq!(capper.push(b"0123456789abc"), b"01234");
        assert_eq!(capper.keeps_only_tail(), Some(5));
        capper.skip(100);
        assert_eq!(capper.total(), 113);
        assert_eq!(
            capper.finish(),
            Ending {
                dropped: 108,
                tail: vec![]
            }
        );
        // A counting cap's caller keeps every byte: nothing is to be dropped unread.
        let mut counting = Capper::counting(10);
        counting.push(&data[..100]);
        assert_eq!(counting.keeps_only_tail(), None);
    }

    #[test]
    fn ring_wraps_across_many_small_writes() {
        let data: Vec<u8> = (0..200u8).collect();
        let chunks: Vec<&[u8]> = data.chunks(3).collect();
        let (live, end) = run(20, &chunks);
        assert_eq!(live, &data[..10]);
        assert_eq!(end.tail, &data[190..]);
        assert_eq!(end.dropped, 180);
    }
}
