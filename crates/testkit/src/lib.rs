//! Test backbone.
//!
//! [`postgres`] gives every test its own empty database: on the server named
//! by `DATABASE_URL` when it is set (CI, the Nix check), else on a throwaway
//! cluster this process starts from the Postgres binaries on `PATH`,
//! `pg_config --bindir` or `/usr/lib/postgresql/*/bin`. As root (CI runs as
//! root, Postgres refuses to) the cluster runs as the `postgres` user.
//!
//! The cluster dies with the test process (parent-death signal), so no
//! `postgres` outlives a test run even when a test panics or is killed.
#![warn(missing_docs)]
#![allow(unsafe_code)] // pre_exec: setuid + prctl between fork and exec.

mod pg;

pub use pg::{Cluster, PgServer, TestDb, postgres};

pub mod service;
pub mod tenant;
