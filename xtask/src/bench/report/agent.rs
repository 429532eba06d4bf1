//! The report's sections 3 to 5: agent throughput and the timeout burst, memory, start-up.
use std::fmt::Write as _;

use super::Report;
use crate::bench::{
    Plan,
    stats::{median, min_max},
    system::hard_fd_limit,
};

/// 3: the agent's throughput on one core.
pub(super) fn throughput(w: &mut String, r: &Report) {
    let _ = writeln!(w, "\n## 3. Agent throughput\n");
    let t = &r.throughput;
    if t.records_per_s.is_empty() {
        let _ = writeln!(w, "Not measured in this run (`--only` another part).");
        return;
    }
    let (lo, hi) = min_max(&t.records_per_s);
    let (elo, ehi) = min_max(&t.events_per_s);
    let _ = writeln!(
        w,
        "`kaprobe-user/examples/agent_throughput.rs` (release, pinned to one CPU with \
         `taskset`): {} generated kernel records (keepalive probe and answer, then FIN 70 %, \
         peer reset 20 %, keepalive timeout 10 %; 4096 connections interleaved) \
         through decode → correlation → owner, filter, totals, summary → JSON Lines into a \
         sink, {} run(s).\n",
        t.records,
        t.records_per_s.len()
    );
    let _ = writeln!(
        w,
        "| | median | min–max |\n| --- | --- | --- |\n\
         | records in per second | {:.0} | {:.0}–{:.0} |\n\
         | events out per second | {:.0} | {:.0}–{:.0} |\n\
         | bytes of JSON per event | {:.0} | |\n",
        median(&t.records_per_s),
        lo,
        hi,
        median(&t.events_per_s),
        elo,
        ehi,
        t.bytes as f64 / t.events.max(1) as f64
    );
    let (clo, chi) = min_max(&t.churn_us_per_conn);
    let _ = writeln!(
        w,
        "The churn mix: what `watch --all` receives under `Connection: close` churn with both \
         ends on the host (one close record per reported connection, server's and client's \
         alternating; {:.1} events of {:.0} bytes of JSON each per connection), {} run(s): \
         **{:.2} µs of the agent per reported connection** (min–max {:.2}–{:.2}). The \
         end-to-end figure (the agent's CPU under the real churn, in the targets table) adds \
         the ring buffer, wakeups and the rest of the process to this.\n",
        t.churn_events_per_conn,
        t.churn_bytes_per_event,
        t.churn_us_per_conn.len(),
        median(&t.churn_us_per_conn),
        clo,
        chi
    );
}

/// 3, end to end: the timeout burst.
pub(super) fn stress(w: &mut String, r: &Report) {
    let Some(st) = &r.stress else {
        return;
    };
    let _ = writeln!(
        w,
        "### End to end: {} keepalive timeouts at once\n\n\
         {} connections between two network namespaces; the server side is silenced \
         (nftables), then every client gets keepalive 1 s / 1 s / 1 probe in one loop: all \
         time out within a few jiffies. kaprobe runs with its defaults (4 MiB ring).\n\n\
         | | |\n| --- | --- |\n\
         | timeouts in the kernel (TcpExtTCPAbortOnTimeout) | {} |\n\
         | reported (`keepalive_timeout`) | {} |\n\
         | events lost (ring buffer) | {} ({} connection ends) |\n\
         | keepalive armed → kernel count complete | {:.2} s (polled every 100 ms) |\n\
         | first → last timeout read from the agent | {:.3} s |\n\
         | kernel count complete → last timeout read | {} |\n\
         | largest delay, kernel timestamp → line read | {:.3} s |\n",
        st.conns,
        st.conns,
        st.kernel_timeouts,
        st.reported,
        st.events_lost,
        st.lost_timer_ends,
        st.kernel_secs,
        st.report_spread_secs,
        st.drain_after_kernel_secs.map_or("-".into(), |x| format!(
            "{x:+.3} s (negative: done before the 100 ms poll saw the kernel's count)"
        )),
        st.max_lag_secs
    );
}

/// 4: the agent's memory following many connections.
pub(super) fn memory(w: &mut String, r: &Report) {
    let _ = writeln!(w, "## 4. Memory\n");
    let _ = writeln!(
        w,
        "kaprobe (default mode, `--metrics-addr` to read `kaprobe_tracked_connections`) while \
         `kaprobe-user/examples/bench_conns.rs` holds N connections between two network \
         namespaces, keepalive idle 1 s / interval 1 s on every client socket so that each \
         one's timer fires and the agent follows it. Measured one second after the agent \
         follows all of them. The helpers hold both ends of their connections, split over \
         processes when the open-file hard limit ({}) requires it.\n",
        hard_fd_limit()
    );
    let _ = writeln!(
        w,
        "| connections (helper processes) | --max-connections | followed | VmRSS idle | VmRSS | VmHWM | kernel maps | events lost | keepalive on → all followed |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for m in &r.memory {
        let maps: u64 = m.maps.iter().map(|x| x.bytes).sum();
        let _ = writeln!(
            w,
            "| {} ({}) | {} | {} | {:.1} MB | {:.1} MB | {:.1} MB | {:.1} MiB | {} | {:.1} s |",
            m.conns,
            m.helpers,
            m.max_connections
                .map_or("default (65536)".into(), |x| x.to_string()),
            m.tracked,
            m.rss_idle_kb as f64 / 1000.0,
            m.rss_kb as f64 / 1000.0,
            m.hwm_kb as f64 / 1000.0,
            maps as f64 / 1048576.0,
            m.events_lost,
            m.settle_secs
        );
    }
    for f in &r.memory_failures {
        let _ = writeln!(w, "\nNot measured: {f}");
    }
}

/// 5: start-up.
pub(super) fn startup(w: &mut String, plan: &Plan, r: &Report) {
    let _ = writeln!(w, "\n## 5. Start-up\n");
    let _ = writeln!(
        w,
        "Time from exec to the tool's ready signal and to its first event line, with a \
         connection attempt to a closed loopback port every 10 ms (a reset and two state \
         changes each); {} run(s) each, medians (min–max). tcpstates and bpftrace run under \
         `stdbuf -oL`.\n",
        plan.startup_runs
    );
    let _ = writeln!(
        w,
        "| tool | ready signal | to ready | to first event |\n| --- | --- | --- | --- |"
    );
    for st in &r.startup {
        let (a, b) = min_max(&st.ready_secs);
        let (c, d) = min_max(&st.first_event_secs);
        let _ = writeln!(
            w,
            "| {} | {} | {:.3} s ({:.3}–{:.3}) | {:.3} s ({:.3}–{:.3}) |",
            st.tracer.label(),
            st.ready_what,
            median(&st.ready_secs),
            a,
            b,
            median(&st.first_event_secs),
            c,
            d
        );
    }
}
