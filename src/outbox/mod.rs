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
//! | `pending` | destination name, `0x00`, outbox id BE | `[1] [JSON Attempts]` |
//! | `dead` | destination name, `0x00`, outbox id BE | `[1] [JSON DeadLetter]` |
//! | `delivered` | destination name, `0x00`, outbox id BE | `[1] [JSON Delivered]` (audit trail) |
//! | `meta` | `"shed"` | shed counter, u64 BE |
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
//!   To make room, INTERMEDIATE_RESULTS events are shed, oldest first, and
//!   counted; lifecycle events and SCAN_COMPLETED are never shed. If there
//!   is still no room, the append fails with [`OutboxError::Full`].
//! - sled and I/O failures are [`OutboxError`]s that say what to do, never panics.
//!
//! # Damage
//!
//! A database sled reports as corrupt, or panics on while opening, is
//! [`OutboxError::Damaged`]. The commands that deliver move it aside
//! (`<path>.damaged-<unix ms>`, kept byte for byte) and start a new outbox;
//! nothing is deleted. Known limit: sled 0.34 treats damage inside a freshly
//! written log (before the file was reopened) as a torn write and silently
//! drops the records from there on; this outbox cannot see that loss yet.

use crate::events::{EventKind, StampedEvent};
use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};

/// Format version byte of every stored value.
const VERSION: u8 = 1;

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

/// The metadata of a stored event, and where its bytes start (no copy).
fn decode_meta(id: u64, value: &[u8]) -> Result<(EventMeta, usize), OutboxError> {
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
    let meta = serde_json::from_slice(meta_bytes).map_err(|e| corrupt(&e.to_string()))?;
    Ok((meta, 1 + 4 + len))
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

/// The outbox.
pub struct Outbox {
    path: PathBuf,
    db: sled::Db,
    events: sled::Tree,
    pending: sled::Tree,
    dead: sled::Tree,
    delivered: sled::Tree,
    meta: sled::Tree,
    commit: GroupCommit,
    stored_bytes: AtomicU64,
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
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Self::open_inner(cfg))) {
            Ok(Err(OutboxError::Open {
                source: e @ sled::Error::Corruption { .. },
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

    fn open_inner(cfg: OutboxConfig) -> Result<Self, OutboxError> {
        let path = cfg.path.clone();
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
        let outbox = Outbox {
            events: tree("events")?,
            pending: tree("pending")?,
            dead: tree("dead")?,
            delivered: tree("delivered")?,
            meta: tree("meta")?,
            db,
            path,
            commit: GroupCommit::default(),
            stored_bytes: AtomicU64::new(0),
            appends: Mutex::new(AppendQueue::default()),
            appended: Condvar::new(),
            cfg,
        };
        let mut total = 0u64;
        for item in outbox.events.iter() {
            let (_, v) = item.map_err(|e| outbox.storage("reading events", e))?;
            total += v.len() as u64;
        }
        outbox.stored_bytes.store(total, Ordering::SeqCst);
        Ok(outbox)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn storage(&self, context: &'static str, source: sled::Error) -> OutboxError {
        OutboxError::Storage {
            context,
            path: self.path.clone(),
            source,
        }
    }

    fn tx_error(&self, context: &'static str, e: TransactionError<()>) -> OutboxError {
        match e {
            TransactionError::Storage(source) => self.storage(context, source),
            // Our transactions never abort; report it as a storage problem if sled says so.
            TransactionError::Abort(()) => {
                self.storage(context, sled::Error::Unsupported("aborted".into()))
            }
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
                let result = self.db.flush();
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
        let mut results = Vec::with_capacity(batch.len());
        let mut accepted: Vec<(AppendRequest, u64)> = Vec::with_capacity(batch.len());
        for req in batch {
            let id = self.make_room(req.size, req.kind).and_then(|()| {
                self.db
                    .generate_id()
                    .map_err(|e| self.storage("allocating an id", e))
            });
            match id {
                Ok(id) => {
                    self.stored_bytes.fetch_add(req.size, Ordering::SeqCst);
                    accepted.push((req, id));
                }
                Err(e) => results.push((req.ticket, Err(e))),
            }
        }
        if accepted.is_empty() {
            return results;
        }
        let pending_value = encode_json(&Attempts::default());
        let written = (&self.events, &self.pending)
            .transaction(|(events, pending)| {
                for (req, id) in &accepted {
                    events.insert(&id.to_be_bytes(), req.value.as_slice())?;
                    for d in &req.destinations {
                        pending.insert(lane_key(d, *id), pending_value.as_slice())?;
                    }
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|e| self.tx_error("appending events", e).to_string())
            .and_then(|()| {
                self.db
                    .flush()
                    .map(|_| ())
                    .map_err(|e| self.storage("flushing to disk", e).to_string())
            });
        for (req, id) in accepted {
            match &written {
                Ok(()) => results.push((req.ticket, Ok(id))),
                Err(message) => {
                    self.stored_bytes.fetch_sub(req.size, Ordering::SeqCst);
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
        let shed_name = EventKind::IntermediateResults.name();
        let mut shed = 0u64;
        for item in self.events.iter() {
            if self.stored_bytes.load(Ordering::SeqCst) + extra <= max {
                break;
            }
            let (k, v) = item.map_err(|e| self.storage("shedding", e))?;
            let id = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            let Ok((meta, _)) = decode_meta(id, &v) else {
                continue;
            };
            if meta.kind != shed_name {
                continue;
            }
            self.remove_everywhere(id, &meta)?;
            self.events
                .remove(&k)
                .map_err(|e| self.storage("shedding", e))?;
            self.stored_bytes
                .fetch_sub(v.len() as u64, Ordering::SeqCst);
            shed += 1;
        }
        if shed > 0 {
            let before = self.shed_count()?;
            self.meta
                .insert("shed", &(before + shed).to_be_bytes())
                .map_err(|e| self.storage("counting shed events", e))?;
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

    /// Removes an event's entries from every lane it was stored for (pending and dead).
    fn remove_everywhere(&self, id: u64, meta: &EventMeta) -> Result<(), OutboxError> {
        for dest in &meta.destinations {
            let key = lane_key(dest, id);
            for tree in [&self.pending, &self.dead] {
                tree.remove(&key)
                    .map_err(|e| self.storage("removing lane entries", e))?;
            }
        }
        Ok(())
    }

    /// Intermediate results shed to respect the size cap, ever.
    pub fn shed_count(&self) -> Result<u64, OutboxError> {
        Ok(self
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

    /// Whether a whole scan's lifecycle events (about `bytes`) would fit.
    pub fn has_room_for(&self, bytes: u64) -> bool {
        self.stored_bytes() + bytes <= self.cfg.max_bytes
    }

    fn event(&self, id: u64) -> Result<(EventMeta, Vec<u8>), OutboxError> {
        let v = self
            .events
            .get(id.to_be_bytes())
            .map_err(|e| self.storage("reading an event", e))?
            .ok_or_else(|| OutboxError::NotFound(id.to_string()))?;
        decode_event(id, &v)
    }

    /// Up to `limit` pending events of `dest` due at `now_ms`, in emission order.
    pub fn due(
        &self,
        dest: &str,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<PendingEvent>, OutboxError> {
        self.due_except(dest, now_ms, limit, &Default::default())
    }

    /// As [`Outbox::due`], passing over the ids in `skip` (a lane's events in
    /// flight) without reading their event records, so refilling a window of
    /// N in-flight events costs the new ones, not all N again.
    pub fn due_except(
        &self,
        dest: &str,
        now_ms: u64,
        limit: usize,
        skip: &HashSet<u64>,
    ) -> Result<Vec<PendingEvent>, OutboxError> {
        let mut out = Vec::new();
        for item in self.pending.scan_prefix(lane_prefix(dest)) {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(|e| self.storage("reading pending events", e))?;
            let id = id_of_lane_key(&k).unwrap_or_default();
            if skip.contains(&id) {
                continue;
            }
            let state: Attempts = decode_json(&k, &v)?;
            if state.next_attempt_ms > now_ms {
                continue;
            }
            let (meta, bytes) = self.event(id)?;
            out.push(PendingEvent {
                outbox_id: id,
                meta,
                bytes,
                state,
            });
        }
        Ok(out)
    }

    /// Earliest `next_attempt_ms` among `dest`'s pending events.
    pub fn next_due_ms(&self, dest: &str) -> Result<Option<u64>, OutboxError> {
        let mut best = None;
        for item in self.pending.scan_prefix(lane_prefix(dest)) {
            let (k, v) = item.map_err(|e| self.storage("reading pending events", e))?;
            let state: Attempts = decode_json(&k, &v)?;
            best = Some(best.map_or(state.next_attempt_ms, |b: u64| b.min(state.next_attempt_ms)));
        }
        Ok(best)
    }

    /// Records a failed attempt and when to try next.
    pub fn reschedule(&self, dest: &str, id: u64, state: &Attempts) -> Result<(), OutboxError> {
        self.pending
            .insert(lane_key(dest, id), encode_json(state))
            .map_err(|e| self.storage("rescheduling", e))?;
        Ok(())
    }

    /// Deletes the event record once no lane holds it.
    fn drop_event_if_done(&self, id: u64) -> Result<(), OutboxError> {
        let Some(value) = self
            .events
            .get(id.to_be_bytes())
            .map_err(|e| self.storage("reading an event", e))?
        else {
            return Ok(());
        };
        let (meta, _) = decode_meta(id, &value)?;
        self.drop_if_no_lane_holds(id, &meta, value.len() as u64)
    }

    /// Deletes event `id` (stored as `stored_len` bytes) if none of its lanes
    /// holds it pending or dead.
    fn drop_if_no_lane_holds(
        &self,
        id: u64,
        meta: &EventMeta,
        stored_len: u64,
    ) -> Result<(), OutboxError> {
        for dest in &meta.destinations {
            let key = lane_key(dest, id);
            for tree in [&self.pending, &self.dead] {
                if tree
                    .contains_key(&key)
                    .map_err(|e| self.storage("checking lanes", e))?
                {
                    return Ok(());
                }
            }
        }
        if self
            .events
            .remove(id.to_be_bytes())
            .map_err(|e| self.storage("removing an event", e))?
            .is_some()
        {
            self.stored_bytes.fetch_sub(stored_len, Ordering::SeqCst);
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
        (&self.pending, &self.delivered)
            .transaction(|(pending, delivered)| {
                for (key, record) in &writes {
                    if pending.remove(key.as_slice())?.is_some() {
                        delivered.insert(key.as_slice(), record.as_slice())?;
                    }
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(|e| self.tx_error("recording a delivery", e))?;
        for (id, meta, len) in &done {
            self.drop_if_no_lane_holds(*id, meta, *len)?;
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
        (&self.pending, &self.dead)
            .transaction(|(pending, dead)| {
                pending.remove(key.as_slice())?;
                dead.insert(key.as_slice(), record.as_slice())?;
                Ok::<(), ConflictableTransactionError<()>>(())
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
        for item in self.dead.scan_prefix(prefix) {
            let (k, _) = item.map_err(|e| self.storage("reading dead letters", e))?;
            let id = id_of_lane_key(&k).unwrap_or_default();
            let (meta, _) = self.event(id)?;
            if event_id.is_some_and(|e| e != meta.event_id)
                || since_ms.is_some_and(|s| meta.created_ms < s)
            {
                continue;
            }
            let fresh = encode_json(&Attempts::default());
            (&self.dead, &self.pending)
                .transaction(|(dead, pending)| {
                    dead.remove(&k)?;
                    pending.insert(&k, fresh.as_slice())?;
                    Ok::<(), ConflictableTransactionError<()>>(())
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
        for item in self.dead.scan_prefix(prefix) {
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
        for item in self.delivered.iter() {
            let (k, v) = item.map_err(|e| self.storage("reading the audit trail", e))?;
            let rec: Delivered = decode_json(&k, &v)?;
            if rec.delivered_at_ms < cutoff {
                self.delivered
                    .remove(&k)
                    .map_err(|e| self.storage("purging", e))?;
                purged += 1;
            }
        }
        self.commit()?;
        Ok(purged)
    }

    /// Pending events of `dest` (keys only: cheap enough to poll).
    pub fn pending_count(&self, dest: &str) -> u64 {
        self.pending.scan_prefix(lane_prefix(dest)).keys().count() as u64
    }

    /// Counts for `dest` at `now_ms`.
    pub fn stats(&self, dest: &str, now_ms: u64) -> Result<DestinationStats, OutboxError> {
        let mut s = DestinationStats::default();
        for item in self.pending.scan_prefix(lane_prefix(dest)) {
            let (k, v) = item.map_err(|e| self.storage("counting", e))?;
            let state: Attempts = decode_json(&k, &v)?;
            s.pending += 1;
            if state.next_attempt_ms <= now_ms {
                s.due_now += 1;
            }
        }
        s.dead = self.dead.scan_prefix(lane_prefix(dest)).count() as u64;
        s.delivered = self.delivered.scan_prefix(lane_prefix(dest)).count() as u64;
        Ok(s)
    }

    /// Stored events in order: `(outbox id, meta)`.
    pub fn events(&self) -> Result<Vec<(u64, EventMeta)>, OutboxError> {
        let mut out = Vec::new();
        for item in self.events.iter() {
            let (k, v) = item.map_err(|e| self.storage("listing events", e))?;
            let id = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0; 8]));
            out.push((id, decode_meta(id, &v)?.0));
        }
        Ok(out)
    }

    /// Destination names that have pending or dead events.
    pub fn lane_names(&self) -> Result<Vec<String>, OutboxError> {
        let mut names: Vec<String> = Vec::new();
        for tree in [&self.pending, &self.dead] {
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
        if let Some(v) = get(&self.pending)? {
            let a: Attempts = decode_json(&key, &v)?;
            return Ok(Some(
                serde_json::json!({"status": "pending", "attempts": a}),
            ));
        }
        if let Some(v) = get(&self.dead)? {
            let d: DeadLetter = decode_json(&key, &v)?;
            return Ok(Some(
                serde_json::json!({"status": "dead", "dead_letter": d}),
            ));
        }
        if let Some(v) = get(&self.delivered)? {
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
        let keys: Vec<sled::IVec> = self
            .dead
            .scan_prefix(prefix)
            .keys()
            .filter_map(Result::ok)
            .collect();
        for k in &keys {
            self.dead
                .remove(k)
                .map_err(|e| self.storage("purging dead letters", e))?;
            if let Some(id) = id_of_lane_key(k) {
                self.drop_event_if_done(id)?;
            }
        }
        self.commit()?;
        Ok(keys.len() as u64)
    }

    /// Flushes everything (on shutdown).
    pub fn flush(&self) -> Result<(), OutboxError> {
        self.commit()
    }
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
            .due_except("a", 10, 2, &skip)
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
        assert_eq!(ob.next_due_ms("a").unwrap(), Some(5000));
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
}
