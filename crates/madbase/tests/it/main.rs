//! Integration tests of the `madbase` binary: every test runs the real
//! binary as a child process and talks HTTP to it on loopback.

mod dev;
mod disk;
mod faults;
mod functions;
mod helpers;
mod hostile;

mod images;
mod lifecycle;
mod outages;
mod serve_all;
mod slow;
mod soak;
mod stack;
mod telemetry;
