//! `cargo xtask run -- <kaprobe arguments>`.
use std::process::Command;

use anyhow::{Context, Result};
use clap::Args;

use crate::{build, setup};

#[derive(Args)]
pub struct Options {
    #[command(flatten)]
    build: build::Options,
    /// Arguments for kaprobe (after `--`), e.g. `watch --format json`.
    #[arg(last = true)]
    args: Vec<String>,
}

pub fn run(o: Options) -> Result<()> {
    let bin = build::run(&o.build)?;
    // kaprobe loads eBPF programs: it needs root.
    let mut cmd = if setup::is_root() {
        Command::new(&bin)
    } else {
        let mut c = Command::new("sudo");
        c.arg(&bin);
        c
    };
    let status = cmd.args(&o.args).status().with_context(|| format!("running {}", bin.display()))?;
    std::process::exit(status.code().unwrap_or(1));
}
