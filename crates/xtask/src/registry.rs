//! A real OCI registry on loopback for the registry round trip of
//! `cargo xtask e2e`: Debian's `docker-registry` (the CNCF distribution
//! server) on 127.0.0.1, with htpasswd (bcrypt) authentication and TLS from
//! a throwaway CA made with `openssl` for this run. Its storage, CA, key and
//! password file live in a temporary directory removed with it; the process
//! is killed on drop.

use std::io::Write as _;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use crate::procs::{GRACE, Guard};
use crate::push::Credentials;

/// A running test registry.
#[derive(Debug)]
pub struct TestRegistry {
    /// `127.0.0.1:<port>`.
    pub host: String,
    /// A directory holding the CA certificate (`ca.crt`), for skopeo's
    /// `--cert-dir` and podman's `--cert-dir`.
    pub cert_dir: PathBuf,
    pub credentials: Credentials,
    storage: PathBuf,
    /// Stopped (its process group) on drop.
    child: Guard,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestRegistry {
    pub fn start() -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("madbase-registry-")
            .tempdir()?;
        let base = dir.path();
        let port = crate::util::free_port()?;
        let host = format!("127.0.0.1:{port}");

        let cert_dir = base.join("certs");
        std::fs::create_dir_all(&cert_dir)?;
        throwaway_ca(base, &cert_dir)?;

        let credentials = Credentials {
            user: "madbase-ci".to_owned(),
            password: crate::util::random_hex(24)?,
        };
        let htpasswd = htpasswd(&credentials)?;
        std::fs::write(base.join("htpasswd"), htpasswd)?;

        let storage = base.join("storage");
        std::fs::create_dir_all(&storage)?;
        let config_text = format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
             http:\n  addr: {host}\n  tls:\n    certificate: {crt}\n    key: {key}\n\
             auth:\n  htpasswd:\n    realm: madbase-test\n    path: {htpasswd}\n",
            storage = storage.display(),
            crt = base.join("server.crt").display(),
            key = base.join("server.key").display(),
            htpasswd = base.join("htpasswd").display(),
        );
        let config_path = base.join("config.yml");
        std::fs::write(&config_path, config_text)?;
        let log = base.join("registry.log");
        let child = Guard::spawn(
            Command::new("docker-registry")
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(std::fs::File::create(&log)?)
                .stderr(std::fs::File::create(base.join("registry.err"))?),
            GRACE,
        )
        .context("cannot start docker-registry (apt install docker-registry; `bash .ci/run` installs it)")?;
        let mut registry = TestRegistry {
            host,
            cert_dir,
            credentials,
            storage,
            child,
            log,
            _dir: dir,
        };
        registry.wait_listening(port)?;
        eprintln!(
            "docker-registry on https://{} (htpasswd user {}, CA {})",
            registry.host,
            registry.credentials.user,
            registry.cert_dir.join("ca.crt").display()
        );
        Ok(registry)
    }

    fn wait_listening(&mut self, port: u16) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Some(status) = self.child.try_wait()? {
                bail!("docker-registry exited with {status}: {}", self.logs());
            }
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "docker-registry did not listen within 20 s: {}",
            self.logs()
        )
    }

    /// The registry's storage directory.
    pub fn storage(&self) -> PathBuf {
        self.storage.clone()
    }

    /// What the registry wrote so far (stderr and stdout).
    pub fn logs(&self) -> String {
        let err = self.log.with_file_name("registry.err");
        format!(
            "{}{}",
            std::fs::read_to_string(&err).unwrap_or_default(),
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }
}

/// A CA and a server certificate for 127.0.0.1 signed by it (one day), with
/// `openssl`; the CA certificate goes to `cert_dir/ca.crt`.
fn throwaway_ca(base: &Path, cert_dir: &Path) -> Result<()> {
    let openssl = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(base)
            .output()
            .context("cannot start openssl (apt install openssl)")?;
        ensure!(
            out.status.success(),
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509"];
    ca.extend(ec);
    ca.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=madbase throwaway test CA",
    ]);
    openssl(&ca)?;
    let mut csr = vec!["req"];
    csr.extend(ec);
    csr.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(&csr)?;
    std::fs::write(
        base.join("san.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "1",
        "-extfile",
        "san.ext",
    ])?;
    std::fs::copy(base.join("ca.crt"), cert_dir.join("ca.crt"))?;
    Ok(())
}

/// One bcrypt htpasswd line (`htpasswd -B -i -n`, password on stdin).
fn htpasswd(creds: &Credentials) -> Result<String> {
    let mut child = Command::new("htpasswd")
        .args(["-B", "-i", "-n", &creds.user])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start htpasswd (apt install apache2-utils)")?;
    child
        .stdin
        .take()
        .context("htpasswd stdin")?
        .write_all(creds.password.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "htpasswd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}
