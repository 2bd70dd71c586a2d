//! `cargo bench`: the same workloads as `rppg-agent bench`, medians printed
//! as a Markdown table. Set RPPG_BENCH_FRAMES / RPPG_BENCH_RUNS to change size.

fn main() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (frames, runs) = (env("RPPG_BENCH_FRAMES", 300), env("RPPG_BENCH_RUNS", 5));
    if let Err(e) = rppg_agent::app::bench::run(frames, runs, &mut std::io::stdout()) {
        eprintln!("bench failed: {e}");
        std::process::exit(1);
    }
}
