//! Integration tests of the `madbase` binary: every test runs the real
//! binary as a child process and talks HTTP to it on loopback.

mod dev;
mod functions;
mod helpers;

mod images;
mod lifecycle;
mod telemetry;
