//! Mutation fuzzing on stable Rust (issue 24): `cargo fuzz` needs a nightly
//! toolchain (libFuzzer, `-Z sanitizer`), which this project does not use,
//! so this crate is the closest stable thing: fuzz targets over the
//! parsers that read untrusted bytes ([`targets`]), committed seed corpora
//! (`crates/fuzz/corpus/<target>/`), and a runner ([`runner`]) that mutates
//! them with a seeded PRNG ([`rng`], [`mutate`]), catches panics, reports
//! hangs, and keeps the inputs that reach an outcome not seen before (no
//! coverage instrumentation: new outcomes stand in for new coverage).
//!
//! `madbase-fuzz [--seconds N] [--seed S] [--json] [TARGET…]` runs it;
//! `cargo xtask soak` runs every target for 60 s; the tests run the seeds
//! and short runs in `cargo xtask ci`.
#![warn(missing_docs)]

pub mod mutate;
pub mod rng;
pub mod runner;
pub mod targets;

pub use runner::{Config, Failure, FailureKind, Outcomes, Report, Target, run};
