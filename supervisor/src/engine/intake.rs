//! Taking a job's output from its pipe. While the cap streams its head, and for a caller
//! that keeps every byte, each wake reads what the pipe holds. Once the head is out, only
//! the cap's tail is left to keep: whatever the pipe holds beyond a tail's worth is then
//! dropped in the kernel, spliced to `/dev/null`, never copied out, and the rest stays in
//! the pipe until more comes or the tool closes it. A flood costs its reader a `FIONREAD`
//! and a `splice` per wake, and the pages it frees go back to the writer's pipe: on our VMs
//! a 1 GiB flood through `toolbox run` went from 3.2 – 3.7 GB/s to 4.9 – 5.3 GB/s that way
//! (three alternated runs), about the bare `head | cat` pipe's rate in those runs (it
//! swings from 3 to 7 GB/s with where its two ends run). The reader must follow
//! the writer closely: splicing only once 256 KiB more than the tail were there took 0.50
//! – 0.65 s a GiB in C against 0.19 – 0.34 s for this, and an earlier try that spliced all
//! the pipe held away (no tail) 0.35 – 0.78 s.
//!
//! Bytes left in the pipe rely on the kernel waking its edge-triggered reader (tokio) at
//! every write, also one to a pipe that is not empty. Linux does so at the end of each
//! write ([`sys::pipe_wakes_every_write`] checks), but not when a single write fills the
//! pipe and sleeps for room: a tool writing more than the pipe's free room at once would
//! wait for ever on a reader waiting for it. So while bytes are left, a wait without a
//! wake is cut short, and if the pipe then holds more than the tail (the tool is stuck
//! mid-write), this stream is read from then on, as it was before its head ran out. The
//! pipe must also hold at least two tails, and `/dev/null` be the null device.

use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{splice, SpliceFFlags};
use tokio::io::{AsyncReadExt, Interest};
use tokio::net::unix::pipe;
use tracing::debug;

use super::READ_BUFFER;
use crate::sys;

/// How many splices one wake may make before it lets the job's other events in: the tool
/// keeps writing while we drop, a few KiB at a time.
const SPLICES_A_WAKE: usize = 32;
/// How long a wait with bytes left in the pipe goes without a look at it, at first; it
/// doubles while the tool is quiet, up to [`STALL_CHECK_MOST`].
const STALL_CHECK: Duration = Duration::from_millis(10);
const STALL_CHECK_MOST: Duration = Duration::from_millis(160);
/// The most read from a pipe in a last take of what it holds, not waiting for its end
/// (something that outlived the job or the command may write on).
const DRAIN_READS: usize = 64;

/// One output stream's reading.
#[derive(Debug)]
pub(super) struct Intake {
    /// What the last read took. Tokio reads into its spare capacity, never zeroed: a quiet
    /// job faults in none of it.
    pub(super) buf: Vec<u8>,
    /// Whether bytes may be dropped unread on this pipe: found out when the head is out.
    sink: Sink,
    /// Read straight from the pipe until it is empty: it was found stuck full, with
    /// tokio's readiness cleared (see the module's comment).
    direct: bool,
}

#[derive(Debug, Clone, Copy)]
enum Sink {
    Unknown,
    /// The null device.
    To(BorrowedFd<'static>),
    Never,
}

impl Sink {
    /// For `pipe` past its head, the cap keeping `tail` bytes (see the module's comment).
    fn of(pipe: &pipe::Receiver, tail: usize) -> Sink {
        let fits = sys::pipe_size(pipe.as_fd()) >= tail.saturating_mul(2);
        match sys::null_sink() {
            Some(null) if fits && sys::pipe_wakes_every_write() => Sink::To(null),
            _ => Sink::Never,
        }
    }
}

/// What one wait on the pipe gave.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Took {
    /// This many bytes, in [`Intake::buf`]; 0 at the end of the stream.
    Read(usize),
    /// This many bytes at the pipe's front, dropped unread.
    Dropped(u64),
}

impl Intake {
    pub(super) fn new() -> Intake {
        Intake {
            buf: Vec::with_capacity(READ_BUFFER),
            sink: Sink::Unknown,
            direct: false,
        }
    }

    /// Wait for the pipe's next bytes (for ever if it is closed: the `select!` guard keeps
    /// a closed one from being polled at all). `keep` is the cap's
    /// [`Capper::keeps_only_tail`](crate::output::Capper::keeps_only_tail): with it, what
    /// the pipe holds beyond that many bytes is dropped, and the rest waits there. Cancel
    /// safe: nothing is taken from the pipe but in the poll that returns it.
    pub(super) async fn take(
        &mut self,
        pipe: &mut Option<&mut pipe::Receiver>,
        keep: Option<usize>,
    ) -> io::Result<Took> {
        let Some(pipe) = pipe else {
            return std::future::pending().await;
        };
        if self.direct {
            match self.read_now(pipe) {
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => self.direct = false,
                read => return read.map(Took::Read),
            }
        }
        if let (Sink::Unknown, Some(keep)) = (self.sink, keep) {
            self.sink = Sink::of(pipe, keep);
        }
        if let (Sink::To(sink), Some(keep)) = (self.sink, keep) {
            let mut check = STALL_CHECK;
            loop {
                let ready = match tokio::time::timeout(check, pipe.ready(Interest::READABLE)).await
                {
                    Ok(ready) => ready?,
                    Err(_) => {
                        if sys::queued(pipe.as_fd()).map_or(true, |held| held > keep) {
                            debug!("output is read from here on: the tool is stuck on a full pipe");
                            self.sink = Sink::Never;
                            match self.read_now(pipe) {
                                // Emptied since: tokio's wait will do.
                                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                                read => {
                                    self.direct = true;
                                    return read.map(Took::Read);
                                }
                            }
                        }
                        check = (check * 2).min(STALL_CHECK_MOST);
                        continue;
                    }
                };
                match pipe.try_io(|| drop_beyond(pipe.as_fd(), keep, sink)) {
                    Ok(dropped) => return Ok(Took::Dropped(dropped)),
                    // No more than the tail, and the tool has closed the pipe: read it.
                    Err(err)
                        if err.kind() == io::ErrorKind::WouldBlock && ready.is_read_closed() =>
                    {
                        break
                    }
                    // No more than the tail: wait for the next write (the readiness is
                    // cleared, unless one came in the meantime).
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                    Err(err) => {
                        debug!("output is read from here on: cannot splice it away ({err})");
                        self.sink = Sink::Never;
                        break;
                    }
                }
            }
        }
        self.buf.clear();
        pipe.read_buf(&mut self.buf).await.map(Took::Read)
    }

    /// One read of what `pipe` holds now, straight from the descriptor, whatever tokio
    /// last saw of it; `WouldBlock` when it is empty.
    fn read_now(&mut self, pipe: &pipe::Receiver) -> io::Result<usize> {
        self.buf.resize(READ_BUFFER, 0);
        let read = nix::unistd::read(pipe.as_fd(), &mut self.buf);
        self.buf.truncate(*read.as_ref().unwrap_or(&0));
        Ok(read?)
    }

    /// Take what `pipe` holds now, without waiting (at most [`DRAIN_READS`] reads): the
    /// end of a stream that something may still hold open.
    pub(super) fn drain_now(&mut self, pipe: &pipe::Receiver, mut take: impl FnMut(&[u8])) {
        for _ in 0..DRAIN_READS {
            match self.read_now(pipe) {
                Ok(n) if n > 0 => take(&self.buf),
                _ => return,
            }
        }
    }
}

/// Splice to `sink` what `pipe` holds beyond `keep` bytes, a few times over while the tool
/// adds more; `WouldBlock` when it holds no more than that.
fn drop_beyond(pipe: BorrowedFd<'_>, keep: usize, sink: BorrowedFd<'_>) -> io::Result<u64> {
    let mut dropped = 0u64;
    for _ in 0..SPLICES_A_WAKE {
        let held = sys::queued(pipe)?;
        if held <= keep {
            break;
        }
        match splice(
            pipe,
            None,
            sink,
            None,
            held - keep,
            SpliceFFlags::SPLICE_F_NONBLOCK,
        ) {
            Ok(0) | Err(Errno::EAGAIN) => break,
            Ok(n) => dropped += n as u64,
            // What was dropped is told first; the error comes back on the next call.
            Err(_) if dropped > 0 => break,
            Err(err) => return Err(err.into()),
        }
    }
    if dropped == 0 {
        Err(io::ErrorKind::WouldBlock.into())
    } else {
        Ok(dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::Capper;
    use std::io::Write;

    /// `total` bytes written `write` at a time into a 1 MiB pipe, taken under a 1 MiB cap,
    /// checked against the stream; how many bytes were dropped unread.
    async fn flood(total: usize, write: usize) -> u64 {
        let stream: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        let (read, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).expect("pipe");
        sys::set_pipe_size(&read, 1 << 20);
        let mut receiver = pipe::Receiver::from_owned_fd(read).expect("tokio pipe");
        let writer = {
            let stream = stream.clone();
            std::thread::spawn(move || {
                let mut file = std::fs::File::from(write_end);
                for chunk in stream.chunks(write) {
                    file.write_all(chunk).expect("write");
                }
            })
        };
        let mut cap = Capper::new(1 << 20);
        let mut intake = Intake::new();
        let (mut live, mut unread) = (Vec::new(), 0);
        let mut pipe = Some(&mut receiver);
        loop {
            match intake
                .take(&mut pipe, cap.keeps_only_tail())
                .await
                .expect("take")
            {
                Took::Read(0) => break,
                Took::Read(_) => live.extend_from_slice(cap.push(&intake.buf)),
                Took::Dropped(n) => {
                    unread += n;
                    cap.skip(n)
                }
            }
        }
        writer.join().expect("the writer");
        assert_eq!(cap.total(), total as u64);
        assert_eq!(live, stream[..1 << 19]);
        let end = cap.finish();
        assert_eq!(end.tail, stream[total - (1 << 19)..]);
        assert_eq!(end.dropped, (total - (1 << 20)) as u64);
        unread
    }

    #[tokio::test]
    async fn past_the_head_a_flood_is_dropped_unread_but_its_tail() {
        assert!(
            sys::pipe_wakes_every_write(),
            "this kernel does not wake a pipe's reader at every write"
        );
        let unread = flood(8 << 20, 8 << 10).await;
        // At most the head, one read across its end and the tail were read.
        assert!(
            unread >= ((8 << 20) - (1 << 20) - READ_BUFFER) as u64,
            "only {unread} bytes were dropped unread"
        );
    }

    #[tokio::test]
    async fn a_tool_stuck_mid_write_on_a_full_pipe_is_read() {
        // A 2 MiB write does not fit beside the tail left in the pipe, and its writer is
        // not woken ever again unless the stream is read.
        tokio::time::timeout(Duration::from_secs(60), flood(8 << 20, 2 << 20))
            .await
            .expect("the flood never ended: its writer waits on a full pipe");
    }
}
