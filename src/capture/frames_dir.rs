//! A directory of PNG/JPEG frames (`frames:DIR[,fps=30]`).
//!
//! Owns: listing, ordering and decoding still frames.
//!
//! Invariants: frames are the directory's `.png`, `.jpg` and `.jpeg` files in
//! byte order of their names (zero-pad numbers: `0001.png`); hidden files
//! are skipped; any other file is an error naming it (a stray file usually
//! means the wrong directory); every frame must have the first frame's size;
//! timestamps are `index / fps`.

use super::{CaptureError, Frame, FrameSource, SourceInfo};
use std::path::{Path, PathBuf};

pub struct FramesDirSource {
    files: Vec<PathBuf>,
    fps: f64,
    info: SourceInfo,
    index: usize,
}

fn is_frame(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
}

fn decode(path: &Path, index: u64) -> Result<image::RgbImage, CaptureError> {
    super::decode_still(path, super::y4m::MAX_PIXELS).map_err(|problem| CaptureError::BadFrame {
        input: path.display().to_string(),
        index,
        problem,
    })
}

impl FramesDirSource {
    pub fn new(dir: &Path, fps: f64) -> Result<Self, CaptureError> {
        let entries = std::fs::read_dir(dir).map_err(|source| CaptureError::Open {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut files = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| CaptureError::Read {
                input: dir.display().to_string(),
                source,
            })?;
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if hidden || path.is_dir() {
                continue;
            }
            if !is_frame(&path) {
                return Err(CaptureError::Spec {
                    spec: format!("frames:{}", dir.display()),
                    problem: format!(
                        "{} is not a .png/.jpg/.jpeg frame; the directory must hold only frames",
                        path.display()
                    ),
                });
            }
            files.push(path);
        }
        files.sort();
        let first = files.first().ok_or_else(|| CaptureError::Spec {
            spec: format!("frames:{}", dir.display()),
            problem: "the directory holds no .png/.jpg/.jpeg frames".into(),
        })?;
        let img = decode(first, 0)?;
        if img.width() == 0 || img.height() == 0 {
            return Err(CaptureError::ZeroSize {
                input: first.display().to_string(),
                width: img.width(),
                height: img.height(),
            });
        }
        let info = SourceInfo {
            kind: "frames",
            description: dir.display().to_string(),
            width: img.width(),
            height: img.height(),
            fps,
            truth: None,
        };
        Ok(FramesDirSource {
            files,
            fps,
            info,
            index: 0,
        })
    }
}

impl FrameSource for FramesDirSource {
    fn info(&self) -> &SourceInfo {
        &self.info
    }

    fn next_frame(&mut self, frame: &mut Frame) -> Result<bool, CaptureError> {
        let Some(path) = self.files.get(self.index) else {
            return Ok(false);
        };
        let index = self.index as u64;
        let img = decode(path, index)?;
        if (img.width(), img.height()) != (self.info.width, self.info.height) {
            return Err(CaptureError::BadFrame {
                input: path.display().to_string(),
                index,
                problem: format!(
                    "is {}x{}, but the first frame is {}x{}",
                    img.width(),
                    img.height(),
                    self.info.width,
                    self.info.height
                ),
            });
        }
        frame.reshape_rgb(img.width(), img.height());
        frame.rgb_mut().copy_from_slice(img.as_raw());
        frame.index = index;
        frame.t_s = index as f64 / self.fps;
        self.index += 1;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_png(path: &Path, w: u32, h: u32, v: u8) {
        image::RgbImage::from_pixel(w, h, image::Rgb([v, v, v]))
            .save(path)
            .unwrap();
    }

    #[test]
    fn frames_come_in_name_order_at_the_given_rate() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("0002.png"), 4, 3, 20);
        write_png(&dir.path().join("0001.png"), 4, 3, 10);
        std::fs::write(dir.path().join(".DS_Store"), b"x").unwrap();
        let mut s = FramesDirSource::new(dir.path(), 10.0).unwrap();
        let mut f = Frame::default();
        assert!(s.next_frame(&mut f).unwrap());
        assert_eq!(f.pixel(0, 0), [10, 10, 10]);
        assert!(s.next_frame(&mut f).unwrap());
        assert_eq!(f.pixel(0, 0), [20, 20, 20]);
        assert!((f.t_s - 0.1).abs() < 1e-12);
        assert!(!s.next_frame(&mut f).unwrap());
    }

    #[test]
    fn a_non_image_file_an_empty_directory_and_a_size_change_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let err = FramesDirSource::new(dir.path(), 30.0)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("holds no"), "{err}");
        std::fs::write(dir.path().join("notes.txt"), b"x").unwrap();
        let err = FramesDirSource::new(dir.path(), 30.0)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("notes.txt"), "{err}");
        std::fs::remove_file(dir.path().join("notes.txt")).unwrap();
        write_png(&dir.path().join("1.png"), 4, 3, 0);
        write_png(&dir.path().join("2.png"), 5, 3, 0);
        let mut s = FramesDirSource::new(dir.path(), 30.0).unwrap();
        let mut f = Frame::default();
        s.next_frame(&mut f).unwrap();
        let err = s.next_frame(&mut f).unwrap_err().to_string();
        assert!(err.contains("frame 1") && err.contains("5x3"), "{err}");
        let err = FramesDirSource::new(&dir.path().join("missing"), 30.0)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("cannot open"), "{err}");
    }

    #[test]
    fn a_corrupt_image_names_the_file_and_index() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("1.png"), 4, 3, 0);
        std::fs::write(dir.path().join("2.jpg"), b"not a jpeg").unwrap();
        let mut s = FramesDirSource::new(dir.path(), 30.0).unwrap();
        let mut f = Frame::default();
        s.next_frame(&mut f).unwrap();
        let err = s.next_frame(&mut f).unwrap_err().to_string();
        assert!(err.contains("2.jpg") && err.contains("frame 1"), "{err}");
    }
}
