//! `cargo xtask build`.
use std::{path::PathBuf, process::Command};

use anyhow::{Result, bail};
use clap::Args;

use crate::{child, setup};

#[derive(Args, Clone)]
pub(crate) struct Options {
    /// Build with optimisations.
    #[arg(long)]
    pub(crate) release: bool,
}

impl Options {
    pub(crate) fn release() -> Self {
        Options { release: true }
    }
}

/// A cargo command for this workspace that must embed the eBPF object.
pub(crate) fn cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(setup::workspace_root())
        .args(args)
        .env("KAPROBE_REQUIRE_EBPF", "1");
    cmd
}

/// Where cargo puts what it builds: `target_directory` from `cargo metadata`, which honours
/// CARGO_TARGET_DIR and cargo's configuration. Asked once.
pub(crate) fn target_dir() -> Result<PathBuf> {
    static DIR: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(d) = DIR.get() {
        return Ok(d.clone());
    }
    let out = child::output(&mut cargo(&[
        "metadata",
        "--format-version",
        "1",
        "--no-deps",
    ]))?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let dir = v["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| anyhow::anyhow!("cargo metadata: no target_directory"))?;
    Ok(DIR.get_or_init(|| dir).clone())
}

/// Builds everything; returns the path of the `kaprobe` binary.
pub(crate) fn run(o: &Options) -> Result<PathBuf> {
    setup::ensure()?;
    let mut args = vec!["build", "--package", "kaprobe-user", "--bin", "kaprobe"];
    if o.release {
        args.push("--release");
    }
    if !child::status(&mut cargo(&args))?.success() {
        bail!("build failed");
    }
    let profile = if o.release { "release" } else { "debug" };
    Ok(target_dir()?.join(profile).join("kaprobe"))
}
