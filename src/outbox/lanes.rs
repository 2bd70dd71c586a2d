//! A lane's pending entries, packed 64 to a stored item (`lanes` tree).
//!
//! Owns the tree's value format and every change to it. The outbox used to
//! keep one sled item per pending entry (`pending` tree). sled 0.34 keeps
//! state in memory for every page of every tree (about 200 bytes each,
//! loaded when the database opens) and splits a leaf above 16 items, so
//! 1,000,000 pending entries alone cost ~110,000 pages and ~25 MiB before
//! anything was read; scanning them pulled up to 16,384 pages into memory
//! at once however small the cache (sled's access queues hold 256 × 64
//! pages before they evict). Packed, the same backlog is ~16,000 items.
//!
//! The delivered audit records stay one item each. Two packings were
//! measured on a 1,000,000-event drain and both cost more than they saved,
//! because what sled holds is pages' bytes more than their count: packed
//! like this (each chunk rewritten several times with up to 6 KB of
//! records), 60 s of draining peaked at 121 MiB instead of 93 MiB; one item
//! per acknowledged batch, the whole drain peaked at 131 MiB instead of
//! 114 MiB.
//!
//! # Format
//!
//! | key | value |
//! |---|---|
//! | destination name, `0x00`, chunk number (outbox id >> 6) u64 BE | `[1]` then per entry `[slot u8] [len u16 BE] [state]` |
//!
//! `slot` is the outbox id's low 6 bits; entries are sorted by slot and a
//! slot appears at most once. `state` is the JSON of [`Attempts`], or empty
//! for a never-tried entry (`Attempts::default()`, the common case: three
//! bytes per pending event). A state is at most 65,535 bytes: a longer
//! history keeps its newest records (the attempt count stays exact; the
//! dead letter, if it comes to that, has what was kept). A chunk with no
//! entry is deleted, never stored empty, so "has pending" is one key read.
//!
//! # Invariants
//!
//! - Every change is a read-modify-write of one item, so it is done inside
//!   a sled transaction (two lanes, or an append and an acknowledgement,
//!   may touch the same chunk at once; sled serialises them).
//! - Iterating a destination's prefix yields its pending ids in ascending
//!   order (emission order), as the per-entry layout did.
//! - The key has the per-entry layout's shape (name, `0x00`, 8 bytes), so
//!   lane names read from keys the same way.

use super::Attempts;
use sled::transaction::{TransactionalTree, UnabortableTransactionError};

/// Format version byte of a chunk value.
const CHUNK_VERSION: u8 = 1;
/// Outbox ids per chunk: `1 << SLOT_BITS`.
const SLOT_BITS: u32 = 6;
const SLOT_MASK: u64 = (1 << SLOT_BITS) - 1;

/// The key of the chunk holding `dest`'s entry for outbox id `id`.
pub(super) fn chunk_key(dest: &str, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(dest.len() + 9);
    k.extend_from_slice(dest.as_bytes());
    k.push(0);
    k.extend_from_slice(&(id >> SLOT_BITS).to_be_bytes());
    k
}

fn slot(id: u64) -> u8 {
    (id & SLOT_MASK) as u8
}

/// The outbox id of `slot` in the chunk stored under `key`.
fn id_of(key: &[u8], slot: u8) -> Option<u64> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some((u64::from_be_bytes(tail) << SLOT_BITS) | u64::from(slot))
}

/// One chunk, decoded: `(slot, state bytes)` sorted by slot.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Chunk {
    entries: Vec<(u8, Vec<u8>)>,
}

impl Chunk {
    pub(super) fn decode(value: &[u8]) -> Result<Chunk, String> {
        let (&version, mut rest) = value.split_first().ok_or("empty chunk")?;
        if version != CHUNK_VERSION {
            return Err(format!(
                "chunk format version {version}, this agent reads {CHUNK_VERSION}"
            ));
        }
        let mut entries: Vec<(u8, Vec<u8>)> = Vec::new();
        while let Some((&slot, tail)) = rest.split_first() {
            let len = tail
                .get(..2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
                .ok_or("chunk entry cut short")?;
            let state = tail.get(2..2 + len).ok_or("chunk entry cut short")?;
            if u64::from(slot) > SLOT_MASK || entries.last().is_some_and(|(s, _)| *s >= slot) {
                return Err(format!("chunk slot {slot} out of order or range"));
            }
            entries.push((slot, state.to_vec()));
            rest = &tail[2 + len..];
        }
        Ok(Chunk { entries })
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let len = self.entries.iter().map(|(_, s)| 3 + s.len()).sum::<usize>();
        let mut out = Vec::with_capacity(1 + len);
        out.push(CHUNK_VERSION);
        for (slot, state) in &self.entries {
            out.push(*slot);
            out.extend_from_slice(&(state.len() as u16).to_be_bytes());
            out.extend_from_slice(state);
        }
        out
    }

    fn find(&self, slot: u8) -> Result<usize, usize> {
        self.entries.binary_search_by_key(&slot, |(s, _)| *s)
    }

    pub(super) fn get(&self, id: u64) -> Option<&[u8]> {
        self.find(slot(id))
            .ok()
            .map(|i| self.entries[i].1.as_slice())
    }

    pub(super) fn set(&mut self, id: u64, state: Vec<u8>) {
        debug_assert!(state.len() <= MAX_STATE, "states come from encode_state");
        match self.find(slot(id)) {
            Ok(i) => self.entries[i].1 = state,
            Err(i) => self.entries.insert(i, (slot(id), state)),
        }
    }

    /// Removes the entry of `id`; whether there was one.
    pub(super) fn remove(&mut self, id: u64) -> bool {
        match self.find(slot(id)) {
            Ok(i) => {
                self.entries.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// `(outbox id, state bytes)` in id order, for the chunk stored under `key`.
    pub(super) fn entries<'a>(
        &'a self,
        key: &'a [u8],
    ) -> impl Iterator<Item = (u64, &'a [u8])> + 'a {
        self.entries
            .iter()
            .filter_map(move |(s, state)| Some((id_of(key, *s)?, state.as_slice())))
    }
}

/// Largest stored state: an entry's length is a u16.
const MAX_STATE: usize = u16::MAX as usize;

/// The stored form of a pending entry's state: empty for a never-tried one.
/// A history too long for an entry (a long retry schedule of long error
/// texts) keeps its newest records; the attempt count stays exact.
pub(super) fn encode_state(state: &Attempts) -> Vec<u8> {
    if *state == Attempts::default() {
        return Vec::new();
    }
    let json = |s: &Attempts| serde_json::to_vec(s).expect("plain records serialise");
    let mut out = json(state);
    if out.len() > MAX_STATE {
        let mut kept = state.clone();
        while out.len() > MAX_STATE && !kept.history.is_empty() {
            let oldest = kept.history.len().div_ceil(2);
            kept.history.drain(..oldest);
            out = json(&kept);
        }
    }
    out
}

pub(super) fn decode_state(bytes: &[u8]) -> Result<Attempts, String> {
    if bytes.is_empty() {
        return Ok(Attempts::default());
    }
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

/// Why a transactional chunk operation failed: sled, or a chunk that does
/// not decode (the transaction is aborted with it).
#[derive(Debug)]
pub(super) enum TxError {
    Sled(UnabortableTransactionError),
    Corrupt { key: Vec<u8>, problem: String },
}

impl From<UnabortableTransactionError> for TxError {
    fn from(e: UnabortableTransactionError) -> Self {
        TxError::Sled(e)
    }
}

impl From<TxError> for sled::transaction::ConflictableTransactionError<String> {
    fn from(e: TxError) -> Self {
        match e {
            TxError::Sled(e) => e.into(),
            TxError::Corrupt { key, problem } => {
                sled::transaction::ConflictableTransactionError::Abort(format!(
                    "pending chunk {key:02x?} is unreadable ({problem})"
                ))
            }
        }
    }
}

fn read(tree: &TransactionalTree, key: &[u8]) -> Result<Chunk, TxError> {
    match tree.get(key)? {
        None => Ok(Chunk::default()),
        Some(v) => Chunk::decode(&v).map_err(|problem| TxError::Corrupt {
            key: key.to_vec(),
            problem,
        }),
    }
}

fn write(tree: &TransactionalTree, key: &[u8], chunk: &Chunk) -> Result<(), TxError> {
    if chunk.len() == 0 {
        tree.remove(key)?;
    } else {
        tree.insert(key, chunk.encode())?;
    }
    Ok(())
}

/// Inside a transaction: `dest`'s pending state bytes for `id`, if pending.
pub(super) fn get(
    tree: &TransactionalTree,
    dest: &str,
    id: u64,
) -> Result<Option<Vec<u8>>, TxError> {
    Ok(read(tree, &chunk_key(dest, id))?
        .get(id)
        .map(<[u8]>::to_vec))
}

/// Inside a transaction: sets `dest`'s pending state of `id`.
pub(super) fn put(
    tree: &TransactionalTree,
    dest: &str,
    id: u64,
    state: Vec<u8>,
) -> Result<(), TxError> {
    let key = chunk_key(dest, id);
    let mut chunk = read(tree, &key)?;
    chunk.set(id, state);
    write(tree, &key, &chunk)
}

/// Inside a transaction: never-tried entries of `dest` for every id of
/// `ids`, one read and one write per chunk touched.
pub(super) fn put_fresh(tree: &TransactionalTree, dest: &str, ids: &[u64]) -> Result<(), TxError> {
    let mut i = 0;
    while i < ids.len() {
        let key = chunk_key(dest, ids[i]);
        let mut chunk = read(tree, &key)?;
        while i < ids.len() && chunk_key(dest, ids[i]) == key {
            chunk.set(ids[i], Vec::new());
            i += 1;
        }
        write(tree, &key, &chunk)?;
    }
    Ok(())
}

/// Inside a transaction: removes `dest`'s pending entry of `id`; whether
/// there was one.
pub(super) fn remove(tree: &TransactionalTree, dest: &str, id: u64) -> Result<bool, TxError> {
    let key = chunk_key(dest, id);
    let mut chunk = read(tree, &key)?;
    if !chunk.remove(id) {
        return Ok(false);
    }
    write(tree, &key, &chunk)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_keeps_its_entries_in_id_order_through_any_sequence_of_changes() {
        let key = chunk_key("lane", 5 << SLOT_BITS);
        let mut chunk = Chunk::default();
        let mut model = std::collections::BTreeMap::new();
        // A fixed pseudo-random walk over the 64 slots.
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for step in 0..2000u32 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let id = (5 << SLOT_BITS) | (x & SLOT_MASK);
            if x >> 60 < 5 {
                assert_eq!(chunk.remove(id), model.remove(&id).is_some());
            } else {
                let state = step.to_string().into_bytes();
                chunk.set(id, state.clone());
                model.insert(id, state);
            }
            let back = Chunk::decode(&chunk.encode()).unwrap();
            assert_eq!(back, chunk);
            let listed: Vec<(u64, Vec<u8>)> =
                back.entries(&key).map(|(i, s)| (i, s.to_vec())).collect();
            let expected: Vec<(u64, Vec<u8>)> = model.clone().into_iter().collect();
            assert_eq!(listed, expected);
        }
    }

    #[test]
    fn a_never_tried_entry_is_stored_as_three_bytes_and_reads_back_as_default() {
        let mut chunk = Chunk::default();
        chunk.set(7, encode_state(&Attempts::default()));
        assert_eq!(chunk.encode().len(), 1 + 3);
        let tried = Attempts {
            attempts: 2,
            next_attempt_ms: 99,
            history: vec![],
        };
        chunk.set(8, encode_state(&tried));
        let back = Chunk::decode(&chunk.encode()).unwrap();
        assert_eq!(
            decode_state(back.get(7).unwrap()).unwrap(),
            Attempts::default()
        );
        assert_eq!(decode_state(back.get(8).unwrap()).unwrap(), tried);
        assert_eq!(back.get(9), None);
    }

    #[test]
    fn a_history_too_long_for_an_entry_keeps_its_newest_records_and_the_attempt_count() {
        let state = Attempts {
            attempts: 3000,
            next_attempt_ms: 1,
            history: (0..3000)
                .map(|i| crate::outbox::AttemptRecord {
                    at_ms: i,
                    result: format!("connection refused by a very long proxy message {i:>40}"),
                })
                .collect(),
        };
        let bytes = encode_state(&state);
        assert!(bytes.len() <= MAX_STATE && bytes.len() > MAX_STATE / 4);
        let back = decode_state(&bytes).unwrap();
        assert_eq!((back.attempts, back.next_attempt_ms), (3000, 1));
        assert_eq!(back.history.last(), state.history.last());
        assert!(back.history.len() < state.history.len());
        let mut chunk = Chunk::default();
        chunk.set(1, bytes);
        assert_eq!(
            decode_state(Chunk::decode(&chunk.encode()).unwrap().get(1).unwrap()).unwrap(),
            back
        );
        // One record longer than an entry on its own: no history, exact count.
        let huge = Attempts {
            attempts: 1,
            next_attempt_ms: 0,
            history: vec![crate::outbox::AttemptRecord {
                at_ms: 0,
                result: "x".repeat(100_000),
            }],
        };
        let back = decode_state(&encode_state(&huge)).unwrap();
        assert_eq!((back.attempts, back.history.len()), (1, 0));
    }

    #[test]
    fn a_damaged_chunk_is_an_error_never_a_misread() {
        let mut chunk = Chunk::default();
        chunk.set(3, b"{}".to_vec());
        chunk.set(4, Vec::new());
        let good = chunk.encode();
        for cut in 1..good.len() {
            // Cut anywhere inside an entry: an error, not fewer entries...
            let r = Chunk::decode(&good[..cut]);
            if cut != 1 && cut != 6 {
                assert!(r.is_err(), "cut at {cut}");
            }
        }
        assert!(Chunk::decode(&[]).is_err());
        assert!(Chunk::decode(&[2]).is_err(), "an unknown version");
        // ...and slots out of order or out of range are refused.
        assert!(Chunk::decode(&[1, 4, 0, 0, 3, 0, 0]).is_err());
        assert!(Chunk::decode(&[1, 64, 0, 0]).is_err());
    }

    #[test]
    fn ids_land_in_the_chunk_of_their_high_bits_and_keys_sort_in_id_order() {
        assert_eq!(chunk_key("a", 0), chunk_key("a", 63));
        assert_ne!(chunk_key("a", 63), chunk_key("a", 64));
        let keys: Vec<Vec<u8>> = [0u64, 64, 1 << 20, u64::MAX]
            .iter()
            .map(|id| chunk_key("a", *id))
            .collect();
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(id_of(&chunk_key("a", 1000), slot(1000)), Some(1000));
    }
}
