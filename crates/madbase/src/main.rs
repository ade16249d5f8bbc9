//! `madbase`: one binary, one subcommand per service.
//!
//! Everything happens in the service crates and `madbase-platform`; this file
//! only parses the command line, reads the configuration (one clear line and
//! exit code 2 when it is wrong) and runs the chosen services.

mod alloc;
mod dev;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc: the proxy's per-request work is allocation-heavy (headers,
/// labels, log lines); measured ~10% less CPU per request than glibc malloc.
/// Called through [`alloc::Mimalloc`], which takes mimalloc's fast path.
#[global_allocator]
static GLOBAL: alloc::Mimalloc = alloc::Mimalloc;

use madbase_platform::Service;

#[derive(Debug, Parser)]
#[command(
    name = "madbase",
    version,
    about = "madbase: multi-tenant Postgres backend platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The public edge (:8000, admin :9000).
    Proxy,
    /// The control plane (:8001, admin :9001).
    Control,
    /// The data API (:8002, admin :9002).
    Worker,
    /// Tenant functions (:8003, admin :9003).
    Functions,
    /// Several services in one process, for single-machine deployments.
    Serve {
        /// Proxy, control, worker and functions, each on its own listeners
        /// (MADBASE_<SERVICE>_LISTEN, MADBASE_<SERVICE>_ADMIN_LISTEN); the
        /// proxy hands requests to the worker and functions in-process.
        #[arg(long, required = true)]
        all: bool,
    },
    /// Runs tenant JavaScript for the functions service: frames on
    /// stdin/stdout, log on stderr (started by `madbase functions`).
    FunctionsWorker,
    /// The whole platform in one process, with its own Postgres unless
    /// DATABASE_URL is set.
    Dev {
        /// Where Postgres data, secrets and the demo keys live.
        #[arg(long, default_value = ".madbase")]
        data_dir: std::path::PathBuf,
    },
    /// Prints a platform token signed with JWT_SECRET (for the admin API).
    Token {
        /// `admin` (control's admin API) or `internal` (service to service).
        #[arg(value_parser = ["admin", "internal"])]
        role: String,
        /// Lifetime, e.g. 1h, 30m, 7d.
        #[arg(long, default_value = "1h", value_parser = run::parse_ttl)]
        ttl: std::time::Duration,
    },
    /// Applies the control database migrations and exits.
    Migrate,
    /// Exits 0 when the service answers 200 on its admin /health, 1 otherwise
    /// (for container health checks: no shell or curl needed).
    Healthcheck {
        /// URL to probe; default: the admin /health of the service named by
        /// `--service` / `MADBASE_SERVICE`, at the port of `MADBASE_ADMIN_LISTEN`.
        #[arg(long)]
        url: Option<String>,
        /// Which service's default admin port to probe.
        #[arg(long, env = madbase_platform::env::MADBASE_SERVICE)]
        service: Option<Service>,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 3.0)]
        timeout: f64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Proxy => run::services(&[Service::Proxy]),
        Command::Control => run::services(&[Service::Control]),
        Command::Worker => run::services(&[Service::Worker]),
        Command::Functions => run::services(&[Service::Functions]),
        Command::Serve { all: _ } => run::all(),
        Command::FunctionsWorker => match madbase_js::worker::run_stdio() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("madbase functions-worker: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Dev { data_dir } => dev::main(data_dir),
        Command::Token { role, ttl } => run::token(&role, ttl),
        Command::Migrate => run::migrate(),
        Command::Healthcheck {
            url,
            service,
            timeout,
        } => run::healthcheck(url, service, timeout),
    }
}
