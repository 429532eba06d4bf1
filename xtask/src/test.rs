//! `cargo xtask test`: unit tests, then the integration tests against the real kernel, or
//! (`--kernel 6.1|6.12|all`) against Debian's kernels in a VM (see vm.rs).
use std::path::Path;

use anyhow::{Result, bail};
use clap::Args;

use crate::{build, child, setup, vm};

#[derive(Args)]
pub(crate) struct Options {
    /// Only run tests whose name contains this (in a VM: instead of the core scenarios).
    filter: Option<String>,
    /// Skip the integration tests (no root needed).
    #[arg(long)]
    unit_only: bool,
    /// The kernel for the integration tests: `host` (the running one: clippy, unit and
    /// integration tests), `6.1` or `6.12` (Debian's newest of that series in a VM: the core
    /// keepalive scenarios, or the tests the filter selects), or `all` (host, 6.1, 6.12).
    #[arg(long, default_value = "host", value_parser = ["host", "6.1", "6.12", "all"])]
    kernel: String,
}

const NEED_ROOT: &str = "the integration tests need root (they load eBPF programs and make network namespaces): run `sudo -E cargo xtask test`";

pub(crate) fn run(o: Options) -> Result<()> {
    let (host, vms): (bool, &[vm::Series]) = match o.kernel.as_str() {
        "6.1" => (false, &[vm::Series::V6_1]),
        "6.12" => (false, &[vm::Series::V6_12]),
        "all" => (true, &[vm::Series::V6_1, vm::Series::V6_12]),
        _ => (true, &[]),
    };
    let bin = build::run(&build::Options { release: false })?;
    if vms.is_empty() {
        return run_host(&o, &bin);
    }
    let mut failed = Vec::new();
    if host {
        // On to the VMs even when the host fails: every kernel's results are wanted.
        if let Err(e) = run_host(&o, &bin) {
            if o.unit_only {
                return Err(e);
            }
            eprintln!("xtask: host: {e:#}");
            failed.push("host".to_owned());
        }
    }
    if o.unit_only {
        return Ok(());
    }
    if !setup::is_root() {
        bail!(NEED_ROOT);
    }
    // The guest runs the host's tools (nft, nstat, bpftool, ...) over the host's filesystem.
    setup::ensure_test_tools()?;
    for r in vm::run_tests(vms, o.filter.as_deref(), &bin)? {
        eprintln!(
            "xtask: kernel {}: {} passed, {} failed",
            r.label, r.passed, r.failed
        );
        if !r.ok {
            failed.push(format!("{} ({} failed)", r.label, r.failed));
        }
    }
    if !failed.is_empty() {
        bail!("integration tests failed on: {}", failed.join(", "));
    }
    Ok(())
}

/// Today's `cargo xtask test`: clippy, unit tests, integration tests on the running kernel.
fn run_host(o: &Options, bin: &Path) -> Result<()> {
    if !child::status(&mut build::cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?
    .success()
    {
        bail!("clippy found problems");
    }
    let filter: Vec<&str> = o.filter.as_deref().into_iter().collect();
    let mut unit = vec!["test", "--workspace", "--exclude", "kaprobe-tests"];
    unit.push("--");
    unit.extend(&filter);
    if !child::status(&mut build::cargo(&unit))?.success() {
        bail!("unit tests failed");
    }
    if o.unit_only {
        return Ok(());
    }
    if !setup::is_root() {
        bail!(NEED_ROOT);
    }
    setup::ensure_test_tools()?;
    // Every test binary runs, so that one failure does not hide the others' results.
    let mut integ = vec!["test", "--package", "kaprobe-tests", "--no-fail-fast", "--"];
    integ.extend(&filter);
    let status = child::status(build::cargo(&integ).env("KAPROBE_BIN", bin))?;
    if !status.success() {
        bail!("integration tests failed");
    }
    Ok(())
}
