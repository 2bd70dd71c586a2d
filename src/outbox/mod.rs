//! The durable outbox: every accepted event is on disk before anyone is told
//! it was accepted, and stays until every destination has acknowledged it
//! or it has been dead-lettered there.
//!
//! # Storage (sled 0.34.7)
//!
//! Trees, all keyed so that byte order is emission order:
//!
//! | tree | key | value |
//! |---|---|---|
//! | `events` | outbox id, u64 big-endian | `[1] [meta length u32 BE] [meta JSON] [event bytes]` |
//! | `lanes` | destination name, `0x00`, outbox id >> 6 BE | 64 ids' pending entries, see [`lanes`] |
//! | `dead` | destination name, `0x00`, outbox id BE | `[1] [JSON DeadLetter]` |
//! | `delivered` | destination name, `0x00`, outbox id BE | `[1] [JSON Delivered]` (audit trail) |
//! | `meta` | `"shed"` | shed counter, u64 BE |
//! | `meta` | `"appended"` | highest outbox id ever appended, u64 BE |
//! | `meta` | `"bytes"` | stored event bytes, then the sheddable part of them, u64 BE each |
//!
//! Pending entries used to be one item each in a `pending` tree (key
//! destination, `0x00`, outbox id; value `[1] [JSON Attempts]`). An outbox
//! that still has that tree is moved to `lanes` when it is opened, in
//! batches of one transaction each; the old entry goes in the transaction
//! that writes the new one, so a crash mid-way loses nothing.
//!
//! The `"bytes"` counters change in the same transaction as the events they
//! count, so opening never reads the events (a 1,000,000-event backlog
//! would pull every page into memory); an outbox without them (written by
//! an older version) is counted once at open.
//!
//! The leading byte of every value is the format version (1). The outbox id
//! comes from sled's `generate_id` (monotonic, unique across restarts), so
//! iterating a destination's prefix yields its events in emission order. The
//! event bytes are exactly the stamped envelope: what is signed and sent.
//!
//! # Invariants
//!
//! - **Durability point**: [`Outbox::append`] returns only after the event
//!   and its per-destination pending entries (one multi-tree transaction)
//!   have been flushed to disk. Concurrent appends are group-committed: a
//!   leader writes every queued event in one transaction and one flush.
//! - Acknowledgements, reschedules and dead letters are atomic but become
//!   durable on sled's flush timer (500 ms) or the next append, not before
//!   returning: losing one in a crash can only cause a repeated delivery of
//!   the same event id (at-least-once), never a lost event, and it keeps a
//!   backlog drain from paying an fsync per event.
//! - **One terminal state per event per destination**: a pending entry
//!   becomes exactly one of delivered ([`Outbox::ack`], only on a real
//!   acknowledgement) or dead-lettered ([`Outbox::dead_letter`], with the
//!   reason and the attempt history), atomically with removing it from
//!   `pending`. Replay moves a dead letter back to pending.
//! - An event record is deleted when no destination has it pending or dead;
//!   delivered audit records outlive it for `retention` and are then purged.
//! - **Size cap**: the sum of stored event bytes never exceeds `max_bytes`.
//!   To make room, INTERMEDIATE_RESULTS and CONSTRAINT_WARNING events (live,
//!   superseded by the next) are shed, oldest first, and counted; lifecycle
//!   events and SCAN_COMPLETED are never shed. If there
//!   is still no room, the append fails with [`OutboxError::Full`].
//! - sled and I/O failures are [`OutboxError`]s that say what to do, never panics.
//!
//! # Damage
//!
//! A database sled reports as corrupt, or panics on while opening, is
//! [`OutboxError::Damaged`]. The commands that deliver move it aside
//! (`<path>.damaged-<unix ms>`, kept byte for byte), start a new outbox and
//! salvage into it every event that can still be read, with its lane states
//! ([`Outbox::salvage_from`]); nothing is deleted.
//!
//! sled alone cannot be trusted to notice damage: 0.34 treats damage inside
//! a freshly written log (before the file was reopened) as a torn write and
//! silently drops every record from there on, then opens cleanly. So the
//! outbox keeps its own **high-water mark**: each append batch stores the
//! highest id it wrote in the `meta` tree (same transaction) and, after the
//! flush, in a small checksummed file beside sled's ([`HIGH_WATER_FILE`]).
//! The file is written after sled's flush and never ahead of it, so at open
//! `file > meta` can only mean that sled lost records it had made durable:
//! that is [`OutboxError::Damaged`], and the records that survived are
//! salvaged. The file is not fsynced (one extra fsync would halve append
//! throughput): after a power cut it can lag behind, which weakens the check
//! for the last batches but can never raise a false alarm.

use crate::events::{EventKind, StampedEvent};
use serde::{Deserialize, Serialize};
use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};
use sled::Transactional;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

mod lanes;

/// Format version byte of every stored value.
const VERSION: u8 = 1;

/// The high-water mark file inside the outbox directory (see "Damage").
pub const HIGH_WATER_FILE: &str = "rppg-appended";
const HIGH_WATER_MAGIC: &[u8; 8] = b"RPPGHWM1";

/// Outbox settings.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxConfig {
    pub path: PathBuf,
    /// Cap on stored event bytes.
    pub max_bytes: u64,
    /// sled's page cache (small: a Pi has little RAM).
    pub cache_capacity_bytes: u64,
    /// How long delivered audit records are kept.
    pub retention_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error("cannot open the outbox at {path}: {source}; check that the directory is writable and on a local disk (outbox.path), and that no other rppg-agent uses it")]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("the outbox at {path} is damaged: {detail}; `scan`, `run` and `sync` move it aside (kept, never deleted) and start a new one")]
    Damaged { path: PathBuf, detail: String },
    #[error("the outbox at {path} is unavailable after a storage error ({why}); it is reopened as soon as the cause (e.g. a full disk) is gone")]
    Unavailable { path: PathBuf, why: String },
    #[error("outbox storage error ({context}): {source}; if the disk is full, free space; if the database is damaged, stop the agent and move {path} aside")]
    Storage {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: sled::Error,
    },
    #[error("the outbox is full ({used} of {max} bytes, nothing left to shed) and cannot store {kind}; raise outbox.max_bytes or let pending events drain (rppg-agent sync)")]
    Full {
        used: u64,
        max: u64,
        kind: &'static str,
    },
    #[error(
        "outbox record {key} is unreadable ({problem}); it was written by a newer or damaged agent"
    )]
    Corrupt { key: String, problem: String },
    #[error("no outbox event with id {0}")]
    NotFound(String),
    #[error("{message}")]
    Write { message: String },
}

impl OutboxError {
    /// Whether another process (a running `rppg-agent run`) holds the
    /// database's lock.
    pub fn is_locked(&self) -> bool {
        match self {
            OutboxError::Open {
                source: sled::Error::Io(e),
                ..
            } => {
                e.kind() == std::io::ErrorKind::WouldBlock || e.to_string().contains("acquire lock")
            }
            _ => false,
        }
    }

    /// Whether this is the disk (or a file-size limit) refusing to grow a file.
    pub fn is_disk_full(&self) -> bool {
        let io = match self {
            OutboxError::Open {
                source: sled::Error::Io(e),
                ..
            }
            | OutboxError::Storage {
                source: sled::Error::Io(e),
                ..
            } => e,
            _ => return false,
        };
        // ENOSPC, or EFBIG (a file-size limit); sled may wrap the OS error.
        io.kind() == std::io::ErrorKind::StorageFull
            || io.kind() == std::io::ErrorKind::FileTooLarge
            || matches!(io.raw_os_error(), Some(28 | 27))
            || io.to_string().contains("os error 28")
            || io.to_string().contains("os error 27")
    }
}

/// One queued append (group commit).
#[derive(Debug)]
struct AppendRequest {
    ticket: u64,
    size: u64,
    value: Vec<u8>,
    destinations: Vec<String>,
    kind: EventKind,
}

/// Appends waiting for the current batch, and results not yet collected.
#[derive(Debug, Default)]
struct AppendQueue {
    next_ticket: u64,
    queued: Vec<AppendRequest>,
    leader: bool,
    results: std::collections::HashMap<u64, Result<u64, OutboxError>>,
    /// Batches written so far (each one transaction and one flush).
    batches: u64,
}

/// Metadata stored with each event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventMeta {
    pub event_id: String,
    pub session_id: String,
    pub sequence: u64,
    pub kind: String,
    pub created_ms: u64,
    /// The lanes the event was stored for (so finding its entries is a lookup, not a scan).
    pub destinations: Vec<String>,
}

/// When a pending event is due, given the time it was scheduled for and the
/// longest wait its destination's policy can ask for: a time further ahead
/// than `now_ms + max_wait_ms` was computed while the clock was ahead (a
/// device that booted with a wrong date, then corrected it), and waiting for
/// it would stall the event for as long as the clock was wrong; it is due now.
pub fn bounded_due_ms(next_attempt_ms: u64, now_ms: u64, max_wait_ms: u64) -> u64 {
    if next_attempt_ms > now_ms.saturating_add(max_wait_ms) {
        now_ms
    } else {
        next_attempt_ms
    }
}

/// One attempt at delivering an event to a destination.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub at_ms: u64,
    /// e.g. `HTTP 503`, `timed out`.
    pub result: String,
}

/// Delivery state of a pending event on one destination.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Attempts {
    pub attempts: u32,
    /// Not before this time (Unix ms); 0 = due now.
    pub next_attempt_ms: u64,
    pub history: Vec<AttemptRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub reason: String,
    pub dead_at_ms: u64,
    pub history: Vec<AttemptRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivered {
    pub event_id: String,
    pub delivered_at_ms: u64,
    pub attempts: u32,
    pub status: String,
}

/// One acknowledged event of a lane, for [`Outbox::ack_many`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub id: u64,
    /// Attempts it took, this one included.
    pub attempts: u32,
    /// What acknowledged it, for the audit trail (`HTTP 200`, `PUBACK`).
    pub status: String,
    /// When the event was stored (Unix ms), for delivery latency.
    pub created_ms: u64,
}

/// An event waiting for one destination.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingEvent {
    pub outbox_id: u64,
    /// Without `destinations` (empty): a lane reads only its own entry.
    pub meta: EventMeta,
    pub bytes: Vec<u8>,
    pub state: Attempts,
}

/// Counts for one destination.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct DestinationStats {
    pub pending: u64,
    pub due_now: u64,
    pub dead: u64,
    pub delivered: u64,
}

fn lane_key(dest: &str, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(dest.len() + 9);
    k.extend_from_slice(dest.as_bytes());
    k.push(0);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn lane_prefix(dest: &str) -> Vec<u8> {
    let mut k = dest.as_bytes().to_vec();
    k.push(0);
    k
}

fn id_of_lane_key(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

fn encode_json<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![VERSION];
    out.extend(serde_json::to_vec(v).expect("plain records serialise"));
    out
}

fn decode_json<T: for<'de> Deserialize<'de>>(key: &[u8], value: &[u8]) -> Result<T, OutboxError> {
    let corrupt = |problem: String| OutboxError::Corrupt {
        key: format!("{key:02x?}"),
        problem,
    };
    match value.split_first() {
        Some((&VERSION, rest)) => serde_json::from_slice(rest).map_err(|e| corrupt(e.to_string())),
        Some((v, _)) => Err(corrupt(format!(
            "format version {v}, this agent reads {VERSION}"
        ))),
        None => Err(corrupt("empty value".into())),
    }
}

fn encode_event(meta: &EventMeta, bytes: &[u8]) -> Vec<u8> {
    let m = serde_json::to_vec(meta).expect("plain records serialise");
    let mut out = Vec::with_capacity(5 + m.len() + bytes.len());
    out.push(VERSION);
    out.extend_from_slice(&(m.len() as u32).to_be_bytes());
    out.extend_from_slice(&m);
    out.extend_from_slice(bytes);
    out
}

fn decode_event(id: u64, value: &[u8]) -> Result<(EventMeta, Vec<u8>), OutboxError> {
    let (meta, body_at) = decode_meta(id, value)?;
    Ok((meta, value[body_at..].to_vec()))
}

/// [`EventMeta`] without its destinations (see [`Outbox::due_except`]).
#[derive(Deserialize)]
struct LaneMeta {
    event_id: String,
    session_id: String,
    sequence: u64,
    kind: String,
    created_ms: u64,
}

/// The metadata of a stored event, and where its bytes start (no copy).
fn decode_meta(id: u64, value: &[u8]) -> Result<(EventMeta, usize), OutboxError> {
    let (bytes, at) = meta_bytes(id, value)?;
    let meta = serde_json::from_slice(bytes).map_err(|e| OutboxError::Corrupt {
        key: format!("event {id}"),
        problem: e.to_string(),
    })?;
    Ok((meta, at))
}

/// As [`decode_event`], with `destinations` left empty (not even parsed
/// into strings).
fn decode_event_for_lane(id: u64, value: &[u8]) -> Result<(EventMeta, Vec<u8>), OutboxError> {
    let (bytes, at) = meta_bytes(id, value)?;
    let m: LaneMeta = serde_json::from_slice(bytes).map_err(|e| OutboxError::Corrupt {
        key: format!("event {id}"),
        problem: e.to_string(),
    })?;
    let meta = EventMeta {
        event_id: m.event_id,
        session_id: m.session_id,
        sequence: m.sequence,
        kind: m.kind,
        created_ms: m.created_ms,
        destinations: Vec::new(),
    };
    Ok((meta, value[at..].to_vec()))
}

/// The metadata JSON of a stored event, and where its bytes start.
fn meta_bytes(id: u64, value: &[u8]) -> Result<(&[u8], usize), OutboxError> {
    let corrupt = |problem: &str| OutboxError::Corrupt {
        key: format!("event {id}"),
        problem: problem.to_string(),
    };
    let (&version, rest) = value.split_first().ok_or_else(|| corrupt("empty value"))?;
    if version != VERSION {
        return Err(corrupt(&format!(
            "format version {version}, this agent reads {VERSION}"
        )));
    }
    let len = u32::from_be_bytes(
        rest.get(..4)
            .ok_or_else(|| corrupt("short"))?
            .try_into()
            .unwrap(),
    ) as usize;
    let meta_bytes = rest
        .get(4..4 + len)
        .ok_or_else(|| corrupt("short metadata"))?;
    Ok((meta_bytes, 1 + 4 + len))
}

const HIGH_WATER_LEN: usize = 24;

/// `magic, id (u64 BE), first 8 bytes of SHA-256(magic, id)`.
fn encode_high_water(id: u64) -> [u8; HIGH_WATER_LEN] {
    use sha2::Digest;
    let mut out = [0u8; HIGH_WATER_LEN];
    out[..8].copy_from_slice(HIGH_WATER_MAGIC);
    out[8..16].copy_from_slice(&id.to_be_bytes());
    let sum = sha2::Sha256::digest(&out[..16]);
    out[16..].copy_from_slice(&sum[..8]);
    out
}

fn decode_high_water(bytes: &[u8]) -> Result<u64, String> {
    if bytes.len() != HIGH_WATER_LEN {
        return Err(format!("{} bytes, expected {HIGH_WATER_LEN}", bytes.len()));
    }
    let id = u64::from_be_bytes(bytes[8..16].try_into().expect("8 bytes"));
    if bytes != encode_high_water(id) {
        return Err("bad magic or checksum".into());
    }
    Ok(id)
}

/// Whether a stored event kind may be shed ([`EventKind::is_sheddable`]).
fn kind_is_sheddable(kind: &str) -> bool {
    EventKind::from_name(kind).is_some_and(EventKind::is_sheddable)
}

/// Whether a stored event value may be shed.
fn is_sheddable(value: &[u8]) -> bool {
    decode_meta(0, value).is_ok_and(|(m, _)| kind_is_sheddable(&m.kind))
}

/// The `meta` key of the stored-bytes counters (see "Storage").
const BYTES_KEY: &str = "bytes";

fn decode_counters(value: &[u8]) -> Option<(u64, u64)> {
    let stored = u64::from_be_bytes(value.get(..8)?.try_into().ok()?);
    let sheddable = u64::from_be_bytes(value.get(8..16)?.try_into().ok()?);
    Some((stored, sheddable))
}

fn encode_counters(stored: u64, sheddable: u64) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&stored.to_be_bytes());
    out[8..].copy_from_slice(&sheddable.to_be_bytes());
    out
}

/// Bytes a transaction adds to (or removes from) the stored events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ByteDelta {
    stored: i64,
    sheddable: i64,
}

impl ByteDelta {
    fn of(sheddable: bool, len: u64, added: bool) -> ByteDelta {
        let len = if added { len as i64 } else { -(len as i64) };
        ByteDelta {
            stored: len,
            sheddable: if sheddable { len } else { 0 },
        }
    }

    fn add(&mut self, other: ByteDelta) {
        self.stored += other.stored;
        self.sheddable += other.sheddable;
    }

    /// Inside the transaction that changes the events: applies the delta to
    /// the stored counters.
    fn apply(self, meta: &TransactionalTree) -> Result<(), UnabortableTransactionError> {
        if self == ByteDelta::default() {
            return Ok(());
        }
        let (stored, sheddable) = meta
            .get(BYTES_KEY)?
            .and_then(|v| decode_counters(&v))
            .unwrap_or((0, 0));
        let stored = stored.saturating_add_signed(self.stored);
        let sheddable = sheddable.saturating_add_signed(self.sheddable);
        meta.insert(BYTES_KEY, &encode_counters(stored, sheddable))?;
        Ok(())
    }
}

/// Inside a transaction: deletes event `id` (stored as `len` bytes) and
/// takes its bytes off the stored counters; whether it was there.
fn delete_event(
    events: &TransactionalTree,
    counters: &TransactionalTree,
    id: u64,
    meta: &EventMeta,
    len: u64,
) -> Result<bool, UnabortableTransactionError> {
    if events.remove(&id.to_be_bytes())?.is_none() {
        return Ok(false);
    }
    ByteDelta::of(kind_is_sheddable(&meta.kind), len, false).apply(counters)?;
    Ok(true)
}

/// Group commit: one flush covers every write made before it started.
#[derive(Debug, Default)]
struct GroupCommit {
    state: Mutex<CommitState>,
    done: Condvar,
}

#[derive(Debug, Default)]
struct CommitState {
    /// Writes are numbered; everything up to `flushed` is durable.
    written: u64,
    flushed: u64,
    flushing: bool,
}

/// The open database: sled and its trees, and the high-water file. Held
/// behind a lock so that a database sled has given up on (its first I/O
/// error, e.g. a full disk, poisons it for good) can be replaced by a fresh
/// open once the cause is gone ([`Outbox::heal`]).
struct Store {
    db: sled::Db,
    events: sled::Tree,
    /// Pending entries, packed ([`lanes`]; the `lanes` tree).
    pending: sled::Tree,
    dead: sled::Tree,
    delivered: sled::Tree,
    meta: sled::Tree,
    /// The high-water mark file (see "Damage").
    high_water: Mutex<std::fs::File>,
}

/// A storage failure that has not healed yet.
#[derive(Debug, Clone)]
struct Failure {
    /// What failed first.
    cause: String,
    /// Why the last reopen failed, if one was tried.
    reopen: Option<String>,
    /// When a reopen was last tried (monotonic).
    tried: std::time::Instant,
}

impl Failure {
    /// For health reports and errors.
    fn message(&self) -> String {
        match &self.reopen {
            None => self.cause.clone(),
            Some(r) => format!("{}; reopening failed: {r}", self.cause),
        }
    }
}

/// How often a failed store is reopened, at most.
const HEAL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The outbox.
pub struct Outbox {
    path: PathBuf,
    store: std::sync::RwLock<Option<std::sync::Arc<Store>>>,
    failure: Mutex<Option<Failure>>,
    /// What was lost when the outbox was found damaged at open (see
    /// [`Outbox::note_loss`]); commands report it and fail.
    loss: Mutex<Option<String>>,
    commit: GroupCommit,
    stored_bytes: AtomicU64,
    /// Bytes of stored INTERMEDIATE_RESULTS: room the cap can make by shedding.
    sheddable_bytes: AtomicU64,
    cfg: OutboxConfig,
    /// Group commit of appends.
    appends: Mutex<AppendQueue>,
    appended: Condvar,
}

impl std::fmt::Debug for Outbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outbox").field("path", &self.path).finish()
    }
}

impl Outbox {
    /// Opens (or creates) the outbox at `cfg.path`. A database the storage
    /// engine finds corrupt (or panics on) is [`OutboxError::Damaged`]; what
    /// to do with it is the caller's decision, never a silent delete.
    pub fn open(cfg: OutboxConfig) -> Result<Self, OutboxError> {
        let path = cfg.path.clone();
        let damaged = |detail: String| OutboxError::Damaged {
            path: path.clone(),
            detail,
        };
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Self::open_inner(cfg.clone(), true)
        }));
        let opened = match opened {
            // sled needs a little room to open (it completes its last log
            // segment): on a full disk, give up the reserve and try again.
            Ok(Err(e)) if e.is_disk_full() && release_reserve(&path) => {
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    Self::open_inner(cfg, true)
                }))
            }
            Ok(Ok(outbox)) => {
                keep_reserve(&path);
                Ok(Ok(outbox))
            }
            other => other,
        };
        match opened {
            // An unreadable `conf` file reads as "unsupported" (an old sled
            // version): this outbox was made by this one, so it is damage.
            Ok(Err(OutboxError::Open {
                source: e @ (sled::Error::Corruption { .. } | sled::Error::Unsupported(_)),
                ..
            }))
            | Ok(Err(OutboxError::Storage {
                source: e @ sled::Error::Corruption { .. },
                ..
            })) => Err(damaged(e.to_string())),
            Ok(result) => result,
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("unknown");
                Err(damaged(format!(
                    "the storage engine failed reading it ({why})"
                )))
            }
        }
    }

    /// Opens the database; with `check`, compares it with the high-water mark.
    fn open_inner(cfg: OutboxConfig, check: bool) -> Result<Self, OutboxError> {
        let path = cfg.path.clone();
        let store = Self::open_store(&cfg, check)?;
        let outbox = Outbox {
            store: std::sync::RwLock::new(Some(std::sync::Arc::new(store))),
            failure: Mutex::new(None),
            loss: Mutex::new(None),
            path,
            commit: GroupCommit::default(),
            stored_bytes: AtomicU64::new(0),
            sheddable_bytes: AtomicU64::new(0),
            appends: Mutex::new(AppendQueue::default()),
            appended: Condvar::new(),
            cfg,
        };
        outbox.count_stored()?;
        if check {
            outbox.migrate_pending()?;
        }
        Ok(outbox)
    }

    /// Loads the stored-bytes counters (at open, and after a reopen); an
    /// outbox without them is counted, once.
    fn count_stored(&self) -> Result<(), OutboxError> {
        let st = self.s()?;
        let kept = st
            .meta
            .get(BYTES_KEY)
            .map_err(|e| self.storage("reading counters", e))?
            .and_then(|v| decode_counters(&v));
        let (stored, sheddable) = match kept {
            Some(counters) => counters,
            None => {
                let (mut stored, mut sheddable) = (0, 0);
                for item in st.events.iter() {
                    let (_, v) = item.map_err(|e| self.storage("reading events", e))?;
                    stored += v.len() as u64;
                    if is_sheddable(&v) {
                        sheddable += v.len() as u64;
                    }
                }
                st.meta
                    .insert(BYTES_KEY, &encode_counters(stored, sheddable))
                    .map_err(|e| self.storage("writing counters", e))?;
                (stored, sheddable)
            }
        };
        self.stored_bytes.store(stored, Ordering::SeqCst);
        self.sheddable_bytes.store(sheddable, Ordering::SeqCst);
        Ok(())
    }

    /// Moves an older version's one-item-per-entry `pending` tree into
    /// `lanes` (see "Storage"), 4,096 entries a transaction, then drops it.
    fn migrate_pending(&self) -> Result<(), OutboxError> {
        let st = self.s()?;
        let exists = st.db.tree_names().iter().any(|n| n.as_ref() == b"pending");
        if !exists {
            return Ok(());
        }
        let legacy = st
            .db
            .open_tree("pending")
            .map_err(|e| self.storage("opening the old pending tree", e))?;
        loop {
            let mut batch: Vec<(sled::IVec, String, u64, Vec<u8>)> = Vec::new();
            for item in legacy.iter().take(4096) {
                let (k, v) = item.map_err(|e| self.storage("reading old pending entries", e))?;
                let state: Attempts = decode_json(&k, &v)?;
                let name = String::from_utf8_lossy(&k[..k.len().saturating_sub(9)]).into_owned();
                let id = id_of_lane_key(&k).unwrap_or_default();
                batch.push((k, name, id, lanes::encode_state(&state)));
            }
            if batch.is_empty() {
                break;
            }
            (&legacy, &st.pending)
                .transaction(|(old, new)| {
                    for (k, name, id, state) in &batch {
                        old.remove(k)?;
                        lanes::put(new, name, *id, state.clone())?;
                    }
                    Ok::<(), ConflictableTransactionError<String>>(())
                })
                .map_err(|e| self.tx_error("moving pending entries", e))?;
        }
        self.commit()?;
        st.db
            .drop_tree("pending")
            .map_err(|e| self.storage("dropping the old pending tree", e))?;
        self.commit()
    }

    /// Opens sled and the trees at `cfg.path`.
    fn open_store(cfg: &OutboxConfig, check: bool) -> Result<Store, OutboxError> {
        let path = cfg.path.clone();
        // Health data: the directory is the owner's alone, whatever the umask.
        private_dir(&path).map_err(|e| OutboxError::Open {
            path: path.clone(),
            source: sled::Error::Io(e),
        })?;
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(cfg.cache_capacity_bytes)
            .flush_every_ms(Some(500))
            .open()
            .map_err(|source| OutboxError::Open {
                path: path.clone(),
                source,
            })?;
        let tree = |name: &str| {
            db.open_tree(name).map_err(|source| OutboxError::Open {
                path: path.clone(),
                source,
            })
        };
        let events = tree("events")?;
        let meta = tree("meta")?;
        let high_water = Self::check_high_water(&path, &events, &meta, check)?;
        Ok(Store {
            events,
            pending: tree("lanes")?,
            dead: tree("dead")?,
            delivered: tree("delivered")?,
            meta,
            db,
            high_water: Mutex::new(high_water),
        })
    }

    /// The open database, or the storage error that closed it (until
    /// [`Outbox::heal`] reopens it).
    fn s(&self) -> Result<std::sync::Arc<Store>, OutboxError> {
        if let Some(store) = &*self.store.read().expect("store lock") {
            return Ok(store.clone());
        }
        let why = self
            .failure
            .lock()
            .expect("failure lock")
            .as_ref()
            .map_or_else(|| "closed".to_string(), Failure::message);
        Err(OutboxError::Unavailable {
            path: self.path.clone(),
            why,
        })
    }

    /// Whether storage works: `Err` with what failed while a storage error
    /// has not healed. Tries to heal first (see [`Outbox::heal`]).
    pub fn health(&self) -> Result<(), String> {
        self.heal();
        match &*self.failure.lock().expect("failure lock") {
            None => Ok(()),
            Some(f) => Err(f.message()),
        }
    }

    /// After an I/O error sled refuses every later operation, even once the
    /// cause (a full disk) is gone. So, at most every [`HEAL_INTERVAL`],
    /// the database is closed and opened again; what it had made durable
    /// is there, and only unacknowledged work is redone (at-least-once).
    /// Cheap when nothing failed. Returns whether storage works now.
    pub fn heal(&self) -> bool {
        {
            let mut failure = self.failure.lock().expect("failure lock");
            match failure.as_mut() {
                None => return true,
                Some(f) if f.tried.elapsed() < HEAL_INTERVAL => return false,
                Some(f) => f.tried = std::time::Instant::now(),
            }
        }
        let mut guard = self.store.write().expect("store lock");
        if let Some(old) = guard.take() {
            // sled holds a lock on its files until the last handle is gone:
            // wait (bounded) for operations still holding the old one.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while std::sync::Arc::strong_count(&old) > 1 && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            drop(old);
        }
        let reopen = || {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                Self::open_store(&self.cfg, true)
            }))
            .unwrap_or_else(|_| {
                Err(OutboxError::Unavailable {
                    path: self.path.clone(),
                    why: "the storage engine failed reopening it".into(),
                })
            })
        };
        let reopened = match reopen() {
            Err(e) if e.is_disk_full() && release_reserve(&self.path) => reopen(),
            other => other,
        };
        match reopened {
            Ok(store) => {
                *guard = Some(std::sync::Arc::new(store));
                drop(guard);
                if self.count_stored().is_ok() {
                    *self.failure.lock().expect("failure lock") = None;
                    tracing::info!(path = %self.path.display(), "the outbox works again");
                    return true;
                }
                false
            }
            Err(e) => {
                drop(guard);
                if let Some(f) = self.failure.lock().expect("failure lock").as_mut() {
                    f.reopen = Some(e.to_string());
                }
                false
            }
        }
    }

    /// Compares the database with the high-water mark file and returns the
    /// file, open for the next batches. A file ahead of the database means
    /// sled dropped durable records: [`OutboxError::Damaged`].
    fn check_high_water(
        path: &Path,
        events: &sled::Tree,
        meta: &sled::Tree,
        check: bool,
    ) -> Result<std::fs::File, OutboxError> {
        use std::io::{Read, Seek, Write};
        let damaged = |detail: String| OutboxError::Damaged {
            path: path.to_path_buf(),
            detail,
        };
        let io_error = |e: std::io::Error| OutboxError::Open {
            path: path.to_path_buf(),
            source: sled::Error::Io(e),
        };
        let stored = match meta.get("appended") {
            Ok(Some(v)) => v.as_ref().try_into().ok().map(u64::from_be_bytes),
            Ok(None) => None,
            Err(e) => return Err(damaged(format!("reading its high-water mark: {e}"))),
        };
        // An outbox written before the mark existed: its newest event.
        let stored = match stored {
            Some(n) => n,
            None => match events.last() {
                Ok(Some((k, _))) => k.as_ref().try_into().map_or(0, u64::from_be_bytes),
                Ok(None) => 0,
                Err(e) => return Err(damaged(format!("reading its newest event: {e}"))),
            },
        };
        let file_path = path.join(HIGH_WATER_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&file_path)
            .map_err(io_error)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io_error)?;
        if check && !bytes.is_empty() {
            let mark = decode_high_water(&bytes).map_err(|why| {
                damaged(format!(
                    "its high-water record {} is unreadable ({why}), so lost records could not be ruled out",
                    file_path.display()
                ))
            })?;
            if mark > stored {
                return Err(damaged(format!(
                    "events up to outbox id {mark} were stored, but the database ends at id {stored}: \
                     the storage engine dropped records it had written (damage in its log)"
                )));
            }
        }
        file.seek(std::io::SeekFrom::Start(0)).map_err(io_error)?;
        file.write_all(&encode_high_water(stored))
            .and_then(|()| file.set_len(HIGH_WATER_LEN as u64))
            .map_err(io_error)?;
        Ok(file)
    }

    /// Records that every id up to `id` is durable (after the flush).
    /// Best effort: if the small write fails (a full disk), the check at the
    /// next open is weaker for these batches, but nothing else is affected.
    fn record_high_water(&self, id: u64) {
        use std::io::{Seek, Write};
        let Ok(store) = self.s() else { return };
        let mut file = store.high_water.lock().expect("high-water lock");
        let _ = file
            .seek(std::io::SeekFrom::Start(0))
            .and_then(|_| file.write_all(&encode_high_water(id)));
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A storage error. An I/O error also marks the store as failed: sled
    /// will refuse everything from now on, so [`Outbox::heal`] reopens it.
    fn storage(&self, context: &'static str, source: sled::Error) -> OutboxError {
        if matches!(source, sled::Error::Io(_)) {
            let mut failure = self.failure.lock().expect("failure lock");
            if failure.is_none() {
                tracing::error!(path = %self.path.display(), error = %source, context, "outbox storage failed");
                *failure = Some(Failure {
                    cause: format!("{context}: {source}"),
                    reopen: None,
                    tried: std::time::Instant::now(),
                });
            }
        }
        OutboxError::Storage {
            context,
            path: self.path.clone(),
            source,
        }
    }

    fn tx_error(&self, context: &'static str, e: TransactionError<String>) -> OutboxError {
        match e {
            TransactionError::Storage(source) => self.storage(context, source),
            // A transaction aborts only on a record it cannot read.
            TransactionError::Abort(problem) => OutboxError::Corrupt {
                key: context.to_string(),
                problem,
            },
        }
    }

    /// Makes every write so far durable, sharing the flush with concurrent callers.
    fn commit(&self) -> Result<(), OutboxError> {
        let mut st = self.commit.state.lock().expect("commit lock");
        st.written += 1;
        let mine = st.written;
        loop {
            if st.flushed >= mine {
                return Ok(());
            }
            if !st.flushing {
                st.flushing = true;
                let target = st.written;
                drop(st);
                let result = self.s()?.db.flush();
                st = self.commit.state.lock().expect("commit lock");
                st.flushing = false;
                if result.is_ok() {
                    st.flushed = st.flushed.max(target);
                }
                self.commit.done.notify_all();
                result.map_err(|e| self.storage("flushing to disk", e))?;
            } else {
                st = self.commit.done.wait(st).expect("commit lock");
            }
        }
    }

    /// Stores `event` for `destinations` and returns its outbox id once it is
    /// durable. Sheds intermediate results if the cap requires it.
    ///
    /// Group commit: concurrent callers queue their events; whoever finds no
    /// batch in progress becomes the leader, writes every queued event in one
    /// transaction, flushes once, and hands each caller its own result.
    pub fn append(
        &self,
        event: &StampedEvent,
        destinations: &[&str],
        now_ms: u64,
    ) -> Result<u64, OutboxError> {
        // After a storage error, every new event tries the store again.
        self.heal();
        let meta = EventMeta {
            event_id: event.id.clone(),
            session_id: event.session_id.clone(),
            sequence: event.sequence,
            kind: event.kind.name().to_string(),
            created_ms: now_ms,
            destinations: destinations.iter().map(|d| d.to_string()).collect(),
        };
        let value = encode_event(&meta, &event.bytes);
        let mut q = self.appends.lock().expect("append queue lock");
        let ticket = q.next_ticket;
        q.next_ticket += 1;
        q.queued.push(AppendRequest {
            ticket,
            size: value.len() as u64,
            value,
            destinations: destinations.iter().map(|d| d.to_string()).collect(),
            kind: event.kind,
        });
        loop {
            if let Some(result) = q.results.remove(&ticket) {
                return result;
            }
            if q.leader {
                q = self.appended.wait(q).expect("append queue lock");
                continue;
            }
            q.leader = true;
            let batch = std::mem::take(&mut q.queued);
            drop(q);
            let results = self.write_batch(batch);
            q = self.appends.lock().expect("append queue lock");
            q.results.extend(results);
            q.batches += 1;
            q.leader = false;
            self.appended.notify_all();
        }
    }

    /// Writes a batch of appends in one transaction and one flush.
    fn write_batch(&self, batch: Vec<AppendRequest>) -> Vec<(u64, Result<u64, OutboxError>)> {
        let store = match self.s() {
            Ok(store) => store,
            Err(OutboxError::Unavailable { path, why }) => {
                return batch
                    .into_iter()
                    .map(|r| {
                        let (path, why) = (path.clone(), why.clone());
                        (r.ticket, Err(OutboxError::Unavailable { path, why }))
                    })
                    .collect()
            }
            Err(e) => unreachable!("the store is either open or unavailable: {e}"),
        };
        let mut results = Vec::with_capacity(batch.len());
        let mut accepted: Vec<(AppendRequest, u64)> = Vec::with_capacity(batch.len());
        for req in batch {
            let id = self.make_room(req.size, req.kind).and_then(|()| {
                store
                    .db
                    .generate_id()
                    .map_err(|e| self.storage("allocating an id", e))
            });
            match id {
                Ok(id) => {
                    self.count_bytes(req.kind.is_sheddable(), req.size, true);
                    accepted.push((req, id));
                }
                Err(e) => results.push((req.ticket, Err(e))),
            }
        }
        if accepted.is_empty() {
            return results;
        }
        let highest = accepted.iter().map(|(_, id)| *id).max().unwrap_or(0);
        // Each destination's new ids, ascending: one write per chunk touched.
        let mut by_lane: Vec<(&str, Vec<u64>)> = Vec::new();
        let mut delta = ByteDelta::default();
        for (req, id) in &accepted {
            delta.add(ByteDelta::of(req.kind.is_sheddable(), req.size, true));
            for d in &req.destinations {
                match by_lane.iter_mut().find(|(name, _)| name == d) {
                    Some((_, ids)) => ids.push(*id),
                    None => by_lane.push((d, vec![*id])),
                }
            }
        }
        for (_, ids) in &mut by_lane {
            ids.sort_unstable();
        }
        let written = (&store.events, &store.pending, &store.meta)
            .transaction(|(events, pending, meta)| {
                for (req, id) in &accepted {
                    events.insert(&id.to_be_bytes(), req.value.as_slice())?;
                }
                for (dest, ids) in &by_lane {
                    lanes::put_fresh(pending, dest, ids)?;
                }
                meta.insert("appended", &highest.to_be_bytes())?;
                delta.apply(meta)?;
                Ok::<(), ConflictableTransactionError<String>>(())
            })
            .map_err(|e| self.tx_error("appending events", e).to_string())
            .and_then(|()| {
                store
                    .db
                    .flush()
                    .map(|_| ())
                    .map_err(|e| self.storage("flushing to disk", e).to_string())
            });
        if written.is_ok() {
            self.record_high_water(highest);
        }
        for (req, id) in accepted {
            match &written {
                Ok(()) => results.push((req.ticket, Ok(id))),
                Err(message) => {
                    self.count_bytes(req.kind.is_sheddable(), req.size, false);
                    results.push((
                        req.ticket,
                        Err(OutboxError::Write {
                            message: message.clone(),
                        }),
                    ));
                }
            }
        }
        results
    }

    /// Whether `extra` more bytes fit, shedding intermediate results if needed.
    fn make_room(&self, extra: u64, kind: EventKind) -> Result<(), OutboxError> {
        let max = self.cfg.max_bytes;
        if self.stored_bytes.load(Ordering::SeqCst) + extra <= max {
            return Ok(());
        }
        let mut shed = 0u64;
        for item in self.s()?.events.iter() {
            if self.stored_bytes.load(Ordering::SeqCst) + extra <= max {
                break;
            }
            let (k, v) = item.map_err(|e| self.storage("shedding", e))?;
            let id = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            let Ok((meta, _)) = decode_meta(id, &v) else {
                continue;
            };
            if !kind_is_sheddable(&meta.kind) {
                continue;
            }
            if self.remove_everywhere(id, &meta, v.len() as u64)? {
                shed += 1;
            }
        }
        if shed > 0 {
            self.add_shed(shed)?;
        }
        let used = self.stored_bytes.load(Ordering::SeqCst);
        if used + extra > max {
            return Err(OutboxError::Full {
                used,
                max,
                kind: kind.name(),
            });
        }
        Ok(())
    }

    /// Deletes event `id` (stored as `len` bytes) and its entries in every
    /// lane it was stored for (pending and dead), in one transaction;
    /// whether it was still there.
    fn remove_everywhere(&self, id: u64, meta: &EventMeta, len: u64) -> Result<bool, OutboxError> {
        let st = self.s()?;
        let removed = (&st.events, &st.pending, &st.dead, &st.meta)
            .transaction(|(events, pending, dead, counters)| {
                for dest in &meta.destinations {
                    lanes::remove(pending, dest, id)?;
                    dead.remove(lane_key(dest, id))?;
                }
                Ok::<_, ConflictableTransactionError<String>>(delete_event(
                    events, counters, id, meta, len,
                )?)
            })
            .map_err(|e| self.tx_error("shedding", e))?;
        if removed {
            self.count_bytes(kind_is_sheddable(&meta.kind), len, false);
        }
        Ok(removed)
    }

    /// Intermediate results shed to respect the size cap, ever.
    pub fn shed_count(&self) -> Result<u64, OutboxError> {
        Ok(self
            .s()?
            .meta
            .get("shed")
            .map_err(|e| self.storage("reading counters", e))?
            .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0))
    }

    /// Bytes of stored events.
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes.load(Ordering::SeqCst)
    }

    /// Whether a whole scan's lifecycle events (about `bytes`) would fit,
    /// counting the intermediate results the cap may shed as room.
    pub fn has_room_for(&self, bytes: u64) -> bool {
        let kept = self.stored_bytes()
            - self
                .sheddable_bytes
                .load(Ordering::SeqCst)
                .min(self.stored_bytes());
        kept + bytes <= self.cfg.max_bytes
    }

    /// Counts `len` stored (`added`) or removed bytes, and whether they can be shed.
    fn count_bytes(&self, sheddable: bool, len: u64, added: bool) {
        let counters = [
            Some(&self.stored_bytes),
            sheddable.then_some(&self.sheddable_bytes),
        ];
        for c in counters.into_iter().flatten() {
            if added {
                c.fetch_add(len, Ordering::SeqCst);
            } else {
                c.fetch_sub(len, Ordering::SeqCst);
            }
        }
    }

    /// Counts an intermediate result that was dropped instead of stored
    /// because the cap left no room for it (see [`OutboxError::Full`]).
    pub fn count_shed(&self) -> Result<(), OutboxError> {
        self.add_shed(1)
    }

    fn add_shed(&self, n: u64) -> Result<(), OutboxError> {
        let before = self.shed_count()?;
        self.s()?
            .meta
            .insert("shed", &(before + n).to_be_bytes())
            .map_err(|e| self.storage("counting shed events", e))?;
        Ok(())
    }

    /// The stored record of event `id`.
    fn record(&self, id: u64) -> Result<sled::IVec, OutboxError> {
        self.s()?
            .events
            .get(id.to_be_bytes())
            .map_err(|e| self.storage("reading an event", e))?
            .ok_or_else(|| OutboxError::NotFound(id.to_string()))
    }

    fn event_for_lane(&self, id: u64) -> Result<(EventMeta, Vec<u8>), OutboxError> {
        decode_event_for_lane(id, &self.record(id)?)
    }

    fn event(&self, id: u64) -> Result<(EventMeta, Vec<u8>), OutboxError> {
        decode_event(id, &self.record(id)?)
    }

    /// Up to `limit` pending events of `dest` due at `now_ms`, in emission order.
    pub fn due(
        &self,
        dest: &str,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<PendingEvent>, OutboxError> {
        self.due_except(dest, now_ms, u64::MAX, limit, &Default::default())
    }

    /// As [`Outbox::due`], passing over the ids in `skip` (a lane's events in
    /// flight) without reading their event records, so refilling a window of
    /// N in-flight events costs the new ones, not all N again.
    ///
    /// An event scheduled more than `max_wait_ms` after `now_ms` is due now:
    /// no schedule waits that long, so it was scheduled while the clock was
    /// ahead (see [`bounded_due_ms`]).
    pub fn due_except(
        &self,
        dest: &str,
        now_ms: u64,
        max_wait_ms: u64,
        limit: usize,
        skip: &HashSet<u64>,
    ) -> Result<Vec<PendingEvent>, OutboxError> {
        let mut out = Vec::new();
        if limit == 0 {
            return Ok(out);
        }
        self.each_pending(dest, |id, state| {
            if skip.contains(&id) {
                return Ok(true);
            }
            let state = decode_state(dest, id, state)?;
            if bounded_due_ms(state.next_attempt_ms, now_ms, max_wait_ms) > now_ms {
                return Ok(true);
            }
            // A lane needs neither the other lanes' names nor their cost: an
            // event for 3,000 destinations carries 3,000 names, and every
            // lane reading all of them was quadratic in memory and time.
            let (meta, bytes) = self.event_for_lane(id)?;
            out.push(PendingEvent {
                outbox_id: id,
                meta,
                bytes,
                state,
            });
            Ok(out.len() < limit)
        })?;
        Ok(out)
    }

    /// Visits `dest`'s pending entries `(outbox id, stored state)` in id
    /// order, while `visit` returns true.
    fn each_pending(
        &self,
        dest: &str,
        mut visit: impl FnMut(u64, &[u8]) -> Result<bool, OutboxError>,
    ) -> Result<(), OutboxError> {
        for item in self.s()?.pending.scan_prefix(lane_prefix(dest)) {
            let (k, v) = item.map_err(|e| self.storage("reading pending events", e))?;
            let chunk = lanes::Chunk::decode(&v).map_err(|problem| OutboxError::Corrupt {
                key: format!("{k:02x?}"),
                problem,
            })?;
            for (id, state) in chunk.entries(&k) {
                if !visit(id, state)? {
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// `dest`'s pending state of event `id`, if it is pending there.
    fn pending_state(&self, dest: &str, id: u64) -> Result<Option<Attempts>, OutboxError> {
        let key = lanes::chunk_key(dest, id);
        let Some(v) = self
            .s()?
            .pending
            .get(&key)
            .map_err(|e| self.storage("reading lane state", e))?
        else {
            return Ok(None);
        };
        let chunk = lanes::Chunk::decode(&v).map_err(|problem| OutboxError::Corrupt {
            key: format!("{key:02x?}"),
            problem,
        })?;
        chunk
            .get(id)
            .map(|state| decode_state(dest, id, state))
            .transpose()
    }

    /// Earliest next attempt among `dest`'s pending events, each bounded by
    /// `now_ms + max_wait_ms` ([`bounded_due_ms`]).
    pub fn next_due_ms(
        &self,
        dest: &str,
        now_ms: u64,
        max_wait_ms: u64,
    ) -> Result<Option<u64>, OutboxError> {
        let mut best = None;
        self.each_pending(dest, |id, state| {
            let state = decode_state(dest, id, state)?;
            let due = bounded_due_ms(state.next_attempt_ms, now_ms, max_wait_ms);
            best = Some(best.map_or(due, |b: u64| b.min(due)));
            Ok(true)
        })?;
        Ok(best)
    }

    /// Records a failed attempt and when to try next.
    pub fn reschedule(&self, dest: &str, id: u64, state: &Attempts) -> Result<(), OutboxError> {
        let state = lanes::encode_state(state);
        self.s()?
            .pending
            .transaction(|pending| {
                // Only a pending entry is rescheduled: one settled meanwhile
                // (acknowledged late, or shed) stays settled.
                if lanes::get(pending, dest, id)?.is_some() {
                    lanes::put(pending, dest, id, state.clone())?;
                }
                Ok::<(), ConflictableTransactionError<String>>(())
            })
            .map_err(|e| self.tx_error("rescheduling", e))?;
        Ok(())
    }

    /// Deletes event `id` (stored as `stored_len` bytes) if none of its lanes
    /// holds it pending or dead.
    fn drop_if_no_lane_holds(
        &self,
        id: u64,
        meta: &EventMeta,
        stored_len: u64,
    ) -> Result<(), OutboxError> {
        let st = self.s()?;
        let dropped = (&st.pending, &st.dead, &st.events, &st.meta)
            .transaction(|(pending, dead, events, counters)| {
                if held_by_a_lane(pending, dead, id, meta, None)? {
                    return Ok(false);
                }
                Ok::<_, ConflictableTransactionError<String>>(delete_event(
                    events, counters, id, meta, stored_len,
                )?)
            })
            .map_err(|e| self.tx_error("removing an event", e))?;
        if dropped {
            self.count_bytes(kind_is_sheddable(&meta.kind), stored_len, false);
        }
        Ok(())
    }

    /// The destination acknowledged the event: pending -> delivered.
    pub fn ack(
        &self,
        dest: &str,
        id: u64,
        now_ms: u64,
        status: &str,
        attempts: u32,
    ) -> Result<(), OutboxError> {
        let ack = Ack {
            id,
            attempts,
            status: status.to_string(),
            created_ms: 0,
        };
        self.ack_many(dest, &[ack], now_ms)
    }

    /// Several acknowledgements of one destination in one transaction
    /// (a lane collects the PUBACKs that arrive while the previous batch is
    /// being written). Each entry moves pending -> delivered. An ack for an
    /// event that is no longer pending there (already settled, replayed
    /// elsewhere, or shed by the cap) changes nothing: one terminal state.
    pub fn ack_many(&self, dest: &str, acks: &[Ack], now_ms: u64) -> Result<(), OutboxError> {
        // Each event is read and decoded once: for its audit record, and
        // afterwards to see whether its last lane has let it go.
        let mut writes = Vec::with_capacity(acks.len());
        let mut done = Vec::with_capacity(acks.len());
        for a in acks {
            let Some(value) = self
                .s()?
                .events
                .get(a.id.to_be_bytes())
                .map_err(|e| self.storage("reading an event", e))?
            else {
                continue;
            };
            let (meta, _) = decode_meta(a.id, &value)?;
            let record = encode_json(&Delivered {
                event_id: meta.event_id.clone(),
                delivered_at_ms: now_ms,
                attempts: a.attempts,
                status: a.status.clone(),
            });
            writes.push((lane_key(dest, a.id), record));
            done.push((a.id, meta, value.len() as u64));
        }
        // One transaction moves each entry and, when no lane holds the
        // event any more, deletes it: a crash cannot leave an event that no
        // lane holds (it would count against the cap for ever).
        let st = self.s()?;
        let only_this_lane = done
            .iter()
            .all(|(_, meta, _)| meta.destinations.iter().all(|d| d == dest));
        let dropped = if only_this_lane {
            // The common case, one destination: nothing else to look up.
            (&st.pending, &st.delivered, &st.events, &st.meta)
                .transaction(|(pending, delivered, events, counters)| {
                    let mut dropped = Vec::new();
                    for ((key, record), (id, meta, len)) in writes.iter().zip(&done) {
                        if lanes::remove(pending, dest, *id)? {
                            delivered.insert(key.as_slice(), record.as_slice())?;
                            if delete_event(events, counters, *id, meta, *len)? {
                                dropped.push((kind_is_sheddable(&meta.kind), *len));
                            }
                        }
                    }
                    Ok::<_, ConflictableTransactionError<String>>(dropped)
                })
                .map_err(|e| self.tx_error("recording a delivery", e))?
        } else {
            (&st.pending, &st.delivered, &st.dead, &st.events, &st.meta)
                .transaction(|(pending, delivered, dead, events, counters)| {
                    let mut dropped = Vec::new();
                    for ((key, record), (id, meta, len)) in writes.iter().zip(&done) {
                        let settled = lanes::remove(pending, dest, *id)?;
                        if settled {
                            delivered.insert(key.as_slice(), record.as_slice())?;
                        }
                        // A lane that settled just now holds it no more;
                        // otherwise its own dead letter may still hold it.
                        let except = settled.then_some(dest);
                        if !held_by_a_lane(pending, dead, *id, meta, except)?
                            && delete_event(events, counters, *id, meta, *len)?
                        {
                            dropped.push((kind_is_sheddable(&meta.kind), *len));
                        }
                    }
                    Ok::<_, ConflictableTransactionError<String>>(dropped)
                })
                .map_err(|e| self.tx_error("recording a delivery", e))?
        };
        for (sheddable, len) in dropped {
            self.count_bytes(sheddable, len, false);
        }
        Ok(())
    }

    /// Gives up on the event for `dest`: pending -> dead, with reason and history.
    pub fn dead_letter(
        &self,
        dest: &str,
        id: u64,
        reason: &str,
        state: &Attempts,
        now_ms: u64,
    ) -> Result<(), OutboxError> {
        let key = lane_key(dest, id);
        let record = encode_json(&DeadLetter {
            reason: reason.to_string(),
            dead_at_ms: now_ms,
            history: state.history.clone(),
        });
        (&self.s()?.pending, &self.s()?.dead)
            .transaction(|(pending, dead)| {
                lanes::remove(pending, dest, id)?;
                dead.insert(key.as_slice(), record.as_slice())?;
                Ok::<(), ConflictableTransactionError<String>>(())
            })
            .map_err(|e| self.tx_error("dead-lettering", e))?;
        Ok(())
    }

    /// Moves dead letters back to pending (all of `dest`, or those matching
    /// `event_id` / created at or after `since_ms`). Returns how many.
    pub fn replay(
        &self,
        dest: Option<&str>,
        event_id: Option<&str>,
        since_ms: Option<u64>,
    ) -> Result<u64, OutboxError> {
        let prefix = dest.map(lane_prefix).unwrap_or_default();
        let mut moved = 0;
        for item in self.s()?.dead.scan_prefix(prefix) {
            let (k, _) = item.map_err(|e| self.storage("reading dead letters", e))?;
            let id = id_of_lane_key(&k).unwrap_or_default();
            let (meta, _) = self.event(id)?;
            if event_id.is_some_and(|e| e != meta.event_id)
                || since_ms.is_some_and(|s| meta.created_ms < s)
            {
                continue;
            }
            let lane = String::from_utf8_lossy(&k[..k.len().saturating_sub(9)]).into_owned();
            (&self.s()?.dead, &self.s()?.pending)
                .transaction(|(dead, pending)| {
                    dead.remove(&k)?;
                    lanes::put(pending, &lane, id, Vec::new())?;
                    Ok::<(), ConflictableTransactionError<String>>(())
                })
                .map_err(|e| self.tx_error("replaying", e))?;
            moved += 1;
        }
        self.commit()?;
        Ok(moved)
    }

    /// Dead letters of `dest` (or all), with their event metadata.
    pub fn dead_letters(
        &self,
        dest: Option<&str>,
    ) -> Result<Vec<(String, u64, EventMeta, DeadLetter)>, OutboxError> {
        let prefix = dest.map(lane_prefix).unwrap_or_default();
        let mut out = Vec::new();
        for item in self.s()?.dead.scan_prefix(prefix) {
            let (k, v) = item.map_err(|e| self.storage("reading dead letters", e))?;
            let id = id_of_lane_key(&k).unwrap_or_default();
            let name = String::from_utf8_lossy(&k[..k.len().saturating_sub(9)]).into_owned();
            out.push((name, id, self.event(id)?.0, decode_json(&k, &v)?));
        }
        Ok(out)
    }

    /// Deletes delivered audit records older than the retention.
    pub fn purge_delivered(&self, now_ms: u64) -> Result<u64, OutboxError> {
        let cutoff = now_ms.saturating_sub(self.cfg.retention_ms);
        let mut purged = 0;
        for item in self.s()?.delivered.iter() {
            let (k, v) = item.map_err(|e| self.storage("reading the audit trail", e))?;
            let rec: Delivered = decode_json(&k, &v)?;
            if rec.delivered_at_ms < cutoff {
                self.s()?
                    .delivered
                    .remove(&k)
                    .map_err(|e| self.storage("purging", e))?;
                purged += 1;
            }
        }
        self.commit()?;
        Ok(purged)
    }

    /// Pending events of `dest` (every chunk of the lane is read: with a
    /// large backlog, poll [`Outbox::has_pending`] instead).
    pub fn pending_count(&self, dest: &str) -> u64 {
        let mut n = 0;
        let _ = self.each_pending(dest, |_, _| {
            n += 1;
            Ok(true)
        });
        n
    }

    /// Whether `dest` has any pending event (one key read). While storage
    /// is unavailable the answer is yes: pending work cannot be ruled out.
    pub fn has_pending(&self, dest: &str) -> bool {
        self.s().map_or(true, |st| {
            st.pending
                .scan_prefix(lane_prefix(dest))
                .keys()
                .next()
                .is_some()
        })
    }

    /// Counts for `dest` at `now_ms`.
    pub fn stats(&self, dest: &str, now_ms: u64) -> Result<DestinationStats, OutboxError> {
        let mut s = DestinationStats::default();
        self.each_pending(dest, |id, state| {
            // A never-tried entry (empty state) is due without decoding.
            let due = state.is_empty() || decode_state(dest, id, state)?.next_attempt_ms <= now_ms;
            s.pending += 1;
            s.due_now += u64::from(due);
            Ok(true)
        })?;
        s.dead = self.s()?.dead.scan_prefix(lane_prefix(dest)).count() as u64;
        s.delivered = self.s()?.delivered.scan_prefix(lane_prefix(dest)).count() as u64;
        Ok(s)
    }

    /// Stored events in order: `(outbox id, meta)`.
    pub fn events(&self) -> Result<Vec<(u64, EventMeta)>, OutboxError> {
        let mut out = Vec::new();
        for item in self.s()?.events.iter() {
            let (k, v) = item.map_err(|e| self.storage("listing events", e))?;
            let id = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            out.push((id, decode_meta(id, &v)?.0));
        }
        Ok(out)
    }

    /// Destination names that have pending or dead events.
    pub fn lane_names(&self) -> Result<Vec<String>, OutboxError> {
        let mut names: Vec<String> = Vec::new();
        let st = self.s()?;
        for tree in [&st.pending, &st.dead, &st.delivered] {
            for k in tree.iter().keys() {
                let k = k.map_err(|e| self.storage("listing lanes", e))?;
                let name = String::from_utf8_lossy(&k[..k.len().saturating_sub(9)]).into_owned();
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        Ok(names)
    }

    /// The delivered audit records of `dest` (or every lane), by lane then
    /// outbox id: `(lane, outbox id, record)`.
    pub fn delivered_records(
        &self,
        dest: Option<&str>,
    ) -> Result<Vec<(String, u64, Delivered)>, OutboxError> {
        let prefix = dest.map(lane_prefix).unwrap_or_default();
        let mut out = Vec::new();
        for item in self.s()?.delivered.scan_prefix(prefix) {
            let (k, v) = item.map_err(|e| self.storage("reading the audit trail", e))?;
            let lane = String::from_utf8_lossy(&k[..k.len().saturating_sub(9)]).into_owned();
            let id = id_of_lane_key(&k).unwrap_or_default();
            out.push((lane, id, decode_json(&k, &v)?));
        }
        Ok(out)
    }

    /// An event by its event id (`evt_...`) or outbox id.
    pub fn find(&self, id: &str) -> Result<(u64, EventMeta, Vec<u8>), OutboxError> {
        if let Ok(n) = id.parse::<u64>() {
            let (meta, bytes) = self.event(n)?;
            return Ok((n, meta, bytes));
        }
        for (n, meta) in self.events()? {
            if meta.event_id == id {
                let (meta, bytes) = self.event(n)?;
                return Ok((n, meta, bytes));
            }
        }
        Err(OutboxError::NotFound(id.to_string()))
    }

    /// The state of one event on one lane: pending, dead or delivered.
    pub fn lane_state(
        &self,
        dest: &str,
        id: u64,
    ) -> Result<Option<serde_json::Value>, OutboxError> {
        let key = lane_key(dest, id);
        let get = |tree: &sled::Tree| {
            tree.get(&key)
                .map_err(|e| self.storage("reading lane state", e))
        };
        if let Some(a) = self.pending_state(dest, id)? {
            return Ok(Some(
                serde_json::json!({"status": "pending", "attempts": a}),
            ));
        }
        if let Some(v) = get(&self.s()?.dead)? {
            let d: DeadLetter = decode_json(&key, &v)?;
            return Ok(Some(
                serde_json::json!({"status": "dead", "dead_letter": d}),
            ));
        }
        if let Some(v) = get(&self.s()?.delivered)? {
            let d: Delivered = decode_json(&key, &v)?;
            return Ok(Some(
                serde_json::json!({"status": "delivered", "delivered": d}),
            ));
        }
        Ok(None)
    }

    /// Deletes the dead letters of `dest` (or all); returns how many.
    pub fn purge_dead(&self, dest: Option<&str>) -> Result<u64, OutboxError> {
        let prefix = dest.map(lane_prefix).unwrap_or_default();
        let st = self.s()?;
        let keys: Vec<sled::IVec> = st
            .dead
            .scan_prefix(prefix)
            .keys()
            .filter_map(Result::ok)
            .collect();
        for k in &keys {
            let id = id_of_lane_key(k).unwrap_or_default();
            let event = st
                .events
                .get(id.to_be_bytes())
                .map_err(|e| self.storage("reading an event", e))?;
            let meta = match &event {
                Some(v) => Some((decode_meta(id, v)?.0, v.len() as u64)),
                None => None,
            };
            // The dead letter and, if it was the last lane's, the event go
            // together (see `ack_many`).
            let dropped = (&st.pending, &st.dead, &st.events, &st.meta)
                .transaction(|(pending, dead, events, counters)| {
                    dead.remove(k)?;
                    if let Some((meta, len)) = &meta {
                        if !held_by_a_lane(pending, dead, id, meta, None)?
                            && delete_event(events, counters, id, meta, *len)?
                        {
                            return Ok(Some((kind_is_sheddable(&meta.kind), *len)));
                        }
                    }
                    Ok::<_, ConflictableTransactionError<String>>(None)
                })
                .map_err(|e| self.tx_error("purging dead letters", e))?;
            if let Some((sheddable, len)) = dropped {
                self.count_bytes(sheddable, len, false);
            }
        }
        // Events an older version or an interrupted run left behind.
        self.sweep_orphans()?;
        self.commit()?;
        Ok(keys.len() as u64)
    }

    /// Deletes events that no lane holds pending or dead (left by a crash
    /// in an older version between settling a lane and deleting the
    /// event). Reads every event: for maintenance commands, not hot paths.
    pub fn sweep_orphans(&self) -> Result<u64, OutboxError> {
        let st = self.s()?;
        let mut swept = 0;
        for item in st.events.iter() {
            let (k, v) = item.map_err(|e| self.storage("reading events", e))?;
            let id = u64::from_be_bytes(k.as_ref().try_into().unwrap_or_default());
            let (meta, _) = decode_meta(id, &v)?;
            let before = self.stored_bytes();
            self.drop_if_no_lane_holds(id, &meta, v.len() as u64)?;
            if self.stored_bytes() < before {
                swept += 1;
            }
        }
        Ok(swept)
    }

    /// Flushes everything (on shutdown).
    pub fn flush(&self) -> Result<(), OutboxError> {
        self.heal();
        self.commit()
    }

    /// Records what was lost when this outbox replaced a damaged one (see
    /// "Damage"): the commands report it and do not claim success.
    pub fn note_loss(&self, what: String) {
        *self.loss.lock().expect("loss lock") = Some(what);
    }

    /// What was lost, if anything, when this outbox was opened.
    pub fn loss(&self) -> Option<String> {
        self.loss.lock().expect("loss lock").clone()
    }

    /// Copies into this outbox every event of the damaged database at
    /// `damaged` that can still be read, with its pending and dead-letter
    /// entries as they were (attempts, history), under new outbox ids. The
    /// delivered audit trail is not copied. `damaged` is opened and may be
    /// modified by the storage engine: pass a scratch copy, never the
    /// evidence. Records that cannot be read are counted, not guessed.
    pub fn salvage_from(&self, damaged: &Path) -> Result<Salvaged, OutboxError> {
        let cfg = OutboxConfig {
            path: damaged.to_path_buf(),
            ..self.cfg.clone()
        };
        // Read before opening: opening rewrites it.
        let mark = std::fs::read(damaged.join(HIGH_WATER_FILE)).ok();
        let open = || match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Self::open_inner(cfg.clone(), false)
        })) {
            Ok(Ok(source)) => Ok(source),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the storage engine failed reading it".to_string()),
        };
        // A snapshot (`snap.*`) only spares sled replaying its log; one
        // damaged byte in it makes the whole database unopenable although
        // the log is intact. Without it, sled rebuilds from the log.
        let (source, without_snapshot) = match open() {
            Ok(source) => (source, false),
            Err(first) => {
                let removed = remove_snapshots(damaged);
                match open() {
                    Ok(source) if removed > 0 => (source, true),
                    Ok(_) | Err(_) => {
                        return Ok(Salvaged {
                            unopenable: Some(first),
                            ..Salvaged::default()
                        })
                    }
                }
            }
        };
        let missing = missing_records(mark.as_deref(), &source);
        let mut report = Salvaged {
            without_snapshot,
            missing,
            ..Salvaged::default()
        };
        let mut batch: Vec<SalvagedEvent> = Vec::new();
        let source_store = match source.s() {
            Ok(store) => store,
            Err(e) => {
                return Ok(Salvaged {
                    unopenable: Some(e.to_string()),
                    ..Salvaged::default()
                })
            }
        };
        let legacy = source_store
            .db
            .tree_names()
            .iter()
            .any(|n| n.as_ref() == b"pending")
            .then(|| source_store.db.open_tree("pending").ok())
            .flatten();
        let mut iter = source_store.events.iter();
        loop {
            // A damaged page can panic inside sled as well as return an error.
            let next = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let item = iter.next()?;
                Some(item.map_err(|e| e.to_string()).and_then(|(k, v)| {
                    let id = u64::from_be_bytes(k.as_ref().try_into().map_err(|_| "bad key")?);
                    let (meta, _) = decode_meta(id, &v).map_err(|e| e.to_string())?;
                    let mut lanes = Vec::new();
                    for dest in &meta.destinations {
                        let key = lane_key(dest, id);
                        let mut p = source.pending_state(dest, id).map_err(|e| e.to_string())?;
                        // An older version's outbox keeps one item per entry.
                        if let (None, Some(old)) = (&p, &legacy) {
                            if let Some(v) = old.get(&key).map_err(|e| e.to_string())? {
                                p = Some(decode_json(&key, &v).map_err(|e| e.to_string())?);
                            }
                        }
                        let d = source_store.dead.get(&key).map_err(|e| e.to_string())?;
                        let p = p.map(|a| lanes::encode_state(&a));
                        lanes.push((dest.clone(), p, d.map(|v| v.to_vec())));
                    }
                    Ok(SalvagedEvent {
                        value: v.to_vec(),
                        lanes,
                    })
                }))
            }));
            match next {
                Ok(None) => break,
                Ok(Some(Ok(event))) => batch.push(event),
                Ok(Some(Err(_))) => report.unreadable += 1,
                Err(_) => {
                    report.unreadable += 1;
                    report.stopped_early = true;
                    break;
                }
            }
            if batch.len() >= 1024 {
                self.write_salvaged(std::mem::take(&mut batch), &mut report)?;
            }
        }
        self.write_salvaged(batch, &mut report)?;
        self.commit()?;
        Ok(report)
    }

    fn write_salvaged(
        &self,
        batch: Vec<SalvagedEvent>,
        report: &mut Salvaged,
    ) -> Result<(), OutboxError> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut ids = Vec::with_capacity(batch.len());
        for _ in &batch {
            ids.push(
                self.s()?
                    .db
                    .generate_id()
                    .map_err(|e| self.storage("allocating an id", e))?,
            );
        }
        let highest = ids.iter().copied().max().unwrap_or(0);
        let mut delta = ByteDelta::default();
        for event in &batch {
            let len = event.value.len() as u64;
            delta.add(ByteDelta::of(is_sheddable(&event.value), len, true));
        }
        (
            &self.s()?.events,
            &self.s()?.pending,
            &self.s()?.dead,
            &self.s()?.meta,
        )
            .transaction(|(events, pending, dead, meta)| {
                for (event, id) in batch.iter().zip(&ids) {
                    events.insert(&id.to_be_bytes(), event.value.as_slice())?;
                    for (dest, p, d) in &event.lanes {
                        if let Some(p) = p {
                            lanes::put(pending, dest, *id, p.clone())?;
                        }
                        if let Some(d) = d {
                            dead.insert(lane_key(dest, *id), d.as_slice())?;
                        }
                    }
                }
                meta.insert("appended", &highest.to_be_bytes())?;
                delta.apply(meta)?;
                Ok::<(), ConflictableTransactionError<String>>(())
            })
            .map_err(|e| self.tx_error("salvaging events", e))?;
        self.commit()?;
        self.record_high_water(highest);
        for event in &batch {
            self.count_bytes(is_sheddable(&event.value), event.value.len() as u64, true);
            report.events += 1;
            report.pending += event.lanes.iter().filter(|l| l.1.is_some()).count() as u64;
            report.dead += event.lanes.iter().filter(|l| l.2.is_some()).count() as u64;
        }
        Ok(())
    }
}

/// One readable event of a damaged outbox and its lane entries.
struct SalvagedEvent {
    value: Vec<u8>,
    lanes: Vec<SalvagedLane>,
}

/// `(destination, pending state as [`lanes`] stores it, dead-letter value)`
/// of a salvaged event.
type SalvagedLane = (String, Option<Vec<u8>>, Option<Vec<u8>>);

/// What [`Outbox::salvage_from`] recovered from a damaged outbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Salvaged {
    /// Events copied.
    pub events: u64,
    /// Lane entries copied, pending and dead.
    pub pending: u64,
    pub dead: u64,
    /// Records that could not be read.
    pub unreadable: u64,
    /// Reading stopped at a record the storage engine failed on.
    pub stopped_early: bool,
    /// The damaged database could not be opened at all (why).
    pub unopenable: Option<String>,
    /// Its snapshot was damaged: the events were read from its log alone.
    pub without_snapshot: bool,
    /// Its high-water mark names more events than it holds: sled dropped
    /// records it had made durable before they could be salvaged.
    pub missing: bool,
}

impl Salvaged {
    /// Whether every event the damaged outbox held was recovered.
    pub fn complete(&self) -> bool {
        self.unopenable.is_none() && self.unreadable == 0 && !self.stopped_early && !self.missing
    }
}

/// A file of zeros kept in the outbox directory while the disk has room
/// ([`RESERVE_BYTES`]): sled cannot even open a database on a disk with no
/// free byte, and opening is what lets the agent deliver, which is what
/// frees space. It is given up when an open fails for lack of space, and
/// made again at the next open that finds room.
pub const RESERVE_FILE: &str = "rppg-reserve";
pub const RESERVE_BYTES: u64 = 1 << 20;

/// Makes sure the reserve exists (best effort: no room, no reserve).
fn keep_reserve(dir: &Path) {
    let path = dir.join(RESERVE_FILE);
    if std::fs::metadata(&path).is_ok_and(|m| m.len() == RESERVE_BYTES) {
        return;
    }
    let written = std::fs::File::create(&path).and_then(|mut f| {
        use std::io::Write;
        let zeros = vec![0u8; 64 * 1024];
        for _ in 0..RESERVE_BYTES / zeros.len() as u64 {
            f.write_all(&zeros)?;
        }
        f.sync_all()
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&path);
    }
}

/// Creates `dir` (and its parents) if missing and makes it private to its
/// owner (mode 0700): an outbox holds health data. An existing directory
/// that cannot be changed (not ours, a read-only disk) is left as it is.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if !dir.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        Ok(())
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
}

/// Gives up the reserve; returns whether there was one to give up.
fn release_reserve(dir: &Path) -> bool {
    let released = std::fs::remove_file(dir.join(RESERVE_FILE)).is_ok();
    if released {
        tracing::warn!(path = %dir.display(), "the disk is full: released the outbox's reserved space to open it");
    }
    released
}

/// Inside a transaction: whether any of the event's destinations (but
/// `except`, known not to) still holds it pending or dead.
fn held_by_a_lane(
    pending: &TransactionalTree,
    dead: &TransactionalTree,
    id: u64,
    meta: &EventMeta,
    except: Option<&str>,
) -> Result<bool, lanes::TxError> {
    for dest in meta
        .destinations
        .iter()
        .filter(|d| Some(d.as_str()) != except)
    {
        if lanes::get(pending, dest, id)?.is_some()
            || dead.get(lane_key(dest, id).as_slice())?.is_some()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A pending entry's stored state, decoded.
fn decode_state(dest: &str, id: u64, bytes: &[u8]) -> Result<Attempts, OutboxError> {
    lanes::decode_state(bytes).map_err(|problem| OutboxError::Corrupt {
        key: format!("pending entry {id} of {dest}"),
        problem,
    })
}

/// Deletes sled's snapshot files (`snap.*`) in `dir`; returns how many.
fn remove_snapshots(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("snap."))
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

/// Whether the high-water record (`mark`, the file's bytes as found) names
/// an id beyond what `source` records as appended: records were dropped.
fn missing_records(mark: Option<&[u8]>, source: &Outbox) -> bool {
    let Some(bytes) = mark.filter(|b| !b.is_empty()) else {
        return false;
    };
    let Ok(mark) = decode_high_water(bytes) else {
        return true;
    };
    let appended = source
        .s()
        .ok()
        .and_then(|st| st.meta.get("appended").ok().flatten())
        .and_then(|v| v.as_ref().try_into().ok().map(u64::from_be_bytes))
        .unwrap_or(0);
    mark > appended
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, Stamper};

    fn open(dir: &Path, max_bytes: u64) -> Outbox {
        Outbox::open(OutboxConfig {
            path: dir.join("outbox"),
            max_bytes,
            cache_capacity_bytes: 1 << 20,
            retention_ms: 1000,
        })
        .unwrap()
    }

    fn event(stamper: &mut Stamper, kind: EventKind, n: u64) -> StampedEvent {
        let mut e = Event::general_error("X", &"x".repeat(100));
        e.kind = kind;
        stamper.stamp(&e, 1_000 + n, n as u128)
    }

    #[test]
    fn appended_events_survive_reopening_in_emission_order_per_destination() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = Stamper::new("d", "s");
        let ids: Vec<String> = {
            let ob = open(dir.path(), 1 << 30);
            (0..5)
                .map(|n| {
                    let e = event(&mut st, EventKind::IntermediateResults, n);
                    ob.append(&e, &["hook", "mqtt"], 10).unwrap();
                    e.id
                })
                .collect()
        };
        let ob = open(dir.path(), 1 << 30);
        for dest in ["hook", "mqtt"] {
            let due: Vec<String> = ob
                .due(dest, 10, 100)
                .unwrap()
                .into_iter()
                .map(|p| p.meta.event_id)
                .collect();
            assert_eq!(due, ids);
        }
        assert!(ob.due("other", 10, 100).unwrap().is_empty());
    }

    #[test]
    fn each_destination_reaches_exactly_one_terminal_state() {
        let dir = tempfile::tempdir().unwrap();
        let ob = open(dir.path(), 1 << 30);
        let mut st = Stamper::new("d", "s");
        let e = event(&mut st, EventKind::ScanCompleted, 0);
        let id = ob.append(&e, &["a", "b"], 0).unwrap();
        ob.ack("a", id, 5, "HTTP 200", 1).unwrap();
        let history = Attempts {
            attempts: 1,
            next_attempt_ms: 0,
            history: vec![AttemptRecord {
                at_ms: 3,
                result: "HTTP 410".into(),
            }],
        };
        ob.dead_letter("b", id, "HTTP 410 Gone", &history, 6)
            .unwrap();
        assert_eq!(
            ob.stats("a", 10).unwrap(),
            DestinationStats {
                pending: 0,
                due_now: 0,
                dead: 0,
                delivered: 1
            }
        );
        assert_eq!(
            ob.stats("b", 10).unwrap(),
            DestinationStats {
                pending: 0,
                due_now: 0,
                dead: 1,
                delivered: 0
            }
        );
        let dead = ob.dead_letters(Some("b")).unwrap();
        assert_eq!(dead[0].3.reason, "HTTP 410 Gone");
        assert_eq!(dead[0].3.history, history.history);
        // The event stays while a dead letter may still be replayed.
        assert_eq!(ob.events().unwrap().len(), 1);
        assert_eq!(ob.replay(Some("b"), None, None).unwrap(), 1);
        assert_eq!(ob.stats("b", 10).unwrap().pending, 1);
        ob.ack("b", id, 7, "HTTP 200", 2).unwrap();
        assert!(ob.events().unwrap().is_empty(), "no lane holds it any more");
        assert_eq!(ob.stored_bytes(), 0);
    }

    #[test]
    fn due_except_passes_over_events_in_flight_and_ack_many_settles_a_batch_once() {
        let dir = tempfile::tempdir().unwrap();
        let ob = open(dir.path(), 1 << 20);
        let mut st = Stamper::new("d", "s");
        let ids: Vec<u64> = (0..6)
            .map(|n| {
                let e = event(&mut st, EventKind::IntermediateResults, n);
                ob.append(&e, &["a", "b"], 1).unwrap()
            })
            .collect();
        let skip: HashSet<u64> = ids[..3].iter().copied().collect();
        let due: Vec<u64> = ob
            .due_except("a", 10, u64::MAX, 2, &skip)
            .unwrap()
            .iter()
            .map(|p| p.outbox_id)
            .collect();
        assert_eq!(
            due,
            ids[3..5],
            "the first two due events after the skipped ones"
        );
        let acks: Vec<Ack> = ids[..4]
            .iter()
            .map(|&id| Ack {
                id,
                attempts: 1,
                status: "PUBACK".into(),
                created_ms: 1,
            })
            .collect();
        ob.ack_many("a", &acks, 20).unwrap();
        // A repeated ack (a duplicate PUBACK after a reconnect) changes nothing.
        ob.ack_many("a", &acks[..1], 30).unwrap();
        let s = ob.stats("a", 100).unwrap();
        assert_eq!((s.pending, s.delivered), (2, 4));
        let first = ob.lane_state("a", ids[0]).unwrap().unwrap();
        assert_eq!(first["delivered"]["delivered_at_ms"], 20);
        // Lane b still holds every event, so none was dropped.
        assert_eq!(ob.due("b", 100, 100).unwrap().len(), 6);
        ob.ack_many("b", &acks, 40).unwrap();
        assert_eq!(
            ob.events().unwrap().len(),
            2,
            "records leave with their last lane"
        );
        // An ack for an event that is gone entirely is ignored, not an error.
        ob.ack_many("b", &acks, 50).unwrap();
    }

    #[test]
    fn rescheduled_events_are_not_due_until_their_time() {
        let dir = tempfile::tempdir().unwrap();
        let ob = open(dir.path(), 1 << 30);
        let mut st = Stamper::new("d", "s");
        let id = ob
            .append(&event(&mut st, EventKind::ScanCompleted, 0), &["a"], 0)
            .unwrap();
        ob.reschedule(
            "a",
            id,
            &Attempts {
                attempts: 1,
                next_attempt_ms: 5000,
                history: vec![],
            },
        )
        .unwrap();
        assert!(ob.due("a", 4999, 10).unwrap().is_empty());
        assert_eq!(ob.due("a", 5000, 10).unwrap()[0].state.attempts, 1);
        assert_eq!(ob.next_due_ms("a", 10, u64::MAX).unwrap(), Some(5000));
        // A reschedule that arrives after the event was settled (here:
        // acknowledged) leaves it settled: no pending entry without an event.
        ob.ack("a", id, 6000, "HTTP 200", 2).unwrap();
        ob.reschedule("a", id, &Attempts::default()).unwrap();
        assert!(!ob.has_pending("a"));
        assert_eq!(
            ob.lane_state("a", id).unwrap().unwrap()["status"],
            "delivered"
        );
    }

    #[test]
    fn an_event_no_lane_holds_is_swept_by_purge_and_settling_never_leaves_one() {
        let dir = tempfile::tempdir().unwrap();
        let ob = open(dir.path(), 1 << 30);
        let mut st = Stamper::new("d", "s");
        let a = ob
            .append(&event(&mut st, EventKind::ScanCompleted, 0), &["x", "y"], 0)
            .unwrap();
        let b = ob
            .append(&event(&mut st, EventKind::ScanCompleted, 1), &["x"], 0)
            .unwrap();
        // `a` settles on both lanes, `b` is dead-lettered then purged: no
        // event outlives its last lane.
        ob.ack("x", a, 1, "HTTP 200", 1).unwrap();
        assert_eq!(ob.events().unwrap().len(), 2);
        ob.dead_letter("y", a, "HTTP 410", &Attempts::default(), 2)
            .unwrap();
        ob.dead_letter("x", b, "HTTP 410", &Attempts::default(), 2)
            .unwrap();
        assert_eq!(ob.purge_dead(None).unwrap(), 2);
        assert!(ob.events().unwrap().is_empty());
        assert_eq!(ob.stored_bytes(), 0);
        // A late acknowledgement on a lane that has dead-lettered the event
        // meanwhile keeps it (its dead letter still holds it), with one lane
        // or with several.
        for lanes in [&["x"][..], &["x", "y"][..]] {
            let late = ob
                .append(&event(&mut st, EventKind::ScanCompleted, 3), lanes, 0)
                .unwrap();
            ob.dead_letter("x", late, "HTTP 410", &Attempts::default(), 2)
                .unwrap();
            if lanes.len() == 2 {
                ob.ack("y", late, 3, "HTTP 200", 1).unwrap();
            }
            ob.ack("x", late, 3, "HTTP 200", 1).unwrap();
            assert_eq!(ob.dead_letters(Some("x")).unwrap().len(), 1);
            assert!(ob.events().unwrap().iter().any(|(id, _)| *id == late));
            ob.purge_dead(None).unwrap();
            assert!(ob.events().unwrap().is_empty(), "{lanes:?}");
        }
        // An orphan as a crash in an older version left it: an event whose
        // only lane entry is gone. Purging sweeps it; the cap gets its room back.
        let c = ob
            .append(&event(&mut st, EventKind::ScanCompleted, 2), &["x"], 0)
            .unwrap();
        ob.s()
            .unwrap()
            .pending
            .transaction(|p| {
                lanes::remove(p, "x", c)?;
                Ok::<(), ConflictableTransactionError<String>>(())
            })
            .unwrap();
        assert!(ob.stored_bytes() > 0);
        ob.purge_dead(None).unwrap();
        assert!(ob.events().unwrap().is_empty());
        assert_eq!(ob.stored_bytes(), 0);
    }

    #[test]
    fn a_lane_reads_its_pending_events_without_every_other_lanes_name() {
        let dir = tempfile::tempdir().unwrap();
        let ob = open(dir.path(), 1 << 30);
        let mut st = Stamper::new("d", "s");
        let names: Vec<String> = (0..500).map(|i| format!("lane{i}")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let id = ob
            .append(&event(&mut st, EventKind::ScanCompleted, 0), &refs, 0)
            .unwrap();
        let due = ob.due("lane7", 10, 10).unwrap();
        assert_eq!(due[0].outbox_id, id);
        assert!(due[0].meta.destinations.is_empty());
        assert_eq!(due[0].meta.kind, "SCAN_COMPLETED");
        // The full record still knows them all (settling needs them).
        assert_eq!(ob.events().unwrap()[0].1.destinations.len(), 500);
    }

    #[test]
    fn the_outbox_directory_is_private_and_holds_a_reserve_that_evidence_copies_skip() {
        let dir = tempfile::tempdir().unwrap();
        let ob = open(dir.path(), 1 << 30);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(ob.path()).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700);
        }
        let reserve = ob.path().join(RESERVE_FILE);
        assert_eq!(std::fs::metadata(&reserve).unwrap().len(), RESERVE_BYTES);
        assert!(release_reserve(ob.path()));
        assert!(!reserve.exists());
        assert!(!release_reserve(ob.path()), "only once");
    }

    #[test]
    fn an_event_scheduled_while_the_clock_was_a_year_ahead_is_due_once_the_clock_is_corrected() {
        let dir = tempfile::tempdir().unwrap();
        let ob = open(dir.path(), 1 << 30);
        let mut st = Stamper::new("d", "s");
        let id = ob
            .append(&event(&mut st, EventKind::ScanCompleted, 0), &["a"], 0)
            .unwrap();
        let year_ms = 365 * 86_400_000u64;
        let now = 1_700_000_000_000u64;
        // Failed at "now + a year", retry 30 s later by that clock.
        ob.reschedule(
            "a",
            id,
            &Attempts {
                attempts: 1,
                next_attempt_ms: now + year_ms + 30_000,
                history: vec![],
            },
        )
        .unwrap();
        let two_hours = 2 * 3_600_000;
        assert_eq!(
            ob.due_except("a", now, two_hours, 10, &HashSet::new())
                .unwrap()
                .len(),
            1
        );
        assert_eq!(ob.next_due_ms("a", now, two_hours).unwrap(), Some(now));
        // A wait within the policy's longest is honoured.
        ob.reschedule(
            "a",
            id,
            &Attempts {
                attempts: 2,
                next_attempt_ms: now + 60_000,
                history: vec![],
            },
        )
        .unwrap();
        assert!(ob
            .due_except("a", now, two_hours, 10, &HashSet::new())
            .unwrap()
            .is_empty());
        assert_eq!(
            ob.next_due_ms("a", now, two_hours).unwrap(),
            Some(now + 60_000)
        );
    }

    #[test]
    fn a_full_outbox_sheds_intermediate_results_oldest_first_and_never_lifecycle_events() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = Stamper::new("d", "s");
        let probe = event(&mut st, EventKind::IntermediateResults, 0);
        let one = encode_event(
            &EventMeta {
                event_id: probe.id.clone(),
                session_id: "s".into(),
                sequence: 0,
                kind: "INTERMEDIATE_RESULTS".into(),
                created_ms: 0,
                destinations: vec!["a".into()],
            },
            &probe.bytes,
        )
        .len() as u64;
        let ob = open(dir.path(), 4 * one + one / 2);
        let mut st = Stamper::new("d", "s");
        let started = event(&mut st, EventKind::MeasurementStarted, 0);
        ob.append(&started, &["a"], 0).unwrap();
        let i1 = event(&mut st, EventKind::IntermediateResults, 1);
        ob.append(&i1, &["a"], 0).unwrap();
        let i2 = event(&mut st, EventKind::IntermediateResults, 2);
        ob.append(&i2, &["a"], 0).unwrap();
        ob.append(
            &event(&mut st, EventKind::IntermediateResults, 3),
            &["a"],
            0,
        )
        .unwrap();
        // Full: the next append sheds i1 (the oldest intermediate result).
        ob.append(&event(&mut st, EventKind::ScanCompleted, 4), &["a"], 0)
            .unwrap();
        let kept: Vec<String> = ob
            .events()
            .unwrap()
            .into_iter()
            .map(|(_, m)| m.event_id)
            .collect();
        assert!(!kept.contains(&i1.id) && kept.contains(&i2.id) && kept.contains(&started.id));
        assert_eq!(ob.shed_count().unwrap(), 1);
        // Fill with lifecycle events only: then there is nothing to shed.
        ob.append(&event(&mut st, EventKind::ScanCompleted, 5), &["a"], 0)
            .unwrap();
        ob.append(&event(&mut st, EventKind::ScanCompleted, 6), &["a"], 0)
            .unwrap();
        let err = ob
            .append(&event(&mut st, EventKind::ScanCompleted, 7), &["a"], 0)
            .unwrap_err();
        assert!(matches!(err, OutboxError::Full { .. }), "{err}");
        assert!(err.to_string().contains("outbox.max_bytes"));
        assert!(ob.stored_bytes() <= 4 * one + one / 2);
    }

    /// `(stored, sheddable)` bytes by reading every event.
    fn recount(ob: &Outbox) -> (u64, u64) {
        let (mut stored, mut sheddable) = (0, 0);
        for item in ob.s().unwrap().events.iter() {
            let (_, v) = item.unwrap();
            stored += v.len() as u64;
            if is_sheddable(&v) {
                sheddable += v.len() as u64;
            }
        }
        (stored, sheddable)
    }

    /// The counters as stored, and as held in memory, must both equal a recount.
    fn assert_counted(ob: &Outbox, when: &str) {
        let truth = recount(ob);
        let stored = ob.s().unwrap().meta.get(BYTES_KEY).unwrap().unwrap();
        assert_eq!(decode_counters(&stored), Some(truth), "stored, {when}");
        let held = (ob.stored_bytes(), ob.sheddable_bytes.load(Ordering::SeqCst));
        assert_eq!(held, truth, "in memory, {when}");
    }

    #[test]
    fn the_stored_byte_counters_equal_a_recount_after_every_kind_of_change_and_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = Stamper::new("d", "s");
        let kinds = [
            EventKind::IntermediateResults,
            EventKind::ScanCompleted,
            EventKind::IntermediateResults,
            EventKind::MeasurementStarted,
        ];
        let one = open(dir.path(), 1 << 30);
        let size = {
            one.append(&event(&mut st, kinds[0], 0), &["a"], 0).unwrap();
            one.stored_bytes()
        };
        drop(one);
        std::fs::remove_dir_all(dir.path().join("outbox")).unwrap();
        // Room for 120 events: appending 200 sheds intermediate results.
        let ob = open(dir.path(), 120 * size + size / 2);
        let mut ids = Vec::new();
        for n in 0..200u64 {
            let lanes: &[&str] = if n % 3 == 0 { &["a", "b"] } else { &["a"] };
            let e = event(&mut st, kinds[n as usize % 4], n);
            ids.push(ob.append(&e, lanes, n).unwrap());
        }
        assert!(ob.shed_count().unwrap() > 0, "the cap shed nothing");
        assert_counted(&ob, "after appending and shedding");
        let due_a = ob.due("a", 1_000, 1_000).unwrap();
        let acks: Vec<Ack> = due_a
            .iter()
            .step_by(2)
            .map(|p| Ack {
                id: p.outbox_id,
                attempts: 1,
                status: "HTTP 200".into(),
                created_ms: 0,
            })
            .collect();
        ob.ack_many("a", &acks, 1_000).unwrap();
        assert_counted(&ob, "after acknowledgements on one lane");
        for p in ob.due("b", 1_000, 1_000).unwrap() {
            let tried = Attempts {
                attempts: 1,
                next_attempt_ms: 5_000,
                history: vec![AttemptRecord {
                    at_ms: 1_000,
                    result: "HTTP 503".into(),
                }],
            };
            if p.outbox_id % 2 == 0 {
                ob.dead_letter("b", p.outbox_id, "gone", &tried, 1_000)
                    .unwrap();
            } else {
                ob.reschedule("b", p.outbox_id, &tried).unwrap();
            }
        }
        for p in ob.due("a", 1_000, 1_000).unwrap() {
            ob.ack("a", p.outbox_id, 1_000, "HTTP 200", 1).unwrap();
        }
        assert_counted(&ob, "after dead letters and acknowledging lane a");
        assert!(ob.replay(Some("b"), None, None).unwrap() > 0);
        for p in ob.due("b", 1_000, 1_000).unwrap().iter().take(5) {
            ob.dead_letter("b", p.outbox_id, "gone", &p.state, 1_000)
                .unwrap();
        }
        assert_eq!(ob.purge_dead(Some("b")).unwrap(), 5);
        assert_counted(&ob, "after replaying and purging dead letters");
        drop(ob);
        let ob = open(dir.path(), 120 * size + size / 2);
        assert_counted(&ob, "after reopening");
        assert!(ob.stored_bytes() > 0);
        for p in ob.due("b", 10_000, 1_000).unwrap() {
            ob.ack("b", p.outbox_id, 10_000, "HTTP 200", 2).unwrap();
        }
        assert_counted(&ob, "after draining");
        assert_eq!(ob.stored_bytes(), 0);
    }

    #[test]
    fn an_outbox_with_one_item_per_pending_entry_is_packed_at_open_and_keeps_every_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = Stamper::new("d", "s");
        let tried = Attempts {
            attempts: 3,
            next_attempt_ms: 77,
            history: vec![AttemptRecord {
                at_ms: 70,
                result: "timed out".into(),
            }],
        };
        let expected: Vec<(u64, Attempts)> = {
            let ob = open(dir.path(), 1 << 30);
            let ids: Vec<u64> = (0..150)
                .map(|n| {
                    let e = event(&mut st, EventKind::ScanCompleted, n);
                    ob.append(&e, &["a", "b"], n).unwrap()
                })
                .collect();
            // Rewrite the store as an older version left it: every entry an
            // item of the `pending` tree, no stored counters.
            let store = ob.s().unwrap();
            let legacy = store.db.open_tree("pending").unwrap();
            store.pending.clear().unwrap();
            store.meta.remove(BYTES_KEY).unwrap();
            let mut expected = Vec::new();
            for id in &ids {
                let state = if id % 7 == 0 {
                    tried.clone()
                } else {
                    Attempts::default()
                };
                legacy
                    .insert(lane_key("b", *id), encode_json(&state))
                    .unwrap();
                expected.push((*id, state));
                if id % 5 != 0 {
                    legacy
                        .insert(lane_key("a", *id), encode_json(&Attempts::default()))
                        .unwrap();
                }
            }
            store.db.flush().unwrap();
            expected
        };
        let ob = open(dir.path(), 1 << 30);
        let names = ob.s().unwrap().db.tree_names();
        assert!(!names.iter().any(|n| n.as_ref() == b"pending"));
        let mut b = Vec::new();
        ob.each_pending("b", |id, state| {
            b.push((id, decode_state("b", id, state)?));
            Ok(true)
        })
        .unwrap();
        assert_eq!(b, expected);
        assert_eq!(ob.pending_count("a"), 120);
        assert_eq!(
            ob.lane_names().unwrap(),
            vec!["a".to_string(), "b".to_string()]
        );
        assert_counted(&ob, "after moving the old entries");
    }

    #[test]
    fn room_for_a_scan_counts_intermediate_results_as_sheddable_across_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = Stamper::new("d", "s");
        let cap = 100_000;
        {
            let ob = open(dir.path(), cap);
            for n in 0..2 {
                ob.append(
                    &event(&mut st, EventKind::IntermediateResults, n),
                    &["a"],
                    0,
                )
                .unwrap();
            }
        }
        let ob = open(dir.path(), cap);
        // Only intermediate results stored: all of it can be shed to make room.
        assert!(ob.stored_bytes() > 0);
        assert!(ob.has_room_for(cap) && !ob.has_room_for(cap + 1));
        // A lifecycle event is never sheddable.
        let before = ob.stored_bytes();
        ob.append(&event(&mut st, EventKind::ScanCompleted, 2), &["a"], 0)
            .unwrap();
        let kept = ob.stored_bytes() - before;
        assert!(ob.has_room_for(cap - kept) && !ob.has_room_for(cap - kept + 1));
        // An ack removes an intermediate result; the room stays what it was.
        let first = ob.due("a", 0, 1).unwrap()[0].outbox_id;
        ob.ack("a", first, 0, "HTTP 200", 1).unwrap();
        assert!(ob.stored_bytes() < before + kept);
        assert!(ob.has_room_for(cap - kept) && !ob.has_room_for(cap - kept + 1));
    }

    #[test]
    fn concurrent_appends_are_all_stored_and_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let ob = std::sync::Arc::new(open(dir.path(), 1 << 30));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let ob = ob.clone();
                std::thread::spawn(move || {
                    let mut st = Stamper::new("d", format!("s{t}"));
                    for n in 0..50 {
                        ob.append(
                            &event(&mut st, EventKind::IntermediateResults, n),
                            &["a"],
                            0,
                        )
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(ob.stats("a", 0).unwrap().pending, 400);
        let q = ob.appends.lock().unwrap();
        assert!(
            q.batches < 400,
            "appends shared flushes: {} batches for 400 events",
            q.batches
        );
        assert!(q.queued.is_empty() && q.results.is_empty() && !q.leader);
    }

    #[test]
    fn a_record_of_an_unknown_format_version_is_reported_not_misread() {
        let err = decode_event(7, &[9, 0, 0, 0, 0]).unwrap_err().to_string();
        assert!(err.contains("format version 9"), "{err}");
        let err = decode_json::<Attempts>(b"k", &[]).unwrap_err().to_string();
        assert!(err.contains("empty"), "{err}");
    }

    #[test]
    fn delivered_audit_records_are_purged_after_the_retention() {
        let dir = tempfile::tempdir().unwrap();
        let ob = open(dir.path(), 1 << 30);
        let mut st = Stamper::new("d", "s");
        let id = ob
            .append(&event(&mut st, EventKind::ScanCompleted, 0), &["a"], 0)
            .unwrap();
        ob.ack("a", id, 10_000, "HTTP 200", 1).unwrap();
        assert_eq!(ob.purge_delivered(10_500).unwrap(), 0);
        assert_eq!(ob.purge_delivered(11_001).unwrap(), 1);
        assert_eq!(ob.stats("a", 0).unwrap().delivered, 0);
    }

    /// Copies a database directory (sled writes to what it opens).
    fn copy_tree(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy_tree(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    #[test]
    fn damage_or_truncation_anywhere_in_a_fresh_log_is_reported_never_silently_loses_an_event() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = Stamper::new("d", "s");
        let original = dir.path().join("outbox");
        let mut ids = Vec::new();
        {
            let ob = open(dir.path(), 1 << 30);
            for n in 0..4 {
                let e = event(&mut st, EventKind::ScanCompleted, n);
                ob.append(&e, &["hook"], 10).unwrap();
                ids.push(e.id);
            }
        }
        let db = std::fs::read(original.join("db")).unwrap();
        let (mut intact, mut by_sled, mut by_mark) = (0, 0, 0);
        // Flipped bytes, and the file cut short (a truncated copy).
        let damages = (0..db.len())
            .step_by(61)
            .flat_map(|at| [(at, false), (at, true)]);
        for (at, truncate) in damages {
            let copy = dir.path().join(format!("copy-{at}-{truncate}"));
            copy_tree(&original, &copy);
            let mut bytes = db.clone();
            if truncate {
                bytes.truncate(at);
            } else {
                for b in &mut bytes[at..(at + 64).min(db.len())] {
                    *b ^= 0x5a;
                }
            }
            std::fs::write(copy.join("db"), &bytes).unwrap();
            let opened = Outbox::open(OutboxConfig {
                path: copy.clone(),
                max_bytes: 1 << 30,
                cache_capacity_bytes: 1 << 20,
                retention_ms: 1000,
            });
            match opened {
                Ok(ob) => {
                    let due: Vec<String> = ob
                        .due("hook", 10, 100)
                        .unwrap()
                        .into_iter()
                        .map(|p| p.meta.event_id)
                        .collect();
                    assert_eq!(
                        due, ids,
                        "damage at byte {at} ({truncate}) opened cleanly but lost events"
                    );
                    intact += 1;
                }
                Err(OutboxError::Damaged { detail, .. }) => {
                    if detail.contains("dropped records") {
                        by_mark += 1;
                    } else {
                        by_sled += 1;
                    }
                }
                Err(e) => panic!("damage at byte {at} ({truncate}): {e}"),
            }
        }
        // The high-water mark is what catches sled's silent truncation.
        assert!(
            by_mark > 0,
            "intact {intact}, sled {by_sled}, mark {by_mark}"
        );
    }

    #[test]
    fn salvage_copies_every_readable_event_with_its_lane_states() {
        let dir = tempfile::tempdir().unwrap();
        let mut st = Stamper::new("d", "s");
        let old_dir = dir.path().join("old");
        std::fs::create_dir_all(&old_dir).unwrap();
        let mut ids = Vec::new();
        {
            let ob = open(&old_dir, 1 << 30);
            for n in 0..5 {
                let e = event(&mut st, EventKind::ScanCompleted, n);
                let id = ob.append(&e, &["a", "b"], 10).unwrap();
                ids.push((id, e.id));
            }
            ob.ack("a", ids[0].0, 20, "HTTP 200", 1).unwrap();
            let state = Attempts {
                attempts: 3,
                next_attempt_ms: 0,
                history: vec![AttemptRecord {
                    at_ms: 15,
                    result: "HTTP 410".into(),
                }],
            };
            ob.dead_letter("b", ids[1].0, "gone (HTTP 410)", &state, 30)
                .unwrap();
            ob.flush().unwrap();
        }
        let new_dir = dir.path().join("new");
        std::fs::create_dir_all(&new_dir).unwrap();
        let ob = open(&new_dir, 1 << 30);
        let report = ob.salvage_from(&old_dir.join("outbox")).unwrap();
        assert_eq!(report.events, 5);
        assert_eq!((report.pending, report.dead, report.unreadable), (8, 1, 0));
        let due = |d: &str| -> Vec<String> {
            ob.due(d, 10, 100)
                .unwrap()
                .into_iter()
                .map(|p| p.meta.event_id)
                .collect()
        };
        let all: Vec<String> = ids.iter().map(|(_, e)| e.clone()).collect();
        assert_eq!(due("a"), all[1..].to_vec());
        assert_eq!(
            due("b"),
            [&all[..1], &all[2..]].concat(),
            "lane b keeps its own states"
        );
        let dead = ob.dead_letters(Some("b")).unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].2.event_id, all[1]);
        assert_eq!(dead[0].3.reason, "gone (HTTP 410)");
        assert_eq!(dead[0].3.history.len(), 1);
        // The salvaged events count towards the cap and survive reopening.
        assert!(ob.stored_bytes() > 0);
        drop(ob);
        let ob = open(&new_dir, 1 << 30);
        assert_eq!(ob.pending_count("a") + ob.pending_count("b"), 8);
    }

    #[test]
    fn the_high_water_record_rejects_any_damaged_byte() {
        let good = encode_high_water(0x0102_0304_0506_0708);
        assert_eq!(decode_high_water(&good), Ok(0x0102_0304_0506_0708));
        for i in 0..good.len() {
            let mut bad = good;
            bad[i] ^= 1;
            assert!(decode_high_water(&bad).is_err(), "byte {i}");
        }
        assert!(decode_high_water(&good[..20]).is_err());
    }
}
