//! `cargo xtask image`: the container image deploy/kubernetes/daemonset.yaml runs, built
//! offline with Debian's podman (rootful) from deploy/container/Containerfile: `FROM
//! scratch`, the kaprobe binary and exactly the shared libraries it loads
//! (kaprobe_tests::image assembles the context; tests/tests/container.rs builds and runs the
//! image through the same functions).
use anyhow::{Context, Result, bail};
use clap::Args;
use kaprobe_tests::image;

use crate::{build, child, setup};

#[derive(Args)]
pub(crate) struct Options {
    /// Pack the debug build (no release build needed; about 10 times bigger), tagged
    /// `<version>-debug` only.
    #[arg(long)]
    debug: bool,
}

pub(crate) fn run(o: &Options) -> Result<()> {
    if !setup::is_root() {
        bail!("podman builds into root's image store: run `sudo -E cargo xtask image`");
    }
    setup::apt_install(&["podman"])?;
    let bin = build::run(&build::Options { release: !o.debug })?;
    let version = env!("CARGO_PKG_VERSION");
    let (profile, tags) = if o.debug {
        (
            "debug",
            vec![format!("{}:{version}-debug", image::REPOSITORY)],
        )
    } else {
        (
            "release",
            vec![
                format!("{}:{version}", image::REPOSITORY),
                format!("{}:latest", image::REPOSITORY),
            ],
        )
    };
    let dir = build::target_dir()?.join("image").join(profile);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    let files = image::assemble(&bin, &dir)
        .with_context(|| format!("assembling the image's files in {}", dir.display()))?;
    for (path, size) in &files {
        eprintln!("xtask: image: {} ({})", path.display(), mib(*size));
    }
    // The image the tag named before, if any: removed once the tag moves (unless something
    // else still names or uses it), so that rebuilds do not pile up untagged images.
    let previous = child::output(&mut image::id_command(&tags[0])).ok();
    if !child::status(&mut image::build_command(&dir, version, &tags))?.success() {
        bail!("podman build failed");
    }
    let built = child::output(&mut image::id_command(&tags[0]))?;
    if let Some(old) = previous.filter(|old| *old != built) {
        let _ = std::process::Command::new("podman")
            .args(["rmi", old.trim()])
            .output();
    }
    let size: u64 = child::output(&mut image::inspect_command(&tags[0], "{{.Size}}"))?
        .trim()
        .parse()
        .context("podman image inspect: size")?;
    eprintln!("xtask: built {} ({})", tags.join(", "), mib(size));
    Ok(())
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}
