//! `cargo xtask check-config`: static checks of the observability config in
//! `config/` (issue 8), with the tools that will load it where they exist here
//! and structural checks where they do not.
//!
//! - scrape configs: `vmagent -promscrape.config.dryRun`, `promtool check config`;
//! - alert rules: `promtool check rules`, `promtool test rules` (unit tests),
//!   `vmalert -dryRun` (MetricsQL and template validation), and every alert
//!   has a firing and a non-firing test case;
//! - Alertmanager: `amtool check-config`;
//! - Grafana, Loki: YAML parsed with PyYAML (`python3-yaml`), dashboards with
//!   `serde_json`, plus a structural check of every dashboard (uid, targets
//!   with `expr` and `refId`, provisioned datasource uids, defined variables)
//!   and a PromQL/MetricsQL syntax check of every dashboard query (as recording
//!   rules through `promtool check rules` and `vmalert -dryRun`);
//! - Alloy (`config/alloy.alloy`): no parser exists here, so a lexical check:
//!   balanced blocks and strings, and every `<component>.<label>.<export>`
//!   reference names a declared component.
//!
//! Tools: Debian packages `prometheus` (promtool), `prometheus-alertmanager`
//! (amtool), `victoria-metrics` (vmagent, vmalert), `python3-yaml`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::util::{files_with_ext, output, root, run, step};

const PROMETHEUS: &str = "config/prometheus.yml";
const VMAGENT: &str = "config/vmagent.yml";
const ALERTS: &str = "config/alerts.yml";
const ALERTS_TEST: &str = "config/alerts.test.yml";
const ALERTMANAGER: &str = "config/alertmanager.yml";
const LOKI: &str = "config/loki.yml";
const ALLOY: &str = "config/alloy.alloy";
const DATASOURCES: &str = "config/grafana/provisioning/datasources/datasources.yml";
const DASHBOARD_PROVIDERS: &str = "config/grafana/provisioning/dashboards/dashboards.yml";
const DASHBOARD_DIR: &str = "config/grafana/dashboards";
/// Where the dashboard provider reads the dashboards inside the Grafana container.
const DASHBOARD_MOUNT: &str = "/var/lib/grafana/dashboards";
/// The podman socket Alloy reads container logs from (as an Alloy string).
const PODMAN_SOCKET: &str = "\"unix:///run/podman/podman.sock\"";
/// Where the dashboard queries are written as recording rules for the syntax check.
const QUERY_RULES: &str = "target/xtask-check-config/dashboard-queries.rules.yml";

/// The scrape jobs, one per service (the `job` label is the service name).
const JOBS: &[(&str, &str)] = &[
    ("proxy", "proxy:9000"),
    ("control", "control:9001"),
    ("worker", "worker:9002"),
    ("functions", "functions:9003"),
    ("victoria-metrics", "victoria-metrics:8428"),
];
/// Datasource uids the dashboards may reference (provisioned in `DATASOURCES`).
const DATASOURCE_UIDS: &[&str] = &["victoriametrics", "loki", "tempo"];
/// Panel types that run no query.
const PANELS_WITHOUT_QUERY: &[&str] = &[
    "row",
    "text",
    "news",
    "dashlist",
    "alertlist",
    "annolist",
    "welcome",
];
/// Variables Grafana defines itself (never in `templating.list`).
pub const GRAFANA_BUILTINS: &[&str] = &[
    "__rate_interval",
    "__rate_interval_ms",
    "__interval",
    "__interval_ms",
    "__range",
    "__range_s",
    "__range_ms",
    "__from",
    "__to",
    "__dashboard",
    "__org",
    "__user",
];
/// Values the syntax check gives the variables (the live check chooses its own).
const CHECK_VALUES: &[(&str, &str)] = &[
    ("__rate_interval", "1m"),
    ("__rate_interval_ms", "60000"),
    ("__interval", "15s"),
    ("__interval_ms", "15000"),
    ("__range", "1h"),
    ("__range_s", "3600"),
    ("__range_ms", "3600000"),
    ("__from", "0"),
    ("__to", "0"),
];

/// `promtool test rules`: the alert rules' unit tests (the `alert-rules`
/// check, which `nix flake check` runs too).
pub fn test_rules() -> Result<()> {
    step("promtool test rules (alert unit tests)");
    run(Command::new("promtool").args(["test", "rules", ALERTS_TEST]))
}

/// Every check of the observability config; fails on the first failing tool,
/// or with the list of every structural problem found.
pub fn check() -> Result<()> {
    step("promtool check config (Prometheus scrape config, rule files)");
    run(Command::new("promtool").args(["check", "config", PROMETHEUS]))?;
    step("promtool check rules (alert rules)");
    run(Command::new("promtool").args(["check", "rules", ALERTS]))?;
    test_rules()?;
    step("vmagent dry run (scrape config)");
    run(Command::new("vmagent").args([
        &format!("-promscrape.config={VMAGENT}"),
        "-promscrape.config.dryRun",
        "-loggerLevel=ERROR",
    ]))?;
    step("vmalert dry run (alert rules)");
    vmalert_dry_run(ALERTS)?;
    step("amtool check-config (Alertmanager)");
    run(Command::new("amtool").args(["check-config", ALERTMANAGER]))?;

    step("YAML files (PyYAML) and their structure");
    let python = python_with_yaml()?;
    let yaml = |path: &str| yaml_to_json(&python, path);
    check_scrape_jobs(VMAGENT, &yaml(VMAGENT)?, false)?;
    check_scrape_jobs(PROMETHEUS, &yaml(PROMETHEUS)?, true)?;
    check_alert_tests(&yaml(ALERTS)?, &yaml(ALERTS_TEST)?)?;
    check_alertmanager(&yaml(ALERTMANAGER)?)?;
    check_loki(&yaml(LOKI)?)?;
    check_datasources(&yaml(DATASOURCES)?)?;
    check_dashboard_providers(&yaml(DASHBOARD_PROVIDERS)?)?;

    step("Alloy config (lexical check)");
    let alloy =
        std::fs::read_to_string(root().join(ALLOY)).with_context(|| format!("reading {ALLOY}"))?;
    check_alloy(&alloy).with_context(|| format!("{ALLOY} is not valid"))?;
    eprintln!("ok: {ALLOY}");

    step("Grafana dashboards (structure)");
    let dashboards = files_with_ext(DASHBOARD_DIR, ".json")?;
    if dashboards.is_empty() {
        bail!("no dashboard in {DASHBOARD_DIR}");
    }
    let mut uids = BTreeSet::new();
    let mut rules = Vec::new();
    for path in &dashboards {
        let uid = check_dashboard(path)?;
        if !uids.insert(uid.clone()) {
            bail!(
                "{}: dashboard uid {uid:?} is used by another dashboard",
                path.display()
            );
        }
        for (n, (title, expr)) in dashboard_queries(path)?.into_iter().enumerate() {
            let expr = substitute_variables(&expr, check_value)
                .with_context(|| format!("{}: panel {title:?}", path.display()))?;
            rules.push(json!({
                "record": format!("dashboard:{}:{}_{n}", identifier(&uid), identifier(&title)),
                "expr": expr,
            }));
        }
        eprintln!(
            "ok: {}",
            path.strip_prefix(root()).unwrap_or(path).display()
        );
    }

    step("Grafana dashboard queries (PromQL and MetricsQL syntax)");
    let rules_path = root().join(QUERY_RULES);
    if let Some(dir) = rules_path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // JSON is YAML: promtool and vmalert read it as a rule file.
    let file = json!({"groups": [{"name": "dashboard-queries", "rules": rules}]});
    std::fs::write(&rules_path, serde_json::to_string_pretty(&file)?)
        .with_context(|| format!("writing {}", rules_path.display()))?;
    // vmalert parses MetricsQL (what VictoriaMetrics runs) but not function
    // names or argument types; promtool checks those.
    vmalert_dry_run(QUERY_RULES)?;
    run(Command::new("promtool").args(["check", "rules", QUERY_RULES]))?;

    eprintln!("\ncheck-config: all observability config checks passed");
    Ok(())
}

/// The Prometheus queries of a dashboard, as `(panel title, expr)` in panel
/// order, panels nested in rows included, variables left as written (`$service`,
/// `$__rate_interval`, ...; see [`substitute_variables`]). Targets of other
/// datasources (the Loki logs panel) are left out: these are the queries a live
/// check runs against VictoriaMetrics.
pub fn dashboard_queries(path: &Path) -> Result<Vec<(String, String)>> {
    let dashboard = read_json(path)?;
    let mut out = Vec::new();
    for panel in all_panels(&dashboard) {
        let title = panel
            .get("title")
            .and_then(Value::as_str)
            .unwrap_or_default();
        for target in panel
            .get("targets")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(ds) = target.get("datasource").or_else(|| panel.get("datasource")) else {
                continue;
            };
            let is_prometheus = ds.get("type").and_then(Value::as_str) == Some("prometheus")
                || ds.get("uid").and_then(Value::as_str) == Some("victoriametrics");
            if !is_prometheus {
                continue;
            }
            if let Some(expr) = target.get("expr").and_then(Value::as_str) {
                out.push((title.to_owned(), expr.to_owned()));
            }
        }
    }
    Ok(out)
}

/// Replaces every Grafana variable of `expr` (`$name`, `${name}`,
/// `${name:format}`, `[[name]]`) by `value(name)`; fails on a variable that
/// `value` does not know.
pub fn substitute_variables(expr: &str, value: impl Fn(&str) -> Option<String>) -> Result<String> {
    let mut out = String::with_capacity(expr.len());
    let mut last = 0;
    for (start, end, name) in variables_in(expr) {
        let Some(v) = value(&name) else {
            bail!("no value for variable ${name} in {expr:?}");
        };
        out.push_str(&expr[last..start]);
        out.push_str(&v);
        last = end;
    }
    out.push_str(&expr[last..]);
    Ok(out)
}

/// The value the syntax check gives a variable: builtins get a duration, a
/// dashboard variable `.*` (every variable of the dashboards is a regex matcher).
fn check_value(name: &str) -> Option<String> {
    if let Some((_, v)) = CHECK_VALUES.iter().find(|(n, _)| *n == name) {
        return Some((*v).to_owned());
    }
    (!name.starts_with("__")).then(|| ".*".to_owned())
}

/// `(start, end, name)` of every variable reference in `expr`.
fn variables_in(expr: &str) -> Vec<(usize, usize, String)> {
    let bytes = expr.as_bytes();
    let is_name = |b: &u8| b.is_ascii_alphanumeric() || *b == b'_';
    // Index of the first `close` at or after `from` (every delimiter is ASCII,
    // so every index found is a char boundary).
    let find = |from: usize, close: &[u8]| {
        bytes[from..]
            .windows(close.len())
            .position(|w| w == close)
            .map(|p| from + p)
    };
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let rest = &bytes[i..];
        let found = if rest.starts_with(b"${") {
            // ${name} or ${name:format}
            find(i, b"}")
                .map(|end| (&expr[i + 2..end], end + 1))
                .map(|(inner, end)| (inner.split(':').next().unwrap_or_default(), end))
        } else if rest.starts_with(b"$") {
            let len = rest[1..].iter().take_while(|b| is_name(b)).count();
            Some((&expr[i + 1..i + 1 + len], i + 1 + len))
        } else if rest.starts_with(b"[[") {
            find(i, b"]]").map(|end| (&expr[i + 2..end], end + 2))
        } else {
            None
        };
        match found {
            Some((name, end))
                if !name.is_empty()
                    && name.bytes().all(|b| is_name(&b))
                    && !name.as_bytes()[0].is_ascii_digit() =>
            {
                out.push((i, end, name.to_owned()));
                i = end;
            }
            _ => i += 1,
        }
    }
    out
}

fn vmalert_dry_run(rules: &str) -> Result<()> {
    // -datasource.url is never contacted in a dry run; newer vmalert releases
    // refuse to start without it.
    run(Command::new("vmalert").args([
        &format!("-rule={rules}"),
        "-dryRun",
        "-datasource.url=http://127.0.0.1:8428",
        "-loggerLevel=ERROR",
    ]))
}

/// The first Python interpreter that has PyYAML (Debian's `python3-yaml` is
/// in `/usr/bin/python3`, which a pyenv or venv `python3` may hide).
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

/// Parses a YAML file with PyYAML (`safe_load`) and returns it as JSON.
fn yaml_to_json(python: &str, path: &str) -> Result<Value> {
    const SCRIPT: &str = "import json, sys, yaml\njson.dump(yaml.safe_load(open(sys.argv[1], encoding='utf-8')), sys.stdout, default=str)";
    let text = output(Command::new(python).args(["-c", SCRIPT, path]))
        .with_context(|| format!("{path} is not valid YAML"))?;
    let value = serde_json::from_str(&text)
        .with_context(|| format!("{path}: PyYAML output is not JSON"))?;
    eprintln!("ok: {path} (YAML)");
    Ok(value)
}

fn read_json(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn array_at<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn strings(values: &[Value]) -> Vec<&str> {
    values.iter().filter_map(Value::as_str).collect()
}

/// vmagent.yml and prometheus.yml scrape exactly `JOBS`, every 15s.
fn check_scrape_jobs(path: &str, config: &Value, prometheus: bool) -> Result<()> {
    let global = str_at(config, "/global/scrape_interval");
    let mut found = BTreeMap::new();
    for job in array_at(config, "/scrape_configs") {
        let name = str_at(job, "/job_name").unwrap_or_default();
        let interval = str_at(job, "/scrape_interval").or(global);
        if interval != Some("15s") {
            bail!("{path}: job {name:?} scrapes every {interval:?}, not 15s");
        }
        let targets: Vec<&str> = array_at(job, "/static_configs")
            .iter()
            .flat_map(|s| strings(array_at(s, "/targets")))
            .collect();
        found.insert(name.to_owned(), targets);
    }
    let want: BTreeMap<String, Vec<&str>> = JOBS
        .iter()
        .map(|(j, t)| ((*j).to_owned(), vec![*t]))
        .collect();
    if found != want {
        bail!("{path}: scrape jobs are {found:?}, expected {want:?}");
    }
    if prometheus {
        if !strings(array_at(config, "/rule_files")).contains(&"alerts.yml") {
            bail!("{path}: rule_files does not load alerts.yml");
        }
        let am: Vec<&str> = array_at(config, "/alerting/alertmanagers")
            .iter()
            .flat_map(|a| array_at(a, "/static_configs"))
            .flat_map(|s| strings(array_at(s, "/targets")))
            .collect();
        if am != ["alertmanager:9093"] {
            bail!("{path}: alerting goes to {am:?}, expected alertmanager:9093");
        }
    }
    Ok(())
}

/// Every alert has a severity, summary, description and runbook_url, and at
/// least one firing and one non-firing test case in alerts.test.yml.
fn check_alert_tests(rules: &Value, tests: &Value) -> Result<()> {
    let mut alerts = BTreeSet::new();
    for group in array_at(rules, "/groups") {
        for rule in array_at(group, "/rules") {
            let Some(name) = str_at(rule, "/alert") else {
                continue;
            };
            for key in [
                "/labels/severity",
                "/annotations/summary",
                "/annotations/description",
                "/annotations/runbook_url",
            ] {
                if str_at(rule, key).is_none_or(str::is_empty) {
                    bail!("{ALERTS}: alert {name} has no {key}");
                }
            }
            alerts.insert(name.to_owned());
        }
    }
    if alerts.is_empty() {
        bail!("{ALERTS}: no alert");
    }
    let (mut firing, mut quiet) = (BTreeSet::new(), BTreeSet::new());
    for test in array_at(tests, "/tests") {
        for case in array_at(test, "/alert_rule_test") {
            let name = str_at(case, "/alertname").unwrap_or_default().to_owned();
            if array_at(case, "/exp_alerts").is_empty() {
                quiet.insert(name);
            } else {
                firing.insert(name);
            }
        }
    }
    let mut problems = Vec::new();
    for alert in &alerts {
        if !firing.contains(alert) {
            problems.push(format!("alert {alert} has no firing test case"));
        }
        if !quiet.contains(alert) {
            problems.push(format!(
                "alert {alert} has no non-firing test case (exp_alerts: [])"
            ));
        }
    }
    for tested in firing.union(&quiet) {
        if !alerts.contains(tested) {
            problems.push(format!("test case for unknown alert {tested}"));
        }
    }
    if !problems.is_empty() {
        bail!("{ALERTS_TEST}:\n  {}", problems.join("\n  "));
    }
    Ok(())
}

fn check_alertmanager(config: &Value) -> Result<()> {
    let group_by = strings(array_at(config, "/route/group_by"));
    if !(group_by.contains(&"alertname") && group_by.contains(&"job")) {
        bail!("{ALERTMANAGER}: route.group_by is {group_by:?}, expected alertname and job");
    }
    Ok(())
}

fn check_loki(config: &Value) -> Result<()> {
    if config.pointer("/compactor/retention_enabled") != Some(&Value::Bool(true))
        || str_at(config, "/limits_config/retention_period").is_none()
    {
        bail!(
            "{LOKI}: retention is not enabled (compactor.retention_enabled, limits_config.retention_period)"
        );
    }
    Ok(())
}

fn check_datasources(config: &Value) -> Result<()> {
    let mut uids = BTreeSet::new();
    for ds in array_at(config, "/datasources") {
        let uid = str_at(ds, "/uid").unwrap_or_default();
        if str_at(ds, "/type").is_none() || str_at(ds, "/url").is_none() {
            bail!("{DATASOURCES}: datasource {uid:?} has no type or url");
        }
        uids.insert(uid);
    }
    let want: BTreeSet<&str> = DATASOURCE_UIDS.iter().copied().collect();
    if uids != want {
        bail!("{DATASOURCES}: datasource uids are {uids:?}, expected {want:?}");
    }
    Ok(())
}

fn check_dashboard_providers(config: &Value) -> Result<()> {
    let paths: Vec<&str> = array_at(config, "/providers")
        .iter()
        .filter_map(|p| str_at(p, "/options/path"))
        .collect();
    if paths != [DASHBOARD_MOUNT] {
        bail!(
            "{DASHBOARD_PROVIDERS}: provider paths are {paths:?}, expected [{DASHBOARD_MOUNT:?}]"
        );
    }
    Ok(())
}

/// Every panel of a dashboard, depth first, panels of collapsed rows included.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a [Value], out: &mut Vec<&'a Value>) {
        for panel in panels {
            out.push(panel);
            walk(array_at(panel, "/panels"), out);
        }
    }
    let mut out = Vec::new();
    walk(array_at(dashboard, "/panels"), &mut out);
    out
}

/// Structural check of one dashboard; returns its uid.
fn check_dashboard(path: &Path) -> Result<String> {
    let dashboard = read_json(path)?;
    let mut problems = Vec::new();
    let uid = str_at(&dashboard, "/uid").unwrap_or_default().to_owned();
    if uid.is_empty() {
        problems.push("no uid".to_owned());
    }
    if str_at(&dashboard, "/title").is_none_or(str::is_empty) {
        problems.push("no title".to_owned());
    }
    if dashboard
        .pointer("/schemaVersion")
        .and_then(Value::as_u64)
        .is_none()
    {
        problems.push("no schemaVersion".to_owned());
    }
    let check_ds = |ds: Option<&Value>, what: &str, problems: &mut Vec<String>| {
        // A datasource given as a plain string (a name, "${DS_...}") is not
        // portable: dashboards reference the provisioned uids.
        let Some(ds) = ds else { return };
        match ds.get("uid").and_then(Value::as_str) {
            Some(uid) if DATASOURCE_UIDS.contains(&uid) || uid == "-- Grafana --" => {}
            other => problems.push(format!(
                "{what}: datasource {other:?} is not one of {DATASOURCE_UIDS:?}"
            )),
        }
    };

    let mut variables = BTreeSet::new();
    for var in array_at(&dashboard, "/templating/list") {
        let name = str_at(var, "/name").unwrap_or_default();
        if name.is_empty() || !variables.insert(name.to_owned()) {
            problems.push(format!("variable {name:?} is unnamed or defined twice"));
        }
        if str_at(var, "/type") == Some("query") {
            check_ds(
                var.get("datasource"),
                &format!("variable {name}"),
                &mut problems,
            );
            let query = str_at(var, "/query").or_else(|| str_at(var, "/query/query"));
            if query.is_none_or(|q| q.trim().is_empty()) {
                problems.push(format!("variable {name} has no query"));
            }
        }
    }

    let mut ids = BTreeSet::new();
    for panel in all_panels(&dashboard) {
        let title = str_at(panel, "/title").unwrap_or_default();
        let kind = str_at(panel, "/type").unwrap_or_default();
        let what = format!("panel {title:?} ({kind})");
        if let Some(id) = panel.get("id").and_then(Value::as_u64)
            && !ids.insert(id)
        {
            problems.push(format!("{what}: id {id} is used twice"));
        }
        if title.is_empty() {
            problems.push(format!("{what}: no title"));
        }
        if PANELS_WITHOUT_QUERY.contains(&kind) {
            continue;
        }
        check_ds(panel.get("datasource"), &what, &mut problems);
        let targets = array_at(panel, "/targets");
        if targets.is_empty() {
            problems.push(format!("{what}: no targets"));
        }
        let mut ref_ids = BTreeSet::new();
        for target in targets {
            let ref_id = str_at(target, "/refId").unwrap_or_default();
            if ref_id.is_empty() || !ref_ids.insert(ref_id) {
                problems.push(format!(
                    "{what}: a target has an empty or repeated refId {ref_id:?}"
                ));
            }
            check_ds(
                target.get("datasource"),
                &format!("{what} target {ref_id}"),
                &mut problems,
            );
            let expr = str_at(target, "/expr").unwrap_or_default();
            if expr.trim().is_empty() {
                problems.push(format!("{what} target {ref_id}: empty expr"));
            }
            for (_, _, name) in variables_in(expr) {
                if !variables.contains(&name) && !GRAFANA_BUILTINS.contains(&name.as_str()) {
                    problems.push(format!(
                        "{what} target {ref_id}: ${name} is not defined in templating.list"
                    ));
                }
            }
        }
    }
    if !problems.is_empty() {
        bail!("{}:\n  {}", path.display(), problems.join("\n  "));
    }
    Ok(uid)
}

/// Lowercase letters, digits and `_` only: a valid part of a metric name.
fn identifier(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_matches('_').to_owned()
}

#[derive(Debug, PartialEq)]
enum Token {
    /// An identifier, dots included (`loki.process`, `discovery.docker.podman.targets`).
    Ident(String),
    Str,
    Punct(char),
}

/// Splits an Alloy config into tokens, skipping comments; fails on an
/// unterminated string or comment.
fn alloy_tokens(text: &str) -> Result<Vec<(usize, Token)>> {
    let chars: Vec<char> = text.chars().collect();
    let mut line = 1;
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c.is_whitespace() {
            i += 1;
        } else if c == '/' && next == Some('/') || c == '#' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let start = line;
            i += 2;
            loop {
                match chars.get(i) {
                    None => bail!("line {start}: unterminated /* comment"),
                    Some('*') if chars.get(i + 1) == Some(&'/') => break,
                    Some('\n') => line += 1,
                    Some(_) => {}
                }
                i += 1;
            }
            i += 2;
        } else if c == '"' || c == '`' {
            let start = line;
            i += 1;
            loop {
                match chars.get(i) {
                    None => bail!("line {start}: unterminated string"),
                    Some('\\') if c == '"' => i += 1,
                    Some('\n') if c == '"' => bail!("line {start}: newline in a string"),
                    Some('\n') => line += 1,
                    Some(&q) if q == c => break,
                    Some(_) => {}
                }
                i += 1;
            }
            i += 1;
            tokens.push((start, Token::Str));
        } else if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '.')
            {
                i += 1;
            }
            tokens.push((line, Token::Ident(chars[start..i].iter().collect())));
        } else {
            tokens.push((line, Token::Punct(c)));
            i += 1;
        }
    }
    Ok(tokens)
}

/// Balanced `{}`/`[]`/`()`, and every reference to a component export
/// (`loki.process.json.receiver`) names a component declared at top level
/// (`loki.process "json" { ... }`); every `host` is the podman socket.
fn check_alloy(text: &str) -> Result<()> {
    let tokens = alloy_tokens(text)?;
    let mut stack: Vec<(usize, char)> = Vec::new();
    let mut declared = BTreeSet::new();
    for (n, (line, token)) in tokens.iter().enumerate() {
        match token {
            Token::Punct(open @ ('{' | '[' | '(')) => {
                if *open == '{'
                    && stack.is_empty()
                    && n >= 2
                    && let (Token::Ident(component), Token::Str) =
                        (&tokens[n - 2].1, &tokens[n - 1].1)
                {
                    let label = label_at(text, tokens[n - 1].0, component);
                    declared.insert((component.clone(), label));
                }
                stack.push((*line, *open));
            }
            Token::Punct(close @ ('}' | ']' | ')')) => {
                let want = match close {
                    '}' => '{',
                    ']' => '[',
                    _ => '(',
                };
                match stack.pop() {
                    Some((_, open)) if open == want => {}
                    Some((at, open)) => {
                        bail!("line {line}: {close} closes the {open} of line {at}")
                    }
                    None => bail!("line {line}: unbalanced {close}"),
                }
            }
            _ => {}
        }
    }
    if let Some((line, open)) = stack.pop() {
        bail!("line {line}: {open} is never closed");
    }
    for (line, token) in &tokens {
        let Token::Ident(ident) = token else { continue };
        let parts: Vec<&str> = ident.split('.').collect();
        let [component @ .., label, export] = parts.as_slice() else {
            continue;
        };
        if component.len() < 2
            || !["receiver", "targets", "output", "rules", "exports"].contains(export)
        {
            continue;
        }
        if !declared.contains(&(component.join("."), (*label).to_owned())) {
            bail!(
                "line {line}: {ident} refers to {} {label:?}, which is not declared",
                component.join(".")
            );
        }
    }
    for component in [
        "discovery.docker",
        "loki.source.docker",
        "loki.process",
        "loki.write",
    ] {
        if !declared.iter().any(|(c, _)| c == component) {
            bail!("no {component} component");
        }
    }
    // Both the discovery and the log source talk to the podman socket.
    let hosts: Vec<&str> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("host"))
        .filter_map(|rest| rest.trim_start().strip_prefix('='))
        .map(str::trim)
        .collect();
    if hosts.len() < 2 || hosts.iter().any(|h| *h != PODMAN_SOCKET) {
        bail!("every `host` must be {PODMAN_SOCKET}, found {hosts:?}");
    }
    Ok(())
}

/// The label string of the block `component "label" {` declared on `line`.
fn label_at(text: &str, line: usize, component: &str) -> String {
    text.lines()
        .nth(line - 1)
        .and_then(|l| l.trim_start().strip_prefix(component))
        .and_then(|rest| rest.trim_start().strip_prefix('"'))
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_variable_syntax() {
        let names: Vec<String> =
            variables_in(r#"a{x=~"$a", y="${b}", z="${c:regex}"}[[d]] $1 $ ${ e"#)
                .into_iter()
                .map(|(_, _, n)| n)
                .collect();
        assert_eq!(names, ["a", "b", "c", "d"]);
    }

    #[test]
    fn substitutes_known_variables_and_refuses_unknown_ones() -> Result<()> {
        let expr = r#"rate(x{job=~"$service"}[$__rate_interval]) → ${tenant}"#;
        assert_eq!(
            substitute_variables(expr, check_value)?,
            r#"rate(x{job=~".*"}[1m]) → .*"#
        );
        assert!(substitute_variables("x[$__nope]", check_value).is_err());
        Ok(())
    }

    #[test]
    fn alloy_config_passes_and_broken_ones_fail() -> Result<()> {
        let text = std::fs::read_to_string(root().join(ALLOY))?;
        check_alloy(&text)?;
        let unclosed = text.replacen("loki.write \"loki\" {", "loki.write \"loki\" {{", 1);
        assert!(check_alloy(&unclosed).is_err());
        let dangling = text.replacen(
            "[loki.write.loki.receiver]",
            "[loki.write.nope.receiver]",
            1,
        );
        assert!(check_alloy(&dangling).is_err());
        let unterminated = format!("{text}\nx = \"open");
        assert!(check_alloy(&unterminated).is_err());
        Ok(())
    }

    #[test]
    fn dashboards_pass_and_broken_ones_fail() -> Result<()> {
        for path in files_with_ext(DASHBOARD_DIR, ".json")? {
            check_dashboard(&path)?;
            assert!(!dashboard_queries(&path)?.is_empty());
        }
        let overview = root().join(DASHBOARD_DIR).join("madbase-overview.json");
        let text = std::fs::read_to_string(&overview)?;
        let dir = std::env::temp_dir().join(format!("xtask-dashboards-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let broken = [
            text.replacen(r#""expr": "up{"#, r#""expr": "", "x": "up{"#, 1),
            text.replacen(r#""refId": "A""#, r#""refId": """#, 1),
            text.replacen(r#""uid": "victoriametrics""#, r#""uid": "prometheus""#, 1),
            text.replacen("$service", "$servcie", 1),
            text.replacen(r#""uid": "madbase-overview""#, r#""uid": """#, 1),
        ];
        for (n, bad) in broken.iter().enumerate() {
            assert_ne!(bad, &text, "case {n} changed nothing");
            let path = dir.join(format!("{n}.json"));
            std::fs::write(&path, bad)?;
            assert!(check_dashboard(&path).is_err(), "case {n} passed");
        }
        std::fs::remove_dir_all(&dir)?;
        Ok(())
    }
}
