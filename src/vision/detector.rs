//! Face detection with the SeetaFace funnel cascade (rustface, BSD-2).
//!
//! Owns: the model's integrity check and the detector's settings.
//!
//! The model file `models/seeta_fd_frontal_v1.0.bin` is vendored and also
//! embedded in the binary, so a device needs no model directory; a different
//! file can be configured (`vision.model_path`). Either way its SHA-256 must
//! equal [`MODEL_SHA256`] before it is parsed: a truncated or swapped model
//! fails loudly at start instead of silently finding no faces.

use super::{FaceBox, VisionError};
use rustface::{Detector, ImageData};
use sha2::{Digest, Sha256};

/// The vendored model, embedded.
pub const BUILTIN_MODEL: &[u8] = include_bytes!("../../models/seeta_fd_frontal_v1.0.bin");
/// SHA-256 of `seeta_fd_frontal_v1.0.bin` as shipped in rustface 0.1.7 (see models/README.md).
pub const MODEL_SHA256: &str = "c4619d066ed35e84d9a8e842860b0dff567aba0cbb139881075538761db3ff5d";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Smallest face the detector finds, in image pixels: its window. A smaller
/// face is found by enlarging the image first (rustface 0.1.7 accepts a
/// minimum face size but does not use it: its pyramid always starts at the
/// image's own scale).
pub const WINDOW_PX: u32 = 40;

/// A verified, configured face detector.
pub struct FaceDetector {
    // rustface hands out `Box<dyn Detector>` without `Send`: build the
    // detector on the thread that runs the vision stage.
    inner: Box<dyn Detector>,
}

impl std::fmt::Debug for FaceDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FaceDetector(seeta_fd_frontal_v1.0)")
    }
}

impl FaceDetector {
    /// The embedded model.
    pub fn builtin() -> Result<Self, VisionError> {
        Self::from_bytes(BUILTIN_MODEL, "built-in model")
    }

    /// Verifies `bytes` against [`MODEL_SHA256`] and builds the detector;
    /// `origin` names the model in errors.
    pub fn from_bytes(bytes: &[u8], origin: &str) -> Result<Self, VisionError> {
        let actual = hex(&Sha256::digest(bytes));
        if actual != MODEL_SHA256 {
            return Err(VisionError::ModelChecksum {
                origin: origin.to_string(),
                expected: MODEL_SHA256.to_string(),
                actual,
                size: bytes.len(),
            });
        }
        let model = rustface::read_model(std::io::Cursor::new(bytes)).map_err(|e| {
            VisionError::ModelInvalid {
                origin: origin.to_string(),
                problem: e.to_string(),
            }
        })?;
        let mut inner = rustface::create_detector_with_model(model);
        inner.set_score_thresh(2.0);
        inner.set_pyramid_scale_factor(0.8);
        inner.set_slide_window_step(4, 4);
        Ok(FaceDetector { inner })
    }

    /// Faces in a grayscale image (`width * height` bytes), highest score first.
    /// Images smaller than the detector's 40 px window have no faces.
    pub fn detect(&mut self, gray: &[u8], width: u32, height: u32) -> Vec<(FaceBox, f64)> {
        self.detect_limited(gray, width, height, None)
    }

    /// [`detect`](Self::detect) for faces from [`WINDOW_PX`] up to
    /// `max_face_px` image pixels: the pyramid stops once its window passes
    /// the largest. The search schedule runs one octave of face sizes per
    /// band, scaling each band's image so its smallest face is the window.
    pub fn detect_limited(
        &mut self,
        gray: &[u8],
        width: u32,
        height: u32,
        max_face_px: Option<u32>,
    ) -> Vec<(FaceBox, f64)> {
        let w = WINDOW_PX;
        if width < w || height < w || gray.len() < (width * height) as usize {
            return Vec::new();
        }
        // rustface caps the pyramid at min(max_face, image side); u32::MAX = no cap.
        self.inner
            .set_max_face_size(max_face_px.map_or(u32::MAX, |m| m.max(w)));
        let mut faces: Vec<(FaceBox, f64)> = self
            .inner
            .detect(&ImageData::new(gray, width, height))
            .into_iter()
            .map(|f| {
                let b = f.bbox();
                (
                    FaceBox {
                        x: b.x() as f64,
                        y: b.y() as f64,
                        w: b.width() as f64,
                        h: b.height() as f64,
                    },
                    f.score(),
                )
            })
            .collect();
        faces.sort_by(|a, b| b.1.total_cmp(&a.1));
        faces
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_model_verifies_and_finds_the_astronaut() {
        let mut det = FaceDetector::builtin().unwrap();
        let img = image::load_from_memory(crate::capture::synthetic::ASTRONAUT_PNG)
            .unwrap()
            .resize(256, 256, image::imageops::FilterType::Triangle)
            .to_luma8();
        let faces = det.detect(img.as_raw(), 256, 256);
        let (face, score) = faces.first().copied().expect("a face");
        assert!(score > 5.0, "score {score}");
        // At 256 px the face is near (86, 34), 50 px wide.
        assert!(
            (face.x - 86.0).abs() < 8.0 && (face.w - 50.0).abs() < 10.0,
            "{face:?}"
        );
    }

    #[test]
    fn a_damaged_model_is_refused_with_both_checksums() {
        let mut bytes = BUILTIN_MODEL.to_vec();
        bytes[1000] ^= 1;
        let err = FaceDetector::from_bytes(&bytes, "models/x.bin")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("models/x.bin") && err.contains(MODEL_SHA256),
            "{err}"
        );
        let err = FaceDetector::from_bytes(&[], "empty.bin")
            .unwrap_err()
            .to_string();
        assert!(err.contains("0 bytes"), "{err}");
    }

    #[test]
    fn tiny_or_blank_images_have_no_faces() {
        let mut det = FaceDetector::builtin().unwrap();
        assert!(det.detect(&[0; 100], 10, 10).is_empty());
        assert!(det.detect(&[128; 64 * 64], 64, 64).is_empty());
    }
}
