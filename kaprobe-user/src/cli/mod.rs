//! Command line: `kaprobe <subcommand>`, one module per subcommand.
mod filter;
mod ls;
mod watch;

use clap::{Parser, Subcommand, ValueEnum};

pub(crate) use filter::{Cidr, FilterArgs};
pub(crate) use ls::{LsArgs, StateArg};
pub(crate) use watch::{Attach, BirthBudget, WatchArgs};

#[derive(Debug, Parser)]
#[command(
    name = "kaprobe",
    version,
    about = "Traces TCP keepalive and tells why connections die (eBPF)"
)]
pub(crate) struct Cli {
    /// More log output on stderr (-v: info, -vv: debug).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub(crate) verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub(crate) quiet: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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

/// A NAT timeout (`--nat-timeout` of `watch` and `ls`): a positive duration.
fn parse_nat_timeout(s: &str) -> Result<std::time::Duration, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("`{s}`: the NAT timeout must be longer than 0"));
    }
    Ok(d)
}
