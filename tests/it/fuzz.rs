//! Hostile input: every parser that reads bytes from outside (YUV4MPEG2,
//! RGB trace CSV, the configuration, `--input` specs, signature headers and
//! envelopes, camera buffers) is fed random and mutated-valid input. The
//! property is always the same: a value or a clear error, never a panic, a
//! hang or an allocation sized by an attacker.
//!
//! Bounded: 2,048 cases per property in the test run (under a second for
//! all of them here). For a longer run by hand:
//! `PROPTEST_CASES=1000000 cargo test --release --test it fuzz`.
//! Every crasher found becomes a named regression test at the end of this file.

use proptest::prelude::*;
use rppg_agent::capture::{self, rgb_csv, y4m, Frame, FrameSource, SourceSpec};
use rppg_agent::config::Config;
use rppg_agent::delivery::signing::{self, Scheme, Secret};
use std::io::Cursor;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2048),
        // Crashers become named tests below, not files in the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// `valid` with `edits` applied: (position, kind, byte) flips, inserts,
/// deletes, and a final truncation. Mutating a valid input reaches the deep
/// parts of a parser that random bytes never get past the first check of.
fn mutate(valid: &[u8], edits: &[(usize, u8, u8)], cut: Option<usize>) -> Vec<u8> {
    let mut out = valid.to_vec();
    for &(pos, kind, byte) in edits {
        let at = if out.is_empty() {
            0
        } else {
            pos % (out.len() + 1)
        };
        match kind % 3 {
            0 if at < out.len() => out[at] = byte,
            1 => out.insert(at, byte),
            _ if at < out.len() => {
                out.remove(at);
            }
            _ => {}
        }
    }
    if let Some(c) = cut {
        out.truncate(c % (out.len() + 1));
    }
    out
}

fn edits() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    prop::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 0..8)
}

fn valid_y4m() -> Vec<u8> {
    let mut frames = Vec::new();
    for i in 0..3u8 {
        let mut f = Frame::default();
        f.reshape_rgb(8, 6);
        f.rgb_mut().iter_mut().for_each(|v| *v = i.wrapping_mul(40));
        frames.push(f);
    }
    y4m::encode_420(&frames, 30)
}

/// Reads a whole stream; the number of frames is bounded by the input size.
fn read_y4m(bytes: Vec<u8>) -> Result<usize, String> {
    let mut src = y4m::Y4mSource::new(Box::new(Cursor::new(bytes)), "fuzz".into())
        .map_err(|e| e.to_string())?;
    let mut frame = Frame::default();
    let mut n = 0;
    while src.next_frame(&mut frame).map_err(|e| e.to_string())? {
        n += 1;
        assert!(n < 10_000, "more frames than bytes");
    }
    Ok(n)
}

const VALID_CSV: &str = "time,R,G,B\n0,100.5,80,60\n33,100.7,80.2,60.1\n66,100.6,80.1,60\n";

const VALID_CONFIG: &str = r#"
[outbox]
path = "/tmp/x"
max_bytes = 1000000
[delivery]
probe_initial_s = 0.5
[[webhook]]
name = "a"
url = "https://example.com/h"
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
retry_schedule_s = [0, 5, 30]
[[mqtt]]
name = "m"
host = "broker.example"
port = 8883
topic = "t/{event}"
"#;

proptest! {
    #![proptest_config(config())]

    #[test]
    fn y4m_reader_survives_random_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = read_y4m(bytes);
    }

    #[test]
    fn y4m_reader_survives_mutated_streams(e in edits(), cut in any::<Option<usize>>()) {
        let _ = read_y4m(mutate(&valid_y4m(), &e, cut));
    }

    #[test]
    fn y4m_header_parser_survives_any_text(line in ".{0,80}", tail in "( ([WHFCIAX]|.)[0-9:a-zé]{0,12}){0,6}") {
        let _ = y4m::Header::parse(&line, "fuzz");
        let _ = y4m::Header::parse(&format!("YUV4MPEG2{tail}"), "fuzz");
    }

    #[test]
    fn rgb_csv_reader_survives_random_and_mutated_input(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        e in edits(),
        cut in any::<Option<usize>>(),
        fps in prop::option::of(-1.0e3f64..1.0e3),
    ) {
        let _ = rgb_csv::read(Cursor::new(bytes), "fuzz", fps);
        if let Ok(t) = rgb_csv::read(Cursor::new(mutate(VALID_CSV.as_bytes(), &e, cut)), "fuzz", fps) {
            // What it accepts keeps its documented invariants.
            prop_assert_eq!(t.t_s.len(), t.rgb.len());
            prop_assert!(t.t_s.windows(2).all(|w| w[0] <= w[1]));
            prop_assert!(t.rgb.iter().flatten().all(|v| v.is_finite()));
        }
    }

    #[test]
    fn config_loader_survives_mutated_files_and_environment(
        e in edits(),
        cut in any::<Option<usize>>(),
        var in "RPPG_[A-Z_]{0,24}",
        value in ".{0,16}",
    ) {
        let text = String::from_utf8_lossy(&mutate(VALID_CONFIG.as_bytes(), &e, cut)).into_owned();
        if let Err(err) = Config::load(Some(("fuzz.toml", &text)), std::iter::once((var, value))) {
            // Every problem names where it is.
            prop_assert!(!err.to_string().trim().is_empty());
        }
    }

    #[test]
    fn input_specs_survive_any_text(kind in "(synthetic|camera|frames|)", rest in "[:,=a-z0-9.\\-é]{0,40}") {
        let _ = format!("{kind}{rest}").parse::<SourceSpec>();
        let _ = rest.parse::<SourceSpec>();
    }

    #[test]
    fn signature_verification_survives_any_headers(
        names in prop::collection::vec("(webhook-id|webhook-timestamp|webhook-signature|X-WMS-Content-MAC|X-RPPG-Signature|x-api-key|[a-z-]{1,8})", 0..5),
        values in prop::collection::vec(".{0,60}", 5),
        body in prop::collection::vec(any::<u8>(), 0..64),
        now in any::<u64>(),
        tolerance in any::<u64>(),
    ) {
        let headers: Vec<(String, String)> =
            names.into_iter().zip(values).collect();
        let secrets = [Secret::new(b"0123456789abcdef".to_vec())];
        for scheme in [Scheme::Standard, Scheme::Wms, Scheme::Rppg, Scheme::ApiKey] {
            // Random headers never verify.
            prop_assert!(signing::verify(scheme, &secrets, &headers, &body, now, tolerance).is_err());
        }
    }

    #[test]
    fn envelopes_and_secrets_survive_random_and_mutated_input(
        bytes in prop::collection::vec(any::<u8>(), 0..128),
        e in edits(),
        text in ".{0,64}",
    ) {
        let _ = signing::open_envelope(&bytes);
        let valid = signing::envelope(
            &signing::sign(Scheme::Standard, &[Secret::new(b"k".to_vec())], "msg_1", 1_700_000_000, b"{}"),
            b"{}",
        );
        let _ = signing::open_envelope(&mutate(&valid, &e, None));
        for scheme in [Scheme::Standard, Scheme::Wms, Scheme::Rppg, Scheme::ApiKey] {
            let _ = signing::parse_secret(scheme, &text);
        }
    }

    #[test]
    fn a_signed_body_verifies_and_any_tampered_byte_does_not(
        body in prop::collection::vec(any::<u8>(), 1..200),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
        ts in 1_000_000u64..4_000_000_000,
    ) {
        let secrets = [Secret::new(b"0123456789abcdef0123".to_vec())];
        for scheme in [Scheme::Standard, Scheme::Wms, Scheme::Rppg] {
            let headers: Vec<(String, String)> = signing::sign(scheme, &secrets, "msg_p", ts, &body)
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            prop_assert_eq!(signing::verify(scheme, &secrets, &headers, &body, ts, 300), Ok(0));
            let mut tampered = body.clone();
            let i = flip.index(tampered.len());
            tampered[i] ^= 1 << bit;
            prop_assert!(signing::verify(scheme, &secrets, &headers, &tampered, ts, 300).is_err());
        }
        // Standard Webhooks also binds the time: a replay outside the tolerance fails.
        let headers: Vec<(String, String)> = signing::sign(Scheme::Standard, &secrets, "msg_p", ts, &body)
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        prop_assert!(signing::verify(Scheme::Standard, &secrets, &headers, &body, ts + 301, 300).is_err());
        prop_assert_eq!(signing::verify(Scheme::Standard, &secrets, &headers, &body, ts + 300, 300), Ok(0));
    }

    #[test]
    fn camera_buffers_of_any_content_decode_or_are_refused(
        bytes in prop::collection::vec(any::<u8>(), 0..256),
        w in 0u32..40,
        h in 0u32..40,
        format in 0u8..3,
    ) {
        let format = match format {
            0 => capture::camera::PixelFormat::Mjpeg,
            1 => capture::camera::PixelFormat::Yuyv,
            _ => capture::camera::PixelFormat::Rgb24,
        };
        let mut frame = Frame::default();
        if capture::camera::decode(format, &bytes, w, h, &mut frame).is_ok() {
            prop_assert_eq!(frame.data().len(), frame.layout().bytes(frame.width, frame.height));
            prop_assert_eq!(frame.to_rgb().len(), frame.width as usize * frame.height as usize * 3);
        }
    }

    #[test]
    fn still_images_of_any_damage_decode_within_the_pixel_cap_or_are_refused(
        e in edits(),
        cut in any::<Option<usize>>(),
        png in any::<bool>(),
    ) {
        let mut valid = Vec::new();
        let format = if png { image::ImageFormat::Png } else { image::ImageFormat::Jpeg };
        image::RgbImage::from_fn(24, 16, |x, y| image::Rgb([x as u8 * 9, y as u8 * 13, 77]))
            .write_to(&mut std::io::Cursor::new(&mut valid), format)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(if png { "f.png" } else { "f.jpg" });
        std::fs::write(&path, mutate(&valid, &e, cut)).unwrap();
        if let Ok(img) = capture::decode_still(&path, 1 << 20) {
            prop_assert!(img.width() as u64 * img.height() as u64 <= 1 << 20);
        }
    }

    #[test]
    fn a_redacted_url_never_shows_its_credentials_or_query_values(
        user in "[a-zA-Z0-9]{1,12}",
        pass in "[a-zA-Z0-9]{6,16}",
        value in "[a-zA-Z0-9]{6,16}",
        host in "[a-z]{1,10}(\\.[a-z]{2,5})?",
        path in "(/[a-z0-9._-]{0,8}){0,3}",
        scheme in "(https?|ftp|)",
        junk in "[ :@?#/]{0,3}",
    ) {
        let url = format!("{scheme}://{user}:PW{pass}@{host}{path}{junk}?token=QV{value}&k=QV{value}");
        let shown = rppg_agent::delivery::redact_url(&url);
        prop_assert!(!shown.contains(&format!("PW{pass}")), "{url} -> {shown}");
        prop_assert!(!shown.contains(&format!("QV{value}")), "{url} -> {shown}");
    }
}

// Regression tests for what the fuzzing found.

#[test]
fn a_y4m_header_field_starting_with_a_multibyte_character_is_an_error_not_a_panic() {
    // Found by y4m_reader_survives_mutated_streams: the header parser split
    // each field after its first byte, inside the character U+FFFD.
    let err = y4m::Header::parse("YUV4MPEG2 W8 H6 \u{fffd}1:1", "fuzz").unwrap_err();
    assert!(err.to_string().contains("unknown header field"), "{err}");
    let err = read_y4m(b"YUV4MPEG2 W8 H6 F30:1 \xe9x\n".to_vec()).unwrap_err();
    assert!(err.contains("unknown header field"), "{err}");
}
