//! App: the commands, wired from the pipeline stages, with all the I/O.
//!
//! Owns: configuration loading from files and the environment, the
//! per-command flow ([`scan`], [`analyze`], `config`, [`bench`]), terminal
//! output (events, progress line, summaries), exit codes, and the edges of
//! the pure core — the wall clock and randomness ([`unix_ms`],
//! [`random_u128`]).
//!
//! Exit codes: 0 completed, 3 cancelled by the measurement, 2 usage /
//! configuration / input errors, 1 anything else (see [`AppError::exit_code`]).

pub mod analyze;
pub mod bench;
pub mod cli;
pub mod daemon;
pub mod deliver;
pub mod eval;
pub mod openapi;
pub mod receiver;
pub mod report;
pub mod scan;
pub mod sinks;

use crate::capture::{synthetic::SyntheticParams, CaptureError, SourceSpec};
use crate::config::{Config, ConfigError, DEFAULT_TOML};
use crate::events::{EventSink, SinkError, StampedEvent};
use crate::signal::SignalError;
use crate::vision::VisionError;
use cli::{Cli, Command, ConfigAction};
use scan::{Progress, ScanOptions, ScanReport};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

/// Everything a command can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot read configuration file {path}: {source}")]
    ConfigFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    Vision(#[from] VisionError),
    #[error("cannot read face model {path}: {source} (set vision.model_path to the vendored models/seeta_fd_frontal_v1.0.bin, or leave it empty for the built-in model)")]
    Model {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Signal(#[from] SignalError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("cannot open events file {path}: {source}")]
    EventsFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Output(#[from] std::io::Error),
    #[error(transparent)]
    Outbox(#[from] crate::outbox::OutboxError),
    #[error("cannot create the outbox directory {path}: {source}; set outbox.path to a writable directory")]
    OutboxDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Delivery(#[from] crate::delivery::DeliveryError),
    #[error("delivery lane {name} stopped: {source}")]
    Lane {
        name: String,
        #[source]
        source: crate::outbox::OutboxError,
    },
}

impl AppError {
    pub fn exit_code(&self) -> i32 {
        match self {
            AppError::Usage(_)
            | AppError::Config(_)
            | AppError::ConfigFile { .. }
            | AppError::Capture(_)
            | AppError::Vision(_)
            | AppError::Model { .. }
            | AppError::Signal(_)
            | AppError::EventsFile { .. }
            | AppError::OutboxDir { .. }
            | AppError::Delivery(_)
            | AppError::Outbox(crate::outbox::OutboxError::NotFound(_)) => 2,
            AppError::Sink(_)
            | AppError::Output(_)
            | AppError::Outbox(_)
            | AppError::Lane { .. } => 1,
        }
    }
}

/// How much the log says: `-v`/`-q` on the command line, else `RPPG_LOG`
/// or `RUST_LOG` (`info`, `warn,rppg_agent=debug`, ...), else `info`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Verbosity {
    pub verbose: u8,
    pub quiet: u8,
}

/// The log filter for `verbosity` and the environment's directives
/// (`RPPG_LOG`, else `RUST_LOG`), and a warning when those do not parse.
pub fn log_filter(
    verbosity: Verbosity,
    directives: Option<&str>,
) -> (tracing_subscriber::filter::Targets, Option<String>) {
    use tracing_subscriber::filter::{LevelFilter, Targets};
    let from_flags = match i16::from(verbosity.verbose) - i16::from(verbosity.quiet) {
        0 => None,
        1 => Some(LevelFilter::DEBUG),
        v if v >= 2 => Some(LevelFilter::TRACE),
        -1 => Some(LevelFilter::WARN),
        -2 => Some(LevelFilter::ERROR),
        _ => Some(LevelFilter::OFF),
    };
    if let Some(level) = from_flags {
        return (Targets::new().with_default(level), None);
    }
    let info = Targets::new().with_default(LevelFilter::INFO);
    match directives.map(str::trim).filter(|d| !d.is_empty()) {
        None => (info, None),
        Some(d) => match d.parse::<Targets>() {
            Ok(t) => (t, None),
            Err(e) => (
                info,
                Some(format!(
                    "the log level {d:?} is not understood ({e}), so the log shows info and above; \
                     use e.g. RPPG_LOG=debug or RPPG_LOG=warn,rppg_agent=debug"
                )),
            ),
        },
    }
}

/// Log lines (tracing) on stderr, plain, for journald: the daemon's and the
/// delivery lanes' (offline, back online), at the level [`log_filter`] chose.
pub fn init_logging(verbosity: Verbosity) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let directives = std::env::var("RPPG_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok());
    let (filter, warning) = log_filter(verbosity, directives.as_deref());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false);
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(filter)
        .try_init();
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
}

/// Milliseconds since the Unix epoch (the one wall-clock read for events).
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// 128 random bits from the operating system (ids).
pub fn random_u128() -> u128 {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // No OS entropy: fall back to time and address bits; ids stay unique
        // per process because the stamper increments within a millisecond.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        return t ^ ((&b as *const _ as usize as u128) << 64);
    }
    u128::from_le_bytes(b)
}

/// The system-wide configuration file, read when no file is named.
pub const SYSTEM_CONFIG: &str = "/etc/rppg-agent/agent.toml";

/// Where a configuration file is looked for when neither `--config` nor
/// `RPPG_CONFIG` names one, in order: [`SYSTEM_CONFIG`], then
/// `$XDG_CONFIG_HOME/rppg-agent/agent.toml` (`~/.config/...` without it).
/// The first that exists is used; with none, the built-in defaults apply.
pub fn config_search_path() -> Vec<PathBuf> {
    let mut out = vec![PathBuf::from(SYSTEM_CONFIG)];
    let xdg = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
    out.extend(xdg.map(|d| d.join("rppg-agent").join("agent.toml")));
    out
}

/// The file a command reads: the one named, else the first of
/// [`config_search_path`] that exists, else none (built-in defaults).
pub fn config_file(named: Option<&Path>) -> Option<PathBuf> {
    match named {
        Some(p) => Some(p.to_path_buf()),
        None => config_search_path().into_iter().find(|p| p.is_file()),
    }
}

/// Loads the configuration: defaults, then the file [`config_file`]
/// chooses, then `RPPG_*` variables.
pub fn load_config(path: Option<&Path>) -> Result<Config, AppError> {
    load_config_with(path, crate::config::Secrets::Required)
}

/// As [`load_config`]; inspection (the `outbox` commands) passes
/// [`crate::config::Secrets::Optional`]: it signs nothing, so it works
/// without the delivery secrets in its environment.
pub fn load_config_with(
    path: Option<&Path>,
    secrets: crate::config::Secrets,
) -> Result<Config, AppError> {
    load_exactly(config_file(path).as_deref(), secrets)
}

/// Loads defaults, then `path` only if given (no search: `demo` and `eval`
/// measure the built-in defaults unless told otherwise), then `RPPG_*`
/// variables. Warnings (a variable that looks like a misspelt key) go to
/// stderr.
pub fn load_exactly(
    path: Option<&Path>,
    secrets: crate::config::Secrets,
) -> Result<Config, AppError> {
    let text = match path {
        Some(p) => Some(
            std::fs::read_to_string(p).map_err(|source| AppError::ConfigFile {
                path: p.display().to_string(),
                source,
            })?,
        ),
        None => None,
    };
    let name = path.map(|p| p.display().to_string()).unwrap_or_default();
    let config = Config::load_with(
        text.as_deref().map(|t| (name.as_str(), t)),
        std::env::vars(),
        secrets,
    )?;
    tracing::debug!(
        file = %name,
        webhooks = config.webhook.len(),
        mqtt = config.mqtt.len(),
        "configuration loaded"
    );
    for w in &config.warnings {
        eprintln!(
            "warning: {} ({}): {}; {}",
            w.key, w.origin, w.problem, w.fix
        );
    }
    Ok(config)
}

/// The device id: configured, else the host name.
pub fn device_id(config: &Config) -> String {
    if !config.device.id.is_empty() {
        return config.device.id.clone();
    }
    // A host name may hold what a topic level cannot: such characters
    // become '-' (a configured id is validated instead).
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| {
            h.chars()
                .take(64)
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':') {
                        c
                    } else {
                        '-'
                    }
                })
                .collect::<String>()
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "rppg-device".to_string())
}

/// Runs a parsed command line; returns the process exit code.
/// Caps glibc's malloc at two arenas, unless `MALLOC_ARENA_MAX` already
/// says how many. glibc gives threads that allocate at the same time arenas
/// of their own (up to 8 per core), and memory freed in one arena is not
/// reused by another: draining a 1,000,000-event backlog (tokio workers,
/// blocking outbox calls and sled's threads) peaked at 114 MiB with the
/// default and 93 MiB with two arenas, at the same delivery rate
/// (docs/delivery.md, "Backlog memory"). Call it first in `main`, before
/// any thread exists. Elsewhere (musl, other systems) it does nothing.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter, and no other
        // thread exists yet to allocate concurrently.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

pub fn run(cli: Cli) -> Result<i32, AppError> {
    init_logging(Verbosity {
        verbose: cli.verbose,
        quiet: cli.quiet,
    });
    match cli.command {
        Command::Demo(a) => demo(a),
        Command::Scan(a) => scan_command(a, cli.quiet > 0),
        Command::Analyze(a) => {
            let mut config = load_config(a.config.as_deref())?;
            if let Some(m) = a.method {
                config.signal.method = m;
            }
            if let Some(f) = a.fps {
                use crate::capture::y4m::{MAX_FPS, MIN_FPS};
                if !(MIN_FPS..=MAX_FPS).contains(&f) {
                    return Err(AppError::Usage(format!(
                        "--fps {f} must be a frame rate within {MIN_FPS}..{MAX_FPS}"
                    )));
                }
            }
            let result = analyze::analyze_file(&a.rgb_csv, a.fps, &config)?;
            println!("{}", result.to_json());
            Ok(if result.low_snr { 3 } else { 0 })
        }
        Command::Config { action } => match action {
            ConfigAction::Default => {
                print!("{DEFAULT_TOML}");
                Ok(0)
            }
            ConfigAction::Check { file } => {
                let file = config_file(file.as_deref());
                let config = load_exactly(file.as_deref(), crate::config::Secrets::Required)?;
                let name = match &file {
                    Some(f) => f.display().to_string(),
                    None => "no configuration file (built-in defaults and RPPG_* variables)".into(),
                };
                println!(
                    "{name}: valid. Scan {} s, method {}, device id {:?}, {} webhook and {} MQTT destination(s).",
                    config.scan.duration_s,
                    config.signal.method,
                    device_id(&config),
                    config.webhook.len(),
                    config.mqtt.len()
                );
                Ok(0)
            }
            ConfigAction::Path => {
                for p in config_search_path() {
                    let state = if p.is_file() { "exists" } else { "absent" };
                    println!("{} ({state})", p.display());
                }
                match config_file(None) {
                    Some(p) => println!("used: {}", p.display()),
                    None => println!("used: none (built-in defaults)"),
                }
                Ok(0)
            }
        },
        Command::Verify(a) => verify(a),
        Command::Sync { timeout_s, config } => {
            let timeout = check_timeout(timeout_s)?;
            let config = load_config(config.as_deref())?;
            deliver::sync(&config, timeout)
        }
        Command::SendTest {
            count,
            rate,
            timeout_s,
            config,
        } => {
            if count == 0 {
                return Err(AppError::Usage("--count must be at least 1".into()));
            }
            if !(rate == 0.0 || (MIN_RATE..=MAX_RATE).contains(&rate)) {
                return Err(AppError::Usage(format!(
                    "--rate {rate:e} must be 0 (as fast as possible) or events per second \
                     within {MIN_RATE}..{MAX_RATE}"
                )));
            }
            let timeout = check_timeout(timeout_s)?;
            let config = load_config(config.as_deref())?;
            deliver::send_test(&config, count, rate, timeout)
        }
        Command::Outbox { action, config } => {
            let config = load_config_with(config.as_deref(), crate::config::Secrets::Optional)?;
            deliver::outbox_command(&config, action)
        }
        Command::Bench(a) => {
            if a.frames < 30 || a.runs == 0 {
                return Err(AppError::Usage(
                    "bench needs --frames >= 30 and --runs >= 1".into(),
                ));
            }
            bench::run(a.frames, a.runs, &mut std::io::stdout())?;
            Ok(0)
        }
        Command::Synth(a) => synth(a),
        Command::Eval(a) => eval_command(a),
        Command::Run(a) => run_command(a),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "rppg-agent", &mut std::io::stdout());
            Ok(0)
        }
        Command::Schema { which } => {
            let v = match which {
                cli::SchemaKind::Events => crate::events::schema::events_schema(),
                cli::SchemaKind::Openapi => openapi::document(),
            };
            let text = serde_json::to_string_pretty(&v).expect("a JSON value serialises");
            println!("{text}");
            Ok(0)
        }
        Command::Man => {
            let command = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_mangen::Man::new(command.clone())
                .render(&mut out)
                .map_err(AppError::Output)?;
            // One page: each subcommand's own help follows the main page.
            for sub in command.get_subcommands().filter(|c| !c.is_hide_set()) {
                let named = sub
                    .clone()
                    .bin_name(format!("rppg-agent {}", sub.get_name()))
                    .display_name(format!("rppg-agent-{}", sub.get_name()));
                let page = clap_mangen::Man::new(named);
                page.render_name_section(&mut out)
                    .map_err(AppError::Output)?;
                page.render_synopsis_section(&mut out)
                    .map_err(AppError::Output)?;
                page.render_description_section(&mut out)
                    .map_err(AppError::Output)?;
                page.render_options_section(&mut out)
                    .map_err(AppError::Output)?;
                if sub.has_subcommands() {
                    page.render_subcommands_section(&mut out)
                        .map_err(AppError::Output)?;
                }
            }
            std::io::stdout()
                .write_all(&out)
                .map_err(AppError::Output)?;
            Ok(0)
        }
        Command::Cameras => {
            let cameras = crate::capture::camera::list_cameras()?;
            if cameras.is_empty() {
                println!("no cameras found (V4L2: nothing usable under /dev/video*)");
            }
            for c in cameras {
                println!("{c}");
            }
            Ok(0)
        }
    }
}

/// `run`: the kiosk daemon until SIGTERM/SIGINT.
fn run_command(a: cli::RunArgs) -> Result<i32, AppError> {
    let mut config = load_config(a.config.as_deref())?;
    if let Some(input) = a.input {
        input.parse::<SourceSpec>()?;
        config.run.input = input;
    }
    if let Some(listen) = a.listen {
        config.api.listen = listen;
    }
    // Checked again: --listen may have changed the address after loading.
    let addr = config.api.address().map_err(|(key, problem, fix)| {
        AppError::Usage(format!("{key} (or --listen): {problem}; {fix}"))
    })?;
    let rt = deliver::runtime()?;
    rt.block_on(async {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            AppError::Usage(format!(
                "cannot listen on {addr}: {e} (api.listen / --listen)"
            ))
        })?;
        daemon::serve(config, listener, daemon::termination()).await
    })?;
    Ok(0)
}

/// `eval`: the synthetic sweep, the robustness cases, optionally Welltory.
/// `rppg-agent synth`: the synthetic video as a y4m file or stream.
fn synth(a: cli::SynthArgs) -> Result<i32, AppError> {
    use crate::capture::{synthetic::SyntheticSource, y4m::Y4mWriter, FrameSource, SourceSpec};
    let params = match a.spec.parse::<SourceSpec>()? {
        SourceSpec::Synthetic(p) => *p,
        _ => {
            return Err(AppError::Usage(format!(
                "synth writes the synthetic video only: {:?} is not synthetic[:OPTIONS]",
                a.spec
            )))
        }
    };
    // The frame rate as a ratio: whole rates exactly, others to 1/1000 fps.
    let (num, den) = if params.fps.fract() == 0.0 {
        (params.fps as u32, 1)
    } else {
        ((params.fps * 1000.0).round() as u32, 1000)
    };
    let out: Box<dyn Write> = match &a.out {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .map_err(|e| AppError::Usage(format!("cannot create {}: {e}", path.display())))?,
        )),
        None if std::io::stdout().is_terminal() => return Err(AppError::Usage(
            "synth writes binary video: give --out FILE or pipe it (| rppg-agent scan --input -)"
                .into(),
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut source = SyntheticSource::new(params)?;
    let (w, h) = (source.info().width, source.info().height);
    let mut writer = Y4mWriter::new(out, w, h, num, den)?;
    let mut frame = crate::capture::Frame::default();
    while source.next_frame(&mut frame)? {
        match writer.write(&frame) {
            // A reader that stopped early (`| head -c`) is not an error.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(0),
            r => r?,
        }
    }
    match writer.finish() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        r => r.map(|_| 0).map_err(AppError::Output),
    }
}

fn eval_command(a: cli::EvalArgs) -> Result<i32, AppError> {
    let (trials, seconds) = if a.quick {
        (1, 20.0)
    } else {
        (a.trials, a.seconds)
    };
    check_seconds(seconds)?;
    if seconds < 10.0 {
        return Err(AppError::Usage(format!(
            "--seconds {seconds}: a scan needs at least 10 s of signal"
        )));
    }
    let threads = a.threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    if threads == 0 || threads > 256 {
        return Err(AppError::Usage("--threads must be 1..256".into()));
    }
    let photos = match &a.faces {
        Some(dir) => eval::read_photo_set(dir)?,
        None => eval::builtin_photos(),
    };
    let mut specs = Vec::new();
    if matches!(a.sweep, cli::Sweep::All | cli::Sweep::Conditions) {
        specs.extend(eval::sweep_specs(trials, seconds));
    }
    if matches!(a.sweep, cli::Sweep::All | cli::Sweep::Framing) {
        specs.extend(eval::framing_specs(trials, seconds, &photos));
    }
    let started = std::time::Instant::now();
    let tty = std::io::stderr().is_terminal();
    let synthetic = eval::run_sweep(&specs, seconds, a.forced, threads, &|done, total| {
        if tty {
            eprint!("\reval: {done}/{total} synthetic scans");
        } else if done % 10 == 0 || done == total {
            eprintln!("eval: {done}/{total} synthetic scans");
        }
    })?;
    if tty && !specs.is_empty() {
        eprintln!();
    }
    let sweep_s = started.elapsed().as_secs_f64();
    let contact = match &a.welltory {
        Some(dir) => {
            let config = load_exactly(None, crate::config::Secrets::Required)?;
            let real = eval::run_welltory(dir, &config)?;
            let no_pulse = eval::no_pulse_contact(&config, 0, eval::NO_PULSE_TRACES)?;
            Some((real, no_pulse, config.signal.contact_snr_db))
        }
        None => None,
    };
    let (real, no_pulse) = contact
        .as_ref()
        .map_or((&[][..], &[][..]), |(r, n, _)| (&r[..], &n[..]));
    if a.json {
        println!("{}", eval::to_json(&synthetic, real, no_pulse));
        return Ok(0);
    }
    let conditions = synthetic
        .iter()
        .any(|t| t.condition < eval::CONDITIONS.len());
    let framing = synthetic
        .iter()
        .any(|t| t.condition >= eval::CONDITIONS.len());
    if !synthetic.is_empty() {
        println!(
            "# Synthetic sweep: {} scans of {seconds} s ({:.0} s on {threads} threads){}\n",
            synthetic.len(),
            sweep_s,
            if a.forced {
                ", forced: every trust floor off"
            } else {
                ""
            }
        );
        println!(
            "Errors over completed scans; HR in bpm, RR in breaths/min. \"Right\" = within {} bpm.\n",
            eval::HR_RIGHT_BPM
        );
    }
    if conditions {
        println!(
            "## Conditions: {} × {trials} scans (320×240 unless noted)\n",
            eval::CONDITIONS.len()
        );
        print!("{}", eval::sweep_table(&synthetic));
        println!("\n## Confidence\n");
        print!("{}", eval::confidence_tables(&synthetic));
    }
    if framing {
        let config = Config::default_config();
        println!(
            "\n## Framing: {} × {trials} scans over {} portraits (minimum face {} px; lock and first result in seconds of video)\n",
            eval::FRAMINGS.len(),
            photos.len(),
            config.scan.min_face_px
        );
        print!("{}", eval::framing_table(&synthetic));
    }
    if let Some((real, no_pulse, snr_db)) = &contact {
        println!("\n# Welltory contact PPG vs Polar H10 chest strap (analyze --method red)\n");
        print!("{}", eval::welltory_table(real, no_pulse, *snr_db));
    }
    Ok(0)
}

/// `verify`: checks one received request; prints the verdict.
fn verify(a: cli::VerifyArgs) -> Result<i32, AppError> {
    use crate::delivery::signing::{parse_secret, verify};
    use std::io::Read;
    let mut texts = Vec::new();
    for var in &a.secret_env {
        texts.push((
            format!("${var}"),
            std::env::var(var).map_err(|_| {
                AppError::Usage(format!("--secret-env {var}: the variable is not set"))
            })?,
        ));
    }
    for path in &a.secret_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| AppError::Usage(format!("--secret-file {}: {e}", path.display())))?;
        texts.push((path.display().to_string(), text.trim().to_string()));
    }
    for (i, s) in a.secret.iter().enumerate() {
        texts.push((format!("--secret #{}", i + 1), s.clone()));
    }
    if texts.is_empty() {
        return Err(AppError::Usage(
            "give the secret with --secret-env VAR, --secret-file FILE or --secret".into(),
        ));
    }
    let secrets = texts
        .iter()
        .map(|(origin, t)| {
            parse_secret(a.scheme, t)
                .map_err(|e| AppError::Usage(format!("secret from {origin}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut headers = a
        .headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| AppError::Usage(format!("--header {h:?} is not \"name: value\"")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut body = Vec::new();
    match &a.body {
        Some(p) => {
            body = std::fs::read(p)
                .map_err(|e| AppError::Usage(format!("--body {}: {e}", p.display())))?;
        }
        None => {
            std::io::stdin().read_to_end(&mut body)?;
        }
    }
    if a.envelope {
        if a.scheme != crate::delivery::signing::Scheme::Standard {
            return Err(AppError::Usage(
                "--envelope carries Standard Webhooks headers: use --scheme standard".into(),
            ));
        }
        match crate::delivery::signing::open_envelope(&body) {
            Ok((h, b)) => (headers, body) = (h, b),
            Err(e) => {
                println!("invalid: {e}");
                return Ok(3);
            }
        }
    }
    let now = unix_ms() / 1000;
    match verify(a.scheme, &secrets, &headers, &body, now, a.tolerance_s) {
        Ok(i) => {
            println!(
                "valid: {} signature matches the secret from {}",
                a.scheme, texts[i].0
            );
            Ok(0)
        }
        Err(e) => {
            println!("invalid: {e}");
            Ok(3)
        }
    }
}

/// Removes a directory when dropped (the demo's temporary outbox, on every
/// path out of the demo, errors included).
struct RemoveOnDrop(std::path::PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A cancel request that SIGTERM, SIGINT and SIGHUP set (reason SHUTDOWN),
/// so that a stopped scan still stores its terminal event.
fn termination_cancels() -> Result<std::sync::Arc<scan::CancelRequest>, AppError> {
    let cancel = std::sync::Arc::new(scan::CancelRequest::default());
    #[cfg(unix)]
    cancel
        .on_termination_signals()
        .map_err(|e| AppError::Usage(format!("cannot handle termination signals: {e}")))?;
    Ok(cancel)
}

/// `send-test --rate` bounds: one event in 1000 s up to 100,000 per second.
const MIN_RATE: f64 = 0.001;
const MAX_RATE: f64 = 100_000.0;
/// The longest `--timeout`: a day.
const MAX_TIMEOUT_S: f64 = 86_400.0;

/// `--timeout` as a duration: 0..=a day.
fn check_timeout(timeout_s: f64) -> Result<std::time::Duration, AppError> {
    if (0.0..=MAX_TIMEOUT_S).contains(&timeout_s) {
        Ok(std::time::Duration::from_secs_f64(timeout_s))
    } else {
        Err(AppError::Usage(format!(
            "--timeout {timeout_s:e} must be a number of seconds within 0..{MAX_TIMEOUT_S}"
        )))
    }
}

fn check_seconds(seconds: f64) -> Result<(), AppError> {
    if seconds.is_finite() && (5.0..=3600.0).contains(&seconds) {
        Ok(())
    } else {
        Err(AppError::Usage(format!(
            "--seconds {seconds} must be between 5 and 3600"
        )))
    }
}

/// Applies `--seconds` to the config; a synthetic source without an explicit
/// length lasts as long as the scan (plus a second).
pub fn scan_length(
    config: &mut Config,
    spec: &mut SourceSpec,
    input: &str,
    seconds: Option<f64>,
) -> Result<(), AppError> {
    if let Some(s) = seconds {
        check_seconds(s)?;
        config.scan.duration_s = s;
        config.scan.min_duration_s = config.scan.min_duration_s.min(s);
    }
    if let SourceSpec::Synthetic(p) = spec {
        if !input.contains("seconds=") {
            // Long enough for a scan that measures on (scan.max_duration_s).
            p.seconds = config.scan.duration_s.max(config.scan.max_duration_s) + 1.0;
        }
    }
    Ok(())
}

/// A one-line live status on stderr: rewritten in place on a terminal,
/// printed every 5 s of video otherwise.
struct ProgressLine {
    tty: bool,
    shown_t: f64,
    width: usize,
}

impl ProgressLine {
    fn new() -> Self {
        ProgressLine {
            tty: std::io::stderr().is_terminal(),
            shown_t: -1.0,
            width: 0,
        }
    }

    fn update(&mut self, p: &Progress) {
        let step = if self.tty { 0.2 } else { 5.0 };
        if p.frame_t_s - self.shown_t < step {
            return;
        }
        self.shown_t = p.frame_t_s;
        let hr = p.hr_bpm.map_or("--".to_string(), |h| format!("{h:.1}"));
        let snr = p.snr_db.map_or("--".to_string(), |s| format!("{s:+.1}"));
        let face = if p.face { "face locked" } else { "no face    " };
        let line = format!("  {:5.1} s  {face}  HR {hr} bpm  SNR {snr} dB", p.frame_t_s);
        if self.tty {
            eprint!("\r{line:<w$}", w = self.width);
            self.width = line.len();
        } else {
            eprintln!("{line}");
        }
    }

    fn clear(&mut self) {
        if self.tty && self.width > 0 {
            eprint!("\r{:w$}\r", "", w = self.width);
            self.width = 0;
        }
    }
}

/// GENERAL_ERROR `OUTBOX_FULL`, for a scan refused because its events could
/// not be stored; it goes to the event streams that need no storage
/// (standard output, `--events`, the daemon's SSE), never to the outbox.
pub fn outbox_full_event(config: &Config, why: &crate::outbox::OutboxError) -> StampedEvent {
    let session = format!("ses_{}", crate::events::ulid(unix_ms(), random_u128()));
    crate::events::Stamper::new(device_id(config), session).stamp(
        &crate::events::Event::general_error("OUTBOX_FULL", &why.to_string()),
        unix_ms(),
        random_u128(),
    )
}

/// Room a scan's lifecycle events need in the outbox before it starts:
/// fewer than ten events of under 1 KiB each, with margin. Its
/// intermediate results need none: the cap sheds older ones, or them.
pub const SCAN_LIFECYCLE_BYTES: u64 = 16 * 1024;

fn scan_command(a: cli::ScanArgs, quiet: bool) -> Result<i32, AppError> {
    for (flag, value) in [("--subject", &a.subject), ("--external-id", &a.external_id)] {
        if let Some(v) = value {
            crate::events::check_correlation(flag, v).map_err(AppError::Usage)?;
        }
    }
    let mut config = load_config(a.config.as_deref())?;
    if let Some(path) = &a.report {
        // Fail before the scan, not after it.
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if dir.is_some_and(|d| !d.is_dir()) {
            return Err(AppError::Usage(format!(
                "--report {}: the directory does not exist",
                path.display()
            )));
        }
    }
    let mut spec: SourceSpec = a.input.parse()?;
    scan_length(&mut config, &mut spec, &a.input, a.seconds)?;
    let mut file_sink = match &a.events {
        Some(p) => Some(
            sinks::JsonlFile::open(p).map_err(|source| AppError::EventsFile {
                path: p.display().to_string(),
                source,
            })?,
        ),
        None => None,
    };
    // With destinations, events go through the outbox and lanes run beside the scan.
    let delivering = config.has_destinations();
    let rt = if delivering {
        Some(deliver::runtime()?)
    } else {
        None
    };
    let _guard = rt.as_ref().map(|r| r.enter());
    let (outbox, delivery) = if delivering {
        if !quiet {
            deliver::warn_insecure(&config);
        }
        let outbox = deliver::open_outbox(&config)?;
        if !outbox.has_room_for(SCAN_LIFECYCLE_BYTES) {
            let full = crate::outbox::OutboxError::Full {
                used: outbox.stored_bytes(),
                max: config.outbox.max_bytes,
                kind: "a new scan",
            };
            // Refused before it starts; the event stream says why (it cannot be stored).
            let event = outbox_full_event(&config, &full);
            if !a.json && !a.fhir {
                sinks::StdoutJsonl.accept(&event)?;
            }
            if let Some(f) = file_sink.as_mut() {
                f.accept(&event)?;
            }
            return Err(AppError::Outbox(full));
        }
        let delivery = deliver::start(&config, outbox.clone(), false)?;
        (Some(outbox), Some(delivery))
    } else {
        (None, None)
    };
    let mut outbox_sink = match (&outbox, &delivery) {
        (Some(o), Some(d)) => Some(sinks::OutboxSink {
            outbox: o.clone(),
            lanes: d.lanes().to_vec(),
        }),
        _ => None,
    };
    let mut stdout_sink = sinks::StdoutJsonl;
    let mut kept = sinks::Collect::default();
    let fhir_subject = config.fhir.subject.clone();
    let mut sinks: Vec<&mut dyn EventSink> = Vec::new();
    if let Some(o) = outbox_sink.as_mut() {
        sinks.push(o);
    }
    if a.fhir {
        sinks.push(&mut kept);
    } else if !a.json {
        sinks.push(&mut stdout_sink);
    }
    if let Some(f) = file_sink.as_mut() {
        sinks.push(f);
    }
    let mut line = ProgressLine::new();
    let drain = std::time::Duration::from_secs_f64(config.delivery.drain_timeout_s);
    let opts = ScanOptions {
        source: spec,
        device_id: device_id(&config),
        config,
        realtime: false,
        subject: a.subject.clone(),
        scan_id: None,
        external_id: a.external_id.clone(),
        cancel: Some(termination_cancels()?),
    };
    let report = scan::run_scan(opts, &mut sinks, &mut |p, e| {
        if e.is_some() {
            line.clear();
        } else if !quiet {
            line.update(p);
        }
    });
    line.clear();
    if let (Some(rt), Some(outbox), Some(delivery)) = (rt.as_ref(), outbox, delivery) {
        let lanes = delivery.lanes().to_vec();
        let stats = rt.block_on(async {
            let stats = deliver::drain(&outbox, &lanes, drain).await;
            delivery.stop().await;
            stats
        })?;
        outbox.flush()?;
        if !quiet {
            for l in deliver::summary(&stats, &lanes) {
                eprintln!("delivery {l}");
            }
            if stats.iter().any(|(_, s)| s.pending > 0) {
                eprintln!("undelivered events stay in the outbox: run `rppg-agent sync` when the network is back");
            }
        }
    }
    let report = report?;
    if let Some(path) = &a.report {
        let svg = report::render_svg(&report).map_err(|e| AppError::Usage(e.to_string()))?;
        std::fs::write(path, svg)
            .map_err(|e| AppError::Usage(format!("--report {}: {e}", path.display())))?;
        if !quiet {
            eprintln!("report written to {}", path.display());
        }
    }
    if a.fhir {
        let completed = kept
            .0
            .iter()
            .find(|e| e.kind == crate::events::EventKind::ScanCompleted);
        match completed {
            Some(e) => {
                let bundle = crate::events::fhir::bundle_bytes(&e.bytes, &fhir_subject)
                    .map_err(|e| AppError::Usage(format!("FHIR: {e}")))?;
                println!("{}", String::from_utf8_lossy(&bundle));
            }
            None => eprintln!(
                "no FHIR bundle: {}",
                report
                    .cancelled
                    .map_or("the scan did not complete".to_string(), |r| format!(
                        "the scan was cancelled ({})",
                        r.code()
                    ))
            ),
        }
    } else if a.json {
        println!("{}", report.to_json());
    } else if !quiet {
        eprintln!("{}", summary_line(&report));
    }
    Ok(if report.cancelled.is_some() { 3 } else { 0 })
}

fn summary_line(r: &ScanReport) -> String {
    match r.cancelled {
        Some(reason) => format!(
            "cancelled: {} after {:.1} s ({} frames)",
            reason.code(),
            r.result.duration_s,
            r.result.frames
        ),
        None => format!(
            "completed: HR {} bpm (confidence {:.2}), RR {} /min (confidence {:.2}), RMSSD {} ms, SNR {} dB, {:.1} s, {} frames",
            fmt_opt(r.result.hr_bpm, 1),
            r.result.confidence,
            fmt_opt(r.result.rr_bpm, 1),
            r.result.rr_confidence,
            fmt_opt(r.result.rmssd_ms, 0),
            fmt_opt(r.result.snr_db, 1),
            r.result.duration_s,
            r.result.frames
        ),
    }
}

fn fmt_opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("--".to_string(), |x| format!("{x:.digits$}"))
}

/// Prints one event for a person: name, severity, sequence, payload.
fn print_event(out: &mut impl Write, e: &StampedEvent) -> std::io::Result<()> {
    let env = e.envelope();
    writeln!(
        out,
        "  #{:<3} {:<24} {:<5} {}",
        e.sequence,
        e.kind.name(),
        env["severity"].as_str().unwrap_or(""),
        env["payload"]
    )
}

fn demo(a: cli::DemoArgs) -> Result<i32, AppError> {
    check_seconds(a.seconds)?;
    let mut config = load_exactly(a.config.as_deref(), crate::config::Secrets::Required)?;
    let input = format!("synthetic:hr={},rr={},seed={}", a.hr, a.rr, a.seed);
    let params = SyntheticParams::parse(&input, &input[10..])?;
    let mut spec = SourceSpec::Synthetic(Box::new(params));
    scan_length(&mut config, &mut spec, &input, Some(a.seconds))?;
    let mut out = std::io::stdout();
    writeln!(
        out,
        "rppg-agent demo: a {:.0} s scan of the built-in synthetic face (true HR {} bpm, RR {} /min, seed {}){}",
        a.seconds,
        a.hr,
        a.rr,
        a.seed,
        if a.fast { "" } else { " in real time; --fast to skip waiting" }
    )?;
    // The whole path on loopback: outbox in a temporary directory, a signed
    // webhook to an in-process receiver that verifies every signature.
    let rt = deliver::runtime()?;
    let _guard = rt.enter();
    let mut key = [0u8; 24];
    getrandom::fill(&mut key)
        .map_err(|e| AppError::Usage(format!("no OS randomness for the demo secret: {e}")))?;
    let secret = crate::delivery::signing::Secret::new(key.to_vec());
    let scheme = crate::delivery::signing::Scheme::Standard;
    let receiver = rt.block_on(receiver::Receiver::start(
        Some((scheme, vec![secret.clone()])),
        receiver::Script::default(),
    ))?;
    let outbox_dir = std::env::temp_dir().join(format!(
        "rppg-agent-demo-{}-{}",
        std::process::id(),
        unix_ms()
    ));
    // Removed however the demo ends (declared before the outbox: dropped after it).
    let _cleanup = RemoveOnDrop(outbox_dir.clone());
    config.outbox.path = outbox_dir.display().to_string();
    config.webhook = vec![crate::delivery::webhook::WebhookDestination {
        name: "demo-receiver".into(),
        url: receiver.url().parse().expect("a loopback URL parses"),
        signing: vec![(scheme, vec![secret])],
        events: Vec::new(),
        timeout: std::time::Duration::from_secs(5),
        connect_timeout: std::time::Duration::from_secs(3),
        policy: crate::delivery::policy::RetryPolicy::default(),
        allow_insecure: true,
        max_in_flight: 4,
        format: crate::delivery::webhook::BodyFormat::Envelope,
    }];
    let outbox = deliver::open_outbox(&config)?;
    let delivery = deliver::start(&config, outbox.clone(), false)?;
    let lanes = delivery.lanes().to_vec();
    writeln!(
        out,
        "Events go to a durable outbox ({}) and, signed (Standard Webhooks), to a receiver at {}.",
        outbox_dir.display(),
        receiver.url()
    )?;
    writeln!(out, "Events as the kiosk backend receives them:")?;
    let mut collected = sinks::Collect::default();
    let mut outbox_sink = sinks::OutboxSink {
        outbox: outbox.clone(),
        lanes: lanes.clone(),
    };
    let mut line = ProgressLine::new();
    let opts = ScanOptions {
        source: spec,
        device_id: device_id(&config),
        config,
        realtime: !a.fast,
        subject: None,
        scan_id: None,
        external_id: None,
        cancel: Some(termination_cancels()?),
    };
    let mut print_error = None;
    let report = scan::run_scan(
        opts,
        &mut [&mut outbox_sink, &mut collected],
        &mut |p, e| match e {
            Some(e) => {
                line.clear();
                if let Err(err) = print_event(&mut std::io::stdout(), e) {
                    print_error.get_or_insert(err);
                }
            }
            None => line.update(p),
        },
    );
    line.clear();
    let stats = rt.block_on(async {
        let stats = deliver::drain(&outbox, &lanes, std::time::Duration::from_secs(10)).await;
        delivery.stop().await;
        stats
    })?;
    drop(outbox);
    if let Some(err) = print_error {
        return Err(err.into());
    }
    let report = report?;
    let got = receiver.received();
    let verified = got.iter().filter(|r| r.verified.is_ok()).count();
    writeln!(out)?;
    writeln!(
        out,
        "The receiver got {} of {} events; signatures verified: {} of {}.",
        got.len(),
        collected.0.len(),
        verified,
        got.len()
    )?;
    writeln!(
        out,
        "  {:<4} {:<24} {:<31} {:<9} latency",
        "seq", "event", "id", "verified"
    )?;
    for r in &got {
        let seq = collected
            .0
            .iter()
            .find(|e| Some(&e.id) == r.webhook_id.as_ref())
            .map_or("?".to_string(), |e| e.sequence.to_string());
        writeln!(
            out,
            "  {:<4} {:<24} {:<31} {:<9} {} ms",
            seq,
            r.event,
            r.webhook_id.as_deref().unwrap_or("-"),
            match &r.verified {
                Ok(()) => "yes".to_string(),
                Err(e) => format!("NO ({e})"),
            },
            r.latency_ms
        )?;
    }
    for l in deliver::summary(&stats, &lanes) {
        writeln!(out, "  outbox lane {l}")?;
    }
    let truth = report.source.truth;
    let r = &report.result;
    writeln!(out)?;
    match report.cancelled {
        Some(reason) => writeln!(out, "Result: cancelled ({})", reason.code())?,
        None => writeln!(out, "Result: completed")?,
    }
    let t = |f: fn(&crate::capture::Truth) -> f64, d: usize| {
        truth.map_or("--".into(), |t| format!("{:.d$}", f(&t)))
    };
    writeln!(out, "                     measured     true")?;
    writeln!(
        out,
        "  heart rate        {:>7} bpm  {:>6}    confidence {:.2}, SNR {} dB",
        fmt_opt(r.hr_bpm, 1),
        t(|t| t.hr_bpm, 1),
        r.confidence,
        fmt_opt(r.snr_db, 1)
    )?;
    writeln!(
        out,
        "  respiratory rate  {:>7} /min {:>6}    confidence {:.2}",
        fmt_opt(r.rr_bpm, 1),
        t(|t| t.rr_bpm, 1),
        r.rr_confidence
    )?;
    writeln!(
        out,
        "  HRV (RMSSD)       {:>7} ms   {:>6}",
        fmt_opt(r.rmssd_ms, 0),
        t(|t| t.rmssd_ms, 0)
    )?;
    let fps = r.frames as f64 / (report.processing_time_ms.max(1) as f64 / 1000.0);
    writeln!(
        out,
        "  {:.1} s of signal, {} frames, {} events, processing {} ms ({:.0} frames/s, {:.0}x real time)",
        r.duration_s,
        r.frames,
        report.events,
        report.processing_time_ms,
        fps,
        fps / report.source.fps
    )?;
    Ok(if report.cancelled.is_some() { 3 } else { 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    fn allows(v: Verbosity, env: Option<&str>, level: Level, target: &str) -> bool {
        log_filter(v, env).0.would_enable(target, &level)
    }

    #[test]
    fn flags_override_the_environment_and_bad_directives_fall_back_to_info_with_a_warning() {
        let none = Verbosity::default();
        assert!(allows(none, None, Level::INFO, "rppg_agent"));
        assert!(!allows(none, None, Level::DEBUG, "rppg_agent"));
        assert!(allows(
            none,
            Some("warn,rppg_agent=debug"),
            Level::DEBUG,
            "rppg_agent"
        ));
        assert!(!allows(
            none,
            Some("warn,rppg_agent=debug"),
            Level::INFO,
            "hyper"
        ));
        let v = Verbosity {
            verbose: 1,
            quiet: 0,
        };
        assert!(allows(v, Some("error"), Level::DEBUG, "rppg_agent"));
        let q = Verbosity {
            verbose: 0,
            quiet: 1,
        };
        assert!(!allows(q, Some("trace"), Level::INFO, "rppg_agent"));
        assert!(allows(q, None, Level::WARN, "rppg_agent"));
        let qqq = Verbosity {
            verbose: 0,
            quiet: 3,
        };
        assert!(!allows(qqq, None, Level::ERROR, "rppg_agent"));
        let (f, warning) = log_filter(none, Some("a=b=c"));
        assert!(f.would_enable("rppg_agent", &Level::INFO));
        assert!(warning.unwrap().contains("RPPG_LOG=debug"));
    }
}
