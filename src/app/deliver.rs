//! App side of delivery: where the outbox lives, running lanes beside a
//! scan, `sync`, and the `outbox` inspection commands.

use super::{unix_ms, AppError};
use crate::config::Config;
use crate::delivery::{Delivery, Lane, Setup};
use crate::outbox::{DestinationStats, Outbox, OutboxConfig, OutboxError};
use serde_json::json;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The outbox directory: configured, else `$XDG_DATA_HOME/rppg-agent/outbox`,
/// else `~/.local/share/rppg-agent/outbox`, else `./rppg-agent-outbox`.
pub fn outbox_path(config: &Config) -> PathBuf {
    if !config.outbox.path.is_empty() {
        return PathBuf::from(&config.outbox.path);
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")));
    match base {
        Some(b) => b.join("rppg-agent").join("outbox"),
        None => PathBuf::from("rppg-agent-outbox"),
    }
}

/// Outboxes up to this size are copied before sled opens them, so that if
/// they turn out damaged the evidence is kept exactly as it was found: sled's
/// recovery rewrites a damaged log tail while it opens. A healthy outbox
/// drains to a few hundred KiB (about 15,000 pending events fit in 16 MiB),
/// and copying 16 MiB costs about a second on a slow SD card.
const EVIDENCE_COPY_MAX_BYTES: u64 = 16 << 20;

/// Opens the outbox named by the config, creating its directory. A damaged
/// database is moved aside (kept as evidence, never deleted), a fresh
/// outbox is started, and every event that can still be read is salvaged
/// into it, with a warning that says what happened and where the old one
/// went: a kiosk must keep measuring and delivering after a power cut.
pub fn open_outbox(config: &Config) -> Result<Arc<Outbox>, AppError> {
    let path = outbox_path(config);
    let name = |suffix: &str| {
        path.with_file_name(format!(
            "{}.{suffix}-{}",
            path.file_name()
                .map_or("outbox".into(), |n| n.to_string_lossy()),
            unix_ms()
        ))
    };
    let dir_error = |what: &str, at: &std::path::Path| {
        let at = at.display().to_string();
        let what = what.to_string();
        move |source| AppError::OutboxDir {
            path: format!("{at} ({what})"),
            source,
        }
    };
    remove_stale_scratch(&path);
    let snapshot = snapshot_before_open(&path, &name("opening"))?;
    let (detail, snapshot) = match open_outbox_as_is(config) {
        Err(AppError::Outbox(OutboxError::Damaged { detail, .. })) => (detail, snapshot),
        other => {
            if let Some(s) = snapshot {
                let _ = std::fs::remove_dir_all(s);
            }
            return other;
        }
    };
    // The evidence: the copy taken before sled touched it, or (too large to
    // copy on every start) the database as sled's recovery left it.
    let aside = name("damaged");
    let salvage_from = name("salvaging");
    let exact = snapshot.is_some();
    match snapshot {
        Some(snapshot) => {
            std::fs::rename(&snapshot, &aside)
                .map_err(dir_error("keeping the evidence", &aside))?;
            std::fs::rename(&path, &salvage_from)
                .map_err(dir_error("moving the damaged outbox aside", &path))?;
        }
        None => {
            std::fs::rename(&path, &aside)
                .map_err(dir_error("moving the damaged outbox aside", &path))?;
            copy_dir(&aside, &salvage_from).map_err(dir_error(
                "copying the damaged outbox to salvage it",
                &salvage_from,
            ))?;
        }
    }
    let outbox = open_outbox_as_is(config)?;
    let salvaged = outbox.salvage_from(&salvage_from);
    let _ = std::fs::remove_dir_all(&salvage_from);
    let salvaged = salvaged?;
    let recovered = match &salvaged.unopenable {
        Some(why) => format!("nothing could be salvaged from it ({why})"),
        None => format!(
            "{} readable events were salvaged into the new outbox ({} pending and {} dead-letter entries kept as they were){}{}{}",
            salvaged.events,
            salvaged.pending,
            salvaged.dead,
            if salvaged.without_snapshot {
                "; its snapshot was damaged, so they were read from its log"
            } else {
                ""
            },
            if salvaged.unreadable > 0 {
                format!("; {} records could not be read", salvaged.unreadable)
            } else {
                String::new()
            },
            if salvaged.missing {
                "; events it had stored are missing from it"
            } else {
                ""
            }
        ),
    };
    if !salvaged.complete() {
        outbox.note_loss(format!(
            "the damaged outbox moved aside to {} held events that could not be recovered",
            aside.display()
        ));
    }
    eprintln!(
        "warning: the outbox at {} is damaged ({detail}). It was moved aside to {}{} and kept as \
         evidence (nothing was deleted); a new outbox starts now, and {recovered}.",
        path.display(),
        aside.display(),
        if exact {
            ", exactly as found,"
        } else {
            " (as the storage engine's recovery left it: it is over 16 MiB, too large to copy before every start)"
        },
    );
    Ok(outbox)
}

/// Removes scratch copies (`<outbox>.opening-*`, `.salvaging-*`,
/// `.inspecting-*`) that a process killed mid-copy left behind, once they
/// are ten minutes old (a younger one may belong to a process still running).
/// Evidence (`.damaged-*`) is never touched.
fn remove_stale_scratch(path: &std::path::Path) {
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let name = name.to_string_lossy();
    let parent = if parent.as_os_str().is_empty() {
        std::path::Path::new(".")
    } else {
        parent
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let scratch = ["opening", "salvaging", "inspecting"]
            .iter()
            .any(|s| file.starts_with(&format!("{name}.{s}-")));
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(600));
        if scratch && old {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Copies the outbox directory to `to` if it exists and is small enough.
/// Best effort: on a full or read-only disk the copy fails, its remains are
/// removed, and the outbox is opened without it (delivering is what frees
/// space; a damaged outbox is then kept as sled's recovery left it).
fn snapshot_before_open(
    path: &std::path::Path,
    to: &std::path::Path,
) -> Result<Option<PathBuf>, AppError> {
    if !path.is_dir() || dir_size(path) > EVIDENCE_COPY_MAX_BYTES {
        return Ok(None);
    }
    match copy_dir(path, to) {
        Ok(()) => Ok(Some(to.to_path_buf())),
        Err(e) => {
            let _ = std::fs::remove_dir_all(to);
            tracing::warn!(
                error = %e,
                "could not copy the outbox before opening it (full or read-only disk?); \
                 opening it without the copy"
            );
            Ok(None)
        }
    }
}

fn dir_size(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_name() != crate::outbox::RESERVE_FILE)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_size(&e.path()),
            _ => e.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

/// Copies a directory tree of plain files (an outbox database).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    crate::outbox::private_dir(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_name() == crate::outbox::RESERVE_FILE {
            continue; // zeros kept for room, not evidence
        }
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// Opens the outbox named by the config for inspection. A damaged database
/// is an error, and is left exactly as it was found (a small one is opened
/// through a copy), for `scan`, `run` or `sync` to move aside and salvage.
pub fn inspect_outbox(config: &Config) -> Result<Arc<Outbox>, AppError> {
    let path = outbox_path(config);
    let scratch = path.with_file_name(format!(
        "{}.inspecting-{}",
        path.file_name()
            .map_or("outbox".into(), |n| n.to_string_lossy()),
        unix_ms()
    ));
    let snapshot = snapshot_before_open(&path, &scratch)?;
    let opened = open_outbox_as_is(config);
    if let Some(snapshot) = snapshot {
        if matches!(opened, Err(AppError::Outbox(OutboxError::Damaged { .. }))) {
            // Put back the bytes as found; sled's recovery changed them.
            let changed = scratch.with_extension("changed");
            if std::fs::rename(&path, &changed).is_ok() {
                let _ = std::fs::rename(&snapshot, &path);
                let _ = std::fs::remove_dir_all(&changed);
            }
        } else {
            let _ = std::fs::remove_dir_all(snapshot);
        }
    }
    opened
}

/// An outbox opened for a look only, and where it came from.
pub struct Inspection {
    pub outbox: Arc<Outbox>,
    /// A copy made because a running agent holds the outbox: removed on drop.
    copy: Option<PathBuf>,
}

impl Inspection {
    /// Whether this is a copy of an outbox a running agent holds.
    pub fn is_copy(&self) -> bool {
        self.copy.is_some()
    }
}

impl Drop for Inspection {
    fn drop(&mut self) {
        if let Some(copy) = &self.copy {
            // Open files of a removed folder stay readable until closed.
            let _ = std::fs::remove_dir_all(copy);
        }
    }
}

/// For `outbox stats|list|show`: the outbox, or while `rppg-agent run` (or
/// a `scan`) holds it, a copy of it taken now, so inspection works beside
/// a running daemon. The copy is what was on disk at that moment (sled
/// flushes at least every 500 ms) and is removed afterwards.
pub fn inspect_outbox_read_only(config: &Config) -> Result<Inspection, AppError> {
    match inspect_outbox(config) {
        Ok(outbox) => Ok(Inspection { outbox, copy: None }),
        Err(AppError::Outbox(e)) if e.is_locked() => {
            let path = outbox_path(config);
            let copy = path.with_file_name(format!(
                "{}.inspecting-{}-{}",
                path.file_name()
                    .map_or("outbox".into(), |n| n.to_string_lossy()),
                std::process::id(),
                unix_ms()
            ));
            if let Err(source) = copy_dir(&path, &copy) {
                let _ = std::fs::remove_dir_all(&copy);
                return Err(AppError::OutboxDir {
                    path: copy.display().to_string(),
                    source,
                });
            }
            let outbox = Outbox::open(OutboxConfig {
                path: copy.clone(),
                max_bytes: config.outbox.max_bytes,
                cache_capacity_bytes: config.outbox.cache_capacity_bytes,
                retention_ms: config.outbox.retention_s.saturating_mul(1000),
            });
            match outbox {
                Ok(o) => Ok(Inspection {
                    outbox: Arc::new(o),
                    copy: Some(copy),
                }),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&copy);
                    Err(e.into())
                }
            }
        }
        Err(e) => Err(e),
    }
}

/// Opens the outbox named by the config as it is.
fn open_outbox_as_is(config: &Config) -> Result<Arc<Outbox>, AppError> {
    let path = outbox_path(config);
    if let Some(parent) = path.parent() {
        // create_dir_all would say "File exists" for a file in the way.
        if let Some(file) = path.ancestors().find(|a| a.is_file()) {
            return Err(AppError::OutboxDir {
                path: path.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotADirectory,
                    format!("{} is a file, not a directory", file.display()),
                ),
            });
        }
        std::fs::create_dir_all(parent).map_err(|source| AppError::OutboxDir {
            path: parent.display().to_string(),
            source,
        })?;
    }
    let outbox = Outbox::open(OutboxConfig {
        path,
        max_bytes: config.outbox.max_bytes,
        cache_capacity_bytes: config.outbox.cache_capacity_bytes,
        retention_ms: config.outbox.retention_s.saturating_mul(1000),
    })?;
    // The audit trail is kept for outbox.retention_s, then purged.
    outbox.purge_delivered(unix_ms())?;
    Ok(Arc::new(outbox))
}

/// Warns (stderr) about destinations that send without encryption.
pub fn warn_insecure(config: &Config) {
    for w in config.webhook.iter().filter(|w| w.url.scheme() == "http") {
        eprintln!(
            "warning: destination {} sends events unencrypted to {} (allow_insecure = true)",
            w.name,
            w.display_url()
        );
    }
    for m in config.mqtt.iter().filter(|m| m.tls.is_none()) {
        eprintln!(
            "warning: destination {} sends events unencrypted to mqtt://{}:{} (allow_insecure = true)",
            m.name, m.host, m.port
        );
    }
}

fn probe(config: &Config) -> (Duration, Duration) {
    (
        Duration::from_secs_f64(config.delivery.probe_initial_s),
        Duration::from_secs_f64(config.delivery.probe_max_s),
    )
}

/// Starts the lanes of every configured destination (inside a runtime).
pub fn start(
    config: &Config,
    outbox: Arc<Outbox>,
    first_pass_all: bool,
) -> Result<Delivery, AppError> {
    Ok(Delivery::start(
        outbox,
        Setup {
            webhooks: &config.webhook,
            mqtt: &config.mqtt,
            device_id: super::device_id(config),
            probe: probe(config),
            first_pass_all,
        },
        unix_ms(),
    )?)
}

/// Pending events per lane right now.
pub fn pending(
    outbox: &Outbox,
    lanes: &[Lane],
) -> Result<Vec<(String, DestinationStats)>, AppError> {
    let now = unix_ms();
    lanes
        .iter()
        .map(|l| Ok((l.name.clone(), outbox.stats(&l.name, now)?)))
        .collect()
}

/// Lets the lanes work until every lane is empty or `timeout` passes;
/// returns the final per-lane counts.
pub async fn drain(
    outbox: &Arc<Outbox>,
    lanes: &[Lane],
    timeout: Duration,
) -> Result<Vec<(String, DestinationStats)>, AppError> {
    let start = Instant::now();
    loop {
        let ob = outbox.clone();
        let names: Vec<String> = lanes.iter().map(|l| l.name.clone()).collect();
        // One key read per lane: counting a backlog of a million every 50 ms
        // would cost more than delivering it.
        let left = tokio::task::spawn_blocking(move || names.iter().any(|n| ob.has_pending(n)))
            .await
            .expect("the check does not panic");
        if !left || start.elapsed() >= timeout {
            let ob = outbox.clone();
            let ls = lanes.to_vec();
            return tokio::task::spawn_blocking(move || pending(&ob, &ls))
                .await
                .expect("stats task does not panic");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Human summary of lanes after delivery.
pub fn summary(stats: &[(String, DestinationStats)], lanes: &[Lane]) -> Vec<String> {
    stats
        .iter()
        .map(|(name, s)| {
            let lane = lanes.iter().find(|l| &l.name == name);
            let last = lane
                .and_then(|l| l.stats.last_error.lock().ok().and_then(|e| e.clone()))
                .map(|e| format!("; last problem: {e}"))
                .unwrap_or_default();
            let offline = if lane.is_some_and(|l| l.stats.offline.load(Ordering::Relaxed)) {
                " (offline)"
            } else {
                ""
            };
            format!(
                "{name}{offline}: {} pending, {} dead-lettered, {} delivered{last}",
                s.pending, s.dead, s.delivered
            )
        })
        .collect()
}

/// `sync`: delivers everything pending, now; 0 when every lane is empty.
pub fn sync(config: &Config, timeout: Duration) -> Result<i32, AppError> {
    if !config.has_destinations() {
        return Err(AppError::Usage(
            "no destinations are configured: add a [[webhook]] or [[mqtt]] table (see `rppg-agent config default`)".into(),
        ));
    }
    warn_insecure(config);
    let outbox = open_outbox(config)?;
    let rt = runtime()?;
    let stats = rt.block_on(async {
        let delivery = start(config, outbox.clone(), true)?;
        let lanes = delivery.lanes().to_vec();
        let stats = drain(&outbox, &lanes, timeout).await;
        let failures = delivery.stop().await;
        if let Some((name, e)) = failures.into_iter().next() {
            return Err(AppError::Lane { name, source: e });
        }
        Ok::<_, AppError>((stats?, lanes))
    })?;
    let (stats, lanes) = stats;
    for line in summary(&stats, &lanes) {
        println!("{line}");
    }
    outbox.flush()?;
    if let Some(loss) = outbox.loss() {
        eprintln!("error: {loss}; what could be read was delivered or is pending");
        return Ok(1);
    }
    Ok(outcome_code(&stats, &lanes))
}

/// The exit code after delivering: 4 when any event was dead-lettered in
/// this run (rejected or out of retries: not delivered, kept in the
/// dead-letter store), else 3 when events are still pending, else 0.
fn outcome_code(stats: &[(String, DestinationStats)], lanes: &[Lane]) -> i32 {
    let dead: u64 = lanes
        .iter()
        .map(|l| l.stats.dead_lettered.load(Ordering::Relaxed))
        .sum();
    if dead > 0 {
        eprintln!(
            "{dead} event(s) were dead-lettered: see `rppg-agent outbox list --dead`, \
             then `rppg-agent outbox replay` once the receiver accepts them"
        );
        4
    } else if stats.iter().any(|(_, s)| s.pending > 0) {
        3
    } else {
        0
    }
}

/// `send-test`: stores `count` TEST_EVENTs at `rate` per second (0: no
/// pacing) while the lanes deliver, printing each one's id once it is
/// durable; then drains for `timeout`. 0 when every lane is empty.
pub fn send_test(
    config: &Config,
    count: u64,
    rate: f64,
    timeout: Duration,
) -> Result<i32, AppError> {
    use crate::events::{ulid, Event, EventKind, Stamper};
    use std::io::Write;
    if !config.has_destinations() {
        return Err(AppError::Usage(
            "no destinations are configured: add a [[webhook]] or [[mqtt]] table (see `rppg-agent config default`)".into(),
        ));
    }
    warn_insecure(config);
    let outbox = open_outbox(config)?;
    let rt = runtime()?;
    let _guard = rt.enter();
    let delivery = start(config, outbox.clone(), false)?;
    let lanes: Vec<Lane> = delivery
        .lanes()
        .iter()
        .filter(|l| l.wants(EventKind::TestEvent))
        .cloned()
        .collect();
    if lanes.is_empty() {
        rt.block_on(delivery.stop());
        return Err(AppError::Usage(
            "no destination receives TEST_EVENT: add it to a destination's `events` list, or remove the list (FHIR destinations receive completed scans only)".into(),
        ));
    }
    let names: Vec<&str> = lanes.iter().map(|l| l.name.as_str()).collect();
    let session = format!("ses_{}", ulid(unix_ms(), super::random_u128()));
    let mut stamper = Stamper::new(super::device_id(config), session);
    let started = Instant::now();
    let mut stdout = std::io::stdout().lock();
    let mut stored = Ok(());
    for index in 1..=count {
        if rate > 0.0 {
            let due = started + Duration::from_secs_f64((index - 1) as f64 / rate);
            std::thread::sleep(due.saturating_duration_since(Instant::now()));
        }
        let now = unix_ms();
        let event = stamper.stamp(&Event::test(index, count), now, super::random_u128());
        match outbox.append(&event, &names, now) {
            Ok(outbox_id) => {
                for l in &lanes {
                    l.wake.notify_one();
                }
                writeln!(
                    stdout,
                    "{}",
                    json!({"id": event.id, "index": index, "outbox_id": outbox_id})
                )?;
            }
            Err(e) => {
                stored = Err(e);
                break;
            }
        }
    }
    drop(stdout);
    let result = rt.block_on(async {
        let stats = drain(&outbox, &lanes, timeout).await;
        let failures = delivery.stop().await;
        if let Some((name, e)) = failures.into_iter().next() {
            return Err(AppError::Lane { name, source: e });
        }
        stats
    });
    outbox.flush()?;
    stored?;
    let stats = result?;
    for line in summary(&stats, &lanes) {
        eprintln!("{line}");
    }
    Ok(outcome_code(&stats, &lanes))
}

/// A small multi-threaded runtime for the delivery lanes.
pub fn runtime() -> Result<tokio::runtime::Runtime, AppError> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        // Outbox reads and writes run on blocking threads. tokio's default
        // (up to 512) let thousands of lanes start hundreds of threads, each
        // with its own allocator arena: 3,000 destinations took ~1 GB. Disk
        // work does not go faster with more threads than this.
        .max_blocking_threads(MAX_BLOCKING_THREADS)
        .enable_all()
        .build()?)
}

/// Threads for outbox work (see [`runtime`]).
const MAX_BLOCKING_THREADS: usize = 8;

/// Lane names known to the config or present in the outbox.
fn lane_names(config: &Config, outbox: &Outbox) -> Result<Vec<String>, AppError> {
    let mut names = config.destination_names();
    for n in outbox.lane_names()? {
        if !names.contains(&n) {
            names.push(n);
        }
    }
    Ok(names)
}

/// `outbox stats|list|show|replay|purge`.
pub fn outbox_command(config: &Config, action: super::cli::OutboxAction) -> Result<i32, AppError> {
    use super::cli::OutboxAction::*;
    let read_only = matches!(action, Stats { .. } | List { .. } | Show { .. });
    let inspection = if read_only {
        inspect_outbox_read_only(config)?
    } else {
        match inspect_outbox(config) {
            Ok(outbox) => Inspection { outbox, copy: None },
            Err(AppError::Outbox(e)) if e.is_locked() => {
                return Err(AppError::Usage(format!(
                    "{}: a running rppg-agent (run or scan) holds the outbox; replay and purge \
                     change it, so stop that agent first (stats, list and show work beside it)",
                    outbox_path(config).display()
                )))
            }
            Err(e) => return Err(e),
        }
    };
    if inspection.is_copy() {
        eprintln!("note: a running rppg-agent holds the outbox; this is a copy taken just now");
    }
    let outbox = inspection.outbox.clone();
    let shown_path = outbox_path(config);
    let now = unix_ms();
    match action {
        Stats { json } => {
            let mut lanes = Vec::new();
            for name in lane_names(config, &outbox)? {
                let s = outbox.stats(&name, now)?;
                lanes.push((name, s));
            }
            if json {
                let v = json!({
                    "path": shown_path.display().to_string(),
                    "stored_bytes": outbox.stored_bytes(),
                    "shed_intermediate_results": outbox.shed_count()?,
                    "destinations": lanes.iter().map(|(n, s)| json!({"name": n, "pending": s.pending, "due_now": s.due_now, "dead": s.dead, "delivered": s.delivered})).collect::<Vec<_>>(),
                });
                println!("{v}");
            } else {
                println!(
                    "outbox {}: {} bytes stored, {} live events shed (intermediate results, hints)",
                    shown_path.display(),
                    outbox.stored_bytes(),
                    outbox.shed_count()?
                );
                if lanes.is_empty() {
                    println!("no destinations configured and nothing stored");
                }
                for (n, s) in lanes {
                    println!(
                        "  {n}: {} pending ({} due now), {} dead-lettered, {} delivered (audit)",
                        s.pending, s.due_now, s.dead, s.delivered
                    );
                }
            }
        }
        List {
            dest,
            dead,
            delivered,
            json,
        } => {
            let mut rows = Vec::new();
            if delivered {
                for (lane, id, d) in outbox.delivered_records(dest.as_deref())? {
                    rows.push(json!({"destination": lane, "outbox_id": id, "id": d.event_id, "delivered_at_ms": d.delivered_at_ms, "attempts": d.attempts, "status": d.status}));
                }
                // Oldest first across destinations, as the other lists.
                rows.sort_by_key(|r| (r["delivered_at_ms"].as_u64(), r["outbox_id"].as_u64()));
            } else if dead {
                for (lane, id, meta, d) in outbox.dead_letters(dest.as_deref())? {
                    rows.push(json!({"destination": lane, "outbox_id": id, "id": meta.event_id, "event": meta.kind, "sessionId": meta.session_id, "sequence": meta.sequence, "reason": d.reason, "attempts": d.history.len(), "dead_at_ms": d.dead_at_ms}));
                }
            } else {
                for lane in lane_names(config, &outbox)? {
                    if dest.as_ref().is_some_and(|d| d != &lane) {
                        continue;
                    }
                    for p in outbox.due(&lane, u64::MAX, usize::MAX)? {
                        rows.push(json!({"destination": lane, "outbox_id": p.outbox_id, "id": p.meta.event_id, "event": p.meta.kind, "sessionId": p.meta.session_id, "sequence": p.meta.sequence, "attempts": p.state.attempts, "next_attempt_ms": p.state.next_attempt_ms, "last_result": p.state.history.last().map(|h| h.result.clone())}));
                    }
                }
            }
            let what = if delivered {
                "delivered (within outbox.retention_s)"
            } else if dead {
                "dead-lettered"
            } else {
                "pending"
            };
            if json {
                println!("{}", serde_json::Value::Array(rows));
            } else if rows.is_empty() {
                println!("nothing {what}");
            } else if delivered {
                for r in rows {
                    println!(
                        "{:<12} {:<32} delivered {} after {} attempt(s): {}",
                        r["destination"].as_str().unwrap_or(""),
                        r["id"].as_str().unwrap_or(""),
                        crate::events::rfc3339(r["delivered_at_ms"].as_u64().unwrap_or(0)),
                        r["attempts"],
                        r["status"].as_str().unwrap_or("")
                    );
                }
            } else {
                for r in rows {
                    println!(
                        "{:<12} {:<32} {:<24} seq {:<4} {}",
                        r["destination"].as_str().unwrap_or(""),
                        r["id"].as_str().unwrap_or(""),
                        r["event"].as_str().unwrap_or(""),
                        r["sequence"],
                        if dead {
                            format!("dead: {}", r["reason"].as_str().unwrap_or(""))
                        } else {
                            format!("attempts {}", r["attempts"])
                        }
                    );
                }
            }
        }
        Show { id, json } => {
            let (outbox_id, meta, bytes) = match outbox.find(&id) {
                Ok(found) => found,
                Err(OutboxError::NotFound(_)) => return show_delivered(&outbox, &id, json),
                Err(e) => return Err(e.into()),
            };
            let mut lanes = Vec::new();
            for lane in lane_names(config, &outbox)? {
                if let Some(state) = outbox.lane_state(&lane, outbox_id)? {
                    lanes.push(json!({"destination": lane, "state": state}));
                }
            }
            let envelope: serde_json::Value =
                serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
            let v = json!({"outbox_id": outbox_id, "meta": meta, "envelope": envelope, "destinations": lanes});
            if json {
                println!("{v}");
            } else {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            }
        }
        Replay { dest, since_ms, id } => {
            let n = outbox.replay(dest.as_deref(), id.as_deref(), since_ms)?;
            println!(
                "{n} dead letter(s) moved back to pending; run `rppg-agent sync` to deliver them"
            );
        }
        Purge { dead, dest, yes } => {
            if dead {
                if !yes {
                    return Err(AppError::Usage(
                        "purging dead letters deletes events for good; add --yes to confirm".into(),
                    ));
                }
                let n = outbox.purge_dead(dest.as_deref())?;
                println!("{n} dead letter(s) deleted");
            } else {
                let n = outbox.purge_delivered(now)?;
                println!("{n} delivered audit record(s) older than outbox.retention_s deleted");
            }
        }
    }
    outbox.flush()?;
    Ok(0)
}

/// `outbox show` for an event no longer stored: every destination
/// acknowledged it, so only its audit records remain.
fn show_delivered(outbox: &Outbox, id: &str, json: bool) -> Result<i32, AppError> {
    let records: Vec<_> = outbox
        .delivered_records(None)?
        .into_iter()
        .filter(|(_, n, d)| d.event_id == id || n.to_string() == id)
        .collect();
    let Some((_, outbox_id, first)) = records.first() else {
        return Err(OutboxError::NotFound(id.to_string()).into());
    };
    let v = json!({
        "outbox_id": outbox_id,
        "id": first.event_id,
        "envelope": null,
        "note": "delivered to every destination: the event itself is no longer stored; its audit records are kept for outbox.retention_s",
        "destinations": records.iter().map(|(lane, _, d)| json!({"destination": lane, "state": {"status": "delivered", "delivered": d}})).collect::<Vec<_>>(),
    });
    if json {
        println!("{v}");
    } else {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_scratch_copies_are_removed_and_evidence_and_young_copies_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let make = |name: &str, age_s: u64| {
            let p = dir.path().join(name);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("db"), b"x").unwrap();
            let when = std::time::SystemTime::now() - Duration::from_secs(age_s);
            std::fs::File::open(&p).unwrap().set_modified(when).unwrap();
            p
        };
        let stale = make("outbox.opening-1", 3600);
        let stale_salvage = make("outbox.salvaging-2", 3600);
        let young = make("outbox.opening-3", 5);
        let evidence = make("outbox.damaged-4", 3600);
        let other = make("other.opening-5", 3600);
        remove_stale_scratch(&dir.path().join("outbox"));
        assert!(!stale.exists() && !stale_salvage.exists());
        assert!(young.exists(), "may belong to a process still running");
        assert!(evidence.exists(), "evidence is never removed");
        assert!(other.exists(), "another outbox's files are not ours");
    }
}
