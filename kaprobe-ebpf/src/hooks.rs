//! Program entry points. Each hook exists twice: as a BTF tracepoint (`tp_btf`, preferred:
//! cheapest, and loadable with CAP_BPF + CAP_PERFMON) and as a raw tracepoint (`raw_tp`),
//! which the agent falls back to where `tp_btf` cannot attach. Both receive the
//! tracepoint's `TP_PROTO` arguments as 64-bit values and run the same code.
use aya_ebpf::{
    macros::{btf_tracepoint, raw_tracepoint},
    programs::{BtfTracePointContext, RawTracePointContext},
};
use kaprobe_common::{REASON_UNKNOWN, config_flag};

use crate::{
    conf,
    kernel::{Btf, Probe},
    reset, state, timer,
};

/// `hook!(tracepoint, tp_btf program, raw_tp program, |arg, Mem, ctx| body)`: `Mem` is
/// [`Btf`] in the BTF tracepoint (typed arguments, direct loads) and [`Probe`] in the raw
/// one.
macro_rules! hook {
    ($tp:literal, $btf:ident, $raw:ident, |$arg:ident, $mem:ident $(, $ctx:ident)?| $body:expr) => {
        #[btf_tracepoint(function = $tp)]
        pub fn $btf(ctx: BtfTracePointContext) -> i32 {
            if conf!(flags) & config_flag::EMPTY != 0 {
                return 0;
            }
            type $mem = Btf;
            let $arg = |n: usize| ctx.arg::<u64>(n);
            $(let $ctx = &ctx;)?
            $body;
            0
        }

        #[raw_tracepoint(tracepoint = $tp)]
        pub fn $raw(ctx: RawTracePointContext) -> i32 {
            if conf!(flags) & config_flag::EMPTY != 0 {
                return 0;
            }
            type $mem = Probe;
            let $arg = |n: usize| ctx.arg::<u64>(n);
            $(let $ctx = &ctx;)?
            $body;
            0
        }
    };
}

// timer_expire_entry(struct timer_list *timer, unsigned long baseclk)
hook!(
    "timer_expire_entry",
    kp_timer_entry,
    kr_timer_entry,
    |arg, M| timer::on_entry::<M>(arg(0))
);
// timer_expire_exit(struct timer_list *timer)
hook!(
    "timer_expire_exit",
    kp_timer_exit,
    kr_timer_exit,
    |arg, M| timer::on_exit::<M>(arg(0))
);
// inet_sock_set_state(const struct sock *sk, const int oldstate, const int newstate)
hook!(
    "inet_sock_set_state",
    kp_set_state,
    kr_set_state,
    |arg, M, ctx| state::on_state::<M, _>(ctx, arg(0), arg(1) as u8, arg(2) as u8)
);
// tcp_send_reset(const struct sock *sk, const struct sk_buff *skb[, const enum sk_rst_reason reason])
hook!("tcp_send_reset", kp_send_reset, kr_send_reset, |arg, M| {
    let reason = if conf!(flags) & config_flag::RESET_HAS_REASON != 0 {
        arg(2) as u32
    } else {
        REASON_UNKNOWN
    };
    reset::on_send_reset::<M>(arg(0), arg(1), reason)
});
// tcp_receive_reset(struct sock *sk)
hook!(
    "tcp_receive_reset",
    kp_recv_reset,
    kr_recv_reset,
    |arg, M| reset::on_receive_reset::<M>(arg(0))
);
// inet_sk_error_report(const struct sock *sk)
hook!(
    "inet_sk_error_report",
    kp_sk_error,
    kr_sk_error,
    |arg, M| reset::on_error_report::<M>(arg(0))
);
