//! Child processes that must not outlive the task: every process started
//! through [`Procs`] is killed when it is dropped (normal return, error, panic
//! unwinding, or the task future being dropped on Ctrl-C/SIGTERM).

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The stdout lines of a child, kept in memory (and written to its log file).
#[derive(Debug, Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    /// Every line so far.
    pub fn all(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn push(&self, line: String) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(line);
    }
}

struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

/// The guard owning every child process of a task.
#[derive(Default)]
pub struct Procs {
    procs: Vec<Proc>,
}

impl std::fmt::Debug for Procs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.procs.iter().map(|p| (&p.name, p.child.id())))
            .finish()
    }
}

impl Procs {
    /// Starts `cmd` as `name` with stdout appended to `log` and stderr to
    /// `stderr_log` (which may be the same file); with `capture`, stdout lines
    /// are also kept in the returned [`Lines`].
    pub fn spawn(
        &mut self,
        name: &str,
        cmd: &mut Command,
        log: &Path,
        stderr_log: &Path,
        capture: bool,
    ) -> Result<Lines> {
        let open = |path: &Path| -> Result<std::fs::File> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))
        };
        let file = open(log)?;
        let stderr = if stderr_log == log {
            file.try_clone()?
        } else {
            open(stderr_log)?
        };
        cmd.stdin(Stdio::null()).stderr(stderr);
        if capture {
            cmd.stdout(Stdio::piped());
        } else {
            cmd.stdout(file.try_clone()?);
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}: {cmd:?}"))?;
        let lines = Lines::default();
        if let Some(stdout) = child.stdout.take() {
            let sink = lines.clone();
            let mut file = file;
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = writeln!(file, "{line}");
                    sink.push(line);
                }
            });
        }
        self.procs.push(Proc {
            name: name.to_owned(),
            child,
            log: stderr_log.to_path_buf(),
        });
        Ok(lines)
    }

    fn find(&mut self, name: &str) -> Option<&mut Proc> {
        self.procs.iter_mut().rev().find(|p| p.name == name)
    }

    /// Fails (with the end of its log) when `name` has exited.
    pub fn check_alive(&mut self, name: &str) -> Result<()> {
        let Some(p) = self.find(name) else {
            bail!("{name} was never started");
        };
        if let Some(status) = p.child.try_wait()? {
            bail!(
                "{name} exited with {status}; end of {}:\n{}",
                p.log.display(),
                tail(&p.log, 30)
            );
        }
        Ok(())
    }

    /// The last lines of `name`'s log.
    pub fn log_tail(&mut self, name: &str, n: usize) -> String {
        self.find(name).map(|p| tail(&p.log, n)).unwrap_or_default()
    }

    /// Stops `name`: SIGTERM, then SIGKILL after `grace`; forgets it.
    pub fn stop(&mut self, name: &str, grace: Duration) -> Result<()> {
        let Some(i) = self.procs.iter().rposition(|p| p.name == name) else {
            bail!("{name} was never started");
        };
        let mut p = self.procs.remove(i);
        if p.child.try_wait()?.is_none() {
            let _ = Command::new("kill")
                .args(["-TERM", &p.child.id().to_string()])
                .status();
            let deadline = Instant::now() + grace;
            while p.child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    let _ = p.child.kill();
                    let _ = p.child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        // Last started first: the monitoring stack, then the services.
        for p in self.procs.iter_mut().rev() {
            if matches!(p.child.try_wait(), Ok(None)) {
                let _ = p.child.kill();
            }
            let _ = p.child.wait();
        }
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
