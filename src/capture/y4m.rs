//! YUV4MPEG2 reader: files and pipes (`ffmpeg ... -f yuv4mpegpipe -`).
//!
//! Owns: header parsing and frame framing (a frame keeps the stream's planar
//! layout; [`super::frame`] converts what vision reads), and [`Y4mWriter`],
//! which `rppg-agent synth` and the tests use to write generated video.
//!
//! Format (as written by ffmpeg and mjpegtools): a header line
//! `YUV4MPEG2 W<w> H<h> F<num>:<den> [I..] [A..] [C<space>] [X..]\n`, then per
//! frame `FRAME[ params]\n` followed by the Y plane and, unless mono, the Cb
//! and Cr planes at the colour space's subsampling. Supported: 8-bit `420jpeg`,
//! `420paldv`, `420mpeg2`, `420` (the default when `C` is absent), `422`,
//! `444` and `mono`. Conversion is BT.601, limited range unless the header
//! says `XCOLORRANGE=FULL`.
//!
//! Invariants: timestamps are `index * den / num` from the header; header
//! lines are bounded (hostile input cannot make us buffer without limit); a
//! short last frame is an error naming its index, never silently dropped.

use super::frame::{Chroma, Layout};
use super::{CaptureError, Frame, FrameSource, SourceInfo};
use std::io::{BufRead, Read, Write};

/// Longest header or frame-header line accepted.
const MAX_LINE: usize = 4096;
/// Largest frame accepted (pixels), so a hostile header cannot exhaust memory.
pub const MAX_PIXELS: u64 = 8192 * 8192;
/// Frame rates accepted: a frame at least every second, at most a
/// high-speed camera's 1000 per second. Beyond them the time between two
/// frames is not a video's (and would size the signal buffers).
pub const MIN_FPS: f64 = 1.0;
pub const MAX_FPS: f64 = 1000.0;

/// Parsed stream header.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub width: u32,
    pub height: u32,
    pub fps_num: u32,
    pub fps_den: u32,
    chroma: Chroma,
    full_range: bool,
}

impl Header {
    pub fn fps(&self) -> f64 {
        self.fps_num as f64 / self.fps_den as f64
    }

    /// The frames' layout: planar, as stored in the stream.
    pub fn layout(&self) -> Layout {
        Layout::Planar {
            chroma: self.chroma,
            full_range: self.full_range,
        }
    }

    /// Bytes of pixel data per frame.
    pub fn frame_bytes(&self) -> usize {
        self.layout().bytes(self.width, self.height)
    }

    /// Parses the header line (without its newline).
    pub fn parse(line: &str, input: &str) -> Result<Header, CaptureError> {
        let bad = |problem: String| CaptureError::BadHeader {
            input: input.to_string(),
            problem,
        };
        let mut tokens = line.split(' ').filter(|t| !t.is_empty());
        if tokens.next() != Some("YUV4MPEG2") {
            return Err(bad(
                "not a YUV4MPEG2 stream (it must start with \"YUV4MPEG2 \"); convert with: ffmpeg -i IN -f yuv4mpegpipe OUT.y4m".into(),
            ));
        }
        let (mut w, mut h, mut fps) = (None, None, None);
        let mut chroma = Chroma::C420;
        let mut full_range = false;
        for t in tokens {
            // The tag is one character; the value is the rest (a byte split
            // would panic inside a multi-byte character).
            let mut chars = t.chars();
            let tag = chars.next().map(String::from).unwrap_or_default();
            let value = chars.as_str();
            match tag.as_str() {
                "W" => {
                    w = Some(
                        value
                            .parse::<u32>()
                            .map_err(|_| bad(format!("width {value:?} is not a number")))?,
                    )
                }
                "H" => {
                    h = Some(
                        value
                            .parse::<u32>()
                            .map_err(|_| bad(format!("height {value:?} is not a number")))?,
                    )
                }
                "F" => {
                    let (n, d) = value
                        .split_once(':')
                        .and_then(|(n, d)| Some((n.parse::<u32>().ok()?, d.parse::<u32>().ok()?)))
                        .ok_or_else(|| bad(format!("frame rate {value:?} is not NUM:DEN")))?;
                    if n == 0 || d == 0 {
                        return Err(bad(format!("frame rate {n}:{d} is not a rate")));
                    }
                    let rate = n as f64 / d as f64;
                    if !(MIN_FPS..=MAX_FPS).contains(&rate) {
                        return Err(bad(format!(
                            "frame rate {n}:{d} ({rate:.3e} fps) is outside {MIN_FPS}..{MAX_FPS} fps"
                        )));
                    }
                    fps = Some((n, d));
                }
                "C" => {
                    chroma = match value {
                        "420jpeg" | "420paldv" | "420mpeg2" | "420" => Chroma::C420,
                        "422" => Chroma::C422,
                        "444" => Chroma::C444,
                        "mono" => Chroma::Mono,
                        other => {
                            return Err(CaptureError::UnsupportedColourSpace {
                                input: input.to_string(),
                                colour_space: other.to_string(),
                            })
                        }
                    }
                }
                "X" => {
                    if value.eq_ignore_ascii_case("COLORRANGE=FULL") {
                        full_range = true;
                    }
                }
                "I" | "A" => {}
                _ => return Err(bad(format!("unknown header field {t:?}"))),
            }
        }
        let width = w.ok_or_else(|| bad("missing W (width)".into()))?;
        let height = h.ok_or_else(|| bad("missing H (height)".into()))?;
        let (fps_num, fps_den) =
            fps.ok_or_else(|| bad("missing F (frame rate), e.g. F30:1".into()))?;
        if width == 0 || height == 0 {
            return Err(CaptureError::ZeroSize {
                input: input.to_string(),
                width,
                height,
            });
        }
        if width as u64 * height as u64 > MAX_PIXELS {
            return Err(bad(format!(
                "{width}x{height} is larger than the supported {MAX_PIXELS} pixels"
            )));
        }
        Ok(Header {
            width,
            height,
            fps_num,
            fps_den,
            chroma,
            full_range,
        })
    }
}

/// Reads one `\n`-terminated line of at most `MAX_LINE` bytes. `Ok(None)` at
/// a clean end of input; `Err(got)` with the bytes read when it ends early.
fn read_line(
    reader: &mut dyn BufRead,
    out: &mut Vec<u8>,
) -> std::io::Result<Result<Option<()>, usize>> {
    out.clear();
    let n = reader.take(MAX_LINE as u64).read_until(b'\n', out)?;
    if n == 0 {
        return Ok(Ok(None));
    }
    if out.last() != Some(&b'\n') {
        return Ok(Err(n));
    }
    out.pop();
    Ok(Ok(Some(())))
}

/// A YUV4MPEG2 stream as a frame source.
pub struct Y4mSource {
    reader: Box<dyn BufRead + Send>,
    header: Header,
    info: SourceInfo,
    input: String,
    line: Vec<u8>,
    index: u64,
}

impl Y4mSource {
    /// Reads the header from `reader`; `input` names it in messages.
    pub fn new(mut reader: Box<dyn BufRead + Send>, input: String) -> Result<Self, CaptureError> {
        let mut line = Vec::new();
        let io = |source| CaptureError::read(&input, source);
        let read = read_line(&mut *reader, &mut line).map_err(io)?;
        if read == Ok(None) {
            return Err(CaptureError::BadHeader {
                input,
                problem: "the input is empty".into(),
            });
        }
        if !line.starts_with(b"YUV4MPEG2") {
            // Let the header parser say what a YUV4MPEG2 stream must start with.
            Header::parse(
                &String::from_utf8_lossy(&line[..line.len().min(64)]),
                &input,
            )?;
        }
        if read.is_err() {
            return Err(CaptureError::BadHeader {
                input,
                problem: format!("header line is unterminated or longer than {MAX_LINE} bytes"),
            });
        }
        let text = String::from_utf8_lossy(&line).to_string();
        let header = Header::parse(&text, &input)?;
        let info = SourceInfo {
            kind: "y4m",
            description: input.clone(),
            width: header.width,
            height: header.height,
            fps: header.fps(),
            truth: None,
        };
        Ok(Y4mSource {
            reader,
            header,
            info,
            input,
            line,
            index: 0,
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }
}

impl FrameSource for Y4mSource {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    /// Reads the next frame's planes straight into `frame` (no conversion:
    /// the frame keeps the stream's planar layout). Allocates nothing once
    /// `frame` has held one frame of this size.
    fn next_frame(&mut self, frame: &mut Frame) -> Result<bool, CaptureError> {
        let index = self.index;
        let expected = self.header.frame_bytes();
        let line = read_line(&mut *self.reader, &mut self.line)
            .map_err(|e| CaptureError::read(&self.input, e))?;
        let problem = match line {
            Ok(None) => return Ok(false),
            Ok(Some(())) if self.line.starts_with(b"FRAME") => None,
            Ok(Some(())) => {
                Some("expected a FRAME marker (is the frame size in the header right?)".into())
            }
            Err(got) if got >= MAX_LINE => {
                Some(format!("frame header line is longer than {MAX_LINE} bytes"))
            }
            Err(got) => {
                return Err(CaptureError::Truncated {
                    input: self.input.clone(),
                    index,
                    expected,
                    got: got.min(expected),
                })
            }
        };
        if let Some(problem) = problem {
            return Err(CaptureError::BadFrame {
                input: self.input.clone(),
                index,
                problem,
            });
        }
        frame.reshape(self.header.width, self.header.height, self.header.layout());
        let data = frame.data_mut();
        let mut got = 0;
        while got < expected {
            match self.reader.read(&mut data[got..]) {
                Ok(0) => {
                    return Err(CaptureError::Truncated {
                        input: self.input.clone(),
                        index,
                        expected,
                        got,
                    })
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(CaptureError::read(&self.input, e)),
            }
        }
        frame.index = index;
        frame.t_s = index as f64 * self.header.fps_den as f64 / self.header.fps_num as f64;
        self.index += 1;
        Ok(true)
    }
}

/// Writes frames as a BT.601 limited-range 4:2:0 YUV4MPEG2 stream
/// (`C420jpeg`: each chroma sample is the mean of its 2x2 pixels), one frame
/// at a time. For `rppg-agent synth`, tests and benchmarks: it writes
/// generated video only; nothing in the agent passes camera frames to it.
pub struct Y4mWriter<W: Write> {
    out: W,
    width: u32,
    height: u32,
    planes: Vec<u8>,
    scratch: Vec<u8>,
}

impl<W: Write> Y4mWriter<W> {
    /// Writes the stream header for `width x height` at `fps_num/fps_den`.
    pub fn new(
        mut out: W,
        width: u32,
        height: u32,
        fps_num: u32,
        fps_den: u32,
    ) -> std::io::Result<Self> {
        writeln!(
            out,
            "YUV4MPEG2 W{width} H{height} F{fps_num}:{fps_den} Ip A1:1 C420jpeg"
        )?;
        Ok(Y4mWriter {
            out,
            width,
            height,
            planes: Vec::new(),
            scratch: Vec::new(),
        })
    }

    /// Encodes and writes one frame (any layout; its size must be the stream's).
    pub fn write(&mut self, frame: &Frame) -> std::io::Result<()> {
        if (frame.width, frame.height) != (self.width, self.height) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "frame is {}x{}, the stream {}x{}",
                    frame.width, frame.height, self.width, self.height
                ),
            ));
        }
        let (w, h) = (self.width as usize, self.height as usize);
        let (cw, ch) = Chroma::C420.plane(w, h);
        self.planes.clear();
        self.planes.resize(w * h + 2 * cw * ch, 0);
        let (luma, chroma) = self.planes.split_at_mut(w * h);
        let (cb, cr) = chroma.split_at_mut(cw * ch);
        // Chroma rows are sums of two RGB rows, then of two columns.
        let mut sums = vec![[0f64; 3]; cw];
        for y in 0..h {
            if y % 2 == 0 {
                sums.iter_mut().for_each(|s| *s = [0.0; 3]);
            }
            let row = frame.rgb_row(y as u32, 0, self.width, &mut self.scratch);
            for (x, p) in row.chunks_exact(3).enumerate() {
                let (r, g, b) = (p[0] as f64, p[1] as f64, p[2] as f64);
                luma[y * w + x] =
                    (16.0 + 0.256_788 * r + 0.504_129 * g + 0.097_906 * b).round() as u8;
                let s = &mut sums[x / 2];
                s[0] += r;
                s[1] += g;
                s[2] += b;
            }
            if y % 2 == 1 || y + 1 == h {
                let rows = if y % 2 == 1 { 2 } else { 1 };
                for (cx, s) in sums.iter().enumerate() {
                    let n = (rows * (2 * cx + 2).min(w).saturating_sub(2 * cx)) as f64;
                    let [r, g, b] = s.map(|v| v / n);
                    let i = (y / 2) * cw + cx;
                    cb[i] = (128.0 - 0.148_223 * r - 0.290_993 * g + 0.439_216 * b).round() as u8;
                    cr[i] = (128.0 + 0.439_216 * r - 0.367_788 * g - 0.071_427 * b).round() as u8;
                }
            }
        }
        self.out.write_all(b"FRAME\n")?;
        self.out.write_all(&self.planes)
    }

    /// Flushes and returns the writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

/// Encodes frames as a 4:2:0 YUV4MPEG2 stream at `fps` in memory (see
/// [`Y4mWriter`]). For tests and benchmarks.
pub fn encode_420(frames: &[Frame], fps: u32) -> Vec<u8> {
    let Some(first) = frames.first() else {
        return Vec::new();
    };
    let mut w = Y4mWriter::new(Vec::new(), first.width, first.height, fps, 1).expect("in memory");
    for f in frames {
        w.write(f).expect("frames of one size");
    }
    w.finish().expect("in memory")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn stream(header: &str, frames: &[Vec<u8>]) -> Vec<u8> {
        let mut out = format!("{header}\n").into_bytes();
        for f in frames {
            out.extend_from_slice(b"FRAME\n");
            out.extend_from_slice(f);
        }
        out
    }

    fn source(bytes: Vec<u8>) -> Result<Y4mSource, CaptureError> {
        Y4mSource::new(Box::new(Cursor::new(bytes)), "test.y4m".into())
    }

    #[test]
    fn a_420_stream_yields_frames_with_header_rate_timestamps() {
        // 4x2 grey frames, 4:2:0: 8 luma + 2 + 2 chroma bytes.
        let f = [vec![126u8; 8], vec![128u8; 4]].concat();
        let mut s = source(stream(
            "YUV4MPEG2 W4 H2 F25:1 Ip A1:1 C420jpeg",
            &[f.clone(), f],
        ))
        .unwrap();
        let mut frame = Frame::default();
        assert!(s.next_frame(&mut frame).unwrap());
        assert_eq!((frame.width, frame.height), (4, 2));
        // Limited-range Y=126 -> (126-16)*255/219 = 128.
        assert_eq!(frame.pixel(0, 0), [128, 128, 128]);
        assert!(s.next_frame(&mut frame).unwrap());
        assert!((frame.t_s - 0.04).abs() < 1e-12);
        assert!(!s.next_frame(&mut frame).unwrap());
    }

    #[test]
    fn a_444_full_range_red_pixel_converts_to_red() {
        // Full-range BT.601 red: Y=76, Cb=85, Cr=255.
        let f = vec![76u8, 85, 255];
        let mut s = source(stream("YUV4MPEG2 W1 H1 F30:1 C444 XCOLORRANGE=FULL", &[f])).unwrap();
        let mut frame = Frame::default();
        assert!(s.next_frame(&mut frame).unwrap());
        let [r, g, b] = frame.pixel(0, 0);
        assert!(r >= 253 && g <= 2 && b <= 2, "{r} {g} {b}");
    }

    #[test]
    fn a_missing_colour_tag_means_420_and_odd_sizes_round_chroma_up() {
        let h = Header::parse("YUV4MPEG2 W5 H3 F30000:1001", "x").unwrap();
        assert_eq!(h.frame_bytes(), 15 + 2 * 3 * 2);
        assert!((h.fps() - 29.97).abs() < 0.001);
    }

    #[test]
    fn a_truncated_last_frame_is_reported_with_its_index() {
        let f = vec![16u8; 6];
        let mut bytes = stream("YUV4MPEG2 W2 H2 F30:1 C420", &[f.clone(), f]);
        bytes.truncate(bytes.len() - 3);
        let mut s = source(bytes).unwrap();
        let mut frame = Frame::default();
        assert!(s.next_frame(&mut frame).unwrap());
        let err = s.next_frame(&mut frame).unwrap_err().to_string();
        assert!(err.contains("frame 1 is truncated"), "{err}");
    }

    #[test]
    fn bad_headers_are_explained() {
        for (header, needle) in [
            ("RIFF", "not a YUV4MPEG2 stream"),
            ("YUV4MPEG2 H2 F30:1", "missing W"),
            ("YUV4MPEG2 W2 H2", "missing F"),
            ("YUV4MPEG2 W2 H2 F0:1", "not a rate"),
            ("YUV4MPEG2 Wx H2 F30:1", "not a number"),
            ("YUV4MPEG2 W0 H2 F30:1", "zero-size"),
            ("YUV4MPEG2 W2 H2 F30:1 C420p10", "unsupported colour space"),
            ("YUV4MPEG2 W99999 H99999 F30:1", "larger than"),
            ("YUV4MPEG2 W2 H2 F30:1 Q7", "unknown header field"),
        ] {
            let err = source(format!("{header}\n").into_bytes())
                .err()
                .unwrap()
                .to_string();
            assert!(err.contains(needle), "{header}: {err}");
        }
        let err = source(Vec::new()).err().unwrap().to_string();
        assert!(err.contains("empty"), "{err}");
        let err = source(b"YUV4MPEG2 W2 H2 F30:1".to_vec())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("unterminated"), "{err}");
        let err = source(b"RIFF....WAVE".to_vec()).err().unwrap().to_string();
        assert!(err.contains("not a YUV4MPEG2 stream"), "{err}");
    }

    #[test]
    fn encoded_frames_decode_back_to_nearly_the_same_colours() {
        // Odd sizes: the last chroma column and row average fewer pixels.
        for (w, h) in [(4u32, 2u32), (5, 3)] {
            let mut f = Frame::default();
            f.reshape_rgb(w, h);
            for (i, p) in f.rgb_mut().chunks_exact_mut(3).enumerate() {
                p.copy_from_slice(&[200, 140 + i as u8, 110]);
            }
            let bytes = encode_420(std::slice::from_ref(&f), 30);
            let mut s = source(bytes).unwrap();
            let mut back = Frame::default();
            assert!(s.next_frame(&mut back).unwrap());
            assert_eq!(back.layout().name(), "yuv420p");
            let (a, b) = (f.to_rgb(), back.to_rgb());
            for (x, y) in a.iter().zip(&b) {
                assert!((*x as i32 - *y as i32).abs() <= 4, "{a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn frames_keep_the_streams_planes_byte_for_byte_and_reuse_the_buffer() {
        let planes: Vec<u8> = (0..6u8).map(|i| 16 + i * 40).collect();
        let mut s = source(stream(
            "YUV4MPEG2 W2 H2 F30:1 C420",
            &[planes.clone(), planes.clone()],
        ))
        .unwrap();
        let mut frame = Frame::default();
        assert!(s.next_frame(&mut frame).unwrap());
        assert_eq!(frame.data(), &planes[..]);
        let at = frame.data().as_ptr();
        assert!(s.next_frame(&mut frame).unwrap());
        assert_eq!(
            frame.data().as_ptr(),
            at,
            "the second frame reuses the first one's buffer"
        );
    }

    #[test]
    fn garbage_where_a_frame_marker_should_be_is_an_error() {
        let mut bytes = b"YUV4MPEG2 W2 H2 F30:1 Cmono\n".to_vec();
        bytes.extend_from_slice(b"JUNK\n");
        let mut s = source(bytes).unwrap();
        let err = s.next_frame(&mut Frame::default()).unwrap_err().to_string();
        assert!(
            err.contains("frame 0") && err.contains("FRAME marker"),
            "{err}"
        );
    }
}
