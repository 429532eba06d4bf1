//! Memory: the agent's RSS following 10k and 100k live connections with keepalive on, and
//! the kernel memory of its maps.
use std::{
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use kaprobe_tests::{free_port, http_get};

use super::{
    Plan, Tools,
    bpf::{MapMem, map_memory},
    conns::{self, Conns},
    process::Proc,
    report::Report,
    system::proc_status_kb,
};

/// The agent following `conns` connections.
#[derive(Clone, Debug, Default)]
pub(super) struct Memory {
    pub(super) conns: usize,
    pub(super) max_connections: Option<u32>,
    pub(super) rss_idle_kb: u64,
    pub(super) rss_kb: u64,
    pub(super) hwm_kb: u64,
    pub(super) tracked: u64,
    pub(super) settle_secs: f64,
    pub(super) helpers: usize,
    pub(super) maps: Vec<MapMem>,
    pub(super) events_lost: u64,
}

/// Fills `r.memory` for each of the plan's connection counts; one above 10k that does not
/// fit on this machine goes to `r.memory_failures` instead.
pub(super) fn memory_all(plan: &Plan, tools: &Tools, work: &Path, r: &mut Report) -> Result<()> {
    for &n in &plan.memory_conns {
        match memory(tools, work, n) {
            Ok(m) => r.memory.push(m),
            // 100k connections may not fit on every machine: say so, keep the rest.
            Err(e) if n > 10_000 => r.memory_failures.push(format!("{n} connections: {e:#}")),
            Err(e) => return Err(e.context(format!("memory benchmark ({n} connections)"))),
        }
    }
    Ok(())
}

/// RSS of the agent following `n` live connections with keepalive on (idle 1 s, so each
/// one's timer fires and the agent learns it).
fn memory(tools: &Tools, work: &Path, n: usize) -> Result<Memory> {
    let link = conns::link("mem");
    // One client address: widen its ports (≤ 50k connections per listener).
    link.a.exec(
        "sysctl",
        &["-q", "-w", "net.ipv4.ip_local_port_range=1024 65535"],
    );
    // The agent follows at most --max-connections (default 65536); the kernel table holds
    // both ends of each connection (born in SYN_SENT / SYN_RECV).
    let max_conns = (n > 30_000).then(|| (2 * n as u32 + 1).next_power_of_two());
    let metrics = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut agent = start_agent(tools, work, n, metrics, max_conns)?;
    let pid = agent.pid();
    let mut m = Memory {
        conns: n,
        max_connections: max_conns,
        rss_idle_kb: proc_status_kb(pid, "VmRSS:"),
        maps: map_memory(pid)?,
        ..Memory::default()
    };
    let mut conns = Conns::start(tools, &link, work, n)?;
    m.helpers = conns.processes();
    let armed = conns.keepalive(1, 1, 9)?;
    m.tracked = wait_followed(&mut agent, metrics, n, armed)?;
    m.settle_secs = armed.elapsed().as_secs_f64();
    // One more second of probes and answers, then measure.
    std::thread::sleep(Duration::from_secs(1));
    m.rss_kb = proc_status_kb(pid, "VmRSS:");
    m.hwm_kb = proc_status_kb(pid, "VmHWM:");
    m.tracked = metric(metrics, "kaprobe_tracked_connections").unwrap_or(m.tracked);
    m.events_lost = metric(metrics, "kaprobe_events_lost_total").unwrap_or(0);
    // Quiet the timers, then stop the agent before the connections close (100k closes
    // would only measure the teardown).
    conns.keepalive(7200, 75, 9)?;
    agent.stop()?;
    drop(conns);
    Ok(m)
}

/// The agent with its metrics on `metrics`; returns once it is idle: it has freed what only
/// start-up needed (after agent_start).
fn start_agent(
    tools: &Tools,
    work: &Path,
    n: usize,
    metrics: SocketAddr,
    max_conns: Option<u32>,
) -> Result<Proc> {
    let mut cmd = Command::new(&tools.kaprobe);
    cmd.args(["watch", "--format", "json", "-v", "--metrics-addr"])
        .arg(metrics.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if let Some(m) = max_conns {
        cmd.arg("--max-connections").arg(m.to_string());
    }
    let mut agent = Proc::spawn(
        "kaprobe",
        &mut cmd,
        Some(work.join(format!("mem-{n}.stderr"))),
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !agent.stderr().contains("start-up memory released") {
        agent.check_alive()?;
        if Instant::now() > deadline {
            bail!("kaprobe did not start: {}", agent.stderr());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(agent)
}

/// Waits until the agent follows `n` connections (its metric); returns how many it follows.
fn wait_followed(agent: &mut Proc, metrics: SocketAddr, n: usize, armed: Instant) -> Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(60 + n as u64 / 2000);
    loop {
        agent.check_alive()?;
        let tracked = metric(metrics, "kaprobe_tracked_connections").unwrap_or(0);
        if tracked >= n as u64 {
            return Ok(tracked);
        }
        if Instant::now() > deadline {
            bail!(
                "the agent follows {tracked} of {n} connections after {:?}",
                armed.elapsed()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A metric of the agent, summed over its labels.
fn metric(addr: SocketAddr, name: &str) -> Option<u64> {
    let (_, body) = http_get(addr, "/metrics").ok()?;
    let values: Vec<f64> = body
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                return None;
            }
            rest.rsplit(' ').next()?.trim().parse::<f64>().ok()
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum::<f64>() as u64)
}
