//! Reading the next frame while this one is processed.
//!
//! Owns: [`ReadAhead`], a [`FrameSource`] that runs another source on a
//! thread of its own and hands its frames over through a short queue. For
//! a y4m file the read is the kernel's copy out of the page cache, about a
//! fifth of a 1280×720 scan and an eighth of a 640×480 one; on its own
//! thread it overlaps the vision work instead of adding to it.
//!
//! What it costs: the frame is copied into the other core's cache, and
//! the vision core then fetches what it reads of it from there, and the
//! two threads wake each other once a frame. Measured on 2 cores (y4m
//! scans, 1,020 frames): wall time 10 % shorter at 640×480 and 16 % at
//! 1280×720, CPU time 9 % and 15 % longer. So it is used only with a
//! second core, and only for files (a camera's frames arrive at their own
//! pace; a scan of a file is a batch job, done when it is done).
//!
//! Invariants: frames arrive in order, each exactly as the inner source
//! filled it; an error arrives after the frames before it and ends the
//! stream; the frames circulate (the caller's frame is swapped with a
//! filled one and the old one goes back to the thread), so a long scan
//! allocates [`DEPTH`] + 1 frames and nothing per frame; dropping the
//! [`ReadAhead`] ends the thread (its next send or receive fails) and
//! joins it. Only sources whose frames are all there is to them are
//! wrapped (no dropped frames to count, no truth to ask for later).

use super::{CaptureError, Frame, FrameSource, SourceInfo};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

/// Frames the thread may fill ahead of the caller.
pub const DEPTH: usize = 2;

/// A source read ahead by its own thread (see the module doc).
pub struct ReadAhead {
    info: SourceInfo,
    full: Receiver<Result<Frame, CaptureError>>,
    empty: Option<SyncSender<Frame>>,
    thread: Option<JoinHandle<()>>,
    ended: bool,
}

impl ReadAhead {
    /// Starts reading `source` ahead.
    pub fn spawn(mut source: Box<dyn FrameSource>) -> Result<ReadAhead, CaptureError> {
        let info = source.info().clone();
        let (full_tx, full) = sync_channel::<Result<Frame, CaptureError>>(DEPTH);
        let (empty, empty_rx) = sync_channel::<Frame>(DEPTH + 1);
        for _ in 0..DEPTH {
            empty.send(Frame::default()).expect("the receiver is here");
        }
        let thread = std::thread::Builder::new()
            .name("frame-reader".into())
            .spawn(move || {
                while let Ok(mut frame) = empty_rx.recv() {
                    let (more, sent) = match source.next_frame(&mut frame) {
                        Ok(true) => (true, full_tx.send(Ok(frame))),
                        Ok(false) => return,
                        Err(e) => (false, full_tx.send(Err(e))),
                    };
                    if !more || sent.is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| CaptureError::read(&info.description, e))?;
        Ok(ReadAhead {
            info,
            full,
            empty: Some(empty),
            thread: Some(thread),
            ended: false,
        })
    }
}

impl FrameSource for ReadAhead {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn next_frame(&mut self, frame: &mut Frame) -> Result<bool, CaptureError> {
        if self.ended {
            return Ok(false);
        }
        match self.full.recv() {
            Ok(Ok(mut filled)) => {
                std::mem::swap(frame, &mut filled);
                if let Some(empty) = &self.empty {
                    // The thread may have ended (end of input): the buffer
                    // is then simply dropped.
                    let _ = empty.send(filled);
                }
                Ok(true)
            }
            Ok(Err(e)) => {
                self.ended = true;
                Err(e)
            }
            Err(_) => {
                // The thread has ended: at the end of the input, or in a
                // panic, which must not pass for the end of the video.
                self.ended = true;
                match self.thread.take().map(JoinHandle::join) {
                    Some(Err(_)) => Err(CaptureError::read(
                        &self.info.description,
                        std::io::Error::other("the frame reader thread failed"),
                    )),
                    _ => Ok(false),
                }
            }
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        // With no more empty frames coming, the thread ends after the few
        // it holds; receiving until it disconnects unblocks a send it is
        // waiting in.
        self.empty = None;
        if let Some(t) = self.thread.take() {
            while self.full.recv().is_ok() {}
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::y4m::{encode_420, Y4mSource};
    use crate::capture::Layout;

    /// A y4m stream of `n` 8x6 frames whose bytes encode their index.
    fn stream(n: usize) -> Vec<u8> {
        let frames: Vec<Frame> = (0..n)
            .map(|i| Frame::from_rgb(8, 6, vec![(i * 9 % 256) as u8; 8 * 6 * 3]))
            .collect();
        encode_420(&frames, 30)
    }

    fn source(bytes: Vec<u8>) -> Box<dyn FrameSource> {
        Box::new(
            Y4mSource::new(Box::new(std::io::Cursor::new(bytes)), "test.y4m".into())
                .expect("header"),
        )
    }

    #[test]
    fn frames_arrive_in_order_exactly_as_the_source_reads_them_then_the_end() {
        let bytes = stream(25);
        let mut direct = source(bytes.clone());
        let mut ahead = ReadAhead::spawn(source(bytes)).expect("thread");
        assert_eq!(ahead.info().width, 8);
        let (mut a, mut b) = (Frame::default(), Frame::default());
        for i in 0..25 {
            assert!(direct.next_frame(&mut a).unwrap());
            assert!(ahead.next_frame(&mut b).unwrap(), "frame {i}");
            assert_eq!((b.index, b.t_s, b.layout()), (a.index, a.t_s, a.layout()));
            assert!(matches!(b.layout(), Layout::Planar { .. }));
            assert_eq!(b.data(), a.data(), "frame {i}");
        }
        for _ in 0..3 {
            assert!(!ahead.next_frame(&mut b).unwrap());
        }
    }

    #[test]
    fn a_truncated_stream_gives_its_frames_then_the_error_then_nothing() {
        let mut bytes = stream(4);
        bytes.truncate(bytes.len() - 10);
        let mut ahead = ReadAhead::spawn(source(bytes)).expect("thread");
        let mut f = Frame::default();
        for _ in 0..3 {
            assert!(ahead.next_frame(&mut f).unwrap());
        }
        let err = ahead.next_frame(&mut f).unwrap_err();
        assert!(
            matches!(err, CaptureError::Truncated { index: 3, .. }),
            "{err}"
        );
        assert!(!ahead.next_frame(&mut f).unwrap());
    }

    #[test]
    fn dropping_it_mid_stream_ends_the_thread() {
        // The thread is blocked sending (the queue is full) when dropped;
        // the drop returns only once the thread has ended.
        let mut ahead = ReadAhead::spawn(source(stream(40))).expect("thread");
        let mut f = Frame::default();
        assert!(ahead.next_frame(&mut f).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(ahead);
            let _ = tx.send(());
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_secs(10)).is_ok(),
            "the drop did not return"
        );
    }
}
