//! `kaprobe watch`: load the programs, follow connections, write events until Ctrl-C (or
//! SIGTERM, or `--duration`), then a summary (`agent_stop`).
mod agent;
mod cost;
mod event_loop;
mod existing;
mod losses;
mod pipeline;

use std::{
    fs::OpenOptions,
    io::{self, BufWriter, IsTerminal, Write},
    path::Path,
    time::{Duration, Instant},
};

use kaprobe_common::config_flag;

pub use pipeline::Pipeline;

use crate::{
    bpf::{
        loader::{self, LoadOptions},
        progstats,
    },
    cli::{BirthBudget, Format, WatchArgs},
    error::{Fatal, exit},
    kernel::{
        facts::{self as kernel, KernelError},
        privileges,
    },
    sink::{Output, metrics},
};

/// How often the ring buffer is drained without a wakeup (bulk records), closes waiting for
/// a trailing RST are reported, and the kernel's loss counters are checked.
const TICK: Duration = Duration::from_millis(100);
/// How long `agent_start` waits for the owners of what was open before (usually a few ms;
/// a host with very many processes or namespaces may take longer, then they come later).
const EXISTING_WAIT: Duration = Duration::from_millis(250);
/// An idle close: this side sends the first FIN after at least this long without data either
/// way (a keep-alive or pool idle timeout; a server answering `Connection: close` sends its
/// FIN with or right after its last data). Such closes are reported to the agent even for
/// connections it does not otherwise report, for the diagnosis of a peer that reuses the
/// connection afterwards (docs/events.md, `keepalive_race`) and the summaries.
const IDLE_CLOSE_MS: u32 = 250;
/// How often the owners of connections older than the agent are checked against the
/// connections still open (sock_diag in their namespaces).
const EXISTING_RECHECK: Duration = Duration::from_secs(60);
/// At most this often, while connections are followed without an owner (their start was
/// not recorded: over `--birth-budget`, `--lean`, or evicted), the processes holding them
/// are looked up the way the start-up look-up does (sock_diag and /proc, on a thread).
const OWNERLESS_RESCAN: Duration = Duration::from_secs(5);

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
pub(crate) fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

fn kernel_fatal(e: KernelError) -> Fatal {
    let code = match e {
        KernelError::KallsymsHidden | KernelError::KallsymsUnreadable(_) => exit::PERMISSION,
        _ => exit::UNSUPPORTED_KERNEL,
    };
    Fatal::new(code, e)
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

pub(crate) fn run(args: WatchArgs) -> Result<(), Fatal> {
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
    facts.config.idle_close_jiffies = (facts.hz * IDLE_CLOSE_MS / 1000).max(1);
    facts.config.birth_budget = match args.birth_budget {
        BirthBudget::PerCpuSecond(n) => n,
        BirthBudget::Unlimited => u32::MAX,
    };
    facts.config.birth_window_jiffies = facts.hz.max(1);
    facts.config.birth_jiffy_ns = 1_000_000_000 / facts.hz.max(1);
    facts.config.birth_start_ns = monotonic_ns();
    if std::env::var_os("KAPROBE_BENCH_EMPTY_PROGRAMS").is_some() {
        log::warn!(
            "KAPROBE_BENCH_EMPTY_PROGRAMS: programs attached but do nothing (benchmark floor)"
        );
        facts.config.flags |= config_flag::EMPTY;
    }
    // (Held until the run ends: the statistics stay on while it is open.)
    let _program_stats = args
        .program_stats
        .then(progstats::enable_run_time_stats)
        .transpose()
        .map_err(|e| {
            Fatal::new(
                exit::PERMISSION,
                format!("--program-stats: cannot turn on the kernel's BPF statistics: {e}"),
            )
        })?;
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
    runtime.block_on(event_loop::event_loop(
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
