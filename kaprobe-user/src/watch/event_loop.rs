//! The agent's run, once the programs are attached: `agent_start`, records until a signal,
//! `--duration` or a closed output, then what is left and `agent_stop`.
use std::{
    io,
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use aya_log::EbpfLogger;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{Signal, SignalKind, signal},
    time::Interval,
};

use super::{
    EXISTING_WAIT, TICK,
    agent::Agent,
    clock_ns,
    cost::{self, Programs},
    monotonic_ns,
    pipeline::Pipeline,
    release_startup_memory,
};
use crate::{
    bpf::loader::{KernelStats, Loaded},
    cli::{BirthBudget, WatchArgs},
    correlate::{Clock, Correlator, Settings},
    error::{Fatal, exit},
    event::{Body, Event, KernelFeatures, SCHEMA_VERSION},
    host::existing::{self, Existing},
    kernel::facts::KernelFacts,
    sink::{
        Filter, Output,
        metrics::{self, AgentInfo, Metrics},
    },
};

fn runtime_error(e: io::Error) -> Fatal {
    Fatal::new(exit::RUNTIME, e)
}

/// What the loop waits on besides the agent.
struct Waits {
    ring: AsyncFd<RingBuf<MapData>>,
    ebpf_log: Option<AsyncFd<EbpfLogger<&'static dyn log::Log>>>,
    sigint: Signal,
    sigterm: Signal,
    sighup: Signal,
    tick: Interval,
    /// `--summary-interval`, and its timer.
    summary_every: Option<Duration>,
    summary_tick: Interval,
    /// `--duration`.
    deadline: Option<tokio::time::Instant>,
}

impl Waits {
    async fn new(loaded: &mut Loaded, args: &WatchArgs) -> Result<Waits, Fatal> {
        let ring = loaded.ring().map_err(|e| Fatal::new(exit::RUNTIME, e))?;
        // SAFETY: the ring buffer owns its map fd, which stays open and unchanged until the
        // AsyncFd (which owns the ring buffer) is dropped.
        let ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map_err(|e| runtime_error(e.into()))?;
        let ebpf_log = match EbpfLogger::init(&mut loaded.ebpf) {
            // SAFETY: as above, the logger owns its map fd.
            Ok(l) => Some(
                unsafe { AsyncFd::register_with_interest(l, Interest::READABLE) }
                    .map_err(|e| runtime_error(e.into()))?,
            ),
            Err(e) => {
                log::debug!("no eBPF log channel: {e}");
                None
            }
        };
        let summary_every = args.summary_interval;
        let mut summary_tick =
            tokio::time::interval(summary_every.unwrap_or(Duration::from_secs(3600)));
        summary_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick of an interval is immediate: use it up.
        summary_tick.tick().await;
        Ok(Waits {
            ring,
            ebpf_log,
            sigint: signal(SignalKind::interrupt()).map_err(runtime_error)?,
            sigterm: signal(SignalKind::terminate()).map_err(runtime_error)?,
            sighup: signal(SignalKind::hangup()).map_err(runtime_error)?,
            tick: tokio::time::interval(TICK),
            summary_every,
            summary_tick,
            deadline: args.duration.map(|d| tokio::time::Instant::now() + d),
        })
    }
}

/// `default`, `lean` or `all`.
fn mode(args: &WatchArgs) -> &'static str {
    match (args.all, args.lean) {
        (true, _) => "all",
        (false, true) => "lean",
        (false, false) => "default",
    }
}

/// `agent_start.birth_budget`: what the kernel side applies.
fn birth_budget(args: &WatchArgs) -> Option<u32> {
    match (args.all, args.lean, args.birth_budget) {
        (true, _, _) | (false, false, BirthBudget::Unlimited) => None,
        (false, true, _) => Some(0),
        (false, false, BirthBudget::PerCpuSecond(n)) => Some(n),
    }
}

fn agent_start(args: &WatchArgs, facts: &KernelFacts, loaded: &Loaded, clock: Clock) -> Event {
    Event::agent(
        clock.wall(monotonic_ns()),
        Body::AgentStart {
            version: env!("CARGO_PKG_VERSION"),
            schema_version: SCHEMA_VERSION,
            kernel: facts.release.clone(),
            mode: mode(args),
            hooks: loaded.hooks.clone(),
            features: KernelFeatures {
                reset_reason: facts.has_reset_reason(),
                keepalive_reset_reason: facts
                    .reset_reasons
                    .values()
                    .any(|n| n == "tcp_keepalive_timeout"),
                hz: facts.hz,
                hz_source: facts.hz_source.clone(),
            },
            ring_buffer_bytes: args.ring_bytes(),
            max_connections: args.max_connections,
            birth_budget: birth_budget(args),
        },
    )
}

/// Serves the metrics on `listener` (`--metrics-addr`).
fn serve_metrics(
    listener: std::net::TcpListener,
    args: &WatchArgs,
    facts: &KernelFacts,
    loaded: &Loaded,
) -> Arc<Metrics> {
    let info = AgentInfo {
        version: env!("CARGO_PKG_VERSION"),
        kernel: &facts.release,
        attach: loaded.hooks.first().map_or("none", |h| h.attach.as_str()),
        mode: mode(args),
        ring_buffer_bytes: args.ring_bytes(),
    };
    let m = Arc::new(Metrics::new(args.metrics_remote_port, &info));
    if let Ok(addr) = listener.local_addr() {
        log::info!("metrics on http://{addr}/metrics");
    }
    tokio::spawn(metrics::serve(listener, m.clone()));
    m
}

fn new_agent(
    args: &WatchArgs,
    facts: &KernelFacts,
    output: Output,
    existing: mpsc::Receiver<Existing>,
) -> Agent {
    let clock = Clock {
        realtime_offset_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC),
        hz: facts.hz,
    };
    let settings = Settings {
        clock,
        reset_reasons: facts.reset_reasons.clone(),
        max_connections: args.max_connections as usize,
        // The programs were attached before this point.
        traced_since_ns: monotonic_ns(),
        nat_timeout_ms: args.nat_timeout.as_millis() as u64,
    };
    Agent {
        pipe: Pipeline::new(
            Correlator::new(settings),
            Filter::from_args(&args.filter),
            output,
            args.summary_interval.is_some(),
        ),
        clock,
        timer_pairing: (0, 0),
        records_read: 0,
        output_path: args.output.clone(),
        existing_lookup: Some(existing),
        existing_checked_ns: monotonic_ns(),
        existing_check: None,
        ownerless_checked_ns: 0,
        ownerless_scanned_ns: 0,
        ownerless_took_ns: 0,
        ownerless_scan: None,
        ownerless_backoff: 1,
    }
}

pub(super) async fn event_loop(
    args: WatchArgs,
    facts: KernelFacts,
    mut loaded: Loaded,
    output: Output,
    metrics_listener: Option<std::net::TcpListener>,
    started: Instant,
    startup_leftovers: (crate::kernel::btf::Btf, aya::Btf),
) -> Result<(), Fatal> {
    // The programs are attached: the owners of what was open before are looked up now.
    let listeners = loaded
        .listeners()
        .inspect_err(|e| log::warn!("listeners older than kaprobe: not seeded: {e}"))
        .ok();
    let existing = existing::spawn(listeners, None);
    let stats = loaded.stats().map_err(|e| Fatal::new(exit::RUNTIME, e))?;
    let mut waits = Waits::new(&mut loaded, &args).await?;
    let mut agent = new_agent(&args, &facts, output, existing);
    if let Some(listener) = metrics_listener {
        agent.pipe.metrics = Some(serve_metrics(listener, &args, &facts, &loaded));
    }
    let start = agent_start(&args, &facts, &loaded, agent.clock);
    // Usually done by now; if not, it is taken on a later tick, and events that come
    // meanwhile may lack an owner.
    agent.poll_existing(EXISTING_WAIT);
    if agent.existing_lookup.is_some() {
        log::info!(
            "owners of what was open before kaprobe started: still looking after {} ms; events meanwhile may lack them",
            EXISTING_WAIT.as_millis()
        );
    }
    agent.pipe.write(&start)?;
    agent.pipe.flush()?;
    log::info!("tracing started in {} ms", started.elapsed().as_millis());
    release_startup_memory(startup_leftovers);

    let programs = |loaded: &Loaded| facts.prog_info.as_ref().map(|l| loaded.program_stats(l));
    if !run(&mut agent, &mut waits, &stats, || programs(&loaded)).await? {
        return Ok(()); // the output was closed
    }
    let programs = programs(&loaded);
    stop(
        agent,
        waits.ring.get_mut(),
        &stats,
        programs.as_ref(),
        started,
    )?;
    drop(loaded);
    Ok(())
}

/// Records and timers until a signal or `--duration` (true), or until the output is closed
/// (false).
async fn run(
    agent: &mut Agent,
    w: &mut Waits,
    stats: &KernelStats,
    programs: impl Fn() -> Option<Programs>,
) -> Result<bool, Fatal> {
    loop {
        tokio::select! {
            guard = w.ring.readable_mut() => {
                let mut guard = guard.map_err(runtime_error)?;
                agent.drain(guard.get_inner_mut())?;
                guard.clear_ready();
            }
            guard = async { w.ebpf_log.as_mut().expect("guarded").readable_mut().await }, if w.ebpf_log.is_some() => {
                let mut guard = guard.map_err(runtime_error)?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = w.tick.tick() => {
                // Bulk records do not wake us up: collect them here.
                agent.drain(w.ring.get_mut())?;
                agent.tick(monotonic_ns())?;
                let programs = programs();
                agent.poll_losses(stats, skipped(programs.as_ref()))?;
                agent.report_own_cost(programs.as_ref());
            }
            _ = w.sigint.recv() => return Ok(true),
            _ = w.sigterm.recv() => return Ok(true),
            _ = w.sighup.recv() => agent.reopen()?,
            _ = w.summary_tick.tick(), if w.summary_every.is_some() => {
                // What the kernel sent up to now belongs to this interval.
                agent.drain(w.ring.get_mut())?;
                agent.tick(monotonic_ns())?;
                agent.write_summary(w.summary_every.expect("guarded"))?;
            }
            _ = async { tokio::time::sleep_until(w.deadline.expect("guarded")).await }, if w.deadline.is_some() => return Ok(true),
        }
        if agent.pipe.closed {
            return Ok(false);
        }
    }
}

/// Runs of our programs the kernel skipped (recursion), if known.
fn skipped(programs: Option<&Programs>) -> Option<u64> {
    programs.map(|p| cost::totals(p).recursion_misses)
}

/// Stop: what the kernel already sent, closes still waiting, losses, then the summary.
fn stop(
    mut agent: Agent,
    ring: &mut RingBuf<MapData>,
    stats: &KernelStats,
    programs: Option<&Programs>,
    started: Instant,
) -> Result<(), Fatal> {
    agent.drain(ring)?;
    agent.pipe.finish()?;
    agent.poll_losses(stats, skipped(programs))?;
    agent.report_own_cost(programs);
    log::info!("{}", cost::summary_line(started.elapsed(), programs));
    // (Records written after the final drain, on a busy host, are not read: this is a
    // diagnostic, not a loss count; losses are counted by the kernel itself.)
    log::info!(
        "records: {} written by the kernel, {} read",
        stats.records_sent(),
        agent.records_read
    );
    let (firings, not_keepopen, quiet) = stats.timer_firings();
    let (unpaired, overlap) = stats.timer_unpaired();
    log::info!(
        "keepalive timer firings: {firings} (without SO_KEEPALIVE {not_keepopen}, nothing to send {quiet}, exits without entry {unpaired}, overlapping entries {overlap})"
    );
    let cs = &agent.pipe.correlator.stats;
    log::info!(
        "keepalive timeouts inferred (firing not traced, socket gone): {}; records dropped as late after an inference: {}",
        cs.unseen_deaths,
        cs.late_after_inference
    );
    agent.report_evictions(monotonic_ns())?;
    agent.pipe.totals.filtered_in_kernel = stats.records_filtered();
    let stop = Event::agent(
        agent.clock.wall(monotonic_ns()),
        Body::AgentStop {
            duration_ms: started.elapsed().as_millis() as u64,
            totals: Box::new(agent.pipe.totals.clone()),
            summary: Box::new(agent.pipe.summary_all.report()),
        },
    );
    agent.pipe.write(&stop)?;
    agent.pipe.flush()
}
