//! `cargo xtask images` and `cargo xtask images-check`: the service images
//! without Nix, from the same description (`nix/images.toml`) the flake uses.
//!
//! `images` builds `cargo build --release --locked -p madbase` (with
//! `MADBASE_REVISION` set, as the flake does), strips a copy of the binary
//! with `strip --strip-all`, and writes one docker-archive per service to
//! `target/images/<service>.tar` (uncompressed; `podman load -i` and
//! `docker load -i` read it). Every image has the same single layer:
//!
//! - `/bin/madbase`, the stripped binary;
//! - its shared-library closure as `ldd` resolves it, each library at the
//!   path `ldd` prints, plus the dynamic loader (`/lib64/ld-linux-x86-64.so.2`);
//! - `/etc/ssl/certs/ca-certificates.crt` from this machine;
//! - `/etc/passwd`, `/etc/group` (root and the non-root user of the toml) and
//!   `/etc/nsswitch.conf`, byte for byte what `nix/images.nix` writes;
//! - `/tmp`, world-writable with the sticky bit.
//!
//! The image config is the one `nix/images.nix` sets (entrypoint, numeric
//! user, exposed ports, environment, health check, OCI labels), created at
//! [`EPOCH`], and every file in the layer is owned by 0:0 with that time as
//! mtime. The revision (binary and label) is [`source_id`], a hash of the
//! source files, and the release build keeps this machine's paths out of
//! the binary ([`release_env`]): the same inputs give the same digest in
//! any clone, which `nix/images.lock` records (`crate::image_lock`).
//!
//! `images-check` proves it with podman (see [`check`]) and assembles a
//! Postgres image from this machine's Postgres 15 with [`host_image`], the
//! function later end-to-end tests use to stand in for third-party images.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::image_spec::ImageSpec;
use crate::podman::Podman;
use crate::util::{free_port, http_client, output, random_hex, root, run, step};

/// Where the archives go, relative to the workspace root.
const OUT_DIR: &str = "target/images";
/// Megabytes as the CI reports them: 10^6 bytes.
const MB: u64 = 1_000_000;
/// The size limit (`IMAGE_SIZE_LIMIT_MB`) and target (`IMAGE_SIZE_TARGET_MB`)
/// of one image, as in the CI images job.
const DEFAULT_LIMIT_MB: u64 = 200;
const DEFAULT_TARGET_MB: u64 = 25;
/// The CA bundle copied into the images (Debian's `ca-certificates`).
const HOST_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// One service image written by [`build`].
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub service: String,
    /// `<registry>/<service>:<version>`.
    pub reference: String,
    pub archive: PathBuf,
    /// The image ID: the sha256 of the image config (hex).
    pub id: String,
    /// The sha256 of every layer (`sha256:<hex>`), i.e. `rootfs.diff_ids`.
    pub diff_ids: Vec<String>,
    /// Uncompressed size of the layers in bytes.
    pub size: u64,
    /// Each layer as the archive holds it: (size, sha256 hex).
    pub layers: Vec<(u64, String)>,
    /// The size of the image config in bytes.
    pub config_size: u64,
    /// Every path in the image, without the leading `/`.
    pub paths: Vec<String>,
}

/// `cargo xtask images [--lock]` and the `images` check of `cargo xtask
/// ci`: builds the four images, then writes `nix/images.lock` and pins
/// `compose.yaml` (`lock`), or fails when they are not the locked ones.
pub fn build_and_lock(lock: bool) -> Result<()> {
    let source = SourceInfo::read()?;
    let images = build_from(&source)?;
    if lock {
        crate::image_lock::write(&images, &source.revision)
    } else {
        crate::image_lock::check(&images, &source.revision)
    }
}

/// Builds the release binary and writes the four service images.
pub fn build() -> Result<Vec<BuiltImage>> {
    build_from(&SourceInfo::read()?)
}

fn build_from(source: &SourceInfo) -> Result<Vec<BuiltImage>> {
    let spec = ImageSpec::load()?;
    let binary = build_binary(&spec, source)?;
    let images = assemble(&spec, source, &binary)?;
    report_sizes(&images)?;
    Ok(images)
}

/// What the images are built from, as far as it is not a file on this
/// machine: the source and the version.
#[derive(Debug, Clone)]
struct SourceInfo {
    /// [`source_id`]: the build's `MADBASE_REVISION` and the images'
    /// `org.opencontainers.image.revision` label.
    revision: String,
    /// `[workspace.package] version` of `Cargo.toml`.
    version: String,
}

/// The creation time of every image and the mtime of every file in it: one
/// second after the epoch, as nixpkgs' `dockerTools` has it. With the
/// revision a content hash too, an image is a function of its inputs (the
/// source files, this machine's libraries and toolchain), not of the commit
/// or the hour it was built in; that is what lets `nix/images.lock` be
/// committed in the same commit as the change it locks.
const EPOCH: u64 = 1;

impl SourceInfo {
    fn read() -> Result<Self> {
        let cargo = std::fs::read_to_string(root().join("Cargo.toml"))?;
        let cargo: toml::Value = toml::from_str(&cargo).context("Cargo.toml")?;
        let version = cargo
            .get("workspace")
            .and_then(|w| w.get("package"))
            .and_then(|p| p.get("version"))
            .and_then(toml::Value::as_str)
            .context("Cargo.toml has no [workspace.package] version")?
            .to_owned();
        Ok(SourceInfo {
            revision: source_id()?,
            version,
        })
    }

    fn created(&self) -> String {
        rfc3339(EPOCH)
    }
}

/// `src-` and 40 hex digits of a sha256 over the files of the `cargo`
/// fileset of `nix/checks.toml` (what cargo reads to build the workspace,
/// `nix/images.toml` included), as they are in the work tree: each file's
/// path, a NUL, its length (8 bytes, little-endian) and its bytes, in path
/// order. The same sources give the same id in any clone and any commit,
/// and a dirty tree gets the id of what it holds (no `-dirty` needed).
pub fn source_id() -> Result<String> {
    let declaration = crate::checks::Declaration::load()?;
    let files = declaration.expand("cargo", &crate::checks::tracked()?)?;
    let mut hasher = Sha256::new();
    for file in &files {
        let bytes = std::fs::read(root().join(file)).with_context(|| format!("reading {file}"))?;
        hasher.update(file.as_bytes());
        hasher.update([0]);
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    Ok(format!("src-{}", &hex::encode(hasher.finalize())[..40]))
}

/// The release binary the images are made of (`cargo build --release` with
/// `MADBASE_REVISION` set as for the images, so the live checks that run it
/// share the images' build instead of compiling another profile).
pub fn release_binary() -> Result<PathBuf> {
    release_build(&ImageSpec::load()?, &SourceInfo::read()?)
}

/// `cargo build --release --locked -p madbase`, then a stripped copy of the
/// binary in `target/images/`. Returns the stripped copy.
fn build_binary(spec: &ImageSpec, source: &SourceInfo) -> Result<PathBuf> {
    let built = release_build(spec, source)?;
    let out_dir = root().join(OUT_DIR);
    std::fs::create_dir_all(&out_dir)?;
    let stripped = out_dir.join(format!("{}.stripped", spec.binary));
    run(Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(&stripped)
        .arg(&built))?;
    Ok(stripped)
}

/// `cargo build --release --locked <args>` with the environment of
/// [`release_env`]. Every release build of the tree goes through here: the
/// revision is compiled into `madbase-platform` (`option_env!`) and the
/// flags are in every crate's fingerprint, so a build without them (or with
/// others) rebuilds the crates and links the binary again (fat LTO:
/// minutes), and the next build with them again.
pub fn cargo_release(args: &[&str]) -> Result<()> {
    cargo_release_at(&revision()?, args)
}

fn cargo_release_at(revision: &str, args: &[&str]) -> Result<()> {
    run(release_env(
        Command::new("cargo")
            .args(["build", "--release", "--locked"])
            .args(args),
        revision,
    ))
}

/// The environment of a release build (also for a `cargo run --release`
/// after [`cargo_release`]): `MADBASE_REVISION`, and no path of this
/// machine in the binary, so that another clone elsewhere builds the same
/// bytes: Rust's paths remapped (`--remap-path-prefix`: the workspace to
/// `/madbase`, cargo's home, where the registry's sources are, to `/cargo`)
/// and the C compiler's too (`-ffile-prefix-map` in `CFLAGS`: `rquickjs-sys`
/// compiles QuickJS from its build directory, and its `assert`s keep the
/// file's path); and no time either: `SOURCE_DATE_EPOCH` is [`EPOCH`], which
/// GCC uses for `__DATE__` and `__TIME__` (mimalloc prints them in its
/// verbose banner; found by building in two clones).
pub fn release_env<'a>(cmd: &'a mut Command, revision: &str) -> &'a mut Command {
    let workspace = root();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    let rustflags = [
        format!("--remap-path-prefix={}=/madbase", workspace.display()),
        format!("--remap-path-prefix={}=/cargo", cargo_home.display()),
    ]
    .join("\x1f");
    cmd.env("MADBASE_REVISION", revision)
        .env("SOURCE_DATE_EPOCH", EPOCH.to_string())
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
        .env(
            "CFLAGS",
            format!("-ffile-prefix-map={}=/madbase", workspace.display()),
        )
}

/// The `MADBASE_REVISION` of release builds (see [`cargo_release`]).
pub fn revision() -> Result<String> {
    Ok(SourceInfo::read()?.revision)
}

/// `cargo build --release --locked -p madbase`; the binary's path.
fn release_build(spec: &ImageSpec, source: &SourceInfo) -> Result<PathBuf> {
    step("cargo build --release");
    // The package and the binary share the name (`binary` in the toml).
    cargo_release_at(&source.revision, &["-p", &spec.binary])?;
    let metadata =
        output(Command::new("cargo").args(["metadata", "--format-version", "1", "--no-deps"]))?;
    let metadata: serde_json::Value =
        serde_json::from_str(&metadata).context("cargo metadata is not JSON")?;
    let target_dir = metadata["target_directory"]
        .as_str()
        .context("cargo metadata has no target_directory")?;
    let built = Path::new(target_dir).join("release").join(&spec.binary);
    ensure!(built.is_file(), "{} was not built", built.display());
    Ok(built)
}

/// Writes `target/images/<service>.tar` for every service of the spec.
fn assemble(spec: &ImageSpec, source: &SourceInfo, binary: &Path) -> Result<Vec<BuiltImage>> {
    step("images: the shared layer");
    let mut tree = Tree::default();
    tree.host_file_at(&format!("/bin/{}", spec.binary), binary)?;
    for lib in ldd_closure(&[binary.to_path_buf()])? {
        tree.host_file(&lib)?;
    }
    tree.host_file_at(HOST_CA_BUNDLE, Path::new(HOST_CA_BUNDLE))?;
    add_users(&mut tree, spec.uid, spec.gid, &spec.user_name)?;
    tree.bytes("/etc/nsswitch.conf", "hosts: files dns\n", 0o644)?;
    tree.dir("/tmp", 0o1777)?;
    let layer = tree.layer(EPOCH)?;
    eprintln!(
        "layer sha256:{} ({} files, {:.1} MB)",
        layer.digest,
        tree.entries.len(),
        layer.tar.len() as f64 / MB as f64
    );

    let mut images = Vec::new();
    for (name, service) in &spec.services {
        let hc = &spec.healthcheck;
        let mut test = vec!["CMD".to_owned(), format!("/bin/{}", spec.binary)];
        test.extend(hc.args.iter().cloned());
        let labels = [
            ("org.opencontainers.image.source", spec.source.as_str()),
            ("org.opencontainers.image.revision", &source.revision),
            ("org.opencontainers.image.version", &source.version),
            ("org.opencontainers.image.title", &service.title),
            ("org.opencontainers.image.description", &service.description),
            ("org.opencontainers.image.vendor", &spec.vendor),
            ("org.opencontainers.image.licenses", &spec.licenses),
        ];
        let config = ContainerConfig {
            user: Some(format!("{}:{}", spec.uid, spec.gid)),
            exposed_ports: [service.api_port, service.admin_port]
                .iter()
                .map(|port| (format!("{port}/tcp"), Empty {}))
                .collect(),
            env: spec
                .service_env(name, service)
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
            entrypoint: vec![format!("/bin/{}", spec.binary), name.clone()],
            cmd: Vec::new(),
            healthcheck: Some(HealthConfig {
                test,
                interval: hc.interval_seconds * 1_000_000_000,
                timeout: hc.timeout_seconds * 1_000_000_000,
                start_period: hc.start_period_seconds * 1_000_000_000,
                retries: hc.retries,
            }),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
        let reference = format!("{}:{}", spec.image_name(name), source.version);
        let archive = root().join(OUT_DIR).join(format!("{name}.tar"));
        let (id, config_size) = write_docker_archive(
            &archive,
            &reference,
            &source.created(),
            EPOCH,
            &config,
            &[&layer],
        )?;
        images.push(BuiltImage {
            service: name.clone(),
            reference,
            archive,
            id,
            diff_ids: vec![format!("sha256:{}", layer.digest)],
            size: layer.tar.len() as u64,
            layers: vec![(layer.tar.len() as u64, layer.digest.clone())],
            config_size,
            paths: tree.entries.keys().cloned().collect(),
        });
    }
    Ok(images)
}

/// Prints each image's size; fails above `IMAGE_SIZE_LIMIT_MB` (200), warns
/// above `IMAGE_SIZE_TARGET_MB` (25).
fn report_sizes(images: &[BuiltImage]) -> Result<()> {
    let limit = env_mb("IMAGE_SIZE_LIMIT_MB", DEFAULT_LIMIT_MB)?;
    let target = env_mb("IMAGE_SIZE_TARGET_MB", DEFAULT_TARGET_MB)?;
    step("images: sizes (uncompressed, MB = 10^6 bytes)");
    let mut too_big = Vec::new();
    for image in images {
        let mb = image.size as f64 / MB as f64;
        eprintln!(
            "{:<10} {:>6.1} MB  {}  {}",
            image.service,
            mb,
            image.reference,
            image.archive.display()
        );
        if image.size > limit * MB {
            too_big.push(format!("{} ({mb:.1} MB)", image.service));
        } else if image.size > target * MB {
            eprintln!("warning: {} is above the {target} MB target", image.service);
        }
    }
    if !too_big.is_empty() {
        bail!("images above the {limit} MB limit: {}", too_big.join(", "));
    }
    Ok(())
}

fn env_mb(var: &str, default: u64) -> Result<u64> {
    match std::env::var(var) {
        Ok(v) => v
            .trim()
            .parse()
            .with_context(|| format!("{var}={v:?} is not a number of MB")),
        Err(_) => Ok(default),
    }
}

/// `/etc/passwd` and `/etc/group` with root and one non-root user, no
/// login shell, exactly as `nix/images.nix` writes them.
fn add_users(tree: &mut Tree, uid: u32, gid: u32, name: &str) -> Result<()> {
    let mut passwd = "root:x:0:0:root:/nonexistent:/sbin/nologin\n".to_owned();
    let mut group = "root:x:0:\n".to_owned();
    if uid != 0 {
        passwd.push_str(&format!(
            "{name}:x:{uid}:{gid}:{name}:/nonexistent:/sbin/nologin\n"
        ));
    }
    if gid != 0 {
        group.push_str(&format!("{name}:x:{gid}:\n"));
    }
    tree.bytes("/etc/passwd", passwd, 0o644)?;
    tree.bytes("/etc/group", group, 0o644)
}

// ---------------------------------------------------------------------------
// Extra images from programs installed on this machine.

/// The non-root (or root) user an image runs as.
#[derive(Debug, Clone, Copy)]
pub struct User<'a> {
    pub uid: u32,
    pub gid: u32,
    pub name: &'a str,
}

/// An image assembled from files of this machine, for tests that need a
/// stand-in for a third-party image no registry can provide here (Debian's
/// Postgres for `postgres`, VictoriaMetrics binaries, ...).
#[derive(Debug, Clone)]
pub struct HostImage<'a> {
    /// Image name without tag, e.g. `localhost/madbase-test/postgres`.
    pub name: &'a str,
    pub tag: &'a str,
    /// Host files or directories (walked recursively), each copied to the
    /// same absolute path; symlinks are followed. The `ldd` closure of every
    /// ELF file among them is added, with the dynamic loader.
    pub files: &'a [PathBuf],
    pub entrypoint: &'a [&'a str],
    pub cmd: &'a [&'a str],
    /// Gets `/etc/passwd` and `/etc/group` entries; the image's `User` is
    /// `uid:gid`.
    pub user: User<'a>,
    pub env: &'a [(&'a str, &'a str)],
    /// Directories created empty, owned by `user`, mode 0700 (data
    /// directories; a named volume mounted there inherits the owner).
    pub user_dirs: &'a [&'a str],
    pub exposed_ports: &'a [u16],
    /// The health check command (`CMD` form, without the `"CMD"`).
    pub healthcheck: Option<&'a [&'a str]>,
}

/// Writes `target/images/host-<last name component>-<tag>.tar` for `image`
/// (a docker-archive with one layer, plus a world-writable `/tmp`) and
/// returns its path.
pub fn host_image(image: &HostImage<'_>) -> Result<PathBuf> {
    let source = SourceInfo::read()?;
    let mut tree = Tree::default();
    let mut elves = Vec::new();
    for path in image.files {
        tree.host_tree(path, &mut elves)?;
    }
    for lib in ldd_closure(&elves)? {
        tree.host_file(&lib)?;
    }
    add_users(&mut tree, image.user.uid, image.user.gid, image.user.name)?;
    for dir in image.user_dirs {
        tree.owned_dir(dir, 0o700, image.user.uid, image.user.gid)?;
    }
    if !tree.entries.contains_key("tmp") {
        tree.dir("/tmp", 0o1777)?;
    }
    let layer = tree.layer(EPOCH)?;
    let config = ContainerConfig {
        user: Some(format!("{}:{}", image.user.uid, image.user.gid)),
        exposed_ports: image
            .exposed_ports
            .iter()
            .map(|port| (format!("{port}/tcp"), Empty {}))
            .collect(),
        env: image.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
        entrypoint: image.entrypoint.iter().map(|s| (*s).to_owned()).collect(),
        cmd: image.cmd.iter().map(|s| (*s).to_owned()).collect(),
        healthcheck: image.healthcheck.map(|test| HealthConfig {
            test: std::iter::once("CMD")
                .chain(test.iter().copied())
                .map(str::to_owned)
                .collect(),
            interval: 5_000_000_000,
            timeout: 3_000_000_000,
            start_period: 5_000_000_000,
            retries: 5,
        }),
        labels: BTreeMap::new(),
    };
    let short = image.name.rsplit('/').next().unwrap_or(image.name);
    let path = root()
        .join(OUT_DIR)
        .join(format!("host-{short}-{}.tar", image.tag));
    write_docker_archive(
        &path,
        &format!("{}:{}", image.name, image.tag),
        &source.created(),
        EPOCH,
        &config,
        &[&layer],
    )?;
    eprintln!(
        "{}:{}: {:.1} MB, {} files, {}",
        image.name,
        image.tag,
        layer.tar.len() as f64 / MB as f64,
        tree.entries.len(),
        path.display()
    );
    Ok(path)
}

// ---------------------------------------------------------------------------
// The file tree of a layer.

/// The files of one layer, keyed by path without the leading `/`; parents
/// are added automatically, and the map's order is the tar's order.
#[derive(Debug, Default)]
struct Tree {
    entries: BTreeMap<String, Entry>,
}

#[derive(Debug, PartialEq)]
enum Entry {
    /// A directory, owned by `owner` (uid, gid).
    Dir {
        mode: u32,
        owner: (u32, u32),
    },
    File {
        data: Data,
        mode: u32,
    },
}

#[derive(Debug, PartialEq)]
enum Data {
    Host(PathBuf),
    Bytes(Vec<u8>),
}

impl Tree {
    /// The key of an absolute image path: no leading `/`, no `.`/`..`.
    fn key(path: &str) -> Result<String> {
        let rel = path.trim_start_matches('/').trim_end_matches('/');
        ensure!(
            path.starts_with('/')
                && !rel.is_empty()
                && rel
                    .split('/')
                    .all(|c| !c.is_empty() && c != "." && c != ".."),
            "`{path}` is not a normal absolute path"
        );
        Ok(rel.to_owned())
    }

    fn insert(&mut self, key: String, entry: Entry) -> Result<()> {
        let mut parent = key.as_str();
        while let Some((up, _)) = parent.rsplit_once('/') {
            parent = up;
            match self.entries.get(parent) {
                None => {
                    self.entries.insert(
                        parent.to_owned(),
                        Entry::Dir {
                            mode: 0o755,
                            owner: (0, 0),
                        },
                    );
                }
                Some(Entry::Dir { .. }) => {}
                Some(Entry::File { .. }) => bail!("`/{parent}` is a file, not a directory"),
            }
        }
        match self.entries.get(&key) {
            None => {
                self.entries.insert(key, entry);
            }
            // Directories may be named twice (a parent, then explicitly).
            Some(Entry::Dir { .. }) if matches!(entry, Entry::Dir { .. }) => {
                self.entries.insert(key, entry);
            }
            Some(existing) if *existing == entry => {}
            Some(_) => bail!("`/{key}` is added twice with different contents"),
        }
        Ok(())
    }

    fn dir(&mut self, path: &str, mode: u32) -> Result<()> {
        self.insert(
            Self::key(path)?,
            Entry::Dir {
                mode,
                owner: (0, 0),
            },
        )
    }

    /// A directory owned by `uid:gid` (e.g. a data directory a named volume
    /// is mounted on: podman gives a new volume the image directory's owner).
    fn owned_dir(&mut self, path: &str, mode: u32, uid: u32, gid: u32) -> Result<()> {
        self.insert(
            Self::key(path)?,
            Entry::Dir {
                mode,
                owner: (uid, gid),
            },
        )
    }

    fn bytes(&mut self, path: &str, data: impl Into<Vec<u8>>, mode: u32) -> Result<()> {
        self.insert(
            Self::key(path)?,
            Entry::File {
                data: Data::Bytes(data.into()),
                mode,
            },
        )
    }

    /// The host file `host` at `path` in the image (symlinks followed);
    /// mode 0755 when the host file is executable by anyone, else 0644.
    fn host_file_at(&mut self, path: &str, host: &Path) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let meta =
            std::fs::metadata(host).with_context(|| format!("reading {}", host.display()))?;
        ensure!(meta.is_file(), "{} is not a regular file", host.display());
        let mode = if meta.permissions().mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        let host = host
            .canonicalize()
            .with_context(|| format!("resolving {}", host.display()))?;
        self.insert(
            Self::key(path)?,
            Entry::File {
                data: Data::Host(host),
                mode,
            },
        )
    }

    /// The host file at the same path in the image.
    fn host_file(&mut self, host: &Path) -> Result<()> {
        let path = host
            .to_str()
            .with_context(|| format!("{} is not UTF-8", host.display()))?;
        self.host_file_at(path, host)
    }

    /// A host file, or a directory with everything below it, at the same
    /// path; ELF files are collected in `elves` for [`ldd_closure`].
    fn host_tree(&mut self, host: &Path, elves: &mut Vec<PathBuf>) -> Result<()> {
        let meta =
            std::fs::metadata(host).with_context(|| format!("reading {}", host.display()))?;
        if meta.is_dir() {
            let path = host
                .to_str()
                .with_context(|| format!("{} is not UTF-8", host.display()))?;
            self.dir(path, 0o755)?;
            let mut children = std::fs::read_dir(host)
                .with_context(|| format!("reading {}", host.display()))?
                .map(|e| e.map(|e| e.path()))
                .collect::<std::io::Result<Vec<_>>>()?;
            children.sort();
            for child in children {
                self.host_tree(&child, elves)?;
            }
            Ok(())
        } else {
            if is_elf(host) {
                elves.push(host.to_path_buf());
            }
            self.host_file(host)
        }
    }

    /// The layer: an uncompressed tar, every entry owned by 0:0 with mtime
    /// `mtime`, in path order.
    fn layer(&self, mtime: u64) -> Result<Layer> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, entry) in &self.entries {
            let mut header = tar::Header::new_gnu();
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(mtime);
            match entry {
                Entry::Dir { mode, owner } => {
                    header.set_uid(u64::from(owner.0));
                    header.set_gid(u64::from(owner.1));
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_mode(*mode);
                    header.set_size(0);
                    builder.append_data(&mut header, format!("{path}/"), std::io::empty())?;
                }
                Entry::File { data, mode } => {
                    let bytes = match data {
                        Data::Host(host) => std::fs::read(host)
                            .with_context(|| format!("reading {}", host.display()))?,
                        Data::Bytes(bytes) => bytes.clone(),
                    };
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(*mode);
                    header.set_size(bytes.len() as u64);
                    builder.append_data(&mut header, path, bytes.as_slice())?;
                }
            }
        }
        let tar = builder.into_inner()?;
        let digest = sha256_hex(&tar);
        Ok(Layer { tar, digest })
    }
}

/// One uncompressed layer and its sha256 (hex), which is also its diff ID.
#[derive(Debug)]
struct Layer {
    tar: Vec<u8>,
    digest: String,
}

/// sha256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn is_elf(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && magic == *b"\x7fELF"
}

/// The shared libraries (and dynamic loaders) the ELF files `files` load, as
/// `ldd` resolves them on this machine. Fails on a library `ldd` cannot find.
fn ldd_closure(files: &[PathBuf]) -> Result<BTreeSet<PathBuf>> {
    let mut libs = BTreeSet::new();
    for file in files {
        let out = Command::new("ldd")
            .arg(file)
            .output()
            .context("cannot run ldd")?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            if text.contains("not a dynamic executable") || err.contains("not a dynamic executable")
            {
                continue;
            }
            bail!("ldd {} failed: {text}{err}", file.display());
        }
        libs.extend(parse_ldd(&text).with_context(|| format!("ldd {}", file.display()))?);
    }
    Ok(libs)
}

/// The absolute paths in `ldd` output: `libx.so => /path (0x…)` and the
/// loader's `/lib64/ld-linux-x86-64.so.2 (0x…)`; the vDSO has no path.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.contains("statically linked") {
            continue;
        }
        let target = match line.split_once("=>") {
            Some((_, rest)) => {
                let rest = rest.trim();
                ensure!(!rest.starts_with("not found"), "missing library: {line}");
                rest
            }
            None => line,
        };
        if let Some(path) = target
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

// ---------------------------------------------------------------------------
// docker-archive.

/// `config` of a Docker image config (v1.2), which podman and Docker read
/// from a docker-archive; field order and names as Docker writes them.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ContainerConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    exposed_ports: BTreeMap<String, Empty>,
    env: Vec<String>,
    entrypoint: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    cmd: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    healthcheck: Option<HealthConfig>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
}

/// `{}` in JSON (the value type of `ExposedPorts`).
#[derive(Debug, Serialize)]
struct Empty {}

/// Durations in nanoseconds.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct HealthConfig {
    test: Vec<String>,
    interval: u64,
    timeout: u64,
    start_period: u64,
    retries: u32,
}

#[derive(Debug, Serialize)]
struct ImageConfigFile<'a> {
    architecture: &'a str,
    config: &'a ContainerConfig,
    created: &'a str,
    history: Vec<History<'a>>,
    os: &'a str,
    rootfs: RootFs,
}

#[derive(Debug, Serialize)]
struct History<'a> {
    created: &'a str,
    created_by: &'a str,
}

#[derive(Debug, Serialize)]
struct RootFs {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestEntry<'a> {
    config: String,
    repo_tags: [&'a str; 1],
    layers: Vec<String>,
}

/// The GOARCH name of this machine's architecture.
fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        other => other,
    }
}

/// Writes a docker-archive (`manifest.json`, `<sha>.json`,
/// `<sha>/layer.tar`) to `path`; returns the image ID (config sha256, hex).
fn write_docker_archive(
    path: &Path,
    reference: &str,
    created: &str,
    mtime: u64,
    config: &ContainerConfig,
    layers: &[&Layer],
) -> Result<(String, u64)> {
    let file = ImageConfigFile {
        architecture: go_arch(),
        config,
        created,
        history: layers
            .iter()
            .map(|_| History {
                created,
                created_by: "cargo xtask images",
            })
            .collect(),
        os: "linux",
        rootfs: RootFs {
            kind: "layers",
            diff_ids: layers
                .iter()
                .map(|l| format!("sha256:{}", l.digest))
                .collect(),
        },
    };
    let config_json = serde_json::to_vec(&file)?;
    let id = sha256_hex(&config_json);
    let manifest = serde_json::to_vec(&[ManifestEntry {
        config: format!("{id}.json"),
        repo_tags: [reference],
        layers: layers
            .iter()
            .map(|l| format!("{}/layer.tar", l.digest))
            .collect(),
    }])?;

    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let partial = path.with_extension("tar.partial");
    let out = std::fs::File::create(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    let mut builder = tar::Builder::new(BufWriter::new(out));
    let mut append = |name: &str, data: &[u8], dir: bool| -> Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(mtime);
        if dir {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(0o755);
        } else {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(0o644);
        }
        header.set_size(data.len() as u64);
        builder.append_data(&mut header, name, data)?;
        Ok(())
    };
    for layer in layers {
        append(&format!("{}/", layer.digest), &[], true)?;
        append(&format!("{}/layer.tar", layer.digest), &layer.tar, false)?;
    }
    append(&format!("{id}.json"), &config_json, false)?;
    append("manifest.json", &manifest, false)?;
    let mut out = builder.into_inner()?;
    out.flush()?;
    drop(out);
    std::fs::rename(&partial, path)
        .with_context(|| format!("renaming {} to {}", partial.display(), path.display()))?;
    Ok((id, config_json.len() as u64))
}

/// `YYYY-MM-DDTHH:MM:SSZ` (UTC) of `epoch` seconds, the format the flake
/// derives from `lastModifiedDate`.
fn rfc3339(epoch: u64) -> String {
    i64::try_from(epoch)
        .ok()
        .and_then(|secs| chrono::DateTime::from_timestamp(secs, 0))
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

// ---------------------------------------------------------------------------
// cargo xtask images-check

/// Name of the container `images-check` runs.
const CHECK_CONTAINER: &str = "madbase-images-check-worker";
/// The service whose image `images-check` runs.
const CHECK_SERVICE: &str = "worker";

/// `cargo xtask images-check`: builds the images twice (same digests), loads
/// all four into the project-local podman, checks what `podman image
/// inspect` reports against `nix/images.toml`, checks the image holds
/// exactly the planned files and no shell, runs the worker image until its
/// own health check passes and checks it runs as the non-root user; then
/// assembles, loads and starts a Postgres image from this machine's
/// Postgres 15 ([`host_image`]). Removes its containers and images.
pub fn check() -> Result<()> {
    let spec = ImageSpec::load()?;
    let source = SourceInfo::read()?;
    let binary = build_binary(&spec, &source)?;
    let images = assemble(&spec, &source, &binary)?;
    report_sizes(&images)?;

    step("images-check: reproducible");
    let again = assemble(&spec, &source, &binary)?;
    for (a, b) in images.iter().zip(&again) {
        ensure!(
            a.id == b.id && file_sha256(&a.archive)? == file_sha256(&b.archive)?,
            "{}: two builds from the same inputs differ",
            a.service
        );
        eprintln!("{:<10} sha256:{}", a.service, a.id);
    }
    let layers: BTreeSet<&Vec<String>> = images.iter().map(|i| &i.diff_ids).collect();
    ensure!(
        layers.len() == 1,
        "the images do not share their layer: {layers:?}"
    );

    let podman = Podman::setup()?;
    let mut cleanup = Cleanup::new(&podman);

    step("images-check: podman load");
    for image in &images {
        cleanup.images.push(image.reference.clone());
        run(podman.command().arg("load").arg("-i").arg(&image.archive))?;
    }

    step("images-check: podman image inspect");
    for image in &images {
        check_inspect(&podman, &spec, image)?;
    }

    step("images-check: contents (podman image mount)");
    let worker = images
        .iter()
        .find(|i| i.service == CHECK_SERVICE)
        .context("no worker image")?;
    check_contents(&podman, &mut cleanup, worker)?;
    let shell = podman
        .command()
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "/bin/sh",
        ])
        .arg(&worker.reference)
        .args(["-c", "true"])
        .output()?;
    ensure!(
        !shell.status.success(),
        "`podman run --entrypoint /bin/sh {}` succeeded: the image has a shell",
        worker.reference
    );
    eprintln!(
        "ok: --entrypoint /bin/sh fails ({})",
        String::from_utf8_lossy(&shell.stderr)
            .lines()
            .last()
            .unwrap_or_default()
    );

    step("images-check: run the worker image");
    run_and_probe(&podman, &spec, &mut cleanup, worker)?;

    step("images-check: a Postgres image from this machine (host_image)");
    postgres_demo(&podman, &mut cleanup)?;

    drop(cleanup);
    eprintln!("\nimages-check: all checks passed");
    Ok(())
}

fn file_sha256(path: &Path) -> Result<String> {
    let mut hasher = Sha256::new();
    let mut file =
        std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hex::encode(hasher.finalize()))
}

/// What `podman image inspect` reports must be what `nix/images.toml` says.
fn check_inspect(podman: &Podman, spec: &ImageSpec, image: &BuiltImage) -> Result<()> {
    let text = output(
        podman
            .command()
            .args(["image", "inspect", "--format", "json"])
            .arg(&image.reference),
    )?;
    let inspect: serde_json::Value = serde_json::from_str(&text)?;
    let inspect = &inspect[0];
    let service = &spec.services[&image.service];
    let mut problems = Vec::new();
    let mut expect = |what: &str, got: &serde_json::Value, want: serde_json::Value| {
        if *got != want {
            problems.push(format!("{what}: got {got}, want {want}"));
        }
    };
    expect(
        "Id",
        &inspect["Id"],
        serde_json::Value::String(image.id.clone()),
    );
    expect(
        "User",
        &inspect["Config"]["User"],
        format!("{}:{}", spec.uid, spec.gid).into(),
    );
    expect(
        "Entrypoint",
        &inspect["Config"]["Entrypoint"],
        serde_json::json!([format!("/bin/{}", spec.binary), image.service]),
    );
    let mut test = vec!["CMD".to_owned(), format!("/bin/{}", spec.binary)];
    test.extend(spec.healthcheck.args.iter().cloned());
    let hc = &inspect["Healthcheck"];
    expect("Healthcheck.Test", &hc["Test"], serde_json::json!(test));
    expect(
        "Healthcheck.Interval",
        &hc["Interval"],
        (spec.healthcheck.interval_seconds * 1_000_000_000).into(),
    );
    expect(
        "Healthcheck.Retries",
        &hc["Retries"],
        spec.healthcheck.retries.into(),
    );
    let env: Vec<String> = spec
        .service_env(&image.service, service)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    expect("Env", &inspect["Config"]["Env"], serde_json::json!(env));
    expect(
        "title label",
        &inspect["Labels"]["org.opencontainers.image.title"],
        service.title.clone().into(),
    );
    expect(
        "RepoTags",
        &inspect["RepoTags"],
        serde_json::json!([image.reference]),
    );
    for port in [service.api_port, service.admin_port] {
        if inspect["Config"]["ExposedPorts"]
            .get(format!("{port}/tcp"))
            .is_none()
        {
            problems.push(format!("port {port}/tcp is not exposed"));
        }
    }
    if !problems.is_empty() {
        bail!(
            "{}: podman image inspect:\n  {}",
            image.reference,
            problems.join("\n  ")
        );
    }
    eprintln!(
        "ok: {} (User {}, Healthcheck {:?}, podman Size {:.1} MB)",
        image.reference,
        inspect["Config"]["User"],
        test,
        inspect["Size"].as_f64().unwrap_or_default() / MB as f64
    );
    Ok(())
}

/// `podman image mount`: the image holds exactly the planned paths, and no
/// shell.
fn check_contents(podman: &Podman, cleanup: &mut Cleanup<'_>, image: &BuiltImage) -> Result<()> {
    let mount = output(
        podman
            .command()
            .args(["image", "mount"])
            .arg(&image.reference),
    )?;
    cleanup.mounted.push(image.reference.clone());
    let mount = PathBuf::from(mount.trim());
    let mut found = BTreeSet::new();
    walk(&mount, &mount, &mut found)?;
    let planned: BTreeSet<String> = image.paths.iter().cloned().collect();
    let extra: Vec<_> = found.difference(&planned).collect();
    let missing: Vec<_> = planned.difference(&found).collect();
    ensure!(
        extra.is_empty() && missing.is_empty(),
        "{}: unexpected files {extra:?}, missing files {missing:?}",
        image.reference
    );
    for shell in ["bin/sh", "bin/bash", "bin/busybox", "usr/bin/sh"] {
        ensure!(!found.contains(shell), "the image contains /{shell}");
    }
    eprintln!(
        "ok: {} holds exactly the {} planned paths: {}",
        image.reference,
        found.len(),
        found.iter().cloned().collect::<Vec<_>>().join(" ")
    );
    run(podman
        .command()
        .args(["image", "unmount"])
        .arg(&image.reference))?;
    cleanup.mounted.retain(|m| *m != image.reference);
    Ok(())
}

fn walk(base: &Path, dir: &Path, out: &mut BTreeSet<String>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let rel = path
            .strip_prefix(base)?
            .to_str()
            .context("non-UTF-8 path in the image")?
            .to_owned();
        out.insert(rel);
        if std::fs::symlink_metadata(&path)?.is_dir() {
            walk(base, &path, out)?;
        }
    }
    Ok(())
}

/// Runs `image` unchanged (its own listen addresses, podman's default
/// bridge network) with a throwaway `JWT_SECRET`, both ports published on
/// free 127.0.0.1 ports; polls `podman healthcheck run` until healthy (podman
/// 4.3 has no timer without systemd), fetches `/health` through both
/// published ports, and checks the process runs as the image user.
fn run_and_probe(
    podman: &Podman,
    spec: &ImageSpec,
    cleanup: &mut Cleanup<'_>,
    image: &BuiltImage,
) -> Result<()> {
    let service = &spec.services[&image.service];
    let (api, admin) = (free_port()?, free_port()?);
    // A leftover from an interrupted run.
    let _ = podman
        .command()
        .args(["rm", "-f", "-t", "0", CHECK_CONTAINER])
        .output();
    cleanup.containers.push(CHECK_CONTAINER.to_owned());
    run(podman
        .command()
        .args(["run", "-d", "--name", CHECK_CONTAINER])
        .args(["-p", &format!("127.0.0.1:{api}:{}", service.api_port)])
        .args(["-p", &format!("127.0.0.1:{admin}:{}", service.admin_port)])
        .args(["-e", &format!("JWT_SECRET={}", random_hex(32)?)])
        .arg(&image.reference))?;
    wait_healthy(podman, CHECK_CONTAINER)?;
    for port in [api, admin] {
        let body = http_get(port, "/health")?;
        ensure!(
            body.contains(&format!("\"service\":\"{}\"", image.service)),
            "GET 127.0.0.1:{port}/health: {body}"
        );
        eprintln!("ok: GET 127.0.0.1:{port}/health → {body}");
    }

    let pid =
        output(
            podman
                .command()
                .args(["inspect", "--format", "{{.State.Pid}}", CHECK_CONTAINER]),
        )?;
    let pid = pid.trim();
    let top = output(
        podman
            .command()
            .args(["top", CHECK_CONTAINER, "user", "group", "args"]),
    )?;
    eprint!("{top}");
    let user_line = top.lines().nth(1).unwrap_or_default();
    let ok = |field: Option<&str>, name: &str, id: u32| {
        field.is_some_and(|f| f == name || f == id.to_string())
    };
    let mut fields = user_line.split_whitespace();
    ensure!(
        ok(fields.next(), &spec.user_name, spec.uid)
            && ok(fields.next(), &spec.user_name, spec.gid),
        "podman top: the process does not run as {}:{}: {user_line}",
        spec.uid,
        spec.gid
    );
    // Rootful podman: the host sees the container's uids unmapped.
    if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
        let uid_line = status
            .lines()
            .find(|l| l.starts_with("Uid:"))
            .unwrap_or_default();
        if is_root() {
            let uids: Vec<&str> = uid_line.split_whitespace().skip(1).collect();
            ensure!(
                uids.len() == 4 && uids.iter().all(|u| *u == spec.uid.to_string()),
                "/proc/{pid}/status: {uid_line}, want uid {} everywhere",
                spec.uid
            );
        }
        eprintln!("ok: host pid {pid}, /proc/{pid}/status {uid_line}");
    }
    run(podman
        .command()
        .args(["rm", "-f", "-t", "10", CHECK_CONTAINER]))?;
    cleanup.containers.retain(|c| c != CHECK_CONTAINER);
    Ok(())
}

/// `GET http://127.0.0.1:<port><path>`; the body of a 200 answer.
fn http_get(port: u16, path: &str) -> Result<String> {
    let url = format!("http://127.0.0.1:{port}{path}");
    let answer = http_client(Duration::from_secs(5))?
        .get(&url)
        .send()
        .with_context(|| format!("GET {url}"))?;
    let status = answer.status();
    let body = answer.text()?;
    ensure!(
        status == reqwest::StatusCode::OK,
        "GET {url}: {status} {body}"
    );
    Ok(body.trim().to_owned())
}

/// Polls `podman healthcheck run` up to 30 times, 2 s apart; prints the
/// container's logs when it exits or never becomes healthy.
fn wait_healthy(podman: &Podman, container: &str) -> Result<()> {
    for attempt in 1..=30 {
        let probe = podman
            .command()
            .args(["healthcheck", "run", container])
            .output()?;
        if probe.status.success() {
            eprintln!("ok: {container} is healthy (attempt {attempt})");
            return Ok(());
        }
        let running = output(podman.command().args([
            "inspect",
            "--format",
            "{{.State.Running}}",
            container,
        ]))?;
        if running.trim() != "true" {
            let _ = podman.command().args(["logs", container]).status();
            bail!("{container} exited before it became healthy");
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let _ = podman.command().args(["logs", container]).status();
    bail!("{container} never became healthy")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";
const PG_LIB: &str = "/usr/lib/postgresql/15/lib";
const PG_SHARE: &str = "/usr/share/postgresql/15";
const PG_CONTAINER: &str = "madbase-images-check-postgres";

/// Assembles `localhost/madbase-test/postgres:15` from Debian's Postgres 15
/// (without the LLVM JIT), loads it, starts it (initdb, then postgres) and
/// waits for its `pg_isready` health check. `/bin/sh` is in this test image
/// because initdb and pg_ctl run their helpers through it.
fn postgres_demo(podman: &Podman, cleanup: &mut Cleanup<'_>) -> Result<()> {
    if !Path::new(PG_BIN).join("postgres").exists() {
        eprintln!("skipped: no Postgres 15 in {PG_BIN} (apt-get install postgresql-15)");
        return Ok(());
    }
    let mut files: Vec<PathBuf> = ["postgres", "initdb", "pg_ctl", "pg_isready"]
        .iter()
        .map(|b| Path::new(PG_BIN).join(b))
        .collect();
    for entry in std::fs::read_dir(PG_LIB)? {
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
    // The data directory is owned by the image user (`user_dirs`), as a
    // named volume mounted there would be.
    let start = format!(
        "set -e; D=/var/lib/postgresql/data; [ -s $D/PG_VERSION ] || \
         {PG_BIN}/initdb -D $D -U postgres --auth=trust --no-locale -E UTF8 >/dev/null; \
         exec {PG_BIN}/postgres -D $D -k /tmp -c listen_addresses='*' -p 5432"
    );
    let pg_isready = format!("{PG_BIN}/pg_isready");
    let healthcheck = [
        pg_isready.as_str(),
        "-h",
        "127.0.0.1",
        "-p",
        "5432",
        "-U",
        "postgres",
    ];
    let image = HostImage {
        name: "localhost/madbase-test/postgres",
        tag: "15",
        files: &files,
        entrypoint: &["/bin/sh", "-c"],
        cmd: &[start.as_str()],
        user: User {
            uid: 999,
            gid: 999,
            name: "postgres",
        },
        env: &[("TZ", "UTC"), ("PGDATA", "/var/lib/postgresql/data")],
        user_dirs: &["/var/lib/postgresql/data"],
        exposed_ports: &[5432],
        healthcheck: Some(&healthcheck),
    };
    let archive = host_image(&image)?;
    let reference = format!("{}:{}", image.name, image.tag);
    cleanup.images.push(reference.clone());
    run(podman.command().arg("load").arg("-i").arg(&archive))?;
    let _ = podman
        .command()
        .args(["rm", "-f", "-t", "0", PG_CONTAINER])
        .output();
    cleanup.containers.push(PG_CONTAINER.to_owned());
    run(podman
        .command()
        .args(["run", "-d", "--name", PG_CONTAINER])
        .arg(&reference))?;
    wait_healthy(podman, PG_CONTAINER)?;
    run(podman
        .command()
        .args(["rm", "-f", "-t", "10", PG_CONTAINER]))?;
    cleanup.containers.retain(|c| c != PG_CONTAINER);
    Ok(())
}

/// Removes what a check created, also when it fails half-way.
#[derive(Debug)]
struct Cleanup<'a> {
    podman: &'a Podman,
    containers: Vec<String>,
    mounted: Vec<String>,
    images: Vec<String>,
}

impl<'a> Cleanup<'a> {
    fn new(podman: &'a Podman) -> Self {
        Cleanup {
            podman,
            containers: Vec::new(),
            mounted: Vec::new(),
            images: Vec::new(),
        }
    }

    fn podman(&self, args: &[&str]) {
        match self.podman.command().args(args).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "cleanup: podman {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("cleanup: podman {}: {e}", args.join(" ")),
        }
    }
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for container in std::mem::take(&mut self.containers) {
            self.podman(&["rm", "-f", "-t", "0", &container]);
        }
        for image in std::mem::take(&mut self.mounted) {
            self.podman(&["image", "unmount", &image]);
        }
        for image in std::mem::take(&mut self.images) {
            self.podman(&["rmi", "-f", &image]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1), "1970-01-01T00:00:01Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_107_542_399), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn ldd_output_is_parsed() -> Result<()> {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f1)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        assert_eq!(
            parse_ldd(text)?,
            [
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2"
            ]
            .map(PathBuf::from)
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
        assert!(parse_ldd("\tstatically linked\n")?.is_empty());
        Ok(())
    }

    #[test]
    fn the_layer_is_deterministic_and_owned_by_root() -> Result<()> {
        let build = || -> Result<Layer> {
            let mut tree = Tree::default();
            tree.bytes("/etc/passwd", "root:x:0:0::/:/sbin/nologin\n", 0o644)?;
            tree.dir("/tmp", 0o1777)?;
            tree.bytes("/bin/tool", vec![1, 2, 3], 0o755)?;
            tree.layer(42)
        };
        let (a, b) = (build()?, build()?);
        assert_eq!(a.digest, b.digest);
        let mut archive = tar::Archive::new(a.tar.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries()? {
            let entry = entry?;
            let header = entry.header();
            assert_eq!((header.uid()?, header.gid()?, header.mtime()?), (0, 0, 42));
            seen.push((entry.path()?.to_string_lossy().into_owned(), header.mode()?));
        }
        assert_eq!(
            seen,
            [
                ("bin/".to_owned(), 0o755),
                ("bin/tool".to_owned(), 0o755),
                ("etc/".to_owned(), 0o755),
                ("etc/passwd".to_owned(), 0o644),
                ("tmp/".to_owned(), 0o1777),
            ]
        );
        Ok(())
    }

    #[test]
    fn owned_directories_keep_their_owner() -> Result<()> {
        let mut tree = Tree::default();
        tree.owned_dir("/var/lib/data", 0o700, 999, 998)?;
        let layer = tree.layer(0)?;
        let mut archive = tar::Archive::new(layer.tar.as_slice());
        let mut owners = Vec::new();
        for entry in archive.entries()? {
            let entry = entry?;
            let header = entry.header();
            owners.push((
                entry.path()?.to_string_lossy().into_owned(),
                header.uid()?,
                header.gid()?,
                header.mode()?,
            ));
        }
        assert_eq!(
            owners,
            [
                ("var/".to_owned(), 0, 0, 0o755),
                ("var/lib/".to_owned(), 0, 0, 0o755),
                ("var/lib/data/".to_owned(), 999, 998, 0o700),
            ]
        );
        Ok(())
    }

    #[test]
    fn conflicting_entries_are_rejected() -> Result<()> {
        let mut tree = Tree::default();
        tree.bytes("/etc/passwd", "a", 0o644)?;
        tree.bytes("/etc/passwd", "a", 0o644)?;
        assert!(tree.bytes("/etc/passwd", "b", 0o644).is_err());
        assert!(tree.bytes("/etc/passwd/x", "b", 0o644).is_err());
        assert!(tree.bytes("relative", "b", 0o644).is_err());
        assert!(tree.bytes("/a/../b", "b", 0o644).is_err());
        Ok(())
    }

    #[test]
    fn passwd_and_group_match_the_flake() -> Result<()> {
        let mut tree = Tree::default();
        add_users(&mut tree, 65532, 65532, "madbase")?;
        let text = |key: &str| match tree.entries.get(key) {
            Some(Entry::File {
                data: Data::Bytes(b),
                ..
            }) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        };
        assert_eq!(
            text("etc/passwd"),
            "root:x:0:0:root:/nonexistent:/sbin/nologin\n\
             madbase:x:65532:65532:madbase:/nonexistent:/sbin/nologin\n"
        );
        assert_eq!(text("etc/group"), "root:x:0:\nmadbase:x:65532:\n");
        Ok(())
    }
}
