//! The eBPF toolchain that works on Debian 12 without network access for rustup:
//! Debian's rustc (with a prebuilt `core` for bpfel-unknown-none) and bpf-linker 0.13
//! built against Debian's LLVM 22. See DEVELOPERS.md.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::child;

/// Debian packages: the eBPF build, then the tools the integration tests drive.
const BUILD_PACKAGES: &[&str] = &[
    "rustc-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
];
const TEST_PACKAGES: &[&str] = &[
    "iproute2",
    "nftables",
    "procps",
    "bpftool",
    "util-linux",
    // The deployment tests: a real Prometheus scraping the agent (and its `promtool`
    // checking deploy/prometheus), `systemd-analyze verify` on the unit, `setpriv`
    // (util-linux) for least privilege.
    "prometheus",
    "systemd",
    // The diagnosis tests' HTTP server (the keep-alive race against a real nginx).
    "nginx",
    // A venv for PyPI test tools, from Debian's python3.
    "python3-venv",
    // The container test: builds the image (`FROM scratch`, offline) and runs it with runc,
    // Kubernetes' usual runtime (Debian 12's crun refuses hybrid cgroup hierarchies).
    "podman",
    "runc",
];

/// PyPI tools the tests run, installed into `target/tools/venv`: (package, version, command).
const TEST_PIP_TOOLS: &[(&str, &str, &str)] = &[
    // Validates deploy/kubernetes/daemonset.yaml against the Kubernetes schema, offline.
    ("kubernetes-validate", "1.33.1", "kubernetes-validate"),
    // Validates every line the agent writes in the integration tests against
    // docs/events.schema.json (tests/src/lib.rs, validate_event_lines).
    ("jsonschema", "4.26.0", "jsonschema"),
];

const BPF_LINKER_VERSION: &str = "0.13.0";

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Where `cargo install` puts bpf-linker (kaprobe-user's build script looks there).
fn tools_root() -> PathBuf {
    workspace_root().join("target/tools")
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

pub(crate) fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|u| u.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Installs missing Debian packages.
pub(crate) fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let sudo: &[&str] = if is_root() { &[] } else { &["sudo"] };
    let apt = |args: &[&str]| -> Result<bool> {
        let mut cmd = Command::new(sudo.first().copied().unwrap_or("apt-get"));
        if !sudo.is_empty() {
            cmd.arg("apt-get");
        }
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        Ok(child::status(&mut cmd)
            .context("running apt-get")?
            .success())
    };
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(&missing);
    if !apt(&args)? {
        // Fresh machines often have stale package lists.
        if !apt(&["update"])? || !apt(&args)? {
            bail!("apt-get could not install {}", missing.join(" "));
        }
    }
    Ok(())
}

fn bpf_linker_ok(bin: &Path) -> bool {
    Command::new(bin)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
}

/// Everything needed to build: packages, then bpf-linker.
pub(crate) fn ensure() -> Result<()> {
    apt_install(BUILD_PACKAGES)?;
    let root = tools_root();
    let bin = root.join("bin/bpf-linker");
    if !bpf_linker_ok(&bin) {
        eprintln!(
            "xtask: building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (about a minute)"
        );
        let status = child::status(
            Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
                .args([
                    "install",
                    "bpf-linker",
                    "--locked",
                    "--version",
                    BPF_LINKER_VERSION,
                ])
                .args(["--no-default-features", "--features", "llvm-22", "--root"])
                .arg(&root)
                .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
        )
        .context("running cargo install bpf-linker")?;
        if !status.success() || !bpf_linker_ok(&bin) {
            bail!(
                "could not install bpf-linker {BPF_LINKER_VERSION} into {}",
                root.display()
            );
        }
    }
    Ok(())
}

/// The Python virtual environment for test tools from PyPI.
pub(crate) fn venv() -> PathBuf {
    tools_root().join("venv")
}

/// Installs the PyPI test tools that are missing into [`venv`].
pub(crate) fn pip_install(tools: &[(&str, &str, &str)]) -> Result<()> {
    let venv = venv();
    let missing: Vec<String> = tools
        .iter()
        .filter(|(_, _, bin)| !venv.join("bin").join(bin).is_file())
        .map(|(pkg, version, _)| format!("{pkg}=={version}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !venv.join("bin/pip").is_file() {
        // Debian's python3 (package python3-venv), not whatever python3 is first on PATH.
        let ok = child::status(
            Command::new("/usr/bin/python3")
                .args(["-m", "venv"])
                .arg(&venv),
        )
        .context("running /usr/bin/python3 -m venv")?
        .success();
        if !ok {
            bail!("could not create a Python venv at {}", venv.display());
        }
    }
    eprintln!(
        "xtask: installing {} into {}",
        missing.join(" "),
        venv.display()
    );
    let ok = child::status(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(&missing),
    )
    .context("running pip")?
    .success();
    if !ok {
        bail!("pip could not install {}", missing.join(" "));
    }
    Ok(())
}

/// Everything the integration tests drive: Debian packages and PyPI tools.
pub(crate) fn ensure_test_tools() -> Result<()> {
    apt_install(TEST_PACKAGES)?;
    pip_install(TEST_PIP_TOOLS)
}
