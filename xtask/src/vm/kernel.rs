//! Debian's kernels the VMs boot: the newest of a series, found and downloaded with a
//! private apt configuration (see `apt`), extracted under `target/kernels/<uname -r>/` and
//! reused from there.
use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};

use super::apt::apt;
use crate::{child, setup};

/// A kernel series we can boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Series {
    V6_1,
    V6_12,
}

impl Series {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Series::V6_1 => "6.1",
            Series::V6_12 => "6.12",
        }
    }

    /// Is `release` (`uname -r`, i.e. the package name without `linux-image-`) a generic
    /// amd64 kernel of this series? (Not -cloud, -rt, -dbg or -unsigned.)
    fn matches(self, release: &str) -> bool {
        let Some(rest) = release.strip_suffix("-amd64") else {
            return false;
        };
        match self {
            // 6.1.0-<abi>-amd64
            Series::V6_1 => rest
                .strip_prefix("6.1.0-")
                .is_some_and(|abi| !abi.is_empty() && abi.bytes().all(|b| b.is_ascii_digit())),
            // 6.12.<patch>+deb12[.<n>]-amd64
            Series::V6_12 => rest
                .strip_prefix("6.12.")
                .is_some_and(|v| v.starts_with(|c: char| c.is_ascii_digit()) && !v.contains('-')),
        }
    }
}

/// Where kernels are extracted (and the private apt configuration lives).
pub(super) fn kernels_root() -> PathBuf {
    setup::workspace_root().join("target/kernels")
}

fn dpkg_version_gt(a: &str, b: &str) -> bool {
    child::status(Command::new("dpkg").args(["--compare-versions", a, "gt", b]))
        .is_ok_and(|s| s.success())
}

fn newest<T>(items: &[T], version: impl Fn(&T) -> &str) -> Option<&T> {
    let mut best: Option<&T> = None;
    for it in items {
        if best.is_none_or(|b| dpkg_version_gt(version(it), version(b))) {
            best = Some(it);
        }
    }
    best
}

/// A kernel extracted under `target/kernels/<release>/`.
pub(super) struct Kernel {
    pub(super) series: Series,
    pub(super) release: String,
    pub(super) vmlinuz: PathBuf,
}

const COMPLETE: &str = ".kaprobe-complete";

fn cached_kernel(series: Series) -> Option<Kernel> {
    let releases: Vec<String> = fs::read_dir(kernels_root())
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|r| series.matches(r))
        .filter(|r| kernels_root().join(r).join(COMPLETE).is_file())
        .collect();
    let release = newest(&releases, |r| r.as_str())?.clone();
    Some(Kernel {
        series,
        vmlinuz: kernels_root()
            .join(&release)
            .join(format!("boot/vmlinuz-{release}")),
        release,
    })
}

/// The newest kernel of the series: from the cache, else downloaded from Debian.
pub(super) fn ensure_kernel(series: Series) -> Result<Kernel> {
    if let Some(k) = cached_kernel(series) {
        return Ok(k);
    }
    let t0 = Instant::now();
    eprintln!(
        "xtask: fetching Debian's newest {} kernel (private apt lists in {})",
        series.label(),
        kernels_root().join("apt").display()
    );
    let (pkg, version) = newest_package(series)?;
    let release = pkg
        .strip_prefix("linux-image-")
        .expect("filtered")
        .to_owned();
    eprintln!("xtask: downloading {pkg} {version}");
    let deb = download(&pkg, &version)?;
    let dest = extract(&deb, &release, &format!("{pkg} {version}\n"))?;
    fs::remove_file(&deb)?;
    eprintln!(
        "xtask: kernel {release} ready in {} ({:.0} s)",
        dest.display(),
        t0.elapsed().as_secs_f64()
    );
    cached_kernel(series).context("extracted kernel not found")
}

/// The package and version of the series' newest kernel in the private apt lists (updated
/// first).
fn newest_package(series: Series) -> Result<(String, String)> {
    let mut update = apt("apt-get")?;
    update.args(["-qq", "update"]);
    if !child::status(&mut update)?.success() {
        bail!("apt-get update (private sources under target/kernels/apt) failed");
    }
    let mut names = apt("apt-cache")?;
    names.args(["pkgnames", &format!("linux-image-{}.", series.label())]);
    let names: Vec<String> = child::output(&mut names)?
        .lines()
        .filter(|n| {
            n.strip_prefix("linux-image-")
                .is_some_and(|r| series.matches(r))
        })
        .map(str::to_owned)
        .collect();
    if names.is_empty() {
        bail!(
            "no linux-image package of the {} series found",
            series.label()
        );
    }
    // Only real packages have a version (pkgnames also lists virtual ones).
    let mut madison = apt("apt-cache")?;
    madison.arg("madison").args(&names);
    let candidates: Vec<(String, String)> = child::output(&mut madison)?
        .lines()
        .filter_map(|l| {
            let mut f = l.split('|').map(str::trim);
            Some((f.next()?.to_owned(), f.next()?.to_owned()))
        })
        .collect();
    Ok(newest(&candidates, |c| c.1.as_str())
        .with_context(|| format!("no installable {} kernel package", series.label()))?
        .clone())
}

/// Downloads the .deb of `pkg` `version` into the private apt directory; returns its path.
fn download(pkg: &str, version: &str) -> Result<PathBuf> {
    let debs = kernels_root().join("apt/debs");
    let mut download = apt("apt-get")?;
    download.args(["-qq", "download", &format!("{pkg}={version}")]);
    if !child::status(&mut download)?.success() {
        bail!("apt-get download {pkg} failed");
    }
    fs::read_dir(&debs)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb"))
        })
        .with_context(|| format!("downloaded {pkg} not found in {}", debs.display()))
}

/// Extracts kernel package `deb` (of `release`) to `target/kernels/<release>/`, with the
/// modules' index, marked complete with `stamp`; returns the directory.
fn extract(deb: &Path, release: &str, stamp: &str) -> Result<PathBuf> {
    let dest = kernels_root().join(release);
    let partial = kernels_root().join(format!("{release}.partial"));
    let _ = fs::remove_dir_all(&partial);
    let _ = fs::remove_dir_all(&dest);
    fs::create_dir_all(&partial)?;
    child::output(Command::new("dpkg-deb").arg("-x").arg(deb).arg(&partial))?;
    // Debian's packages ship no modules.dep (postinst makes it); the guest's modprobe needs it.
    if partial.join("usr/lib/modules").is_dir() && !partial.join("lib").exists() {
        std::os::unix::fs::symlink("usr/lib", partial.join("lib"))?;
    }
    child::output(Command::new("depmod").arg("-b").arg(&partial).arg(release))?;
    if !partial.join(format!("boot/vmlinuz-{release}")).is_file() {
        bail!("{} has no boot/vmlinuz-{release}", deb.display());
    }
    fs::write(partial.join(COMPLETE), stamp)?;
    fs::rename(&partial, &dest)?;
    Ok(dest)
}
