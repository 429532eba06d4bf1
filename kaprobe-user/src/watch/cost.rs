//! kaprobe's own cost, for the operator: the agent process's CPU time and memory, and its
//! programs' runs and run time in the kernel (while the kernel's BPF run-time statistics
//! are on: `--program-stats`, or `kernel.bpf_stats_enabled=1`). Served as metrics and logged
//! at the end of the run; the overhead bounds themselves are measured by `cargo xtask
//! bench` (docs/benchmarks.md).
use std::time::Duration;

use super::agent::Agent;
use crate::bpf::progstats::ProgStats;

/// Each program's counters, as the kernel gives them (see [`crate::bpf::progstats`]).
pub(super) type Programs = Vec<(&'static str, ProgStats)>;

/// CPU time of this process (user and system, every thread) so far.
pub(super) fn process_cpu() -> Duration {
    // SAFETY: getrusage fills the rusage it is given; an all-zero rusage is a valid value
    // to start from.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// Resident memory of this process now (bytes), from /proc/self/statm; 0 if unreadable.
pub(super) fn resident_bytes() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page)
}

/// The programs' totals: runs skipped by the kernel (recursion), runs and run time.
pub(super) fn totals(programs: &[(&'static str, ProgStats)]) -> ProgStats {
    programs
        .iter()
        .fold(ProgStats::default(), |sum, (_, p)| ProgStats {
            recursion_misses: sum.recursion_misses + p.recursion_misses,
            run_cnt: sum.run_cnt + p.run_cnt,
            run_time_ns: sum.run_time_ns + p.run_time_ns,
        })
}

impl Agent {
    /// Brings the own-cost metrics up to date (with `--metrics-addr`).
    pub(super) fn report_own_cost(&self, programs: Option<&Programs>) {
        if let Some(m) = &self.pipe.metrics {
            m.own_cost(
                process_cpu().as_secs_f64(),
                resident_bytes(),
                programs.map_or(&[], |p| p.as_slice()),
            );
        }
    }
}

/// The log line at the end of the run: what kaprobe cost over `elapsed`.
pub(super) fn summary_line(elapsed: Duration, programs: Option<&Programs>) -> String {
    let cpu = process_cpu();
    let share = 100.0 * cpu.as_secs_f64() / elapsed.as_secs_f64().max(1e-9);
    let mut line = format!(
        "own cost: agent CPU {:.3} s in {:.1} s ({share:.2} % of one CPU), resident memory {:.1} MB",
        cpu.as_secs_f64(),
        elapsed.as_secs_f64(),
        resident_bytes() as f64 / 1e6
    );
    match programs.map(|p| totals(p)) {
        Some(t) if t.run_cnt > 0 => line.push_str(&format!(
            "; programs: {} runs, {:.3} ms in the kernel ({:.0} ns a run) while BPF statistics were on",
            t.run_cnt,
            t.run_time_ns as f64 / 1e6,
            t.run_time_ns as f64 / t.run_cnt as f64
        )),
        _ => line.push_str(
            "; programs' time in the kernel not counted (--program-stats, or sysctl kernel.bpf_stats_enabled=1)",
        ),
    }
    line
}
