//! `cargo xtask push`: the service images into an OCI registry, by digest.
//!
//! The one command the CI workflow calls on `main` (and the registry test of
//! `cargo xtask e2e` runs against a real `docker-registry` on loopback):
//!
//! 1. Each `<service>.tar` docker-archive (from `cargo xtask images`, or the
//!    Nix-built ones with `--images DIR`) becomes a `dir:` layout of
//!    `skopeo` (`manifest.json`, one file per blob): its layers gzip-compressed
//!    with `gzip -n` (no name, no time: the same bytes every run) and a Docker
//!    v2 schema 2 manifest written here. The image's digest is therefore known
//!    before anything is pushed: the sha256 of that manifest.
//! 2. `skopeo login --password-stdin` with `REGISTRY_USER`/`REGISTRY_PASSWORD`
//!    into an auth file in a private temporary directory, removed afterwards
//!    (also on failure).
//! 3. `skopeo copy --preserve-digests dir:… docker://HOST/NS/<service>:<tag>`
//!    for the commit (the image's `org.opencontainers.image.revision` label)
//!    and the version (`org.opencontainers.image.version`); skopeo refuses
//!    rather than change the digest, and the digest it reports must be the one
//!    computed in step 1. Pushing the same image again uploads nothing (the
//!    blobs exist) and rewrites the same manifest: nothing changes.
//! 4. The digests go to a JSON file (`--digests-file`), and optionally to a
//!    compose override pinning every service to `HOST/NS/<service>@sha256:…`
//!    (`--compose-override`), the file production runs with.
//!
//! Auth and network failures are reported as such, with skopeo's words.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;
use serde_json::Value;

use crate::image_spec::ImageSpec;
use crate::images::sha256_hex;
use crate::util::{root, step};

/// Docker v2 schema 2 media types (podman keeps the image's health check
/// only in the Docker format).
const MANIFEST_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
const CONFIG_TYPE: &str = "application/vnd.docker.container.image.v1+json";
const LAYER_TYPE: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// What `cargo xtask push` is asked to do.
#[derive(Debug, Clone)]
pub struct PushArgs {
    /// `HOST[:PORT]/NAMESPACE`: images go to `<registry>/<service>`.
    pub registry: String,
    /// The directory holding `<service>.tar` for every service.
    pub images: PathBuf,
    /// Where the pushed digests are written (JSON).
    pub digests_file: PathBuf,
    /// Also write a compose override pinning the images by digest.
    pub compose_override: Option<PathBuf>,
    /// A directory of CA certificates (`*.crt`) for the registry's TLS.
    pub cert_dir: Option<PathBuf>,
    /// `false` only for a plain-HTTP registry on loopback.
    pub tls_verify: bool,
}

/// `cargo xtask push`'s command line.
#[derive(Debug, clap::Args)]
pub struct PushCli {
    /// `HOST[:PORT]/NAMESPACE`; images go to `<registry>/<service>`.
    #[arg(long)]
    registry: String,
    /// The directory holding `<service>.tar` docker-archives (default:
    /// build them with `cargo xtask images` into target/images).
    #[arg(long)]
    images: Option<PathBuf>,
    /// Where the pushed digests go (JSON).
    #[arg(long, default_value = "target/images/pushed.json")]
    digests_file: PathBuf,
    /// Also write a compose override pinning every service by digest.
    #[arg(long)]
    compose_override: Option<PathBuf>,
    /// A directory of CA certificates (`*.crt`) for the registry.
    #[arg(long)]
    cert_dir: Option<PathBuf>,
    /// Verify the registry's TLS certificate (`false` only for a plain-HTTP
    /// registry on loopback).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    tls_verify: bool,
}

/// `cargo xtask push`: the images (built first unless `--images` is given)
/// with credentials from the environment.
pub fn push_cli(cli: PushCli) -> Result<()> {
    registry_host(&cli.registry)?;
    let creds = Credentials::from_env()?;
    let images = match cli.images {
        Some(dir) => dir,
        None => {
            crate::images::build()?;
            root().join("target/images")
        }
    };
    push(
        &PushArgs {
            registry: cli.registry,
            images,
            digests_file: cli.digests_file,
            compose_override: cli.compose_override,
            cert_dir: cli.cert_dir,
            tls_verify: cli.tls_verify,
        },
        &creds,
    )
    .map(drop)
}

/// The credentials, from `REGISTRY_USER` and `REGISTRY_PASSWORD`.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    pub fn from_env() -> Result<Self> {
        let get = |name: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .with_context(|| {
                    format!("{name} is not set: push needs REGISTRY_USER and REGISTRY_PASSWORD")
                })
        };
        Ok(Credentials {
            user: get("REGISTRY_USER")?,
            password: get("REGISTRY_PASSWORD")?,
        })
    }
}

/// One pushed image.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Pushed {
    /// `sha256:<hex>` of the manifest.
    pub digest: String,
    /// `<registry>/<service>@<digest>`.
    pub reference: String,
    /// The tags pushed.
    pub tags: Vec<String>,
    /// The image ID (`sha256:<hex>` of the config), what `podman images`
    /// shows once the image is pulled.
    pub image_id: String,
}

/// The digests file.
#[derive(Debug, Clone, Serialize)]
pub struct Release {
    pub registry: String,
    pub images: BTreeMap<String, Pushed>,
}

/// An image as a skopeo `dir:` layout, ready to push.
#[derive(Debug, Clone)]
pub struct Layout {
    pub service: String,
    pub dir: PathBuf,
    /// `sha256:<hex>` of `manifest.json`.
    pub digest: String,
    /// `sha256:<hex>` of the config.
    pub image_id: String,
    /// The tags: the revision and version labels of the image.
    pub tags: Vec<String>,
}

/// Pushes every service image of `nix/images.toml` from `args.images`.
pub fn push(args: &PushArgs, creds: &Credentials) -> Result<Release> {
    let host = registry_host(&args.registry)?;
    let spec = ImageSpec::load()?;

    // The auth file lives in a private directory that is removed on return.
    let private = tempfile::Builder::new()
        .prefix("madbase-push-")
        .tempdir()
        .context("creating a private directory for the registry auth file")?;
    let authfile = private.path().join("auth.json");
    step(&format!("skopeo login {host} (as {})", creds.user));
    login(args, host, creds, &authfile)?;

    let work = root().join("target/push");
    let mut layouts = Vec::new();
    for service in spec.services.keys() {
        let archive = args.images.join(format!("{service}.tar"));
        layouts.push(layout(service, &archive, &work.join(service))?);
    }

    let mut release = Release {
        registry: args.registry.clone(),
        images: BTreeMap::new(),
    };
    for layout in &layouts {
        let name = format!("{}/{}", args.registry, layout.service);
        for tag in &layout.tags {
            let dest = format!("{name}:{tag}");
            step(&format!("skopeo copy {dest}"));
            let reported = copy(args, &authfile, &layout.dir, &dest, private.path())?;
            ensure!(
                reported == layout.digest,
                "{dest}: the registry stored digest {reported}, but the image's manifest is {}",
                layout.digest
            );
            eprintln!("pushed {dest}@{reported}");
        }
        release.images.insert(
            layout.service.clone(),
            Pushed {
                digest: layout.digest.clone(),
                reference: format!("{name}@{}", layout.digest),
                tags: layout.tags.clone(),
                image_id: layout.image_id.clone(),
            },
        );
    }
    drop(private);

    write_file(
        &args.digests_file,
        &(serde_json::to_string_pretty(&release)? + "\n"),
    )?;
    eprintln!("digests: {}", args.digests_file.display());
    if let Some(path) = &args.compose_override {
        write_file(path, &compose_override(&release))?;
        eprintln!("compose override: {}", path.display());
    }
    Ok(release)
}

/// The host part of `HOST[:PORT]/NAMESPACE`.
fn registry_host(registry: &str) -> Result<&str> {
    let (host, namespace) = registry.split_once('/').with_context(|| {
        format!("--registry {registry:?}: expected HOST[:PORT]/NAMESPACE, e.g. registry.example.com/madbase")
    })?;
    ensure!(
        !host.is_empty()
            && !namespace.is_empty()
            && registry
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-/:".contains(&b))
            && !namespace.contains(':'),
        "--registry {registry:?}: expected HOST[:PORT]/NAMESPACE of letters, digits, '.', '_', '-'"
    );
    Ok(host)
}

fn tls_args(args: &PushArgs, cert_flag: &str, verify_flag: &str) -> Vec<String> {
    let mut out = vec![format!("{verify_flag}={}", args.tls_verify)];
    if let Some(dir) = &args.cert_dir {
        out.push(cert_flag.to_owned());
        out.push(dir.display().to_string());
    }
    out
}

fn login(args: &PushArgs, host: &str, creds: &Credentials, authfile: &Path) -> Result<()> {
    let mut child = Command::new("skopeo")
        .arg("login")
        .arg("--authfile")
        .arg(authfile)
        .args(tls_args(args, "--cert-dir", "--tls-verify"))
        .args(["--username", &creds.user, "--password-stdin", host])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start skopeo (apt install skopeo; `bash .ci/run` installs it)")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(creds.password.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        return Ok(());
    }
    let said = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    bail!("{}", explain(host, &creds.user, &said))
}

/// skopeo's failure, said plainly: refused credentials, an unreachable
/// registry, or a TLS problem.
fn explain(host: &str, user: &str, said: &str) -> String {
    let lower = said.to_ascii_lowercase();
    if lower.contains("unauthorized")
        || lower.contains("authentication required")
        || lower.contains("invalid username/password")
        || lower.contains("401")
    {
        format!(
            "registry {host} refused the credentials of user {user:?} (check REGISTRY_USER and REGISTRY_PASSWORD): {said}"
        )
    } else if lower.contains("certificate") || lower.contains("x509") || lower.contains("tls") {
        format!("TLS to registry {host} failed (give its CA with --cert-dir): {said}")
    } else if lower.contains("connection refused")
        || lower.contains("no such host")
        || lower.contains("i/o timeout")
        || lower.contains("network is unreachable")
        || lower.contains("dial tcp")
    {
        format!("cannot reach registry {host}: {said}")
    } else {
        format!("registry {host}: {said}")
    }
}

/// `skopeo copy --preserve-digests dir:<layout> docker://<dest>`; returns
/// the digest skopeo reports.
fn copy(args: &PushArgs, authfile: &Path, layout: &Path, dest: &str, tmp: &Path) -> Result<String> {
    let digestfile = tmp.join("digest");
    let _ = std::fs::remove_file(&digestfile);
    let out = Command::new("skopeo")
        .arg("copy")
        .arg("--preserve-digests")
        .arg("--dest-authfile")
        .arg(authfile)
        .args(tls_args(args, "--dest-cert-dir", "--dest-tls-verify"))
        .arg("--digestfile")
        .arg(&digestfile)
        .arg(format!("dir:{}", layout.display()))
        .arg(format!("docker://{dest}"))
        .stdin(Stdio::null())
        .output()
        .context("cannot start skopeo (apt install skopeo; `bash .ci/run` installs it)")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprint!("{text}");
    if !out.status.success() {
        let host = dest.split('/').next().unwrap_or(dest);
        bail!("pushing {dest}: {}", explain(host, "", text.trim()));
    }
    let digest = std::fs::read_to_string(&digestfile)
        .with_context(|| format!("skopeo wrote no digest for {dest}"))?;
    Ok(digest.trim().to_owned())
}

/// A docker-archive as a skopeo `dir:` layout in `dir` (rewritten only when
/// its content changes).
pub fn layout(service: &str, archive: &Path, dir: &Path) -> Result<Layout> {
    let entries = read_archive(archive)?;
    let manifest: Value = serde_json::from_slice(
        entries
            .get("manifest.json")
            .with_context(|| format!("{}: no manifest.json", archive.display()))?,
    )
    .with_context(|| format!("{}: manifest.json", archive.display()))?;
    let entry = manifest
        .as_array()
        .filter(|m| m.len() == 1)
        .and_then(|m| m.first())
        .with_context(|| format!("{}: expected one image in manifest.json", archive.display()))?;
    let config_name = entry["Config"]
        .as_str()
        .context("manifest.json has no Config")?;
    let config = entries
        .get(config_name)
        .with_context(|| format!("{}: no {config_name}", archive.display()))?;
    let config_json: Value = serde_json::from_slice(config).context("the image config")?;
    let labels = &config_json["config"]["Labels"];
    let mut tags = Vec::new();
    for label in [
        "org.opencontainers.image.revision",
        "org.opencontainers.image.version",
    ] {
        let tag = labels[label]
            .as_str()
            .with_context(|| format!("{service}: the image has no {label} label"))?;
        ensure!(
            valid_tag(tag),
            "{service}: label {label} = {tag:?} is not a valid image tag"
        );
        if !tags.iter().any(|t| t == tag) {
            tags.push(tag.to_owned());
        }
    }

    std::fs::create_dir_all(dir)?;
    let mut blobs: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut layers = Vec::new();
    for name in entry["Layers"]
        .as_array()
        .context("manifest.json has no Layers")?
    {
        let name = name.as_str().context("a layer name is not a string")?;
        let tar = entries
            .get(name)
            .with_context(|| format!("{}: no {name}", archive.display()))?;
        let gz = if tar.starts_with(&[0x1f, 0x8b]) {
            tar.clone()
        } else {
            gzip(tar)?
        };
        let digest = format!("sha256:{}", sha256_hex(&gz));
        layers.push(Descriptor {
            media_type: LAYER_TYPE,
            size: gz.len() as u64,
            digest: digest.clone(),
        });
        blobs.insert(digest, gz);
    }
    let image_id = format!("sha256:{}", sha256_hex(config));
    let manifest = Manifest {
        schema_version: 2,
        media_type: MANIFEST_TYPE,
        config: Descriptor {
            media_type: CONFIG_TYPE,
            size: config.len() as u64,
            digest: image_id.clone(),
        },
        layers,
    };
    let manifest = serde_json::to_vec_pretty(&manifest)?;
    blobs.insert(image_id.clone(), config.clone());

    // skopeo's dir: transport: `version`, `manifest.json`, blobs by hex.
    write_bytes(&dir.join("version"), b"Directory Transport Version: 1.1\n")?;
    for (digest, bytes) in &blobs {
        let hex = digest.trim_start_matches("sha256:");
        write_bytes(&dir.join(hex), bytes)?;
    }
    write_bytes(&dir.join("manifest.json"), &manifest)?;
    let keep: Vec<String> = blobs
        .keys()
        .map(|d| d.trim_start_matches("sha256:").to_owned())
        .chain(["version".to_owned(), "manifest.json".to_owned()])
        .collect();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !keep.iter().any(|k| entry.file_name() == k.as_str()) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(Layout {
        service: service.to_owned(),
        dir: dir.to_path_buf(),
        digest: format!("sha256:{}", sha256_hex(&manifest)),
        image_id,
        tags,
    })
}

/// The tag grammar of the distribution spec.
fn valid_tag(tag: &str) -> bool {
    let mut bytes = tag.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphanumeric() || b == b'_')
        && tag.len() <= 128
        && bytes.all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    schema_version: u32,
    media_type: &'static str,
    config: Descriptor,
    layers: Vec<Descriptor>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: &'static str,
    size: u64,
    digest: String,
}

/// Every regular file of a tar archive, by name.
fn read_archive(path: &Path) -> Result<BTreeMap<String, Vec<u8>>> {
    let file = std::fs::File::open(path).with_context(|| {
        format!(
            "opening {} (build the images first: cargo xtask images)",
            path.display()
        )
    })?;
    let mut archive = tar::Archive::new(std::io::BufReader::new(file));
    let mut out = BTreeMap::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data)?;
        out.insert(name, data);
    }
    Ok(out)
}

/// `gzip -n -6`: no name or time in the header, so the same input gives the
/// same bytes.
fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new("gzip")
        .args(["-n", "-6", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start gzip")?;
    let mut stdin = child.stdin.take().context("gzip stdin")?;
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the gzip writer panicked"))??;
    ensure!(out.status.success(), "gzip failed with {}", out.status);
    Ok(out.stdout)
}

fn write_bytes(path: &Path, bytes: &[u8]) -> Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// A compose override pinning every madbase service to its pushed digest.
pub fn compose_override(release: &Release) -> String {
    let mut out = String::from(
        "# Written by `cargo xtask push`: every madbase service pinned to the digest\n\
         # pushed. Run a release with\n\
         #   podman-compose -f compose.yaml -f <this file> up -d\n\
         services:\n",
    );
    for (service, pushed) in &release.images {
        out.push_str(&format!("  {service}:\n    image: {}\n", pushed.reference));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_must_have_a_namespace() {
        assert_eq!(
            registry_host("127.0.0.1:5000/madbase").ok(),
            Some("127.0.0.1:5000")
        );
        assert!(registry_host("127.0.0.1:5000").is_err());
        assert!(registry_host("/madbase").is_err());
        assert!(registry_host("host/ns:tag").is_err());
        assert!(registry_host("host/n s").is_err());
    }

    #[test]
    fn tags_follow_the_distribution_grammar() {
        assert!(valid_tag("0.1.0"));
        assert!(valid_tag("ad40a23f0e0c2f5f3c3c0f8d5a0e7d8c9b1a2b3c"));
        assert!(valid_tag("ad40a23-dirty"));
        assert!(!valid_tag("-x"));
        assert!(!valid_tag(""));
        assert!(!valid_tag("a/b"));
        assert!(!valid_tag(&"a".repeat(129)));
    }

    #[test]
    fn failures_are_named() {
        assert!(
            explain(
                "h",
                "u",
                "Error: authenticating creds for \"h\": invalid username/password"
            )
            .contains("refused the credentials")
        );
        assert!(
            explain(
                "h",
                "u",
                "dial tcp 127.0.0.1:1: connect: connection refused"
            )
            .contains("cannot reach")
        );
        assert!(explain("h", "u", "x509: certificate signed by unknown authority").contains("TLS"));
    }

    #[test]
    fn layouts_are_deterministic_and_digest_the_manifest() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let archive = dir.path().join("svc.tar");
        let config = br#"{"config":{"Labels":{"org.opencontainers.image.revision":"abc","org.opencontainers.image.version":"0.1.0"}}}"#;
        let mut layer = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(5);
        header.set_mode(0o644);
        header.set_mtime(1);
        layer.append_data(&mut header, "hello", &b"hello"[..])?;
        let layer = layer.into_inner()?;
        let mut outer = tar::Builder::new(Vec::new());
        for (name, data) in [
            (
                "manifest.json",
                &br#"[{"Config":"c.json","RepoTags":["x:1"],"Layers":["l/layer.tar"]}]"#[..],
            ),
            ("c.json", &config[..]),
            ("l/layer.tar", &layer[..]),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            outer.append_data(&mut header, name, data)?;
        }
        std::fs::write(&archive, outer.into_inner()?)?;

        let a = layout("svc", &archive, &dir.path().join("a"))?;
        let b = layout("svc", &archive, &dir.path().join("b"))?;
        assert_eq!(a.digest, b.digest);
        assert_eq!(a.tags, ["abc", "0.1.0"]);
        assert_eq!(a.image_id, format!("sha256:{}", sha256_hex(config)));
        let manifest = std::fs::read(a.dir.join("manifest.json"))?;
        assert_eq!(a.digest, format!("sha256:{}", sha256_hex(&manifest)));
        let parsed: Value = serde_json::from_slice(&manifest)?;
        let gz_digest = parsed["layers"][0]["digest"].as_str().unwrap_or_default();
        let gz = std::fs::read(a.dir.join(gz_digest.trim_start_matches("sha256:")))?;
        assert_eq!(gz_digest, format!("sha256:{}", sha256_hex(&gz)));
        assert!(gz.starts_with(&[0x1f, 0x8b]));
        Ok(())
    }
}
