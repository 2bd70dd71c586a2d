//! Signing outgoing events and verifying them on the receiving side.
//!
//! Owns: the four signature schemes, the [`Secret`] type, and verification
//! with constant-time comparison and a timestamp tolerance. Pure: the
//! timestamp of an attempt and "now" are arguments.
//!
//! Schemes:
//! - `standard` — Standard Webhooks (standardwebhooks.com): headers
//!   `webhook-id` (the event id, the same on every retry), `webhook-timestamp`
//!   (Unix seconds of this attempt) and `webhook-signature: v1,<base64
//!   HMAC-SHA256(key, "id.timestamp.body")>`; secrets are `whsec_<base64 key>`;
//!   several secrets give several space-separated signatures (key rotation).
//! - `wms` — `X-WMS-Content-MAC: hmac-sha256=<hex HMAC-SHA256(secret, body)>` (Nuralogix WMS).
//! - `rppg` — `X-RPPG-Signature: sha256=<hex HMAC-SHA256(secret, body)>`.
//! - `api-key` — a static `x-api-key: <secret>` header.
//!
//! Invariants: a secret's bytes never appear in `Debug`, `Display` or an
//! error message; every comparison of a signature or key is constant-time
//! in the compared bytes.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use std::fmt;

type HmacSha256 = Hmac<Sha256>;

/// Default tolerance between a signature's timestamp and the receiver's clock.
pub const DEFAULT_TOLERANCE_S: u64 = 300;

/// Key material that must never be printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }

    /// The raw bytes, for computing a MAC. Do not log them.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Signature scheme of a destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scheme {
    Standard,
    Wms,
    Rppg,
    ApiKey,
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scheme::Standard => "standard",
            Scheme::Wms => "wms",
            Scheme::Rppg => "rppg",
            Scheme::ApiKey => "api-key",
        })
    }
}

/// A secret as written in configuration, parsed for its scheme.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error("the secret is empty")]
    Empty,
    #[error("a standard-webhooks secret must look like whsec_<base64>; this one does not start with whsec_")]
    MissingPrefix,
    #[error("the part after whsec_ is not valid base64")]
    BadBase64,
}

/// Parses a configured secret for `scheme` (`whsec_<base64>` for standard,
/// the literal bytes otherwise).
pub fn parse_secret(scheme: Scheme, text: &str) -> Result<Secret, SecretError> {
    if text.is_empty() {
        return Err(SecretError::Empty);
    }
    match scheme {
        Scheme::Standard => {
            let b64 = text
                .strip_prefix("whsec_")
                .ok_or(SecretError::MissingPrefix)?;
            let key = B64.decode(b64).map_err(|_| SecretError::BadBase64)?;
            if key.is_empty() {
                return Err(SecretError::Empty);
            }
            Ok(Secret(key))
        }
        _ => Ok(Secret(text.as_bytes().to_vec())),
    }
}

fn mac(key: &Secret) -> HmacSha256 {
    HmacSha256::new_from_slice(key.expose()).expect("HMAC takes keys of any length")
}

/// Hex HMAC-SHA256 of `body` with `key` (the Circadify body `signature`).
pub fn hmac_hex(key: &Secret, body: &[u8]) -> String {
    let mut m = mac(key);
    m.update(body);
    hex(&m.finalize().into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `v1,<base64>` Standard Webhooks signature of `id.timestamp.body`.
pub fn standard_signature(key: &Secret, id: &str, timestamp: u64, body: &[u8]) -> String {
    let mut m = mac(key);
    m.update(format!("{id}.{timestamp}.").as_bytes());
    m.update(body);
    format!("v1,{}", B64.encode(m.finalize().into_bytes()))
}

fn body_hmac_hex(key: &Secret, body: &[u8]) -> String {
    let mut m = mac(key);
    m.update(body);
    hex(&m.finalize().into_bytes())
}

/// The headers that sign one attempt of one event under `scheme` with
/// `secrets` (the first signs for single-signature schemes).
pub fn sign(
    scheme: Scheme,
    secrets: &[Secret],
    id: &str,
    timestamp: u64,
    body: &[u8],
) -> Vec<(&'static str, String)> {
    let Some(first) = secrets.first() else {
        return Vec::new();
    };
    match scheme {
        Scheme::Standard => {
            let sigs: Vec<String> = secrets
                .iter()
                .map(|k| standard_signature(k, id, timestamp, body))
                .collect();
            vec![
                ("webhook-id", id.to_string()),
                ("webhook-timestamp", timestamp.to_string()),
                ("webhook-signature", sigs.join(" ")),
            ]
        }
        Scheme::Wms => vec![(
            "X-WMS-Content-MAC",
            format!("hmac-sha256={}", body_hmac_hex(first, body)),
        )],
        Scheme::Rppg => vec![(
            "X-RPPG-Signature",
            format!("sha256={}", body_hmac_hex(first, body)),
        )],
        Scheme::ApiKey => vec![(
            "x-api-key",
            String::from_utf8_lossy(first.expose()).into_owned(),
        )],
    }
}

/// The MQTT 3.1.1 signed envelope: `{"headers":{name: value, ...},"body":"..."}`.
///
/// MQTT 3.1.1 has no user properties, so the Standard Webhooks headers travel
/// in the payload. `body` is the event as a JSON *string*: its UTF-8 bytes are
/// exactly the signed bytes (an embedded object would be re-serialised by
/// receivers and no longer match). Non-UTF-8 bytes never occur (events are
/// JSON) and would be replaced, failing verification rather than passing.
pub fn envelope(headers: &[(&'static str, String)], body: &[u8]) -> Vec<u8> {
    let headers: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.clone())))
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "headers": headers,
        "body": String::from_utf8_lossy(body),
    }))
    .expect("strings serialise")
}

/// Received headers as (name, value) pairs.
pub type Headers = Vec<(String, String)>;

/// Opens an [`envelope`]: the headers and the exact signed body bytes.
pub fn open_envelope(bytes: &[u8]) -> Result<(Headers, Vec<u8>), VerifyError> {
    let malformed = |problem: String| VerifyError::Malformed {
        header: "envelope",
        problem,
    };
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| malformed(format!("not JSON: {e}")))?;
    let headers = value
        .get("headers")
        .and_then(|h| h.as_object())
        .ok_or_else(|| malformed("no \"headers\" object".into()))?
        .iter()
        .map(|(k, v)| {
            v.as_str()
                .map(|s| (k.clone(), s.to_string()))
                .ok_or_else(|| malformed(format!("header {k:?} is not a string")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let body = value
        .get("body")
        .and_then(|b| b.as_str())
        .ok_or_else(|| malformed("no \"body\" string".into()))?;
    Ok((headers, body.as_bytes().to_vec()))
}

/// Why a request does not verify. Never contains secret material.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("malformed header {header}: {problem}")]
    Malformed {
        header: &'static str,
        problem: String,
    },
    #[error("timestamp {timestamp} is {age_s} s from now, outside the {tolerance_s} s tolerance (replay or clock skew)")]
    OutsideTolerance {
        timestamp: u64,
        age_s: u64,
        tolerance_s: u64,
    },
    #[error("no signature matches: the body, id or timestamp was changed, or the secret is wrong")]
    BadSignature,
}

/// Case-insensitive header lookup.
fn header<'a>(headers: &'a [(String, String)], name: &'static str) -> Result<&'a str, VerifyError> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .ok_or(VerifyError::MissingHeader(name))
}

/// Constant-time equality of two byte strings (length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn verify_hex(
    key: &Secret,
    body: &[u8],
    value: &str,
    prefix: &str,
    header_name: &'static str,
) -> Result<(), VerifyError> {
    let hex_sig = value
        .strip_prefix(prefix)
        .ok_or_else(|| VerifyError::Malformed {
            header: header_name,
            problem: format!("expected {prefix}<hex>"),
        })?;
    let bytes = (0..hex_sig.len())
        .step_by(2)
        .map(|i| {
            hex_sig
                .get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
        .filter(|b| b.len() == 32 && hex_sig.len() == 64)
        .ok_or_else(|| VerifyError::Malformed {
            header: header_name,
            problem: "expected 64 hex digits".into(),
        })?;
    let mut m = mac(key);
    m.update(body);
    m.verify_slice(&bytes)
        .map_err(|_| VerifyError::BadSignature)
}

/// Verifies a received request: `headers` as (name, value) pairs, the raw
/// `body`, the receiver's clock `now_s`. Any one of `secrets` may match
/// (key rotation). Returns the index of the secret that matched.
pub fn verify(
    scheme: Scheme,
    secrets: &[Secret],
    headers: &[(String, String)],
    body: &[u8],
    now_s: u64,
    tolerance_s: u64,
) -> Result<usize, VerifyError> {
    match scheme {
        Scheme::Standard => {
            let id = header(headers, "webhook-id")?;
            let ts_text = header(headers, "webhook-timestamp")?;
            let timestamp: u64 = ts_text.parse().map_err(|_| VerifyError::Malformed {
                header: "webhook-timestamp",
                problem: format!("{ts_text:?} is not Unix seconds"),
            })?;
            let age_s = now_s.abs_diff(timestamp);
            if age_s > tolerance_s {
                return Err(VerifyError::OutsideTolerance {
                    timestamp,
                    age_s,
                    tolerance_s,
                });
            }
            let sig_header = header(headers, "webhook-signature")?;
            let mut candidates = Vec::new();
            for item in sig_header.split(' ').filter(|s| !s.is_empty()) {
                let (version, b64) =
                    item.split_once(',').ok_or_else(|| VerifyError::Malformed {
                        header: "webhook-signature",
                        problem: format!("{item:?} is not v1,<base64>"),
                    })?;
                if version != "v1" {
                    continue; // other versions may coexist; they are not ours to check
                }
                let sig = B64.decode(b64).map_err(|_| VerifyError::Malformed {
                    header: "webhook-signature",
                    problem: "signature is not base64".into(),
                })?;
                candidates.push(sig);
            }
            if candidates.is_empty() {
                return Err(VerifyError::Malformed {
                    header: "webhook-signature",
                    problem: "no v1 signature".into(),
                });
            }
            for (i, key) in secrets.iter().enumerate() {
                for sig in &candidates {
                    let mut m = mac(key);
                    m.update(format!("{id}.{timestamp}.").as_bytes());
                    m.update(body);
                    if m.verify_slice(sig).is_ok() {
                        return Ok(i);
                    }
                }
            }
            Err(VerifyError::BadSignature)
        }
        Scheme::Wms | Scheme::Rppg => {
            let (name, prefix) = if scheme == Scheme::Wms {
                ("X-WMS-Content-MAC", "hmac-sha256=")
            } else {
                ("X-RPPG-Signature", "sha256=")
            };
            let value = header(headers, name)?;
            let mut last = VerifyError::BadSignature;
            for (i, key) in secrets.iter().enumerate() {
                match verify_hex(key, body, value, prefix, name) {
                    Ok(()) => return Ok(i),
                    Err(e @ VerifyError::Malformed { .. }) => return Err(e),
                    Err(e) => last = e,
                }
            }
            Err(last)
        }
        Scheme::ApiKey => {
            let value = header(headers, "x-api-key")?;
            secrets
                .iter()
                .position(|k| ct_eq(k.expose(), value.as_bytes()))
                .ok_or(VerifyError::BadSignature)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owned(h: Vec<(&'static str, String)>) -> Vec<(String, String)> {
        h.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    #[test]
    fn the_standard_webhooks_reference_vector_signs_and_verifies() {
        let key = parse_secret(Scheme::Standard, "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let body = br#"{"email":"test@example.com","username":"test_user"}"#;
        let sig = standard_signature(&key, "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk", 1649367553, body);
        assert_eq!(sig, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
        let headers = owned(sign(
            Scheme::Standard,
            std::slice::from_ref(&key),
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            1649367553,
            body,
        ));
        assert_eq!(
            verify(Scheme::Standard, &[key], &headers, body, 1649367600, 300),
            Ok(0)
        );
    }

    #[test]
    fn the_mqtt_311_envelope_carries_the_exact_body_and_verifies_like_a_webhook() {
        let key = parse_secret(Scheme::Standard, "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        // Quotes, backslashes and non-ASCII must survive the string round trip.
        let body = "{\"event\":\"SCAN_COMPLETED\",\"note\":\"a \\\"q\\\" \\\\ é\"}".as_bytes();
        let headers = sign(
            Scheme::Standard,
            std::slice::from_ref(&key),
            "evt_1",
            100,
            body,
        );
        let env = envelope(&headers, body);
        let (h, b) = open_envelope(&env).unwrap();
        assert_eq!(b, body);
        assert_eq!(verify(Scheme::Standard, &[key], &h, &b, 100, 300), Ok(0));
        for bad in [
            &b"[]"[..],
            b"{\"headers\":{}}",
            b"{\"headers\":{\"a\":1},\"body\":\"\"}",
            b"nope",
        ] {
            assert!(
                matches!(
                    open_envelope(bad),
                    Err(VerifyError::Malformed {
                        header: "envelope",
                        ..
                    })
                ),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn rotation_signs_with_every_secret_and_either_verifies() {
        let old = parse_secret(Scheme::Standard, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let new = parse_secret(Scheme::Standard, "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let h = owned(sign(
            Scheme::Standard,
            &[old.clone(), new.clone()],
            "evt_1",
            100,
            b"{}",
        ));
        let sig = &h.iter().find(|(k, _)| k == "webhook-signature").unwrap().1;
        assert_eq!(sig.split(' ').count(), 2);
        assert_eq!(verify(Scheme::Standard, &[new], &h, b"{}", 100, 300), Ok(0));
        assert_eq!(verify(Scheme::Standard, &[old], &h, b"{}", 100, 300), Ok(0));
    }

    #[test]
    fn tampering_replays_and_malformed_headers_are_rejected_with_the_reason() {
        let key = parse_secret(Scheme::Standard, "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let h = owned(sign(
            Scheme::Standard,
            std::slice::from_ref(&key),
            "evt_1",
            1000,
            b"{\"a\":1}",
        ));
        let k = [key];
        assert_eq!(
            verify(Scheme::Standard, &k, &h, b"{\"a\":2}", 1000, 300),
            Err(VerifyError::BadSignature)
        );
        assert!(matches!(
            verify(Scheme::Standard, &k, &h, b"{\"a\":1}", 1000 + 301, 300),
            Err(VerifyError::OutsideTolerance { age_s: 301, .. })
        ));
        assert!(matches!(
            verify(Scheme::Standard, &k, &h, b"{\"a\":1}", 1000 - 400, 300),
            Err(VerifyError::OutsideTolerance { .. })
        ));
        let mut bad = h.clone();
        bad[2].1 = "v1 no-comma".into();
        assert!(matches!(
            verify(Scheme::Standard, &k, &bad, b"{\"a\":1}", 1000, 300),
            Err(VerifyError::Malformed { .. })
        ));
        let mut bad = h.clone();
        bad[1].1 = "yesterday".into();
        assert!(matches!(
            verify(Scheme::Standard, &k, &bad, b"{\"a\":1}", 1000, 300),
            Err(VerifyError::Malformed { .. })
        ));
        assert_eq!(
            verify(Scheme::Standard, &k, &h[..2], b"{\"a\":1}", 1000, 300),
            Err(VerifyError::MissingHeader("webhook-signature"))
        );
        // A different id is a different message.
        let mut other = h.clone();
        other[0].1 = "evt_2".into();
        assert_eq!(
            verify(Scheme::Standard, &k, &other, b"{\"a\":1}", 1000, 300),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn wms_and_rppg_schemes_are_hex_hmacs_of_the_body() {
        let key = parse_secret(Scheme::Wms, "mac-secret").unwrap();
        let h = sign(Scheme::Wms, std::slice::from_ref(&key), "evt", 1, b"hello");
        assert_eq!(h[0].0, "X-WMS-Content-MAC");
        // HMAC-SHA256("mac-secret", "hello"), computed independently.
        let mut m = HmacSha256::new_from_slice(b"mac-secret").unwrap();
        m.update(b"hello");
        assert_eq!(
            h[0].1,
            format!("hmac-sha256={}", hex(&m.finalize().into_bytes()))
        );
        let h = owned(h);
        assert_eq!(
            verify(Scheme::Wms, std::slice::from_ref(&key), &h, b"hello", 0, 0),
            Ok(0)
        );
        assert_eq!(
            verify(Scheme::Wms, std::slice::from_ref(&key), &h, b"hellO", 0, 0),
            Err(VerifyError::BadSignature)
        );
        let r = owned(sign(
            Scheme::Rppg,
            std::slice::from_ref(&key),
            "evt",
            1,
            b"hello",
        ));
        assert!(r[0].1.starts_with("sha256="));
        assert_eq!(
            verify(Scheme::Rppg, std::slice::from_ref(&key), &r, b"hello", 0, 0),
            Ok(0)
        );
        let mut short = r.clone();
        short[0].1 = "sha256=abcd".into();
        assert!(matches!(
            verify(Scheme::Rppg, &[key], &short, b"hello", 0, 0),
            Err(VerifyError::Malformed { .. })
        ));
    }

    #[test]
    fn api_keys_compare_exactly() {
        let key = parse_secret(Scheme::ApiKey, "k-123").unwrap();
        let h = owned(sign(
            Scheme::ApiKey,
            std::slice::from_ref(&key),
            "e",
            0,
            b"",
        ));
        assert_eq!(
            verify(Scheme::ApiKey, std::slice::from_ref(&key), &h, b"", 0, 0),
            Ok(0)
        );
        let wrong = vec![("X-API-KEY".to_string(), "k-124".to_string())];
        assert_eq!(
            verify(Scheme::ApiKey, &[key], &wrong, b"", 0, 0),
            Err(VerifyError::BadSignature)
        );
        assert!(ct_eq(b"abc", b"abc") && !ct_eq(b"abc", b"abd") && !ct_eq(b"abc", b"ab"));
    }

    #[test]
    fn secrets_are_redacted_and_bad_secrets_explained() {
        let s = parse_secret(Scheme::Wms, "top-secret-value").unwrap();
        assert_eq!(format!("{s:?}"), "Secret([redacted])");
        assert_eq!(
            parse_secret(Scheme::Standard, "C2FVsBQI"),
            Err(SecretError::MissingPrefix)
        );
        assert_eq!(
            parse_secret(Scheme::Standard, "whsec_***"),
            Err(SecretError::BadBase64)
        );
        assert_eq!(parse_secret(Scheme::Rppg, ""), Err(SecretError::Empty));
        let e = VerifyError::BadSignature.to_string();
        assert!(!e.contains("top-secret"));
    }
}
