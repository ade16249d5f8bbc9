//! `cargo xtask check-compose`: static checks of `compose.yaml`.
//!
//! 1. `check-jsonschema --builtin-schema vendor.compose-spec` (the compose
//!    specification's schema from SchemaStore).
//! 2. `podman-compose config` with throwaway values for the required secrets
//!    (and an empty env file, so a local `.env` cannot hide a problem); then
//!    once without each secret, which must fail and name it.
//! 3. The project's rules, on the file as written (PyYAML, merge keys
//!    resolved):
//!    - every `image:` has an exact tag: no `latest`, no tagless image, no
//!      variable; the madbase services use `<registry>/<service>:<version>`
//!      from `nix/images.toml` and `Cargo.toml`, pinned to the digest
//!      `nix/images.lock` records (`@sha256:…`);
//!    - every service has a `healthcheck` (`CMD` form, not disabled; the
//!      madbase ones run `/bin/madbase healthcheck`) and
//!      `restart: unless-stopped`;
//!    - only proxy, control and grafana publish ports, exactly 8000, 8001
//!      and 3000, each bound to `${MADBASE_BIND:-127.0.0.1}` with the host
//!      port `${MADBASE_PROXY_PORT:-8000}` (`MADBASE_CONTROL_PORT`,
//!      `MADBASE_GRAFANA_PORT`);
//!    - the secrets are only ever interpolated as `${VAR:?message}`;
//!    - `depends_on` names existing services, named volumes are declared and
//!      every bind mount of `./config` exists and is read-only.
//!
//! Needs `check-jsonschema`, `podman-compose` (with `podman`) and a
//! `python3` with PyYAML, all installed by `bash .ci/run`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::image_spec::ImageSpec;
use crate::podman::Podman;
use crate::util::{output, root, run, step};

/// The compose file, relative to the workspace root.
pub const COMPOSE_FILE: &str = "compose.yaml";

/// Secrets that must come from the environment, with a clear error if unset.
const SECRETS: [&str; 4] = [
    "JWT_SECRET",
    "MADBASE_MASTER_KEY",
    "POSTGRES_PASSWORD",
    "GRAFANA_ADMIN_PASSWORD",
];

/// The host address every published port binds.
const BIND: &str = "${MADBASE_BIND:-127.0.0.1}";

/// The only services that publish ports, the one port each publishes and
/// the variable that can move its host port.
const PUBLISHED: [(&str, u16, &str); 3] = [
    ("proxy", 8000, "MADBASE_PROXY_PORT"),
    ("control", 8001, "MADBASE_CONTROL_PORT"),
    ("grafana", 3000, "MADBASE_GRAFANA_PORT"),
];

/// The health check of the madbase images.
const MADBASE_HEALTHCHECK: [&str; 3] = ["CMD", "/bin/madbase", "healthcheck"];

/// The override that runs the madbase services on the Nix-built images.
pub const NIX_OVERRIDE: &str = "deploy/compose.nix.yaml";

/// Checks the workspace's `compose.yaml`, and `deploy/compose.nix.yaml`.
pub fn check() -> Result<()> {
    check_file(&root().join(COMPOSE_FILE))?;
    step(&format!("{NIX_OVERRIDE}: the madbase images by tag"));
    let doc = yaml_to_json(&root().join(NIX_OVERRIDE))?;
    let problems = nix_override(&doc, &ImageSpec::load()?, &workspace_version()?);
    if !problems.is_empty() {
        bail!("{NIX_OVERRIDE}:\n  {}", problems.join("\n  "));
    }
    eprintln!("ok: the four services, each `<registry>/<service>:<version>`");
    Ok(())
}

/// `deploy/compose.nix.yaml` names exactly the madbase services, each by
/// `<registry>/<service>:<version>` and nothing else.
fn nix_override(doc: &Value, spec: &ImageSpec, version: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(services) = doc.get("services").and_then(Value::as_object) else {
        return vec!["no `services`".to_owned()];
    };
    for name in spec.services.keys() {
        let want = serde_json::json!({ "image": format!("{}:{version}", spec.image_name(name)) });
        match services.get(name) {
            Some(got) if *got == want => {}
            got => problems.push(format!("{name}: {got:?}, want {want}")),
        }
    }
    for name in services.keys().filter(|n| !spec.services.contains_key(*n)) {
        problems.push(format!("{name}: not a madbase service"));
    }
    problems
}

/// Checks the compose file at `path` (relative paths in it are resolved
/// from its directory).
pub fn check_file(path: &Path) -> Result<()> {
    let shown = path.display().to_string();
    let mut failed = Vec::new();

    step(&format!("{shown}: check-jsonschema (compose-spec)"));
    if let Err(err) = run(Command::new("check-jsonschema")
        .args(["--builtin-schema", "vendor.compose-spec"])
        .arg(path))
    {
        eprintln!("{err:#}");
        failed.push("check-jsonschema");
    }

    step(&format!("{shown}: podman-compose config"));
    if let Err(err) = podman_compose_config(path) {
        eprintln!("{err:#}");
        failed.push("podman-compose config");
    }

    step(&format!("{shown}: project rules"));
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc = yaml_to_json(path)?;
    let spec = ImageSpec::load()?;
    let version = workspace_version()?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut problems = rules(&doc, &text, &spec, &version, base);
    problems.extend(pins(&doc, &crate::image_lock::load()?));
    if problems.is_empty() {
        eprintln!("ok: images pinned, health checks, restart policies, ports, secrets, volumes");
    } else {
        eprintln!("{shown}:\n  {}", problems.join("\n  "));
        failed.push("project rules");
    }

    if !failed.is_empty() {
        bail!("{shown}: {} failed", failed.join(", "));
    }
    Ok(())
}

/// `podman-compose config` succeeds with every secret set, and fails naming
/// the secret when one is missing.
fn podman_compose_config(path: &Path) -> Result<()> {
    let podman = Podman::setup()?;
    // An empty env file: a developer's `.env` must not satisfy the check.
    let empty_env = podman.dir().join("empty.env");
    std::fs::write(&empty_env, "")?;
    let compose = |without: Option<&str>| {
        let mut cmd = podman.compose();
        cmd.arg("--env-file")
            .arg(&empty_env)
            .arg("-f")
            .arg(path)
            .args(["config", "--quiet"]);
        for secret in SECRETS {
            if Some(secret) == without {
                cmd.env_remove(secret);
            } else {
                cmd.env(secret, dummy_secret(secret));
            }
        }
        cmd
    };

    output(&mut compose(None)).context("podman-compose config with every secret set")?;
    eprintln!("ok: podman-compose config");

    let mut problems = Vec::new();
    for secret in SECRETS {
        let out = compose(Some(secret))
            .output()
            .context("running podman-compose")?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let message = stderr.lines().last().unwrap_or_default();
        if out.status.success() {
            problems.push(format!("podman-compose config succeeds without {secret}"));
        } else if !message.contains(&format!("set {secret}")) {
            problems.push(format!(
                "without {secret}, podman-compose fails without saying `set {secret}`: {message}"
            ));
        } else {
            eprintln!("ok: without {secret}: {message}");
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("\n"));
    }
    Ok(())
}

/// A value that passes the services' own validation, never used to run
/// anything.
fn dummy_secret(name: &str) -> String {
    match name {
        // 32 bytes, base64.
        "MADBASE_MASTER_KEY" => "Y2hlY2stY29tcG9zZS1kdW1teS1tYXN0ZXIta2V5ISE=".to_owned(),
        _ => format!("check-compose-dummy-{}", "x".repeat(32)),
    }
}

/// `[workspace.package] version` of the root `Cargo.toml`.
fn workspace_version() -> Result<String> {
    let text = std::fs::read_to_string(root().join("Cargo.toml"))?;
    let cargo: toml::Value = toml::from_str(&text).context("Cargo.toml")?;
    cargo
        .get("workspace")
        .and_then(|w| w.get("package"))
        .and_then(|p| p.get("version"))
        .and_then(toml::Value::as_str)
        .map(str::to_owned)
        .context("Cargo.toml has no [workspace.package] version")
}

/// The project's rules; one line per problem.
fn rules(doc: &Value, text: &str, spec: &ImageSpec, version: &str, base: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    let Some(services) = doc.get("services").and_then(Value::as_object) else {
        return vec!["no `services`".to_owned()];
    };
    let declared_volumes: BTreeSet<&str> = doc
        .get("volumes")
        .and_then(Value::as_object)
        .map(|v| v.keys().map(String::as_str).collect())
        .unwrap_or_default();

    for name in spec.services.keys() {
        if !services.contains_key(name) {
            problems.push(format!("the madbase service `{name}` is missing"));
        }
    }

    for (name, service) in services {
        let madbase = spec.services.contains_key(name);
        check_image(name, service, madbase, spec, version, &mut problems);
        check_healthcheck(name, service, madbase, &mut problems);
        if service.get("restart").and_then(Value::as_str) != Some("unless-stopped") {
            problems.push(format!("{name}: restart must be `unless-stopped`"));
        }
        check_ports(name, service, &mut problems);
        check_depends_on(name, service, services, &mut problems);
        check_volumes(name, service, &declared_volumes, base, &mut problems);
    }
    for (name, _, _) in PUBLISHED {
        if !services.contains_key(name) {
            problems.push(format!("the service `{name}` is missing"));
        }
    }
    check_secrets(text, &mut problems);
    problems
}

/// Every image of `nix/images.lock` runs by its locked digest:
/// `image: <registry>/<service>:<version>@sha256:…`.
fn pins(doc: &Value, lock: &crate::image_lock::Lock) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, locked) in lock {
        let image = doc
            .get("services")
            .and_then(|s| s.get(name))
            .and_then(|s| s.get("image"))
            .and_then(Value::as_str);
        let want = locked.pinned();
        if image != Some(want.as_str()) {
            problems.push(format!(
                "{name}: image `{}`, but {} locks `{want}` (`{}` pins it)",
                image.unwrap_or_default(),
                crate::image_lock::LOCK_FILE,
                crate::image_lock::RELOCK
            ));
        }
    }
    problems
}

/// `name[:tag][@digest]` → the tag, if any (a registry port is not a tag).
fn image_tag(image: &str) -> Option<&str> {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    last.split_once(':').map(|(_, tag)| tag)
}

fn check_image(
    name: &str,
    service: &Value,
    madbase: bool,
    spec: &ImageSpec,
    version: &str,
    problems: &mut Vec<String>,
) {
    let Some(image) = service.get("image").and_then(Value::as_str) else {
        problems.push(format!("{name}: no `image`"));
        return;
    };
    if image.contains('$') {
        problems.push(format!("{name}: image `{image}` is not literal"));
        return;
    }
    match image_tag(image) {
        None => problems.push(format!("{name}: image `{image}` has no tag")),
        Some(tag)
            if tag.eq_ignore_ascii_case("latest") || !tag.bytes().any(|b| b.is_ascii_digit()) =>
        {
            problems.push(format!(
                "{name}: image `{image}` is not pinned to a version"
            ));
        }
        Some(_) => {}
    }
    if madbase {
        let want = format!("{}:{version}", spec.image_name(name));
        if image.split('@').next() != Some(want.as_str()) {
            problems.push(format!("{name}: image `{image}`, want `{want}`"));
        }
    }
}

fn check_healthcheck(name: &str, service: &Value, madbase: bool, problems: &mut Vec<String>) {
    let Some(hc) = service.get("healthcheck") else {
        problems.push(format!("{name}: no healthcheck"));
        return;
    };
    if hc.get("disable").and_then(Value::as_bool) == Some(true) {
        problems.push(format!("{name}: the healthcheck is disabled"));
        return;
    }
    let test: Vec<&str> = hc
        .get("test")
        .and_then(Value::as_array)
        .map(|t| t.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    match test.first() {
        Some(&"CMD") if test.len() > 1 => {}
        _ => problems.push(format!(
            "{name}: healthcheck test must be [\"CMD\", ...], got {:?}",
            hc.get("test")
        )),
    }
    if madbase && test != MADBASE_HEALTHCHECK {
        problems.push(format!(
            "{name}: healthcheck test must be {MADBASE_HEALTHCHECK:?}, got {test:?}"
        ));
    }
    for key in ["interval", "timeout", "retries"] {
        if hc.get(key).is_none() {
            problems.push(format!("{name}: healthcheck has no `{key}`"));
        }
    }
}

fn check_ports(name: &str, service: &Value, problems: &mut Vec<String>) {
    let ports = service
        .get("ports")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if service.get("network_mode").and_then(Value::as_str) == Some("host") {
        problems.push(format!("{name}: network_mode host publishes every port"));
    }
    let allowed = PUBLISHED
        .iter()
        .find(|(s, _, _)| *s == name)
        .map(|(_, p, v)| (*p, *v));
    let Some((port, var)) = allowed else {
        if !ports.is_empty() {
            problems.push(format!(
                "{name}: publishes ports {ports:?}; only proxy, control and grafana may"
            ));
        }
        return;
    };
    let want = format!("{BIND}:${{{var}:-{port}}}:{port}");
    let got: Vec<String> = ports
        .iter()
        .map(|p| match p {
            Value::String(s) => s.clone(),
            Value::Object(o) => format!(
                "{}:{}:{}",
                o.get("host_ip").and_then(Value::as_str).unwrap_or(""),
                o.get("published").map(value_text).unwrap_or_default(),
                o.get("target").map(value_text).unwrap_or_default(),
            ),
            other => other.to_string(),
        })
        .collect();
    if got != [want.clone()] {
        problems.push(format!(
            "{name}: ports must be exactly [\"{want}\"], got {got:?}"
        ));
    }
}

fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn check_depends_on(
    name: &str,
    service: &Value,
    services: &serde_json::Map<String, Value>,
    problems: &mut Vec<String>,
) {
    let deps: Vec<&str> = match service.get("depends_on") {
        None => Vec::new(),
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
        Some(Value::Object(map)) => map.keys().map(String::as_str).collect(),
        Some(other) => {
            problems.push(format!("{name}: depends_on is {other}"));
            Vec::new()
        }
    };
    for dep in deps {
        if !services.contains_key(dep) {
            problems.push(format!("{name}: depends on the unknown service `{dep}`"));
        }
    }
}

fn check_volumes(
    name: &str,
    service: &Value,
    declared: &BTreeSet<&str>,
    base: &Path,
    problems: &mut Vec<String>,
) {
    let volumes = service
        .get("volumes")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    for volume in volumes {
        let (source, options) = match volume {
            Value::String(s) => {
                let mut parts = s.splitn(3, ':');
                let source = parts.next().unwrap_or_default();
                let _target = parts.next();
                (
                    source.to_owned(),
                    parts.next().unwrap_or_default().to_owned(),
                )
            }
            Value::Object(o) => (
                o.get("source")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
                if o.get("read_only").and_then(Value::as_bool) == Some(true) {
                    "ro".to_owned()
                } else {
                    String::new()
                },
            ),
            other => {
                problems.push(format!("{name}: volume {other}"));
                continue;
            }
        };
        if source.starts_with('.') {
            let read_only = options.split(',').any(|o| o == "ro");
            if !read_only {
                problems.push(format!("{name}: bind mount of `{source}` is not read-only"));
            }
            if !base.join(&source).exists() {
                problems.push(format!("{name}: `{source}` does not exist"));
            }
        } else if !source.starts_with('/')
            && !source.starts_with('$')
            && !source.is_empty()
            && !declared.contains(source.as_str())
        {
            problems.push(format!(
                "{name}: volume `{source}` is not declared under top-level `volumes`"
            ));
        }
    }
}

/// Every interpolation of a secret is `${VAR:?message}`.
fn check_secrets(text: &str, problems: &mut Vec<String>) {
    for secret in SECRETS {
        let bare = format!("${secret}");
        let braced = format!("${{{secret}");
        let required = format!("${{{secret}:?");
        let uses = text.matches(&braced).count();
        if uses == 0 {
            problems.push(format!("{secret} is never used"));
        }
        if text.matches(&required).count() != uses {
            problems.push(format!(
                "{secret} must always be written `${{{secret}:?<how to set it>}}`"
            ));
        }
        // `$VAR` without braces (but not `$$`, an escaped dollar).
        let unbraced = text
            .match_indices(&bare)
            .filter(|(i, _)| !text[..*i].ends_with('$'))
            .filter(|(i, _)| {
                text[i + bare.len()..]
                    .chars()
                    .next()
                    .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'))
            })
            .count();
        if unbraced > 0 {
            problems.push(format!("{secret} is interpolated without `${{...:?}}`"));
        }
    }
}

/// The first Python interpreter that has PyYAML.
fn python_with_yaml() -> Result<String> {
    for python in ["python3", "/usr/bin/python3"] {
        let ok = Command::new(python)
            .args(["-c", "import yaml"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Ok(python.to_owned());
        }
    }
    bail!("no python3 with PyYAML: apt-get install python3-yaml")
}

/// Parses a YAML file with PyYAML (`safe_load`, merge keys resolved) and
/// returns it as JSON.
fn yaml_to_json(path: &Path) -> Result<Value> {
    const SCRIPT: &str = "import json, sys, yaml\njson.dump(yaml.safe_load(open(sys.argv[1], encoding='utf-8')), sys.stdout, default=str)";
    let python = python_with_yaml()?;
    let text = output(Command::new(python).args(["-c", SCRIPT]).arg(path))
        .with_context(|| format!("{} is not valid YAML", path.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: PyYAML output is not JSON", path.display()))
}

/// The path given on the command line, or the workspace's compose file.
#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
registry = "git.madapes.com/madbase"
source = "s"
vendor = "v"
licenses = "l"
binary = "madbase"
uid = 65532
gid = 65532
user_name = "madbase"
[env]
[healthcheck]
args = ["healthcheck"]
interval_seconds = 10
timeout_seconds = 3
start_period_seconds = 5
retries = 3
[services.proxy]
title = "t"
description = "d"
api_port = 8000
admin_port = 9000
"#;

    /// A minimal stack that follows every rule (as PyYAML would give it).
    fn good() -> Value {
        let hc = serde_json::json!({
            "test": ["CMD", "/bin/madbase", "healthcheck"],
            "interval": "10s", "timeout": "3s", "retries": 3
        });
        serde_json::json!({
            "services": {
                "proxy": {
                    "image": "git.madapes.com/madbase/proxy:0.1.0",
                    "restart": "unless-stopped",
                    "healthcheck": hc,
                    "ports": ["${MADBASE_BIND:-127.0.0.1}:${MADBASE_PROXY_PORT:-8000}:8000"],
                    "depends_on": {"postgres": {"condition": "service_healthy"}}
                },
                "control": {
                    "image": "localhost/control:1.0",
                    "restart": "unless-stopped",
                    "healthcheck": {"test": ["CMD", "true"], "interval": "1s", "timeout": "1s", "retries": 1},
                    "ports": ["${MADBASE_BIND:-127.0.0.1}:${MADBASE_CONTROL_PORT:-8001}:8001"]
                },
                "grafana": {
                    "image": "docker.io/grafana/grafana:12.4.3",
                    "restart": "unless-stopped",
                    "healthcheck": {"test": ["CMD", "curl", "x"], "interval": "1s", "timeout": "1s", "retries": 1},
                    "ports": ["${MADBASE_BIND:-127.0.0.1}:${MADBASE_GRAFANA_PORT:-3000}:3000"],
                    "volumes": ["grafana-data:/var/lib/grafana", "./src:/etc/x:ro,z"]
                },
                "postgres": {
                    "image": "registry.example:5000/library/postgres:17.10-bookworm",
                    "restart": "unless-stopped",
                    "healthcheck": {"test": ["CMD", "pg_isready"], "interval": "1s", "timeout": "1s", "retries": 1},
                    "volumes": ["postgres-data:/var/lib/postgresql/data"]
                }
            },
            "volumes": {"grafana-data": null, "postgres-data": null}
        })
    }

    const TEXT: &str = "JWT_SECRET: ${JWT_SECRET:?set it}\n\
        K: ${MADBASE_MASTER_KEY:?set it}\n\
        P: ${POSTGRES_PASSWORD:?set it}\n\
        G: ${GRAFANA_ADMIN_PASSWORD:?set it}\n";

    fn problems(doc: &Value, text: &str) -> Vec<String> {
        let spec = ImageSpec::parse(SPEC).expect("spec");
        // `./src` exists relative to the xtask crate.
        rules(
            doc,
            text,
            &spec,
            "0.1.0",
            Path::new(env!("CARGO_MANIFEST_DIR")),
        )
    }

    /// Applies `edit` to a copy of the good stack and returns the problems.
    fn broken(edit: impl FnOnce(&mut Value)) -> String {
        let mut doc = good();
        edit(&mut doc);
        problems(&doc, TEXT).join("\n")
    }

    #[test]
    fn the_nix_override_names_the_madbase_images_by_tag() {
        let spec = ImageSpec::parse(SPEC).expect("spec");
        let mut doc = serde_json::json!({"services": {}});
        for name in spec.services.keys() {
            doc["services"][name] =
                serde_json::json!({"image": format!("{}:0.1.0", spec.image_name(name))});
        }
        assert_eq!(nix_override(&doc, &spec, "0.1.0"), Vec::<String>::new());
        let e = nix_override(&doc, &spec, "0.2.0").join("\n");
        assert!(e.contains("proxy:") && e.contains(":0.2.0"), "{e}");
        doc["services"]["grafana"] = serde_json::json!({"image": "x:1"});
        let e = nix_override(&doc, &spec, "0.1.0").join("\n");
        assert!(e.contains("grafana: not a madbase service"), "{e}");
    }

    #[test]
    fn madbase_images_must_run_by_the_locked_digest() {
        let locked = crate::image_lock::Locked {
            image: "git.madapes.com/madbase/proxy:0.1.0".to_owned(),
            source: "src-0".to_owned(),
            id: "sha256:1".to_owned(),
            digest: "sha256:2".to_owned(),
            registry_digest: "sha256:3".to_owned(),
        };
        let lock = [("proxy".to_owned(), locked)].into_iter().collect();
        let mut doc = good();
        let e = pins(&doc, &lock).join("\n");
        assert!(
            e.contains("proxy: image `git.madapes.com/madbase/proxy:0.1.0`, but nix/images.lock locks `git.madapes.com/madbase/proxy:0.1.0@sha256:2`"),
            "{e}"
        );
        doc["services"]["proxy"]["image"] = "git.madapes.com/madbase/proxy:0.1.0@sha256:2".into();
        assert_eq!(pins(&doc, &lock), Vec::<String>::new());
        assert_eq!(problems(&doc, TEXT), Vec::<String>::new());
    }

    #[test]
    fn the_good_stack_passes() {
        assert_eq!(problems(&good(), TEXT), Vec::<String>::new());
    }

    #[test]
    fn image_tags_are_parsed() {
        assert_eq!(image_tag("postgres"), None);
        assert_eq!(image_tag("registry:5000/postgres"), None);
        assert_eq!(image_tag("registry:5000/postgres:17"), Some("17"));
        assert_eq!(image_tag("a/b:1.2@sha256:abc"), Some("1.2"));
    }

    #[test]
    fn unpinned_images_are_reported() {
        let e = broken(|d| d["services"]["grafana"]["image"] = "grafana/grafana:latest".into());
        assert!(
            e.contains("grafana: image `grafana/grafana:latest` is not pinned"),
            "{e}"
        );
        let e = broken(|d| d["services"]["grafana"]["image"] = "grafana/grafana".into());
        assert!(e.contains("has no tag"), "{e}");
        let e = broken(|d| d["services"]["grafana"]["image"] = "grafana/grafana:${V}".into());
        assert!(e.contains("is not literal"), "{e}");
        let e = broken(|d| {
            d["services"]["proxy"]["image"] = "git.madapes.com/madbase/proxy:0.0.9".into()
        });
        assert!(
            e.contains("want `git.madapes.com/madbase/proxy:0.1.0`"),
            "{e}"
        );
    }

    #[test]
    fn missing_health_checks_and_restart_policies_are_reported() {
        let e = broken(|d| {
            if let Some(s) = d["services"]["postgres"].as_object_mut() {
                s.remove("healthcheck");
            }
        });
        assert!(e.contains("postgres: no healthcheck"), "{e}");
        let e = broken(|d| {
            d["services"]["postgres"]["healthcheck"] = serde_json::json!({"disable": true})
        });
        assert!(e.contains("postgres: the healthcheck is disabled"), "{e}");
        let e = broken(|d| {
            d["services"]["proxy"]["healthcheck"]["test"] =
                serde_json::json!(["CMD-SHELL", "curl x"])
        });
        assert!(
            e.contains("proxy: healthcheck test must be [\"CMD\""),
            "{e}"
        );
        let e = broken(|d| d["services"]["postgres"]["restart"] = "always".into());
        assert!(
            e.contains("postgres: restart must be `unless-stopped`"),
            "{e}"
        );
    }

    #[test]
    fn published_ports_are_restricted() {
        let e = broken(|d| {
            d["services"]["postgres"]["ports"] = serde_json::json!(["127.0.0.1:5432:5432"])
        });
        assert!(e.contains("postgres: publishes ports"), "{e}");
        let e = broken(|d| d["services"]["proxy"]["ports"] = serde_json::json!(["8000:8000"]));
        assert!(e.contains("proxy: ports must be exactly"), "{e}");
        let e = broken(|d| {
            d["services"]["proxy"]["ports"] =
                serde_json::json!(["${MADBASE_BIND:-127.0.0.1}:8000:8000"])
        });
        assert!(e.contains("proxy: ports must be exactly"), "{e}");
        let e = broken(|d| {
            d["services"]["proxy"]["ports"] = serde_json::json!([
                "${MADBASE_BIND:-127.0.0.1}:${MADBASE_PROXY_PORT:-8000}:8000",
                "${MADBASE_BIND:-127.0.0.1}:9000:9000"
            ])
        });
        assert!(e.contains("proxy: ports must be exactly"), "{e}");
        let e = broken(|d| d["services"]["postgres"]["network_mode"] = "host".into());
        assert!(e.contains("network_mode host"), "{e}");
    }

    #[test]
    fn unknown_dependencies_and_undeclared_volumes_are_reported() {
        let e = broken(|d| d["services"]["proxy"]["depends_on"] = serde_json::json!(["nope"]));
        assert!(e.contains("depends on the unknown service `nope`"), "{e}");
        let e = broken(|d| d["services"]["postgres"]["volumes"] = serde_json::json!(["pg:/data"]));
        assert!(e.contains("volume `pg` is not declared"), "{e}");
        let e =
            broken(|d| d["services"]["grafana"]["volumes"] = serde_json::json!(["./src:/etc/x"]));
        assert!(e.contains("bind mount of `./src` is not read-only"), "{e}");
        let e = broken(|d| {
            d["services"]["grafana"]["volumes"] = serde_json::json!(["./nope:/etc/x:ro"])
        });
        assert!(e.contains("`./nope` does not exist"), "{e}");
    }

    #[test]
    fn secrets_without_a_required_error_are_reported() {
        let text = TEXT.replace("${JWT_SECRET:?set it}", "${JWT_SECRET:-dev}");
        let e = problems(&good(), &text).join("\n");
        assert!(e.contains("JWT_SECRET must always be written"), "{e}");
        let text = format!("{TEXT}X: $POSTGRES_PASSWORD\n");
        let e = problems(&good(), &text).join("\n");
        assert!(
            e.contains("POSTGRES_PASSWORD is interpolated without"),
            "{e}"
        );
        let text = TEXT.replace("G: ${GRAFANA_ADMIN_PASSWORD:?set it}\n", "");
        let e = problems(&good(), &text).join("\n");
        assert!(e.contains("GRAFANA_ADMIN_PASSWORD is never used"), "{e}");
    }

    #[test]
    fn a_missing_madbase_service_is_reported() {
        let e = broken(|d| {
            if let Some(s) = d["services"].as_object_mut() {
                s.remove("proxy");
            }
        });
        assert!(e.contains("the madbase service `proxy` is missing"), "{e}");
    }
}
