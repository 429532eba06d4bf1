//! `cargo xtask run -- <kaprobe arguments>`.
use std::process::Command;

use anyhow::{Context, Result};
use clap::Args;

use crate::{build, setup};

#[derive(Args)]
pub(crate) struct Options {
    /// Run a debug build instead of an optimised one.
    #[arg(long)]
    debug: bool,
    /// Arguments for kaprobe (after `--`), e.g. `watch --format json`.
    #[arg(last = true)]
    args: Vec<String>,
}

pub(crate) fn run(o: Options) -> Result<()> {
    let bin = build::run(&if o.debug {
        build::Options { release: false }
    } else {
        build::Options::release()
    })?;
    // kaprobe loads eBPF programs: it needs root. Its stdout (the events) is xtask's.
    let mut cmd = if setup::is_root() {
        Command::new(&bin)
    } else {
        let mut c = Command::new("sudo");
        c.arg(&bin);
        c
    };
    let status = cmd
        .args(&o.args)
        .status()
        .with_context(|| format!("running {}", bin.display()))?;
    std::process::exit(status.code().unwrap_or(1));
}
