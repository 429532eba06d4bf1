//! The child processes xtask runs for itself (apt-get, cargo, pip, ip, bpftool, ...): their
//! stdout goes to xtask's stderr, or is captured. xtask's own stdout carries only what
//! `cargo xtask run` runs: kaprobe's events.
use std::{
    io,
    os::fd::AsFd,
    process::{Command, ExitStatus, Stdio},
};

use anyhow::{Context, Result, bail};

/// Runs `cmd` to the end with its stdout sent to xtask's stderr; its stderr is xtask's.
pub(crate) fn status(cmd: &mut Command) -> io::Result<ExitStatus> {
    let stderr = io::stderr().as_fd().try_clone_to_owned()?;
    cmd.stdout(Stdio::from(stderr)).status()
}

/// Runs `cmd` to the end and returns its stdout; fails, with its stderr, if it fails.
pub(crate) fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("running {}", shown(cmd)))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            shown(cmd),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `program arg arg ...`, for messages.
fn shown(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}
