//! The per-frame path from a y4m stream through vision allocates nothing
//! once it is warm, except when the face detector runs (rustface builds
//! its pyramid and candidate lists anew on each call).
//!
//! How: this test binary's allocator counts the allocations of a thread
//! while that thread has armed it; other tests running alongside are not
//! counted.

use rppg_agent::capture::synthetic::{SyntheticParams, SyntheticSource};
use rppg_agent::capture::y4m::{Y4mSource, Y4mWriter};
use rppg_agent::capture::{Frame, FrameSource};
use rppg_agent::vision::detector::FaceDetector;
use rppg_agent::vision::{FaceRoiExtractor, VisionConfig};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            COUNT.with(|c| c.set(c.get() + 1));
        }
    });
}

// SAFETY: every call is passed to the system allocator unchanged; the
// counting touches only const-initialised thread-locals (no allocation).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations this thread makes in `f`.
fn allocations<T>(f: impl FnOnce() -> T) -> (T, u64) {
    COUNT.with(|c| c.set(0));
    ARMED.with(|a| a.set(true));
    let out = f();
    ARMED.with(|a| a.set(false));
    (out, COUNT.with(|c| c.get()))
}

#[test]
fn a_warm_frame_is_read_and_measured_without_allocating_unless_the_detector_runs() {
    // 10 s of the synthetic face as a 4:2:0 y4m stream in memory.
    let params = SyntheticParams {
        seconds: 10.0,
        width: 320,
        height: 240,
        ..SyntheticParams::default()
    };
    let mut synth = SyntheticSource::new(params).expect("synthetic");
    let mut writer = Y4mWriter::new(Vec::new(), 320, 240, 30, 1).expect("header");
    let mut frame = Frame::default();
    while synth.next_frame(&mut frame).expect("frame") {
        writer.write(&frame).expect("write");
    }
    let bytes = writer.finish().expect("finish");
    let mut y4m =
        Y4mSource::new(Box::new(std::io::Cursor::new(bytes)), "memory".into()).expect("y4m header");
    let detector = FaceDetector::builtin().expect("model");
    let mut vision = FaceRoiExtractor::new(detector, VisionConfig::default());
    // Warm up: the face is found, confirmed and surveyed; then held, as
    // a running measurement holds it.
    for _ in 0..90 {
        assert!(y4m.next_frame(&mut frame).expect("frame"));
        vision.process(&frame);
    }
    vision.hold(true);
    let (mut quiet, mut detecting) = (0, 0);
    loop {
        let ((more, obs), n) = allocations(|| {
            let more = y4m.next_frame(&mut frame).expect("frame");
            (more, more.then(|| vision.process(&frame)))
        });
        if !more {
            break;
        }
        let obs = obs.expect("processed");
        assert!(obs.face.is_some() && obs.skin_pixels > 0, "{obs:?}");
        if obs.detected {
            detecting += 1;
        } else {
            assert_eq!(n, 0, "frame at {:.2} s allocated {n} times", obs.t_s);
            quiet += 1;
        }
    }
    // Not vacuous: most frames are tracked and measured without the
    // detector, and the re-detections did run.
    assert!(
        quiet > 150 && detecting >= 2,
        "{quiet} quiet, {detecting} detecting"
    );
}
