//! The container image (deploy/container/Containerfile), built offline from this host's
//! files: `FROM scratch` plus a root filesystem holding the kaprobe binary and exactly the
//! shared libraries it loads (`ldd`: glibc's libc.so.6 and loader, libgcc_s), with their
//! Debian packages' copyright files. `cargo xtask image` and tests/tests/container.rs both
//! build it through these functions, so the test runs the image as it is built.
use std::{
    io,
    path::{Path, PathBuf},
    process::Command,
};

/// The image's name; its tags are the workspace version (what the DaemonSet runs) and
/// `latest`.
pub const REPOSITORY: &str = "ghcr.io/kaprobe/kaprobe";

/// Where the image has the binary (the DaemonSet's `command`).
pub const BINARY: &str = "/usr/local/bin/kaprobe";

/// The Containerfile: `FROM scratch`, `COPY rootfs/ /` and the entry point.
pub fn containerfile() -> PathBuf {
    crate::repo_root().join("deploy/container/Containerfile")
}

/// Fills the build context `dir` (made if missing; `dir/rootfs` must not exist yet): the
/// binary `bin` at [`BINARY`], each shared library `ldd` names at the path it names (the
/// loader included), and `/usr/share/doc/PACKAGE/copyright` of the Debian packages that
/// ship them. Returns what went in: (path in the image, size in bytes).
pub fn assemble(bin: &Path, dir: &Path) -> io::Result<Vec<(PathBuf, u64)>> {
    let rootfs = dir.join("rootfs");
    let mut files = vec![(PathBuf::from(BINARY), bin.to_path_buf())];
    let libraries = shared_libraries(bin)?;
    files.extend(libraries.iter().map(|l| (l.clone(), l.clone())));
    for package in packages(&libraries) {
        let copyright = Path::new("/usr/share/doc").join(package).join("copyright");
        if copyright.is_file() {
            files.push((copyright.clone(), copyright));
        }
    }
    let mut added = Vec::new();
    for (inside, from) in files {
        let to = rootfs.join(inside.strip_prefix("/").unwrap_or(&inside));
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        // Copies the content (a symlink's target, as the loader path /lib64/... is).
        let size = std::fs::copy(&from, &to)
            .map_err(|e| io::Error::new(e.kind(), format!("copy {}: {e}", from.display())))?;
        added.push((inside, size));
    }
    Ok(added)
}

/// The shared libraries `bin` loads, as `ldd` resolves them here (absolute paths; the
/// vDSO, which the kernel provides, left out).
fn shared_libraries(bin: &Path) -> io::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(bin).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ldd {}: {}{text}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let mut libraries = Vec::new();
    for line in text.lines() {
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, `/lib64/ld-linux-x86-64.so.2
        // (0x...)`, `linux-vdso.so.1 (0x...)`, or `libfoo.so => not found`.
        let path = match line.split_once("=>") {
            Some((name, resolved)) => match resolved.split_whitespace().next() {
                Some(p) if p.starts_with('/') => p,
                _ => {
                    return Err(io::Error::other(format!(
                        "ldd {}: {} not found",
                        bin.display(),
                        name.trim()
                    )));
                }
            },
            None => match line.split_whitespace().next() {
                Some(p) if p.starts_with('/') => p,
                _ => continue,
            },
        };
        libraries.push(PathBuf::from(path));
    }
    Ok(libraries)
}

/// The Debian packages that ship `paths` (`dpkg-query -S`); none where dpkg does not know
/// them (a host that is not Debian).
fn packages(paths: &[PathBuf]) -> Vec<String> {
    let Ok(out) = Command::new("dpkg-query").arg("-S").args(paths).output() else {
        return Vec::new();
    };
    // `libc6:amd64: /lib/x86_64-linux-gnu/libc.so.6`
    let mut names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split(':').next())
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// `podman build` of the context [`assemble`] made in `dir`, labelled with `version`, tagged
/// `tags`. Run it as root (the image goes to root's store, where the tests run it).
pub fn build_command(dir: &Path, version: &str, tags: &[String]) -> Command {
    let mut cmd = Command::new("podman");
    cmd.arg("build")
        .arg("--file")
        .arg(containerfile())
        .args(["--build-arg", &format!("VERSION={version}")])
        // Nothing to fetch: `FROM scratch`; never ask a registry.
        .arg("--pull=never")
        // One image, no intermediate ones (cached steps): removing the tag removes it all.
        .arg("--layers=false");
    for tag in tags {
        cmd.args(["--tag", tag]);
    }
    cmd.arg(dir);
    cmd
}

/// `podman image inspect --format FORMAT image` (e.g. `{{.Size}}`: its size in bytes).
pub fn inspect_command(image: &str, format: &str) -> Command {
    let mut cmd = Command::new("podman");
    cmd.args(["image", "inspect", "--format", format, image]);
    cmd
}

/// The id of `image` (fails if there is no such image).
pub fn id_command(image: &str) -> Command {
    inspect_command(image, "{{.Id}}")
}
