//! End to end, a timeout burst: thousands of connections time out at once (the peer
//! silenced by nftables), with the default ring buffer: how long the agent takes to report
//! them, and whether any is lost.
use std::{
    path::Path,
    process::{Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Result, anyhow, bail};
use kaprobe_tests::{Link, NetNs};
use serde_json::Value;

use super::{
    Plan, Tools,
    conns::{self, Conns},
    process::{Proc, lines, wait_line},
};

/// What the burst measured.
#[derive(Clone, Debug, Default)]
pub(super) struct Stress {
    pub(super) conns: usize,
    pub(super) kernel_timeouts: u64,
    pub(super) reported: u64,
    pub(super) events_lost: u64,
    pub(super) lost_timer_ends: u64,
    /// From the keepalive settings to the kernel's count reaching all of them.
    pub(super) kernel_secs: f64,
    /// From the first reported timeout to the last, as read from the agent's output.
    pub(super) report_spread_secs: f64,
    /// Largest delay between a timeout's kernel timestamp and reading its line.
    pub(super) max_lag_secs: f64,
    /// From the kernel's count reaching all (as polled) to the agent's last report; negative
    /// when the agent was done before the poll saw the kernel's count.
    pub(super) drain_after_kernel_secs: Option<f64>,
}

/// The burst with `plan.stress_conns` connections; fails unless the kernel timed them all out
/// and every timeout is either reported or counted lost by the agent.
pub(super) fn stress(plan: &Plan, tools: &Tools, work: &Path) -> Result<Stress> {
    let n = plan.stress_conns;
    let link = conns::link("st");
    let conns = Conns::start(tools, &link, work, n)?;
    let s = burst(tools, work, &link, conns, n)?;
    if s.kernel_timeouts < n as u64 {
        bail!(
            "only {} of {n} connections timed out in the kernel",
            s.kernel_timeouts
        );
    }
    if s.reported + s.lost_timer_ends != s.kernel_timeouts {
        bail!(
            "{} timeouts reported + {} counted lost ≠ {} in the kernel",
            s.reported,
            s.lost_timer_ends,
            s.kernel_timeouts
        );
    }
    Ok(s)
}

/// Starts the agent, silences `link.b`, sets keepalive 1 s / 1 s / 1 probe on every client
/// of `conns` (in `link.a`) and follows the timeouts until the agent has reported them all
/// or gives up; stops the agent, then the connections.
fn burst(tools: &Tools, work: &Path, link: &Link, mut conns: Conns, n: usize) -> Result<Stress> {
    let mut reports = Reports::new(link.a.inode());
    let mut agent = Proc::spawn(
        "kaprobe",
        Command::new(&tools.kaprobe)
            .args(["watch", "--format", "json", "-v"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped()),
        Some(work.join("stress-kaprobe.stderr")),
    )?;
    let out = lines(agent.child.stdout.take().expect("piped"));
    wait_line(&out, Duration::from_secs(30), "agent_start", |l| {
        l.contains("\"agent_start\"")
    })?;
    let mut kernel = KernelCount::new(&link.a, n);
    link.silence_b();
    let armed = conns.keepalive(1, 1, 1)?;
    let deadline = armed + Duration::from_secs(30 + n as u64 / 500);
    follow(&mut kernel, &mut reports, &out, &mut agent, deadline)?;
    agent.check_alive()?;
    agent.stop()?;
    let stop = drain(&out, &mut reports)?;
    drop(conns);
    Ok(result(n, armed, &kernel, &reports, &stop))
}

/// The kernel's count of keepalive timeouts in a namespace (TcpExtTCPAbortOnTimeout).
struct KernelCount<'a> {
    ns: &'a NetNs,
    before: u64,
    want: u64,
    /// Since the start.
    count: u64,
    /// When a poll first saw `want`.
    done: Option<Instant>,
}

impl<'a> KernelCount<'a> {
    fn new(ns: &'a NetNs, want: usize) -> KernelCount<'a> {
        KernelCount {
            ns,
            before: aborts(ns),
            want: want as u64,
            count: 0,
            done: None,
        }
    }

    fn poll(&mut self) {
        self.count = aborts(self.ns) - self.before;
        if self.count >= self.want && self.done.is_none() {
            self.done = Some(Instant::now());
        }
    }
}

fn aborts(ns: &NetNs) -> u64 {
    ns.nstat()
        .get("TcpExtTCPAbortOnTimeout")
        .copied()
        .unwrap_or(0)
}

/// The agent's `keepalive_timeout` lines of one namespace, as they are read.
struct Reports {
    netns: u64,
    count: u64,
    first: Option<Instant>,
    last: Option<Instant>,
    max_lag_secs: f64,
}

impl Reports {
    fn new(netns: u64) -> Reports {
        Reports {
            netns,
            count: 0,
            first: None,
            last: None,
            max_lag_secs: 0.0,
        }
    }

    /// Counts line `l`, read at `t`, if it is one of ours.
    fn line(&mut self, t: Instant, l: &str) {
        if !l.contains("\"keepalive_timeout\"") {
            return;
        }
        let Ok(v) = serde_json::from_str::<Value>(l) else {
            return;
        };
        if v["event"] != "keepalive_timeout" || v["netns"].as_u64() != Some(self.netns) {
            return;
        }
        self.count += 1;
        self.first.get_or_insert(t);
        self.last = Some(t);
        if let Some(ts) = v["ts"].as_str().and_then(parse_rfc3339) {
            let lag = unix_now() - t.elapsed().as_secs_f64() - ts;
            self.max_lag_secs = self.max_lag_secs.max(lag);
        }
    }
}

/// Reads the agent's output and polls the kernel's count (every 100 ms) until the agent has
/// reported all the timeouts the kernel counted, 5 s after the kernel's count was complete,
/// or `deadline`.
fn follow(
    kernel: &mut KernelCount,
    reports: &mut Reports,
    out: &Receiver<(Instant, String)>,
    agent: &mut Proc,
    deadline: Instant,
) -> Result<()> {
    let mut next_poll = Instant::now();
    loop {
        let now = Instant::now();
        if now >= next_poll {
            next_poll = now + Duration::from_millis(100);
            kernel.poll();
        }
        if reports.count >= kernel.want && kernel.done.is_some() {
            return Ok(());
        }
        if kernel
            .done
            .is_some_and(|t| t.elapsed() > Duration::from_secs(5))
            || Instant::now() > deadline
        {
            return Ok(());
        }
        match out.recv_timeout(Duration::from_millis(20)) {
            Ok((t, l)) => reports.line(t, &l),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                agent.check_alive()?;
                bail!("kaprobe closed its output");
            }
        }
    }
}

/// The lines the agent wrote until it stopped: the last reports, and `agent_stop`.
fn drain(out: &Receiver<(Instant, String)>, reports: &mut Reports) -> Result<Value> {
    let mut stop = None;
    while let Ok((t, l)) = out.recv_timeout(Duration::from_secs(5)) {
        if l.contains("\"agent_stop\"") {
            stop = serde_json::from_str::<Value>(&l).ok();
        } else {
            reports.line(t, &l);
        }
    }
    stop.ok_or_else(|| anyhow!("kaprobe wrote no agent_stop"))
}

/// The burst's numbers: `armed` when keepalive was set, `stop` the agent's `agent_stop`.
fn result(n: usize, armed: Instant, kernel: &KernelCount, r: &Reports, stop: &Value) -> Stress {
    let mut s = Stress {
        conns: n,
        kernel_timeouts: kernel.count,
        reported: r.count,
        events_lost: stop["totals"]["events_lost"].as_u64().unwrap_or(0),
        lost_timer_ends: stop["totals"]["lost_records"]["keepalive_timer_ends"]
            .as_u64()
            .unwrap_or(0),
        max_lag_secs: r.max_lag_secs,
        ..Stress::default()
    };
    if let Some(k) = kernel.done {
        s.kernel_secs = (k - armed).as_secs_f64();
        if let Some(l) = r.last {
            s.drain_after_kernel_secs = Some(if l >= k {
                (l - k).as_secs_f64()
            } else {
                -(k - l).as_secs_f64()
            });
        }
    }
    if let (Some(f), Some(l)) = (r.first, r.last) {
        s.report_spread_secs = (l - f).as_secs_f64();
    }
    s
}

/// Parses an RFC 3339 UTC timestamp (`2025-01-02T03:04:05.123456Z`) as Unix seconds.
fn parse_rfc3339(s: &str) -> Option<f64> {
    let (date, time) = s.trim_end_matches('Z').split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.split(':');
    let (hh, mm): (i64, i64) = (t.next()?.parse().ok()?, t.next()?.parse().ok()?);
    let ss: f64 = t.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60) as f64 + ss)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0.0));
        let t = parse_rfc3339("2025-11-28T02:13:57.250000Z").expect("parses");
        assert!((t - 1_764_296_037.25).abs() < 1e-6, "{t}");
    }
}
