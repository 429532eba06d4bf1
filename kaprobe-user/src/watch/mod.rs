//! `kaprobe watch`: load the programs, follow connections, write events until Ctrl-C (or
//! SIGTERM, or `--duration`), then a summary (`agent_stop`).
use std::{
    fs::OpenOptions,
    io::{self, BufWriter, IsTerminal, Write},
    path::{Path, PathBuf},
    sync::{Arc, mpsc},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use kaprobe_common::config_flag;
use tokio::{
    io::{Interest, unix::AsyncFd},
    signal::unix::{SignalKind, signal},
};

use crate::{
    bpf::decode::decode,
    bpf::loader::{self, KernelStats, LoadOptions, Loaded},
    cli::WatchArgs,
    correlate::{Clock, Correlator, Settings},
    error::{Fatal, exit},
    event::{Body, Event, KernelFeatures, LostRecords, Totals},
    host::existing::{self, Existing},
    host::owner::CgroupPaths,
    kernel::facts::{self as kernel, KernelError, KernelFacts},
    kernel::privileges,
    sink::metrics::{self, AgentInfo, Metrics},
    sink::summary::Summary,
    sink::{self as output, Filter, Format, Output},
};

/// How often the ring buffer is drained without a wakeup (bulk records), closes waiting for
/// a trailing RST are reported, and the kernel's loss counters are checked.
const TICK: Duration = Duration::from_millis(100);
/// How long `agent_start` waits for the owners of what was open before (usually a few ms;
/// a host with very many processes or namespaces may take longer, then they come later).
const EXISTING_WAIT: Duration = Duration::from_millis(250);
/// How often the owners of connections older than the agent are checked against the
/// connections still open (sock_diag in their namespaces).
const EXISTING_RECHECK: Duration = Duration::from_secs(60);

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; both clocks always exist.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// CLOCK_MONOTONIC now, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

fn kernel_fatal(e: KernelError) -> Fatal {
    let code = match e {
        KernelError::KallsymsHidden | KernelError::KallsymsUnreadable(_) => exit::PERMISSION,
        _ => exit::UNSUPPORTED_KERNEL,
    };
    Fatal::new(code, e)
}

/// Everything between the ring buffer and the output.
struct Agent {
    correlator: Correlator,
    filter: Filter,
    output: Output,
    totals: Totals,
    scratch: Vec<Event>,
    clock: Clock,
    /// Set when the reader of stdout went away (`kaprobe watch | head`).
    closed: bool,
    /// Last seen (unpaired exits, overlapping entries) of the keepalive timer hooks.
    timer_pairing: (u64, u64),
    /// Records read from the ring buffer.
    records_read: u64,
    metrics: Option<Arc<Metrics>>,
    /// `-o FILE`, reopened on SIGHUP.
    output_path: Option<PathBuf>,
    /// cgroup ids → paths, for owners.
    cgroups: CgroupPaths,
    /// Since the last `summary` event (with `--summary-interval`).
    summary: Option<Summary>,
    /// The whole run, for `agent_stop`.
    summary_all: Summary,
    /// The start-up look-up of owners of what was open before ([`existing::spawn`]), until
    /// its answer is taken.
    existing_lookup: Option<mpsc::Receiver<Existing>>,
    /// When [`Agent::forget_ended_existing`] last looked (CLOCK_MONOTONIC ns), and its
    /// answer to come.
    existing_checked_ns: u64,
    existing_check: Option<mpsc::Receiver<std::collections::HashSet<(existing::ConnKey, u32)>>>,
}

impl Agent {
    fn write(&mut self, e: &Event) -> Result<(), Fatal> {
        if self.closed || !self.filter.matches(e) {
            return Ok(());
        }
        output::count(&mut self.totals, e);
        self.summary_all.observe(e);
        if let Some(s) = &mut self.summary {
            s.observe(e);
        }
        if let Some(m) = &self.metrics {
            m.observe(e);
        }
        match self.output.write(e) {
            Ok(()) => Ok(()),
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            Err(err) => Err(Fatal::new(
                exit::OUTPUT,
                format!("cannot write events: {err}"),
            )),
        }
    }

    fn write_scratch(&mut self) -> Result<(), Fatal> {
        let mut events = std::mem::take(&mut self.scratch);
        for o in events.iter_mut().filter_map(|e| e.owner.as_mut()) {
            o.resolve(&mut self.cgroups);
        }
        for e in &events {
            self.write(e)?;
        }
        self.scratch = events;
        self.scratch.clear();
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Fatal> {
        if self.closed {
            return Ok(());
        }
        match self.output.flush() {
            Err(err) if err.kind() == io::ErrorKind::BrokenPipe => {
                self.closed = true;
                Ok(())
            }
            Err(err) => Err(Fatal::new(
                exit::OUTPUT,
                format!("cannot write events: {err}"),
            )),
            Ok(()) => Ok(()),
        }
    }

    /// Reads every record waiting in the ring buffer.
    fn drain(&mut self, ring: &mut RingBuf<MapData>) -> Result<(), Fatal> {
        // (Before the records, so that they find the owners the look-up found.)
        self.poll_existing(Duration::ZERO);
        let (mut records, mut bad, mut bytes) = (0u64, 0u64, 0u64);
        while let Some(item) = ring.next() {
            records += 1;
            // Each record takes an 8-byte header and is padded to 8 bytes in the ring.
            bytes += 8 + (item.len() as u64).next_multiple_of(8);
            match decode(&item) {
                Ok(raw) => self.correlator.handle(&raw, &mut self.scratch),
                Err(e) => {
                    bad += 1;
                    log::debug!("undecodable record: {e}");
                }
            }
            drop(item);
            if self.scratch.len() >= 256 {
                self.write_scratch()?;
            }
        }
        self.records_read += records;
        self.totals.bad_records += bad;
        if let Some(m) = &self.metrics {
            m.drained(records, bad, bytes);
        }
        self.write_scratch()?;
        self.flush()
    }

    /// SIGHUP: reopen `-o FILE` (after logrotate moved it). On failure, keep writing to the
    /// old file and say so.
    fn reopen(&mut self) -> Result<(), Fatal> {
        let Some(path) = self.output_path.clone() else {
            log::info!("SIGHUP ignored: events go to stdout");
            return Ok(());
        };
        self.flush()?;
        match open_file(&path) {
            Ok(file) => {
                self.output.replace(Box::new(BufWriter::new(file)));
                log::info!("reopened {}", path.display());
            }
            Err(e) => log::error!("{e}; still writing to the file open before"),
        }
        Ok(())
    }

    /// Writes the `summary` event of the interval that just ended and starts the next.
    fn write_summary(&mut self, interval: Duration) -> Result<(), Fatal> {
        let Some(s) = self.summary.replace(Summary::default()) else {
            return Ok(());
        };
        self.write(&Event::agent(
            self.clock.wall(monotonic_ns()),
            Body::Summary {
                interval_ms: interval.as_millis() as u64,
                summary: s.report(),
            },
        ))?;
        self.flush()
    }

    fn tick(&mut self, now_mono: u64) -> Result<(), Fatal> {
        self.correlator.tick(now_mono, &mut self.scratch);
        self.check_overdue(now_mono);
        self.forget_ended_existing(now_mono);
        if let Some(m) = &self.metrics {
            m.table(self.correlator.tracked(), self.correlator.stats.evicted);
        }
        self.write_scratch()?;
        self.report_evictions(now_mono)
    }

    /// Takes the start-up look-up's answer if it comes within `wait`.
    fn poll_existing(&mut self, wait: Duration) {
        let Some(rx) = &self.existing_lookup else {
            return;
        };
        match rx.recv_timeout(wait) {
            Ok(found) => self.learn_existing(found),
            Err(mpsc::RecvTimeoutError::Timeout) => return,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                log::warn!("owners of what was open before kaprobe started: the look-up failed");
            }
        }
        self.existing_lookup = None;
    }

    /// Takes what [`existing::scan`] found (and says it).
    fn learn_existing(&mut self, found: Existing) {
        if let Some(why) = found.skipped {
            log::info!("owners of what was open before kaprobe started: not looked up: {why}");
            return;
        }
        log::info!(
            "owners of what was open before kaprobe started: {} connection(s), {} listener(s) ({} seeded in the kernel), in {} network namespace(s), {} ms",
            found.conns.len(),
            found.listeners.len(),
            found.listeners_seeded,
            found.namespaces,
            found.took.as_millis()
        );
        let missing = existing::missing_caps();
        if (found.unreadable > 0 || found.unowned > 0) && !missing.is_empty() {
            log::warn!(
                "owners of what was open before kaprobe started: not found for {} socket(s), {} network namespace(s) not read; missing {}",
                found.unowned,
                found.unreadable,
                missing.join(", ")
            );
        }
        self.correlator.set_existing(found.conns);
    }

    /// Every [`EXISTING_RECHECK`], while owners of connections older than the agent are kept:
    /// forgets those whose connection ended without a reported close (an orderly close of a
    /// connection without keepalive, in the default mode), so that a later connection with
    /// the same addresses is not given that owner.
    /// (The check runs on a thread of its own; its answer is taken on a later tick.)
    fn forget_ended_existing(&mut self, now_mono: u64) {
        if let Some(rx) = &self.existing_check {
            match rx.try_recv() {
                Ok(open) => {
                    log::debug!(
                        "owners of connections older than the agent: {} still open",
                        open.len()
                    );
                    self.correlator.retain_existing(&open);
                    self.existing_check = None;
                }
                Err(mpsc::TryRecvError::Empty) => return,
                Err(mpsc::TryRecvError::Disconnected) => self.existing_check = None,
            }
        }
        if now_mono.saturating_sub(self.existing_checked_ns) < EXISTING_RECHECK.as_nanos() as u64 {
            return;
        }
        self.existing_checked_ns = now_mono;
        let keys = self.correlator.existing_keys();
        if !keys.is_empty() {
            self.existing_check = existing::spawn_still_open(keys);
        }
    }

    /// Followed connections whose keepalive timer should have ended them and of which no
    /// record came: if the kernel no longer has the socket, its last firing was one no
    /// tracepoint saw (docs/design.md), and the timeout is reported as inferred.
    fn check_overdue(&mut self, now_mono: u64) {
        let overdue = self.correlator.overdue(now_mono);
        if overdue.is_empty() {
            return;
        }
        let tuples: Vec<_> = overdue.iter().map(|o| o.tuple).collect();
        let gone = crate::ls::sockets_gone(&tuples);
        let mut inferred = 0;
        for (o, g) in overdue.iter().zip(gone) {
            if g == Some(true) {
                self.correlator.unseen_death(o, &mut self.scratch);
                inferred += 1;
            }
        }
        log::debug!(
            "{} overdue keepalive timer(s), {inferred} socket(s) gone: timeouts inferred",
            overdue.len()
        );
    }

    /// Connections the agent stopped following because its table was full (the least
    /// recently active go first): an `events_lost` event, never silently.
    fn report_evictions(&mut self, now_mono: u64) -> Result<(), Fatal> {
        let total = self.correlator.stats.evicted;
        if total <= self.totals.evicted_connections {
            return Ok(());
        }
        let count = total - self.totals.evicted_connections;
        self.totals.evicted_connections = total;
        log::warn!(
            "{count} connections no longer followed: the agent's table was full (raise --max-connections)"
        );
        self.write(&Event::agent(
            self.clock.wall(now_mono),
            Body::EventsLost {
                count,
                source: "agent_conn_table",
                total,
                records: None,
            },
        ))
    }

    /// What the records lost since the last call were; updates the totals.
    fn lost_records(&mut self, stats: &KernelStats) -> LostRecords {
        let mut delta = LostRecords::default();
        let seen = &mut self.totals.lost_records;
        for (kind, total) in stats.lost_by_kind() {
            let name = kind_name(kind);
            let before = seen.by_kind.get(name).copied().unwrap_or(0);
            if total > before {
                delta.by_kind.insert(name, total - before);
                seen.by_kind.insert(name, total);
            }
        }
        let timer_ends = stats.lost_timer_deaths();
        delta.keepalive_timer_ends = timer_ends - seen.keepalive_timer_ends;
        if delta.keepalive_timer_ends > 0 {
            self.correlator.note_lost_deaths(monotonic_ns());
        }
        delta.connection_ends =
            delta.keepalive_timer_ends + delta.by_kind.get("close").copied().unwrap_or(0);
        seen.keepalive_timer_ends = timer_ends;
        seen.connection_ends += delta.connection_ends;
        delta
    }

    /// Turns growth of the kernel's loss counters into `events_lost` events. `skipped` is
    /// the number of hook runs the kernel skipped (recursion), if known.
    fn poll_losses(&mut self, stats: &KernelStats, skipped: Option<u64>) -> Result<(), Fatal> {
        if let Some(skipped) = skipped.filter(|&n| n > self.totals.skipped_hook_runs) {
            let count = skipped - self.totals.skipped_hook_runs;
            self.totals.skipped_hook_runs = skipped;
            log::warn!(
                "{count} hook runs skipped by the kernel (a program was already running on that CPU)"
            );
            let now = self.clock.wall(monotonic_ns());
            self.write(&Event::agent(
                now,
                Body::EventsLost {
                    count,
                    source: "recursion",
                    total: skipped,
                    records: None,
                },
            ))?;
        }
        let pairing = stats.timer_unpaired();
        if pairing != self.timer_pairing {
            log::warn!(
                "keepalive timer firings lost: {} exits without entry, {} overlapping entries",
                pairing.0,
                pairing.1
            );
            self.timer_pairing = pairing;
        }
        let now = self.clock.wall(monotonic_ns());
        let ring = stats.ringbuf_full();
        // The per-kind counters are bumped after the total: read after it, and reported
        // whenever either moved, so that the last report's sums match.
        let records = self.lost_records(stats);
        if ring > self.totals.events_lost || records != LostRecords::default() {
            let count = ring.saturating_sub(self.totals.events_lost);
            self.totals.events_lost = self.totals.events_lost.max(ring);
            log::warn!(
                "{count} records lost: the ring buffer was full (raise --ring-size); {} connection ends will not be reported",
                records.connection_ends
            );
            self.write(&Event::agent(
                now,
                Body::EventsLost {
                    count,
                    source: "ring_buffer",
                    total: ring,
                    records: Some(records),
                },
            ))?;
        }
        let conns = stats.conn_table_full();
        if conns > self.totals.untracked_sockets {
            let count = conns - self.totals.untracked_sockets;
            self.totals.untracked_sockets = conns;
            log::warn!(
                "{count} sockets not tracked: the kernel connection table was full (raise --max-connections)"
            );
            self.write(&Event::agent(
                now,
                Body::EventsLost {
                    count,
                    source: "kernel_conn_table",
                    total: conns,
                    records: None,
                },
            ))?;
        }
        self.flush()
    }
}

/// Name of a record kind in loss reports.
fn kind_name(kind: u32) -> &'static str {
    match kind {
        kaprobe_common::kind::KA_TIMER => "keepalive_timer",
        kaprobe_common::kind::STATE => "state",
        kaprobe_common::kind::CLOSE => "close",
        kaprobe_common::kind::RST_SENT => "reset_sent",
        kaprobe_common::kind::RST_RECV => "reset_received",
        kaprobe_common::kind::SK_ERROR => "error",
        kaprobe_common::kind::DESTROY => "destroy",
        _ => "other",
    }
}

fn open_file(path: &Path) -> Result<std::fs::File, Fatal> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Fatal::new(exit::OUTPUT, format!("cannot open {}: {e}", path.display())))
}

fn open_output(args: &WatchArgs) -> Result<(Box<dyn Write + Send>, Format), Fatal> {
    match &args.output {
        Some(path) => {
            let file = open_file(path)?;
            Ok((
                Box::new(BufWriter::new(file)),
                args.format.unwrap_or(Format::Json),
            ))
        }
        None => {
            let stdout = io::stdout();
            let default = if stdout.is_terminal() {
                Format::Human
            } else {
                Format::Json
            };
            Ok((
                Box::new(BufWriter::with_capacity(64 * 1024, stdout)),
                args.format.unwrap_or(default),
            ))
        }
    }
}

/// `--netns` and `--port` for the kernel side, when they fit (else user space alone
/// filters that kind).
fn kernel_filters(config: &mut kaprobe_common::Config, args: &WatchArgs) {
    use kaprobe_common::MAX_KERNEL_FILTERS;
    let f = &args.filter;
    if !f.netns.is_empty() && f.netns.len() <= MAX_KERNEL_FILTERS {
        config.n_filter_netns = f.netns.len() as u32;
        config.filter_netns[..f.netns.len()].copy_from_slice(&f.netns);
    }
    if !f.port.is_empty() && f.port.len() <= MAX_KERNEL_FILTERS {
        config.n_filter_ports = f.port.len() as u32;
        config.filter_ports[..f.port.len()].copy_from_slice(&f.port);
    }
}

/// Frees what only start-up needed (the two parsed copies of the kernel BTF, ours and
/// aya's) and gives the heap memory start-up used (those and the loader's own parse: many
/// small allocations) back to the system; glibc keeps such free pages in the process
/// otherwise, for the whole run. Done after `agent_start`: freeing and trimming take tens
/// of ms, which counted in the start-up time when done before.
fn release_startup_memory<T>(leftovers: T) {
    drop(leftovers);
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim has no preconditions: it only returns free memory of glibc's
    // allocator to the system, and may be called at any time.
    unsafe {
        libc::malloc_trim(0);
    }
    log::info!("start-up memory released");
}

pub fn run(args: WatchArgs) -> Result<(), Fatal> {
    let missing = privileges::missing_for_watch(privileges::effective_caps());
    if !missing.is_empty() {
        return Err(Fatal::new(
            exit::PERMISSION,
            format!(
                "kaprobe watch must run as root or with CAP_BPF, CAP_PERFMON and CAP_SYSLOG; missing {}",
                missing.join(", ")
            ),
        ));
    }
    let (sink, format) = open_output(&args)?;
    let metrics_listener = args
        .metrics_addr
        .map(|addr| {
            metrics::bind(addr).map_err(|e| {
                Fatal::new(
                    exit::METRICS,
                    format!("cannot serve metrics on {addr}: {e}"),
                )
            })
        })
        .transpose()?;
    // Most of the start-up time is three independent jobs, run side by side: our parse of
    // the kernel BTF and the facts found in it, /proc/kallsyms (the keepalive timer's
    // address: ~30 ms for the kernel to format), and aya's own parse of the BTF (to attach
    // BTF tracepoints). Both parsed BTFs (about 15 MB each for a distribution kernel) are
    // freed once tracing has started (see `release_startup_memory`). Measured: agent_start
    // 0.256-0.271 s -> 0.222-0.228 s after exec (medians of 6).
    let (btf, mut facts, attach_btf) = std::thread::scope(|s| {
        let attach_btf = s.spawn(aya::Btf::from_sys_fs);
        let timer_fn = s.spawn(kernel::keepalive_timer_address);
        let btf = kernel::load_btf(Path::new(kernel::VMLINUX_BTF)).map_err(kernel_fatal)?;
        let timer_fn = joined(timer_fn)?.map_err(kernel_fatal)?;
        let facts = kernel::probe(&btf, timer_fn).map_err(kernel_fatal)?;
        let attach_btf = joined(attach_btf)?
            .map_err(|e| Fatal::new(exit::UNSUPPORTED_KERNEL, loader::LoadError::from(e)))?;
        Ok::<_, Fatal>((btf, facts, attach_btf))
    })?;
    if args.all {
        facts.config.flags |= config_flag::ALL;
    }
    if args.lean {
        facts.config.flags |= config_flag::LEAN;
    }
    facts.config.wakeup_bytes = args.ring_bytes() / 16;
    kernel_filters(&mut facts.config, &args);
    facts.config.sock_sets_mask = loader::sock_sets(args.max_connections) - 1;
    if std::env::var_os("KAPROBE_BENCH_EMPTY_PROGRAMS").is_some() {
        log::warn!(
            "KAPROBE_BENCH_EMPTY_PROGRAMS: programs attached but do nothing (benchmark floor)"
        );
        facts.config.flags |= config_flag::EMPTY;
    }
    let started = Instant::now();
    let loaded = loader::load(
        &facts,
        LoadOptions {
            ring_bytes: args.ring_bytes(),
            max_connections: args.max_connections,
            attach: args.attach,
        },
        &attach_btf,
    )
    .map_err(|e| Fatal::new(exit::UNSUPPORTED_KERNEL, e))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Fatal::new(exit::RUNTIME, format!("cannot start the runtime: {e}")))?;
    runtime.block_on(event_loop(
        args,
        facts,
        loaded,
        Output::new(sink, format),
        metrics_listener,
        started,
        (btf, attach_btf),
    ))
}

/// The result of a start-up thread (a panic there is a bug: reported, not propagated).
fn joined<T>(h: std::thread::ScopedJoinHandle<'_, T>) -> Result<T, Fatal> {
    h.join()
        .map_err(|_| Fatal::new(exit::RUNTIME, "a start-up thread panicked"))
}

async fn event_loop(
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
    let existing = existing::spawn(listeners);
    let rt = |e: io::Error| Fatal::new(exit::RUNTIME, e);
    let ring = loaded.ring().map_err(|e| Fatal::new(exit::RUNTIME, e))?;
    let stats = loaded.stats().map_err(|e| Fatal::new(exit::RUNTIME, e))?;
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged until the
    // AsyncFd (which owns the ring buffer) is dropped.
    let info_layout = facts.prog_info.as_ref();
    let skipped = |loaded: &Loaded| info_layout.map(|l| loaded.recursion_misses(l));
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| rt(e.into()))?;
    let mut ebpf_log = match aya_log::EbpfLogger::init(&mut loaded.ebpf) {
        // SAFETY: as above, the logger owns its map fd.
        Ok(l) => Some(
            unsafe { AsyncFd::register_with_interest(l, Interest::READABLE) }
                .map_err(|e| rt(e.into()))?,
        ),
        Err(e) => {
            log::debug!("no eBPF log channel: {e}");
            None
        }
    };
    let mut sigint = signal(SignalKind::interrupt()).map_err(rt)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(rt)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(rt)?;
    let mut tick = tokio::time::interval(TICK);
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let summary_every = args.summary_interval;
    let mut summary_tick =
        tokio::time::interval(summary_every.unwrap_or(Duration::from_secs(3600)));
    summary_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick of an interval is immediate: use it up.
    summary_tick.tick().await;

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
    };
    let mut agent = Agent {
        correlator: Correlator::new(settings),
        filter: Filter::from_args(&args.filter),
        output,
        totals: Totals::default(),
        scratch: Vec::with_capacity(512),
        clock,
        closed: false,
        timer_pairing: (0, 0),
        records_read: 0,
        metrics: None,
        output_path: args.output.clone(),
        cgroups: CgroupPaths::default(),
        summary: args.summary_interval.map(|_| Summary::default()),
        summary_all: Summary::default(),
        existing_lookup: Some(existing),
        existing_checked_ns: monotonic_ns(),
        existing_check: None,
    };
    let mode = match (args.all, args.lean) {
        (true, _) => "all",
        (false, true) => "lean",
        (false, false) => "default",
    };
    if let Some(listener) = metrics_listener {
        let info = AgentInfo {
            version: env!("CARGO_PKG_VERSION"),
            kernel: &facts.release,
            attach: loaded.hooks.first().map_or("none", |h| h.attach.as_str()),
            mode,
            ring_buffer_bytes: args.ring_bytes(),
        };
        let m = Arc::new(Metrics::new(args.metrics_remote_port, &info));
        if let Ok(addr) = listener.local_addr() {
            log::info!("metrics on http://{addr}/metrics");
        }
        tokio::spawn(metrics::serve(listener, m.clone()));
        agent.metrics = Some(m);
    }
    let start = Event::agent(
        clock.wall(monotonic_ns()),
        Body::AgentStart {
            version: env!("CARGO_PKG_VERSION"),
            kernel: facts.release.clone(),
            mode,
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
        },
    );
    // Usually done by now; if not, it is taken on a later tick, and events that come
    // meanwhile may lack an owner.
    agent.poll_existing(EXISTING_WAIT);
    if agent.existing_lookup.is_some() {
        log::info!(
            "owners of what was open before kaprobe started: still looking after {} ms; events meanwhile may lack them",
            EXISTING_WAIT.as_millis()
        );
    }
    agent.write(&start)?;
    agent.flush()?;
    log::info!("tracing started in {} ms", started.elapsed().as_millis());
    release_startup_memory(startup_leftovers);

    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.map_err(rt)?;
                agent.drain(guard.get_inner_mut())?;
                guard.clear_ready();
            }
            guard = async { ebpf_log.as_mut().expect("guarded").readable_mut().await }, if ebpf_log.is_some() => {
                let mut guard = guard.map_err(rt)?;
                guard.get_inner_mut().flush();
                guard.clear_ready();
            }
            _ = tick.tick() => {
                // Bulk records do not wake us up: collect them here.
                agent.drain(ring.get_mut())?;
                agent.tick(monotonic_ns())?;
                agent.poll_losses(&stats, skipped(&loaded))?;
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => agent.reopen()?,
            _ = summary_tick.tick(), if summary_every.is_some() => {
                // What the kernel sent up to now belongs to this interval.
                agent.drain(ring.get_mut())?;
                agent.tick(monotonic_ns())?;
                agent.write_summary(summary_every.expect("guarded"))?;
            }
            _ = async { tokio::time::sleep_until(deadline.expect("guarded")).await }, if deadline.is_some() => break,
        }
        if agent.closed {
            return Ok(());
        }
    }
    // Stop: what the kernel already sent, closes still waiting, losses, then the summary.
    agent.drain(ring.get_mut())?;
    agent.correlator.flush(&mut agent.scratch);
    agent.write_scratch()?;
    agent.poll_losses(&stats, skipped(&loaded))?;
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
    let cs = &agent.correlator.stats;
    log::info!(
        "keepalive timeouts inferred (firing not traced, socket gone): {}; records dropped as late after an inference: {}",
        cs.unseen_deaths,
        cs.late_after_inference
    );
    agent.report_evictions(monotonic_ns())?;
    agent.totals.filtered_in_kernel = stats.records_filtered();
    let stop = Event::agent(
        clock.wall(monotonic_ns()),
        Body::AgentStop {
            duration_ms: started.elapsed().as_millis() as u64,
            totals: agent.totals.clone(),
            summary: agent.summary_all.report(),
        },
    );
    agent.write(&stop)?;
    agent.flush()?;
    drop(loaded);
    Ok(())
}
