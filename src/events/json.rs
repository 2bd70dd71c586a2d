//! The one JSON writer for bytes that leave the device (envelopes, FHIR
//! bundles, Circadify bodies).
//!
//! Owns: how numbers and strings are spelled, so that receivers which do
//! not verify the raw bytes still verify. Two common receiver shortcuts
//! are served:
//! - Node receivers that sign `JSON.stringify(req.body)` instead of the raw
//!   body: every number is written as ECMAScript's `Number::toString`
//!   writes it (`30` not `30.0`, `1e-7`, `1e+21`, `-0` as `0`), with
//!   no whitespace, so `JSON.stringify(JSON.parse(bytes))` gives the bytes
//!   back;
//! - receivers that hash the body as ASCII: every character outside ASCII
//!   is written as a `\u` escape of four hex digits (a UTF-16 surrogate pair above
//!   U+FFFF), so the body is pure ASCII.
//!
//! The two agree whenever the text is ASCII, which all of the agent's own
//! text is (codes, ids, messages; `device.id`, `externalId` and `subject`
//! are limited to printable ASCII). Non-ASCII text can only come from the
//! machine (a file name in an error message): it is escaped, and
//! `JSON.stringify` would write it back unescaped, so a receiver that
//! re-serialises fails on exactly those events. Verifying the raw bytes,
//! as the examples do, always works.
//!
//! Invariant: the output parses to the same value as `serde_json` writes
//! (tested against serde_json and, in the integration tests, against Node).

use serde::Serialize;
use serde_json::ser::{CharEscape, Formatter, Serializer};
use std::io::{self, Write};

/// `value` as compact JSON, numbers as ECMAScript writes them, ASCII only.
pub fn to_vec<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(512);
    let mut ser = Serializer::with_formatter(&mut out, Canonical);
    value
        .serialize(&mut ser)
        .expect("JSON values serialise into memory");
    out
}

/// The formatter behind [`to_vec`].
struct Canonical;

impl Formatter for Canonical {
    fn write_f64<W: ?Sized + Write>(&mut self, w: &mut W, value: f64) -> io::Result<()> {
        w.write_all(es_number(value).as_bytes())
    }

    fn write_f32<W: ?Sized + Write>(&mut self, w: &mut W, value: f32) -> io::Result<()> {
        w.write_all(es_number(f64::from(value)).as_bytes())
    }

    fn write_string_fragment<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        fragment: &str,
    ) -> io::Result<()> {
        let mut start = 0;
        for (i, c) in fragment.char_indices() {
            if c.is_ascii() {
                continue;
            }
            w.write_all(&fragment.as_bytes()[start..i])?;
            let mut units = [0u16; 2];
            for u in c.encode_utf16(&mut units) {
                write!(w, "\\u{u:04x}")?;
            }
            start = i + c.len_utf8();
        }
        w.write_all(&fragment.as_bytes()[start..])
    }

    fn write_char_escape<W: ?Sized + Write>(
        &mut self,
        w: &mut W,
        escape: CharEscape,
    ) -> io::Result<()> {
        // The same escapes JSON.stringify writes (lower-case hex).
        let s: &[u8] = match escape {
            CharEscape::Quote => b"\\\"",
            CharEscape::ReverseSolidus => b"\\\\",
            CharEscape::Solidus => b"/",
            CharEscape::Backspace => b"\\b",
            CharEscape::FormFeed => b"\\f",
            CharEscape::LineFeed => b"\\n",
            CharEscape::CarriageReturn => b"\\r",
            CharEscape::Tab => b"\\t",
            CharEscape::AsciiControl(c) => return write!(w, "\\u{c:04x}"),
        };
        w.write_all(s)
    }
}

/// ECMAScript `Number::toString(10)` of a finite `v` (ECMA-262 §6.1.6.1.20):
/// the shortest digits that read back as `v`, placed by the exponent.
pub fn es_number(v: f64) -> String {
    if v == 0.0 {
        return "0".into(); // -0 too, as JSON.stringify writes it
    }
    if !v.is_finite() {
        return "null".into(); // serde_json writes these as null before us
    }
    // Rust's `{:e}` is the shortest round-trip form, e.g. "-1.2345e-7".
    let sci = format!("{:e}", v.abs());
    let (mantissa, exp) = sci.split_once('e').expect("{:e} has an exponent");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let k = digits.len() as i32;
    let n = exp.parse::<i32>().expect("{:e} exponent is an integer") + 1;
    let sign = if v < 0.0 { "-" } else { "" };
    let body = if k <= n && n <= 21 {
        format!("{digits}{}", "0".repeat((n - k) as usize))
    } else if 0 < n && n <= 21 {
        format!("{}.{}", &digits[..n as usize], &digits[n as usize..])
    } else if -6 < n && n <= 0 {
        format!("0.{}{digits}", "0".repeat((-n) as usize))
    } else {
        let e = n - 1;
        let e = if e >= 0 {
            format!("+{e}")
        } else {
            e.to_string()
        };
        if k == 1 {
            format!("{digits}e{e}")
        } else {
            format!("{}.{}e{e}", &digits[..1], &digits[1..])
        }
    };
    format!("{sign}{body}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn numbers_are_spelt_as_ecmascript_spells_them() {
        // Expected strings are what `String(x)` prints in Node 18.
        for (v, js) in [
            (30.0, "30"),
            (-0.0, "0"),
            (72.3, "72.3"),
            (0.1, "0.1"),
            (1e-7, "1e-7"),
            (0.000001, "0.000001"),
            (1.5e-6, "0.0000015"),
            (123456789012345680000.0, "123456789012345680000"),
            (1e21, "1e+21"),
            (1.5e300, "1.5e+300"),
            (1152921504606846976.0, "1152921504606847000"),
            (-2.5, "-2.5"),
            (5e-324, "5e-324"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
        ] {
            assert_eq!(es_number(v), js, "{v:e}");
        }
    }

    #[test]
    fn text_is_ascii_with_the_escapes_json_stringify_uses_and_parses_back_unchanged() {
        let v = json!({
            "a": "Zürich ☃ 😀",
            "b": "quote \" back \\ nl \n tab \t ctl \u{1} del \u{7f} slash /",
            "c": [30.0, 0.5, -1, 12345678901234u64],
            "d": {"nested": 1e-9}
        });
        let bytes = to_vec(&v);
        assert!(bytes.is_ascii(), "{}", String::from_utf8_lossy(&bytes));
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains(r"Z\u00fcrich \u2603 \ud83d\ude00"), "{text}");
        assert!(
            text.contains(r#"quote \" back \\ nl \n tab \t ctl \u0001 del "#),
            "{text}"
        );
        assert!(text.contains(r#""c":[30,0.5,-1,12345678901234]"#), "{text}");
        assert!(text.contains(r#""nested":1e-9"#), "{text}");
        let back: Value = serde_json::from_slice(&bytes).unwrap();
        assert!(same(&back, &v), "{back} vs {v}");
    }

    /// Equal as JavaScript sees JSON: numbers by value (30 is 30.0).
    fn same(a: &Value, b: &Value) -> bool {
        match (a, b) {
            (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
            (Value::Array(x), Value::Array(y)) => {
                x.len() == y.len() && x.iter().zip(y).all(|(p, q)| same(p, q))
            }
            (Value::Object(x), Value::Object(y)) => {
                x.len() == y.len() && x.iter().all(|(k, p)| y.get(k).is_some_and(|q| same(p, q)))
            }
            _ => a == b,
        }
    }
}
