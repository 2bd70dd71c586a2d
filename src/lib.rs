//! rppg-agent: heart and breathing rate from a webcam, on the device, with
//! lifecycle events.
//!
//! # Layout: the folder tree is the pipeline
//!
//! ```text
//! capture ──frames──▶ vision ──observations──▶ measurement ──updates──▶ events ──▶ sinks
//!  (I/O)     (pure: detect, track, skin ROI)   (pure state machine,      (pure: WMS names,
//!                                               calls signal)             envelope, bytes)
//!                          signal (pure DSP: resample, POS/CHROM, band-pass,
//!                                  spectrum, SNR, beats, HRV, RR fusion)
//! ```
//!
//! - [`capture`]: frame sources (synthetic face video, YUV4MPEG2, frame
//!   directories; the camera next) and RGB trace CSVs.
//! - [`vision`]: face detection (SeetaFace via rustface), sub-pixel
//!   tracking, skin-masked forehead/cheek means.
//! - [`signal`]: all DSP, pure functions and plan-once objects.
//! - [`measurement`]: the scan state machine, driven by frame timestamps.
//! - [`events`]: WMS-style events, their envelope and the sink seam.
//! - [`outbox`]: the durable sled outbox (every event on disk before it is acknowledged).
//! - [`delivery`]: signing and the delivery policy (pure), for webhooks and MQTT.
//! - [`config`]: the one typed configuration.
//! - [`app`]: commands and all I/O (files, terminal, clock, randomness).
//!
//! Data flows one way, left to right. Only `capture` and `app` touch the
//! outside world; everything else is a pure function of its inputs, with
//! time passed in as frame timestamps.

pub mod app;
pub mod capture;
pub mod config;
pub mod delivery;
pub mod events;
pub mod measurement;
pub mod outbox;
pub mod signal;
pub mod vision;
