//! `cargo xtask e2e`: the whole stack of `compose.yaml` on podman, driven
//! from the outside like a user would.
//!
//! 1. A project-local podman ([`Podman::setup`]); the four service images
//!    from the release binary ([`images::build`]) and stand-ins for the
//!    third-party images assembled from the software installed on this
//!    machine ([`images::host_image`]: Debian's Postgres 15,
//!    VictoriaMetrics, vmagent, vmalert and Alertmanager, each with GNU wget
//!    for the health checks compose.yaml gives them), all `podman load`ed.
//!    The madbase archives are loaded as a user would (`podman load -i`):
//!    podman's digest for each must be `nix/images.lock`'s, and podman must
//!    find the `image@digest` references `compose.yaml` runs. Then the
//!    registry round trip (`cargo xtask push`; the pushed digests must be
//!    the lock's `registry_digest`), and the stack runs from the registry.
//! 2. `podman-compose -p madbase-e2e-<pid> -f compose.yaml -f
//!    deploy/compose.e2e.yaml up -d`, with generated secrets in an env file
//!    and the proxy and control on 127.0.0.1:8000/8001 (free ports instead
//!    when those are taken). The override swaps the third-party images and
//!    moves Grafana, Loki, Alloy and Tempo (not installable here) to a profile
//!    nobody enables; the test prints them.
//! 3. Health: `podman healthcheck run` for every container until all pass
//!    (podman 4.3 runs no health-check timers and ignores `service_healthy`).
//! 4. A tenant through control's admin API, a table with an RLS policy
//!    through the tenant SQL endpoint, and CRUD through the proxy with the
//!    anon and service_role keys (RLS enforced, anon insert refused); the
//!    `X-Request-Id` sent comes back and is in the worker's JSON logs. A
//!    function secret set through control's admin API reaches a deployed
//!    function (`Deno.env.get`, invoked through the proxy), and no
//!    credential (the stack's secrets, the tenant's keys and own secrets,
//!    the admin token, that function secret) is in any container's logs.
//! 5. The images: `Healthcheck` and a non-root `User` in `podman image
//!    inspect`, no process of any container runs as root, no `/bin/sh`.
//! 6. `podman-compose stop` under load ([`StopLoad`]: clients read through
//!    the proxy until the stop returns; every answer is complete, a 200 with
//!    the rows or a JSON 502/503 with a request id (or the worker's 504
//!    PGRST003, its pool timing out once Postgres has stopped), and
//!    connections fail only
//!    after the stop began), each container exiting 0; `down` (volumes kept)
//!    and `up` again: the tenant and its rows are still there.
//! 7. Tear-down, also after a failed step (and through `Drop` after a
//!    panic): containers, pod, volumes, networks, the images loaded, the env
//!    file; then a check that nothing is left. A run killed by a signal
//!    cannot clean up: the next run removes projects whose process is gone.
//!
//! Every step prints `PASS <step>` or `FAIL <step>: <why>`; the task exits
//! non-zero when any step failed. Every external command and HTTP request is
//! bounded, and the part from `up` to tear-down has a budget of
//! [`STACK_BUDGET`].
//!
//! Needs podman, runc, netavark, aardvark-dns, postgresql-15,
//! victoria-metrics, prometheus-alertmanager and wget (apt) and
//! podman-compose 1.6.0 (pip), all installed by `bash .ci/run`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use serde_json::{Value, json};

use crate::image_lock;
use crate::image_spec::ImageSpec;
use crate::images::{self, HostImage, User};
use crate::podman::Podman;
use crate::procs::{GRACE, Guard};
use crate::push::{self, Credentials, PushArgs};
use crate::registry::TestRegistry;
use crate::util::{free_port, random_bytes, random_hex, root, step};

/// The override file, relative to the workspace root.
pub const OVERRIDE_FILE: &str = "deploy/compose.e2e.yaml";

/// Services of compose.yaml the override leaves out, and why.
const LEFT_OUT: [(&str, &str); 4] = [
    (
        "grafana",
        "Grafana is not packaged for Debian 12 and no registry is reachable",
    ),
    (
        "loki",
        "Grafana Loki is not packaged for Debian 12 (its `loki` is an unrelated genetics tool) and no registry is reachable",
    ),
    (
        "alloy",
        "Grafana Alloy is not packaged for Debian 12 and no registry is reachable",
    ),
    (
        "tempo",
        "Grafana Tempo is not packaged for Debian 12 and no registry is reachable",
    ),
];

/// Every run's compose project is this plus its process id.
const PROJECT_PREFIX: &str = "madbase-e2e-";

/// The budget from `podman-compose up` to the end of the tear-down.
const STACK_BUDGET: Duration = Duration::from_secs(540);
/// How long the containers may take to pass their health checks.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(180);
/// One HTTP request.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);

/// The tenant the test creates.
const TENANT: &str = "e2e-notes";

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const PG_LIB: &str = "/usr/lib/postgresql/15/lib";
const PG_SHARE: &str = "/usr/share/postgresql/15";
const WGET: &str = "/usr/bin/wget";
const AM_SHARE: &str = "/usr/share/prometheus/alertmanager";

/// What the official Postgres image's entrypoint does with `POSTGRES_USER`,
/// `POSTGRES_PASSWORD` and `POSTGRES_DB`, in shell builtins only (the image
/// has `/bin/sh` and the Postgres binaries, no coreutils): initdb with a
/// password file on an empty data directory, password logins from the
/// compose network, the database, then the server.
const PG_ENTRYPOINT: &str = r#"set -eu
D="${PGDATA:-/var/lib/postgresql/data}"
if [ ! -s "$D/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}"
  U="${POSTGRES_USER:-postgres}"
  DB="${POSTGRES_DB:-$U}"
  umask 077
  printf '%s\n' "$POSTGRES_PASSWORD" > /tmp/pwfile
  initdb -D "$D" -U "$U" --pwfile=/tmp/pwfile --auth-local=trust --auth-host=scram-sha-256 --no-locale -E UTF8 >/dev/null
  : > /tmp/pwfile
  printf 'host all all all scram-sha-256\n' >> "$D/pg_hba.conf"
  if [ "$DB" != postgres ]; then
    printf 'CREATE DATABASE "%s"\n' "$DB" | postgres --single -D "$D" postgres >/dev/null
  fi
  echo "postgres: initialised $D (superuser $U, database $DB)"
fi
exec postgres -D "$D" -k /tmp -c listen_addresses='*'
"#;

/// A stand-in image for a third-party service of compose.yaml.
struct StandIn {
    /// The compose service.
    service: &'static str,
    /// Image name and tag, as in [`OVERRIDE_FILE`].
    name: &'static str,
    tag: &'static str,
    /// The Debian package the software comes from.
    package: &'static str,
}

const STAND_INS: [StandIn; 5] = [
    StandIn {
        service: "postgres",
        name: "localhost/madbase-e2e/postgres",
        tag: "15-host",
        package: "postgresql-15",
    },
    StandIn {
        service: "victoria-metrics",
        name: "localhost/madbase-e2e/victoria-metrics",
        tag: "host",
        package: "victoria-metrics",
    },
    StandIn {
        service: "vmagent",
        name: "localhost/madbase-e2e/vmagent",
        tag: "host",
        package: "victoria-metrics",
    },
    StandIn {
        service: "vmalert",
        name: "localhost/madbase-e2e/vmalert",
        tag: "host",
        package: "victoria-metrics",
    },
    StandIn {
        service: "alertmanager",
        name: "localhost/madbase-e2e/alertmanager",
        tag: "host",
        package: "prometheus-alertmanager",
    },
];

impl StandIn {
    fn reference(&self) -> String {
        format!("{}:{}", self.name, self.tag)
    }
}

/// `cargo xtask e2e`.
pub fn run() -> Result<()> {
    let started = Instant::now();
    let mut steps = Steps::default();
    let mut stack = None;
    let outcome = run_steps(&mut steps, &mut stack);
    if let Err(err) = &outcome {
        steps.fail("e2e", err);
    }
    // After a failure too; `Drop` covers a panic.
    if let Some(stack) = stack.as_mut().filter(|s| !s.torn_down) {
        steps.run("tear-down removes everything the test created", || {
            stack.teardown()
        });
    }
    steps.summary(started.elapsed());
    ensure!(
        steps.failed().is_empty(),
        "e2e failed: {}",
        steps.failed().join(", ")
    );
    Ok(())
}

/// The steps; an `Err` is a failure that stops the run (set-up, start-up),
/// any other failure is recorded in `steps` and the run goes on where that
/// makes sense.
fn run_steps(steps: &mut Steps, stack: &mut Option<Stack>) -> Result<()> {
    let spec = ImageSpec::load()?;
    let Some(()) = steps.run("preflight: tools and host software", preflight) else {
        bail!("preflight failed");
    };
    let podman = Podman::setup()?;
    steps.run("remove what interrupted runs left behind", || {
        reap_stale(&podman)
    });
    let project = format!("{PROJECT_PREFIX}{}", std::process::id());
    let stack = stack.insert(Stack::new(podman.clone(), project)?);

    let Some(madbase_images) = steps.run("build the madbase images", images::build) else {
        bail!("cannot build the images");
    };
    let Some(stand_ins) = steps.run("assemble stand-in images from host software", || {
        build_stand_ins()
    }) else {
        bail!("cannot assemble the stand-in images");
    };
    let Some(()) = steps.run("podman load (the stand-ins)", || stack.load(&stand_ins)) else {
        bail!("cannot load the images");
    };
    steps.run(
        "podman load (the madbase images): podman's digests are nix/images.lock's, \
         compose.yaml's image@digest lines resolve",
        || load_locked(stack, &madbase_images),
    );

    // The production path: the madbase images go through a real registry and
    // the stack runs them by digest.
    let Some(registry) = steps.run(
        "registry: docker-registry on 127.0.0.1 (htpasswd, TLS from a throwaway CA)",
        TestRegistry::start,
    ) else {
        bail!("no registry");
    };
    let Some(madbase_images) = registry_round_trip(steps, stack, &registry, madbase_images) else {
        bail!("the registry round trip failed");
    };

    let ports = steps
        .run("host ports for the proxy and control", pick_ports)
        .context("no host ports")?;
    let binary = root()
        .join("target/images")
        .join(format!("{}.stripped", spec.binary));
    let secrets = Secrets::generate()?;
    stack.write_env(&secrets, ports)?;

    for (service, why) in LEFT_OUT {
        eprintln!("left out: {service}: {why}");
    }
    eprintln!(
        "NOTE left out by {OVERRIDE_FILE}: {}",
        LEFT_OUT.map(|(s, _)| s).join(", ")
    );

    // From here on, everything has a deadline.
    let deadline = Deadline::new(STACK_BUDGET);
    let Some(()) = steps.run("podman-compose up", || stack.up(&deadline)) else {
        bail!("the stack did not start");
    };
    let Some(containers) = steps.run("all containers healthy", || {
        stack.wait_healthy(&deadline, HEALTH_TIMEOUT)
    }) else {
        bail!("the stack did not become healthy");
    };

    steps.run(
        "images: Healthcheck and non-root User (podman image inspect)",
        || check_image_config(&podman, &madbase_images),
    );
    steps.run("containers: no process runs as root", || {
        check_process_users(&podman, &containers)
    });
    steps.run("images: no /bin/sh", || {
        check_no_shell(&podman, &madbase_images)
    });

    let http = Http::new()?;
    let control = format!("http://127.0.0.1:{}", ports.control);
    let proxy = format!("http://127.0.0.1:{}", ports.proxy);
    let admin = steps
        .run("admin token (madbase token admin)", || {
            admin_token(&binary, &secrets.jwt)
        })
        .context("no admin token")?;
    let Some(tenant) = steps.run("create a tenant (control, POST /v1/tenants)", || {
        create_tenant(&http, &control, &admin)
    }) else {
        bail!("no tenant");
    };
    let Some(()) = steps.run(
        "table with an RLS policy (POST /v1/tenants/{id}/sql)",
        || create_table(&http, &control, &admin),
    ) else {
        bail!("no table");
    };

    let api = Api {
        http: &http,
        notes: format!("{proxy}/t/{TENANT}/rest/v1/notes"),
        tenant: &tenant,
    };
    crud(steps, &api);
    steps.run(
        "a metric scraped: vmagent -> VictoriaMetrics has the proxy's http_requests_total",
        || metric_scraped(&podman, &containers, &deadline),
    );
    let request_id = format!("e2e-{}-{}", std::process::id(), random_hex(8)?);
    steps.run(
        "X-Request-Id comes back and is in the worker's logs",
        || request_id_check(&api, stack, &containers, &request_id),
    );

    // A function secret reaches the function (and no log line, below).
    let function_secret = format!("e2e-function-secret-{}", random_hex(24)?);
    steps.run(
        "a function reads its tenant's secret: PUT /v1/tenants/{id}/secrets, deploy, \
         invoke through the proxy (200, true)",
        || function_secret_check(&http, &control, &proxy, &admin, &tenant, &function_secret),
    );

    // Credentials never reach a log line (JSON logs of every container).
    let mut credentials = vec![
        ("JWT_SECRET", secrets.jwt.clone()),
        ("MADBASE_MASTER_KEY", secrets.master_key.clone()),
        ("POSTGRES_PASSWORD", secrets.postgres_password.clone()),
        (
            "GF_SECURITY_ADMIN_PASSWORD",
            secrets.grafana_password.clone(),
        ),
        ("the tenant's anon key", tenant.anon_key.clone()),
        (
            "the tenant's service_role key",
            tenant.service_role_key.clone(),
        ),
        ("the admin token", admin.clone()),
        // Set even when the function step failed: never logged either way.
        ("the tenant's function secret", function_secret.clone()),
        // No console password: compose.yaml passes no
        // MADBASE_CONSOLE_PASSWORD to control (a test below notices when it
        // does, and this list must then have it).
    ];
    if let Some(tenant_secrets) = steps.run(
        "the tenant's own secrets (control, GET /internal/v1/tenants/{id})",
        || tenant_secrets(&http, &control, &binary, &secrets.jwt),
    ) {
        credentials.extend(tenant_secrets);
    }
    steps.run("no credential in any container's logs", || {
        no_credentials_logged(stack, &containers, &credentials)
    });

    // Persistence: down (keeping the volumes), up, the same tenant and rows.
    let Some(before) = steps.run("snapshot of the rows (SQL endpoint)", || {
        snapshot(&http, &control, &admin)
    }) else {
        bail!("no snapshot");
    };
    let load = StopLoad {
        url: format!("{}?select=id,body,public&order=id", api.notes),
        key: tenant.anon_key.clone(),
    };
    let Some(()) = steps.run(
        "podman-compose stop under load (each container exits 0 on its stop signal, \
         every answer through the proxy complete), down (volumes kept)",
        || stack.down_keep_volumes(&deadline, &load),
    ) else {
        bail!("down failed");
    };
    let Some(()) = steps.run("podman-compose up again", || stack.up(&deadline)) else {
        bail!("the stack did not start again");
    };
    let Some(_) = steps.run("all containers healthy again", || {
        stack.wait_healthy(&deadline, HEALTH_TIMEOUT)
    }) else {
        bail!("the stack did not become healthy again");
    };
    steps.run(
        "after restart: control has the tenant and its rows (SQL endpoint)",
        || persisted(&http, &control, &admin, &before),
    );
    steps.run(
        "after restart: the rows through the proxy (service_role GET)",
        || persisted_rest(&api, &before),
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Steps and deadlines.

/// The PASS/FAIL record of a run.
#[derive(Debug, Default)]
struct Steps {
    results: Vec<(String, bool, Duration)>,
}

impl Steps {
    /// Runs one step, prints `PASS`/`FAIL` and records it.
    fn run<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Option<T> {
        step(name);
        let start = Instant::now();
        let result = f();
        let took = start.elapsed();
        match result {
            Ok(value) => {
                eprintln!("PASS {name} ({:.1}s)", took.as_secs_f64());
                self.results.push((name.to_owned(), true, took));
                Some(value)
            }
            Err(err) => {
                eprintln!("FAIL {name} ({:.1}s): {err:#}", took.as_secs_f64());
                self.results.push((name.to_owned(), false, took));
                None
            }
        }
    }

    fn fail(&mut self, name: &str, err: &anyhow::Error) {
        eprintln!("FAIL {name}: {err:#}");
        self.results
            .push((name.to_owned(), false, Duration::default()));
    }

    fn failed(&self) -> Vec<String> {
        self.results
            .iter()
            .filter(|(_, ok, _)| !ok)
            .map(|(n, _, _)| n.clone())
            .collect()
    }

    fn summary(&self, total: Duration) {
        eprintln!("\n==> e2e summary ({:.0}s)", total.as_secs_f64());
        for (name, ok, took) in &self.results {
            let word = if *ok { "PASS" } else { "FAIL" };
            eprintln!("{word} {name} ({:.1}s)", took.as_secs_f64());
        }
    }
}

/// A point in time every bounded operation stops at.
#[derive(Debug, Clone, Copy)]
struct Deadline(Instant);

impl Deadline {
    fn new(budget: Duration) -> Self {
        Deadline(Instant::now() + budget)
    }

    /// `want`, or less when the deadline is nearer; an error once it passed.
    fn bound(&self, want: Duration) -> Result<Duration> {
        let left = self.0.saturating_duration_since(Instant::now());
        ensure!(
            !left.is_zero(),
            "the e2e time budget ({}s) is used up",
            STACK_BUDGET.as_secs()
        );
        Ok(want.min(left))
    }
}

// ---------------------------------------------------------------------------
// Bounded commands.

/// Runs `cmd` with its output captured, killing its process group after
/// `timeout`.
fn bounded_output(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    bounded_with_input(cmd, None, timeout)
}

/// [`bounded_output`] with `input` written to the command's stdin.
fn bounded_with_input(cmd: &mut Command, input: Option<&str>, timeout: Duration) -> Result<Output> {
    let shown = shown(cmd);
    let stdin = if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    };
    let mut child = Guard::spawn(
        cmd.stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        GRACE,
    )
    .with_context(|| format!("cannot start {shown} (`bash .ci/run` installs every tool)"))?;
    let mut out = child.child().stdout.take().context("no stdout")?;
    let mut err = child.child().stderr.take().context("no stderr")?;
    let writer = child.child().stdin.take().map(|mut stdin| {
        let input = input.unwrap_or_default().to_owned();
        // Dropping stdin at the end closes it.
        std::thread::spawn(move || stdin.write_all(input.as_bytes()))
    });
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let status = wait_bounded(&mut child, timeout, &shown)?;
    if let Some(writer) = writer {
        let _ = writer.join();
    }
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Like [`bounded_output`], failing (with the output) on a non-zero exit;
/// returns stdout.
fn bounded_ok(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let shown = shown(cmd);
    let out = bounded_output(cmd, timeout)?;
    ensure!(
        out.status.success(),
        "{shown} failed with {}:\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` with its output shown, bounded by `timeout`; fails on a
/// non-zero exit.
fn bounded_run(cmd: &mut Command, timeout: Duration) -> Result<()> {
    let shown = shown(cmd);
    eprintln!("+ {shown}");
    let mut child = Guard::spawn(cmd.stdin(Stdio::null()), GRACE)
        .with_context(|| format!("cannot start {shown} (`bash .ci/run` installs every tool)"))?;
    let status = wait_bounded(&mut child, timeout, &shown)?;
    ensure!(status.success(), "{shown} failed with {status}");
    Ok(())
}

/// The program and its arguments, without the environment (which holds the
/// secrets).
fn shown(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Waits for `child`; after `timeout`, kills its process group (what it
/// started too: podman-compose runs podman) and fails.
fn wait_bounded(
    child: &mut Guard,
    timeout: Duration,
    shown: &str,
) -> Result<std::process::ExitStatus> {
    let start = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait()?);
        }
        if start.elapsed() > timeout {
            child.kill();
            bail!("{shown} did not finish within {}s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------
// Preflight and images.

fn preflight() -> Result<()> {
    let mut missing = Vec::new();
    for (tool, install) in [
        (
            "podman",
            "apt-get install podman runc netavark aardvark-dns",
        ),
        ("podman-compose", "pip install podman-compose==1.6.0"),
        ("ldd", "apt-get install libc-bin"),
    ] {
        let ok = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !ok {
            missing.push(format!("{tool} ({install})"));
        }
    }
    for (path, package) in [
        (format!("{PG_BIN}/postgres"), "postgresql-15"),
        (format!("{PG_BIN}/initdb"), "postgresql-15"),
        (format!("{PG_BIN}/pg_isready"), "postgresql-client-15"),
        ("/usr/bin/victoria-metrics".to_owned(), "victoria-metrics"),
        ("/usr/bin/vmagent".to_owned(), "victoria-metrics"),
        ("/usr/bin/vmalert".to_owned(), "victoria-metrics"),
        (
            "/usr/bin/prometheus-alertmanager".to_owned(),
            "prometheus-alertmanager",
        ),
        (WGET.to_owned(), "wget"),
        ("/bin/sh".to_owned(), "dash"),
    ] {
        if !Path::new(&path).exists() {
            missing.push(format!("{path} (apt-get install {package})"));
        }
    }
    ensure!(
        missing.is_empty(),
        "missing: {} (`bash .ci/run` installs them)",
        missing.join(", ")
    );
    Ok(())
}

/// Assembles the stand-in images; returns `(reference, archive)` pairs.
fn build_stand_ins() -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for stand_in in &STAND_INS {
        eprintln!(
            "{}: {} {}",
            stand_in.service,
            stand_in.package,
            package_version(stand_in.package)
        );
        let archive = if stand_in.service == "postgres" {
            postgres_image(stand_in)?
        } else {
            metrics_image(stand_in)?
        };
        out.push((stand_in.reference(), archive));
    }
    Ok(out)
}

fn package_version(package: &str) -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", package])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_else(|| "(version unknown)".to_owned())
}

/// Debian's Postgres 15 (without the LLVM JIT) and `/bin/sh` for
/// [`PG_ENTRYPOINT`]; user `postgres` (999), data directory owned by it.
fn postgres_image(stand_in: &StandIn) -> Result<PathBuf> {
    let mut files: Vec<PathBuf> = ["postgres", "initdb", "pg_isready"]
        .iter()
        .map(|b| Path::new(PG_BIN).join(b))
        .collect();
    for entry in std::fs::read_dir(PG_LIB).with_context(|| format!("reading {PG_LIB}"))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        // The JIT pulls in libLLVM (over 100 MB) and is off by default.
        if !(name.starts_with("llvmjit") || name == "bitcode") {
            files.push(path);
        }
    }
    files.extend(
        [
            PG_SHARE,
            "/usr/share/zoneinfo/UTC",
            "/usr/share/zoneinfo/Etc/UTC",
            "/bin/sh",
        ]
        .map(PathBuf::from),
    );
    let path_env = format!("{PG_BIN}:/usr/bin:/bin");
    let healthcheck = [
        "pg_isready",
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
        "-d",
        "postgres",
    ];
    images::host_image(&HostImage {
        name: stand_in.name,
        tag: stand_in.tag,
        files: &files,
        entrypoint: &["/bin/sh", "-c", PG_ENTRYPOINT],
        cmd: &[],
        user: User {
            uid: 999,
            gid: 999,
            name: "postgres",
        },
        env: &[
            ("PATH", path_env.as_str()),
            ("TZ", "UTC"),
            ("PGDATA", "/var/lib/postgresql/data"),
        ],
        user_dirs: &["/var/lib/postgresql/data"],
        exposed_ports: &[5432],
        healthcheck: Some(&healthcheck),
    })
}

/// One Debian VictoriaMetrics / Alertmanager binary as the entrypoint (the
/// arguments come from compose.yaml's `command`), GNU wget for the health
/// check, user `nobody` (65534) owning the data directory.
fn metrics_image(stand_in: &StandIn) -> Result<PathBuf> {
    let (binary, port, data_dir, health_path): (&str, u16, Option<&str>, &str) =
        match stand_in.service {
            "victoria-metrics" => (
                "/usr/bin/victoria-metrics",
                8428,
                Some("/storage"),
                "/health",
            ),
            "vmagent" => ("/usr/bin/vmagent", 8429, Some("/vmagent-data"), "/health"),
            "vmalert" => ("/usr/bin/vmalert", 8880, None, "/health"),
            "alertmanager" => (
                "/usr/bin/prometheus-alertmanager",
                9093,
                Some("/alertmanager"),
                "/-/healthy",
            ),
            other => bail!("no stand-in for {other}"),
        };
    let mut files = vec![PathBuf::from(binary), PathBuf::from(WGET)];
    if stand_in.service == "alertmanager" {
        // The notification templates (and UI placeholder) Debian's build
        // reads from disk; without them no configuration applies.
        files.push(PathBuf::from(AM_SHARE).join("default.tmpl"));
        files.push(PathBuf::from(AM_SHARE).join("email.tmpl"));
        files.push(PathBuf::from(AM_SHARE).join("no-ui"));
        files.push(PathBuf::from(AM_SHARE).join("ui"));
    }
    let url = format!("http://127.0.0.1:{port}{health_path}");
    let healthcheck = ["wget", "-q", "-O", "/dev/null", url.as_str()];
    let user_dirs: Vec<&str> = data_dir.into_iter().collect();
    images::host_image(&HostImage {
        name: stand_in.name,
        tag: stand_in.tag,
        files: &files,
        entrypoint: &[binary],
        cmd: &[],
        user: User {
            uid: 65534,
            gid: 65534,
            name: "nobody",
        },
        env: &[("PATH", "/usr/bin:/bin")],
        user_dirs: &user_dirs,
        exposed_ports: &[port],
        healthcheck: Some(&healthcheck),
    })
}

// ---------------------------------------------------------------------------
// Ports and secrets.

#[derive(Debug, Clone, Copy)]
struct Ports {
    proxy: u16,
    control: u16,
}

/// 8000 and 8001 when both are free, else two free ports (printed).
fn pick_ports() -> Result<Ports> {
    let free = |port: u16| TcpListener::bind(("127.0.0.1", port)).is_ok();
    if free(8000) && free(8001) {
        eprintln!("proxy on 127.0.0.1:8000, control on 127.0.0.1:8001");
        return Ok(Ports {
            proxy: 8000,
            control: 8001,
        });
    }
    let ports = Ports {
        proxy: free_port()?,
        control: free_port()?,
    };
    eprintln!(
        "8000 or 8001 is taken on 127.0.0.1: proxy on {}, control on {} (MADBASE_PROXY_PORT, MADBASE_CONTROL_PORT)",
        ports.proxy, ports.control
    );
    Ok(ports)
}

/// The four secrets compose.yaml requires, fresh for every run.
#[derive(Debug)]
struct Secrets {
    jwt: String,
    master_key: String,
    postgres_password: String,
    grafana_password: String,
}

impl Secrets {
    fn generate() -> Result<Self> {
        let b64 = base64::engine::general_purpose::STANDARD;
        Ok(Secrets {
            jwt: b64.encode(random_bytes(48)?),
            master_key: b64.encode(random_bytes(32)?),
            postgres_password: random_hex(32)?,
            grafana_password: b64.encode(random_bytes(24)?),
        })
    }
}

// ---------------------------------------------------------------------------
// The compose project.

/// The compose project of one run; [`Drop`] tears it down.
struct Stack {
    podman: Podman,
    project: String,
    env_file: PathBuf,
    /// The variables compose.yaml reads, as given to podman-compose.
    env: Vec<(String, String)>,
    loaded: Vec<String>,
    /// The compose override pinning the madbase services to the digests
    /// pushed to the test registry (written by `cargo xtask push`).
    images_override: PathBuf,
    torn_down: bool,
}

/// The services [`Stack::up`] must start: compose.yaml's minus [`LEFT_OUT`].
const STARTED: [&str; 9] = [
    "postgres",
    "control",
    "worker",
    "functions",
    "proxy",
    "victoria-metrics",
    "vmagent",
    "vmalert",
    "alertmanager",
];

/// A running container of the project.
#[derive(Debug, Clone)]
struct Container {
    name: String,
    service: String,
}

impl Stack {
    fn new(podman: Podman, project: String) -> Result<Self> {
        let dir = root().join("target/e2e");
        std::fs::create_dir_all(&dir)?;
        Ok(Stack {
            env_file: dir.join(format!("{project}.env")),
            images_override: dir.join(format!("{project}.images.yaml")),
            podman,
            project,
            env: Vec::new(),
            loaded: Vec::new(),
            torn_down: false,
        })
    }

    fn load(&mut self, archives: &[(String, PathBuf)]) -> Result<()> {
        for (reference, archive) in archives {
            self.loaded.push(reference.clone());
            bounded_ok(
                self.podman.command().arg("load").arg("-i").arg(archive),
                Duration::from_secs(120),
            )?;
            eprintln!("loaded {reference}");
        }
        Ok(())
    }

    /// The env file (mode 0600) podman-compose reads instead of `.env`.
    fn write_env(&mut self, secrets: &Secrets, ports: Ports) -> Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        self.env = vec![
            ("JWT_SECRET".into(), secrets.jwt.clone()),
            ("MADBASE_MASTER_KEY".into(), secrets.master_key.clone()),
            (
                "POSTGRES_PASSWORD".into(),
                secrets.postgres_password.clone(),
            ),
            (
                "GRAFANA_ADMIN_PASSWORD".into(),
                secrets.grafana_password.clone(),
            ),
            ("MADBASE_BIND".into(), "127.0.0.1".into()),
            ("MADBASE_PROXY_PORT".into(), ports.proxy.to_string()),
            ("MADBASE_CONTROL_PORT".into(), ports.control.to_string()),
            ("MADBASE_DOMAIN".into(), "localhost".into()),
            ("MADBASE_LOG".into(), "info".into()),
        ];
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&self.env_file)
            .with_context(|| format!("writing {}", self.env_file.display()))?;
        for (k, v) in &self.env {
            writeln!(file, "{k}={v}")?;
        }
        Ok(())
    }

    /// `podman-compose --env-file … -p … -f compose.yaml -f <override>`, with
    /// the same variables in its environment (they win over the caller's).
    fn compose(&self) -> Command {
        let mut cmd = self.podman.compose();
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.arg("--env-file")
            .arg(&self.env_file)
            .args(["-p", &self.project])
            .arg("-f")
            .arg(root().join(crate::compose::COMPOSE_FILE))
            .arg("-f")
            .arg(root().join(OVERRIDE_FILE));
        if self.images_override.exists() {
            cmd.arg("-f").arg(&self.images_override);
        }
        cmd
    }

    fn up(&self, deadline: &Deadline) -> Result<()> {
        bounded_run(
            self.compose().args(["up", "-d"]),
            deadline.bound(Duration::from_secs(180))?,
        )?;
        let containers = self.containers()?;
        let services: BTreeSet<&str> = containers.iter().map(|c| c.service.as_str()).collect();
        let want: BTreeSet<&str> = STARTED.into_iter().collect();
        ensure!(
            services == want,
            "started {services:?}, want {want:?} (compose.yaml minus {:?})",
            LEFT_OUT.map(|(s, _)| s)
        );
        eprintln!(
            "started: {}",
            containers
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(())
    }

    /// The containers of the project (any state).
    fn containers(&self) -> Result<Vec<Container>> {
        let text = bounded_ok(
            self.podman.command().args([
                "ps",
                "-a",
                "--filter",
                &format!("label=io.podman.compose.project={}", self.project),
                "--format",
                "json",
            ]),
            Duration::from_secs(30),
        )?;
        let list: Value = serde_json::from_str(&text).context("podman ps is not JSON")?;
        let mut out = Vec::new();
        for c in list.as_array().map(Vec::as_slice).unwrap_or_default() {
            let name = c["Names"][0].as_str().unwrap_or_default().to_owned();
            let service = c["Labels"]["com.docker.compose.service"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            out.push(Container { name, service });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn state(&self, container: &str) -> String {
        bounded_ok(
            self.podman.command().args([
                "inspect",
                "--format",
                "{{.State.Status}}, {{.RestartCount}} restarts",
                container,
            ]),
            Duration::from_secs(20),
        )
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"))
    }

    /// Polls `podman healthcheck run` for every container until all pass.
    fn wait_healthy(&self, deadline: &Deadline, timeout: Duration) -> Result<Vec<Container>> {
        let containers = self.containers()?;
        let start = Instant::now();
        let timeout = deadline.bound(timeout)?;
        let mut healthy: BTreeMap<String, f64> = BTreeMap::new();
        loop {
            for c in &containers {
                if healthy.contains_key(&c.name) {
                    continue;
                }
                let probe = bounded_output(
                    self.podman.command().args(["healthcheck", "run", &c.name]),
                    Duration::from_secs(20),
                )?;
                if probe.status.success() {
                    healthy.insert(c.name.clone(), start.elapsed().as_secs_f64());
                    eprintln!(
                        "  healthy: {} after {:.0}s",
                        c.service,
                        start.elapsed().as_secs_f64()
                    );
                }
            }
            let waiting: Vec<&Container> = containers
                .iter()
                .filter(|c| !healthy.contains_key(&c.name))
                .collect();
            if waiting.is_empty() {
                return Ok(containers);
            }
            let status: Vec<String> = waiting
                .iter()
                .map(|c| format!("{} ({})", c.service, self.state(&c.name)))
                .collect();
            eprintln!(
                "  {:>3.0}s: {}/{} healthy; waiting for {}",
                start.elapsed().as_secs_f64(),
                healthy.len(),
                containers.len(),
                status.join(", ")
            );
            if start.elapsed() >= timeout {
                for c in &waiting {
                    self.print_logs(&c.name, 40);
                }
                bail!(
                    "not healthy after {}s: {}",
                    timeout.as_secs(),
                    status.join(", ")
                );
            }
            std::thread::sleep(Duration::from_secs(3));
        }
    }

    fn logs(&self, container: &str) -> Result<String> {
        let out = bounded_output(
            self.podman.command().args(["logs", container]),
            Duration::from_secs(30),
        )?;
        Ok(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }

    fn print_logs(&self, container: &str, lines: usize) {
        match self.logs(container) {
            Ok(text) => {
                let all: Vec<&str> = text.lines().collect();
                let tail = &all[all.len().saturating_sub(lines)..];
                eprintln!("--- last {} lines of {container}:", tail.len());
                for line in tail {
                    eprintln!("    {line}");
                }
            }
            Err(e) => eprintln!("--- no logs of {container}: {e:#}"),
        }
    }

    /// `podman-compose stop` then `down` without `-v`: every container must
    /// stop on its stop signal within the grace period (exit code 0; a
    /// SIGKILL shows as 137), then containers and network go and the named
    /// volumes stay.
    /// `load` runs through the proxy from a second before the stop until
    /// it returns; its answers are checked after the exit codes.
    fn down_keep_volumes(&self, deadline: &Deadline, load: &StopLoad) -> Result<()> {
        let volumes_before = self.labelled("volume")?;
        let stop_timeout = deadline.bound(Duration::from_secs(120))?;
        let (stopped, shots) =
            load.around(|| bounded_run(self.compose().args(["stop", "-t", "20"]), stop_timeout))?;
        stopped?;
        let mut unclean = Vec::new();
        for c in self.containers()? {
            let code = bounded_ok(
                self.podman
                    .command()
                    .args(["inspect", "--format", "{{.State.ExitCode}}", &c.name]),
                Duration::from_secs(20),
            )?;
            if code.trim() != "0" {
                unclean.push(format!("{} (exit {})", c.service, code.trim()));
            }
        }
        ensure!(
            unclean.is_empty(),
            "not stopped cleanly by their stop signal: {}",
            unclean.join(", ")
        );
        shots.check()?;
        bounded_run(
            self.compose().args(["down", "-t", "10"]),
            deadline.bound(Duration::from_secs(120))?,
        )?;
        let left = self.containers()?;
        ensure!(
            left.is_empty(),
            "containers left after down: {:?}",
            left.iter().map(|c| &c.name).collect::<Vec<_>>()
        );
        let volumes_after = self.labelled("volume")?;
        ensure!(
            !volumes_before.is_empty() && volumes_after == volumes_before,
            "volumes before down {volumes_before:?}, after {volumes_after:?}"
        );
        eprintln!("volumes kept: {}", volumes_after.join(", "));
        Ok(())
    }

    /// Names of the project's volumes or networks (`kind`), by label.
    fn labelled(&self, kind: &str) -> Result<Vec<String>> {
        let text = bounded_ok(
            self.podman.command().args([
                kind,
                "ls",
                "--filter",
                &format!("label=io.podman.compose.project={}", self.project),
                "--format",
                "{{.Name}}",
            ]),
            Duration::from_secs(30),
        )?;
        let mut names: Vec<String> = text.lines().map(str::to_owned).collect();
        names.sort();
        Ok(names)
    }

    /// Removes everything the run created: `podman-compose down -v`, then by
    /// label whatever is left (containers, pod, volumes, networks), the
    /// loaded images and the env file. Checks nothing is left.
    fn teardown(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let mut problems = Vec::new();
        if !self.env.is_empty()
            && let Err(e) = bounded_run(
                self.compose().args(["down", "-v", "-t", "5"]),
                Duration::from_secs(120),
            )
        {
            problems.push(format!("podman-compose down -v: {e:#}"));
        }
        let label = format!("label=io.podman.compose.project={}", self.project);
        let quiet = |args: &[&str]| -> Result<String> {
            bounded_ok(self.podman.command().args(args), Duration::from_secs(60))
        };
        let ids = |args: &[&str]| -> Vec<String> {
            quiet(args)
                .map(|t| t.lines().map(str::to_owned).collect())
                .unwrap_or_default()
        };
        for c in ids(&["ps", "-a", "-q", "--filter", &label]) {
            let _ = quiet(&["rm", "-f", "-t", "0", &c]);
        }
        let pod = format!("pod_{}", self.project);
        if quiet(&["pod", "exists", &pod]).is_ok() {
            let _ = quiet(&["pod", "rm", "-f", &pod]);
        }
        for v in ids(&["volume", "ls", "-q", "--filter", &label]) {
            let _ = quiet(&["volume", "rm", "-f", &v]);
        }
        for n in ids(&["network", "ls", "-q", "--filter", &label]) {
            let _ = quiet(&["network", "rm", "-f", &n]);
        }
        for image in std::mem::take(&mut self.loaded) {
            if quiet(&["image", "exists", &image]).is_ok()
                && let Err(e) = quiet(&["rmi", "-f", &image])
            {
                problems.push(format!("podman rmi {image}: {e:#}"));
            }
        }
        for file in [&self.env_file, &self.images_override] {
            if file.exists()
                && let Err(e) = std::fs::remove_file(file)
            {
                problems.push(format!("removing {}: {e}", file.display()));
            }
        }

        // Nothing of the project may be left.
        let containers = ids(&["ps", "-a", "-q", "--filter", &label]);
        let volumes = ids(&["volume", "ls", "-q", "--filter", &label]);
        let networks = ids(&["network", "ls", "-q", "--filter", &label]);
        let pod_left = quiet(&["pod", "exists", &pod]).is_ok();
        if !containers.is_empty() || !volumes.is_empty() || !networks.is_empty() || pod_left {
            problems.push(format!(
                "left behind: containers {containers:?}, volumes {volumes:?}, networks {networks:?}, pod {pod_left}"
            ));
        }
        for stand_in in &STAND_INS {
            if quiet(&["image", "exists", &stand_in.reference()]).is_ok() {
                problems.push(format!("image {} left behind", stand_in.reference()));
            }
        }
        if problems.is_empty() {
            eprintln!("removed project {} and its images", self.project);
            Ok(())
        } else {
            bail!("{}", problems.join("\n"))
        }
    }
}

/// Removes the projects of earlier runs whose process is gone (a run
/// killed by a signal cannot clean up after itself): their containers, pod,
/// volumes and networks, found by the compose project label.
fn reap_stale(podman: &Podman) -> Result<()> {
    let label_of = |item: &Value| -> Option<String> {
        // Containers and volumes say `Labels`, networks `labels`.
        item["Labels"]["io.podman.compose.project"]
            .as_str()
            .or_else(|| item["labels"]["io.podman.compose.project"].as_str())
            .filter(|p| p.starts_with(PROJECT_PREFIX))
            .map(str::to_owned)
    };
    let mut projects = BTreeSet::new();
    for args in [
        &["ps", "-a", "--format", "json"][..],
        &["volume", "ls", "--format", "json"][..],
        &["network", "ls", "--format", "json"][..],
    ] {
        let text = bounded_ok(podman.command().args(args), Duration::from_secs(30))?;
        let list: Value = serde_json::from_str(text.trim()).unwrap_or(Value::Null);
        for item in list.as_array().map(Vec::as_slice).unwrap_or_default() {
            projects.extend(label_of(item));
        }
    }
    let stale: Vec<String> = projects
        .into_iter()
        .filter(|p| {
            p[PROJECT_PREFIX.len()..]
                .parse::<u32>()
                .is_ok_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect();
    for project in &stale {
        eprintln!("removing {project} (its run is gone)");
        let label = format!("label=io.podman.compose.project={project}");
        let quiet = |args: &[&str]| -> Vec<String> {
            bounded_ok(podman.command().args(args), Duration::from_secs(60))
                .map(|t| t.lines().map(str::to_owned).collect())
                .unwrap_or_default()
        };
        for c in quiet(&["ps", "-a", "-q", "--filter", &label]) {
            quiet(&["rm", "-f", "-t", "0", &c]);
        }
        quiet(&["pod", "rm", "-f", "--ignore", &format!("pod_{project}")]);
        for v in quiet(&["volume", "ls", "-q", "--filter", &label]) {
            quiet(&["volume", "rm", "-f", &v]);
        }
        for n in quiet(&["network", "ls", "-q", "--filter", &label]) {
            quiet(&["network", "rm", "-f", &n]);
        }
    }
    if stale.is_empty() {
        eprintln!("nothing left behind by earlier runs");
    }
    Ok(())
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !self.torn_down {
            eprintln!("\n==> tear-down after a failure");
            match self.teardown() {
                Ok(()) => eprintln!("PASS tear-down after a failure"),
                Err(e) => eprintln!("FAIL tear-down after a failure: {e:#}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The registry round trip.

/// Loads the madbase archives as a user would (`podman load -i`) and checks
/// that podman records the digests `nix/images.lock` holds and finds each
/// image by the reference `compose.yaml` runs it as.
fn load_locked(stack: &mut Stack, built: &[images::BuiltImage]) -> Result<()> {
    let lock = image_lock::load()?;
    let archives: Vec<(String, PathBuf)> = built
        .iter()
        .map(|image| (image.reference.clone(), image.archive.clone()))
        .collect();
    stack.load(&archives)?;
    for image in built {
        let locked = lock
            .get(&image.service)
            .with_context(|| format!("{} is not in {}", image.service, image_lock::LOCK_FILE))?;
        let digest = bounded_ok(
            stack.podman.command().args([
                "image",
                "inspect",
                "--format",
                "{{.Digest}}",
                &image.reference,
            ]),
            Duration::from_secs(30),
        )?;
        ensure!(
            digest.trim() == locked.digest,
            "{}: podman recorded {}, {} says {}",
            image.reference,
            digest.trim(),
            image_lock::LOCK_FILE,
            locked.digest
        );
        bounded_ok(
            stack
                .podman
                .command()
                .args(["image", "exists", &locked.pinned()]),
            Duration::from_secs(30),
        )
        .with_context(|| format!("podman does not find {}", locked.pinned()))?;
        eprintln!("ok: {}", locked.pinned());
    }
    Ok(())
}

/// Pushes the built images to `registry` with `cargo xtask push` (wrong
/// credentials first), checks digests and idempotence, pulls every image by
/// digest and leaves the compose override pinning them for [`Stack::up`].
/// Returns the images with their digest references.
fn registry_round_trip(
    steps: &mut Steps,
    stack: &mut Stack,
    registry: &TestRegistry,
    built: Vec<images::BuiltImage>,
) -> Option<Vec<images::BuiltImage>> {
    let args = PushArgs {
        registry: format!("{}/madbase", registry.host),
        images: root().join("target/images"),
        digests_file: root().join("target/e2e/pushed.json"),
        compose_override: Some(stack.images_override.clone()),
        cert_dir: Some(registry.cert_dir.clone()),
        tls_verify: true,
    };
    steps.run(
        "cargo xtask push with a wrong password fails, saying so",
        || {
            let wrong = Credentials {
                user: registry.credentials.user.clone(),
                password: "not-the-password".to_owned(),
            };
            match push::push(&args, &wrong) {
                Ok(_) => bail!("the push succeeded with a wrong password"),
                Err(e) => {
                    let said = format!("{e:#}");
                    ensure!(
                        said.contains("refused the credentials"),
                        "the failure does not say the credentials were refused: {said}"
                    );
                    eprintln!("refused as expected: {said}");
                    Ok(())
                }
            }
        },
    )?;
    let release = steps.run(
        "cargo xtask push: the registry's manifests are the built images' and the lock's (digests equal)",
        || {
            let lock = image_lock::load()?;
            let release = push::push(&args, &registry.credentials)?;
            for image in &built {
                let pushed = release
                    .images
                    .get(&image.service)
                    .with_context(|| format!("{} was not pushed", image.service))?;
                ensure!(
                    pushed.image_id == format!("sha256:{}", image.id),
                    "{}: pushed config {} is not the built image {}",
                    image.service,
                    pushed.image_id,
                    image.id
                );
                let local = std::fs::read(
                    root()
                        .join("target/push")
                        .join(&image.service)
                        .join("manifest.json"),
                )?;
                let local = format!("sha256:{}", images::sha256_hex(&local));
                for tag in &pushed.tags {
                    let raw = registry_manifest(
                        registry,
                        &format!("{}:{tag}", image_name(&args, &image.service)),
                    )?;
                    let remote = format!("sha256:{}", images::sha256_hex(&raw));
                    ensure!(
                        remote == local && remote == pushed.digest,
                        "{}:{tag}: registry manifest {remote}, local {local}, reported {}",
                        image.service,
                        pushed.digest
                    );
                }
                let locked = lock
                    .get(&image.service)
                    .with_context(|| format!("{} is not in {}", image.service, image_lock::LOCK_FILE))?;
                ensure!(
                    pushed.digest == locked.registry_digest,
                    "{}: pushed as {}, {} says {}",
                    image.service,
                    pushed.digest,
                    image_lock::LOCK_FILE,
                    locked.registry_digest
                );
                eprintln!(
                    "ok: {} {} = local manifest = the lock's registry_digest, tags {:?}",
                    image.service, pushed.digest, pushed.tags
                );
            }
            Ok(release)
        },
    )?;
    steps.run(
        "cargo xtask push again: the same digests, the registry unchanged",
        || {
            let before = storage_files(&registry.storage())?;
            let again = push::push(&args, &registry.credentials)?;
            ensure!(
                again.images == release.images,
                "the second push gave {:?}, the first {:?}",
                again.images,
                release.images
            );
            let after = storage_files(&registry.storage())?;
            ensure!(
                before == after,
                "the registry's storage changed: {} files before, {} after",
                before.len(),
                after.len()
            );
            eprintln!(
                "ok: {} files in the registry's storage, unchanged",
                after.len()
            );
            Ok(())
        },
    )?;
    steps.run(
        "podman pull <registry>/madbase/<service>@sha256:… (image ID = built)",
        || {
            let auth = tempfile::Builder::new().prefix("madbase-pull-").tempdir()?;
            let authfile = auth.path().join("auth.json");
            let cert_dir = registry.cert_dir.display().to_string();
            let mut login = stack.podman.command();
            login
                .args([
                    "login",
                    "--cert-dir",
                    &cert_dir,
                    "--password-stdin",
                    "--username",
                ])
                .arg(&registry.credentials.user)
                .arg("--authfile")
                .arg(&authfile)
                .arg(&registry.host);
            piped(&mut login, &registry.credentials.password)?;
            for image in &built {
                let reference = &release.images[&image.service].reference;
                stack.loaded.push(reference.clone());
                bounded_ok(
                    stack
                        .podman
                        .command()
                        .args(["pull", "--quiet", "--cert-dir", &cert_dir, "--authfile"])
                        .arg(&authfile)
                        .arg(reference),
                    Duration::from_secs(120),
                )?;
                let id = bounded_ok(
                    stack
                        .podman
                        .command()
                        .args(["image", "inspect", "--format", "{{.Id}}", reference]),
                    Duration::from_secs(30),
                )?;
                ensure!(
                    id.trim() == image.id,
                    "{reference}: image ID {} is not the built image's {}",
                    id.trim(),
                    image.id
                );
                eprintln!("pulled {reference} (image ID {})", &image.id[..12]);
            }
            Ok(())
        },
    )?;
    Some(
        built
            .into_iter()
            .map(|mut image| {
                image.reference = release.images[&image.service].reference.clone();
                image
            })
            .collect(),
    )
}

fn image_name(args: &PushArgs, service: &str) -> String {
    format!("{}/{service}", args.registry)
}

/// The raw manifest the registry serves for `reference` (`skopeo inspect
/// --raw`, authenticated with the test credentials).
fn registry_manifest(registry: &TestRegistry, reference: &str) -> Result<Vec<u8>> {
    let out = Command::new("skopeo")
        .args(["inspect", "--raw", "--cert-dir"])
        .arg(&registry.cert_dir)
        .arg("--creds")
        .arg(format!(
            "{}:{}",
            registry.credentials.user, registry.credentials.password
        ))
        .arg(format!("docker://{reference}"))
        .stdin(Stdio::null())
        .output()
        .context("cannot start skopeo")?;
    ensure!(
        out.status.success(),
        "skopeo inspect {reference}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

/// Every file below `dir` with its size, relative to it.
fn storage_files(dir: &Path) -> Result<BTreeMap<String, u64>> {
    fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, u64>) -> Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                walk(base, &path, out)?;
            } else {
                let name = path
                    .strip_prefix(base)
                    .unwrap_or(&path)
                    .display()
                    .to_string();
                out.insert(name, entry.metadata()?.len());
            }
        }
        Ok(())
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

/// Runs `cmd` with `input` on its stdin, bounded to a minute.
fn piped(cmd: &mut Command, input: &str) -> Result<()> {
    let shown = shown(cmd);
    let out = bounded_with_input(cmd, Some(input), Duration::from_secs(60))?;
    ensure!(
        out.status.success(),
        "{shown}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// vmagent scraped the proxy and VictoriaMetrics stored it: the sum of the
/// proxy's `http_requests_total` there is above zero (queried inside the
/// VictoriaMetrics container, which publishes no port).
fn metric_scraped(podman: &Podman, containers: &[Container], deadline: &Deadline) -> Result<()> {
    let vm = containers
        .iter()
        .find(|c| c.service == "victoria-metrics")
        .context("no victoria-metrics container")?;
    let query =
        "http://127.0.0.1:8428/api/v1/query?query=sum(http_requests_total%7Bjob%3D%22proxy%22%7D)";
    let start = Instant::now();
    let limit = deadline.bound(Duration::from_secs(90))?;
    loop {
        let out = bounded_output(
            podman
                .command()
                .args(["exec", &vm.name, "wget", "-q", "-O", "-", query]),
            Duration::from_secs(20),
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        let value = serde_json::from_str::<Value>(&text).ok().and_then(|v| {
            v["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|n| n.parse::<f64>().ok())
        });
        if let Some(n) = value.filter(|n| *n > 0.0) {
            eprintln!(
                "ok: sum(http_requests_total{{job=\"proxy\"}}) = {n} after {:.0}s",
                start.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if start.elapsed() >= limit {
            bail!(
                "no http_requests_total of the proxy in VictoriaMetrics after {}s: {text}",
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_secs(3));
    }
}

// ---------------------------------------------------------------------------
// Images and processes.

/// `podman image inspect`: a health check and a non-root user.
fn check_image_config(podman: &Podman, built: &[images::BuiltImage]) -> Result<()> {
    for image in built {
        let text = bounded_ok(
            podman
                .command()
                .args(["image", "inspect", "--format", "json", &image.reference]),
            Duration::from_secs(30),
        )?;
        let inspect: Value = serde_json::from_str(&text)?;
        let inspect = &inspect[0];
        let hc = if inspect["Healthcheck"].is_object() {
            &inspect["Healthcheck"]
        } else {
            &inspect["Config"]["Healthcheck"]
        };
        let test: Vec<&str> = hc["Test"]
            .as_array()
            .map(|t| t.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        ensure!(
            test.first() == Some(&"CMD") && test.len() > 1,
            "{}: no Healthcheck ({hc})",
            image.reference
        );
        let user = inspect["Config"]["User"].as_str().unwrap_or_default();
        let uid = user.split(':').next().unwrap_or_default();
        ensure!(
            !uid.is_empty() && uid != "0" && uid != "root",
            "{}: User is {user:?}",
            image.reference
        );
        eprintln!("ok: {} User {user}, Healthcheck {test:?}", image.reference);
    }
    Ok(())
}

/// `podman top <ctr> user` and `/proc/<pid>/status`: no process of any
/// container runs as root.
fn check_process_users(podman: &Podman, containers: &[Container]) -> Result<()> {
    let mut problems = Vec::new();
    for c in containers {
        let top = bounded_ok(
            podman
                .command()
                .args(["top", &c.name, "user", "pid", "args"]),
            Duration::from_secs(30),
        )?;
        let users: BTreeSet<String> = top
            .lines()
            .skip(1)
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect();
        if users.is_empty() || users.contains("root") || users.contains("0") {
            problems.push(format!("{}: processes run as {users:?}:\n{top}", c.service));
        }
        let pid = bounded_ok(
            podman
                .command()
                .args(["inspect", "--format", "{{.State.Pid}}", &c.name]),
            Duration::from_secs(30),
        )?;
        let pid = pid.trim();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status of {}", c.name))?;
        let uids: Vec<String> = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .map(str::to_owned)
            .collect();
        if uids.len() != 4 || uids.iter().any(|u| u == "0") {
            problems.push(format!("{}: /proc/{pid}/status Uid {uids:?}", c.service));
        }
        eprintln!(
            "ok: {:<17} users {:?}, pid {pid} Uid {}",
            c.service,
            users,
            uids.join(" ")
        );
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

/// `podman run --entrypoint /bin/sh <image>` fails for every madbase image.
fn check_no_shell(podman: &Podman, built: &[images::BuiltImage]) -> Result<()> {
    for image in built {
        let out = bounded_output(
            podman.command().args([
                "run",
                "--rm",
                "--network",
                "none",
                "--entrypoint",
                "/bin/sh",
                &image.reference,
                "-c",
                "true",
            ]),
            Duration::from_secs(60),
        )?;
        ensure!(
            !out.status.success(),
            "`podman run --entrypoint /bin/sh {}` succeeded: the image has a shell",
            image.reference
        );
        // Failing for another reason (podman itself) proves nothing.
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            stderr.contains("/bin/sh")
                && (stderr.contains("no such file") || stderr.contains("not found")),
            "`podman run --entrypoint /bin/sh {}` failed, but not for want of a shell: {stderr}",
            image.reference
        );
        eprintln!(
            "ok: {}: --entrypoint /bin/sh fails: {}",
            image.reference,
            stderr.lines().last().unwrap_or_default()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// HTTP.

/// A blocking wrapper around reqwest on a current-thread runtime.
struct Http {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
}

/// One answer, read completely.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("the body is not JSON: {}", self.body))
    }

    /// Fails unless the status is `want`, showing the answer.
    fn expect(&self, what: &str, want: &[u16]) -> Result<&Self> {
        ensure!(
            want.contains(&self.status),
            "{what}: HTTP {}, want {want:?}: {}",
            self.status,
            self.body.chars().take(500).collect::<String>()
        );
        Ok(self)
    }
}

impl Http {
    fn new() -> Result<Self> {
        Ok(Http {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            client: reqwest::Client::builder()
                .timeout(HTTP_TIMEOUT)
                .no_proxy()
                // A fresh connection per request: the stack restarts
                // between requests and a pooled one would be dead.
                .pool_max_idle_per_host(0)
                .build()?,
        })
    }

    fn send(
        &self,
        method: reqwest::Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Answer> {
        let body = body.map(|b| ("application/json", b.to_string()));
        self.send_body(method, url, headers, body)
    }

    /// [`Http::send`] with a body of any type: `(content type, body)`.
    fn send_body(
        &self,
        method: reqwest::Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, String)>,
    ) -> Result<Answer> {
        let mut req = self.client.request(method.clone(), url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some((content_type, body)) = body {
            req = req.header("Content-Type", content_type).body(body);
        }
        self.runtime
            .block_on(async {
                let resp = req.send().await?;
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                let body = resp.text().await?;
                Ok::<_, reqwest::Error>(Answer {
                    status,
                    headers,
                    body,
                })
            })
            .with_context(|| format!("{method} {url}"))
    }
}

// ---------------------------------------------------------------------------
// Load while the stack stops (issue 24).

/// Reads through the proxy while `podman-compose stop` runs: the anon key's
/// `GET` of the notes, from [`STOP_LOAD_CLIENTS`] threads, each on a fresh
/// connection per request.
struct StopLoad {
    /// The REST URL read, query included.
    url: String,
    /// The tenant's key (`apikey`).
    key: String,
}

/// Clients of [`StopLoad`].
const STOP_LOAD_CLIENTS: usize = 4;
/// How long one request of [`StopLoad`] may take (the stop's grace period
/// is 20 s; a request hanging beyond it is a failure).
const STOP_LOAD_TIMEOUT: Duration = Duration::from_secs(25);

/// What one request of [`StopLoad`] got.
#[derive(Debug)]
struct Shot {
    /// Sent, relative to the load's start.
    sent: Duration,
    /// The answer read completely, or what failed on the client's side:
    /// `refused`, `reset`, `timeout`, `incomplete body`.
    outcome: std::result::Result<Answer, &'static str>,
}

/// Every request of a [`StopLoad`] run, and when the stop began.
#[derive(Debug)]
struct Shots {
    shots: Vec<Shot>,
    /// The rows a read got before the load began.
    rows: Value,
    /// When the stop began, relative to the load's start.
    began: Duration,
    /// When it returned.
    ended: Duration,
}

impl StopLoad {
    /// Reads once (the rows every 200 must carry), starts the clients,
    /// runs `during` a second later and stops the clients when it returns.
    fn around<T>(&self, during: impl FnOnce() -> T) -> Result<(T, Shots)> {
        let client = self.client()?;
        let rows = match self.shoot(&client) {
            Ok(a) if a.status == 200 => a.json()?,
            other => bail!("the read before the stop: {other:?}"),
        };
        let stop = AtomicBool::new(false);
        let started = Instant::now();
        let (result, began, ended, shots) = std::thread::scope(|scope| {
            let clients: Vec<_> = (0..STOP_LOAD_CLIENTS)
                .map(|_| scope.spawn(|| self.run(started, &stop)))
                .collect();
            std::thread::sleep(Duration::from_secs(1));
            let began = started.elapsed();
            let result = during();
            let ended = started.elapsed();
            stop.store(true, Ordering::Relaxed);
            let mut shots = Vec::new();
            for c in clients {
                match c.join() {
                    Ok(Ok(mine)) => shots.extend(mine),
                    Ok(Err(e)) => return Err(e),
                    Err(_) => bail!("a load thread panicked"),
                }
            }
            Ok((result, began, ended, shots))
        })?;
        let mut shots = Shots {
            shots,
            rows,
            began,
            ended,
        };
        shots.shots.sort_by_key(|s| s.sent);
        Ok((result, shots))
    }

    fn client(&self) -> Result<reqwest::blocking::Client> {
        Ok(reqwest::blocking::Client::builder()
            .timeout(STOP_LOAD_TIMEOUT)
            .no_proxy()
            // A refused or reset connection belongs to one request.
            .pool_max_idle_per_host(0)
            .build()?)
    }

    /// One client: requests one after the other until `stop`.
    fn run(&self, started: Instant, stop: &AtomicBool) -> Result<Vec<Shot>> {
        let client = self.client()?;
        let mut shots = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            let sent = started.elapsed();
            let outcome = self.shoot(&client);
            let failed = outcome.is_err();
            shots.push(Shot { sent, outcome });
            if failed {
                // Refused connections come back at once: do not spin.
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(shots)
    }

    fn shoot(
        &self,
        client: &reqwest::blocking::Client,
    ) -> std::result::Result<Answer, &'static str> {
        let kind = |e: &reqwest::Error| {
            if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "refused"
            } else if e.is_body() || e.is_decode() {
                "incomplete body"
            } else {
                "reset"
            }
        };
        let resp = client
            .get(&self.url)
            .header("apikey", &self.key)
            .send()
            .map_err(|e| kind(&e))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().map_err(|e| kind(&e))?;
        Ok(Answer {
            status,
            headers,
            body,
        })
    }
}

impl Shots {
    /// Outcomes counted: the status, or the client-side failure.
    fn counts(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for s in &self.shots {
            let label = match &s.outcome {
                Ok(a) => a.status.to_string(),
                Err(e) => (*e).to_owned(),
            };
            *counts.entry(label).or_default() += 1;
        }
        counts
    }

    /// Prints the counts; fails on an answer that is not complete (a 200
    /// with other rows than before, a 502/503 (or the worker's 504
    /// PGRST003) without a JSON body and a
    /// request id, any other status), a timeout or cut body, a failed
    /// connection before the stop began, or no 200 before it.
    fn check(&self) -> Result<()> {
        let counts = self.counts();
        let first_failure = self
            .shots
            .iter()
            .filter(|s| s.outcome.as_ref().map_or(true, |a| a.status != 200))
            .map(|s| s.sent)
            .next();
        eprintln!(
            "load during the stop: {} requests from {STOP_LOAD_CLIENTS} clients, \
             {} sent before the stop began at {:.1}s, stop returned at {:.1}s; \
             outcomes {counts:?}; first non-200 sent {}",
            self.shots.len(),
            self.shots.iter().filter(|s| s.sent < self.began).count(),
            self.began.as_secs_f64(),
            self.ended.as_secs_f64(),
            first_failure.map_or("never".to_owned(), |t| format!(
                "{:.0} ms after the stop began",
                t.as_secs_f64() * 1000.0 - self.began.as_secs_f64() * 1000.0
            )),
        );
        let mut wrong = Vec::new();
        for s in &self.shots {
            let at = format!("sent at {:.3}s", s.sent.as_secs_f64());
            match &s.outcome {
                Ok(a) if a.status == 200 => {
                    if a.json().ok().as_ref() != Some(&self.rows) {
                        wrong.push(format!("{at}: a 200 with other rows: {}", a.body));
                    }
                }
                // A 504 only as the worker's PGRST003: its pool timed out
                // because Postgres stopped before it (the stop order races).
                Ok(a)
                    if a.status == 502
                        || a.status == 503
                        || (a.status == 504
                            && a.json().ok().is_some_and(|b| b["code"] == "PGRST003")) =>
                {
                    let header = a
                        .headers
                        .get("x-request-id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("");
                    let body = a.json().ok();
                    let id_ok = !header.is_empty()
                        && body.as_ref().is_some_and(|b| {
                            b.is_object()
                                && b.get("request_id")
                                    .is_none_or(|id| id.as_str() == Some(header))
                        });
                    if !id_ok {
                        wrong.push(format!(
                            "{at}: {} without a JSON body and a request id (x-request-id {header:?}): {}",
                            a.status, a.body
                        ));
                    }
                }
                Ok(a) => wrong.push(format!("{at}: HTTP {}: {}", a.status, a.body)),
                Err(e @ ("refused" | "reset")) if s.sent < self.began => {
                    wrong.push(format!("{at}: {e} before the stop began"));
                }
                Err("refused" | "reset") => {}
                Err(e) => wrong.push(format!("{at}: {e}")),
            }
        }
        ensure!(
            wrong.is_empty(),
            "{} of {} requests during the stop went wrong: {}",
            wrong.len(),
            self.shots.len(),
            wrong
                .iter()
                .take(10)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        );
        ensure!(
            self.shots
                .iter()
                .any(|s| s.sent < self.began && s.outcome.as_ref().is_ok_and(|a| a.status == 200)),
            "no request succeeded before the stop began: {counts:?}"
        );
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The API checks.

fn admin_token(binary: &Path, jwt_secret: &str) -> Result<String> {
    let token = bounded_ok(
        Command::new(binary)
            .args(["token", "admin", "--ttl", "1h"])
            .env("JWT_SECRET", jwt_secret),
        Duration::from_secs(30),
    )?;
    let token = token.trim().to_owned();
    ensure!(token.split('.').count() == 3, "not a JWT: {token}");
    Ok(token)
}

/// The tenant's JWT secret and its authenticator's database password, as
/// control's internal API gives them to the services.
fn tenant_secrets(
    http: &Http,
    control: &str,
    binary: &Path,
    jwt_secret: &str,
) -> Result<Vec<(&'static str, String)>> {
    let token = bounded_ok(
        Command::new(binary)
            .args(["token", "internal", "--ttl", "10m"])
            .env("JWT_SECRET", jwt_secret),
        Duration::from_secs(30),
    )?;
    let bearer = format!("Bearer {}", token.trim());
    let answer = http.send(
        reqwest::Method::GET,
        &format!("{control}/internal/v1/tenants/{TENANT}"),
        &[("Authorization", &bearer)],
        None,
    )?;
    answer.expect("GET /internal/v1/tenants/{id}", &[200])?;
    let body = answer.json()?;
    let field = |name: &str| -> Result<String> {
        body[name]
            .as_str()
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
            .with_context(|| format!("no {name} in the internal tenant answer"))
    };
    Ok(vec![
        ("the tenant's JWT secret", field("jwt_secret")?),
        (
            "the tenant's authenticator password",
            field("authenticator_password")?,
        ),
    ])
}

/// The function secret's name, and the function that reads it.
const FUNCTION_SECRET_NAME: &str = "E2E_FUNCTION_SECRET";
const FUNCTION_NAME: &str = "e2e-secret";
/// Answers whether the secret is set, never its value.
const FUNCTION_SOURCE: &str = r#"Deno.serve(() => {
  const value = Deno.env.get("E2E_FUNCTION_SECRET");
  return Response.json(typeof value === "string" && value.length > 0);
});
"#;
/// How long the first invocation after the deploy may keep failing (the
/// change feed reaches the functions service well within it).
const FUNCTION_READY: Duration = Duration::from_secs(15);

/// Sets a function secret (`value`) of the tenant through control's admin
/// API, deploys [`FUNCTION_SOURCE`] and invokes it through the proxy with
/// the anon key: 200 and `true`. The value is never printed.
fn function_secret_check(
    http: &Http,
    control: &str,
    proxy: &str,
    admin: &str,
    tenant: &Tenant,
    value: &str,
) -> Result<()> {
    let bearer = format!("Bearer {admin}");
    let auth = [("Authorization", bearer.as_str())];
    let answer = http.send(
        reqwest::Method::PUT,
        &format!("{control}/v1/tenants/{TENANT}/secrets"),
        &auth,
        Some(&json!({ FUNCTION_SECRET_NAME: value })),
    )?;
    answer.expect("PUT /v1/tenants/{id}/secrets", &[200])?;
    let names = answer.json()?;
    ensure!(
        names
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s["name"] == FUNCTION_SECRET_NAME)),
        "the secret is not among the tenant's secrets: {names}"
    );
    ensure!(
        !answer.body.contains(value),
        "the secrets API answered the secret's value"
    );

    let answer = http.send_body(
        reqwest::Method::PUT,
        &format!("{control}/v1/tenants/{TENANT}/functions/{FUNCTION_NAME}"),
        &auth,
        Some(("application/javascript", FUNCTION_SOURCE.to_owned())),
    )?;
    answer.expect("PUT /v1/tenants/{id}/functions/{name}", &[200, 201])?;

    let url = format!("{proxy}/t/{TENANT}/functions/v1/{FUNCTION_NAME}");
    let bearer = format!("Bearer {}", tenant.anon_key);
    let headers = [
        ("apikey", tenant.anon_key.as_str()),
        ("Authorization", bearer.as_str()),
    ];
    let ready = Instant::now() + FUNCTION_READY;
    let mut attempts = 0;
    loop {
        attempts += 1;
        let answer = http.send(reqwest::Method::POST, &url, &headers, Some(&json!({})))?;
        ensure!(
            !answer.body.contains(value),
            "the function's answer holds the secret's value"
        );
        let set = answer.status == 200 && answer.body.trim() == "true";
        if set {
            eprintln!("   {FUNCTION_NAME}: HTTP 200 true after {attempts} invocation(s)");
            return Ok(());
        }
        if Instant::now() >= ready {
            answer.expect(&format!("POST /functions/v1/{FUNCTION_NAME}"), &[200])?;
            bail!(
                "POST /functions/v1/{FUNCTION_NAME}: answered {:?}, want true (the secret \
                 is not set in the function) after {attempts} invocations",
                answer.body.trim()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Fails naming each credential found in a container's `podman logs`
/// (never printing the value).
fn no_credentials_logged(
    stack: &Stack,
    containers: &[Container],
    credentials: &[(&str, String)],
) -> Result<()> {
    let mut found = Vec::new();
    let mut lines = 0;
    for c in containers {
        let logs = stack.logs(&c.name)?;
        lines += logs.lines().count();
        for (what, value) in credentials {
            if logs.contains(value.as_str()) {
                found.push(format!("{what} in the logs of {}", c.name));
            }
        }
    }
    ensure!(found.is_empty(), "credentials logged: {}", found.join("; "));
    eprintln!(
        "   {} credentials, none in {lines} log lines of {} containers",
        credentials.len(),
        containers.len()
    );
    Ok(())
}

/// The keys of the tenant the test created.
#[derive(Debug)]
struct Tenant {
    anon_key: String,
    service_role_key: String,
}

fn create_tenant(http: &Http, control: &str, admin: &str) -> Result<Tenant> {
    let bearer = format!("Bearer {admin}");
    let answer = http.send(
        reqwest::Method::POST,
        &format!("{control}/v1/tenants"),
        &[("Authorization", &bearer)],
        Some(&json!({ "id": TENANT })),
    )?;
    answer.expect("POST /v1/tenants", &[201])?;
    let body = answer.json()?;
    let key = |name: &str| -> Result<String> {
        body[name]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("no {name} in {body}"))
    };
    eprintln!("tenant {TENANT}: rest_url {}", body["rest_url"]);
    Ok(Tenant {
        anon_key: key("anon_key")?,
        service_role_key: key("service_role_key")?,
    })
}

/// A table `notes` with RLS: `anon` reads public rows only, nothing else;
/// `service_role` bypasses RLS (its role has BYPASSRLS). One row is seeded
/// through SQL.
const SETUP_SQL: &str = "
create table notes (
  id serial primary key,
  owner uuid,
  body text not null,
  public boolean not null default false
);
alter table notes enable row level security;
create policy notes_public_read on notes for select to anon using (public);
insert into notes (owner, body, public)
  values ('00000000-0000-4000-8000-000000000001', 'seeded through sql', true);
select count(*)::int as n from notes";

fn sql(http: &Http, control: &str, admin: &str, query: &str) -> Result<Value> {
    let bearer = format!("Bearer {admin}");
    let answer = http.send(
        reqwest::Method::POST,
        &format!("{control}/v1/tenants/{TENANT}/sql"),
        &[("Authorization", &bearer)],
        Some(&json!({ "query": query })),
    )?;
    answer.expect("POST /v1/tenants/{id}/sql", &[200])?;
    answer.json()
}

fn create_table(http: &Http, control: &str, admin: &str) -> Result<()> {
    let rows = sql(http, control, admin, SETUP_SQL)?;
    ensure!(rows == json!([{ "n": 1 }]), "setup returned {rows}");
    Ok(())
}

/// Every row, as the SQL endpoint sees it (the owner bypasses RLS).
fn snapshot(http: &Http, control: &str, admin: &str) -> Result<Value> {
    let rows = sql(
        http,
        control,
        admin,
        "select id, body, public from notes order by id",
    )?;
    eprintln!("rows: {rows}");
    Ok(rows)
}

/// The tenant's REST API through the proxy.
struct Api<'a> {
    http: &'a Http,
    notes: String,
    tenant: &'a Tenant,
}

impl Api<'_> {
    fn send(
        &self,
        method: reqwest::Method,
        query: &str,
        key: &str,
        extra: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Answer> {
        let mut headers = vec![("apikey", key)];
        headers.extend_from_slice(extra);
        self.http
            .send(method, &format!("{}{query}", self.notes), &headers, body)
    }

    fn service(&self) -> &str {
        &self.tenant.service_role_key
    }

    fn anon(&self) -> &str {
        &self.tenant.anon_key
    }

    /// `GET ?select=id,body,public&order=id` with `key`; the rows.
    fn read(&self, key: &str) -> Result<Vec<Value>> {
        let answer = self.send(
            reqwest::Method::GET,
            "?select=id,body,public&order=id",
            key,
            &[],
            None,
        )?;
        answer.expect("GET /rest/v1/notes", &[200])?;
        rows(&answer.json()?)
    }
}

fn rows(value: &Value) -> Result<Vec<Value>> {
    value
        .as_array()
        .cloned()
        .with_context(|| format!("not a JSON array: {value}"))
}

fn ids(rows: &[Value]) -> Vec<i64> {
    rows.iter().filter_map(|r| r["id"].as_i64()).collect()
}

/// The CRUD steps through the proxy; each is its own PASS/FAIL.
fn crud(steps: &mut Steps, api: &Api<'_>) {
    let inserted = steps.run("service_role inserts (POST, return=representation)", || {
        let body = json!([
            { "owner": "00000000-0000-4000-8000-000000000002", "body": "public note", "public": true },
            { "owner": "00000000-0000-4000-8000-000000000003", "body": "private note", "public": false }
        ]);
        let answer = api.send(
            reqwest::Method::POST,
            "",
            api.service(),
            &[("Prefer", "return=representation")],
            Some(&body),
        )?;
        answer.expect("POST /rest/v1/notes", &[201])?;
        let rows = rows(&answer.json()?)?;
        ensure!(
            rows.len() == 2
                && rows[0]["body"] == "public note"
                && rows[1]["body"] == "private note"
                && rows.iter().all(|r| r["id"].is_i64()),
            "inserted rows: {rows:?}"
        );
        let ids = ids(&rows);
        eprintln!("inserted ids {ids:?}");
        Ok((ids[0], ids[1]))
    });

    steps.run("anon reads only public rows (RLS)", || {
        let rows = api.read(api.anon())?;
        ensure!(
            !rows.is_empty() && rows.iter().all(|r| r["public"] == true),
            "anon sees {rows:?}"
        );
        ensure!(
            rows.iter().all(|r| r["body"] != "private note"),
            "anon sees the private row: {rows:?}"
        );
        eprintln!("anon sees {} rows: {:?}", rows.len(), ids(&rows));
        Ok(())
    });

    steps.run("service_role reads every row", || {
        let rows = api.read(api.service())?;
        let public = rows.iter().filter(|r| r["public"] == true).count();
        ensure!(
            rows.iter().any(|r| r["public"] == false) && public >= 1,
            "service_role sees {rows:?}"
        );
        if inserted.is_some() {
            ensure!(rows.len() == 3, "service_role sees {rows:?}, want 3 rows");
        }
        Ok(())
    });

    steps.run("service_role updates (PATCH ?id=eq.N)", || {
        let (_, private) = inserted.context("nothing was inserted")?;
        let answer = api.send(
            reqwest::Method::PATCH,
            &format!("?id=eq.{private}"),
            api.service(),
            &[("Prefer", "return=representation")],
            Some(&json!({ "body": "private note, edited" })),
        )?;
        answer.expect("PATCH /rest/v1/notes", &[200])?;
        let rows = rows(&answer.json()?)?;
        ensure!(
            rows.len() == 1
                && rows[0]["id"] == private
                && rows[0]["body"] == "private note, edited",
            "PATCH returned {rows:?}"
        );
        Ok(())
    });

    steps.run("service_role deletes (DELETE ?id=eq.N)", || {
        let (public, _) = inserted.context("nothing was inserted")?;
        let answer = api.send(
            reqwest::Method::DELETE,
            &format!("?id=eq.{public}"),
            api.service(),
            &[],
            None,
        )?;
        answer.expect("DELETE /rest/v1/notes", &[200, 204])?;
        let rows = api.read(api.service())?;
        ensure!(
            !ids(&rows).contains(&public),
            "row {public} is still there: {rows:?}"
        );
        Ok(())
    });

    steps.run("anon insert is refused (401/403)", || {
        let before = api.read(api.service())?;
        let answer = api.send(
            reqwest::Method::POST,
            "",
            api.anon(),
            &[],
            Some(&json!({ "body": "from anon", "public": true })),
        )?;
        answer.expect("POST /rest/v1/notes as anon", &[401, 403])?;
        let after = api.read(api.service())?;
        ensure!(before == after, "rows changed: {before:?} → {after:?}");
        eprintln!("anon insert: HTTP {} {}", answer.status, answer.body);
        Ok(())
    });
}

/// The `X-Request-Id` sent comes back, and the worker logged a JSON line
/// with it.
fn request_id_check(
    api: &Api<'_>,
    stack: &Stack,
    containers: &[Container],
    request_id: &str,
) -> Result<()> {
    let answer = api.send(
        reqwest::Method::GET,
        "?select=id&order=id",
        api.anon(),
        &[("X-Request-Id", request_id)],
        None,
    )?;
    let echoed = answer
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    ensure!(
        echoed == request_id,
        "sent X-Request-Id {request_id}, got {echoed:?} (HTTP {})",
        answer.status
    );
    let worker = containers
        .iter()
        .find(|c| c.service == "worker")
        .context("no worker container")?;
    // Log lines are written as the request ends; give it a moment.
    for _ in 0..10 {
        let logs = stack.logs(&worker.name)?;
        let found = logs.lines().find(|line| {
            serde_json::from_str::<Value>(line)
                .is_ok_and(|v| v["request_id"].as_str() == Some(request_id))
        });
        if let Some(line) = found {
            eprintln!("worker log: {line}");
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    stack.print_logs(&worker.name, 20);
    bail!(
        "no JSON line with request_id {request_id} in `podman logs {}`",
        worker.name
    )
}

/// After down and up: control still knows the tenant and the SQL endpoint
/// shows the same rows.
fn persisted(http: &Http, control: &str, admin: &str, before: &Value) -> Result<()> {
    let bearer = format!("Bearer {admin}");
    let answer = http.send(
        reqwest::Method::GET,
        &format!("{control}/v1/tenants/{TENANT}"),
        &[("Authorization", &bearer)],
        None,
    )?;
    answer.expect("GET /v1/tenants/{id}", &[200])?;
    let after = snapshot(http, control, admin)?;
    ensure!(
        after == *before,
        "rows before down {before}, after up {after}"
    );
    Ok(())
}

/// After down and up: the REST API through the proxy returns the rows that
/// were there before.
fn persisted_rest(api: &Api<'_>, before: &Value) -> Result<()> {
    let through_proxy = api.read(api.service())?;
    let want = rows(before)?;
    ensure!(
        through_proxy == want,
        "through the proxy {through_proxy:?}, want {want:?}"
    );
    eprintln!(
        "tenant {TENANT} and its {} rows are still there",
        want.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The function reads the secret the step sets.
    #[test]
    fn the_function_reads_the_secret_set() {
        assert!(FUNCTION_SOURCE.contains(&format!("Deno.env.get(\"{FUNCTION_SECRET_NAME}\")")));
    }

    /// The log grep has no console password because the stack has none:
    /// when compose.yaml (or the override) starts passing one, the e2e must
    /// set it in its env file and add it to the credentials it greps for.
    #[test]
    fn the_stack_sets_no_console_password() -> Result<()> {
        for file in ["compose.yaml", OVERRIDE_FILE] {
            let text = std::fs::read_to_string(root().join(file))?;
            ensure!(
                !text.contains("MADBASE_CONSOLE_PASSWORD"),
                "{file} sets MADBASE_CONSOLE_PASSWORD: set it in Stack::write_env and \
                 add it to the credentials of no_credentials_logged"
            );
        }
        Ok(())
    }

    /// The override names exactly the stand-in images this file builds and
    /// leaves out exactly [`LEFT_OUT`].
    #[test]
    fn the_override_matches_the_stand_ins() -> Result<()> {
        let text = std::fs::read_to_string(root().join(OVERRIDE_FILE))?;
        let images: BTreeSet<String> = text
            .lines()
            .filter_map(|l| l.trim().strip_prefix("image: "))
            .map(str::to_owned)
            .collect();
        let want: BTreeSet<String> = STAND_INS.iter().map(StandIn::reference).collect();
        assert_eq!(images, want);
        let profiled = text
            .lines()
            .filter(|l| l.trim() == "profiles: [not-installable-here]")
            .count();
        assert_eq!(profiled, LEFT_OUT.len());
        for (service, _) in LEFT_OUT {
            assert!(
                text.contains(&format!("\n  {service}:\n    profiles:")),
                "{service}"
            );
        }
        for stand_in in &STAND_INS {
            assert!(
                text.contains(&format!(
                    "\n  {}:\n    image: {}",
                    stand_in.service,
                    stand_in.reference()
                )),
                "{}",
                stand_in.service
            );
        }
        Ok(())
    }

    #[test]
    fn started_and_left_out_cover_compose_yaml() -> Result<()> {
        let text = std::fs::read_to_string(root().join(crate::compose::COMPOSE_FILE))?;
        let services: BTreeSet<&str> = text
            .split_once("\nservices:\n")
            .map(|(_, s)| s)
            .unwrap_or_default()
            .lines()
            .take_while(|l| !l.starts_with("volumes:"))
            .filter_map(|l| l.strip_prefix("  ")?.strip_suffix(':'))
            .filter(|s| !s.starts_with(' '))
            .collect();
        let ours: BTreeSet<&str> = STARTED
            .iter()
            .copied()
            .chain(LEFT_OUT.iter().map(|(s, _)| *s))
            .collect();
        assert_eq!(services, ours);
        Ok(())
    }

    #[test]
    fn deadlines_bound_and_expire() {
        let d = Deadline::new(Duration::from_secs(60));
        assert!(
            d.bound(Duration::from_secs(5))
                .is_ok_and(|b| b <= Duration::from_secs(5))
        );
        assert!(
            d.bound(Duration::from_secs(600))
                .is_ok_and(|b| b <= Duration::from_secs(60))
        );
        let gone = Deadline(Instant::now() - Duration::from_secs(1));
        assert!(gone.bound(Duration::from_secs(5)).is_err());
    }

    #[test]
    fn bounded_commands_time_out() {
        let err = bounded_output(Command::new("sleep").arg("5"), Duration::from_millis(200));
        assert!(err.is_err());
        let out = bounded_ok(Command::new("echo").arg("hi"), Duration::from_secs(5));
        assert_eq!(out.ok().as_deref(), Some("hi\n"));
    }

    #[test]
    fn secrets_have_the_required_shapes() -> Result<()> {
        let s = Secrets::generate()?;
        let b64 = base64::engine::general_purpose::STANDARD;
        assert_eq!(b64.decode(&s.master_key)?.len(), 32);
        assert!(s.jwt.len() >= 32);
        assert!(
            s.postgres_password.len() == 64
                && s.postgres_password.bytes().all(|b| b.is_ascii_hexdigit())
        );
        assert!(!s.grafana_password.is_empty());
        Ok(())
    }
}
