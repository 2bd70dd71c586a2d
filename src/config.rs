//! The one typed configuration.
//!
//! Owns: the layering (embedded `config/default.toml`, then a file, then
//! `RPPG_<SECTION>_<KEY>` environment variables), validation, and the
//! conversion into each stage's settings.
//!
//! Invariants: every key exists in `config/default.toml` with a comment; a
//! key that is not there is an error (with a suggestion), never ignored; a
//! value of the wrong type or out of range is an error that names the key,
//! the problem and the fix; all problems are reported at once; loading
//! never panics. Loading is pure: the file text and the environment are
//! passed in.

use crate::delivery::mqtt::{MqttDestination, MqttProtocol, MqttTls};
use crate::delivery::policy::RetryPolicy;
use crate::delivery::signing::{parse_secret, Scheme, Secret};
use crate::delivery::webhook::{BodyFormat, WebhookDestination};
use crate::events::EventKind;
use crate::measurement::MeasurementConfig;
use crate::signal::{Method, SignalConfig};
use crate::vision::VisionConfig;
use serde::Deserialize;
use std::fmt;
use std::time::Duration;
use toml::{Table, Value};

/// The embedded, commented defaults.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// The longest timeout, drain or scan wait a key may name, in seconds.
const HOUR: f64 = 3600.0;
/// The longest probe wait, in seconds.
const DAY: f64 = 86_400.0;
/// The longest wait of a retry schedule: 30 days.
pub const MAX_RETRY_WAIT_S: f64 = 30.0 * DAY;
/// The longest `max_age_s`: 10 years.
const MAX_AGE_S: f64 = 3650.0 * DAY;
/// The highest resampling rate: a 240 fps camera.
const MAX_RESAMPLE_HZ: f64 = 240.0;

/// Whether a configured device id is safe inside MQTT topic levels and
/// client ids: no wildcard (`#`, `+`), no level separator, no spaces.
fn is_device_id(id: &str) -> bool {
    id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

/// A number as people write it: 1e20, not twenty-one digits.
fn show(v: f64) -> String {
    if v != 0.0 && !(1e-4..1e9).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        v.to_string()
    }
}

/// Environment variables that are not config keys.
const NON_KEY_ENV: [&str; 2] = ["RPPG_CONFIG", "RPPG_LOG"];

/// Names of the environment variables that the configuration reads secrets
/// from: every destination's `secret_env` and `password_env`, and `api.token_env`.
fn secret_variables(merged: &Table) -> Vec<String> {
    let mut out = Vec::new();
    for section in ["webhook", "mqtt"] {
        let entries = merged.get(section).and_then(Value::as_array);
        for entry in entries.into_iter().flatten().filter_map(Value::as_table) {
            if let Some(list) = entry.get("secret_env").and_then(Value::as_array) {
                out.extend(list.iter().filter_map(Value::as_str).map(str::to_string));
            }
            for key in ["password_env", "api_key_env"] {
                if let Some(v) = entry.get(key).and_then(Value::as_str) {
                    out.push(v.to_string());
                }
            }
        }
    }
    let token = merged
        .get("api")
        .and_then(|a| a.get("token_env"))
        .and_then(Value::as_str);
    out.extend(token.map(str::to_string));
    out
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub device: DeviceConfig,
    pub outbox: OutboxSection,
    pub delivery: DeliverySection,
    /// Parsed and validated separately, one destination at a time.
    #[serde(skip)]
    pub webhook: Vec<WebhookDestination>,
    /// Parsed and validated separately, one broker at a time.
    #[serde(skip)]
    pub mqtt: Vec<MqttDestination>,
    pub scan: ScanConfig,
    pub vision: VisionSection,
    pub signal: SignalSection,
    pub fhir: FhirSection,
    pub run: RunSection,
    pub api: ApiSection,
    /// What loading noticed but did not refuse (an environment variable
    /// that looks like a misspelt key); the caller prints them.
    #[serde(skip)]
    pub warnings: Vec<Problem>,
}

/// `[run]`: the kiosk daemon (`rppg-agent run`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    /// The source of every scan (as `scan --input`).
    pub input: String,
    /// Pace file and synthetic sources at their frame rate, as a camera would.
    pub realtime: bool,
    /// Start a scan by itself when a face has been steady this long (0 = only on request).
    pub auto_start_steady_s: f64,
    /// After a scan, wait this long before auto-starting another.
    pub auto_start_cooldown_s: f64,
    /// On SIGTERM/SIGINT, how long to keep delivering before exiting.
    pub shutdown_drain_s: f64,
}

/// `[api]`: the local HTTP API of the daemon.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    /// Address to listen on; loopback by default.
    pub listen: String,
    /// Environment variable holding a bearer token (required off loopback).
    pub token_env: String,
    /// Browser origins allowed besides this machine's own pages.
    pub allowed_origins: Vec<String>,
}

impl ApiSection {
    /// The address to listen on, or (key, problem, fix): it must parse, and
    /// an address beyond loopback needs a token.
    pub fn address(&self) -> Result<std::net::SocketAddr, (&'static str, String, &'static str)> {
        let a: std::net::SocketAddr = self.listen.parse().map_err(|_| {
            (
                "api.listen",
                format!("{:?} is not an address:port", self.listen),
                "use e.g. \"127.0.0.1:8686\"",
            )
        })?;
        if !a.ip().is_loopback() && self.token_env.is_empty() {
            return Err((
                "api.token_env",
                format!("the API listens on {a}, beyond this machine, without a token"),
                "set token_env to a variable holding a long random token, or listen on 127.0.0.1",
            ));
        }
        Ok(a)
    }
}

/// `[fhir]`: defaults for FHIR output.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FhirSection {
    /// The Observation subject when the scan request names none.
    pub subject: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    pub id: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxSection {
    pub path: String,
    pub max_bytes: u64,
    pub cache_capacity_bytes: u64,
    pub retention_s: u64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliverySection {
    pub drain_timeout_s: f64,
    pub probe_initial_s: f64,
    pub probe_max_s: f64,
}

fn default_schemes() -> Vec<String> {
    vec!["standard".into()]
}
fn default_timeout_s() -> f64 {
    5.0
}
fn default_connect_timeout_s() -> f64 {
    3.0
}
fn default_schedule_s() -> Vec<f64> {
    vec![0.0, 5.0, 30.0, 300.0, 1800.0, 7200.0]
}
fn default_jitter() -> f64 {
    0.2
}
fn default_in_flight() -> usize {
    4
}

/// One `[[webhook]]` table as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct WebhookEntry {
    name: String,
    url: String,
    #[serde(default)]
    secrets: Vec<String>,
    #[serde(default)]
    secret_env: Vec<String>,
    /// The `api-key` scheme's key, sent in clear (`x-api-key`): its own
    /// secret, never one of the signing secrets.
    #[serde(default)]
    api_key: String,
    #[serde(default)]
    api_key_env: String,
    /// Parsed by hand so an unknown scheme is one problem among others.
    #[serde(default = "default_schemes")]
    schemes: Vec<String>,
    #[serde(default)]
    events: Vec<String>,
    #[serde(default = "default_timeout_s")]
    timeout_s: f64,
    #[serde(default = "default_connect_timeout_s")]
    connect_timeout_s: f64,
    #[serde(default = "default_schedule_s")]
    retry_schedule_s: Vec<f64>,
    #[serde(default = "default_jitter")]
    jitter: f64,
    #[serde(default)]
    max_age_s: f64,
    #[serde(default)]
    retry_client_errors: bool,
    #[serde(default)]
    allow_insecure: bool,
    #[serde(default = "default_in_flight")]
    max_in_flight: usize,
    #[serde(default = "default_format")]
    format: String,
}

fn default_format() -> String {
    "wms".into()
}

fn default_topic() -> String {
    "rppg/{deviceId}/events/{event}".into()
}
fn default_keep_alive_s() -> f64 {
    30.0
}
fn default_ack_timeout_s() -> f64 {
    10.0
}
fn default_protocol() -> String {
    "5".into()
}
fn default_mqtt_in_flight() -> usize {
    32
}

/// One `[[mqtt]]` table as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct MqttEntry {
    name: String,
    host: String,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default = "default_protocol")]
    protocol: String,
    #[serde(default)]
    ca_file: String,
    #[serde(default)]
    client_cert_file: String,
    #[serde(default)]
    client_key_file: String,
    #[serde(default)]
    allow_insecure: bool,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password_env: String,
    #[serde(default)]
    client_id: String,
    #[serde(default = "default_topic")]
    topic: String,
    #[serde(default)]
    secrets: Vec<String>,
    #[serde(default)]
    secret_env: Vec<String>,
    #[serde(default)]
    events: Vec<String>,
    #[serde(default = "default_schedule_s")]
    retry_schedule_s: Vec<f64>,
    #[serde(default = "default_jitter")]
    jitter: f64,
    #[serde(default)]
    max_age_s: f64,
    #[serde(default = "default_keep_alive_s")]
    keep_alive_s: f64,
    #[serde(default = "default_ack_timeout_s")]
    ack_timeout_s: f64,
    #[serde(default = "default_mqtt_in_flight")]
    max_in_flight: usize,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScanConfig {
    pub duration_s: f64,
    pub max_duration_s: f64,
    pub extend_min_snr_db: f64,
    pub extended_low_snr_db: f64,
    pub min_duration_s: f64,
    pub face_init_timeout_s: f64,
    pub face_lost_timeout_s: f64,
    pub min_face_px: f64,
    pub min_skin_pixels: u32,
    pub dark_luma: f64,
    pub dark_timeout_s: f64,
    pub max_motion_face_widths_per_s: f64,
    pub motion_timeout_s: f64,
    pub low_snr_db: f64,
    pub low_snr_timeout_s: f64,
    pub intermediate_interval_s: f64,
    pub first_result_after_s: f64,
    pub hint_interval_s: f64,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisionSection {
    pub model_path: String,
    pub detect_interval_s: f64,
    pub detect_interval_max_s: f64,
    pub search_min_face_px: f64,
    pub search_width_px: u32,
    pub search_cycle_frames: u32,
    pub idle_rescan_s: f64,
    pub track_face_px: u32,
    pub correction_time_s: f64,
    pub redetect_tolerance: f64,
    pub max_missed_detections: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalSection {
    pub method: Method,
    pub resample_hz: f64,
    pub projection_window_s: f64,
    pub hr_band_hz: [f64; 2],
    pub rr_band_hz: [f64; 2],
    pub filter_order: usize,
    pub hr_window_s: f64,
    pub rr_min_window_s: f64,
    pub confidence_mid_db: f64,
    pub confidence_slope_db: f64,
    pub hr_min_confidence: f64,
    pub hrv_min_confidence: f64,
    pub rr_min_confidence: f64,
    pub contact_snr_db: f64,
    pub contact_hrv_min_confidence: f64,
}

/// One thing wrong with the configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Dotted key, e.g. `scan.duration_s`.
    pub key: String,
    /// Where the value came from (file name or environment variable).
    pub origin: String,
    pub problem: String,
    pub fix: String,
}

/// Every problem found while loading.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "invalid configuration ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            write!(
                f,
                "\n  {} ({}): {}\n    fix: {}",
                p.key, p.origin, p.problem, p.fix
            )?;
        }
        Ok(())
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a number",
        Value::Boolean(_) => "true or false",
        Value::Datetime(_) => "a date",
        Value::Array(_) => "an array",
        Value::Table(_) => "a table",
    }
}

/// Whether `user` may replace `default` (integers are accepted for floats).
fn same_type(default: &Value, user: &Value) -> bool {
    match (default, user) {
        (Value::Float(_), Value::Integer(_)) => true,
        (Value::Array(d), Value::Array(u)) => {
            u.len() == d.len() && d.iter().zip(u).all(|(a, b)| same_type(a, b))
        }
        _ => std::mem::discriminant(default) == std::mem::discriminant(user),
    }
}

/// Converts integers to floats where the default is a float.
fn coerce(default: &Value, user: Value) -> Value {
    match (default, user) {
        (Value::Float(_), Value::Integer(i)) => Value::Float(i as f64),
        (Value::Array(d), Value::Array(u)) => {
            Value::Array(d.iter().zip(u).map(|(a, b)| coerce(a, b)).collect())
        }
        (_, u) => u,
    }
}

/// Edit distance, for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

fn suggest<'a>(name: &str, known: impl Iterator<Item = &'a String>) -> String {
    let best = known.map(|k| (distance(name, k), k)).min();
    match best {
        Some((d, k)) if d <= 3 => format!("did you mean `{k}`? (see `rppg-agent config default`)"),
        _ => "remove it; `rppg-agent config default` lists every key".to_string(),
    }
}

/// The environment variable of a configuration key that `var` looks like
/// a misspelling of (edit distance at most 2), if any.
fn misspelt_key(var: &str, defaults: &Table) -> Option<String> {
    let names = defaults.iter().filter_map(|(section, v)| {
        let keys = v.as_table()?.keys();
        Some(keys.map(move |k| format!("RPPG_{section}_{k}").to_ascii_uppercase()))
    });
    names
        .flatten()
        .map(|name| (distance(&var.to_ascii_uppercase(), &name), name))
        .filter(|(d, _)| *d <= 2)
        .min()
        .map(|(_, name)| name)
}

/// Deserialises the merged table, recording every value serde refuses (an
/// unknown variant, a number out of its type) rather than only the first:
/// each refused value is put back to its default and the rest tried again.
fn deserialize_all(
    mut merged: Table,
    defaults: &Table,
    problems: &mut Vec<Problem>,
) -> Option<Config> {
    let mut failed = false;
    // Each round fixes one value, so there are at most as many rounds as keys.
    let keys: usize = defaults
        .values()
        .filter_map(Value::as_table)
        .map(Table::len)
        .sum();
    for _ in 0..=keys {
        let error = match serde_path_to_error::deserialize(Value::Table(merged.clone())) {
            Ok(c) => return (!failed).then_some(c),
            Err(e) => e,
        };
        failed = true;
        let path = error.path().to_string();
        let (problem, fix) = in_our_words(&error.inner().to_string());
        problems.push(Problem {
            key: path.clone(),
            origin: "configuration".into(),
            problem,
            fix,
        });
        let mut parts = path.splitn(2, '.');
        let (section, key) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let default = defaults.get(section).and_then(|s| s.get(key)).cloned();
        match (
            merged.get_mut(section).and_then(Value::as_table_mut),
            default,
        ) {
            (Some(table), Some(d)) => {
                table.insert(key.to_string(), d);
            }
            // Not a value this loop can put back: stop at what is known.
            _ => return None,
        }
    }
    None
}

/// A serde message about one value, as a problem and a fix in this
/// program's words (serde's backticks and its trailing "in `key`" dropped).
fn in_our_words(message: &str) -> (String, String) {
    let first = message.lines().next().unwrap_or("").trim();
    let quoted: Vec<&str> = first.split('`').skip(1).step_by(2).collect();
    if first.starts_with("unknown variant") && !quoted.is_empty() {
        let allowed = quoted[1..].join(", ");
        return (
            format!("{:?} is not one of {allowed}", quoted[0]),
            format!("use one of {allowed}"),
        );
    }
    let text = first.replace('`', "");
    let text = match text.rfind(" in ") {
        Some(i) if !text.contains(" in the ") => text[..i].to_string(),
        _ => text,
    };
    (
        text,
        "use a value like the default (`rppg-agent config default`)".into(),
    )
}

fn defaults() -> Table {
    DEFAULT_TOML
        .parse()
        .expect("config/default.toml is valid TOML (tested)")
}

/// Overlays `user` onto `merged`, recording unknown keys and type mismatches.
fn overlay(
    merged: &mut Table,
    defaults: &Table,
    user: Table,
    origin: &str,
    problems: &mut Vec<Problem>,
) {
    for (section, value) in user {
        if let Some(Value::Array(_)) = defaults.get(&section) {
            // A list of destinations: each entry is checked on its own later.
            match value {
                Value::Array(entries) => {
                    merged.insert(section, Value::Array(entries));
                }
                other => problems.push(Problem {
                    key: section.clone(),
                    origin: origin.into(),
                    problem: format!(
                        "must be a list of [[{section}]] tables, found {}",
                        type_name(&other)
                    ),
                    fix: format!("write each destination as a [[{section}]] table"),
                }),
            }
            continue;
        }
        let Some(Value::Table(default_section)) = defaults.get(&section) else {
            problems.push(Problem {
                key: section.clone(),
                origin: origin.into(),
                problem: "unknown section".into(),
                fix: suggest(&section, defaults.keys()),
            });
            continue;
        };
        let Value::Table(user_section) = value else {
            problems.push(Problem {
                key: section.clone(),
                origin: origin.into(),
                problem: format!("must be a table, found {}", type_name(&value)),
                fix: format!("write it as [{section}] followed by its keys"),
            });
            continue;
        };
        for (key, v) in user_section {
            let dotted = format!("{section}.{key}");
            match default_section.get(&key) {
                None => problems.push(Problem {
                    key: dotted,
                    origin: origin.into(),
                    problem: "unknown key".into(),
                    fix: suggest(&key, default_section.keys()),
                }),
                Some(d) if !same_type(d, &v) => problems.push(Problem {
                    key: dotted,
                    origin: origin.into(),
                    problem: format!("must be {}, found {}", describe(d), describe(&v)),
                    fix: format!("use a value like the default: {key} = {d}"),
                }),
                Some(d) => {
                    if let Some(Value::Table(s)) = merged.get_mut(&section) {
                        s.insert(key, coerce(d, v));
                    }
                }
            }
        }
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Array(a) => format!(
            "an array of {} {}",
            a.len(),
            a.first().map_or("values", type_name)
        ),
        other => type_name(other).to_string(),
    }
}

/// Parses an environment value as the type of `default`.
fn env_value(default: &Value, raw: &str) -> Option<Value> {
    match default {
        Value::String(_) => Some(Value::String(raw.to_string())),
        _ => format!("v = {raw}")
            .parse::<Table>()
            .ok()
            .and_then(|mut t| t.remove("v")),
    }
}

/// Checks every destination kind shares: lane name, event filter, retry
/// schedule `(waits, jitter, max_age_s)`. Returns the event filter.
fn check_common(
    name: &str,
    taken: bool,
    event_names: &[String],
    (schedule_s, jitter, max_age_s): (&[f64], f64, f64),
    problem: &mut impl FnMut(&str, String, &str),
) -> Vec<EventKind> {
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !name_ok {
        problem(
            "name",
            format!("{name:?} is not a lane name"),
            "use letters, digits, - and _ (at most 64)",
        );
    }
    if taken {
        problem(
            "name",
            format!("{name:?} is used by another destination"),
            "give every destination its own name",
        );
    }
    let mut events = Vec::new();
    for n in event_names {
        match EventKind::ALL.iter().find(|k| k.name() == n) {
            Some(k) => events.push(*k),
            None => problem(
                "events",
                format!("{n:?} is not an event name"),
                "use names like SCAN_COMPLETED; empty = all events",
            ),
        }
    }
    if schedule_s.is_empty()
        || schedule_s
            .iter()
            .any(|v| !(0.0..=MAX_RETRY_WAIT_S).contains(v))
    {
        problem(
            "retry_schedule_s",
            format!("must be a non-empty list of waits within 0..{MAX_RETRY_WAIT_S} s (30 days)"),
            "e.g. [0, 5, 30, 300, 1800, 7200]",
        );
    }
    if !(0.0..=0.5).contains(&jitter) {
        problem("jitter", format!("{jitter} is outside 0..0.5"), "use 0.2");
    }
    if !(0.0..=MAX_AGE_S).contains(&max_age_s) {
        problem(
            "max_age_s",
            format!("must be within 0..{MAX_AGE_S} s (0 = no limit; at most 10 years)"),
            "use 0 or a number of seconds",
        );
    }
    events
}

/// The retry policy of a destination from its validated settings.
fn retry_policy(schedule_s: &[f64], jitter: f64, max_age_s: f64) -> RetryPolicy {
    RetryPolicy {
        schedule: schedule_s
            .iter()
            .map(|s| Duration::from_secs_f64(*s))
            .collect(),
        jitter,
        max_age: (max_age_s > 0.0).then(|| Duration::from_secs_f64(max_age_s)),
        ..RetryPolicy::default()
    }
}

/// The key and text of a destination table that does not deserialise:
/// "missing field `url`" at the table becomes key `url`, "is required".
fn entry_error(path: String, message: String) -> (String, String) {
    let message = message.trim().to_string();
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        return (field.to_string(), "is required but missing".into());
    }
    let key = if path == "." { "(table)".into() } else { path };
    // serde quotes the value it could not use; for these keys that value
    // may be a secret (pasted where a list or a name belongs).
    const SECRET_KEYS: [&str; 5] = [
        "secrets",
        "secret_env",
        "password_env",
        "api_key",
        "api_key_env",
    ];
    let last = key.split('.').next_back().unwrap_or("");
    let last = last.split('[').next().unwrap_or("");
    if SECRET_KEYS.contains(&last) {
        let want = if last.ends_with('s') || last == "secret_env" {
            "a list of strings"
        } else {
            "a string"
        };
        return (
            key,
            format!("must be {want} (the value given is not shown: it may be a secret)"),
        );
    }
    (key, message)
}

/// Parses and validates each `[[webhook]]` entry, collecting every problem.
fn webhook_destinations(
    entries: Vec<Value>,
    env: &[(String, String)],
    secrets: Secrets,
    problems: &mut Vec<Problem>,
) -> Vec<WebhookDestination> {
    let mut out: Vec<WebhookDestination> = Vec::new();
    for (i, raw) in entries.into_iter().enumerate() {
        let at = |key: &str| format!("webhook[{i}].{key}");
        let mut problem = |key: &str, problem: String, fix: &str| {
            problems.push(Problem {
                key: at(key),
                origin: "configuration".into(),
                problem,
                fix: fix.into(),
            })
        };
        let entry: WebhookEntry = match serde_path_to_error::deserialize(raw) {
            Ok(e) => e,
            Err(e) => {
                let (key, text) = entry_error(e.path().to_string(), e.inner().to_string());
                problem(
                    &key,
                    text,
                    "see the [[webhook]] keys in `rppg-agent config default`",
                );
                continue;
            }
        };
        let before = problems.len();
        let mut problem = |key: &str, text: String, fix: &str| {
            problems.push(Problem {
                key: at(key),
                origin: "configuration".into(),
                problem: text,
                fix: fix.into(),
            })
        };
        let taken = out.iter().any(|d| d.name == entry.name);
        let events = check_common(
            &entry.name,
            taken,
            &entry.events,
            (&entry.retry_schedule_s, entry.jitter, entry.max_age_s),
            &mut problem,
        );
        let url = match reqwest::Url::parse(&entry.url) {
            Ok(u) if u.scheme() == "https" => Some(u),
            Ok(u) if u.scheme() == "http" && entry.allow_insecure => Some(u),
            Ok(u) if u.scheme() == "http" => {
                problem(
                    "url",
                    format!(
                        "{} is plain http; events would travel unencrypted",
                        crate::delivery::redact_url(&entry.url)
                    ),
                    "use https, or set allow_insecure = true for a clinic LAN or loopback receiver",
                );
                Some(u)
            }
            Ok(u) => {
                problem(
                    "url",
                    format!("scheme {:?} is not http(s)", u.scheme()),
                    "use an https:// URL",
                );
                None
            }
            Err(e) => {
                problem(
                    "url",
                    format!(
                        "{:?} is not a URL: {e}",
                        crate::delivery::redact_url(&entry.url)
                    ),
                    "use e.g. https://example.org/hooks",
                );
                None
            }
        };
        let texts = resolve_secrets(
            &entry.secrets,
            &entry.secret_env,
            env,
            secrets,
            &mut problem,
        );
        let api_key = match (entry.api_key.is_empty(), entry.api_key_env.is_empty()) {
            (false, _) => Some(entry.api_key.clone()),
            (true, false) => secret_from_env(
                "api_key_env",
                &entry.api_key_env,
                env,
                secrets,
                &mut problem,
            ),
            (true, true) => None,
        };
        if entry.schemes.is_empty() {
            problem(
                "schemes",
                "no signature scheme".into(),
                "use [\"standard\"] (or wms, rppg, api-key)",
            );
        }
        let mut schemes = Vec::new();
        for name in &entry.schemes {
            match <Scheme as clap::ValueEnum>::from_str(name, false) {
                Ok(s) => schemes.push(s),
                Err(_) => problem(
                    "schemes",
                    format!("{name:?} is not a signature scheme"),
                    "use standard, wms, rppg or api-key",
                ),
            }
        }
        let hmac = schemes.iter().any(|s| *s != Scheme::ApiKey);
        let keyed = schemes.contains(&Scheme::ApiKey);
        let named = !entry.secret_env.is_empty() || !entry.secrets.is_empty();
        if hmac && !named {
            problem(
                "secrets",
                "no signing secret".into(),
                "set secret_env = [\"VAR\"] (preferred) or secrets = [\"...\"]",
            );
        }
        if !hmac && named && !schemes.is_empty() {
            problem(
                "secrets",
                "signing secrets are for standard, wms and rppg; this destination uses only \
                 api-key"
                    .into(),
                "give the API key as api_key_env = \"VAR\" (or api_key) and remove secrets/secret_env",
            );
        }
        if keyed && entry.api_key.is_empty() && entry.api_key_env.is_empty() {
            problem(
                "api_key_env",
                "the api-key scheme sends its key in clear (x-api-key), so it needs its own"
                    .into(),
                "set api_key_env = \"VAR\" (preferred) or api_key = \"...\"; never a signing secret",
            );
        }
        if !keyed && (!entry.api_key.is_empty() || !entry.api_key_env.is_empty()) {
            problem(
                "api_key_env",
                "an API key is set but schemes does not list api-key".into(),
                "add \"api-key\" to schemes, or remove api_key/api_key_env",
            );
        }
        if let Some(k) = &api_key {
            if texts.iter().any(|t| t == k) {
                problem(
                    "api_key_env",
                    "the API key is one of the signing secrets: it would be sent in clear".into(),
                    "use a different key for api-key than for the signing schemes",
                );
            }
        }
        let mut signing: Vec<(Scheme, Vec<Secret>)> = Vec::new();
        for scheme in &schemes {
            let mut keys = Vec::new();
            if *scheme == Scheme::ApiKey {
                if let Some(k) = &api_key {
                    match parse_secret(*scheme, k) {
                        Ok(k) => keys.push(k),
                        Err(e) => problem("api_key_env", format!("the API key: {e}"), "check it"),
                    }
                }
                signing.push((*scheme, keys));
                continue;
            }
            for (n, t) in texts.iter().enumerate() {
                match parse_secret(*scheme, t) {
                    Ok(k) => keys.push(k),
                    Err(e) => problem(
                        "secrets",
                        format!("secret #{} for scheme {scheme}: {e}", n + 1),
                        "check the secret's format",
                    ),
                }
            }
            signing.push((*scheme, keys));
        }
        let within = |v: f64| v > 0.0 && v <= HOUR;
        if !within(entry.timeout_s) || !within(entry.connect_timeout_s) {
            problem(
                "timeout_s",
                format!("timeouts must be greater than 0 and at most {HOUR} s"),
                "use timeout_s = 5, connect_timeout_s = 3",
            );
        }
        if !(1..=64).contains(&entry.max_in_flight) {
            problem(
                "max_in_flight",
                format!("{} is outside 1..64", entry.max_in_flight),
                "use 4",
            );
        }
        let (format, events) = match entry.format.as_str() {
            "wms" => (BodyFormat::Envelope, events),
            "fhir" => {
                if events.iter().any(|e| *e != EventKind::ScanCompleted) {
                    problem(
                        "events",
                        "a FHIR destination receives completed scans only".into(),
                        "remove events, or set events = [\"SCAN_COMPLETED\"]",
                    );
                }
                (
                    BodyFormat::Fhir {
                        subject: String::new(),
                    },
                    vec![EventKind::ScanCompleted],
                )
            }
            "circadify" => {
                let kinds = crate::events::circadify::KINDS;
                if let Some(e) = events.iter().find(|e| !kinds.contains(e)) {
                    problem(
                        "events",
                        format!("a Circadify destination receives scan start, completion and failure only, not {}", e.name()),
                        "remove events, or list some of MEASUREMENT_STARTED, SCAN_COMPLETED, MEASUREMENT_CANCELED",
                    );
                }
                let events = if events.is_empty() {
                    kinds.to_vec()
                } else {
                    events
                };
                (BodyFormat::Circadify, events)
            }
            other => {
                problem(
                    "format",
                    format!("{other:?} is not a body format"),
                    "use \"wms\" (the event envelope), \"fhir\" (an R4 Bundle of vital signs) or \"circadify\" (scan.started/completed/failed)",
                );
                (BodyFormat::Envelope, events)
            }
        };
        if problems.len() > before {
            continue;
        }
        let Some(url) = url else { continue };
        out.push(WebhookDestination {
            name: entry.name,
            url,
            signing,
            events,
            timeout: Duration::from_secs_f64(entry.timeout_s),
            connect_timeout: Duration::from_secs_f64(entry.connect_timeout_s),
            policy: RetryPolicy {
                retry_client_errors: entry.retry_client_errors,
                ..retry_policy(&entry.retry_schedule_s, entry.jitter, entry.max_age_s)
            },
            allow_insecure: entry.allow_insecure,
            max_in_flight: entry.max_in_flight,
            format,
        });
    }
    out
}

/// Whether `name` can be an environment variable's name (letters, digits
/// and `_`, not starting with a digit). A secret pasted where a name
/// belongs is not one (`whsec_...` has `+`, `/` or `=`, or is long), and
/// must not be echoed back in a message.
fn is_variable_name(name: &str) -> bool {
    let shaped = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    // A Standard Webhooks secret, or a long mix of cases and digits (base64
    // or hex keys), is taken for a pasted secret even when its characters
    // could make a name: variable names are words.
    let secret_like = name.to_ascii_lowercase().starts_with("whsec_")
        || (name.len() >= 20
            && name.chars().any(|c| c.is_ascii_lowercase())
            && name.chars().any(|c| c.is_ascii_uppercase())
            && name.chars().filter(|c| c.is_ascii_digit()).count() >= 2);
    shaped && !secret_like
}

/// The value of the environment variable named by `key`, or a problem that
/// names the variable (or, when it is no variable name, says so without
/// repeating it). `None` for an unset variable when secrets are optional.
fn secret_from_env(
    key: &str,
    var: &str,
    env: &[(String, String)],
    secrets: Secrets,
    problem: &mut impl FnMut(&str, String, &str),
) -> Option<String> {
    if !is_variable_name(var) {
        problem(
            key,
            "is not the name of an environment variable (it is not shown: it may be a secret \
             itself)"
                .into(),
            "put the secret in an environment variable and its name here, e.g. RPPG_HOOK_SECRET",
        );
        return None;
    }
    match env.iter().find(|(k, _)| k == var) {
        Some((_, v)) if !v.is_empty() => Some(v.clone()),
        _ if secrets == Secrets::Optional => None,
        _ => {
            problem(
                key,
                format!("environment variable {var} is not set or empty"),
                "export it before starting the agent (e.g. in the systemd unit's EnvironmentFile)",
            );
            None
        }
    }
}

/// Secrets named inline and through environment variables.
fn resolve_secrets(
    inline: &[String],
    vars: &[String],
    env: &[(String, String)],
    secrets: Secrets,
    problem: &mut impl FnMut(&str, String, &str),
) -> Vec<String> {
    let mut texts: Vec<String> = inline.to_vec();
    for var in vars {
        texts.extend(secret_from_env("secret_env", var, env, secrets, problem));
    }
    texts
}

/// Whether loading needs the secrets the configuration names: a process
/// that delivers does; inspecting the outbox (`outbox stats`, `list`,
/// `show`, `replay`, `purge`) signs nothing and does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Secrets {
    Required,
    Optional,
}

/// Parses and validates each `[[mqtt]]` entry, collecting every problem.
fn mqtt_destinations(
    entries: Vec<Value>,
    env: &[(String, String)],
    webhooks: &[WebhookDestination],
    secrets: Secrets,
    problems: &mut Vec<Problem>,
) -> Vec<MqttDestination> {
    let mut out: Vec<MqttDestination> = Vec::new();
    for (i, raw) in entries.into_iter().enumerate() {
        let at = |key: &str| format!("mqtt[{i}].{key}");
        let entry: MqttEntry = match serde_path_to_error::deserialize(raw) {
            Ok(e) => e,
            Err(e) => {
                let (key, text) = entry_error(e.path().to_string(), e.inner().to_string());
                problems.push(Problem {
                    key: at(&key),
                    origin: "configuration".into(),
                    problem: text,
                    fix: "see the [[mqtt]] keys in `rppg-agent config default`".into(),
                });
                continue;
            }
        };
        let before = problems.len();
        let mut problem = |key: &str, text: String, fix: &str| {
            problems.push(Problem {
                key: at(key),
                origin: "configuration".into(),
                problem: text,
                fix: fix.into(),
            })
        };
        let taken = out.iter().any(|d| d.name == entry.name)
            || webhooks.iter().any(|w| w.name == entry.name);
        let events = check_common(
            &entry.name,
            taken,
            &entry.events,
            (&entry.retry_schedule_s, entry.jitter, entry.max_age_s),
            &mut problem,
        );
        let protocol = match entry.protocol.as_str() {
            "5" | "5.0" => MqttProtocol::V5,
            "3.1.1" | "3" => MqttProtocol::V311,
            other => {
                problem(
                    "protocol",
                    format!("{other:?} is not an MQTT version this agent speaks"),
                    "use \"5\" (signatures as user properties) or \"3.1.1\" (a signed JSON envelope)",
                );
                MqttProtocol::V5
            }
        };
        if entry.host.is_empty() {
            problem(
                "host",
                "is empty".into(),
                "set the broker's host name or address",
            );
        }
        let tls = if entry.allow_insecure {
            None
        } else if entry.ca_file.is_empty() {
            problem(
                "ca_file",
                "TLS needs the CA certificate of the broker".into(),
                "set ca_file to a PEM file, or allow_insecure = true for a broker on loopback or a trusted LAN",
            );
            None
        } else {
            let client_auth = match (
                entry.client_cert_file.is_empty(),
                entry.client_key_file.is_empty(),
            ) {
                (true, true) => None,
                (false, false) => Some((
                    entry.client_cert_file.clone().into(),
                    entry.client_key_file.clone().into(),
                )),
                _ => {
                    problem(
                        "client_cert_file",
                        "mutual TLS needs both client_cert_file and client_key_file".into(),
                        "set both, or neither",
                    );
                    None
                }
            };
            Some(MqttTls {
                ca_file: entry.ca_file.clone().into(),
                client_auth,
            })
        };
        let password = if entry.password_env.is_empty() {
            None
        } else {
            secret_from_env(
                "password_env",
                &entry.password_env,
                env,
                secrets,
                &mut problem,
            )
            .map(|v| Secret::new(v.into_bytes()))
        };
        let texts = resolve_secrets(
            &entry.secrets,
            &entry.secret_env,
            env,
            secrets,
            &mut problem,
        );
        if texts.is_empty() && entry.secret_env.is_empty() {
            problem(
                "secrets",
                "no signing secret".into(),
                "set secret_env = [\"VAR\"] (preferred) or secrets = [\"whsec_...\"]",
            );
        }
        let mut keys = Vec::new();
        for (n, t) in texts.iter().enumerate() {
            match parse_secret(Scheme::Standard, t) {
                Ok(k) => keys.push(k),
                Err(e) => problem(
                    "secrets",
                    format!("secret #{}: {e}", n + 1),
                    "use a whsec_<base64> secret",
                ),
            }
        }
        if !entry.topic.contains("{event}") {
            problem(
                "topic",
                format!("{:?} has no {{event}}", entry.topic),
                "keep {event} in the topic, e.g. rppg/{deviceId}/events/{event}",
            );
        }
        // MQTT carries keep-alive as 16-bit seconds.
        let keep_alive_ok = (1.0..=65535.0).contains(&entry.keep_alive_s);
        let ack_ok = entry.ack_timeout_s > 0.0 && entry.ack_timeout_s <= HOUR;
        if !(keep_alive_ok && ack_ok) {
            problem(
                "ack_timeout_s",
                format!("keep_alive_s must be within 1..65535 and ack_timeout_s within 0..{HOUR} (above 0)"),
                "use 30 and 10",
            );
        }
        if !(1..=1024).contains(&entry.max_in_flight) {
            problem(
                "max_in_flight",
                format!("{} is outside 1..1024", entry.max_in_flight),
                "use 32",
            );
        }
        if problems.len() > before {
            continue;
        }
        let port = entry
            .port
            .unwrap_or(if tls.is_some() { 8883 } else { 1883 });
        out.push(MqttDestination {
            name: entry.name,
            host: entry.host,
            port,
            protocol,
            tls,
            username: (!entry.username.is_empty()).then_some(entry.username),
            password,
            client_id: entry.client_id,
            topic: entry.topic,
            keys,
            events,
            policy: retry_policy(&entry.retry_schedule_s, entry.jitter, entry.max_age_s),
            keep_alive: Duration::from_secs_f64(entry.keep_alive_s),
            ack_timeout: Duration::from_secs_f64(entry.ack_timeout_s),
            max_in_flight: entry.max_in_flight,
        });
    }
    out
}

impl Config {
    /// The built-in defaults.
    pub fn default_config() -> Config {
        Config::load(None, std::iter::empty()).expect("defaults are valid (tested)")
    }

    /// Loads defaults, then `file` (`(name, text)`), then the `RPPG_*`
    /// variables among `env`. All problems are collected into one error.
    pub fn load(
        file: Option<(&str, &str)>,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        Config::load_with(file, env, Secrets::Required)
    }

    /// As [`Config::load`]; with [`Secrets::Optional`], variables that hold
    /// secrets may be unset (their destinations then cannot sign).
    pub fn load_with(
        file: Option<(&str, &str)>,
        env: impl Iterator<Item = (String, String)>,
        secrets: Secrets,
    ) -> Result<Config, ConfigError> {
        let defaults = defaults();
        let mut merged = defaults.clone();
        let mut problems = Vec::new();
        let mut warnings = Vec::new();

        if let Some((name, text)) = file {
            match text.parse::<Table>() {
                Ok(user) => overlay(&mut merged, &defaults, user, name, &mut problems),
                Err(e) => problems.push(Problem {
                    key: "(file)".into(),
                    origin: name.into(),
                    problem: format!("not valid TOML: {}", e.to_string().trim()),
                    fix: "fix the syntax at the position shown; `rppg-agent config default` prints a valid file".into(),
                }),
            }
        }

        let env: Vec<(String, String)> = env.collect();
        let mut rppg: Vec<&(String, String)> =
            env.iter().filter(|(k, _)| k.starts_with("RPPG_")).collect();
        rppg.sort();
        // Variables the configuration names as holders of secrets
        // (`secret_env`, `password_env`, `api.token_env`) are not keys.
        let secret_vars = secret_variables(&merged);
        for (var, raw) in rppg {
            let (var, raw) = (var.clone(), raw.as_str());
            if NON_KEY_ENV.contains(&var.as_str()) || secret_vars.contains(&var) {
                continue;
            }
            let rest = var["RPPG_".len()..].to_ascii_lowercase();
            let found = defaults
                .iter()
                .filter(|(_, v)| v.is_table())
                .find_map(|(section, v)| {
                    let key = rest.strip_prefix(section.as_str())?.strip_prefix('_')?;
                    let d = v.as_table()?.get(key)?;
                    Some((section.clone(), key.to_string(), d.clone()))
                });
            let Some((section, key, d)) = found else {
                // Not a key: most such variables are someone else's (a
                // secret the config does not name now, a wrapper's own).
                // Only one that looks like a misspelt key is worth a word.
                if let Some(close) = misspelt_key(&var, &defaults) {
                    warnings.push(Problem {
                        key: var.clone(),
                        origin: "environment".into(),
                        problem: "is not a configuration key, so it is ignored".into(),
                        fix: format!("did you mean {close}?"),
                    });
                }
                continue;
            };
            let mut user = Table::new();
            let mut section_table = Table::new();
            match env_value(&d, raw) {
                Some(v) => {
                    section_table.insert(key, v);
                    user.insert(section, Value::Table(section_table));
                    overlay(&mut merged, &defaults, user, &var, &mut problems);
                }
                None => problems.push(Problem {
                    key: format!("{section}.{key}"),
                    origin: var.clone(),
                    problem: format!("{raw:?} is not {}", describe(&d)),
                    fix: format!("set it like the default: {var}={d}"),
                }),
            }
        }

        let webhook_entries = match merged.remove("webhook") {
            Some(Value::Array(entries)) => entries,
            _ => Vec::new(),
        };
        let webhooks = webhook_destinations(webhook_entries, &env, secrets, &mut problems);
        let mqtt_entries = match merged.remove("mqtt") {
            Some(Value::Array(entries)) => entries,
            _ => Vec::new(),
        };
        let mqtt = mqtt_destinations(mqtt_entries, &env, &webhooks, secrets, &mut problems);
        let config = match deserialize_all(merged, &defaults, &mut problems) {
            Some(c) => c,
            None => return Err(ConfigError { problems }),
        };
        let mut config = config;
        config.warnings = warnings;
        config.webhook = webhooks;
        for w in &mut config.webhook {
            if let BodyFormat::Fhir { subject } = &mut w.format {
                subject.clone_from(&config.fhir.subject);
            }
        }
        config.mqtt = mqtt;
        problems.extend(config.validate());
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Range and consistency checks (origin "configuration": the merged value).
    fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut check = |ok: bool, key: &str, problem: String, fix: &str| {
            if !ok {
                out.push(Problem {
                    key: key.into(),
                    origin: "configuration".into(),
                    problem,
                    fix: fix.into(),
                });
            }
        };
        let id = &self.device.id;
        check(
            id.is_empty() || is_device_id(id),
            "device.id",
            format!("{id:?} cannot name a device in MQTT topics and client ids"),
            "use letters, digits, '-', '_', '.' and ':' (at most 64); no '/', '#', '+' or spaces",
        );
        // Two lanes on one broker with one client id take each other's
        // session in turn, forever. The `{deviceId}` part is the same for
        // every lane, so comparing the templates is enough.
        for (i, m) in self.mqtt.iter().enumerate() {
            let template = m.client_id("{deviceId}");
            let twin = self.mqtt[..i].iter().find(|o| {
                o.host.eq_ignore_ascii_case(&m.host)
                    && o.port == m.port
                    && o.client_id("{deviceId}") == template
            });
            if let Some(o) = twin {
                check(
                    false,
                    &format!("mqtt[{i}].client_id"),
                    format!(
                        "{template:?} is also the client id of {:?} on the same broker: the two \
                         lanes would keep disconnecting each other",
                        o.name
                    ),
                    "give each [[mqtt]] on one broker its own client_id (or leave both empty)",
                );
            }
        }
        let run = &self.run;
        let non_negative = |v: f64| v.is_finite() && v >= 0.0;
        for (key, v) in [
            ("run.auto_start_steady_s", run.auto_start_steady_s),
            ("run.auto_start_cooldown_s", run.auto_start_cooldown_s),
            ("run.shutdown_drain_s", run.shutdown_drain_s),
        ] {
            check(
                non_negative(v) && v <= 3600.0,
                key,
                format!("{v} is outside 0..3600"),
                "use a number of seconds, e.g. 3",
            );
        }
        if let Err(e) = run.input.parse::<crate::capture::SourceSpec>() {
            check(
                false,
                "run.input",
                e.to_string(),
                "use a --input value, e.g. \"camera:0\"",
            );
        }
        if let Err((key, problem, fix)) = self.api.address() {
            check(false, key, problem, fix);
        }
        let s = &self.scan;
        // Every number of seconds (and rate) has a finite range: beyond it
        // a duration overflows, or a buffer sized from it cannot be held.
        for (key, v, hi, fix) in [
            (
                "scan.duration_s",
                s.duration_s,
                HOUR,
                "use 10-120 s; 30 s is typical",
            ),
            (
                "scan.face_init_timeout_s",
                s.face_init_timeout_s,
                HOUR,
                "use 10",
            ),
            (
                "scan.face_lost_timeout_s",
                s.face_lost_timeout_s,
                HOUR,
                "use 3",
            ),
            ("scan.dark_timeout_s", s.dark_timeout_s, HOUR, "use 5"),
            (
                "scan.max_motion_face_widths_per_s",
                s.max_motion_face_widths_per_s,
                100.0,
                "use about 1",
            ),
            ("scan.motion_timeout_s", s.motion_timeout_s, HOUR, "use 5"),
            (
                "scan.low_snr_timeout_s",
                s.low_snr_timeout_s,
                HOUR,
                "use 10",
            ),
            (
                "scan.intermediate_interval_s",
                s.intermediate_interval_s,
                HOUR,
                "use 1",
            ),
            (
                "vision.detect_interval_s",
                self.vision.detect_interval_s,
                60.0,
                "use 1",
            ),
            (
                "signal.resample_hz",
                self.signal.resample_hz,
                MAX_RESAMPLE_HZ,
                "use 30 (a camera's frame rate)",
            ),
            (
                "signal.projection_window_s",
                self.signal.projection_window_s,
                60.0,
                "use 1.6",
            ),
            (
                "signal.hr_window_s",
                self.signal.hr_window_s,
                HOUR,
                "use 10",
            ),
            (
                "signal.rr_min_window_s",
                self.signal.rr_min_window_s,
                HOUR,
                "use 20",
            ),
            (
                "signal.confidence_slope_db",
                self.signal.confidence_slope_db,
                60.0,
                "use 2",
            ),
        ] {
            check(
                v.is_finite() && v > 0.0 && v <= hi,
                key,
                format!("must be greater than 0 and at most {hi}, found {}", show(v)),
                fix,
            );
        }
        check(
            s.duration_s <= 3600.0,
            "scan.duration_s",
            format!(
                "{} s is longer than the 3600 s a scan may last",
                s.duration_s
            ),
            "use 10-120 s; 30 s is typical",
        );
        check(
            s.max_duration_s.is_finite() && (0.0..=3600.0).contains(&s.max_duration_s),
            "scan.max_duration_s",
            format!("must be within 0..3600 s, found {}", s.max_duration_s),
            "use 60 (twice scan.duration_s), or 0 never to measure longer",
        );
        check(
            s.extend_min_snr_db.is_finite() && (-30.0..=30.0).contains(&s.extend_min_snr_db),
            "scan.extend_min_snr_db",
            format!("must be within -30..30 dB, found {}", s.extend_min_snr_db),
            "use -2 (config/default.toml says why); it is capped at scan.extended_low_snr_db",
        );
        check(
            s.extended_low_snr_db.is_finite() && (-30.0..=30.0).contains(&s.extended_low_snr_db),
            "scan.extended_low_snr_db",
            format!("must be within -30..30 dB, found {}", s.extended_low_snr_db),
            "use the value calibrated for your scan.max_duration_s (config/default.toml)",
        );
        check(
            s.min_duration_s >= 2.0 && s.min_duration_s <= s.duration_s,
            "scan.min_duration_s",
            format!(
                "{} s must be between 2 s and scan.duration_s ({} s)",
                s.min_duration_s, s.duration_s
            ),
            "use about half of scan.duration_s",
        );
        check(
            s.hint_interval_s.is_finite() && (0.5..=60.0).contains(&s.hint_interval_s),
            "scan.hint_interval_s",
            format!("must be within 0.5..60, found {}", s.hint_interval_s),
            "use 3 (a hint that still applies is repeated every 3 s)",
        );
        check(
            s.first_result_after_s >= 2.0,
            "scan.first_result_after_s",
            format!(
                "{} s is too short to estimate a heart rate",
                s.first_result_after_s
            ),
            "use 2 s or more",
        );
        check(
            (0.0..=255.0).contains(&s.dark_luma),
            "scan.dark_luma",
            format!("must be within 0..255, found {}", s.dark_luma),
            "use about 25",
        );
        check(
            s.low_snr_db.is_finite() && (-30.0..=30.0).contains(&s.low_snr_db),
            "scan.low_snr_db",
            format!("must be within -30..30 dB, found {}", s.low_snr_db),
            "use about 1 dB",
        );
        check(
            self.outbox.max_bytes >= 1 << 20,
            "outbox.max_bytes",
            format!(
                "{} bytes is too small to hold a scan's events",
                self.outbox.max_bytes
            ),
            "use at least 1048576 (1 MiB); 268435456 is the default",
        );
        let d = &self.delivery;
        check(
            (0.0..=HOUR).contains(&d.drain_timeout_s),
            "delivery.drain_timeout_s",
            format!(
                "must be within 0..{HOUR}, found {}",
                show(d.drain_timeout_s)
            ),
            "use 5",
        );
        check(
            d.probe_initial_s > 0.0 && d.probe_initial_s <= d.probe_max_s,
            "delivery.probe_initial_s",
            format!(
                "probe waits {}..{} s must be positive and ordered",
                show(d.probe_initial_s),
                show(d.probe_max_s)
            ),
            "use probe_initial_s = 1, probe_max_s = 300",
        );
        check(
            d.probe_max_s <= DAY,
            "delivery.probe_max_s",
            format!("must be at most {DAY} s, found {}", show(d.probe_max_s)),
            "use 300",
        );
        let v = &self.vision;
        check(
            v.search_min_face_px.is_finite() && (18.0..=1000.0).contains(&v.search_min_face_px),
            "vision.search_min_face_px",
            format!("must be within 18..1000, found {}", v.search_min_face_px),
            "use 24 (the detector's practical floor), or more to search less",
        );
        check(
            s.min_face_px.is_finite() && (24.0..=2000.0).contains(&s.min_face_px),
            "scan.min_face_px",
            format!("must be within 24..2000, found {}", s.min_face_px),
            "use 64 (the smallest face measured within 2 bpm in 90 % of scans)",
        );
        check(
            v.search_width_px == 0 || (160..=8192).contains(&v.search_width_px),
            "vision.search_width_px",
            format!("must be 0 or within 160..8192, found {}", v.search_width_px),
            "use 0 (search as fine as search_min_face_px needs), or e.g. 320 to bound the \
             search cost (faces down to about 36 px at 320 px wide)",
        );
        check(
            v.detect_interval_max_s.is_finite()
                && v.detect_interval_max_s >= v.detect_interval_s
                && v.detect_interval_max_s <= 60.0,
            "vision.detect_interval_max_s",
            format!(
                "must be within vision.detect_interval_s ({}) and 60 s, found {}",
                show(v.detect_interval_s),
                show(v.detect_interval_max_s)
            ),
            "use 2 (a still face is re-detected every 2 s), or vision.detect_interval_s \
             for a fixed interval",
        );
        check(
            (1..=300).contains(&v.search_cycle_frames),
            "vision.search_cycle_frames",
            format!("must be within 1..300, found {}", v.search_cycle_frames),
            "use 24 (every scale of the whole frame in 0.8 s at 30 fps)",
        );
        check(
            (0.0..=3600.0).contains(&v.idle_rescan_s),
            "vision.idle_rescan_s",
            format!("must be within 0..3600, found {}", v.idle_rescan_s),
            "use 60 (an empty, still scene is searched again once a minute; any change \
             in it starts the search at once), or 0 to search without rest",
        );
        check(
            (24..=256).contains(&v.track_face_px),
            "vision.track_face_px",
            format!("must be within 24..256, found {}", v.track_face_px),
            "use 64",
        );
        check(
            (0.0..=60.0).contains(&v.correction_time_s),
            "vision.correction_time_s",
            format!("must be within 0..60, found {}", v.correction_time_s),
            "use 1.0, or 0 to apply corrections at once",
        );
        check(
            (0.0..=0.5).contains(&v.redetect_tolerance),
            "vision.redetect_tolerance",
            format!("must be within 0..0.5, found {}", v.redetect_tolerance),
            "use 0.1",
        );
        let g = &self.signal;
        let nyquist = g.resample_hz / 2.0;
        for (key, [lo, hi]) in [
            ("signal.hr_band_hz", g.hr_band_hz),
            ("signal.rr_band_hz", g.rr_band_hz),
        ] {
            check(
                lo > 0.0 && lo < hi && hi * 1.15 < nyquist,
                key,
                format!("[{lo}, {hi}] must satisfy 0 < low < high and high x 1.15 < resample_hz / 2 ({nyquist} Hz)"),
                "e.g. hr_band_hz = [0.7, 4.0], rr_band_hz = [0.1, 0.7] with resample_hz = 30",
            );
        }
        check(
            matches!(g.filter_order, 2 | 4 | 6 | 8),
            "signal.filter_order",
            format!("must be 2, 4, 6 or 8, found {}", g.filter_order),
            "use 4",
        );
        check(
            g.hr_window_s >= 4.0 && g.hr_window_s <= s.duration_s.max(4.0),
            "signal.hr_window_s",
            format!(
                "{} s must be between 4 s and scan.duration_s",
                g.hr_window_s
            ),
            "use 10 s",
        );
        check(
            (0.0..=1.0).contains(&g.hr_min_confidence),
            "signal.hr_min_confidence",
            format!("must be within 0..1, found {}", g.hr_min_confidence),
            "use 0.5",
        );
        check(
            (0.0..=1.0).contains(&g.hrv_min_confidence),
            "signal.hrv_min_confidence",
            format!("must be within 0..1, found {}", g.hrv_min_confidence),
            "use 0.7",
        );
        check(
            (0.0..=1.0).contains(&g.rr_min_confidence),
            "signal.rr_min_confidence",
            format!("must be within 0..1, found {}", g.rr_min_confidence),
            "use 0.3",
        );
        check(
            g.contact_snr_db.is_finite() && (-30.0..=30.0).contains(&g.contact_snr_db),
            "signal.contact_snr_db",
            format!("must be within -30..30 dB, found {}", g.contact_snr_db),
            "use -1.7",
        );
        check(
            (0.0..=1.0).contains(&g.contact_hrv_min_confidence),
            "signal.contact_hrv_min_confidence",
            format!(
                "must be within 0..1, found {}",
                g.contact_hrv_min_confidence
            ),
            "use 0.9",
        );
        out
    }

    /// Whether any delivery destination (webhook or MQTT) is configured.
    pub fn has_destinations(&self) -> bool {
        !self.webhook.is_empty() || !self.mqtt.is_empty()
    }

    /// Names of every configured destination.
    pub fn destination_names(&self) -> Vec<String> {
        self.webhook
            .iter()
            .map(|w| w.name.clone())
            .chain(self.mqtt.iter().map(|m| m.name.clone()))
            .collect()
    }

    /// The signal chain's settings. Contact PPG (`method = "red"`) has its
    /// own SNR threshold and HRV floor (`signal.contact_*`, chosen by
    /// cross-validation on real finger recordings): its SNR runs on
    /// another scale than a face's.
    pub fn signal(&self) -> SignalConfig {
        let g = &self.signal;
        let contact = g.method == Method::Red;
        SignalConfig {
            method: g.method,
            resample_hz: g.resample_hz,
            projection_window_s: g.projection_window_s,
            hr_band_hz: (g.hr_band_hz[0], g.hr_band_hz[1]),
            rr_band_hz: (g.rr_band_hz[0], g.rr_band_hz[1]),
            filter_order: g.filter_order,
            hr_window_s: g.hr_window_s,
            rr_min_window_s: g.rr_min_window_s,
            confidence_mid_db: if contact {
                g.contact_snr_db
            } else {
                g.confidence_mid_db
            },
            confidence_slope_db: g.confidence_slope_db,
            hr_min_confidence: g.hr_min_confidence,
            hrv_min_confidence: if contact {
                g.contact_hrv_min_confidence
            } else {
                g.hrv_min_confidence
            },
            rr_min_confidence: g.rr_min_confidence,
            max_window_s: self.scan.duration_s.max(self.scan.max_duration_s) + 1.0,
        }
    }

    pub fn measurement(&self) -> MeasurementConfig {
        let s = &self.scan;
        MeasurementConfig {
            duration_s: s.duration_s,
            // Contact PPG's SNR scale has its own threshold and no
            // calibrated extension.
            max_duration_s: if self.signal.method == Method::Red {
                0.0
            } else {
                s.max_duration_s
            },
            // Never above the first judgement's bar.
            extended_low_snr_db: s.extended_low_snr_db.min(s.low_snr_db),
            // Never above the bar the extension must clear.
            extend_min_snr_db: s
                .extend_min_snr_db
                .min(s.extended_low_snr_db.min(s.low_snr_db)),
            min_duration_s: s.min_duration_s,
            face_init_timeout_s: s.face_init_timeout_s,
            face_lost_timeout_s: s.face_lost_timeout_s,
            min_skin_pixels: s.min_skin_pixels,
            dark_luma: s.dark_luma,
            dark_timeout_s: s.dark_timeout_s,
            max_motion_face_widths_per_s: s.max_motion_face_widths_per_s,
            motion_timeout_s: s.motion_timeout_s,
            low_snr_db: if self.signal.method == Method::Red {
                self.signal.contact_snr_db
            } else {
                s.low_snr_db
            },
            low_snr_timeout_s: s.low_snr_timeout_s,
            intermediate_interval_s: s.intermediate_interval_s,
            first_result_after_s: s.first_result_after_s,
            hint_interval_s: s.hint_interval_s,
            min_face_px: s.min_face_px,
        }
    }

    pub fn vision(&self) -> VisionConfig {
        let v = &self.vision;
        VisionConfig {
            detect_interval_s: v.detect_interval_s,
            detect_interval_max_s: v.detect_interval_max_s,
            search_min_face_px: v.search_min_face_px,
            search_width_px: v.search_width_px,
            search_cycle_frames: v.search_cycle_frames,
            idle_rescan_s: v.idle_rescan_s,
            track_face_px: v.track_face_px,
            correction_time_s: v.correction_time_s,
            redetect_tolerance: v.redetect_tolerance,
            max_missed_detections: v.max_missed_detections,
            survey_min_face_px: self.scan.min_face_px,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Iterator<Item = (String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<Vec<_>>()
            .into_iter()
    }

    #[test]
    fn the_embedded_defaults_load_and_match_each_stage_default() {
        let c = Config::default_config();
        assert_eq!(c.vision(), VisionConfig::default());
        let m = c.measurement();
        assert_eq!(m.duration_s, 30.0);
        assert_eq!(c.signal().method, Method::Pos);
    }

    #[test]
    fn every_default_key_has_a_comment_above_it_or_its_group() {
        let mut prev = "";
        for line in DEFAULT_TOML.lines().map(str::trim) {
            let is_key = !line.is_empty() && !line.starts_with('#') && !line.starts_with('[');
            if is_key {
                assert!(
                    !prev.is_empty() && !prev.starts_with('['),
                    "{line:?} has no comment above it"
                );
            }
            prev = line;
        }
    }

    #[test]
    fn a_file_overrides_defaults_and_integers_are_accepted_for_numbers() {
        let c = Config::load(
            Some((
                "f.toml",
                "[scan]\nduration_s = 45\n[signal]\nmethod = \"chrom\"\n",
            )),
            env(&[]),
        )
        .unwrap();
        assert_eq!(c.scan.duration_s, 45.0);
        assert_eq!(c.signal.method, Method::Chrom);
        assert_eq!(c.scan.face_lost_timeout_s, 2.0);
    }

    #[test]
    fn variables_named_as_secret_holders_are_not_mistaken_for_unknown_keys() {
        let text = "[api]\ntoken_env = \"RPPG_API_TOKEN\"\n[[webhook]]\nname = \"b\"\nurl = \"https://x.example\"\nsecret_env = [\"RPPG_HOOK_SECRET\"]\n[[mqtt]]\nname = \"m\"\nhost = \"h\"\nallow_insecure = true\nsecret_env = [\"RPPG_HOOK_SECRET\"]\nusername = \"u\"\npassword_env = \"RPPG_MQTT_PASSWORD\"\n";
        let c = Config::load(
            Some(("agent.toml", text)),
            env(&[
                ("RPPG_HOOK_SECRET", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
                ("RPPG_API_TOKEN", "a-long-random-token-1234"),
                ("RPPG_MQTT_PASSWORD", "pw"),
            ]),
        )
        .unwrap();
        assert_eq!(c.webhook.len(), 1);
        assert_eq!(c.mqtt.len(), 1);
    }

    #[test]
    fn variables_that_are_not_keys_are_ignored_unless_they_look_like_a_misspelt_key() {
        // The README's secret variables, set while this config names none
        // of them, and other programs' RPPG_ variables: silently ignored.
        let c = Config::load(
            None,
            env(&[
                ("RPPG_HOOK_SECRET", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
                ("RPPG_MQTT_SECRET", "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD"),
                ("RPPG_MQTT_PASSWORD", "pw"),
                ("RPPG_API_TOKEN", "a-long-random-token-1234"),
                ("RPPG_API_KEY", "k"),
                ("RPPG_HOME", "/opt/rppg"),
            ]),
        )
        .unwrap();
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        // One letter off a key: still not applied, but named with the key.
        let c = Config::load(
            None,
            env(&[("RPPG_SCAN_DURATON_S", "20"), ("RPPG_API_TOKEM", "x")]),
        )
        .unwrap();
        assert_eq!(c.scan.duration_s, 30.0);
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert_eq!(c.warnings[0].key, "RPPG_SCAN_DURATON_S");
        assert_eq!(c.warnings[0].fix, "did you mean RPPG_SCAN_DURATION_S?");
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let c = Config::load(
            Some(("f.toml", "[scan]\nduration_s = 45\n")),
            env(&[
                ("RPPG_SCAN_DURATION_S", "20"),
                ("RPPG_SIGNAL_HR_BAND_HZ", "[0.75, 3.5]"),
                ("RPPG_DEVICE_ID", "kiosk-7.lobby"),
                ("RPPG_CONFIG", "ignored.toml"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(c.scan.duration_s, 20.0);
        assert_eq!(c.signal.hr_band_hz, [0.75, 3.5]);
        assert_eq!(c.device.id, "kiosk-7.lobby");
    }

    #[test]
    fn every_problem_is_reported_with_key_and_fix() {
        let text = "[scan]\nduraton_s = 3\nface_lost_timeout_s = \"long\"\nlow_snr_db = 99\n[sigal]\nx = 1\n[signal]\nmethod = \"ica\"\n";
        let err = Config::load(
            Some(("bad.toml", text)),
            env(&[("RPPG_OUTBOX_MAX_BYTES", "-5")]),
        )
        .unwrap_err();
        let msg = err.to_string();
        for needle in [
            "scan.duraton_s (bad.toml): unknown key",
            "did you mean `duration_s`",
            "scan.face_lost_timeout_s (bad.toml): must be a number, found a string",
            "sigal (bad.toml): unknown section",
            "did you mean `signal`",
            // Values serde refuses, every one of them, in our words.
            "signal.method (configuration): \"ica\" is not one of pos, chrom, green, red",
            "fix: use one of pos, chrom, green, red",
        ] {
            assert!(msg.contains(needle), "missing {needle:?} in:\n{msg}");
        }
        assert!(
            msg.contains(
                "outbox.max_bytes (configuration): invalid value: integer -5, expected u64"
            ),
            "the second refused value:\n{msg}"
        );
        assert!(!msg.contains('`') || !msg.contains("variant"), "{msg}");
        assert!(!msg.contains("\n\n"), "no blank lines:\n{msg}");
    }

    #[test]
    fn a_secret_where_a_variable_name_belongs_is_refused_without_being_repeated() {
        for pasted in [
            "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
            "whsec_LEAKCANARYpasted",
            "k7Gq2ZpL9xWmR4tYvB8nC1dE",
            "has space",
        ] {
            let text = format!(
                "[[webhook]]\nname = \"a\"\nurl = \"https://e.example/h\"\nsecret_env = [{pasted:?}]\n"
            );
            let msg = Config::load(Some(("p.toml", &text)), env(&[]))
                .unwrap_err()
                .to_string();
            assert!(
                msg.contains("is not the name of an environment variable"),
                "{msg}"
            );
            assert!(!msg.contains(pasted), "{pasted} repeated in {msg}");
        }
        for name in [
            "RPPG_HOOK_SECRET",
            "hook_secret_2",
            "KIOSK7_WEBHOOK_KEY_2024",
        ] {
            assert!(is_variable_name(name), "{name}");
        }
    }

    #[test]
    fn device_ids_that_break_topics_and_twin_mqtt_client_ids_are_refused() {
        let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
        let broker = |name: &str, client_id: &str| {
            format!("[[mqtt]]\nname = \"{name}\"\nhost = \"b\"\nallow_insecure = true\nclient_id = \"{client_id}\"\nsecrets = [\"{secret}\"]\n")
        };
        for id in ["kiosk/#", "a+b", "two words", ""] {
            let text = format!("[device]\nid = {id:?}\n");
            let loaded = Config::load(Some(("d.toml", &text)), env(&[]));
            assert_eq!(loaded.is_err(), !id.is_empty(), "{id:?}");
        }
        let twins = format!("{}{}", broker("one", "kiosk"), broker("two", "kiosk"));
        let msg = Config::load(Some(("t.toml", &twins)), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("mqtt[1].client_id"), "{msg}");
        // Left empty, each lane's id has its name in it.
        let defaults = format!("{}{}", broker("one", ""), broker("two", ""));
        let c = Config::load(Some(("t.toml", &defaults)), env(&[])).unwrap();
        assert_ne!(c.mqtt[0].client_id("k"), c.mqtt[1].client_id("k"));
    }

    #[test]
    fn out_of_range_values_are_explained() {
        let text = "[signal]\nhr_band_hz = [4.0, 0.7]\nfilter_order = 3\n[scan]\nlow_snr_db = 99\n[vision]\nsearch_width_px = 5\ndetect_interval_max_s = 0.25\n";
        let msg = Config::load(Some(("r.toml", text)), env(&[]))
            .unwrap_err()
            .to_string();
        for needle in [
            "signal.hr_band_hz",
            "signal.filter_order",
            "scan.low_snr_db",
            "vision.search_width_px",
            "vision.detect_interval_max_s",
        ] {
            assert!(msg.contains(needle), "missing {needle} in:\n{msg}");
        }
        let msg = Config::load(Some(("m.toml", "[signal]\nmethod = \"ica\"\n")), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("signal.method") && msg.contains("pos"),
            "{msg}"
        );
    }

    #[test]
    fn broken_toml_syntax_is_reported_not_panicked() {
        let msg = Config::load(Some(("s.toml", "[scan\nduration_s = ")), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("not valid TOML"), "{msg}");
        let msg = Config::load(None, env(&[("RPPG_SCAN_DURATION_S", "soon")]))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("RPPG_SCAN_DURATION_S") && msg.contains("not a number"),
            "{msg}"
        );
    }

    #[test]
    fn webhook_and_mqtt_destinations_share_the_same_checks() {
        let text = "[[webhook]]\nname = \"a b\"\nurl = \"https://x.org/h\"\nsecrets = [\"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"]\nmax_age_s = -1\n\
                    [[mqtt]]\nname = \"m\"\nhost = \"h\"\nallow_insecure = true\nsecrets = [\"whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\"]\nmax_age_s = -1\nevents = [\"NOPE\"]\n";
        let msg = Config::load(Some(("d.toml", text)), env(&[]))
            .unwrap_err()
            .to_string();
        for needle in [
            "webhook[0].name",
            "webhook[0].max_age_s",
            "mqtt[0].max_age_s",
            "mqtt[0].events",
        ] {
            assert!(msg.contains(needle), "missing {needle} in:\n{msg}");
        }
        assert!(!msg.contains("C2FVsBQIhrsc"), "a secret leaked: {msg}");
    }
}
