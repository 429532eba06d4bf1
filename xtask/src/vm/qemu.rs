//! The VM: `vng` (virtme-ng) booting a kernel over the host's filesystem under QEMU, with
//! KVM when this machine can run it, else software emulation (TCG).
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::{VIRTME_NG, VM_CPUS, VM_MEMORY, kernel::Kernel};
use crate::{child, setup};

fn vng() -> PathBuf {
    setup::venv().join("bin").join(VIRTME_NG.2)
}

/// A running `vng`, its output in a console log, in its own process group.
pub(super) struct Vm {
    pub(super) child: Child,
    pub(super) console: PathBuf,
    pub(super) started: Instant,
}

impl Vm {
    pub(super) fn boot(
        kernel: &Kernel,
        kvm: bool,
        shared: &Path,
        script: &Path,
        console: &Path,
    ) -> Result<Vm> {
        use std::os::unix::process::CommandExt;
        let log = fs::File::create(console)?;
        let path = std::env::join_paths(std::iter::once(setup::venv().join("bin")).chain(
            std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
        ))?;
        let mut cmd = Command::new(vng());
        // --verbose: the console log (kernel messages) is kept for when something fails.
        cmd.arg("--verbose");
        if !kvm {
            cmd.arg("--disable-kvm");
        }
        cmd.arg("--run")
            .arg(&kernel.vmlinuz)
            .args(["--cpus", VM_CPUS, "--memory", VM_MEMORY])
            .arg("--rwdir")
            .arg(shared)
            .arg("--exec")
            .arg(format!("/bin/bash {}", script.display()))
            .current_dir(setup::workspace_root())
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        let child = cmd.spawn().context("starting vng")?;
        Ok(Vm {
            child,
            console: console.to_owned(),
            started: Instant::now(),
        })
    }

    /// The console log so far, without control characters other than newlines and tabs.
    pub(super) fn console_text(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.console).unwrap_or_default())
            .chars()
            .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
            .collect()
    }

    /// QEMU's words for a KVM guest that cannot run (it then hangs).
    pub(super) fn kvm_failed(&self) -> bool {
        let text = self.console_text();
        text.contains("KVM internal error") || text.contains("emulation failure")
    }

    /// Ends vng, virtme-run and QEMU (the whole process group).
    pub(super) fn kill(&mut self) {
        let pgid = format!("-{}", self.child.id());
        let _ = child::status(Command::new("kill").args(["-TERM", "--", &pgid]));
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child::status(Command::new("kill").args(["-KILL", "--", &pgid]));
        let _ = self.child.wait();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

/// Can this machine boot a VM with KVM? Nested KVM here fails at once ("KVM internal error")
/// or hangs; a short probe boot decides, once per run. KAPROBE_VM_ACCEL=tcg|kvm skips it.
pub(super) fn use_kvm(kernel: &Kernel, work: &Path) -> Result<bool> {
    static KVM: OnceLock<bool> = OnceLock::new();
    if let Some(k) = KVM.get() {
        return Ok(*k);
    }
    let forced = std::env::var("KAPROBE_VM_ACCEL").ok();
    let kvm = match forced.as_deref() {
        Some("tcg") => false,
        Some("kvm") => true,
        _ if !Path::new("/dev/kvm").exists() => false,
        _ => kvm_works(kernel, &work.join("kvm-probe"))?,
    };
    if kvm {
        eprintln!("xtask: VMs use KVM");
    } else {
        eprintln!(
            "xtask: KVM is unusable here (nested KVM fails at boot, or no /dev/kvm): VMs use software emulation (TCG), which is slower"
        );
    }
    Ok(*KVM.get_or_init(|| kvm))
}

/// Boots `kernel` with KVM (its files in `dir`) just to touch a file: does the guest run?
fn kvm_works(kernel: &Kernel, dir: &Path) -> Result<bool> {
    let _ = fs::remove_dir_all(dir);
    fs::create_dir_all(dir)?;
    let ok = dir.join("ok");
    let script = dir.join("probe.sh");
    fs::write(&script, format!("touch {}\n", ok.display()))?;
    let mut vm = Vm::boot(kernel, true, dir, &script, &dir.join("console.log"))?;
    let deadline = Instant::now() + Duration::from_secs(40);
    let works = loop {
        if ok.exists() {
            break true;
        }
        if vm.kvm_failed() {
            break false;
        }
        if Instant::now() > deadline || matches!(vm.child.try_wait(), Ok(Some(_))) {
            break ok.exists();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    vm.kill();
    Ok(works)
}
