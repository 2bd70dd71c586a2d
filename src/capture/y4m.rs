//! YUV4MPEG2 reader: files and pipes (`ffmpeg ... -f yuv4mpegpipe -`).
//!
//! Owns: header parsing, frame framing and YCbCr -> RGB conversion.
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

use super::{CaptureError, Frame, FrameSource, SourceInfo};
use std::io::{BufRead, Read};

/// Longest header or frame-header line accepted.
const MAX_LINE: usize = 4096;
/// Largest frame accepted (pixels), so a hostile header cannot exhaust memory.
pub const MAX_PIXELS: u64 = 8192 * 8192;
/// Frame rates accepted: a frame at least every second, at most a
/// high-speed camera's 1000 per second. Beyond them the time between two
/// frames is not a video's (and would size the signal buffers).
pub const MIN_FPS: f64 = 1.0;
pub const MAX_FPS: f64 = 1000.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chroma {
    C420,
    C422,
    C444,
    Mono,
}

impl Chroma {
    /// Width and height of one chroma plane.
    fn plane(self, w: usize, h: usize) -> (usize, usize) {
        match self {
            Chroma::C420 => (w.div_ceil(2), h.div_ceil(2)),
            Chroma::C422 => (w.div_ceil(2), h),
            Chroma::C444 => (w, h),
            Chroma::Mono => (0, 0),
        }
    }
}

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

    /// Bytes of pixel data per frame.
    pub fn frame_bytes(&self) -> usize {
        let (w, h) = (self.width as usize, self.height as usize);
        let (cw, ch) = self.chroma.plane(w, h);
        w * h + 2 * cw * ch
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
    planes: Vec<u8>,
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
            planes: vec![0; header.frame_bytes()],
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

    fn next_frame(&mut self, frame: &mut Frame) -> Result<bool, CaptureError> {
        let input = self.input.clone();
        let index = self.index;
        let io = |source| CaptureError::read(&input, source);
        let expected = self.header.frame_bytes();
        match read_line(&mut *self.reader, &mut self.line).map_err(io)? {
            Ok(None) => return Ok(false),
            Ok(Some(())) if self.line.starts_with(b"FRAME") => {}
            Ok(Some(())) => {
                return Err(CaptureError::BadFrame {
                    input,
                    index,
                    problem: "expected a FRAME marker (is the frame size in the header right?)"
                        .into(),
                })
            }
            Err(got) if got >= MAX_LINE => {
                return Err(CaptureError::BadFrame {
                    input,
                    index,
                    problem: format!("frame header line is longer than {MAX_LINE} bytes"),
                })
            }
            Err(got) => {
                return Err(CaptureError::Truncated {
                    input,
                    index,
                    expected,
                    got: got.min(expected),
                })
            }
        }
        let mut got = 0;
        while got < expected {
            match self.reader.read(&mut self.planes[got..]) {
                Ok(0) => {
                    return Err(CaptureError::Truncated {
                        input,
                        index,
                        expected,
                        got,
                    })
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io(e)),
            }
        }
        frame.reshape(self.header.width, self.header.height);
        frame.index = index;
        frame.t_s = index as f64 * self.header.fps_den as f64 / self.header.fps_num as f64;
        convert_to_rgb(&self.header, &self.planes, &mut frame.rgb);
        self.index += 1;
        Ok(true)
    }
}

/// BT.601 YCbCr -> RGB for one frame of planar data.
fn convert_to_rgb(h: &Header, planes: &[u8], rgb: &mut [u8]) {
    let (w, hh) = (h.width as usize, h.height as usize);
    let (cw, ch) = h.chroma.plane(w, hh);
    let (y_plane, rest) = planes.split_at(w * hh);
    let (cb_plane, cr_plane) = rest.split_at(cw * ch);
    // 16.16 fixed point coefficients.
    let (ys, yo, cs) = if h.full_range {
        (65536, 0, 1.0)
    } else {
        (76309, 16, 255.0 / 224.0)
    };
    let k = |v: f64| (v * cs * 65536.0).round() as i32;
    let (rv, gu, gv, bu) = (k(1.402), k(0.344_136), k(0.714_136), k(1.772));
    let clamp = |v: i32| ((v + 32768) >> 16).clamp(0, 255) as u8;
    for y in 0..hh {
        let cy = match h.chroma {
            Chroma::C420 => y / 2,
            _ => y,
        };
        for x in 0..w {
            let luma = (y_plane[y * w + x] as i32 - yo) * ys;
            let (u, v) = if h.chroma == Chroma::Mono {
                (0, 0)
            } else {
                let cx = if h.chroma == Chroma::C444 { x } else { x / 2 };
                (
                    cb_plane[cy * cw + cx] as i32 - 128,
                    cr_plane[cy * cw + cx] as i32 - 128,
                )
            };
            let o = (y * w + x) * 3;
            rgb[o] = clamp(luma + rv * v);
            rgb[o + 1] = clamp(luma - gu * u - gv * v);
            rgb[o + 2] = clamp(luma + bu * u);
        }
    }
}

/// Encodes RGB frames as a BT.601 limited-range 4:2:0 YUV4MPEG2 stream at
/// `fps` (chroma from the top-left pixel of each 2x2 block). For tests and
/// benchmarks: the agent itself never writes frames.
pub fn encode_420(frames: &[Frame], fps: u32) -> Vec<u8> {
    let Some(first) = frames.first() else {
        return Vec::new();
    };
    let (w, h) = (first.width as usize, first.height as usize);
    let mut out = format!("YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n").into_bytes();
    for f in frames {
        out.extend_from_slice(b"FRAME\n");
        let px = |x: usize, y: usize| {
            let i = (y * w + x) * 3;
            (f.rgb[i] as f64, f.rgb[i + 1] as f64, f.rgb[i + 2] as f64)
        };
        for y in 0..h {
            for x in 0..w {
                let (r, g, b) = px(x, y);
                out.push((16.0 + 0.257 * r + 0.504 * g + 0.098 * b).round() as u8);
            }
        }
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let mut cr = Vec::with_capacity(cw * ch);
        for y in 0..ch {
            for x in 0..cw {
                let (r, g, b) = px((2 * x).min(w - 1), (2 * y).min(h - 1));
                out.push((128.0 - 0.148 * r - 0.291 * g + 0.439 * b).round() as u8);
                cr.push((128.0 + 0.439 * r - 0.368 * g - 0.071 * b).round() as u8);
            }
        }
        out.extend_from_slice(&cr);
    }
    out
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
        let mut f = Frame::default();
        f.reshape(4, 2);
        for (i, p) in f.rgb.chunks_exact_mut(3).enumerate() {
            p.copy_from_slice(&[200, 140 + i as u8, 110]);
        }
        let bytes = encode_420(std::slice::from_ref(&f), 30);
        let mut s = source(bytes).unwrap();
        let mut back = Frame::default();
        assert!(s.next_frame(&mut back).unwrap());
        for (a, b) in f.rgb.iter().zip(&back.rgb) {
            assert!(
                (*a as i32 - *b as i32).abs() <= 4,
                "{:?} vs {:?}",
                f.rgb,
                back.rgb
            );
        }
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
