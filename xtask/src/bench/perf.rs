//! Where the CPU goes under churn: churn runs sampled by `perf record -a -g`, each sample
//! attributed to the tracer's BPF path, to its own process, or to neither.
use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};

use super::{
    Plan, Tools,
    process::tail,
    tracers::{CHURN_TRACERS, Tracer, start_tracer},
    workloads::wrk,
};

/// perf's sampling rate in the CPU-share rounds. At 999 Hz a 3 s round had ~50 samples in
/// kaprobe's BPF path: the per-round ratio to the empty programs scattered by ±20 % from
/// counting alone (a `--lean` run: 0.69-1.18 % of busy CPU over six rounds).
pub(super) const PERF_HZ: &str = "2999";

/// Where the machine's CPU went during one perf-sampled churn run: samples counted by
/// `perf record -a -g` (all CPUs, every CPU's idle loop included).
#[derive(Clone, Debug)]
pub(super) struct CpuRun {
    pub(super) tracer: Tracer,
    pub(super) rps: f64,
    /// Samples outside the idle task.
    pub(super) busy: u64,
    /// Samples, outside the tracer's process, whose kernel stack is in the tracepoint's
    /// dispatch to BPF: the programs, the helpers they call and the dispatch itself
    /// (`bpf_trace_run*`; for classic tracepoints `perf_trace_*` and `trace_call_bpf`).
    pub(super) bpf: u64,
    /// Samples of the tracer's own process (the agent; user and kernel time).
    pub(super) process: u64,
}

impl CpuRun {
    /// The tracer's share of the busy CPU: its BPF path plus its process.
    pub(super) fn share(&self) -> f64 {
        (self.bpf + self.process) as f64 / self.busy.max(1) as f64
    }
}

/// Whether a symbol of a kernel stack belongs to a tracepoint's dispatch to BPF.
fn bpf_frame(sym: &str) -> bool {
    sym.starts_with("bpf_prog_")
        || sym.starts_with("bpf_trace_run")
        || sym.starts_with("__bpf_trace_")
        || sym.starts_with("perf_trace_")
        || sym == "trace_call_bpf"
}

/// Counts the samples of `perf script -F pid,ip,sym` output: a line with the pid (padded
/// with spaces when it is short), then one line per stack frame (starting with a tab), then
/// an empty line.
fn classify_samples(script: &str, tracer_pid: Option<u32>) -> (u64, u64, u64) {
    let (mut busy, mut bpf, mut process) = (0, 0, 0);
    let mut count = |pid: Option<u32>, in_bpf: bool| match pid {
        None | Some(0) => {}
        Some(p) => {
            busy += 1;
            if Some(p) == tracer_pid {
                process += 1;
            } else if in_bpf {
                bpf += 1;
            }
        }
    };
    let (mut pid, mut in_bpf) = (None, false);
    for line in script.lines() {
        if line.trim().is_empty() {
            count(pid.take(), in_bpf);
            in_bpf = false;
        } else if !line.starts_with('\t') {
            pid = line.split_whitespace().next().and_then(|p| p.parse().ok());
        } else if let Some(sym) = line.split_whitespace().nth(1) {
            in_bpf |= bpf_frame(sym);
        }
    }
    count(pid, in_bpf);
    (busy, bpf, process)
}

/// Churn runs sampled by `perf record -a -g` (no bpf_stats), alternating tracers as the
/// throughput rounds do: the share of the busy CPU in each tracer's BPF path and process.
/// Unlike requests/s, a share does not move with the speed of the machine from run to run.
pub(super) fn cpu_attribution(
    plan: &Plan,
    tools: &Tools,
    work: &Path,
    port: u16,
) -> Result<Vec<CpuRun>> {
    let mut out = vec![];
    let data = work.join("perf.data");
    for round in 0..plan.cpu_rounds {
        for k in 0..CHURN_TRACERS.len() {
            let t = CHURN_TRACERS[(round + k) % CHURN_TRACERS.len()];
            let tag = format!("cpu-{round}-{k}");
            let run = sampled_run(t, plan.secs, tools, work, &tag, port, &data)?;
            eprintln!(
                "xtask: bench: cpu round {}/{}: {:<30} {:>5.2} % of busy CPU",
                round + 1,
                plan.cpu_rounds,
                t.label(),
                run.share() * 100.0
            );
            out.push(run);
        }
    }
    let _ = fs::remove_file(&data);
    Ok(out)
}

/// One churn run with tracer `t`, sampled for `secs` seconds into `data`.
fn sampled_run(
    t: Tracer,
    secs: u64,
    tools: &Tools,
    work: &Path,
    tag: &str,
    port: u16,
    data: &Path,
) -> Result<CpuRun> {
    let mut tracer = start_tracer(t, tools, work, tag)?;
    // wrk runs a second longer than the sampling, which starts once it runs.
    let load = std::thread::spawn(move || wrk(port, secs + 1, true));
    std::thread::sleep(Duration::from_millis(300));
    let rec = Command::new("perf")
        .args(["record", "-q", "-a", "-g", "-F", PERF_HZ, "-o"])
        .arg(data)
        .args(["--", "sleep", &secs.to_string()])
        .stdout(Stdio::null())
        .output()
        .context("running perf record (Debian package linux-perf)")?;
    let res = load.join().map_err(|_| anyhow!("wrk thread panicked"))??;
    let pid = tracer.as_ref().map(|p| p.pid());
    if let Some(p) = &mut tracer {
        p.check_alive()?;
        p.stop()?;
    }
    if !rec.status.success() {
        bail!(
            "perf record failed ({}): {}",
            rec.status,
            tail(&String::from_utf8_lossy(&rec.stderr), 1500)
        );
    }
    let script = Command::new("perf")
        .args(["script", "-F", "pid,ip,sym", "-i"])
        .arg(data)
        .stderr(Stdio::null())
        .output()
        .context("running perf script")?;
    let (busy, bpf, process) = classify_samples(&String::from_utf8_lossy(&script.stdout), pid);
    if busy == 0 {
        bail!("perf recorded no busy sample during a churn run");
    }
    Ok(CpuRun {
        tracer: t,
        rps: res.rps,
        busy,
        bpf,
        process,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perf_samples_are_split_by_process_and_bpf_stack() {
        // `perf script -F pid,ip,sym` as perf 6.1 prints it: idle, a sample in a BPF
        // program under the dispatch, one in the tracer's process, one in classic
        // tracepoint handling, one elsewhere, the last without a trailing empty line.
        let script = "    0 \n\tffffffff8100 default_idle\n\n\
                      1200 \n\tffffffffa000 bpf_prog_6deef7357e7b4530_F\n\
                      \tffffffff8200 bpf_trace_run3\n\tffffffff8300 tcp_set_state\n\n\
                         77 \n\tffffffff8400 bpf_ringbuf_output\n\tffffffffa000 bpf_prog_x\n\n\
                      1300 \n\tffffffff8500 perf_trace_inet_sock_set_state\n\n\
                      1200 \n\t7f00 http_parser_execute\n\tffffffff8600 tcp_v4_rcv";
        assert_eq!(classify_samples(script, Some(77)), (4, 2, 1));
        // Without a tracer process, its sample counts as a BPF one.
        assert_eq!(classify_samples(script, None), (4, 3, 0));
        let run = CpuRun {
            tracer: Tracer::Default,
            rps: 1.0,
            busy: 4,
            bpf: 2,
            process: 1,
        };
        assert_eq!(run.share(), 0.75);
    }
}
