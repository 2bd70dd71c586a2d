//! Webcam capture: `--input camera[:INDEX][,width=640,height=480,fps=30]`.
//!
//! Owns: the camera spec, decoding what webcams deliver (MJPEG, YUYV 4:2:2,
//! RGB24) into [`Frame`]s, the mapping of device failures to the events a
//! kiosk backend expects, the drop-oldest hand-off between the capture
//! thread and vision, and (behind the `camera` cargo feature) the V4L2
//! device itself through nokhwa.
//!
//! Why a feature: nokhwa's V4L2 bindings run bindgen, which needs libclang
//! at build time. The default build must need only the Rust toolchain, so a
//! build without the feature answers a camera request with a message that
//! says how to get one. Everything up to the device boundary (decoding,
//! error mapping, the hand-off) is plain Rust, compiled and tested always.
//!
//! Threading: the device is read on a dedicated thread that never waits for
//! vision. Frames cross to the scan through a [`Handoff`] of capacity 2:
//! when vision is behind, the oldest waiting frame is dropped and counted
//! (`frames_dropped`), so latency stays bounded and the newest frame wins.
//! A camera that delivers nothing for `stall_timeout` ends the scan with
//! [`CaptureError::CameraStalled`].
//!
//! Frames stay in memory: nothing here writes a frame anywhere.

use super::{parse_number, parse_pairs, CaptureError, Frame, Layout};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// A parsed `camera[:INDEX][,width=..,height=..,fps=..]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CameraParams {
    /// `/dev/video{index}`.
    pub index: u32,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
}

impl Default for CameraParams {
    fn default() -> Self {
        CameraParams {
            index: 0,
            width: 640,
            height: 480,
            fps: 30,
        }
    }
}

impl CameraParams {
    /// Parses what follows `camera` (`""`, `:1`, `:0,width=320,height=240`).
    pub fn parse(spec: &str, rest: &str) -> Result<Self, CaptureError> {
        let mut p = CameraParams::default();
        let rest = rest.strip_prefix(':').unwrap_or(rest);
        let (index, options) = match rest.split_once(',') {
            Some((i, o)) => (i, o),
            None if rest.contains('=') => ("", rest),
            None => (rest, ""),
        };
        if !index.is_empty() {
            p.index = parse_number(spec, "index", index, 0.0..=63.0)? as u32;
        }
        for (k, v) in parse_pairs(spec, options)? {
            match k {
                "width" => p.width = parse_number(spec, k, v, 16.0..=4096.0)? as u32,
                "height" => p.height = parse_number(spec, k, v, 16.0..=4096.0)? as u32,
                "fps" => p.fps = parse_number(spec, k, v, 1.0..=240.0)? as u32,
                other => {
                    return Err(CaptureError::Spec {
                        spec: spec.to_string(),
                        problem: format!(
                            "unknown option {other:?}; camera takes width, height and fps \
                             (e.g. camera:0,width=640,height=480,fps=30)"
                        ),
                    })
                }
            }
        }
        Ok(p)
    }

    pub fn device_path(&self) -> String {
        format!("/dev/video{}", self.index)
    }
}

/// Pixel formats webcams deliver and this agent decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// Motion JPEG: one JPEG per frame (decoded with `image`, no C library).
    Mjpeg,
    /// YUYV 4:2:2: `Y0 U Y1 V` per two pixels.
    Yuyv,
    /// Packed RGB, 3 bytes per pixel.
    Rgb24,
}

impl PixelFormat {
    pub fn name(self) -> &'static str {
        match self {
            PixelFormat::Mjpeg => "MJPEG",
            PixelFormat::Yuyv => "YUYV",
            PixelFormat::Rgb24 => "RGB24",
        }
    }

    /// Per-frame cost rank: the frame as the camera sends it is used
    /// directly (YUYV; RGB is three times the bytes) rather than decoded
    /// (MJPEG: 1.9 ms a 640x480 frame here against 18 us for YUYV,
    /// `rppg-agent bench`).
    fn cost_rank(self) -> u8 {
        match self {
            PixelFormat::Yuyv => 0,
            PixelFormat::Rgb24 => 1,
            PixelFormat::Mjpeg => 2,
        }
    }
}

/// One mode a camera offers: pixel format, size, frame rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CameraMode {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
}

/// The mode to ask for among those a camera `offered` (in formats this
/// agent decodes), for the `wanted` size and rate:
/// 1. the size nearest the wanted one (by pixel count; the wanted size
///    itself when offered): the face search and the skin regions are
///    sized for it;
/// 2. then the full wanted frame rate (a slower mode loses pulse samples);
/// 3. then the format cheapest to use: YUYV, then RGB, then MJPEG (a
///    decode per frame; many cameras offer YUYV only at small sizes or
///    low rates on USB 2, where MJPEG then wins by rule 2);
/// 4. then the rate nearest the wanted one.
///
/// `None` when nothing was offered.
pub fn choose_mode(offered: &[CameraMode], wanted: &CameraParams) -> Option<CameraMode> {
    let want_px = (wanted.width as f64 * wanted.height as f64).max(1.0);
    let key = |m: &CameraMode| {
        let size_miss = if (m.width, m.height) == (wanted.width, wanted.height) {
            0.0
        } else {
            // Never 0 for another size, so the exact size always wins.
            ((m.width as f64 * m.height as f64).max(1.0) / want_px)
                .ln()
                .abs()
                + 1e-9
        };
        (
            size_miss,
            wanted.fps.saturating_sub(m.fps),
            m.format.cost_rank(),
            m.fps.abs_diff(wanted.fps),
        )
    };
    offered.iter().copied().min_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        ka.0.total_cmp(&kb.0)
            .then(ka.1.cmp(&kb.1))
            .then(ka.2.cmp(&kb.2))
            .then(ka.3.cmp(&kb.3))
    })
}

/// Largest MJPEG frame side accepted (a damaged header must not make the
/// agent allocate gigabytes).
const MJPEG_MAX_SIDE: usize = 8192;

/// Decodes one JPEG straight into `frame`'s RGB buffer: no image object, no
/// copy, and no allocation once the frame has its size (the decoder's own
/// working rows aside). Lenient like webcams' decoders: a frame cut inside
/// its scan data decodes with the rest grey.
fn decode_mjpeg(bytes: &[u8], frame: &mut Frame) -> Result<(), String> {
    use zune_core::bytestream::ZCursor;
    use zune_core::colorspace::ColorSpace;
    use zune_core::options::DecoderOptions;
    let options = DecoderOptions::default()
        .set_strict_mode(false)
        .set_max_width(MJPEG_MAX_SIDE)
        .set_max_height(MJPEG_MAX_SIDE)
        .jpeg_set_out_colorspace(ColorSpace::RGB);
    let mut decoder = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
    let bad = |e: zune_jpeg::errors::DecodeErrors| format!("MJPEG frame does not decode: {e}");
    decoder.decode_headers().map_err(bad)?;
    let (w, h) = decoder
        .dimensions()
        .ok_or("MJPEG frame does not decode: no frame header")?;
    frame.reshape_rgb(w as u32, h as u32);
    let out = frame.rgb_mut();
    if decoder.output_buffer_size() != Some(out.len()) {
        return Err(format!(
            "MJPEG frame does not decode to RGB ({w}x{h}, {:?} bytes)",
            decoder.output_buffer_size()
        ));
    }
    decoder.decode_into(out).map_err(bad)
}

/// Decodes one camera buffer into `frame` (its size comes from the data for
/// MJPEG, from `width x height` otherwise).
pub fn decode(
    format: PixelFormat,
    bytes: &[u8],
    width: u32,
    height: u32,
    frame: &mut Frame,
) -> Result<(), String> {
    match format {
        PixelFormat::Mjpeg => decode_mjpeg(bytes, frame),
        PixelFormat::Yuyv => {
            let need = Layout::Yuyv.bytes(width, height);
            if !width.is_multiple_of(2) {
                return Err(format!("YUYV needs an even width, got {width}"));
            }
            if bytes.len() < need {
                return Err(format!(
                    "YUYV frame is short: {} bytes for {width}x{height} (need {need})",
                    bytes.len()
                ));
            }
            // Kept as YUYV: vision reads its luma directly and converts only
            // the skin regions to RGB.
            frame.reshape(width, height, Layout::Yuyv);
            frame.data_mut().copy_from_slice(&bytes[..need]);
            Ok(())
        }
        PixelFormat::Rgb24 => {
            let need = Layout::Rgb.bytes(width, height);
            if bytes.len() < need {
                return Err(format!(
                    "RGB frame is short: {} bytes for {width}x{height} (need {need})",
                    bytes.len()
                ));
            }
            frame.reshape_rgb(width, height);
            frame.rgb_mut().copy_from_slice(&bytes[..need]);
            Ok(())
        }
    }
}

/// Why a camera could not be used, as the kiosk backend should hear it.
#[derive(Debug, Clone, PartialEq)]
pub enum CameraFailure {
    /// The agent's user may not open the device (not in group `video`).
    PermissionDenied {
        device: String,
    },
    /// No such device (unplugged, wrong index).
    NotFound {
        device: String,
    },
    /// Another program holds the device.
    Busy {
        device: String,
    },
    /// The device does not offer a format or size this agent can use.
    UnsupportedFormat {
        device: String,
        detail: String,
    },
    /// No frame arrived for this long while streaming.
    Stalled {
        device: String,
        after_s: f64,
    },
    Other {
        device: String,
        detail: String,
    },
}

impl CameraFailure {
    /// Classifies a failure from the OS error it carries (`(os error N)` in
    /// the message, as nokhwa and std format them) or from its words.
    pub fn classify(device: &str, message: &str) -> CameraFailure {
        let device = device.to_string();
        let errno = message.rsplit_once("os error ").and_then(|(_, tail)| {
            tail.trim_end_matches(|c: char| !c.is_ascii_digit())
                .parse::<i32>()
                .ok()
        });
        let lower = message.to_ascii_lowercase();
        match errno {
            Some(1 | 13) => return CameraFailure::PermissionDenied { device },
            Some(2 | 6 | 19) => return CameraFailure::NotFound { device },
            Some(16) => return CameraFailure::Busy { device },
            _ => {}
        }
        if lower.contains("permission denied") {
            CameraFailure::PermissionDenied { device }
        } else if lower.contains("busy") {
            CameraFailure::Busy { device }
        } else if lower.contains("no such") || lower.contains("not found") {
            CameraFailure::NotFound { device }
        } else if lower.contains("format") || lower.contains("resolution") {
            CameraFailure::UnsupportedFormat {
                device,
                detail: message.to_string(),
            }
        } else {
            CameraFailure::Other {
                device,
                detail: message.to_string(),
            }
        }
    }

    /// The event `details` code: `CAMERA_PERMISSION_DENIED` has an event of
    /// its own; the others are GENERAL_ERROR with these details.
    pub fn details(&self) -> &'static str {
        match self {
            CameraFailure::PermissionDenied { .. } => "CAMERA_PERMISSION_DENIED",
            CameraFailure::Stalled { .. } => "CAMERA_STALLED",
            _ => "CAMERA_START_ERROR",
        }
    }
}

impl std::fmt::Display for CameraFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CameraFailure::PermissionDenied { device } => write!(
                f,
                "permission denied on {device}: add the agent's user to group `video` \
                 (sudo usermod -aG video $USER, then log in again)"
            ),
            CameraFailure::NotFound { device } => write!(
                f,
                "no camera at {device}: check the cable, or list cameras with `rppg-agent cameras`"
            ),
            CameraFailure::Busy { device } => write!(
                f,
                "{device} is busy: another program is using the camera (fuser {device})"
            ),
            CameraFailure::UnsupportedFormat { device, detail } => write!(
                f,
                "{device} offers no usable format ({detail}); `rppg-agent cameras` lists what it offers"
            ),
            CameraFailure::Stalled { device, after_s } => {
                write!(f, "{device} stopped delivering frames ({after_s:.1} s without one)")
            }
            CameraFailure::Other { device, detail } => write!(f, "{device}: {detail}"),
        }
    }
}

/// What [`Handoff::pop`] found.
#[derive(Debug, PartialEq)]
pub enum Popped<T> {
    Item(T),
    /// The producer closed the hand-off (with nothing left).
    Closed,
    TimedOut,
}

/// A bounded hand-off from a producer that must never block (the capture
/// thread) to a consumer (vision): when full, the oldest item is dropped and
/// counted.
#[derive(Debug)]
pub struct Handoff<T> {
    state: Mutex<(VecDeque<T>, bool)>,
    ready: Condvar,
    capacity: usize,
    dropped: AtomicU64,
}

impl<T> Handoff<T> {
    pub fn new(capacity: usize) -> Self {
        Handoff {
            state: Mutex::new((VecDeque::with_capacity(capacity.max(1)), false)),
            ready: Condvar::new(),
            capacity: capacity.max(1),
            dropped: AtomicU64::new(0),
        }
    }

    /// Adds `item`, dropping the oldest waiting one if full. Never blocks on the consumer.
    pub fn push(&self, item: T) {
        let mut st = self.state.lock().expect("handoff lock");
        if st.0.len() >= self.capacity {
            st.0.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        st.0.push_back(item);
        self.ready.notify_one();
    }

    /// Takes the oldest waiting item, waiting up to `timeout`.
    pub fn pop(&self, timeout: Duration) -> Popped<T> {
        let st = self.state.lock().expect("handoff lock");
        let (mut st, _) = self
            .ready
            .wait_timeout_while(st, timeout, |(q, closed)| q.is_empty() && !*closed)
            .expect("handoff lock");
        match st.0.pop_front() {
            Some(item) => Popped::Item(item),
            None if st.1 => Popped::Closed,
            None => Popped::TimedOut,
        }
    }

    /// No more items will come; a waiting consumer wakes.
    pub fn close(&self) {
        self.state.lock().expect("handoff lock").1 = true;
        self.ready.notify_all();
    }

    /// Items dropped because the consumer was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// What `rppg-agent cameras` prints for a build without the feature.
pub const NOT_BUILT: &str = "this rppg-agent was built without camera support. Build it with \
     `cargo build --release --features camera` (needs libclang at build time: \
     apt-get install libclang1-14), or use a device build from cross/. Meanwhile \
     a YUV4MPEG2 pipe works: ffmpeg -f v4l2 -i /dev/video0 -f yuv4mpegpipe - | rppg-agent scan --input -";

#[cfg(feature = "camera")]
pub use device::{list_cameras, CameraSource};

#[cfg(not(feature = "camera"))]
/// Without the `camera` feature there is no device to list.
pub fn list_cameras() -> Result<Vec<String>, CaptureError> {
    Err(CaptureError::CameraUnavailable(NOT_BUILT.into()))
}

#[cfg(feature = "camera")]
mod device {
    //! The V4L2 device through nokhwa (feature `camera`).
    use super::*;
    use crate::capture::{FrameSource, SourceInfo};
    use nokhwa::pixel_format::RgbFormat;
    use nokhwa::utils::{
        ApiBackend, CameraFormat, CameraIndex, FrameFormat, RequestedFormat, RequestedFormatType,
        Resolution,
    };
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    use std::time::Instant;

    /// What the capture thread reports once the device streams (width,
    /// height, frame rate, pixel format), or why it does not.
    type Opened = Result<(u32, u32, u32, &'static str), CameraFailure>;

    /// One captured buffer on its way to vision.
    struct Raw {
        bytes: Vec<u8>,
        format: PixelFormat,
        width: u32,
        height: u32,
        t_s: f64,
    }

    fn pixel_format(f: FrameFormat) -> Option<PixelFormat> {
        match f {
            FrameFormat::MJPEG => Some(PixelFormat::Mjpeg),
            FrameFormat::YUYV => Some(PixelFormat::Yuyv),
            FrameFormat::RAWRGB => Some(PixelFormat::Rgb24),
            _ => None,
        }
    }

    fn frame_format(f: PixelFormat) -> FrameFormat {
        match f {
            PixelFormat::Mjpeg => FrameFormat::MJPEG,
            PixelFormat::Yuyv => FrameFormat::YUYV,
            PixelFormat::Rgb24 => FrameFormat::RAWRGB,
        }
    }

    /// Switches `camera` to the [`choose_mode`] of what it offers. A camera
    /// that cannot list its modes, or refuses the switch, keeps the mode it
    /// opened with (the one nearest the wanted MJPEG mode).
    fn prefer_cheapest_mode(camera: &mut nokhwa::Camera, p: &CameraParams, device: &str) {
        let offered: Vec<CameraMode> = match camera.compatible_camera_formats() {
            Ok(formats) => formats
                .iter()
                .filter_map(|f| {
                    Some(CameraMode {
                        format: pixel_format(f.format())?,
                        width: f.resolution().width(),
                        height: f.resolution().height(),
                        fps: f.frame_rate(),
                    })
                })
                .collect(),
            Err(e) => {
                tracing::debug!("{device}: cannot list its modes ({e}); keeping the opened one");
                return;
            }
        };
        let Some(m) = choose_mode(&offered, p) else {
            return;
        };
        let fmt = CameraFormat::new(
            Resolution::new(m.width, m.height),
            frame_format(m.format),
            m.fps,
        );
        if fmt == camera.camera_format() {
            return;
        }
        let request = RequestedFormat::new::<RgbFormat>(RequestedFormatType::Exact(fmt));
        if let Err(e) = camera.set_camera_requset(request) {
            tracing::warn!(
                "{device}: {} {}x{} @ {} fps was refused ({e}); keeping {}",
                m.format.name(),
                m.width,
                m.height,
                m.fps,
                camera.camera_format()
            );
        }
    }

    /// A streaming webcam; the device is read on its own thread.
    pub struct CameraSource {
        info: SourceInfo,
        device: String,
        handoff: Arc<Handoff<Result<Raw, CameraFailure>>>,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
        stall_timeout: Duration,
        index: u64,
    }

    impl CameraSource {
        /// Opens the device and starts streaming; errors say what to do.
        pub fn open(p: CameraParams, stall_timeout: Duration) -> Result<Self, CaptureError> {
            let device = p.device_path();
            let handoff = Arc::new(Handoff::new(2));
            let stop = Arc::new(AtomicBool::new(false));
            let (opened_tx, opened_rx) = std::sync::mpsc::channel();
            let (h, s, dev) = (handoff.clone(), stop.clone(), device.clone());
            let thread = std::thread::Builder::new()
                .name("camera".into())
                .spawn(move || capture_loop(p, dev, h, s, opened_tx))
                .map_err(|e| {
                    CaptureError::Camera(CameraFailure::classify(&device, &e.to_string()))
                })?;
            let (width, height, fps, format) = match opened_rx.recv_timeout(Duration::from_secs(10))
            {
                Ok(Ok(fmt)) => fmt,
                Ok(Err(failure)) => return Err(CaptureError::Camera(failure)),
                Err(_) => {
                    return Err(CaptureError::Camera(CameraFailure::Other {
                        device,
                        detail: "the device did not open within 10 s".into(),
                    }))
                }
            };
            Ok(CameraSource {
                info: SourceInfo {
                    kind: "camera",
                    description: format!("{device} {width}x{height} @ {fps} fps {format}"),
                    width,
                    height,
                    fps: f64::from(fps),
                    truth: None,
                },
                device,
                handoff,
                stop,
                thread: Some(thread),
                stall_timeout,
                index: 0,
            })
        }
    }

    fn capture_loop(
        p: CameraParams,
        device: String,
        handoff: Arc<Handoff<Result<Raw, CameraFailure>>>,
        stop: Arc<AtomicBool>,
        opened: std::sync::mpsc::Sender<Opened>,
    ) {
        let fail = |e: &dyn std::fmt::Display| CameraFailure::classify(&device, &e.to_string());
        let wanted = CameraFormat::new(
            Resolution::new(p.width, p.height),
            FrameFormat::MJPEG,
            p.fps,
        );
        let request = RequestedFormat::new::<RgbFormat>(RequestedFormatType::Closest(wanted));
        let mut camera = match nokhwa::Camera::new(CameraIndex::Index(p.index), request) {
            Ok(c) => c,
            Err(e) => {
                let _ = opened.send(Err(fail(&e)));
                return;
            }
        };
        prefer_cheapest_mode(&mut camera, &p, &device);
        let fmt = camera.camera_format();
        if pixel_format(fmt.format()).is_none() {
            let _ = opened.send(Err(CameraFailure::UnsupportedFormat {
                device: device.clone(),
                detail: format!("{} (this agent decodes MJPEG, YUYV and RGB)", fmt.format()),
            }));
            return;
        }
        if let Err(e) = camera.open_stream() {
            let _ = opened.send(Err(fail(&e)));
            return;
        }
        let (w, h) = (fmt.resolution().width(), fmt.resolution().height());
        let name = pixel_format(fmt.format()).map_or("?", PixelFormat::name);
        let _ = opened.send(Ok((w, h, fmt.frame_rate(), name)));
        let t0 = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            match camera.frame() {
                Ok(buf) => {
                    let Some(format) = pixel_format(buf.source_frame_format()) else {
                        continue;
                    };
                    let res = buf.resolution();
                    handoff.push(Ok(Raw {
                        bytes: buf.buffer().to_vec(),
                        format,
                        width: res.width(),
                        height: res.height(),
                        t_s: t0.elapsed().as_secs_f64(),
                    }));
                }
                Err(e) => {
                    handoff.push(Err(fail(&e)));
                    break;
                }
            }
        }
        let _ = camera.stop_stream();
        handoff.close();
    }

    impl FrameSource for CameraSource {
        fn info(&self) -> &SourceInfo {
            &self.info
        }

        fn next_frame(&mut self, frame: &mut Frame) -> Result<bool, CaptureError> {
            loop {
                match self.handoff.pop(self.stall_timeout) {
                    Popped::Item(Ok(raw)) => {
                        if let Err(problem) =
                            decode(raw.format, &raw.bytes, raw.width, raw.height, frame)
                        {
                            // One corrupt MJPEG frame is skipped, not fatal.
                            if raw.format == PixelFormat::Mjpeg {
                                continue;
                            }
                            return Err(CaptureError::BadFrame {
                                input: self.device.clone(),
                                index: self.index,
                                problem,
                            });
                        }
                        frame.t_s = raw.t_s;
                        frame.index = self.index;
                        self.index += 1;
                        return Ok(true);
                    }
                    Popped::Item(Err(failure)) => return Err(CaptureError::Camera(failure)),
                    Popped::Closed => return Ok(false),
                    Popped::TimedOut => {
                        return Err(CaptureError::Camera(CameraFailure::Stalled {
                            device: self.device.clone(),
                            after_s: self.stall_timeout.as_secs_f64(),
                        }))
                    }
                }
            }
        }

        fn frames_dropped(&self) -> u64 {
            self.handoff.dropped()
        }
    }

    impl Drop for CameraSource {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }

    /// Every V4L2 camera with the formats it offers, one line each.
    pub fn list_cameras() -> Result<Vec<String>, CaptureError> {
        let infos = nokhwa::query(ApiBackend::Video4Linux).map_err(|e| {
            CaptureError::Camera(CameraFailure::classify("/dev/video*", &e.to_string()))
        })?;
        let mut out = Vec::new();
        for info in infos {
            let index = info.index().clone();
            let mut line = format!("{index}: {} ({})", info.human_name(), info.description());
            let request = RequestedFormat::new::<RgbFormat>(RequestedFormatType::None);
            match nokhwa::Camera::new(index, request)
                .and_then(|mut c| c.compatible_camera_formats())
            {
                Ok(formats) => {
                    let mut shown: Vec<String> = formats
                        .iter()
                        .map(|f| {
                            format!(
                                "{} {}x{}@{}",
                                f.format(),
                                f.width(),
                                f.height(),
                                f.frame_rate()
                            )
                        })
                        .collect();
                    shown.sort();
                    shown.dedup();
                    line.push_str(&format!("\n    {}", shown.join(", ")));
                }
                Err(e) => line.push_str(&format!("\n    formats unavailable: {e}")),
            }
            out.push(line);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn camera_specs_parse_index_and_options_and_reject_the_rest() {
        assert_eq!(
            CameraParams::parse("camera", "").unwrap(),
            CameraParams::default()
        );
        let p = CameraParams::parse(
            "camera:2,width=320,height=240,fps=15",
            ":2,width=320,height=240,fps=15",
        )
        .unwrap();
        assert_eq!((p.index, p.width, p.height, p.fps), (2, 320, 240, 15));
        assert_eq!(p.device_path(), "/dev/video2");
        let p = CameraParams::parse("camera:width=800", ":width=800").unwrap();
        assert_eq!((p.index, p.width), (0, 800));
        for (rest, needle) in [
            (":x", "not a number"),
            (":0,zoom=2", "unknown option"),
            (":0,fps=0", "outside"),
        ] {
            let e = CameraParams::parse("camera", rest).unwrap_err().to_string();
            assert!(e.contains(needle), "{rest}: {e}");
        }
    }

    fn mode(format: PixelFormat, width: u32, height: u32, fps: u32) -> CameraMode {
        CameraMode {
            format,
            width,
            height,
            fps,
        }
    }

    fn wanted(width: u32, height: u32, fps: u32) -> CameraParams {
        CameraParams {
            index: 0,
            width,
            height,
            fps,
        }
    }

    #[test]
    fn the_cheapest_format_is_chosen_at_the_wanted_size_and_rate() {
        use PixelFormat::{Mjpeg, Rgb24, Yuyv};
        // A typical USB 2 webcam: YUYV at full rate only at small sizes.
        let offered = [
            mode(Mjpeg, 1920, 1080, 30),
            mode(Mjpeg, 1280, 720, 30),
            mode(Mjpeg, 640, 480, 30),
            mode(Mjpeg, 320, 240, 30),
            mode(Yuyv, 1280, 720, 10),
            mode(Yuyv, 640, 480, 30),
            mode(Yuyv, 640, 480, 15),
            mode(Yuyv, 320, 240, 30),
        ];
        let pick = |w, h, fps| choose_mode(&offered, &wanted(w, h, fps)).unwrap();
        // Offered uncompressed at the wanted size and rate: no decode.
        assert_eq!(pick(640, 480, 30), mode(Yuyv, 640, 480, 30));
        assert_eq!(pick(320, 240, 30), mode(Yuyv, 320, 240, 30));
        // YUYV only at a third of the rate: MJPEG at the full rate.
        assert_eq!(pick(1280, 720, 30), mode(Mjpeg, 1280, 720, 30));
        // A rate the camera does not reach: the fastest at that size, and
        // of equal rates the cheapest format.
        assert_eq!(pick(640, 480, 60), mode(Yuyv, 640, 480, 30));
        // A size it does not offer: the nearest in pixels, then as above.
        assert_eq!(pick(800, 600, 30), mode(Yuyv, 640, 480, 30));
        assert_eq!(pick(2560, 1440, 30), mode(Mjpeg, 1920, 1080, 30));
        // At a lower wanted rate the slower YUYV mode is nearer; RGB beats MJPEG.
        assert_eq!(pick(640, 480, 15), mode(Yuyv, 640, 480, 15));
        let rgb = [mode(Mjpeg, 640, 480, 30), mode(Rgb24, 640, 480, 30)];
        assert_eq!(
            choose_mode(&rgb, &wanted(640, 480, 30)),
            Some(mode(Rgb24, 640, 480, 30))
        );
        assert_eq!(choose_mode(&[], &wanted(640, 480, 30)), None);
    }

    #[test]
    fn yuyv_decodes_with_bt601_limited_range() {
        // Black, white and a saturated red in limited-range YCbCr (what
        // V4L2 webcams send).
        let yuv_to_rgb = |y, u, v| crate::capture::frame::ycc_to_rgb(y, u, v, false);
        assert_eq!(yuv_to_rgb(16, 128, 128), [0, 0, 0]);
        assert_eq!(yuv_to_rgb(235, 128, 128), [255, 255, 255]);
        let red = yuv_to_rgb(81, 90, 240);
        assert!(red[0] > 250 && red[1] < 5 && red[2] < 5, "{red:?}");
        // Two pixels share U and V.
        let mut f = Frame::default();
        decode(
            PixelFormat::Yuyv,
            &[16, 128, 235, 128, 16, 128, 16, 128],
            4,
            1,
            &mut f,
        )
        .unwrap();
        assert_eq!(f.layout(), Layout::Yuyv, "kept as the camera sent it");
        assert_eq!(f.to_rgb()[..6], [0, 0, 0, 255, 255, 255]);
        assert_eq!((f.width, f.height), (4, 1));
        assert!(decode(PixelFormat::Yuyv, &[0; 7], 4, 1, &mut f)
            .unwrap_err()
            .contains("short"));
        assert!(decode(PixelFormat::Yuyv, &[0; 6], 3, 1, &mut f)
            .unwrap_err()
            .contains("even width"));
    }

    #[test]
    fn mjpeg_frames_decode_to_rgb_and_corrupt_ones_are_reported() {
        // A real JPEG made by the `image` encoder from a synthetic frame.
        let frame = crate::capture::synthetic::SyntheticSource::new(
            crate::capture::synthetic::SyntheticParams {
                width: 64,
                height: 48,
                ..Default::default()
            },
        )
        .and_then(|mut s| {
            let mut f = Frame::default();
            crate::capture::FrameSource::next_frame(&mut s, &mut f).map(|_| f)
        })
        .unwrap();
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 95)
            .encode(frame.data(), 64, 48, image::ExtendedColorType::Rgb8)
            .unwrap();
        let mut out = Frame::default();
        decode(PixelFormat::Mjpeg, &jpeg, 0, 0, &mut out).unwrap();
        assert_eq!((out.width, out.height), (64, 48));
        let err: f64 = out
            .data()
            .iter()
            .zip(frame.data())
            .map(|(a, b)| (*a as f64 - *b as f64).abs())
            .sum::<f64>()
            / out.data().len() as f64;
        assert!(err < 4.0, "mean abs error {err}");
        // The same pixels as `image` decodes (the same decoder underneath),
        // so decoding into the frame changes nothing that is measured.
        let via_image = image::load_from_memory_with_format(&jpeg, image::ImageFormat::Jpeg)
            .unwrap()
            .to_rgb8();
        assert_eq!(out.data(), via_image.as_raw().as_slice());
        // A grey camera's JPEG becomes RGB, and a frame of another size
        // reshapes the frame it is decoded into.
        let grey: Vec<u8> = (0..32 * 16).map(|i| (i % 251) as u8).collect();
        let mut grey_jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut grey_jpeg, 95)
            .encode(&grey, 32, 16, image::ExtendedColorType::L8)
            .unwrap();
        decode(PixelFormat::Mjpeg, &grey_jpeg, 0, 0, &mut out).unwrap();
        assert_eq!(
            (out.width, out.height, out.data().len()),
            (32, 16, 32 * 16 * 3)
        );
        assert!(out.data().chunks(3).all(|p| p[0] == p[1] && p[1] == p[2]));
        // Not a JPEG at all, or cut inside its header: an error, not a frame.
        // (A JPEG cut inside its scan data decodes, with the rest grey: the
        // decoder is lenient, as webcams' partial frames need.)
        assert!(decode(PixelFormat::Mjpeg, b"not a jpeg", 0, 0, &mut out).is_err());
        assert!(decode(PixelFormat::Mjpeg, &jpeg[..20], 0, 0, &mut out).is_err());
    }

    #[test]
    fn device_failures_map_to_the_events_a_kiosk_backend_expects() {
        let c = |m: &str| CameraFailure::classify("/dev/video0", m);
        let denied = c("Could not open device /dev/video0: Permission denied (os error 13)");
        assert_eq!(denied.details(), "CAMERA_PERMISSION_DENIED");
        assert!(denied.to_string().contains("group `video`"));
        assert!(matches!(
            c("No such file or directory (os error 2)"),
            CameraFailure::NotFound { .. }
        ));
        assert!(matches!(
            c("Device or resource busy (os error 16)"),
            CameraFailure::Busy { .. }
        ));
        assert!(matches!(
            c("Could not open device stream: device busy"),
            CameraFailure::Busy { .. }
        ));
        let fmt = c("Could not set device property format: Invalid argument format YUV420");
        assert!(matches!(fmt, CameraFailure::UnsupportedFormat { .. }));
        assert_eq!(fmt.details(), "CAMERA_START_ERROR");
        let stalled = CameraFailure::Stalled {
            device: "/dev/video0".into(),
            after_s: 2.0,
        };
        assert_eq!(stalled.details(), "CAMERA_STALLED");
        assert!(c("weird").to_string().contains("/dev/video0"));
    }

    #[test]
    fn the_handoff_drops_the_oldest_frame_when_vision_is_behind_and_counts_it() {
        let h = Handoff::new(2);
        for i in 0..5 {
            h.push(i);
        }
        assert_eq!(h.dropped(), 3);
        assert_eq!(h.pop(Duration::ZERO), Popped::Item(3));
        assert_eq!(h.pop(Duration::ZERO), Popped::Item(4));
        assert_eq!(h.pop(Duration::from_millis(10)), Popped::TimedOut);
        // A consumer waiting on another thread wakes for a push and for close.
        let h = std::sync::Arc::new(Handoff::new(2));
        let h2 = h.clone();
        let t = std::thread::spawn(move || {
            (
                h2.pop(Duration::from_secs(5)),
                h2.pop(Duration::from_secs(5)),
            )
        });
        std::thread::sleep(Duration::from_millis(20));
        h.push(7);
        std::thread::sleep(Duration::from_millis(20));
        h.close();
        assert_eq!(t.join().unwrap(), (Popped::Item(7), Popped::Closed));
    }
}
