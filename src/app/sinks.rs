//! Event sinks with I/O: JSON Lines to a file or to standard output, and the
//! durable outbox.
//!
//! Invariants: each event is written as its stamped bytes plus `\n` and
//! flushed before `accept` returns, so a crash loses at most the event being
//! written; files are opened for append (an existing log is never truncated).
//! The outbox sink returns only when the event is durable, then wakes the
//! lanes that want it; a live event (intermediate result or hint) the full
//! outbox has no room for is shed (counted) instead of ending the scan.

use crate::delivery::Lane;
use crate::events::{EventSink, SinkError, StampedEvent};
use crate::outbox::Outbox;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Appends events to a JSON Lines file.
pub struct JsonlFile {
    path: PathBuf,
    file: File,
}

impl JsonlFile {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(JsonlFile {
            path: path.to_path_buf(),
            file,
        })
    }
}

fn write_line(out: &mut dyn Write, event: &StampedEvent, sink: &str) -> Result<(), SinkError> {
    let err = |source: std::io::Error| SinkError {
        sink: sink.to_string(),
        event_id: event.id.clone(),
        source: Box::new(source),
    };
    out.write_all(&event.bytes).map_err(err)?;
    out.write_all(b"\n").map_err(err)?;
    out.flush().map_err(err)
}

impl EventSink for JsonlFile {
    fn accept(&mut self, event: &StampedEvent) -> Result<(), SinkError> {
        let name = self.path.display().to_string();
        write_line(&mut self.file, event, &name)
    }
}

/// Writes events to standard output as JSON Lines.
pub struct StdoutJsonl;

impl EventSink for StdoutJsonl {
    fn accept(&mut self, event: &StampedEvent) -> Result<(), SinkError> {
        write_line(&mut std::io::stdout().lock(), event, "stdout")
    }
}

/// Makes events durable in the outbox for every lane that wants them.
pub struct OutboxSink {
    pub outbox: Arc<Outbox>,
    pub lanes: Vec<Lane>,
}

impl EventSink for OutboxSink {
    fn accept(&mut self, event: &StampedEvent) -> Result<(), SinkError> {
        let wanted: Vec<&Lane> = self.lanes.iter().filter(|l| l.wants(event.kind)).collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = wanted.iter().map(|l| l.name.as_str()).collect();
        let sink_error = |e: crate::outbox::OutboxError| SinkError {
            sink: format!("outbox {}", self.outbox.path().display()),
            event_id: event.id.clone(),
            source: Box::new(e),
        };
        match self.outbox.append(event, &names, super::unix_ms()) {
            Ok(_) => {}
            // No room even after shedding older ones: this live event is
            // shed itself (counted); the scan goes on.
            Err(crate::outbox::OutboxError::Full { .. }) if event.kind.is_sheddable() => {
                return self.outbox.count_shed().map_err(sink_error);
            }
            Err(e) => return Err(sink_error(e)),
        }
        for l in wanted {
            l.wake.notify_one();
        }
        Ok(())
    }
}

/// Keeps events in memory (for the demo summary and for tests).
#[derive(Debug, Default)]
pub struct Collect(pub Vec<StampedEvent>);

impl EventSink for Collect {
    fn accept(&mut self, event: &StampedEvent) -> Result<(), SinkError> {
        self.0.push(event.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Event, Stamper};

    #[test]
    fn the_jsonl_file_appends_exactly_the_stamped_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        std::fs::write(&path, "{\"earlier\":true}\n").unwrap();
        let mut stamper = Stamper::new("d", "s");
        let e = stamper.stamp(&Event::general_error("X", "m"), 1, 2);
        JsonlFile::open(&path).unwrap().accept(&e).unwrap();
        let text = std::fs::read(&path).unwrap();
        let mut want = b"{\"earlier\":true}\n".to_vec();
        want.extend_from_slice(&e.bytes);
        want.push(b'\n');
        assert_eq!(text, want);
    }
}
