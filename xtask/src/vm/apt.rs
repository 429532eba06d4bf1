//! apt-get and apt-cache with a private configuration under target/kernels/apt (the
//! machine's Debian repositories plus -backports), for finding and downloading kernels: the
//! system's apt configuration is left alone.
use std::{fs, process::Command};

use anyhow::{Context, Result};

use super::kernel::kernels_root;
use crate::child;

/// The Debian release whose kernels we boot (Debian 12's, like the host).
const CODENAME: &str = "bookworm";

/// `deb` lines for a private sources list: the machine's own Debian repositories of
/// [`CODENAME`] (main, -updates, -security, as configured), plus -backports (6.12) from the
/// same mirror as the main suite.
fn private_sources() -> Result<String> {
    let mut c = Command::new("apt-get");
    c.args([
        "indextargets",
        "--format",
        "$(REPO_URI)|$(RELEASE)|$(TARGET_OF)",
    ]);
    let mut repos: Vec<(String, String)> = Vec::new();
    for line in child::output(&mut c)?.lines() {
        let f: Vec<&str> = line.split('|').collect();
        if let [uri, release, "deb"] = f[..] {
            let uri = uri.trim_end_matches('/').to_owned();
            if release.starts_with(CODENAME) && !repos.iter().any(|r| r.0 == uri && r.1 == release)
            {
                repos.push((uri, release.to_owned()));
            }
        }
    }
    let main = repos
        .iter()
        .find(|r| r.1 == CODENAME)
        .map(|r| r.0.clone())
        .with_context(|| format!("no Debian {CODENAME} repository in the system's apt sources"))?;
    let backports = format!("{CODENAME}-backports");
    if !repos.iter().any(|r| r.1 == backports) {
        repos.push((main, backports));
    }
    let key = "signed-by=/usr/share/keyrings/debian-archive-keyring.gpg";
    Ok(repos
        .iter()
        .map(|(uri, suite)| format!("deb [{key}] {uri} {suite} main\n"))
        .collect())
}

/// apt-get/apt-cache with a private configuration: our own sources list
/// ([`private_sources`]), package lists and cache under target/kernels/apt. The system's
/// apt configuration is not changed.
pub(super) fn apt(tool: &str) -> Result<Command> {
    let dir = kernels_root().join("apt");
    for d in [
        "lists/partial",
        "cache/archives/partial",
        "sources.list.d",
        "debs",
    ] {
        fs::create_dir_all(dir.join(d))?;
    }
    if !dir.join("sources.list").is_file() {
        fs::write(dir.join("sources.list"), private_sources()?)?;
    }
    let mut cmd = Command::new(tool);
    let d = |p: &str| dir.join(p).display().to_string();
    cmd.arg("-o")
        .arg(format!("Dir::Etc::SourceList={}", d("sources.list")))
        .arg("-o")
        .arg(format!("Dir::Etc::SourceParts={}", d("sources.list.d")))
        .arg("-o")
        .arg(format!("Dir::State::Lists={}", d("lists")))
        .arg("-o")
        .arg(format!("Dir::Cache={}", d("cache")))
        .args(["-o", "APT::Sandbox::User=root"])
        .current_dir(dir.join("debs"))
        .env("DEBIAN_FRONTEND", "noninteractive");
    Ok(cmd)
}
