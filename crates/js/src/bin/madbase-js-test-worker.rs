//! Test helper only: the worker loop as its own small program, so the tests
//! of this crate can run it as a real process (the shipped entry point is
//! `madbase functions-worker`, which calls the same function).

use std::process::ExitCode;

fn main() -> ExitCode {
    match madbase_js::worker::run_stdio() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("madbase-js-test-worker: {e}");
            ExitCode::FAILURE
        }
    }
}
