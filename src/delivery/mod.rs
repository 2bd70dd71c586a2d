//! Delivery stage: getting durable events to their destinations.
//!
//! Owns: how an event is signed for a receiver ([`signing`]) and what the
//! result of an attempt means ([`policy`]). Both are pure; the workers that
//! do network I/O build on them.

pub mod policy;
pub mod signing;
