//! `cargo xtask install`: builds the optimised binary (the eBPF object inside) and installs
//! it as `<prefix>/bin/kaprobe`, the one file to deploy.
use std::{os::unix::fs::PermissionsExt, path::PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use crate::build;

#[derive(Args)]
pub(crate) struct Options {
    /// Install under this prefix (the binary goes to PREFIX/bin/kaprobe).
    #[arg(long, default_value = "/usr/local")]
    prefix: PathBuf,
}

pub(crate) fn run(o: &Options) -> Result<()> {
    let bin = build::run(&build::Options::release())?;
    let dir = o.prefix.join("bin");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let to = dir.join("kaprobe");
    // Through a new file renamed into place: a running kaprobe keeps its old binary.
    let tmp = dir.join(".kaprobe.new");
    std::fs::copy(&bin, &tmp)
        .with_context(|| format!("copying {} to {}", bin.display(), tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
    std::fs::rename(&tmp, &to).with_context(|| format!("installing {}", to.display()))?;
    eprintln!(
        "xtask: installed {} (release build of {})",
        to.display(),
        bin.display()
    );
    Ok(())
}
