//! `rppg-agent`: parse the command line, run it, print the error once.

use clap::Parser;
use rppg_agent::app::{self, cli::Cli};
use std::error::Error;

fn main() {
    app::limit_malloc_arenas();
    let cli = Cli::parse();
    let code = match app::run(cli) {
        Ok(code) => code,
        Err(e) => {
            // The chain, without repeating causes a message already quotes.
            let mut message = e.to_string();
            let mut cause = e.source();
            while let Some(c) = cause {
                let text = c.to_string();
                if !message.contains(&text) {
                    message = format!("{message}: {text}");
                }
                cause = c.source();
            }
            eprintln!("error: {message}");
            e.exit_code()
        }
    };
    std::process::exit(code);
}
