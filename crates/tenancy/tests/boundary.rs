//! The tenancy contract is the only place that verifies tenant keys or asks
//! control about tenants: the other crates' sources are read for it.

use std::path::{Path, PathBuf};

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crates/")
        .to_path_buf()
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// `(crate, file, line)` of each line of another crate's `src/` or
/// manifest that contains one of `needles`.
fn found_outside(needles: &[&str], except: &[&str]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut crates: Vec<PathBuf> = std::fs::read_dir(crates_dir())
        .expect("crates/")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .collect();
    crates.sort();
    assert!(crates.len() >= 8, "the workspace's crates: {crates:?}");
    for dir in crates {
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if name == "tenancy" || except.contains(&name) {
            continue;
        }
        let mut files = vec![dir.join("Cargo.toml")];
        sources(&dir.join("src"), &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).expect("readable source");
            let lines: Vec<&str> = text.lines().collect();
            for (n, line) in lines.iter().enumerate() {
                let code = line.trim_start();
                // Comments may name things; a route a service serves
                // (`.route("/internal/v1/…"`) is not a call.
                let comment = code.starts_with("//");
                let route = code.contains(".route(")
                    || n > 0 && lines[n - 1].trim_end().ends_with(".route(");
                if !comment && !route && needles.iter().any(|needle| line.contains(needle)) {
                    hits.push(format!("{}:{}: {}", file.display(), n + 1, code));
                }
            }
        }
    }
    hits
}

#[test]
fn only_tenancy_decodes_tokens() {
    // The JWT library, its decoding, and the tenant-token checks built on it.
    // The fuzz harness (crates/fuzz) calls the checks to attack them; it
    // serves no request.
    let hits = found_outside(
        &[
            "jsonwebtoken",
            "jwt::verify(",
            "verify_tenant_token",
            "VerifiedTokens",
            "check_keys(",
        ],
        &["fuzz"],
    );
    assert!(
        hits.is_empty(),
        "token decoding outside madbase-tenancy:\n{}",
        hits.join("\n")
    );
}

#[test]
fn only_tenancy_asks_control_about_tenants() {
    // Control serves the internal API (and its change feed); every service
    // and the test kit ask through `TenantClient`/`internal_get`. xtask is
    // the outside observer: its end-to-end run checks control's answers.
    let hits = found_outside(&["internal/v1/"], &["control", "xtask"]);
    assert!(
        hits.is_empty(),
        "calls to control's internal API outside madbase-tenancy:\n{}",
        hits.join("\n")
    );
}

#[test]
fn the_check_sees_what_it_looks_for() {
    // The scan itself: tenancy's own sources name what the others must not.
    let own = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/jwt.rs"))
        .expect("jwt.rs");
    assert!(own.contains("jsonwebtoken::decode"));
    let tenants =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/tenants.rs"))
            .expect("tenants.rs");
    assert!(tenants.contains("/internal/v1/"));
    // And control, which serves the API, is found by the same scan.
    assert!(!found_outside(&["internal/v1/"], &[]).is_empty());
}
