//! `cargo xtask test`: unit tests, then the integration tests against the real kernel.
use anyhow::{Result, bail};
use clap::Args;

use crate::{build, setup};

#[derive(Args)]
pub struct Options {
    /// Only run tests whose name contains this.
    filter: Option<String>,
    /// Skip the integration tests (no root needed).
    #[arg(long)]
    unit_only: bool,
}

pub fn run(o: Options) -> Result<()> {
    let bin = build::run(&build::Options { release: false })?;
    if !build::cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])
    .status()?
    .success()
    {
        bail!("clippy found problems");
    }
    let filter: Vec<&str> = o.filter.as_deref().into_iter().collect();
    let mut unit = vec!["test", "--workspace", "--exclude", "kaprobe-tests"];
    unit.push("--");
    unit.extend(&filter);
    if !build::cargo(&unit).status()?.success() {
        bail!("unit tests failed");
    }
    if o.unit_only {
        return Ok(());
    }
    if !setup::is_root() {
        bail!(
            "the integration tests need root (they load eBPF programs and make network namespaces): run `sudo -E cargo xtask test`"
        );
    }
    setup::ensure_test_tools()?;
    let mut integ = vec!["test", "--package", "kaprobe-tests", "--"];
    integ.extend(&filter);
    let status = build::cargo(&integ).env("KAPROBE_BIN", &bin).status()?;
    if !status.success() {
        bail!("integration tests failed");
    }
    Ok(())
}
