//! `kaprobe watch`'s arguments.
use std::path::PathBuf;

use clap::Args;

use super::{Format, filter::FilterArgs, parse_duration, parse_nat_timeout};

#[derive(Debug, Args)]
pub(crate) struct WatchArgs {
    /// Output format [default: human on a terminal, json otherwise].
    #[arg(long, value_enum)]
    pub(crate) format: Option<Format>,
    /// Append events to FILE instead of writing them to stdout.
    #[arg(short, long, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
    /// Report the lifecycle (FINs, close) of every TCP connection, not only of those with
    /// keepalive on or that failed.
    #[arg(long)]
    pub(crate) all: bool,
    /// Record nothing when a connection without keepalive starts: the cheapest mode under
    /// heavy connection churn. Failures of such connections are still reported, but without
    /// their lifetime, and without their owner unless a local listener accepted them.
    #[arg(long, conflicts_with = "all")]
    pub(crate) lean: bool,
    /// Starts of connections without keepalive recorded per CPU and second, on average (what
    /// gives the owner and lifetime of such a connection if it fails); a burst after a quiet
    /// time is recorded whole up to 10 seconds' worth. Beyond it a start is not recorded,
    /// only counted (`births_shed` in agent_stop, kaprobe_births_shed_total): this bounds
    /// kaprobe's cost on a host opening connections very fast. `unlimited`: record every
    /// one.
    #[arg(long, value_name = "N|unlimited", default_value = "2000", value_parser = parse_birth_budget, conflicts_with_all = ["all", "lean"])]
    pub(crate) birth_budget: BirthBudget,
    #[command(flatten)]
    pub(crate) filter: FilterArgs,
    /// Idle time after which NATs, conntrack and firewalls on the path may forget a
    /// connection (AWS NAT gateway 350s, Azure load balancer 4m, GCP Cloud NAT 20m): a
    /// connection that dies on its first send after at least this long without hearing the
    /// peer is diagnosed `middlebox_idle_timeout`.
    #[arg(long, value_name = "DURATION", default_value = "350s", value_parser = parse_nat_timeout)]
    pub(crate) nat_timeout: std::time::Duration,
    /// Size of the kernel ring buffer (power of two) [default: 64 bytes per
    /// --max-connections, at least 4M: 4M for 65536 connections, 16M for 262144]
    #[arg(long, value_name = "BYTES", value_parser = parse_ring_size)]
    pub(crate) ring_size: Option<u32>,
    /// Most connections followed at once, in the kernel and in the agent.
    #[arg(long, value_name = "N", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(64..=16_777_216))]
    pub(crate) max_connections: u32,
    /// How to attach the hooks: BTF tracepoints, falling back to raw tracepoints (auto), or
    /// one kind only.
    #[arg(long, value_enum, default_value = "auto")]
    pub(crate) attach: Attach,
    /// Serve Prometheus metrics on http://ADDR/metrics (a bare port listens on 127.0.0.1).
    #[arg(long, value_name = "ADDR", value_parser = parse_metrics_addr)]
    pub(crate) metrics_addr: Option<std::net::SocketAddr>,
    /// Turn on the kernel's run-time statistics of BPF programs while kaprobe runs, so that
    /// the time its programs take in the kernel is measured (kaprobe_program_run_seconds_total,
    /// and the log line at the end). System-wide: every BPF program's run then costs two
    /// clock reads more. Needs CAP_SYS_ADMIN.
    #[arg(long)]
    pub(crate) program_stats: bool,
    /// Break keepalive, reset and close counts down by remote port in the metrics
    /// (at most 256 ports; the rest count as port 0).
    #[arg(long, requires = "metrics_addr")]
    pub(crate) metrics_remote_port: bool,
    /// Stop after this long (e.g. 30s) instead of waiting for Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    pub(crate) duration: Option<std::time::Duration>,
    /// Every this long (e.g. 60s), write a `summary` event: activity by remote endpoint and
    /// by owner, closes by listening port and by remote endpoint.
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub(crate) summary_interval: Option<std::time::Duration>,
}

/// `--birth-budget`: births recorded per CPU and second, or no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BirthBudget {
    PerCpuSecond(u32),
    Unlimited,
}

fn parse_birth_budget(s: &str) -> Result<BirthBudget, String> {
    if s == "unlimited" {
        return Ok(BirthBudget::Unlimited);
    }
    match s.parse::<u32>() {
        Ok(n) if n < u32::MAX => Ok(BirthBudget::PerCpuSecond(n)),
        _ => Err(format!(
            "expected a number of connections per CPU and second (0 to {}) or `unlimited`",
            u32::MAX - 1
        )),
    }
}

/// Which kind of tracepoint the hooks attach as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Attach {
    /// BTF tracepoints, else raw tracepoints.
    Auto,
    /// BTF tracepoints only (spelled as `agent_start.hooks[].attach` says it; `tp-btf` too).
    #[value(name = "tp_btf", alias = "tp-btf")]
    TpBtf,
    /// Raw tracepoints only (`raw-tracepoint` too).
    #[value(name = "raw_tracepoint", alias = "raw-tracepoint")]
    RawTracepoint,
}

fn parse_ring_size(s: &str) -> Result<u32, String> {
    let (num, mult) = match s.to_ascii_lowercase() {
        ref t if t.ends_with("k") || t.ends_with("kib") => (
            t.trim_end_matches("ib").trim_end_matches('k').to_owned(),
            1u64 << 10,
        ),
        ref t if t.ends_with("m") || t.ends_with("mib") => (
            t.trim_end_matches("ib").trim_end_matches('m').to_owned(),
            1u64 << 20,
        ),
        t => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 4M, 512K, 1048576)"))?;
    let bytes = n.checked_mul(mult).ok_or("size too large")?;
    if !(4096..=(1 << 30)).contains(&bytes) || !bytes.is_power_of_two() {
        return Err(format!(
            "`{s}`: the ring buffer must be a power of two between 4K and 1G"
        ));
    }
    Ok(bytes as u32)
}

/// `HOST:PORT`, `[V6]:PORT`, or a bare port (on 127.0.0.1).
fn parse_metrics_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().map_err(|_| {
        format!("`{s}` is not an address:port (e.g. 127.0.0.1:9464, [::1]:9464, 9464)")
    })
}

/// A duration of at least a second.
fn parse_positive_duration(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(s)?;
    if d < std::time::Duration::from_secs(1) {
        return Err(format!("`{s}`: must be at least 1s"));
    }
    Ok(d)
}

/// The ring buffer's size when `--ring-size` is not given: 64 bytes per followed connection
/// (a power of two, 4 MiB to 256 MiB). Keepalive timers armed together fire together, one
/// record each (~250 bytes): with 100k connections at keepalive 1 s / 1 s, a 4 MiB ring lost
/// 4-12 % of the records and the agent needed 75-77 s to see every connection once; with
/// 16 MiB, none and 0.3-0.6 s (docs/benchmarks.md, Memory). The agent's RSS counts the ring twice (its
/// pages are mapped twice), so the size grows with what the user asked to follow.
pub(crate) fn default_ring_size(max_connections: u32) -> u32 {
    (u64::from(max_connections) * 64)
        .next_power_of_two()
        .clamp(4 << 20, 256 << 20) as u32
}

impl WatchArgs {
    /// `--ring-size`, else [`default_ring_size`].
    pub(crate) fn ring_bytes(&self) -> u32 {
        self.ring_size
            .unwrap_or_else(|| default_ring_size(self.max_connections))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn watch(args: &[&str]) -> WatchArgs {
        let argv = ["kaprobe", "watch"].iter().chain(args).copied();
        match Cli::try_parse_from(argv).expect("valid flags").command {
            Command::Watch(w) => w,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn birth_budget_is_a_count_or_unlimited() {
        assert_eq!(watch(&[]).birth_budget, BirthBudget::PerCpuSecond(2000));
        assert_eq!(
            watch(&["--birth-budget", "0"]).birth_budget,
            BirthBudget::PerCpuSecond(0)
        );
        assert_eq!(
            watch(&["--birth-budget", "unlimited"]).birth_budget,
            BirthBudget::Unlimited
        );
        let argv = ["kaprobe", "watch", "--birth-budget"];
        for bad in ["-1", "many", "4294967295", ""] {
            assert!(
                Cli::try_parse_from(argv.iter().chain(&[bad])).is_err(),
                "{bad}"
            );
        }
        // With --all or --lean the budget means nothing: saying both is a mistake.
        for mode in ["--all", "--lean"] {
            assert!(Cli::try_parse_from(argv.iter().chain(&["5", mode])).is_err());
        }
    }

    #[test]
    fn ring_grows_with_the_connections_followed_unless_given() {
        assert_eq!(watch(&[]).ring_bytes(), 4 << 20);
        assert_eq!(watch(&["--max-connections", "1000"]).ring_bytes(), 4 << 20);
        assert_eq!(
            watch(&["--max-connections", "100000"]).ring_bytes(),
            8 << 20
        );
        assert_eq!(
            watch(&["--max-connections", "262144"]).ring_bytes(),
            16 << 20
        );
        assert_eq!(
            watch(&["--max-connections", "16777216"]).ring_bytes(),
            256 << 20
        );
        assert_eq!(
            watch(&["--max-connections", "262144", "--ring-size", "1M"]).ring_bytes(),
            1 << 20
        );
    }
}
