//! `@supabase/postgrest-js` (npm) against the worker: `tests/js/compat.mjs`
//! exits non-zero on any mismatch.

use std::path::PathBuf;
use std::process::Command;

use crate::helpers::*;

#[tokio::test]
async fn postgrest_js_compatibility() {
    // For sandboxes without Node.js or the npm registry (e.g. a Nix check
    // that does not provide node_modules): an explicit opt-out, never implicit.
    if std::env::var_os("MADBASE_SKIP_JS_COMPAT").is_some() {
        eprintln!("MADBASE_SKIP_JS_COMPAT is set: postgrest-js compatibility not checked");
        return;
    }
    let s = Stack::start().await;
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    if !dir.join("node_modules/@supabase/postgrest-js").exists() {
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .output()
            .expect("npm (install Node.js and npm)");
        assert!(
            out.status.success(),
            "npm ci failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let script = dir.join("compat.mjs");
    let out = tokio::process::Command::new("node")
        .arg(&script)
        .env("WORKER_URL", &s.worker_url)
        .env("TENANT", &s.tenant)
        .env("ANON_KEY", &s.anon_key)
        .env("SERVICE_KEY", &s.service_key)
        .env("ALICE_TOKEN", s.user_token(ALICE))
        .env("ALICE", ALICE)
        .env("BOB", BOB)
        .output()
        .await
        .expect("node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "compat.mjs failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("compat: ok"), "{stdout}");
}
