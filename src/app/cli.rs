//! Command-line interface: arguments as typed data (clap), nothing else.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// Heart and breathing rate from a camera, on the device, with lifecycle events.
///
/// rppg-agent measures heart rate (HR), respiratory rate (RR) and HRV from
/// video of a face (remote photoplethysmography): face detection, skin
/// colour of forehead and cheeks, POS pulse extraction, spectral HR with an
/// SNR-based confidence, and RR from four fused respiratory signals. While
/// it measures it emits WMS-style lifecycle events (CAMERA_STARTED ...
/// SCAN_COMPLETED). No frame is ever written to disk or sent anywhere.
///
/// Start with `rppg-agent demo`.
#[derive(Debug, Parser)]
#[command(
    name = "rppg-agent",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More log detail on stderr (-v debug, -vv trace); overrides RPPG_LOG / RUST_LOG.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Less on stderr: no progress line or delivery summary; the log only
    /// warnings and errors (-qq errors, -qqq nothing).
    #[arg(short, long, action = clap::ArgAction::Count, global = true, conflicts_with = "verbose")]
    pub quiet: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Watch a complete scan of the built-in synthetic face, with live events.
    ///
    /// The video is a real (public-domain) face photo with a known pulse and
    /// breathing added, so the summary shows measured against true values.
    /// Runs in real time; --fast runs as fast as the machine can.
    Demo(DemoArgs),
    /// Measure once from a video source and report the result.
    ///
    /// Events are printed to stdout as JSON Lines while the scan runs (and
    /// appended to --events FILE); with --json, stdout is instead exactly one
    /// result object at the end. Exit codes: 0 completed, 3 cancelled
    /// (LOW_SNR, FACE_LOST, NO_FACE, TOO_DARK, TOO_MUCH_MOTION, INPUT_ENDED;
    /// the result's `constraint` says why, e.g. FACE_TOO_SMALL: step closer),
    /// 2 bad usage, configuration or input, 1 anything else.
    ///
    /// Examples:
    ///   rppg-agent scan --input synthetic:hr=88,rr=12 --json
    ///   ffmpeg -i face.mp4 -f yuv4mpegpipe - | rppg-agent scan --input - --json
    ///   rppg-agent scan --input frames:./shots,fps=15 --events scan.jsonl
    ///   rppg-agent scan --input synthetic:width=1280,height=720,face_width=0.06,faces=2 --json
    #[command(verbatim_doc_comment)]
    Scan(ScanArgs),
    /// Run the signal stage alone on per-frame mean RGB traces (CSV).
    ///
    /// The CSV has a header row with R, G and B columns (any case, any
    /// order) and optionally `time` in milliseconds; without it give --fps.
    /// Irregular timestamps (dropped frames, jitter) are resampled. Prints
    /// the same JSON object as `scan --json`. Exit codes as for scan.
    Analyze(AnalyzeArgs),
    /// Print the default configuration, check a file, or show where it is looked for.
    ///
    /// Without --config (or RPPG_CONFIG), commands read the first of
    /// /etc/rppg-agent/agent.toml and $XDG_CONFIG_HOME/rppg-agent/agent.toml
    /// (~/.config/... without XDG_CONFIG_HOME) that exists; `demo` and `eval`
    /// use the built-in defaults unless given --config. RPPG_<SECTION>_<KEY>
    /// variables override any file (e.g. RPPG_SCAN_DURATION_S=20).
    #[command(verbatim_doc_comment)]
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// The kiosk daemon: scans on request or on a steady face, a local HTTP API.
    ///
    /// Delivery lanes are always on; the kiosk screen follows every event live.
    ///
    /// API (loopback by default, [api] in the config):
    ///   POST   /v1/scans            start a scan ({"subject","seconds"} optional); 409 if one runs
    ///   DELETE /v1/scans/current    cancel it (MEASUREMENT_CANCELED, reason REQUESTED)
    ///   GET    /v1/scans/{id}       state and result
    ///   GET    /v1/events           Server-Sent Events: every event, live
    ///   GET    /healthz, /metrics   liveness; Prometheus metrics
    ///
    /// SIGTERM/SIGINT cancel a running scan, deliver for run.shutdown_drain_s,
    /// flush the outbox and exit 0. Logs go to stderr (journald under systemd).
    #[command(verbatim_doc_comment)]
    Run(RunArgs),
    /// Print a shell completion script.
    ///
    /// Examples:
    ///   rppg-agent completions bash > /etc/bash_completion.d/rppg-agent
    ///   rppg-agent completions zsh > "${fpath[1]}/_rppg-agent"
    ///   rppg-agent completions fish > ~/.config/fish/completions/rppg-agent.fish
    #[command(verbatim_doc_comment)]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print a machine-readable contract: the JSON Schema of every event, or
    /// the OpenAPI description of the daemon's API (also at GET /openapi.json).
    ///
    /// Copies live in docs/schema/ (the tests keep them equal to these).
    ///
    /// Examples:
    ///   rppg-agent schema events > events.schema.json
    ///   rppg-agent schema openapi > openapi.json
    #[command(verbatim_doc_comment)]
    Schema {
        /// Which contract.
        #[arg(value_enum, default_value_t = SchemaKind::Events)]
        which: SchemaKind,
    },
    /// Print the manual page (roff), generated from this help.
    ///
    /// Example:
    ///   rppg-agent man > /usr/local/share/man/man1/rppg-agent.1 && man rppg-agent
    #[command(verbatim_doc_comment)]
    Man,
    /// List the cameras (V4L2, /dev/video*) and the formats each offers.
    ///
    /// Needs a build with the `camera` feature (the device builds in cross/
    /// have it); other builds say how to get one.
    Cameras,
    /// Measure the speed of every pipeline stage (medians) and peak memory.
    Bench(BenchArgs),
    /// Write the built-in synthetic face video as YUV4MPEG2 (4:2:0), to a file or a pipe.
    ///
    /// The same seeded video `--input synthetic:...` measures, with a known
    /// pulse and breathing, as a file other tools read (ffmpeg, a Python rPPG
    /// peer) or a pipe into `scan --input -`. SPEC takes the synthetic
    /// options (see `scan --help`); y4m has one frame rate, so `drop` and
    /// `jitter` timing is not kept. Only generated video is written: no
    /// command writes camera frames anywhere.
    ///
    /// Examples:
    ///   rppg-agent synth --out face.y4m          # 30 s at 320x240, HR 72, RR 15
    ///   rppg-agent synth synthetic:width=640,height=480,seconds=34 --out face.y4m
    ///   rppg-agent synth synthetic:seconds=20 | rppg-agent scan --input - --json
    #[command(verbatim_doc_comment)]
    Synth(SynthArgs),
    /// Measure accuracy on seeded synthetic video with known truth (and real recordings).
    ///
    /// Also runs the robustness cases that must be cancelled, never measured.
    ///
    /// Each condition (resolution, frame rate, skin tone, noise, motion,
    /// rotation, sudden moves, lighting, flicker, dropped frames) runs at
    /// several true heart and breathing rates (HR 45-180, RR 6-30). Prints
    /// per condition: share completed, MAE, RMSE, MAPE and Pearson r of HR
    /// and RR, and the mean confidence of right vs wrong HR estimates.
    ///
    /// The framing sweep places real portraits (--faces DIR, or the six
    /// built-in ones) at face widths of 3-60 % of the frame, off-centre,
    /// partly out of the frame, with people behind and background clutter,
    /// at 320x240, 640x480 and 1280x720. Per row: share completed, HR and RR
    /// MAE, wrong numbers, time to lock and to the first result.
    ///
    /// Confidence: per condition, the AUROC of each vital's confidence (HR,
    /// RR, HRV) for right vs wrong answers, and per vital a reliability
    /// table (per confidence decile: answers and the share right). With
    /// --forced every trust floor is off, so the answers the floors would
    /// withhold are scored too.
    ///
    /// --welltory DIR adds the Welltory contact-PPG recordings (folders with
    /// PPG.csv and RR.txt): HR and RMSSD against the Polar H10 chest strap,
    /// beside a plain FFT peak from the same run.
    ///
    /// Examples:
    ///   rppg-agent eval                       # the full sweep (a few minutes)
    ///   rppg-agent eval --quick               # one scan per condition, 20 s each
    ///   rppg-agent eval --forced              # floors off: how well confidence ranks
    ///   rppg-agent eval --trials 0 --welltory ../shared/data/welltory
    ///   rppg-agent eval --sweep framing --faces ../shared/data/faces --trials 30
    #[command(verbatim_doc_comment)]
    Eval(EvalArgs),
    /// Check a received webhook's signature (for receivers): valid, or exactly why not.
    ///
    /// The body is read from stdin (or --body FILE), byte for byte as received.
    /// Exit codes: 0 valid, 3 invalid (bad signature, timestamp outside the
    /// tolerance, malformed or missing header), 2 usage.
    ///
    /// Example:
    ///   RPPG_SECRET=whsec_... rppg-agent verify --secret-env RPPG_SECRET \
    ///     --header "webhook-id: evt_01..." --header "webhook-timestamp: 1795348080" \
    ///     --header "webhook-signature: v1,..." < body.json
    #[command(verbatim_doc_comment)]
    Verify(VerifyArgs),
    /// Deliver everything waiting in the outbox now, then exit ("sync later").
    ///
    /// Every pending event is tried at once (ignoring its backoff), then the
    /// normal retry schedule applies until --timeout. Prints one line per
    /// destination. Exit codes: 0 every lane is empty, 3 events are still
    /// pending, 4 events were dead-lettered in this run (rejected or out of
    /// retries), 2 configuration problems, 1 storage errors.
    Sync {
        /// Give up after this many seconds.
        #[arg(long = "timeout", default_value_t = 60.0, value_name = "SECONDS")]
        timeout_s: f64,
        /// Configuration file (see `rppg-agent config default`).
        #[arg(long, env = "RPPG_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Send test events through the outbox to every destination (checks receivers end to end).
    ///
    /// Each TEST_EVENT is made durable in the outbox, then delivered and
    /// signed like any event. Destinations with an `events` filter get it only
    /// if the filter lists TEST_EVENT; FHIR and Circadify destinations never do. Prints one
    /// JSON line per event once it is stored ({"id":...,"index":...}), then
    /// one line per destination on stderr. Events not delivered within
    /// --timeout stay in the outbox for `sync` or a running agent.
    /// Exit codes: 0 every lane is empty, 3 events are still pending,
    /// 4 events were dead-lettered (rejected or out of retries),
    /// 2 configuration problems, 1 storage errors (e.g. the outbox is full).
    ///
    /// Examples:
    ///   rppg-agent send-test --config agent.toml            # one event
    ///   rppg-agent send-test --count 10000 --rate 0 --timeout 120   # a load test
    #[command(verbatim_doc_comment)]
    SendTest {
        /// How many test events.
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Events per second; 0 stores them as fast as the disk allows.
        #[arg(long, default_value_t = 10.0, value_name = "PER_SECOND")]
        rate: f64,
        /// After the last event, wait this many seconds for delivery.
        #[arg(long = "timeout", default_value_t = 30.0, value_name = "SECONDS")]
        timeout_s: f64,
        /// Configuration file (see `rppg-agent config default`).
        #[arg(long, env = "RPPG_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Inspect the outbox, replay dead letters, purge old records.
    Outbox {
        #[command(subcommand)]
        action: OutboxAction,
        /// Configuration file (see `rppg-agent config default`).
        #[arg(long, env = "RPPG_CONFIG", global = true)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum OutboxAction {
    /// Counts per destination: pending (due now), dead-lettered, delivered.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// Pending events (or dead letters with --dead), oldest first.
    List {
        /// Only this destination.
        #[arg(long)]
        dest: Option<String>,
        /// Dead letters instead of pending events.
        #[arg(long, conflicts_with = "delivered")]
        dead: bool,
        /// The audit trail instead: events each destination acknowledged
        /// (kept for outbox.retention_s).
        #[arg(long)]
        delivered: bool,
        #[arg(long)]
        json: bool,
    },
    /// One event: its envelope and its state on every destination (for an
    /// event every destination has acknowledged, its audit records).
    Show {
        /// Event id (evt_...) or outbox id.
        id: String,
        #[arg(long)]
        json: bool,
    },
    /// Move dead letters back to pending (then `sync` or a running agent delivers them).
    Replay {
        /// Only this destination.
        #[arg(long)]
        dest: Option<String>,
        /// Only events stored at or after this Unix time in milliseconds.
        #[arg(long = "since", value_name = "UNIX_MS")]
        since_ms: Option<u64>,
        /// Only this event id.
        #[arg(long)]
        id: Option<String>,
    },
    /// Delete delivered audit records older than outbox.retention_s (default),
    /// or dead letters with --dead --yes.
    Purge {
        #[arg(long)]
        dead: bool,
        #[arg(long)]
        dest: Option<String>,
        /// Confirm deleting dead letters.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Signature scheme the sender used.
    #[arg(long, value_enum, default_value_t = crate::delivery::signing::Scheme::Standard)]
    pub scheme: crate::delivery::signing::Scheme,
    /// Name of an environment variable holding a secret (repeatable: rotation).
    #[arg(long, value_name = "VAR")]
    pub secret_env: Vec<String>,
    /// File holding a secret (repeatable).
    #[arg(long, value_name = "FILE")]
    pub secret_file: Vec<PathBuf>,
    /// A secret on the command line (visible in the process list; prefer --secret-env).
    #[arg(long, value_name = "SECRET")]
    pub secret: Vec<String>,
    /// A received header as "name: value" (repeatable).
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// Read the body from this file instead of stdin.
    #[arg(long, value_name = "FILE")]
    pub body: Option<PathBuf>,
    /// The input is an MQTT 3.1.1 message payload: a signed envelope
    /// {"headers":{...},"body":"..."} that carries its own headers
    /// (Standard Webhooks scheme; no --header needed).
    #[arg(long, conflicts_with = "headers")]
    pub envelope: bool,
    /// Largest accepted difference between the signature's timestamp and now.
    #[arg(long, default_value_t = crate::delivery::signing::DEFAULT_TOLERANCE_S)]
    pub tolerance_s: u64,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// True heart rate of the synthetic face, beats per minute (30-240).
    #[arg(long, default_value_t = 72.0)]
    pub hr: f64,
    /// True breathing rate, breaths per minute (3-60).
    #[arg(long, default_value_t = 15.0)]
    pub rr: f64,
    /// Scan length in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub seconds: f64,
    /// Seed of the synthetic video (noise, beat-to-beat variation).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Do not pace frames in real time.
    #[arg(long)]
    pub fast: bool,
    /// Configuration file (see `rppg-agent config default`).
    #[arg(long, env = "RPPG_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ScanArgs {
    /// Video source: synthetic[:k=v,...] | FILE.y4m | - (YUV4MPEG2 on stdin) | frames:DIR[,fps=30] | camera[:N][,width=640,height=480,fps=30] (builds with the `camera` feature).
    ///
    /// synthetic options: hr, rr, seconds, seed, width, height, fps, noise
    /// (σ, 8-bit levels), motion (px), light (relative drift), pulse (% of
    /// green, 0 = no pulse), rsa, breathing (depth, 0 = none), brightness,
    /// face (0 = empty scene),
    /// tone (skin type 1-6), rotate (deg), zoom, jump (px), flicker,
    /// flicker_hz, drop (probability), jitter (ms). Framing: photo (astronaut,
    /// 001, 013, 016, 021, 032 or a PNG/JPEG path with box=X:Y:W:H), face_width
    /// (share of the frame width, 0.35), face_x, face_y (face centre as shares
    /// of the frame; outside 0-1 cuts the face), faces (1-3: people behind),
    /// clutter=1 (a busy room), leave (s: the person walks away).
    #[arg(long, short)]
    pub input: String,
    /// Scan length in seconds (overrides scan.duration_s).
    #[arg(long)]
    pub seconds: Option<f64>,
    /// Print exactly one JSON result object on stdout at the end, instead of events.
    #[arg(long, conflicts_with = "fhir")]
    pub json: bool,
    /// Print the completed scan as a FHIR R4 Bundle (vital-signs Observations:
    /// heart rate LOINC 8867-4, respiratory rate 9279-1) on stdout, instead of events.
    /// A cancelled scan prints no bundle (exit 3).
    #[arg(long)]
    pub fhir: bool,
    /// Also write a report of the scan to this SVG file: the pulse wave with
    /// its beats, the spectrum with the HR peak and SNR bands, the breathing wave.
    #[arg(long, value_name = "FILE.svg")]
    pub report: Option<PathBuf>,
    /// Who is measured, e.g. Patient/123: in every event, and the FHIR subject
    /// (default: [fhir] subject). Printable ASCII, at most 128 characters.
    #[arg(long, value_name = "REFERENCE")]
    pub subject: Option<String>,
    /// Your own correlation id (an order or visit number), carried in every
    /// event of the scan as `externalId`. Printable ASCII, at most 128 characters.
    #[arg(long, value_name = "ID")]
    pub external_id: Option<String>,
    /// Also append every event to this JSON Lines file.
    #[arg(long, value_name = "FILE.jsonl")]
    pub events: Option<PathBuf>,
    /// Configuration file (see `rppg-agent config default`).
    #[arg(long, env = "RPPG_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// CSV of per-frame mean R, G, B (and optionally time in ms); - for stdin.
    #[arg(long, value_name = "FILE")]
    pub rgb_csv: PathBuf,
    /// Frame rate, when the CSV has no time column.
    #[arg(long)]
    pub fps: Option<f64>,
    /// Projection (overrides signal.method): pos, chrom, green, or red for
    /// finger-on-lens (contact) recordings.
    #[arg(long, value_enum)]
    pub method: Option<crate::signal::Method>,
    /// Configuration file (see `rppg-agent config default`).
    #[arg(long, env = "RPPG_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigAction {
    /// Print the built-in configuration: every key, its default and what it does.
    Default,
    /// Validate a configuration file (plus RPPG_* variables) and explain every problem.
    Check {
        /// The file to check (default: the one commands would read, see `config path`).
        file: Option<PathBuf>,
    },
    /// Where configuration files are looked for, and which one is used.
    Path,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file (see `rppg-agent config default`).
    #[arg(long, env = "RPPG_CONFIG")]
    pub config: Option<PathBuf>,
    /// Listen here instead of api.listen (port 0: any free port, logged at start).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// Scan this source instead of run.input (e.g. synthetic for a demo kiosk).
    #[arg(long, value_name = "SOURCE")]
    pub input: Option<String>,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Scans per synthetic condition, each at another true HR/RR (0 = none).
    #[arg(long, default_value_t = 8)]
    pub trials: usize,
    /// Length of each synthetic scan in seconds (RR needs 20 or more).
    #[arg(long, default_value_t = 30.0)]
    pub seconds: f64,
    /// One scan of 20 s per condition: a smoke run of a few seconds.
    #[arg(long, conflicts_with_all = ["trials", "seconds"])]
    pub quick: bool,
    /// Also evaluate the Welltory PPG recordings in this folder.
    #[arg(long, value_name = "DIR")]
    pub welltory: Option<PathBuf>,
    /// Portraits for the framing sweep: a folder with a README.md table of
    /// photos and face boxes (`| 001.jpg | ... | x, y, w, h |`), such as the
    /// 30 public-domain portraits of skin types I-VI the project uses.
    /// Default: the six built-in portraits.
    #[arg(long, value_name = "DIR")]
    pub faces: Option<PathBuf>,
    /// Which sweeps to run.
    #[arg(long, value_enum, default_value_t = Sweep::All)]
    pub sweep: Sweep,
    /// Worker threads for the sweep (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Print one JSON object (every trial) instead of tables.
    #[arg(long)]
    pub json: bool,
    /// Every trust floor off (scan.low_snr_db, signal.hr/rr/hrv_min_confidence):
    /// each scan reports what the floors would withhold, so the confidence
    /// tables (AUROC, reliability) see the wrong answers they must rank low.
    #[arg(long)]
    pub forced: bool,
}

/// The synthetic sweeps of `eval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Sweep {
    /// Both.
    All,
    /// Resolution, frame rate, skin tone, noise, motion, lighting, and the robustness cases.
    Conditions,
    /// Face size and position, resolutions, people behind, clutter, every portrait.
    Framing,
    /// Neither (e.g. only --welltory).
    None,
}

/// The contracts `rppg-agent schema` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SchemaKind {
    /// JSON Schema (2020-12) of the event envelope and every payload.
    Events,
    /// OpenAPI 3.1 of the daemon's local API.
    Openapi,
}

#[derive(Debug, Args)]
pub struct SynthArgs {
    /// The synthetic video: `synthetic` or `synthetic:OPTIONS`.
    #[arg(default_value = "synthetic")]
    pub spec: String,
    /// Output file (default: standard output, which must not be a terminal).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub out: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Frames per measurement (more: steadier medians, longer run).
    #[arg(long, default_value_t = 300)]
    pub frames: usize,
    /// Repetitions per measurement; medians are reported.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        // Duplicate flags, a global -q beside a command's own, bad defaults.
        Cli::command().debug_assert();
    }

    #[test]
    fn verbosity_flags_are_global_and_exclusive() {
        let cli =
            Cli::try_parse_from(["rppg-agent", "scan", "-q", "--input", "synthetic"]).unwrap();
        assert_eq!((cli.verbose, cli.quiet), (0, 1));
        let cli = Cli::try_parse_from(["rppg-agent", "-vv", "config", "path"]).unwrap();
        assert_eq!(cli.verbose, 2);
        assert!(Cli::try_parse_from(["rppg-agent", "-v", "-q", "config", "path"]).is_err());
    }
}
