//! `cargo xtask build`.
use std::{path::PathBuf, process::Command};

use anyhow::{Result, bail};
use clap::Args;

use crate::setup;

#[derive(Args, Clone)]
pub struct Options {
    /// Build with optimisations.
    #[arg(long)]
    pub release: bool,
}

impl Options {
    pub fn release() -> Self {
        Options { release: true }
    }
}

/// A cargo command for this workspace that must embed the eBPF object.
pub fn cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(setup::workspace_root())
        .args(args)
        .env("KAPROBE_REQUIRE_EBPF", "1");
    cmd
}

/// Builds everything; returns the path of the `kaprobe` binary.
pub fn run(o: &Options) -> Result<PathBuf> {
    setup::ensure()?;
    let mut args = vec!["build", "--package", "kaprobe-user", "--bin", "kaprobe"];
    if o.release {
        args.push("--release");
    }
    if !cargo(&args).status()?.success() {
        bail!("build failed");
    }
    let profile = if o.release { "release" } else { "debug" };
    Ok(setup::workspace_root()
        .join("target")
        .join(profile)
        .join("kaprobe"))
}
