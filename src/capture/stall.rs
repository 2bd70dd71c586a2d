//! Reading a pipe, FIFO or terminal that may stop delivering.
//!
//! Owns: [`StallGuard`], a reader whose reads give up when no byte has come
//! for a stall timeout, so that a stalled `ffmpeg | rppg-agent scan --input -`
//! or a `run.input` FIFO ends a scan like a stalled camera instead of
//! blocking it (and the daemon's cancel and shutdown) forever.
//!
//! How: a thread opens the input (opening a FIFO blocks until a writer
//! comes) and reads it in chunks into a small bounded queue; the consumer
//! waits on the queue with a timeout. Buffers go back to the thread for
//! reuse, so a long stream allocates only the queue's few chunks.
//!
//! Invariants: at most [`QUEUE`] chunks of [`CHUNK`] bytes are buffered; a
//! timeout is an `io::Error` of kind `TimedOut` carrying [`Stalled`] (see
//! [`stalled_for`]); the end of input and read errors arrive in order after
//! the data before them. A reader thread stuck in a read that never
//! returns is left behind when the guard is dropped (it owns only its
//! file descriptor and the queue's chunks, and ends with the process).

use std::io::{self, Read};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::time::Duration;

/// Bytes per read of the input thread.
const CHUNK: usize = 256 * 1024;
/// Chunks that may wait in the queue.
const QUEUE: usize = 8;

/// The payload of the `TimedOut` error of a stalled input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stalled {
    pub after: Duration,
}

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "no data for {:.1} s: the input stalled",
            self.after.as_secs_f64()
        )
    }
}

impl std::error::Error for Stalled {}

/// The stall behind an I/O error, when it is one.
pub fn stalled_for(e: &io::Error) -> Option<Stalled> {
    e.get_ref()?.downcast_ref::<Stalled>().copied()
}

enum Chunk {
    Data(Vec<u8>),
    End,
    Failed(io::Error),
}

/// A reader over an input opened and read by its own thread.
pub struct StallGuard {
    rx: Receiver<Chunk>,
    recycle: SyncSender<Vec<u8>>,
    current: Vec<u8>,
    pos: usize,
    first_wait: Duration,
    stall: Duration,
    started: bool,
    ended: bool,
}

impl StallGuard {
    /// Opens and reads with `open` on a new thread. The first byte may take
    /// up to `first_wait` (a FIFO waiting for its writer, a slow encoder);
    /// after it, a gap longer than `stall` is a stall.
    pub fn spawn<R, F>(open: F, first_wait: Duration, stall: Duration) -> io::Result<StallGuard>
    where
        R: Read,
        F: FnOnce() -> io::Result<R> + Send + 'static,
    {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let (recycle, reuse) = mpsc::sync_channel::<Vec<u8>>(QUEUE + 2);
        std::thread::Builder::new()
            .name("input".into())
            .spawn(move || {
                let mut reader = match open() {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Chunk::Failed(e));
                        return;
                    }
                };
                loop {
                    let mut buf = reuse.try_recv().unwrap_or_default();
                    buf.resize(CHUNK, 0);
                    let chunk = match reader.read(&mut buf) {
                        Ok(0) => Chunk::End,
                        Ok(n) => {
                            buf.truncate(n);
                            Chunk::Data(buf)
                        }
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => Chunk::Failed(e),
                    };
                    let last = !matches!(chunk, Chunk::Data(_));
                    if tx.send(chunk).is_err() || last {
                        return;
                    }
                }
            })?;
        Ok(StallGuard {
            rx,
            recycle,
            current: Vec::new(),
            pos: 0,
            first_wait,
            stall,
            started: false,
            ended: false,
        })
    }
}

impl Read for StallGuard {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        while self.pos >= self.current.len() {
            if self.ended {
                return Ok(0);
            }
            let wait = if self.started {
                self.stall
            } else {
                self.first_wait
            };
            match self.rx.recv_timeout(wait) {
                Ok(Chunk::Data(data)) => {
                    self.started = true;
                    let spent = std::mem::replace(&mut self.current, data);
                    let _ = self.recycle.try_send(spent);
                    self.pos = 0;
                }
                Ok(Chunk::End) | Err(RecvTimeoutError::Disconnected) => {
                    self.ended = true;
                }
                Ok(Chunk::Failed(e)) => {
                    self.ended = true;
                    return Err(e);
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        Stalled { after: wait },
                    ));
                }
            }
        }
        let n = out.len().min(self.current.len() - self.pos);
        out[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A reader that yields `parts`, sleeping `gap` before each.
    struct Slow {
        parts: Vec<Vec<u8>>,
        gap: Duration,
    }

    impl Read for Slow {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            std::thread::sleep(self.gap);
            if self.parts.is_empty() {
                return Ok(0);
            }
            let p = self.parts.remove(0);
            out[..p.len()].copy_from_slice(&p);
            Ok(p.len())
        }
    }

    #[test]
    fn data_arriving_in_time_is_read_in_order_to_the_end() {
        let parts = vec![b"abc".to_vec(), b"defg".to_vec()];
        let gap = Duration::from_millis(20);
        let mut g = StallGuard::spawn(
            move || Ok(Slow { parts, gap }),
            Duration::from_secs(2),
            Duration::from_secs(2),
        )
        .unwrap();
        let mut all = Vec::new();
        g.read_to_end(&mut all).unwrap();
        assert_eq!(all, b"abcdefg");
    }

    #[test]
    fn a_gap_longer_than_the_stall_timeout_is_a_stall_error() {
        let (r, mut w) = std::io::pipe().unwrap();
        w.write_all(b"first").unwrap();
        let stall = Duration::from_millis(200);
        let mut g = StallGuard::spawn(move || Ok(r), Duration::from_secs(5), stall).unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(g.read(&mut buf).unwrap(), 5);
        let started = std::time::Instant::now();
        let e = g.read(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert_eq!(stalled_for(&e), Some(Stalled { after: stall }));
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(w);
    }

    #[test]
    fn an_input_that_cannot_be_opened_reports_why() {
        let mut g = StallGuard::spawn(
            || -> io::Result<std::fs::File> { std::fs::File::open("/nonexistent/input.y4m") },
            Duration::from_secs(2),
            Duration::from_secs(2),
        )
        .unwrap();
        let e = g.read(&mut [0u8; 4]).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
