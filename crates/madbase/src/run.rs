//! Running services: configuration, telemetry, listeners, shutdown.

use std::process::ExitCode;
use std::time::Duration;

use futures_util::future::BoxFuture;
use madbase_platform::config::{Env, LogFormat, Source};

use madbase_platform::telemetry::{self, TelemetryConfig};
use madbase_platform::{
    CancellationToken, CommonConfig, ConfigError, Listeners, Service, ServiceApp,
};

/// A service's configuration, read before anything starts.
pub(crate) enum Config {
    Proxy(madbase_proxy::Config),
    Control(madbase_control::Config),
    Worker(madbase_worker::Config),
    Functions(madbase_functions::Config),
}

impl Config {
    pub(crate) fn read<S: Source>(service: Service, env: &Env<S>) -> Result<Self, ConfigError> {
        Ok(match service {
            Service::Proxy => Config::Proxy(madbase_proxy::Config::from_env(env)?),
            Service::Control => Config::Control(madbase_control::Config::from_env(env)?),
            Service::Worker => Config::Worker(madbase_worker::Config::from_env(env)?),
            Service::Functions => Config::Functions(madbase_functions::Config::from_env(env)?),
        })
    }

    pub(crate) fn service(&self) -> Service {
        match self {
            Config::Proxy(_) => Service::Proxy,
            Config::Control(_) => Service::Control,
            Config::Worker(_) => Service::Worker,
            Config::Functions(_) => Service::Functions,
        }
    }

    pub(crate) fn common(&self) -> &CommonConfig {
        match self {
            Config::Proxy(c) => &c.common,
            Config::Control(c) => &c.common,
            Config::Worker(c) => &c.common,
            Config::Functions(c) => &c.common,
        }
    }

    async fn app(&self, local: &madbase_proxy::Local) -> anyhow::Result<ServiceApp> {
        match self {
            Config::Proxy(c) if c.in_process => madbase_proxy::app_with_local(c, local.clone()),
            Config::Proxy(c) => madbase_proxy::app(c),
            Config::Control(c) => madbase_control::app(c).await,
            Config::Worker(c) => madbase_worker::app(c),
            Config::Functions(c) => madbase_functions::app(c),
        }
    }
}

/// Runs `services` in this process until SIGTERM/SIGINT.
pub fn services(services: &[Service]) -> ExitCode {
    let env = Env::process();
    let name = match services {
        [one] => one.name(),
        _ => "dev",
    };
    let configs = match services
        .iter()
        .map(|s| Config::read(*s, &env))
        .collect::<Result<Vec<_>, _>>()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("madbase {name}: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    run_configs(name, configs)
}

/// Serves `configs` on a new runtime until SIGTERM/SIGINT.
fn run_configs(name: &str, configs: Vec<Config>) -> ExitCode {
    let runtime = match service_runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("madbase {name}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(serve(name, configs, None));
    // Blocking work still running (a DNS lookup for an unreachable trace
    // collector, say) must not hold the exit past the container's stop
    // timeout.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "madbase {name} failed");
            eprintln!("madbase {name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `madbase serve --all`: proxy, control, worker and functions in one
/// process (single-machine deployments), the proxy handing requests to the
/// worker and the functions service in-process (unless
/// `MADBASE_PROXY_IN_PROCESS=false`). Each service listens at
/// `MADBASE_<SERVICE>_LISTEN` / `MADBASE_<SERVICE>_ADMIN_LISTEN` (default:
/// its own ports on all interfaces; a global `MADBASE_LISTEN` cannot apply
/// to four services and is refused), and finds the others at
/// `MADBASE_<SERVICE>_URL`, by default their listen addresses on loopback.
/// Every other variable is shared, as when the services run apart.
pub fn all() -> ExitCode {
    let configs = match all_configs(&Env::process()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("madbase serve: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    run_configs("all", configs)
}

/// The four services' configurations for `madbase serve --all`.
pub(crate) fn all_configs<S: Source>(env: &Env<S>) -> Result<Vec<Config>, ConfigError> {
    for var in [
        madbase_platform::env::MADBASE_LISTEN,
        madbase_platform::env::MADBASE_ADMIN_LISTEN,
    ] {
        if env.raw(var).is_some() {
            return Err(ConfigError {
                var: var.to_owned(),
                problem: "cannot apply to four services: set MADBASE_PROXY_LISTEN, \
                          MADBASE_CONTROL_LISTEN, … (and _ADMIN_LISTEN) instead"
                    .to_owned(),
            });
        }
    }
    let mut listen = Vec::new();
    for service in Service::ALL {
        let prefix = service.name().to_ascii_uppercase();
        let api = env.socket_addr(
            &format!("MADBASE_{prefix}_LISTEN"),
            service.default_listen(),
        )?;
        let admin = env.socket_addr(
            &format!("MADBASE_{prefix}_ADMIN_LISTEN"),
            service.default_admin_listen(),
        )?;
        listen.push((service, api, admin));
    }
    let mut configs = Vec::new();
    for &(service, api, admin) in &listen {
        let mut own = std::collections::HashMap::new();
        own.insert(
            madbase_platform::env::MADBASE_LISTEN.to_owned(),
            api.to_string(),
        );
        own.insert(
            madbase_platform::env::MADBASE_ADMIN_LISTEN.to_owned(),
            admin.to_string(),
        );
        for &(other, other_api, _) in &listen {
            let var = format!("MADBASE_{}_URL", other.name().to_ascii_uppercase());
            if env.raw(&var).is_none() {
                own.insert(var, format!("http://{}", loopback(other_api)));
            }
        }
        configs.push(Config::read(service, &Env::new(Layered { own, env }))?);
    }
    Ok(configs)
}

/// One service's variables of `madbase serve --all`: its own first, then
/// the shared environment.
struct Layered<'a, S> {
    own: std::collections::HashMap<String, String>,
    env: &'a Env<S>,
}

impl<S: Source> Source for Layered<'_, S> {
    fn get(&self, name: &str) -> Option<String> {
        self.own.get(name).cloned().or_else(|| self.env.raw(name))
    }
}

/// A listen address as a client reaches it (0.0.0.0 → 127.0.0.1, :: → ::1).
fn loopback(addr: std::net::SocketAddr) -> std::net::SocketAddr {
    match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
            std::net::SocketAddr::from(([127, 0, 0, 1], addr.port()))
        }
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

/// The runtime that serves (`madbase <service>…` and `madbase dev`): its
/// workers write their log lines in batches (see
/// `telemetry::buffer_log_lines`).
pub(crate) fn service_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    telemetry::buffer_log_lines(&mut tokio::runtime::Builder::new_multi_thread())
        .enable_all()
        .build()
}

/// Runs once every service is listening (e.g. `madbase dev`'s demo tenant and banner).
pub(crate) type AfterStart = Box<dyn FnOnce() -> BoxFuture<'static, anyhow::Result<()>> + Send>;

/// Serves `configs` until SIGTERM/SIGINT (or one service fails).
pub(crate) async fn serve(
    name: &str,
    configs: Vec<Config>,
    after_start: Option<AfterStart>,
) -> anyhow::Result<()> {
    let first = configs
        .first()
        .map(Config::common)
        .ok_or_else(|| anyhow::anyhow!("no service"))?;
    let _telemetry = telemetry::init(&TelemetryConfig {
        service: name.to_owned(),
        log_filter: first.log_filter.clone(),
        log_format: first.log_format,
        otel: first.otel.clone(),
    })?;
    if first.log_format == LogFormat::Pretty {
        tracing::debug!("pretty logs enabled");
    }
    // Bind everything first, so a taken port fails before anything starts.
    let mut listeners = Vec::new();
    for config in &configs {
        let common = config.common();
        listeners.push(
            Listeners::bind(common.listen, common.admin_listen)
                .await?
                .with_limits(common.conn_limits),
        );
    }
    // The proxy last: it gets the routers of the worker and the functions
    // service running beside it, to call them in-process.
    let mut apps: Vec<Option<ServiceApp>> = Vec::new();
    let mut local = madbase_proxy::Local::default();
    for config in configs.iter().filter(|c| c.service() != Service::Proxy) {
        let app = config.app(&local).await?;
        let router = madbase_platform::server::api_router_with(&app, config.common().conn_limits);
        match config.service() {
            Service::Worker => local.worker = Some(router),
            Service::Functions => local.functions = Some(router),
            _ => {}
        }
        apps.push(Some(app));
    }
    let mut others = apps.into_iter();
    let mut bound = Vec::new();
    for (config, listeners) in configs.iter().zip(listeners) {
        let app = if config.service() == Service::Proxy {
            config.app(&local).await?
        } else {
            others
                .next()
                .flatten()
                .ok_or_else(|| anyhow::anyhow!("{} was not built", config.service().name()))?
        };
        bound.push((app, listeners, config.common().drain_timeout));
    }
    let shutdown = CancellationToken::new();
    madbase_platform::server::cancel_on_signal(shutdown.clone());
    let mut tasks = tokio::task::JoinSet::new();
    for (app, listeners, drain) in bound {
        let token = shutdown.clone();
        tasks.spawn(async move { listeners.serve(app, token, drain).await });
    }
    if let Some(hook) = after_start {
        let token = shutdown.clone();
        tasks.spawn(async move {
            // A failing hook stops everything, like a failing service.
            hook().await.inspect_err(|_| token.cancel())
        });
    }
    let mut result = Ok(());
    while let Some(joined) = tasks.join_next().await {
        let outcome = joined.map_err(anyhow::Error::from).and_then(|r| r);
        if let Err(e) = outcome {
            // One service failing stops the others.
            shutdown.cancel();
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    result
}

/// `madbase healthcheck`: 0 when the admin /health answers 200.
pub fn healthcheck(url: Option<String>, service: Option<Service>, timeout: f64) -> ExitCode {
    let url = match url {
        Some(u) => u,
        None => {
            let env = Env::process();
            let default = service.map_or(9000, Service::default_admin_port);
            let port = match env.socket_addr(
                madbase_platform::env::MADBASE_ADMIN_LISTEN,
                std::net::SocketAddr::from(([127, 0, 0, 1], default)),
            ) {
                Ok(addr) => addr.port(),
                Err(e) => {
                    eprintln!("madbase healthcheck: configuration error: {e}");
                    return ExitCode::from(2);
                }
            };
            if service.is_none()
                && env
                    .raw(madbase_platform::env::MADBASE_ADMIN_LISTEN)
                    .is_none()
            {
                eprintln!(
                    "madbase healthcheck: set --url, --service / MADBASE_SERVICE or MADBASE_ADMIN_LISTEN"
                );
                return ExitCode::from(2);
            }
            format!("http://127.0.0.1:{port}/health")
        }
    };
    let timeout = Duration::from_secs_f64(timeout.clamp(0.1, 300.0));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("madbase healthcheck: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let client = reqwest::Client::builder().timeout(timeout).build()?;
        client.get(&url).send().await
    });
    match result {
        Ok(resp) if resp.status().is_success() => ExitCode::SUCCESS,
        Ok(resp) => {
            eprintln!("madbase healthcheck: {url} answered {}", resp.status());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!(
                "madbase healthcheck: {url}: {}",
                madbase_platform::client::describe(&e)
            );
            ExitCode::FAILURE
        }
    }
}

/// `madbase token admin|internal [--ttl]`: prints a platform token signed
/// with `JWT_SECRET`.
#[allow(clippy::print_stdout)] // the token is the command's output
pub fn token(role: &str, ttl: Duration) -> ExitCode {
    use madbase_platform::secrets::ExposeSecret as _;
    match madbase_platform::secrets::jwt_secret(&Env::process()) {
        Ok(secret) => {
            println!(
                "{}",
                madbase_tenancy::jwt::platform_token(secret.expose_secret(), role, ttl)
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("madbase token: configuration error: {e}");
            ExitCode::from(2)
        }
    }
}

/// `madbase migrate`: applies the control database migrations and exits.
pub fn migrate() -> ExitCode {
    let config = match madbase_control::Config::from_env(&Env::process()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("madbase migrate: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("madbase migrate: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(madbase_control::connect_and_migrate(
        &config,
        config.connect_wait,
    )) {
        Ok(_) => {
            eprintln!("madbase migrate: the control database is up to date");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("madbase migrate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Parses `1h`, `30m`, `45s`, `2d` or plain seconds.
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = text.split_at(
        text.find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 1h, 30m or 45s"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86400,
        _ => return Err(format!("{text:?} is not a duration like 1h, 30m or 45s")),
    };
    if secs == 0 {
        return Err("the ttl must be positive".to_owned());
    }
    Ok(Duration::from_secs(secs))
}
