//! `nix/images.lock`: the digests of the four service images this tree
//! builds (`cargo xtask images`), committed together with the change they
//! lock, and the `image:` lines of `compose.yaml` that pin them.
//!
//! Per service:
//! - `image`: `<registry>/<service>:<version>` (`nix/images.toml`,
//!   `Cargo.toml`);
//! - `source`: the source id ([`crate::images::source_id`]) the binary and the
//!   image's revision label carry;
//! - `id`: the image ID, the sha256 of the image config (`podman image
//!   inspect --format '{{.Id}}'`);
//! - `digest`: the manifest digest podman records when it loads the archive
//!   (`podman load -i target/images/<service>.tar`): `compose.yaml` runs the
//!   service as `image: <image>@<digest>`;
//! - `registry_digest`: the digest the image has in a registry after `cargo
//!   xtask push` (its layer compressed with `gzip -n`, so a different
//!   manifest): what a release override pins.
//!
//! An image is a function of the source files, this machine kind's
//! libraries and CA bundle, and the toolchain (no commit, no time, no path:
//! see `images.rs`), so a lock written here holds on any clone on the same
//! machine kind. `cargo xtask images --lock` writes the lock and the four
//! `image:` lines; `cargo xtask ci` fails when they disagree with what it
//! builds: the `images` check compares the built images with the lock,
//! `check-compose` compares `compose.yaml` with the lock, and the e2e loads
//! the archives and compares podman's own digests with it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::images::{BuiltImage, sha256_hex};
use crate::util::{root, step};

/// The lock, relative to the workspace root.
pub const LOCK_FILE: &str = "nix/images.lock";

/// The command that rewrites the lock and `compose.yaml`.
pub const RELOCK: &str = "cargo xtask images --lock";

/// One service's entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Locked {
    pub image: String,
    pub source: String,
    pub id: String,
    pub digest: String,
    pub registry_digest: String,
}

impl Locked {
    /// What `compose.yaml` says: `<image>@<digest>`.
    pub fn pinned(&self) -> String {
        format!("{}@{}", self.image, self.digest)
    }
}

/// The services' entries, by service name.
pub type Lock = BTreeMap<String, Locked>;

/// Reads `nix/images.lock`.
pub fn load() -> Result<Lock> {
    load_from(&root().join(LOCK_FILE))
}

fn load_from(path: &Path) -> Result<Lock> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {} (write it with `{RELOCK}`)", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{} is not a valid lock", path.display()))
}

/// The entry for a built image. `source` is the id it was built from.
pub fn entry(image: &BuiltImage, source: &str) -> Result<Locked> {
    let layout_dir = root().join("target/push").join(&image.service);
    let pushed = crate::push::layout(&image.service, &image.archive, &layout_dir)?;
    Ok(Locked {
        image: image.reference.clone(),
        source: source.to_owned(),
        id: format!("sha256:{}", image.id),
        digest: load_digest(image.config_size, &image.id, &image.layers),
        registry_digest: pushed.digest,
    })
}

/// The digest of the Docker v2 schema 2 manifest podman (containers/image)
/// writes when it loads a docker-archive: compact JSON, the config and each
/// layer as the archive holds them (uncompressed; podman labels them with
/// the gzip media type all the same). `layers` are (size, sha256 hex).
pub fn load_digest(config_size: u64, config_hex: &str, layers: &[(u64, String)]) -> String {
    let layers: Vec<String> = layers
        .iter()
        .map(|(size, hex)| {
            format!(
                r#"{{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":{size},"digest":"sha256:{hex}"}}"#
            )
        })
        .collect();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{{"mediaType":"application/vnd.docker.container.image.v1+json","size":{config_size},"digest":"sha256:{config_hex}"}},"layers":[{}]}}"#,
        layers.join(",")
    );
    format!("sha256:{}", sha256_hex(manifest.as_bytes()))
}

/// The entries of `images`, built from source id `source`.
pub fn entries(images: &[BuiltImage], source: &str) -> Result<Lock> {
    images
        .iter()
        .map(|image| Ok((image.service.clone(), entry(image, source)?)))
        .collect()
}

/// Fails, listing every difference, when `built` is not `locked`.
pub fn compare(locked: &Lock, built: &Lock) -> Result<()> {
    let mut problems = Vec::new();
    for (service, want) in locked {
        match built.get(service) {
            None => problems.push(format!("{service}: locked, but not built")),
            Some(got) if got != want => {
                let fields = [
                    ("image", &want.image, &got.image),
                    ("source", &want.source, &got.source),
                    ("id", &want.id, &got.id),
                    ("digest", &want.digest, &got.digest),
                    (
                        "registry_digest",
                        &want.registry_digest,
                        &got.registry_digest,
                    ),
                ];
                for (field, want, got) in fields {
                    if want != got {
                        problems.push(format!("{service}: {field} is {got}, the lock says {want}"));
                    }
                }
            }
            Some(_) => {}
        }
    }
    for service in built.keys().filter(|s| !locked.contains_key(*s)) {
        problems.push(format!("{service}: built, but not in the lock"));
    }
    if problems.is_empty() {
        return Ok(());
    }
    let same_source = locked
        .iter()
        .all(|(service, l)| built.get(service).is_none_or(|b| b.source == l.source));
    let why = if same_source {
        "the same sources built other images: this machine's libraries, CA bundle or toolchain \
         differ from those the lock was written with"
    } else {
        "the sources changed since the lock was written"
    };
    bail!(
        "{LOCK_FILE} does not match the images built from this tree ({why}):\n  {}\n\
         If the change is intended, run `{RELOCK}` and commit {LOCK_FILE} and compose.yaml.",
        problems.join("\n  ")
    )
}

/// The lock's text: a header, then one table per service.
pub fn render(lock: &Lock) -> Result<String> {
    let mut text = String::from(
        "# The service images this tree builds, by digest. Written by `cargo xtask images --lock`\n\
         # (which also pins compose.yaml to them); `cargo xtask ci` fails when the images it\n\
         # builds, or compose.yaml, disagree. The fields are explained in\n\
         # crates/xtask/src/image_lock.rs.\n",
    );
    for (service, locked) in lock {
        let mut table = BTreeMap::new();
        table.insert(service.clone(), locked.clone());
        text.push('\n');
        text.push_str(&toml::to_string(&table)?);
    }
    Ok(text)
}

/// `compose.yaml`'s text with each locked service's `image:` line pinned to
/// `<image>@<digest>` (the line naming the service's image, tagged or
/// pinned, is replaced; nothing else changes).
pub fn pin_compose(text: &str, lock: &Lock) -> Result<String> {
    let mut out = String::with_capacity(text.len());
    let mut pinned = BTreeMap::new();
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        let replaced = trimmed.strip_prefix("image:").and_then(|rest| {
            let reference = rest.trim();
            let name = reference.split('@').next()?.rsplit_once(':')?.0;
            lock.iter()
                .find(|(_, l)| l.image.rsplit_once(':').is_some_and(|(n, _)| n == name))
        });
        match replaced {
            Some((service, locked)) => {
                *pinned.entry(service.clone()).or_insert(0) += 1;
                let end = if line.ends_with('\n') { "\n" } else { "" };
                out.push_str(&format!("{indent}image: {}{end}", locked.pinned()));
            }
            None => out.push_str(line),
        }
    }
    for service in lock.keys() {
        let count = pinned.get(service).copied().unwrap_or(0);
        if count != 1 {
            bail!("compose.yaml has {count} `image:` lines for {service}'s image, want 1");
        }
    }
    Ok(out)
}

/// `cargo xtask images --lock`: writes the lock for `images` and pins
/// `compose.yaml` to it.
pub fn write(images: &[BuiltImage], source: &str) -> Result<()> {
    step(&format!("{LOCK_FILE} and compose.yaml"));
    let lock = entries(images, source)?;
    std::fs::write(root().join(LOCK_FILE), render(&lock)?)?;
    let compose = root().join(crate::compose::COMPOSE_FILE);
    let text = std::fs::read_to_string(&compose)?;
    std::fs::write(&compose, pin_compose(&text, &lock)?)?;
    for (service, locked) in &lock {
        eprintln!("{service:<10} {}", locked.pinned());
    }
    Ok(())
}

/// The `images` check: the built images must be the locked ones.
pub fn check(images: &[BuiltImage], source: &str) -> Result<()> {
    step(&format!("images: the built images are {LOCK_FILE}'s"));
    let built = entries(images, source)?;
    compare(&load()?, &built)?;
    for (service, locked) in &built {
        eprintln!(
            "ok: {service:<10} {} (registry {})",
            locked.digest, locked.registry_digest
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Lock {
        let mut lock = Lock::new();
        for service in ["control", "proxy"] {
            lock.insert(
                service.to_owned(),
                Locked {
                    image: format!("git.madapes.com/madbase/{service}:0.1.0"),
                    source: "src-0123".to_owned(),
                    id: format!("sha256:{}", "a".repeat(64)),
                    digest: format!("sha256:{}", "b".repeat(64)),
                    registry_digest: format!("sha256:{}", "c".repeat(64)),
                },
            );
        }
        lock
    }

    #[test]
    fn the_load_digest_is_podmans() {
        // `podman load -i target/images/proxy.tar` (podman 4.3.1) recorded
        // sha256:18fdd1df… for this config and layer.
        let digest = load_digest(
            1139,
            "ac19bd6eba41cb5c0954977d552156903637a45b1755b3ee847647371bec8870",
            &[(
                14_566_912,
                "9d438a076574e2c8337b1df0176d7c9da0bb49b80a5c68eee48b0199c8804752".to_owned(),
            )],
        );
        assert_eq!(
            digest,
            "sha256:18fdd1df51ad90703b85078b3b85dfb7214cb36791a24fb05fe458ebf37b0742"
        );
    }

    #[test]
    fn the_lock_round_trips_and_differences_are_named() {
        let lock = sample();
        let text = render(&lock).unwrap();
        assert_eq!(toml::from_str::<Lock>(&text).unwrap(), lock);
        compare(&lock, &lock).unwrap();

        let mut other = lock.clone();
        other.get_mut("proxy").unwrap().digest = format!("sha256:{}", "d".repeat(64));
        let err = format!("{:#}", compare(&lock, &other).unwrap_err());
        assert!(err.contains("proxy: digest is sha256:dddd"), "{err}");
        assert!(err.contains("this machine's libraries"), "{err}");
        assert!(err.contains(RELOCK), "{err}");

        other.get_mut("proxy").unwrap().source = "src-4567".to_owned();
        other.remove("control");
        let err = format!("{:#}", compare(&lock, &other).unwrap_err());
        assert!(err.contains("control: locked, but not built"), "{err}");
        assert!(err.contains("the sources changed"), "{err}");
    }

    #[test]
    fn compose_lines_are_pinned_and_nothing_else_changes() {
        let lock = sample();
        let text = "services:\n  control:\n    image: git.madapes.com/madbase/control:0.1.0\n  \
                    proxy:\n    image: git.madapes.com/madbase/proxy:0.0.9@sha256:00\n    \
                    restart: unless-stopped\n  db:\n    image: docker.io/library/postgres:17\n";
        let pinned = pin_compose(text, &lock).unwrap();
        assert_eq!(
            pinned,
            text.replace(
                "git.madapes.com/madbase/control:0.1.0",
                &lock["control"].pinned()
            )
            .replace(
                "git.madapes.com/madbase/proxy:0.0.9@sha256:00",
                &lock["proxy"].pinned()
            )
        );
        assert_eq!(pin_compose(&pinned, &lock).unwrap(), pinned);
        let missing = "services:\n  control:\n    image: git.madapes.com/madbase/control:0.1.0\n";
        assert!(pin_compose(missing, &lock).is_err());
    }
}
