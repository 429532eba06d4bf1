//! The processes the benchmark starts (tracers, nginx, helpers): a guard that stops each one,
//! and their output read line by line with the moment each line came.
use std::{
    fs,
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, ExitStatus},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::child;

/// A child process, stopped (SIGTERM, then SIGKILL) when dropped.
pub(super) struct Proc {
    name: String,
    pub(super) child: Child,
    stderr_path: Option<PathBuf>,
}

impl Proc {
    pub(super) fn spawn(
        name: &str,
        cmd: &mut Command,
        stderr_path: Option<PathBuf>,
    ) -> Result<Proc> {
        if let Some(p) = &stderr_path {
            cmd.stderr(fs::File::create(p)?);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name} ({cmd:?})"))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            stderr_path,
        })
    }

    pub(super) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(super) fn stderr(&self) -> String {
        self.stderr_path
            .as_ref()
            .and_then(|p| fs::read_to_string(p).ok())
            .unwrap_or_default()
    }

    /// Fails if the process has exited.
    pub(super) fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited early ({status}): {}",
                self.name,
                tail(&self.stderr(), 1500)
            );
        }
        Ok(())
    }

    pub(super) fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(s) = self.child.try_wait()? {
            return Ok(s);
        }
        let _ = child::status(Command::new("kill").args(["-s", "TERM", &self.pid().to_string()]));
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait()? {
                return Ok(s);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.child.kill()?;
        self.child.wait()?;
        bail!("{} did not stop on SIGTERM in 10 s (killed)", self.name)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// The last `n` bytes of `s` (at a character boundary).
pub(super) fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(s.len());
    &s[start..]
}

/// Lines of a child's output, each with the moment it was read.
pub(super) fn lines(r: impl Read + Send + 'static) -> Receiver<(Instant, String)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    rx
}

/// The first line matching `pred` within `timeout`.
pub(super) fn wait_line(
    rx: &Receiver<(Instant, String)>,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&str) -> bool,
) -> Result<(Instant, String)> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((t, l)) if pred(&l) => return Ok((t, l)),
            Ok(_) => {}
            Err(RecvTimeoutError::Timeout) => bail!("no {what} within {timeout:?}"),
            Err(RecvTimeoutError::Disconnected) => bail!("output ended before {what}"),
        }
    }
}
