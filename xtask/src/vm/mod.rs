//! `cargo xtask test --kernel 6.1|6.12`: the integration tests inside a VM booted with
//! Debian's kernel of that series, over the host's filesystem (virtme-ng + QEMU), so the
//! same test binaries, kaprobe binary and tools run inside.
//!
//! - Tools: Debian's `qemu-system-x86`, `kmod` (depmod) and `busybox-static` (virtme-ng's
//!   initramfs: Debian's kernels have virtio/9p as modules); `virtme-ng` from PyPI in
//!   `target/tools/venv`.
//! - Kernels: Debian's `linux-image-6.1.0-*-amd64` and `linux-image-6.12.*-amd64`, the newest
//!   of each series, found with a private apt configuration under `target/kernels/apt`
//!   (the machine's bookworm repositories plus -backports; the system's sources are left
//!   alone),
//!   extracted to `target/kernels/<uname -r>/`. An extracted kernel is reused: nothing is
//!   downloaded then. Delete its directory to fetch the newest again.
//! - Results: the guest runs one test at a time and writes its output and exit status into
//!   a directory shared read-write with the host (the VM's stdout is not reliable); a VM
//!   that dies or runs out of time fails the run, with its console log; a guest that stops
//!   writing its heartbeat (a hung kernel) is killed and the remaining tests run in a new VM,
//!   once.
//!
//! This module holds the settings and the entry point; `kernel` and `apt` find the kernels,
//! `qemu` boots them, `cases` and `guest` say what the guest runs, `boot` and `tally` follow
//! it.
mod apt;
mod boot;
mod cases;
mod guest;
mod kernel;
mod qemu;
mod tally;

use std::{path::Path, time::Instant};

use anyhow::Result;

pub(crate) use self::kernel::Series;
use crate::setup;

/// Debian packages the VM needs on the host.
const VM_PACKAGES: &[&str] = &["qemu-system-x86", "kmod", "busybox-static"];
/// virtme-ng from PyPI: (package, version, command).
const VIRTME_NG: (&str, &str, &str) = ("virtme-ng", "1.42", "vng");

const VM_MEMORY: &str = "2G";
const VM_CPUS: &str = "2";
/// One test inside the guest (under software emulation everything is slower).
const TEST_TIMEOUT_S: u64 = 300;
/// Boot until the guest script starts (about 20 s under TCG here); also added to the whole
/// run's time limit.
const BOOT_TIMEOUT_S: u64 = 120;
/// The guest script writes a heartbeat every few seconds from a background loop. A guest
/// whose heartbeat stops for this long is hung: its kernel no longer runs user space. Seen
/// once under TCG on a busy host (6.1: both vCPUs in timer softirqs for minutes, RCU stalls,
/// soft lockups), where the whole-run limit alone would have held CI for 50 minutes.
const HEARTBEAT_STALL_S: u64 = 90;
/// After a hung or crashed guest, the remaining tests run in a freshly booted VM, this many
/// times.
const HUNG_REBOOTS: usize = 1;

/// Installs what booting a VM needs, if it is missing.
fn ensure_tools() -> Result<()> {
    setup::apt_install(VM_PACKAGES)?;
    setup::pip_install(&[VIRTME_NG])?;
    Ok(())
}

/// The outcome of one kernel's VM run.
pub(crate) struct KernelReport {
    pub(crate) label: String,
    pub(crate) passed: usize,
    pub(crate) failed: usize,
    pub(crate) ok: bool,
}

/// Runs the integration tests (the core scenarios, or those whose name contains `filter`)
/// in a VM of each series, in order. `kaprobe` is the binary to test.
pub(crate) fn run_tests(
    series: &[Series],
    filter: Option<&str>,
    kaprobe: &Path,
) -> Result<Vec<KernelReport>> {
    ensure_tools()?;
    let mut kernels = Vec::new();
    for &s in series {
        let t0 = Instant::now();
        let k = kernel::ensure_kernel(s)?;
        eprintln!(
            "xtask: [{}] kernel {} ({:.1} s to make ready)",
            s.label(),
            k.release,
            t0.elapsed().as_secs_f64()
        );
        kernels.push(k);
    }
    let cases = cases::cases(filter)?;
    let mut reports = Vec::new();
    for k in &kernels {
        reports.push(boot::run_cases(k, &cases, kaprobe)?);
    }
    Ok(reports)
}
