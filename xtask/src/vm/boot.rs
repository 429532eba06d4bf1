//! One kernel's run: boot the VM for the cases without a result, follow the guest (boot,
//! heartbeat, time limit) and its results, and replace a guest that hung or crashed, once.
use std::{
    fs,
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Result;

use super::{
    BOOT_TIMEOUT_S, HEARTBEAT_STALL_S, HUNG_REBOOTS, KernelReport, TEST_TIMEOUT_S, VM_CPUS,
    VM_MEMORY,
    cases::Case,
    guest::guest_script,
    kernel::Kernel,
    qemu::{Vm, use_kvm},
    tally::{Tally, tail},
};
use crate::build;

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

/// Boots the kernel and runs the cases; prints each result as it arrives. A guest that
/// hangs is killed and the remaining cases run in a new VM (once).
pub(super) fn run_cases(kernel: &Kernel, cases: &[Case], kaprobe: &Path) -> Result<KernelReport> {
    let work = build::target_dir()?.join("vm").join(&kernel.release);
    let _ = fs::remove_dir_all(&work);
    let results = work.join("results");
    fs::create_dir_all(&results)?;
    let kvm = use_kvm(kernel, &build::target_dir()?.join("vm"))?;
    let label = kernel.series.label();
    let mut tally = Tally::new(label, cases, results);
    let started = Instant::now();
    let boots = boot_until_done(kernel, kvm, &work, kaprobe, &mut tally)?;
    tally.print_failures();
    if !boots.complete {
        tally.fail_missing();
    }
    let (passed, failed) = (tally.passed, tally.failed);
    let ok = failed == 0 && tally.reported == cases.len();
    eprintln!(
        "xtask: [{label}] kernel {}: boot {}, total {:.1} s{}",
        kernel.release,
        boots
            .first
            .map_or("n/a".to_owned(), |b| format!("{:.1} s", b.as_secs_f64())),
        started.elapsed().as_secs_f64(),
        if boots.hangs > 0 {
            format!(" ({} hung or crashed guest(s) replaced)", boots.hangs)
        } else {
            String::new()
        }
    );
    eprintln!("{label}: {passed} passed, {failed} failed");
    Ok(KernelReport {
        label: label.to_owned(),
        passed,
        failed,
        ok,
    })
}

/// What the boots of one kernel came to.
struct Boots {
    /// Time to the first guest that started its script.
    first: Option<Duration>,
    /// Hung or crashed guests replaced.
    hangs: usize,
    /// Whether every case has a result.
    complete: bool,
}

/// Boots VMs until every case has a result, or a boot ends early and may not be replaced.
fn boot_until_done(
    kernel: &Kernel,
    kvm: bool,
    work: &Path,
    kaprobe: &Path,
    tally: &mut Tally,
) -> Result<Boots> {
    let label = tally.label;
    let mut boots = Boots {
        first: None,
        hangs: 0,
        complete: true,
    };
    for boot in 1.. {
        let todo: Vec<usize> = (tally.reported..tally.cases.len()).collect();
        if todo.is_empty() {
            break;
        }
        let (vm, end, booted) = boot_once(kernel, kvm, work, boot, &todo, kaprobe, tally)?;
        boots.first = boots.first.or(booted);
        let done = tally.results.join("done").exists();
        // A guest kernel that crashed (seen once on 6.12 under TCG: "Oops: int3" in
        // call_timer_fn while a tracepoint's static key was being patched as a test attached
        // kaprobe, an emulation hazard of cross-modified code) is replaced like a hung one.
        let panicked = matches!(end, BootEnd::Exited)
            && !done
            && vm.console_text().contains("Kernel panic - not syncing");
        let all = done && tally.reported == tally.cases.len();
        let Some(why) = why_incomplete(&end, &vm, kvm, booted.is_some(), panicked, all) else {
            break;
        };
        let missing = tally.cases.len() - tally.reported;
        eprintln!("xtask: [{label}] {why}; {missing} test(s) without a result");
        tally.print_partial();
        eprintln!(
            "---- [{label}] console log (last 150 lines of {}) ----\n{}\n---- end of console log ----",
            vm.console.display(),
            tail(&vm.console_text(), 150)
        );
        drop(vm);
        if (matches!(end, BootEnd::Hung(_)) || panicked) && boots.hangs < HUNG_REBOOTS {
            boots.hangs += 1;
            eprintln!(
                "xtask: [{label}] GUEST {}: booting a new VM for the {missing} remaining test(s), {} being rerun (hung or crashed guests: {} of at most {HUNG_REBOOTS})",
                if panicked { "KERNEL PANICKED" } else { "HUNG" },
                tally.cases[tally.reported].name,
                boots.hangs
            );
            continue;
        }
        boots.complete = false;
        break;
    }
    Ok(boots)
}

/// Why a boot that ended with `end` left cases without a result; `None` if it did not (`all`
/// of them have one).
fn why_incomplete(
    end: &BootEnd,
    vm: &Vm,
    kvm: bool,
    booted: bool,
    panicked: bool,
    all: bool,
) -> Option<String> {
    Some(match end {
        BootEnd::Exited if all => return None,
        BootEnd::Exited if panicked => "the guest kernel panicked (console log below)".to_owned(),
        BootEnd::Exited if !booted => "the VM exited before the guest started the tests".to_owned(),
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
    })
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
    let results = &tally.results;
    for stale in ["uname", "heartbeat", "done", "guest.log"] {
        let _ = fs::remove_file(results.join(stale));
    }
    let indexed: Vec<(usize, &Case)> = todo.iter().map(|&i| (i, &tally.cases[i])).collect();
    let script = work.join(format!("guest-{boot}.sh"));
    fs::write(&script, guest_script(&indexed, results, kaprobe))?;
    let console = work.join(if boot == 1 {
        "console.log".to_owned()
    } else {
        format!("console-{boot}.log")
    });
    eprintln!(
        "xtask: [{}] booting {} ({}, {} CPUs, {}) for {} test(s); console log: {}",
        tally.label,
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
    let (end, booted) = follow(&mut vm, kvm, limit, tally);
    if !matches!(end, BootEnd::Exited) {
        vm.kill();
    }
    tally.update();
    Ok((vm, end, booted))
}

/// Follows a booted VM, taking the results as they come, until QEMU exits, the guest does
/// not start, stops its heartbeat, or the boot's time `limit` passes; with the time the
/// guest took to start its script.
fn follow(
    vm: &mut Vm,
    kvm: bool,
    limit: Duration,
    tally: &mut Tally,
) -> (BootEnd, Option<Duration>) {
    let results = tally.results.clone();
    let mut booted: Option<Duration> = None;
    let mut heartbeat = (String::new(), Instant::now());
    let end = loop {
        if booted.is_none() && results.join("uname").exists() {
            let t = vm.started.elapsed();
            booted = Some(t);
            heartbeat.1 = Instant::now();
            eprintln!(
                "xtask: [{}] guest up after {:.1} s",
                tally.label,
                t.as_secs_f64()
            );
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
    (end, booted)
}
