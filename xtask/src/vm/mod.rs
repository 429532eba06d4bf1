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
use std::{
    fs,
    io::BufRead,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{build, setup};

/// The core scenarios run on every VM kernel (tests/tests/keepalive.rs).
pub const CORE_TESTS: &[&str] = &[
    "dead_peer_times_out_v4",
    "dead_peer_times_out_v6",
    "restarted_peer_answers_the_probe_with_rst",
    "data_in_flight_ends_by_retransmission_not_keepalive",
    "peer_closes_with_fin",
];

/// Debian packages the VM needs on the host.
pub const VM_PACKAGES: &[&str] = &["qemu-system-x86", "kmod", "busybox-static"];
/// virtme-ng from PyPI: (package, version, command).
pub const VIRTME_NG: (&str, &str, &str) = ("virtme-ng", "1.42", "vng");

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

/// A kernel series we can boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Series {
    V6_1,
    V6_12,
}

impl Series {
    pub fn label(self) -> &'static str {
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

fn kernels_root() -> PathBuf {
    setup::workspace_root().join("target/kernels")
}

fn vng() -> PathBuf {
    setup::venv().join("bin").join(VIRTME_NG.2)
}

/// Installs what booting a VM needs, if it is missing.
pub fn ensure_tools() -> Result<()> {
    setup::apt_install(VM_PACKAGES)?;
    setup::pip_install(&[VIRTME_NG])?;
    Ok(())
}

fn dpkg_version_gt(a: &str, b: &str) -> bool {
    Command::new("dpkg")
        .args(["--compare-versions", a, "gt", b])
        .status()
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
pub struct Kernel {
    pub series: Series,
    pub release: String,
    pub vmlinuz: PathBuf,
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
    for line in output(c)?.lines() {
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
fn apt(tool: &str) -> Result<Command> {
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

fn output(mut cmd: Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The newest kernel of the series: from the cache, else downloaded from Debian.
pub fn ensure_kernel(series: Series) -> Result<Kernel> {
    if let Some(k) = cached_kernel(series) {
        return Ok(k);
    }
    let t0 = Instant::now();
    eprintln!(
        "xtask: fetching Debian's newest {} kernel (private apt lists in {})",
        series.label(),
        kernels_root().join("apt").display()
    );
    let mut update = apt("apt-get")?;
    update.args(["-qq", "update"]);
    if !update.status()?.success() {
        bail!("apt-get update (private sources under target/kernels/apt) failed");
    }
    let mut names = apt("apt-cache")?;
    names.args(["pkgnames", &format!("linux-image-{}.", series.label())]);
    let names: Vec<String> = output(names)?
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
    let candidates: Vec<(String, String)> = output(madison)?
        .lines()
        .filter_map(|l| {
            let mut f = l.split('|').map(str::trim);
            Some((f.next()?.to_owned(), f.next()?.to_owned()))
        })
        .collect();
    let (pkg, version) = newest(&candidates, |c| c.1.as_str())
        .with_context(|| format!("no installable {} kernel package", series.label()))?
        .clone();
    let release = pkg
        .strip_prefix("linux-image-")
        .expect("filtered")
        .to_owned();
    eprintln!("xtask: downloading {pkg} {version}");
    let debs = kernels_root().join("apt/debs");
    let mut download = apt("apt-get")?;
    download.args(["-qq", "download", &format!("{pkg}={version}")]);
    if !download.status()?.success() {
        bail!("apt-get download {pkg} failed");
    }
    let deb = fs::read_dir(&debs)?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{pkg}_")) && n.ends_with(".deb"))
        })
        .with_context(|| format!("downloaded {pkg} not found in {}", debs.display()))?;
    let dest = kernels_root().join(&release);
    let partial = kernels_root().join(format!("{release}.partial"));
    let _ = fs::remove_dir_all(&partial);
    let _ = fs::remove_dir_all(&dest);
    fs::create_dir_all(&partial)?;
    let mut x = Command::new("dpkg-deb");
    x.arg("-x").arg(&deb).arg(&partial);
    output(x)?;
    // Debian's packages ship no modules.dep (postinst makes it); the guest's modprobe needs it.
    if partial.join("usr/lib/modules").is_dir() && !partial.join("lib").exists() {
        std::os::unix::fs::symlink("usr/lib", partial.join("lib"))?;
    }
    let mut depmod = Command::new("depmod");
    depmod.arg("-b").arg(&partial).arg(&release);
    output(depmod)?;
    if !partial.join(format!("boot/vmlinuz-{release}")).is_file() {
        bail!("{} has no boot/vmlinuz-{release}", deb.display());
    }
    fs::write(partial.join(COMPLETE), format!("{pkg} {version}\n"))?;
    fs::rename(&partial, &dest)?;
    fs::remove_file(&deb)?;
    eprintln!(
        "xtask: kernel {release} ready in {} ({:.0} s)",
        dest.display(),
        t0.elapsed().as_secs_f64()
    );
    cached_kernel(series).context("extracted kernel not found")
}

/// A running `vng`, its output in a console log, in its own process group.
struct Vm {
    child: Child,
    console: PathBuf,
    started: Instant,
}

impl Vm {
    fn boot(
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
    fn console_text(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.console).unwrap_or_default())
            .chars()
            .filter(|c| !c.is_control() || *c == '\n' || *c == '\t')
            .collect()
    }

    /// QEMU's words for a KVM guest that cannot run (it then hangs).
    fn kvm_failed(&self) -> bool {
        let text = self.console_text();
        text.contains("KVM internal error") || text.contains("emulation failure")
    }

    /// Ends vng, virtme-run and QEMU (the whole process group).
    fn kill(&mut self) {
        let pgid = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-TERM", "--", &pgid]).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = Command::new("kill").args(["-KILL", "--", &pgid]).status();
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
fn use_kvm(kernel: &Kernel, work: &Path) -> Result<bool> {
    static KVM: OnceLock<bool> = OnceLock::new();
    if let Some(k) = KVM.get() {
        return Ok(*k);
    }
    let forced = std::env::var("KAPROBE_VM_ACCEL").ok();
    let kvm = match forced.as_deref() {
        Some("tcg") => false,
        Some("kvm") => true,
        _ if !Path::new("/dev/kvm").exists() => false,
        _ => {
            let dir = work.join("kvm-probe");
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir)?;
            let ok = dir.join("ok");
            let script = dir.join("probe.sh");
            fs::write(&script, format!("touch {}\n", ok.display()))?;
            let mut vm = Vm::boot(kernel, true, &dir, &script, &dir.join("console.log"))?;
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
            works
        }
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

/// A test binary of kaprobe-tests and the tests it holds.
struct TestBinary {
    target: String,
    path: PathBuf,
    tests: Vec<String>,
}

/// Builds the integration test binaries (without running them) and lists their tests.
fn build_tests() -> Result<Vec<TestBinary>> {
    let out = build::cargo(&[
        "test",
        "--package",
        "kaprobe-tests",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .output()
    .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the integration tests failed");
    }
    let mut bins = Vec::new();
    for line in out.stdout.as_slice().lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        let list = output({
            let mut c = Command::new(exe);
            c.args(["--list", "--format", "terse"]);
            c
        })?;
        bins.push(TestBinary {
            target: msg["target"]["name"].as_str().unwrap_or("?").to_owned(),
            path: PathBuf::from(exe),
            tests: list
                .lines()
                .filter_map(|l| l.strip_suffix(": test"))
                .map(str::to_owned)
                .collect(),
        });
    }
    if bins.is_empty() {
        bail!("cargo built no integration test binary");
    }
    Ok(bins)
}

/// One test to run in the guest.
struct Case {
    binary: PathBuf,
    target: String,
    name: String,
}

fn select(bins: &[TestBinary], filter: Option<&str>) -> Result<Vec<Case>> {
    let case = |b: &TestBinary, t: &String| Case {
        binary: b.path.clone(),
        target: b.target.clone(),
        name: t.clone(),
    };
    match filter {
        Some(f) => {
            let cases: Vec<Case> = bins
                .iter()
                .flat_map(|b| {
                    b.tests
                        .iter()
                        .filter(|t| t.contains(f))
                        .map(move |t| case(b, t))
                })
                .collect();
            if cases.is_empty() {
                bail!("no integration test name contains `{f}`");
            }
            Ok(cases)
        }
        None => CORE_TESTS
            .iter()
            .map(|name| {
                bins.iter()
                    .find_map(|b| b.tests.iter().find(|t| t == name).map(|t| case(b, t)))
                    .with_context(|| format!("core test `{name}` not found in kaprobe-tests"))
            })
            .collect(),
    }
}

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The script the guest runs: each test alone (`cases` with their indices), its output and
/// status into `results`, and a heartbeat.
fn guest_script(cases: &[(usize, &Case)], results: &Path, kaprobe: &Path) -> String {
    let mut s = String::from(
        "#!/bin/bash\n# Written by `cargo xtask test --kernel`; runs inside the VM.\n",
    );
    s += &format!("out={}\n", quote(&results.display().to_string()));
    s += r#"exec >"$out/guest.log" 2>&1
set -x
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
ulimit -l unlimited
uname -r >"$out/uname.tmp" && mv "$out/uname.tmp" "$out/uname"
# The host's proof that the guest still runs user space.
(
    set +x
    n=0
    while :; do
        n=$((n + 1))
        echo $n >"$out/heartbeat.tmp" && mv "$out/heartbeat.tmp" "$out/heartbeat"
        sleep 5
    done
) &
heartbeat=$!
run() {
    local i=$1; shift
    local t0=$(date +%s%N)
    echo "$@" >"$out/$i.cmd"
    timeout -k 10 "#;
    s += &format!("{TEST_TIMEOUT_S}");
    s += r#" "$@" --exact --test-threads=1 >"$out/$i.log" 2>&1
    local rc=$?
    if [ $rc -ne 0 ]; then
        # Once more (software emulation on a busy host is slow and uneven); the first
        # attempt's output is kept and the host reports it.
        mv "$out/$i.log" "$out/$i.first.log"
        echo $rc >"$out/$i.first"
        timeout -k 10 "#;
    s += &format!("{TEST_TIMEOUT_S}");
    s += r#" "$@" --exact --test-threads=1 >"$out/$i.log" 2>&1
        rc=$?
    fi
    echo $(( ($(date +%s%N) - t0) / 1000000 )) >"$out/$i.ms"
    echo $rc >"$out/$i.tmp" && mv "$out/$i.tmp" "$out/$i.status"
}
"#;
    s += &format!(
        "export KAPROBE_BIN={}\n",
        quote(&kaprobe.display().to_string())
    );
    if let Ok(v) = std::env::var("KAPROBE_TEST_VERBOSE") {
        s += &format!("export KAPROBE_TEST_VERBOSE={}\n", quote(&v));
    }
    s += &format!(
        "cd {}\n",
        quote(&setup::workspace_root().join("tests").display().to_string())
    );
    for (i, c) in cases {
        s += &format!(
            "run {i} {} {}\n",
            quote(&c.binary.display().to_string()),
            quote(&c.name)
        );
    }
    s += "kill $heartbeat\ntouch \"$out/done\"\nsync\n";
    s
}

/// The outcome of one kernel's VM run.
pub struct KernelReport {
    pub label: String,
    pub passed: usize,
    pub failed: usize,
    pub ok: bool,
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// How one boot of the VM ended.
enum BootEnd {
    /// QEMU exited by itself.
    Exited,
    /// The guest script never started.
    NoBoot,
    /// The guest stopped running user space (no heartbeat).
    Hung(Duration),
    /// The whole run's time limit passed.
    TimedOut(Duration),
}

/// Results of the cases so far (they arrive in order).
struct Tally<'a> {
    label: &'a str,
    cases: &'a [Case],
    results: PathBuf,
    reported: usize,
    passed: usize,
    failed: usize,
    failures: Vec<usize>,
}

impl Tally<'_> {
    /// Reads the statuses the guest has written since the last call; prints each.
    fn update(&mut self) {
        let label = self.label;
        while self.reported < self.cases.len() {
            let i = self.reported;
            let Ok(status) = fs::read_to_string(self.results.join(format!("{i}.status"))) else {
                break;
            };
            let ms: u64 = fs::read_to_string(self.results.join(format!("{i}.ms")))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            let c = &self.cases[i];
            let status = status.trim();
            let first = fs::read_to_string(self.results.join(format!("{i}.first"))).ok();
            let secs = ms as f64 / 1000.0;
            if status == "0" {
                self.passed += 1;
                match &first {
                    None => eprintln!(
                        "xtask: [{label}] PASS {}::{} ({secs:.1} s)",
                        c.target, c.name
                    ),
                    Some(rc) => {
                        let log = fs::read_to_string(self.results.join(format!("{i}.first.log")))
                            .unwrap_or_default();
                        eprintln!(
                            "xtask: [{label}] PASS ON RETRY {}::{} ({secs:.1} s; the first attempt failed with status {}):\n{}",
                            c.target,
                            c.name,
                            rc.trim(),
                            tail(&log, 40)
                        );
                    }
                }
            } else {
                self.failed += 1;
                let why = if status == "124" || status == "137" {
                    format!("timed out after {TEST_TIMEOUT_S} s")
                } else {
                    format!("exit status {status}")
                };
                eprintln!(
                    "xtask: [{label}] FAIL {}::{} ({why}, {secs:.1} s)",
                    c.target, c.name
                );
                self.failures.push(i);
            }
            self.reported += 1;
        }
    }

    /// The output so far of the case that was running when a boot ended.
    fn print_partial(&self) {
        let Some(c) = self.cases.get(self.reported) else {
            return;
        };
        for name in [
            format!("{}.first.log", self.reported),
            format!("{}.log", self.reported),
        ] {
            if let Ok(partial) = fs::read_to_string(self.results.join(&name)) {
                eprintln!(
                    "---- [{}] output so far of {} ({name}) ----\n{}",
                    self.label,
                    c.name,
                    partial.trim_end()
                );
            }
        }
        if let Ok(guest) = fs::read_to_string(self.results.join("guest.log")) {
            eprintln!(
                "---- [{}] guest script log ----\n{}",
                self.label,
                tail(&guest, 40)
            );
        }
    }
}

/// Boots the VM once for `todo` (indices into `tally.cases`) and follows it until it ends.
fn boot_once(
    kernel: &Kernel,
    kvm: bool,
    work: &Path,
    boot: usize,
    todo: &[usize],
    kaprobe: &Path,
    tally: &mut Tally,
) -> Result<(Vm, BootEnd, Option<Duration>)> {
    let results = tally.results.clone();
    for stale in ["uname", "heartbeat", "done", "guest.log"] {
        let _ = fs::remove_file(results.join(stale));
    }
    let indexed: Vec<(usize, &Case)> = todo.iter().map(|&i| (i, &tally.cases[i])).collect();
    let script = work.join(format!("guest-{boot}.sh"));
    fs::write(&script, guest_script(&indexed, &results, kaprobe))?;
    let console = work.join(if boot == 1 {
        "console.log".to_owned()
    } else {
        format!("console-{boot}.log")
    });
    let label = tally.label;
    eprintln!(
        "xtask: [{label}] booting {} ({}, {} CPUs, {}) for {} test(s); console log: {}",
        kernel.release,
        if kvm { "KVM" } else { "TCG" },
        VM_CPUS,
        VM_MEMORY,
        todo.len(),
        console.display()
    );
    // Each test may run twice (a failure is retried once, and reported).
    let limit = Duration::from_secs(BOOT_TIMEOUT_S + (2 * TEST_TIMEOUT_S + 20) * todo.len() as u64);
    let mut vm = Vm::boot(kernel, kvm, work, &script, &console)?;
    let mut booted: Option<Duration> = None;
    let mut heartbeat = (String::new(), Instant::now());
    let end = loop {
        if booted.is_none() && results.join("uname").exists() {
            let t = vm.started.elapsed();
            booted = Some(t);
            heartbeat.1 = Instant::now();
            eprintln!("xtask: [{label}] guest up after {:.1} s", t.as_secs_f64());
        }
        tally.update();
        if let Ok(Some(_)) = vm.child.try_wait() {
            break BootEnd::Exited;
        }
        if booted.is_none() {
            if vm.started.elapsed() > Duration::from_secs(BOOT_TIMEOUT_S)
                || (kvm && vm.kvm_failed())
            {
                break BootEnd::NoBoot;
            }
        } else {
            let beat = fs::read_to_string(results.join("heartbeat")).unwrap_or_default();
            if beat != heartbeat.0 {
                heartbeat = (beat, Instant::now());
            }
            let silent = heartbeat.1.elapsed();
            if silent > Duration::from_secs(HEARTBEAT_STALL_S) && !results.join("done").exists() {
                break BootEnd::Hung(silent);
            }
        }
        if vm.started.elapsed() > limit {
            break BootEnd::TimedOut(limit);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    if !matches!(end, BootEnd::Exited) {
        vm.kill();
    }
    tally.update();
    Ok((vm, end, booted))
}

/// Boots the kernel and runs the cases; prints each result as it arrives. A guest that
/// hangs is killed and the remaining cases run in a new VM (once).
fn run_cases(kernel: &Kernel, cases: &[Case], kaprobe: &Path) -> Result<KernelReport> {
    let work = build::target_dir()?.join("vm").join(&kernel.release);
    let _ = fs::remove_dir_all(&work);
    let results = work.join("results");
    fs::create_dir_all(&results)?;
    let kvm = use_kvm(kernel, &build::target_dir()?.join("vm"))?;
    let label = kernel.series.label();
    let mut tally = Tally {
        label,
        cases,
        results: results.clone(),
        reported: 0,
        passed: 0,
        failed: 0,
        failures: Vec::new(),
    };
    let started = Instant::now();
    let mut first_boot = None;
    let mut hangs = 0;
    let mut why_incomplete = None;
    for boot in 1.. {
        let todo: Vec<usize> = (tally.reported..cases.len()).collect();
        if todo.is_empty() {
            break;
        }
        let (vm, end, booted) = boot_once(kernel, kvm, &work, boot, &todo, kaprobe, &mut tally)?;
        first_boot = first_boot.or(booted);
        let done = results.join("done").exists();
        // A guest kernel that crashed (seen once on 6.12 under TCG: "Oops: int3" in
        // call_timer_fn while a tracepoint's static key was being patched as a test attached
        // kaprobe, an emulation hazard of cross-modified code) is replaced like a hung one.
        let panicked = matches!(end, BootEnd::Exited)
            && !done
            && vm.console_text().contains("Kernel panic - not syncing");
        let why = match end {
            BootEnd::Exited if done && tally.reported == cases.len() => break,
            BootEnd::Exited if panicked => {
                "the guest kernel panicked (console log below)".to_owned()
            }
            BootEnd::Exited if booted.is_none() => {
                "the VM exited before the guest started the tests".to_owned()
            }
            BootEnd::Exited => "the VM exited before the tests finished".to_owned(),
            BootEnd::NoBoot if kvm && vm.kvm_failed() => {
                "KVM cannot run this guest (set KAPROBE_VM_ACCEL=tcg): VM killed".to_owned()
            }
            BootEnd::NoBoot => {
                format!("the guest did not start within {BOOT_TIMEOUT_S} s: VM killed")
            }
            BootEnd::Hung(silent) => format!(
                "the guest hung (no heartbeat for {} s, its kernel no longer runs user space): VM killed",
                silent.as_secs()
            ),
            BootEnd::TimedOut(limit) => {
                format!("the VM ran out of time: killed after {} s", limit.as_secs())
            }
        };
        let missing = cases.len() - tally.reported;
        eprintln!("xtask: [{label}] {why}; {missing} test(s) without a result");
        tally.print_partial();
        eprintln!(
            "---- [{label}] console log (last 150 lines of {}) ----\n{}\n---- end of console log ----",
            vm.console.display(),
            tail(&vm.console_text(), 150)
        );
        drop(vm);
        if (matches!(end, BootEnd::Hung(_)) || panicked) && hangs < HUNG_REBOOTS {
            hangs += 1;
            eprintln!(
                "xtask: [{label}] GUEST {}: booting a new VM for the {missing} remaining test(s), {} being rerun (hung or crashed guests: {hangs} of at most {HUNG_REBOOTS})",
                if panicked { "KERNEL PANICKED" } else { "HUNG" },
                cases[tally.reported].name
            );
            continue;
        }
        why_incomplete = Some(why);
        break;
    }
    for &i in &tally.failures {
        let c = &cases[i];
        let log = fs::read_to_string(results.join(format!("{i}.log"))).unwrap_or_default();
        eprintln!(
            "---- [{label}] {}::{} output (guest) ----\n{}\n---- end of {} ----",
            c.target,
            c.name,
            log.trim_end(),
            c.name
        );
    }
    let mut failed = tally.failed;
    if why_incomplete.is_some() {
        failed += cases.len() - tally.reported;
        for c in &cases[tally.reported..] {
            eprintln!("xtask: [{label}] FAIL {}::{} (no result)", c.target, c.name);
        }
    }
    let ok = failed == 0 && tally.reported == cases.len();
    eprintln!(
        "xtask: [{label}] kernel {}: boot {}, total {:.1} s{}",
        kernel.release,
        first_boot.map_or("n/a".to_owned(), |b| format!("{:.1} s", b.as_secs_f64())),
        started.elapsed().as_secs_f64(),
        if hangs > 0 {
            format!(" ({hangs} hung or crashed guest(s) replaced)")
        } else {
            String::new()
        }
    );
    let passed = tally.passed;
    println!("{label}: {passed} passed, {failed} failed");
    Ok(KernelReport {
        label: label.to_owned(),
        passed,
        failed,
        ok,
    })
}

/// Runs the integration tests (the core scenarios, or those whose name contains `filter`)
/// in a VM of each series, in order. `kaprobe` is the binary to test.
pub fn run_tests(
    series: &[Series],
    filter: Option<&str>,
    kaprobe: &Path,
) -> Result<Vec<KernelReport>> {
    ensure_tools()?;
    let mut kernels = Vec::new();
    for &s in series {
        let t0 = Instant::now();
        let k = ensure_kernel(s)?;
        eprintln!(
            "xtask: [{}] kernel {} ({:.1} s to make ready)",
            s.label(),
            k.release,
            t0.elapsed().as_secs_f64()
        );
        kernels.push(k);
    }
    let bins = build_tests()?;
    let cases = select(&bins, filter)?;
    let mut reports = Vec::new();
    for k in &kernels {
        reports.push(run_cases(k, &cases, kaprobe)?);
    }
    Ok(reports)
}
