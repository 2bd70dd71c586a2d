//! `rppg-agent bench` (and `cargo bench`): per-stage cost and end-to-end
//! throughput, as medians over repeated runs, plus peak memory.
//!
//! Owns: the benchmark workloads. Frames are generated once and kept in
//! memory (a short loop re-timestamped), so generation cost is reported
//! separately and does not count as pipeline time. Everything runs on one
//! thread: the figures are per core.

use super::AppError;
use crate::capture::synthetic::{SyntheticParams, SyntheticSource};
use crate::capture::y4m::Y4mSource;
use crate::capture::{Frame, FrameSource};
use crate::config::Config;
use crate::events::{Event, Stamper};
use crate::measurement::{Intermediate, Measurement, Update};
use crate::signal::{SignalConfig, Traces, VitalsEstimator};
use crate::vision::detector::FaceDetector;
use crate::vision::roi::{downscale_gray, PixelRect, Scratch};
use crate::vision::FaceRoiExtractor;
use std::io::Write;
use std::time::Instant;

/// Frames kept in memory per resolution (looped).
const LOOP_FRAMES: usize = 60;
/// Frames the steady-state benches give the pipeline to lock on the face
/// (untimed) before they time it.
const LOCK_LIMIT: usize = 120;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Median over `runs` of the mean time per item (microseconds) of `f`, which processes `items` items.
fn time_per_item(runs: usize, items: usize, mut f: impl FnMut()) -> f64 {
    median(
        (0..runs)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e6 / items as f64
            })
            .collect(),
    )
}

/// Like [`time_per_item`], after an untimed `setup` per run whose result
/// `f` takes (a pipeline brought to its steady state first).
fn time_after_setup<S>(
    runs: usize,
    items: usize,
    mut setup: impl FnMut() -> S,
    mut f: impl FnMut(S),
) -> f64 {
    median(
        (0..runs)
            .map(|_| {
                let state = setup();
                let t = Instant::now();
                f(state);
                t.elapsed().as_secs_f64() * 1e6 / items as f64
            })
            .collect(),
    )
}

/// Peak resident memory of this process (VmHWM), in MiB, where the OS tells.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!(
        "{cpu}, {cores} cores visible, one used; {} {}",
        std::env::consts::OS,
        std::env::consts::ARCH
    )
}

/// One resolution's figures (microseconds unless noted).
struct Row {
    label: String,
    generate_us: f64,
    decode_us: f64,
    detect_search_us: f64,
    detect_track_us: f64,
    vision_us: f64,
    end_to_end_fps: f64,
    with_decode_fps: f64,
}

fn bench_resolution(width: u32, height: u32, frames: usize, runs: usize) -> Result<Row, AppError> {
    let params = SyntheticParams {
        width,
        height,
        seconds: LOOP_FRAMES as f64 / 30.0,
        ..Default::default()
    };
    let mut source = SyntheticSource::new(params)?;
    let mut frame_loop = Vec::with_capacity(LOOP_FRAMES);
    let t = Instant::now();
    let mut f = Frame::default();
    while source.next_frame(&mut f)? {
        frame_loop.push(f.clone());
    }
    let generate_us = t.elapsed().as_secs_f64() * 1e6 / frame_loop.len() as f64;

    let y4m = crate::capture::y4m::encode_420(&frame_loop, 30);
    let decode_us = time_per_item(runs, LOOP_FRAMES, || {
        let mut src = Y4mSource::new(Box::new(std::io::Cursor::new(y4m.clone())), "bench".into())
            .expect("valid y4m");
        let mut f = Frame::default();
        while src.next_frame(&mut f).expect("valid frame") {}
    });

    let config = Config::default_config();
    let vcfg = config.vision();
    let mut detector = FaceDetector::builtin()?;
    let mut gray = Vec::new();
    let mut scratch = Scratch::default();
    let whole = PixelRect {
        x0: 0,
        y0: 0,
        x1: width,
        y1: height,
    };
    // The old single search: the whole frame at 160 px wide (faces of 80 px
    // and more at 640x480), for comparison with the scheduled search below.
    let out_w = 160.min(width);
    let out_h = height * out_w / width;
    let detect_search_us = time_per_item(runs, 5, || {
        for _ in 0..5 {
            downscale_gray(
                &frame_loop[0],
                &whole,
                out_w,
                out_h,
                &mut gray,
                &mut scratch,
            );
            std::hint::black_box(detector.detect(&gray, out_w, out_h));
        }
    });
    let face = detector
        .detect(&gray, out_w, out_h)
        .first()
        .map(|(b, _)| *b)
        .ok_or_else(|| AppError::Usage("benchmark frame has no face".into()))?;
    let scale = width as f64 / out_w as f64;
    let crop = PixelRect::clipped(
        &crate::vision::FaceBox {
            x: (face.x - 0.5 * face.w) * scale,
            y: (face.y - 0.5 * face.h) * scale,
            w: 2.0 * face.w * scale,
            h: 2.0 * face.h * scale,
        },
        width,
        height,
    );
    let crop_w =
        (crop.width() as f64 * vcfg.track_face_px as f64 / (face.w * scale)).round() as u32;
    let crop_h = crop.height() * crop_w / crop.width().max(1);
    let detect_track_us = time_per_item(runs, 5, || {
        for _ in 0..5 {
            downscale_gray(
                &frame_loop[0],
                &crop,
                crop_w,
                crop_h,
                &mut gray,
                &mut scratch,
            );
            std::hint::black_box(detector.detect(&gray, crop_w, crop_h));
        }
    });

    // The frame `i` of the loop, stamped at 30 fps.
    let frame_at = |f: &mut Frame, i: usize| {
        f.data_mut()
            .copy_from_slice(frame_loop[i % LOOP_FRAMES].data());
        f.t_s = i as f64 / 30.0;
    };
    // Both figures below are the steady state of a scan: the face locked
    // (untimed; acquisition has its own table), then `frames` frames.
    // Vision alone (tracking, scheduled re-detections, ROI) per frame.
    let vision_us = time_after_setup(
        runs,
        frames,
        || {
            let mut vision =
                FaceRoiExtractor::new(FaceDetector::builtin().expect("model"), config.vision());
            let mut f = frame_loop[0].clone();
            let mut i = 0;
            while i < LOCK_LIMIT {
                frame_at(&mut f, i);
                i += 1;
                if vision.process(&f).face.is_some() {
                    // As in a scan: once measuring, the face is held (no search).
                    vision.hold(true);
                    break;
                }
            }
            (vision, f, i)
        },
        |(mut vision, mut f, i0)| {
            for i in i0..i0 + frames {
                frame_at(&mut f, i);
                std::hint::black_box(vision.process(&f));
            }
        },
    );

    // Everything after capture: vision, measurement (intermediates every
    // second, final vitals), events stamped and serialised.
    let mcfg = crate::measurement::MeasurementConfig {
        duration_s: frames as f64 / 30.0 + 10.0,
        min_duration_s: 2.0,
        ..config.measurement()
    };
    let per_frame_us = time_after_setup(
        runs,
        frames,
        || {
            let mut vision =
                FaceRoiExtractor::new(FaceDetector::builtin().expect("model"), config.vision());
            let mut updates = Vec::new();
            let mut m = Measurement::new(mcfg.clone(), config.signal(), &mut updates)
                .expect("valid config");
            let mut f = frame_loop[0].clone();
            let mut i = 0;
            while i < LOCK_LIMIT && !m.is_measuring() {
                frame_at(&mut f, i);
                i += 1;
                let obs = vision.process(&f);
                m.push(&obs, &mut updates);
                vision.hold(m.is_measuring());
            }
            updates.clear();
            (vision, m, updates, f, i)
        },
        |(mut vision, mut m, mut updates, mut f, i0)| {
            let mut stamper = Stamper::new("bench", "ses_bench");
            for i in i0..i0 + frames {
                frame_at(&mut f, i);
                let obs = vision.process(&f);
                m.push(&obs, &mut updates);
                vision.hold(m.is_measuring());
                for u in updates.drain(..) {
                    std::hint::black_box(stamper.stamp(
                        &Event::from_update(&u, "msr", 30.0, 0),
                        i as u64,
                        i as u128,
                    ));
                }
            }
            m.end_of_input(&mut updates);
        },
    );
    Ok(Row {
        label: format!("{width}x{height}"),
        generate_us,
        decode_us,
        detect_search_us,
        detect_track_us,
        vision_us,
        end_to_end_fps: 1e6 / per_frame_us,
        with_decode_fps: 1e6 / (per_frame_us + decode_us),
    })
}

/// Acquisition cost per frame at one resolution: searching a scene with
/// no face (background clutter, every scale of the whole frame, spread over
/// the search cycle) and following a locked face (tracking every frame,
/// re-detection every `detect_interval_s`, or up to `detect_interval_max_s`
/// while the face is still), both with the ROI statistics.
struct Acquisition {
    label: String,
    searching_us: f64,
    worst_searching_us: f64,
    locked_us: f64,
    lock_frames: Option<usize>,
}

fn bench_acquisition(width: u32, height: u32, runs: usize) -> Result<Acquisition, AppError> {
    let config = Config::default_config();
    let frames_of = |extra: &str, n: usize| -> Result<Vec<Frame>, AppError> {
        let spec = format!(
            "width={width},height={height},seconds={},{extra}",
            n as f64 / 30.0
        );
        let mut src = SyntheticSource::new(SyntheticParams::parse("synthetic", &spec)?)?;
        let mut out = Vec::with_capacity(n);
        let mut f = Frame::default();
        while src.next_frame(&mut f)? {
            out.push(f.clone());
        }
        Ok(out)
    };
    // Two whole search cycles of an empty, cluttered room.
    let cycle = config.vision.search_cycle_frames as usize;
    let empty = frames_of("face=0,clutter=1", 8)?;
    let mut per_frame = Vec::new();
    let searching_us = time_per_item(runs, 2 * cycle, || {
        let mut vision =
            FaceRoiExtractor::new(FaceDetector::builtin().expect("model"), config.vision());
        let mut f = empty[0].clone();
        for i in 0..2 * cycle {
            f.data_mut().copy_from_slice(empty[i % empty.len()].data());
            f.t_s = i as f64 / 30.0;
            let t = Instant::now();
            std::hint::black_box(vision.process(&f));
            per_frame.push(t.elapsed().as_secs_f64() * 1e6);
        }
    });
    let worst_searching_us = median_of_worst(&per_frame, 2 * cycle);
    // A face 12 % of the frame wide (a kiosk user at about 1 m), locked and held.
    let faces = frames_of("face_width=0.12", 60)?;
    let mut lock_frames = None;
    let locked_us = time_per_item(runs, 300, || {
        let mut vision =
            FaceRoiExtractor::new(FaceDetector::builtin().expect("model"), config.vision());
        let mut f = faces[0].clone();
        for i in 0..300 {
            f.data_mut().copy_from_slice(faces[i % faces.len()].data());
            f.t_s = i as f64 / 30.0;
            let obs = vision.process(&f);
            if obs.face.is_some() {
                lock_frames.get_or_insert(i + 1);
            }
            vision.hold(obs.face.is_some());
        }
    });
    Ok(Acquisition {
        label: format!("{width}x{height}"),
        searching_us,
        worst_searching_us,
        locked_us,
        lock_frames,
    })
}

/// Per-frame cost of turning what a webcam delivers into a vision frame.
struct CameraDecode {
    image_us: f64,
    mjpeg_us: f64,
    yuyv_us: f64,
}

fn bench_camera_decode(width: u32, height: u32, runs: usize) -> Result<CameraDecode, AppError> {
    use crate::capture::camera::{decode, PixelFormat};
    let mut source = SyntheticSource::new(SyntheticParams {
        width,
        height,
        seconds: 1.0,
        ..Default::default()
    })?;
    let mut frame = Frame::default();
    source.next_frame(&mut frame)?;
    let rgb = frame.to_rgb();
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85)
        .encode(&rgb, width, height, image::ExtendedColorType::Rgb8)
        .map_err(|e| AppError::Usage(format!("benchmark JPEG: {e}")))?;
    // BT.601 limited range, as V4L2 YUYV cameras deliver.
    let mut yuyv = Vec::with_capacity((width * height * 2) as usize);
    for pair in rgb.chunks_exact(6) {
        let ycc = |p: &[u8]| {
            let (r, g, b) = (p[0] as f64, p[1] as f64, p[2] as f64);
            let y = 16.0 + (65.481 * r + 128.553 * g + 24.966 * b) / 255.0;
            let cb = 128.0 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255.0;
            let cr = 128.0 + (112.0 * r - 93.786 * g - 18.214 * b) / 255.0;
            (y, cb, cr)
        };
        let (y0, cb0, cr0) = ycc(&pair[..3]);
        let (y1, cb1, cr1) = ycc(&pair[3..]);
        for v in [y0, 0.5 * (cb0 + cb1), y1, 0.5 * (cr0 + cr1)] {
            yuyv.push(v.round().clamp(0.0, 255.0) as u8);
        }
    }
    const N: usize = 20;
    let mut out = Frame::default();
    let image_us = time_per_item(runs, N, || {
        for _ in 0..N {
            // The previous path: an image object, then a copy into the frame.
            let img = image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg)
                .expect("benchmark JPEG decodes")
                .to_rgb8();
            out.reshape_rgb(width, height);
            out.rgb_mut().copy_from_slice(img.as_raw());
        }
    });
    let mjpeg_us = time_per_item(runs, N, || {
        for _ in 0..N {
            decode(PixelFormat::Mjpeg, &jpeg, 0, 0, &mut out).expect("benchmark JPEG decodes");
        }
    });
    let yuyv_us = time_per_item(runs, N, || {
        for _ in 0..N {
            decode(PixelFormat::Yuyv, &yuyv, width, height, &mut out).expect("valid YUYV");
        }
    });
    Ok(CameraDecode {
        image_us,
        mjpeg_us,
        yuyv_us,
    })
}

/// The median over runs of the most expensive frame of each run of `n` frames.
fn median_of_worst(per_frame: &[f64], n: usize) -> f64 {
    median(
        per_frame
            .chunks(n.max(1))
            .map(|run| run.iter().cloned().fold(0.0, f64::max))
            .collect(),
    )
}

/// Runs all benchmarks and prints a Markdown report to `out`.
pub fn run(frames: usize, runs: usize, out: &mut impl Write) -> Result<(), AppError> {
    writeln!(out, "# rppg-agent bench\n")?;
    writeln!(out, "Machine: {}", machine())?;
    writeln!(out, "Medians of {runs} runs, {frames} frames per run.\n")?;
    writeln!(
        out,
        "| frames | synthetic generation | y4m decode | detect (whole frame at 160 px) | detect (track crop) | vision per frame, locked | vision → events, measuring | y4m decode → events |"
    )?;
    writeln!(out, "|---|---|---|---|---|---|---|---|")?;
    for (w, h) in [(320, 240), (640, 480)] {
        let r = bench_resolution(w, h, frames, runs)?;
        writeln!(
            out,
            "| {} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | **{:.0} frames/s** | **{:.0} frames/s** |",
            r.label,
            r.generate_us,
            r.decode_us,
            r.detect_search_us,
            r.detect_track_us,
            r.vision_us,
            r.end_to_end_fps,
            r.with_decode_fps
        )?;
        out.flush()?;
    }

    writeln!(
        out,
        "\n| acquisition | searching, per frame (mean over a cycle) | searching, worst frame | locked, per frame (tracking, re-detection, ROI) | frames to lock (face 12 % wide) |"
    )?;
    writeln!(out, "|---|---|---|---|---|")?;
    for (w, h) in [(320, 240), (640, 480), (1280, 720), (1920, 1080)] {
        let a = bench_acquisition(w, h, runs)?;
        writeln!(
            out,
            "| {} | {:.0} µs | {:.0} µs | {:.0} µs | {} |",
            a.label,
            a.searching_us,
            a.worst_searching_us,
            a.locked_us,
            a.lock_frames.map_or("not locked".into(), |n| n.to_string())
        )?;
        out.flush()?;
    }

    writeln!(
        out,
        "\n| camera frame → vision frame | MJPEG (quality 85) through `image` (before) | MJPEG into the frame | YUYV into the frame (kept as YUYV) |"
    )?;
    writeln!(out, "|---|---|---|---|")?;
    for (w, h) in [(640, 480), (1280, 720)] {
        let c = bench_camera_decode(w, h, runs)?;
        writeln!(
            out,
            "| {w}x{h} | {:.0} µs | {:.0} µs | {:.0} µs |",
            c.image_us, c.mjpeg_us, c.yuyv_us
        )?;
        out.flush()?;
    }

    // The signal stage alone on 30 s of traces.
    let cfg = SignalConfig::default();
    let n = 900;
    let rgb = ndarray::Array2::from_shape_fn((n, 3), |(i, c)| {
        let t = i as f64 / 30.0;
        [170.0, 120.0, 100.0][c] * (1.0 - 0.003 * (2.0 * std::f64::consts::PI * 1.2 * t).sin())
            + ((i * 7 + c * 13) % 11) as f64 * 0.01
    });
    // Eleven skin regions, as vision measures them, each with its own noise.
    let regions = (0..crate::vision::roi::REGION_COUNT)
        .map(|k| {
            ndarray::Array2::from_shape_fn((n, 3), |(i, c)| {
                rgb[[i, c]] + ((i * (17 + k) + c * 5) % 13) as f64 * 0.03
            })
        })
        .collect();
    let traces = Traces {
        fs_hz: 30.0,
        rgb,
        vertical_px: Some(vec![0.0; n]),
        regions,
    };
    let mut est = VitalsEstimator::new(SignalConfig {
        max_window_s: 31.0,
        ..cfg
    })?;
    let live_us = time_per_item(runs, 20, || {
        for _ in 0..20 {
            std::hint::black_box(est.heart_rate(&traces));
        }
    });
    let final_us = time_per_item(runs, 5, || {
        for _ in 0..5 {
            std::hint::black_box(est.vitals(&traces));
        }
    });
    let mut stamper = Stamper::new("bench", "ses_bench");
    let ev = Event::from_update(
        &Update::Intermediate(Intermediate {
            index: 3,
            elapsed_s: 9.0,
            hr_bpm: Some(72.0),
            snr_db: 4.0,
            confidence: 0.9,
            rr_bpm: None,
            rr_confidence: 0.0,
        }),
        "msr",
        30.0,
        0,
    );
    let stamp_us = time_per_item(runs, 10_000, || {
        for i in 0..10_000u64 {
            std::hint::black_box(stamper.stamp(&ev, i, i as u128));
        }
    });
    writeln!(out, "\n| signal / events | median |")?;
    writeln!(out, "|---|---|")?;
    writeln!(
        out,
        "| live HR estimate (10 s window, each second) | {live_us:.0} µs |"
    )?;
    writeln!(
        out,
        "| final vitals (30 s: HR, SNR, beats, HRV, RR fusion) | {final_us:.0} µs |"
    )?;
    writeln!(out, "| event stamp + serialise | {stamp_us:.2} µs |")?;
    if let Some(mib) = peak_rss_mib() {
        writeln!(
            out,
            "\nPeak RSS of this process: {mib:.1} MiB (includes {LOOP_FRAMES} pre-generated frames per resolution held in memory)."
        )?;
    }
    Ok(())
}
