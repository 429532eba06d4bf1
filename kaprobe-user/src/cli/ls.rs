//! `kaprobe ls`'s arguments.
use clap::{Args, ValueEnum};
use kaprobe_common::tcp_state;

use super::{Format, filter::FilterArgs, parse_nat_timeout};

#[derive(Debug, Args)]
pub(crate) struct LsArgs {
    /// Output format [default: human on a terminal, json otherwise].
    #[arg(long, value_enum)]
    pub(crate) format: Option<Format>,
    /// Idle time after which NATs and firewalls on the path may forget a connection: the
    /// threshold of the risk flags.
    #[arg(long, value_name = "DURATION", default_value = "350s", value_parser = parse_nat_timeout)]
    pub(crate) nat_timeout: std::time::Duration,
    #[command(flatten)]
    pub(crate) filter: FilterArgs,
    /// Only connections in this state (repeatable) [default: every state but listen].
    #[arg(long, value_enum, value_name = "STATE")]
    pub(crate) state: Vec<StateArg>,
    /// Only connections with at least one risk.
    #[arg(long)]
    pub(crate) at_risk: bool,
}

/// A TCP state for `--state`, named as in the event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum StateArg {
    #[value(name = "established")]
    Established,
    #[value(name = "syn_sent")]
    SynSent,
    #[value(name = "syn_recv")]
    SynRecv,
    #[value(name = "fin_wait1")]
    FinWait1,
    #[value(name = "fin_wait2")]
    FinWait2,
    #[value(name = "time_wait")]
    TimeWait,
    #[value(name = "close_wait")]
    CloseWait,
    #[value(name = "last_ack")]
    LastAck,
    #[value(name = "closing")]
    Closing,
    #[value(name = "listen")]
    Listen,
}

impl StateArg {
    pub(crate) fn code(self) -> u8 {
        match self {
            StateArg::Established => tcp_state::ESTABLISHED,
            StateArg::SynSent => tcp_state::SYN_SENT,
            StateArg::SynRecv => tcp_state::SYN_RECV,
            StateArg::FinWait1 => tcp_state::FIN_WAIT1,
            StateArg::FinWait2 => tcp_state::FIN_WAIT2,
            StateArg::TimeWait => tcp_state::TIME_WAIT,
            StateArg::CloseWait => tcp_state::CLOSE_WAIT,
            StateArg::LastAck => tcp_state::LAST_ACK,
            StateArg::Closing => tcp_state::CLOSING,
            StateArg::Listen => tcp_state::LISTEN,
        }
    }
}
