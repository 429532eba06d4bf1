//! Command line: `kaprobe <subcommand>`, one module per subcommand.
mod filter;
mod ls;
mod watch;

use clap::{Parser, Subcommand, ValueEnum};

pub use filter::{Cidr, FilterArgs};
pub use ls::{LsArgs, StateArg};
pub use watch::{Attach, WatchArgs, default_ring_size};

#[derive(Debug, Parser)]
#[command(
    name = "kaprobe",
    version,
    about = "Traces TCP keepalive and tells why connections die (eBPF)"
)]
pub struct Cli {
    /// More log output on stderr (-v: info, -vv: debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace keepalive probes, answers, timeouts, resets, FINs and closes until Ctrl-C.
    Watch(WatchArgs),
    /// List live TCP connections of every network namespace with their keepalive settings
    /// and risks (a snapshot, no eBPF).
    Ls(LsArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// One aligned line per event.
    Human,
    /// JSON Lines (one object per line), see docs/events.md.
    Json,
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("`{s}`: {e} (e.g. 30s, 5m)"))
}
