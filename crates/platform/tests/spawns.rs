//! Every long-lived task the services spawn runs under
//! `madbase_platform::tasks::supervise`; a task is spawned directly only
//! where it ends with its connection, request or the process. This test
//! counts the direct spawns in each service crate's sources (test modules
//! left out) and fails on one that is not listed here with its reason.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The crates whose tasks run inside the services.
const CRATES: &[&str] = &[
    "control",
    "functions",
    "js",
    "madbase",
    "platform",
    "proxy",
    "tenancy",
    "worker",
];

/// Files allowed to spawn directly, how many times, and why.
const ALLOWED: &[(&str, usize, &str)] = &[
    (
        "platform/src/tasks.rs",
        2,
        "the supervisor itself and each run it supervises",
    ),
    (
        "platform/src/server.rs",
        2,
        "one task per accepted connection; cancel_on_signal, which ends with the process",
    ),
    (
        "worker/src/conns.rs",
        1,
        "tokio-postgres' connection driver, ends with its connection",
    ),
    (
        "worker/src/tx.rs",
        1,
        "a request's transaction, ends with its request",
    ),
    (
        "functions/src/pool.rs",
        2,
        "an invocation, and a worker process' stderr reader (ends with the process)",
    ),
    (
        "functions/src/code.rs",
        1,
        "the reload of one changed tenant's cached code",
    ),
    (
        "proxy/src/forward.rs",
        1,
        "hyper's upstream connection driver, ends with its connection",
    ),
    ("js/src/fetch.rs", 1, "one fetch() request"),
    (
        "madbase/src/run.rs",
        2,
        "the listeners and the after-start hook, which end with the process",
    ),
];

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crates/")
        .to_path_buf()
}

fn rust_files(path: &Path, out: &mut Vec<PathBuf>) {
    if path.is_dir() {
        for entry in std::fs::read_dir(path).expect("readable").flatten() {
            rust_files(&entry.path(), out);
        }
    } else if path.extension().is_some_and(|e| e == "rs") {
        out.push(path.to_path_buf());
    }
}

/// Direct task spawns in `text` before its test module: `tokio::spawn(`,
/// `handle.spawn(…)`, a `JoinSet`'s `spawn(`; not `spawn_blocking`, a
/// process' `.spawn()` or a pool's own `spawn` method.
fn spawns(text: &str) -> usize {
    let code = text.split("#[cfg(test)]").next().unwrap_or(text);
    code.lines()
        .filter(|line| !line.trim_start().starts_with("//"))
        .map(|line| {
            line.match_indices("spawn(")
                .filter(|(at, _)| {
                    let before = &line[..*at];
                    let after = &line[at + "spawn(".len()..];
                    !after.starts_with(')')
                        && !before.ends_with("fn ")
                        && !before.ends_with("self.")
                        && !before.ends_with("thread::")
                })
                .count()
        })
        .sum()
}

#[test]
fn long_lived_tasks_are_supervised() {
    let root = crates_dir();
    let mut found = BTreeMap::new();
    for krate in CRATES {
        let mut files = Vec::new();
        rust_files(&root.join(krate).join("src"), &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).expect("readable");
            let n = spawns(&text);
            if n > 0 {
                let name = file
                    .strip_prefix(&root)
                    .expect("under crates/")
                    .to_string_lossy()
                    .replace('\\', "/");
                found.insert(name, n);
            }
        }
    }
    let allowed: BTreeMap<String, usize> = ALLOWED
        .iter()
        .map(|(file, n, _)| ((*file).to_owned(), *n))
        .collect();
    let unexpected: Vec<String> = found
        .iter()
        .filter(|(file, n)| allowed.get(*file).is_none_or(|max| *n > max))
        .map(|(file, n)| format!("{file}: {n}"))
        .collect();
    assert!(
        unexpected.is_empty(),
        "tasks spawned without madbase_platform::tasks::supervise (supervise \
         them, or list a per-connection/per-request spawn in ALLOWED with its reason): {unexpected:?}"
    );
}

#[test]
fn the_counter_sees_each_kind_of_spawn() {
    assert_eq!(spawns("tokio::spawn(async move {})"), 1);
    assert_eq!(spawns("rt.spawn(follow(x))"), 1);
    assert_eq!(spawns("tasks.spawn(async move { x })"), 1);
    assert_eq!(spawns("Command::new(x).spawn()"), 0);
    assert_eq!(spawns("tokio::task::spawn_blocking(f)"), 0);
    assert_eq!(spawns("fn spawn(&self)"), 0);
    assert_eq!(spawns("let w = self.spawn()?;"), 0);
    assert_eq!(spawns("// tokio::spawn(x)"), 0);
    assert_eq!(
        spawns("x();\n#[cfg(test)]\nmod tests { tokio::spawn(y); }"),
        0
    );
}
