//! The integration tests: one binary, real inputs, the real executable.

mod accuracy;
mod alloc;
mod badinput;
mod cli;
mod daemon;
mod delivery;
mod endings;
mod examples;
mod faults;
mod framing;
mod fuzz;
mod lifecycle;
mod mqtt;
mod resources;
mod security;
mod soak;
mod trust;
mod util;
