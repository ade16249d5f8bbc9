//! Child processes that must not outlive the task.
//!
//! [`Guard`] is the one owner of such a child: it starts the child as the
//! leader of its own process group and, dropped while the child still runs
//! (normal return, error, panic unwinding, the task future dropped on
//! Ctrl-C/SIGTERM), ends the whole group: SIGTERM, a grace period, then
//! SIGKILL, so what the child started goes too (an nginx master's workers,
//! podman-compose's podman). [`Procs`] keeps a task's named children, each a
//! [`Guard`], with their logs.
//!
//! A child in its own group no longer gets the terminal's Ctrl-C, so the
//! first guard starts a thread that forwards SIGINT, SIGTERM and SIGHUP to
//! every live group and then ends xtask (after the grace period, SIGKILL to
//! what is left), as the default action did — unless the task handles
//! signals itself ([`task_handles_signals`]).

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long a group has between SIGTERM and SIGKILL unless said otherwise.
pub const GRACE: Duration = Duration::from_secs(5);

/// A child process leading its own process group; dropping the guard while
/// the child runs ends the group (SIGTERM, `grace`, SIGKILL). A child that
/// already exited is only reaped: what it left in its group was detached on
/// purpose, and its group id may be reused.
#[derive(Debug)]
pub struct Guard {
    child: Child,
    grace: Duration,
    done: bool,
}

impl Guard {
    /// Starts `cmd` in a new process group.
    pub fn spawn(cmd: &mut Command, grace: Duration) -> std::io::Result<Self> {
        forward_signals();
        let child = cmd.process_group(0).spawn()?;
        live().insert(child.id());
        Ok(Guard {
            child,
            grace,
            done: false,
        })
    }

    /// The child's pid, which is also its process group id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child (for its pipes).
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// The child's exit status, once it exited.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Waits for the child to exit (the guard then has nothing to end).
    pub fn wait(&mut self) -> std::io::Result<ExitStatus> {
        let status = self.child.wait()?;
        self.forget();
        Ok(status)
    }

    /// Ends the group now: SIGKILL, no grace.
    pub fn kill(&mut self) {
        self.stop_within(Duration::ZERO);
    }

    /// Ends the group: SIGTERM, up to `grace` for the child to exit, then
    /// SIGKILL to the group; reaps the child.
    pub fn stop_within(&mut self, grace: Duration) {
        if self.terminate() {
            self.finish(Instant::now() + grace);
        }
    }

    /// SIGTERM to the group if the child still runs; whether it did.
    fn terminate(&mut self) -> bool {
        if self.done || !matches!(self.child.try_wait(), Ok(None)) {
            self.forget();
            return false;
        }
        signal_group(self.id(), "TERM");
        true
    }

    /// Waits for the child until `deadline`, then SIGKILL to the group (what
    /// is left of it) and reaps the child.
    fn finish(&mut self, deadline: Instant) {
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        signal_group(self.id(), "KILL");
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.forget();
    }

    fn forget(&mut self) {
        let _ = self.child.try_wait();
        self.done = true;
        live().remove(&self.child.id());
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let grace = self.grace;
        self.stop_within(grace);
    }
}

/// `kill -<signal> -- -<pgid>`: the whole group. (The `kill` program: the
/// workspace forbids the unsafe of calling libc.)
fn signal_group(pgid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{pgid}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Process groups of the running guarded children.
fn live() -> std::sync::MutexGuard<'static, BTreeSet<u32>> {
    static LIVE: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());
    LIVE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

static TASK_HANDLES_SIGNALS: AtomicBool = AtomicBool::new(false);

/// The task handles SIGINT/SIGTERM itself (and drops its guards): the
/// forwarder then only forwards them and does not end xtask.
pub fn task_handles_signals() {
    TASK_HANDLES_SIGNALS.store(true, Ordering::SeqCst);
}

/// Starts the signal forwarder (once).
fn forward_signals() {
    static START: Once = Once::new();
    START.call_once(|| {
        let _ = std::thread::Builder::new()
            .name("xtask-signals".into())
            .spawn(forwarder);
    });
}

fn forwarder() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    else {
        return;
    };
    runtime.block_on(async {
        let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
            signal(SignalKind::hangup()),
        ) else {
            return;
        };
        loop {
            let (name, code) = tokio::select! {
                _ = int.recv() => ("INT", 130),
                _ = term.recv() => ("TERM", 143),
                _ = hup.recv() => ("HUP", 129),
            };
            let groups: Vec<u32> = live().iter().copied().collect();
            for &pgid in &groups {
                signal_group(pgid, name);
            }
            if name == "HUP" || !TASK_HANDLES_SIGNALS.load(Ordering::SeqCst) {
                let deadline = Instant::now() + GRACE;
                while groups.iter().any(|&g| group_alive(g)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
                for pgid in groups {
                    signal_group(pgid, "KILL");
                }
                eprintln!("xtask: SIG{name}: stopped its child processes");
                std::process::exit(code);
            }
        }
    });
}

/// Whether a process of group `pgid` is still there (a zombie counts: its
/// parent, xtask, has not reaped it).
fn group_alive(pgid: u32) -> bool {
    let Ok(all) = procfs::process::all_processes() else {
        return false;
    };
    all.filter_map(Result::ok)
        .filter_map(|p| p.stat().ok())
        .any(|stat| u32::try_from(stat.pgrp) == Ok(pgid))
}

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
    guard: Guard,
    log: PathBuf,
}

/// The named children of a task, each a [`Guard`]; dropping it ends them
/// all (SIGTERM to every group, last started first, then up to [`GRACE`]
/// shared by all before SIGKILL).
#[derive(Default)]
pub struct Procs {
    procs: Vec<Proc>,
}

impl std::fmt::Debug for Procs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.procs.iter().map(|p| (&p.name, p.guard.id())))
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
        let mut guard =
            Guard::spawn(cmd, GRACE).with_context(|| format!("cannot start {name}: {cmd:?}"))?;
        let lines = Lines::default();
        if let Some(stdout) = guard.child().stdout.take() {
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
            guard,
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
        if let Some(status) = p.guard.try_wait()? {
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

    /// Stops `name`: SIGTERM to its group, SIGKILL after `grace`; forgets it.
    pub fn stop(&mut self, name: &str, grace: Duration) -> Result<()> {
        let Some(i) = self.procs.iter().rposition(|p| p.name == name) else {
            bail!("{name} was never started");
        };
        self.procs.remove(i).guard.stop_within(grace);
        Ok(())
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        // Last started first: the monitoring stack, then the services; one
        // grace period for all.
        let mut running = Vec::new();
        for p in self.procs.iter_mut().rev() {
            if p.guard.terminate() {
                running.push(p);
            }
        }
        let deadline = Instant::now() + GRACE;
        for p in running {
            p.guard.finish(deadline);
        }
    }
}

/// The last `n` lines of a file.
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The guard's child and the processes it started, by their pids.
    fn group(script: &str, grace: Duration) -> (Guard, Vec<u32>) {
        let mut guard = Guard::spawn(
            Command::new("sh")
                .args(["-c", script])
                .stdout(Stdio::piped()),
            grace,
        )
        .expect("sh");
        let stdout = guard.child().stdout.take().expect("stdout");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("a pid");
        let pids = line
            .split_whitespace()
            .map(|p| p.parse().expect("pid"))
            .collect();
        (guard, pids)
    }

    fn gone(pid: u32) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            // Gone, or a zombie waiting for init.
            match procfs::process::Process::new(i32::try_from(pid).expect("pid"))
                .and_then(|p| p.stat())
            {
                Err(_) => return true,
                Ok(stat) if stat.state == 'Z' => return true,
                Ok(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        false
    }

    #[test]
    fn dropping_the_guard_ends_the_whole_group() {
        let (guard, pids) = group("sleep 30 & echo $!; wait", Duration::from_secs(5));
        let pgid = guard.id();
        assert!(group_alive(pgid));
        let started = Instant::now();
        drop(guard);
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "SIGTERM sufficed"
        );
        assert!(
            pids.iter().all(|&p| gone(p)),
            "the grandchild {pids:?} was ended too"
        );
        assert!(live().get(&pgid).is_none());
    }

    #[test]
    fn a_group_ignoring_sigterm_is_killed_after_the_grace() {
        let (guard, pids) = group(
            "trap '' TERM; sleep 30 & echo $!; wait",
            Duration::from_millis(300),
        );
        let started = Instant::now();
        drop(guard);
        assert!(started.elapsed() >= Duration::from_millis(300));
        assert!(pids.iter().all(|&p| gone(p)), "{pids:?} was killed");
    }

    #[test]
    fn a_child_that_exited_is_only_reaped() {
        let (mut guard, _) = group("echo 1", Duration::from_secs(5));
        let status = guard.wait().expect("wait");
        assert!(status.success());
        let started = Instant::now();
        drop(guard);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
