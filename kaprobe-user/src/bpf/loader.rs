//! Loading the embedded eBPF object and attaching its programs.
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, RawTracePoint},
};
use kaprobe_common::{CONFIG_GLOBAL, map_name, stat};
use thiserror::Error;

use super::progstats;
use crate::{
    cli::Attach,
    event::HookInfo,
    kernel::facts::{KernelFacts, ProgInfoLayout},
};

/// The eBPF object, built by `cargo xtask build` (or this crate's build script) and
/// embedded so that the binary is the only file to deploy.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kaprobe.bpf.o"));

/// Each hook: the tracepoint, the `tp_btf` program, the `raw_tp` fallback. In attach order:
/// the timer's exit before its entry, so that no firing is entered without its exit.
pub(crate) const HOOKS: [(&str, &str, &str); 6] = [
    ("timer_expire_exit", "kp_timer_exit", "kr_timer_exit"),
    ("timer_expire_entry", "kp_timer_entry", "kr_timer_entry"),
    ("inet_sock_set_state", "kp_set_state", "kr_set_state"),
    ("tcp_send_reset", "kp_send_reset", "kr_send_reset"),
    ("tcp_receive_reset", "kp_recv_reset", "kr_recv_reset"),
    ("inet_sk_error_report", "kp_sk_error", "kr_sk_error"),
];

#[derive(Debug, Error)]
pub(crate) enum LoadError {
    #[error(
        "this kaprobe binary was built without its eBPF object: build it with `cargo xtask build`"
    )]
    NoObject,
    #[error("cannot load kernel BTF for the loader: {0}")]
    Btf(#[from] aya::BtfError),
    #[error("cannot load the eBPF object: {0}")]
    Load(#[from] aya::EbpfError),
    #[error("cannot attach to tracepoint {tracepoint}: tp_btf: {btf}; raw tracepoint: {raw}")]
    Attach {
        tracepoint: &'static str,
        btf: String,
        raw: String,
    },
    #[error("eBPF map {0}: {1}")]
    Map(&'static str, aya::maps::MapError),
}

/// Sizes and choices the user made.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LoadOptions {
    pub(crate) ring_bytes: u32,
    pub(crate) max_connections: u32,
    pub(crate) attach: Attach,
}

/// The loaded programs; dropping it detaches and unloads everything.
pub(crate) struct Loaded {
    pub(crate) ebpf: Ebpf,
    pub(crate) hooks: Vec<HookInfo>,
    /// Names of the attached programs.
    pub(crate) programs: Vec<&'static str>,
}

fn describe(e: &aya::programs::ProgramError) -> String {
    // Keep the verifier log out of the one-line error, but show its last line.
    let text = e.to_string();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut detail = String::new();
    while let Some(s) = src {
        detail = s.to_string();
        src = s.source();
    }
    let detail = detail
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_owned();
    if detail.is_empty() {
        text
    } else {
        format!("{text}: {detail}")
    }
}

/// Sets of the kernel's socket table for `max_connections`: twice as many slots as
/// connections, 8 per set, a power of two (the programs mask the hash with it).
pub(crate) fn sock_sets(max_connections: u32) -> u32 {
    (max_connections as u64 * 2 / kaprobe_common::SOCK_WAYS as u64)
        .next_power_of_two()
        .clamp(1, 1 << 24) as u32
}

/// Loads the object with `facts.config`, and attaches every hook (tp_btf, else raw_tp).
/// `btf` is the kernel's (`aya::Btf::from_sys_fs`), for attaching BTF tracepoints: parsed by
/// the caller while it does other start-up work. (The loader parses it again: aya 0.14's
/// `EbpfLoader::new` always does.)
pub(crate) fn load(
    facts: &KernelFacts,
    opts: LoadOptions,
    btf: &aya::Btf,
) -> Result<Loaded, LoadError> {
    if EBPF_OBJECT.is_empty() {
        return Err(LoadError::NoObject);
    }
    let mut ebpf = EbpfLoader::new()
        .override_global(CONFIG_GLOBAL, &facts.config, true)
        .map_max_entries(map_name::EVENTS, opts.ring_bytes)
        .map_max_entries(map_name::SOCKS, sock_sets(opts.max_connections))
        .load(EBPF_OBJECT)?;
    // All hooks attach the same way (the programs identify sockets differently in the two
    // kinds): BTF tracepoints, else raw tracepoints for all.
    let mut hooks = Vec::new();
    let mut programs = Vec::new();
    let mut btf_failure = None;
    if opts.attach == Attach::RawTracepoint {
        btf_failure = Some((HOOKS[0].0, "not tried (--attach raw-tracepoint)".to_owned()));
    }
    for &(tracepoint, btf_prog, _) in HOOKS
        .iter()
        .filter(|_| opts.attach != Attach::RawTracepoint)
    {
        match attach_btf(&mut ebpf, btf_prog, tracepoint, btf) {
            Ok(()) => {
                hooks.push(HookInfo {
                    tracepoint: tracepoint.into(),
                    attach: "tp_btf".into(),
                });
                programs.push(btf_prog);
            }
            Err(e) => {
                btf_failure = Some((tracepoint, e));
                break;
            }
        }
    }
    if let Some((failed, btf_err)) = btf_failure {
        if opts.attach == Attach::TpBtf {
            return Err(LoadError::Attach {
                tracepoint: failed,
                btf: btf_err,
                raw: "not tried (--attach tp-btf)".into(),
            });
        }
        if opts.attach == Attach::Auto {
            log::warn!(
                "tp_btf {failed} unavailable ({btf_err}); using raw tracepoints for every hook"
            );
        }
        hooks.clear();
        programs.clear();
        for (_, btf_prog, _) in HOOKS {
            let prog: Option<&mut BtfTracePoint> =
                ebpf.program_mut(btf_prog).and_then(|p| p.try_into().ok());
            if let Some(p) = prog {
                let _ = p.unload();
            }
        }
        for (tracepoint, _, raw_prog) in HOOKS {
            attach_raw(&mut ebpf, raw_prog, tracepoint).map_err(|raw| LoadError::Attach {
                tracepoint,
                btf: if tracepoint == failed {
                    btf_err.clone()
                } else {
                    "not tried".into()
                },
                raw,
            })?;
            hooks.push(HookInfo {
                tracepoint: tracepoint.into(),
                attach: "raw_tracepoint".into(),
            });
            programs.push(raw_prog);
        }
    }
    Ok(Loaded {
        ebpf,
        hooks,
        programs,
    })
}

fn attach_btf(ebpf: &mut Ebpf, prog: &str, tracepoint: &str, btf: &aya::Btf) -> Result<(), String> {
    let p: &mut BtfTracePoint = ebpf
        .program_mut(prog)
        .ok_or_else(|| format!("program {prog} missing from the object"))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| describe(&e))?;
    p.load(tracepoint, btf).map_err(|e| describe(&e))?;
    p.attach().map_err(|e| describe(&e))?;
    Ok(())
}

fn attach_raw(ebpf: &mut Ebpf, prog: &str, tracepoint: &str) -> Result<(), String> {
    let p: &mut RawTracePoint = ebpf
        .program_mut(prog)
        .ok_or_else(|| format!("program {prog} missing from the object"))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| describe(&e))?;
    p.load().map_err(|e| describe(&e))?;
    p.attach(tracepoint).map_err(|e| describe(&e))?;
    Ok(())
}

impl Loaded {
    /// Each attached program's counters (those the kernel answers for).
    pub(crate) fn program_stats(
        &self,
        layout: &ProgInfoLayout,
    ) -> Vec<(&'static str, progstats::ProgStats)> {
        self.programs
            .iter()
            .filter_map(|&name| Some((name, self.ebpf.program(name)?.fd().ok()?)))
            .filter_map(|(name, fd)| {
                let stats = progstats::prog_stats(layout, std::os::fd::AsFd::as_fd(fd)).ok()?;
                Some((name, stats))
            })
            .collect()
    }

    /// Map `name`, taken out of the object (once).
    fn take(&mut self, name: &'static str) -> Result<aya::maps::Map, LoadError> {
        self.ebpf.take_map(name).ok_or(LoadError::Map(
            name,
            aya::maps::MapError::InvalidName { name: name.into() },
        ))
    }

    /// The ring buffer, taken out of the object (call once).
    pub(crate) fn ring(&mut self) -> Result<RingBuf<MapData>, LoadError> {
        let map = self.take(map_name::EVENTS)?;
        RingBuf::try_from(map).map_err(|e| LoadError::Map(map_name::EVENTS, e))
    }

    /// The per-CPU loss counters, taken out of the object (call once).
    pub(crate) fn stats(&mut self) -> Result<KernelStats, LoadError> {
        let map = self.take(map_name::STATS)?;
        Ok(KernelStats {
            map: PerCpuArray::try_from(map).map_err(|e| LoadError::Map(map_name::STATS, e))?,
        })
    }

    /// The listening ports' owners (`LISTENERS`), taken out of the object (call once): for
    /// seeding it with the listeners older than the agent ([`crate::host::existing`]).
    pub(crate) fn listeners(&mut self) -> Result<Listeners, LoadError> {
        let map = self.take(map_name::LISTENERS)?;
        aya::maps::HashMap::try_from(map).map_err(|e| LoadError::Map(map_name::LISTENERS, e))
    }
}

/// The kernel's `LISTENERS` map: listening port → owner.
pub(crate) type Listeners =
    aya::maps::HashMap<MapData, kaprobe_common::ListenKey, kaprobe_common::Owner>;

/// Reads the kernel side's per-CPU counters.
pub(crate) struct KernelStats {
    map: PerCpuArray<MapData, u64>,
}

impl KernelStats {
    fn sum(&self, index: u32) -> u64 {
        self.map.get(&index, 0).map(|v| v.iter().sum()).unwrap_or(0)
    }

    /// Records dropped because the ring buffer was full.
    pub(crate) fn ringbuf_full(&self) -> u64 {
        self.sum(stat::RINGBUF_FULL)
    }

    /// Sockets whose kernel-side record was evicted from a full set of `SOCKS`.
    pub(crate) fn conn_table_full(&self) -> u64 {
        self.sum(stat::CONN_TABLE_FULL)
    }

    /// Births of connections without keepalive not recorded: over `--birth-budget`.
    pub(crate) fn births_shed(&self) -> u64 {
        self.sum(stat::BIRTHS_SHED)
    }

    /// Records the programs wrote into the ring buffer.
    pub(crate) fn records_sent(&self) -> u64 {
        self.sum(stat::RECORDS_SENT)
    }

    /// Records the programs did not send because `--netns`/`--port` excluded them.
    pub(crate) fn records_filtered(&self) -> u64 {
        self.sum(stat::FILTERED)
    }

    /// Records lost (ring buffer full), per record kind: `(kind, count)` for kinds 1..=7.
    pub(crate) fn lost_by_kind(&self) -> Vec<(u32, u64)> {
        (1..=7)
            .map(|k| (k, self.sum(stat::LOST_BY_KIND + k)))
            .collect()
    }

    /// Lost keepalive timer records whose firing ended the connection.
    pub(crate) fn lost_timer_deaths(&self) -> u64 {
        self.sum(stat::LOST_TIMER_DEATHS)
    }

    /// Keepalive timer firings: (all, on sockets without SO_KEEPALIVE, quiet: nothing sent).
    pub(crate) fn timer_firings(&self) -> (u64, u64, u64) {
        (
            self.sum(stat::TIMER_FIRINGS),
            self.sum(stat::TIMER_NOT_KEEPOPEN),
            self.sum(stat::TIMER_QUIET),
        )
    }

    /// Keepalive timer firings whose entry and exit did not pair up on one CPU: (exits
    /// without entry, overlapping entries).
    pub(crate) fn timer_unpaired(&self) -> (u64, u64) {
        (
            self.sum(stat::TIMER_UNPAIRED),
            self.sum(stat::TIMER_OVERLAP),
        )
    }
}
