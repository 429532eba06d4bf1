//! Start-up: from exec to the ready signal and to the first event, for kaprobe, tcpstates
//! and bpftrace, with a steady stimulus of TCP events.
use std::{
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow};
use kaprobe_tests::free_port;

use super::{
    Plan, Tools,
    process::{Proc, lines, tail, wait_line},
    stats::median,
    tracers::Tracer,
};

/// One tool's start-up times, run by run.
#[derive(Clone, Debug)]
pub(super) struct Startup {
    pub(super) tracer: Tracer,
    pub(super) ready_what: &'static str,
    pub(super) ready_secs: Vec<f64>,
    pub(super) first_event_secs: Vec<f64>,
}

/// Connection attempts to a closed loopback port every 10 ms (each: a reset, and state
/// changes), until dropped.
struct Stimulus(Arc<AtomicBool>, Option<std::thread::JoinHandle<()>>);

impl Stimulus {
    fn start() -> Stimulus {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let h = std::thread::spawn(move || {
            // Bounded: at most two minutes.
            for _ in 0..12_000 {
                if s.load(Ordering::Relaxed) {
                    break;
                }
                let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(100));
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        Stimulus(stop, Some(h))
    }
}

impl Drop for Stimulus {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
        if let Some(h) = self.1.take() {
            let _ = h.join();
        }
    }
}

/// `plan.startup_runs` start-ups of kaprobe, tcpstates and bpftrace each.
pub(super) fn startup(plan: &Plan, tools: &Tools, work: &Path) -> Result<Vec<Startup>> {
    let _stimulus = Stimulus::start();
    let mut out = vec![];
    for (t, ready_what) in [
        (Tracer::Default, "`agent_start` written"),
        (Tracer::Tcpstates, "header line (printed after attaching)"),
        (
            Tracer::Bpftrace,
            "`Attaching 1 probe...` (printed before attaching)",
        ),
    ] {
        let mut s = Startup {
            tracer: t,
            ready_what,
            ready_secs: vec![],
            first_event_secs: vec![],
        };
        for i in 0..plan.startup_runs {
            let (ready, event) = start_once(t, tools, work, i)?;
            s.ready_secs.push(ready);
            s.first_event_secs.push(event);
        }
        eprintln!(
            "xtask: bench: start-up {}: ready {:.3} s, first event {:.3} s (median)",
            t.label(),
            median(&s.ready_secs),
            median(&s.first_event_secs)
        );
        out.push(s);
    }
    Ok(out)
}

/// Starts tracer `t` once (run `i`): seconds from exec to its ready signal and to its first
/// event line.
fn start_once(t: Tracer, tools: &Tools, work: &Path, i: usize) -> Result<(f64, f64)> {
    let mut cmd = t.command(tools, &[], true).expect("a tracer");
    cmd.stdout(Stdio::piped());
    let t0 = Instant::now();
    let mut p = Proc::spawn(
        t.label(),
        &mut cmd,
        Some(work.join(format!("startup-{t:?}-{i}.stderr"))),
    )?;
    let rx = lines(p.child.stdout.take().expect("piped"));
    let timeout = Duration::from_secs(60);
    let failed = |e: anyhow::Error| anyhow!("{}: {e}: {}", t.label(), tail(&p.stderr(), 1500));
    let ready = if t.kaprobe() {
        wait_line(&rx, timeout, "agent_start", |l| {
            l.contains("\"agent_start\"")
        })
    } else {
        wait_line(&rx, timeout, "first line", |_| true)
    }
    .map_err(failed)?;
    let event = if t.kaprobe() {
        wait_line(&rx, timeout, "first event", |l| l.contains("\"event\""))
    } else {
        wait_line(&rx, timeout, "first event", |l| !l.trim().is_empty())
    }
    .map_err(failed)?;
    p.stop()?;
    Ok(((ready.0 - t0).as_secs_f64(), (event.0 - t0).as_secs_f64()))
}
