//! The shared image description (`nix/images.toml`, read by the flake and by
//! `cargo xtask images`) checked against the binary.

use std::collections::BTreeMap;
use std::process::Command;
use std::str::FromStr as _;

use madbase_platform::Service;
use serde::Deserialize;

use crate::helpers::{BIN, base_env, start};

#[derive(Debug, Deserialize)]
struct Images {
    binary: String,
    env: BTreeMap<String, String>,
    healthcheck: Healthcheck,
    services: BTreeMap<String, ImageService>,
}

#[derive(Debug, Deserialize)]
struct Healthcheck {
    args: Vec<String>,
}

#[derive(Debug, Deserialize)]
struct ImageService {
    api_port: u16,
    admin_port: u16,
}

fn images() -> Images {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../nix/images.toml");
    let text = std::fs::read_to_string(path).expect("nix/images.toml");
    toml::from_str(&text).expect("nix/images.toml parses")
}

#[test]
fn image_description_matches_the_binary() {
    let images = images();
    assert_eq!(images.binary, "madbase");
    let names: Vec<&str> = images.services.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["control", "functions", "proxy", "worker"],
        "one image per service"
    );
    for (name, image) in &images.services {
        let service = Service::from_str(name).expect("a madbase service");
        assert_eq!(
            image.api_port,
            service.default_api_port(),
            "{name} api port"
        );
        assert_eq!(
            image.admin_port,
            service.default_admin_port(),
            "{name} admin port"
        );
        let help = Command::new(BIN)
            .args([name, "--help"])
            .output()
            .expect("run");
        assert!(help.status.success(), "`madbase {name}` is a subcommand");
    }
    let help = Command::new(BIN)
        .args(&images.healthcheck.args)
        .arg("--help")
        .output()
        .expect("run");
    assert!(help.status.success(), "healthcheck args form a subcommand");
}

#[test]
fn image_healthcheck_succeeds_against_each_running_service() {
    let images = images();
    for (name, image) in &images.services {
        let svc = start(name, &base_env(name));
        // The image sets MADBASE_SERVICE and MADBASE_ADMIN_LISTEN=0.0.0.0:<admin_port>;
        // here the admin port is a free one, passed the same way.
        let status = Command::new(BIN)
            .args(&images.healthcheck.args)
            .env_clear()
            .envs(&images.env)
            .env("MADBASE_SERVICE", name)
            .env(
                "MADBASE_ADMIN_LISTEN",
                format!("0.0.0.0:{}", svc.admin.port()),
            )
            .status()
            .expect("healthcheck");
        assert!(
            status.success(),
            "healthcheck of {name} (image port {})",
            image.admin_port
        );
        drop(svc);
        let after = Command::new(BIN)
            .args(&images.healthcheck.args)
            .args(["--timeout", "1"])
            .env_clear()
            .env("MADBASE_SERVICE", name)
            .env(
                "MADBASE_ADMIN_LISTEN",
                format!("0.0.0.0:{}", image.admin_port + 31000),
            )
            .status()
            .expect("healthcheck");
        assert_eq!(after.code(), Some(1), "{name}: nothing listens there");
    }
}
