//! The benchmark's targets, each with what was measured and a verdict (PASS, MISS,
//! INCONCLUSIVE when the confidence interval straddles the limit, NOT MEASURED).
use super::Report;
use crate::bench::{
    Plan,
    churn::HookRun,
    stats::{bootstrap, cpu_share_ratios, cpu_shares, median, median_ci, paired_ratios, ratio_of},
    timers::ratios,
    tracers::Tracer,
};

/// One target, measured.
pub(super) struct Target {
    pub(super) name: &'static str,
    pub(super) measured: String,
    pub(super) verdict: &'static str,
}

fn verdict(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "PASS",
        Some(false) => "MISS",
        None => "NOT MEASURED",
    }
}

/// The verdict on a target that a statistic with confidence interval `(x, lo, hi)` meets
/// when `ok(value)`, `ok` being monotonic: PASS or MISS only when the whole interval
/// agrees, else inconclusive (with what the point estimate says).
fn verdict_ci(r: Option<(f64, f64, f64)>, ok: impl Fn(f64) -> bool) -> &'static str {
    match r {
        None => "NOT MEASURED",
        Some((_, lo, hi)) if ok(lo) && ok(hi) => "PASS",
        Some((_, lo, hi)) if !ok(lo) && !ok(hi) => "MISS",
        Some((x, _, _)) if ok(x) => "INCONCLUSIVE (median passes)",
        Some(_) => "INCONCLUSIVE (median misses)",
    }
}

/// Every target, in the report's order.
pub(super) fn targets(plan: &Plan, r: &Report) -> Vec<Target> {
    let mut out = vec![throughput_ratio(
        r,
        Tracer::Default,
        "churn, kaprobe default ≥ 97 % of no tracer",
        0.97,
    )];
    out.extend(cpu_share(r));
    out.push(cost_over_floor(r));
    out.push(throughput_ratio(
        r,
        Tracer::All,
        "churn, kaprobe --all ≥ 95 % of no tracer",
        0.95,
    ));
    out.extend(all_cost(r));
    out.push(agent_throughput(r));
    out.push(memory(plan, r));
    out.push(startup(r));
    out.push(burst(r));
    out.extend(timer_hooks(r));
    out
}

/// `--all` under churn (the bpf_stats rounds: the median of the rounds and its interval):
/// programs + agent process per request at most 2.5 µs, and the agent's CPU per reported
/// connection (two per request: client and server) at most 0.5 µs.
fn all_cost(r: &Report) -> Vec<Target> {
    let per_round = |f: &dyn Fn(&HookRun) -> f64| {
        let v = HookRun::per_round(&r.hooks, Tracer::All, f);
        (!v.is_empty()).then(|| median_ci(&v))
    };
    let total = per_round(&|h| h.programs_ns_per_request() / 1000.0 + h.process_us_per_request());
    let programs = per_round(&|h| h.programs_ns_per_request() / 1000.0);
    let agent = per_round(&|h| h.process_us_per_request());
    let agent_conn = per_round(&|h| h.process_us_per_request() / 2.0);
    let pipeline = Some(median(&r.throughput.churn_us_per_conn))
        .filter(|x| x.is_finite())
        .map_or(String::new(), |p| {
            format!(" (pipeline alone, churn mix: {p:.2} µs)")
        });
    vec![
        Target {
            name: "churn, kaprobe --all: programs + agent ≤ 2.5 µs per request (bpf_stats rounds)",
            measured: match (total, programs, agent) {
                (Some((m, lo, hi)), Some(p), Some(a)) => format!(
                    "{m:.2} µs (95 % CI {lo:.2}–{hi:.2}; programs {:.2}, agent {:.2})",
                    p.0, a.0
                ),
                _ => "-".into(),
            },
            verdict: verdict_ci(total, |x| x <= 2.5),
        },
        Target {
            name: "churn, kaprobe --all: agent CPU ≤ 0.5 µs per reported connection (bpf_stats rounds)",
            measured: agent_conn.map_or("-".into(), |(m, lo, hi)| {
                format!("{m:.2} µs (95 % CI {lo:.2}–{hi:.2}){pipeline}")
            }),
            verdict: verdict_ci(agent_conn, |x| x <= 0.5),
        },
    ]
}

/// Each timer hook at most 1.2 × the empty program per call, under ordinary timers.
fn timer_hooks(r: &Report) -> Vec<Target> {
    let (entry, exit) = ratios(&r.timers);
    [
        (
            "timer hooks: `kp_timer_entry` ≤ 1.2 × the empty program per call (ordinary timers)",
            entry,
        ),
        (
            "timer hooks: `kp_timer_exit` ≤ 1.2 × the empty program per call (ordinary timers)",
            exit,
        ),
    ]
    .into_iter()
    .map(|(name, v)| {
        let cr = (!v.is_empty()).then(|| median_ci(&v));
        Target {
            name,
            measured: cr.map_or("-".into(), |(m, lo, hi)| {
                format!("{m:.2} × (95 % CI {lo:.2}–{hi:.2})")
            }),
            verdict: verdict_ci(cr, |x| x <= 1.2),
        }
    })
    .collect()
}

/// Tracer `t`'s churn throughput is at least `min` of no tracer's.
fn throughput_ratio(r: &Report, t: Tracer, name: &'static str, min: f64) -> Target {
    let ratio = ratio_of(&r.churn.close, t);
    Target {
        name,
        measured: ratio.map_or("-".into(), |(m, lo, hi)| {
            format!(
                "{:.1} % (95 % CI {:.1}–{:.1})",
                m * 100.0,
                lo * 100.0,
                hi * 100.0
            )
        }),
        verdict: verdict_ci(ratio, |x| x >= min),
    }
}

/// kaprobe's CPU share at most 1.3 × the empty programs' (and the same for
/// `--birth-budget unlimited` and `--lean`, not targets).
fn cpu_share(r: &Report) -> Vec<Target> {
    [
        (
            Tracer::Default,
            "churn, kaprobe's CPU (programs + agent) ≤ 1.3 × the empty programs' (perf samples)",
        ),
        (
            Tracer::Unbudgeted,
            "(not a target: the same for `--birth-budget unlimited`, the default mode before \
             the budget)",
        ),
        (
            Tracer::Lean,
            "(not a target: the same for `--lean`, which records no start of connections \
             without keepalive)",
        ),
    ]
    .into_iter()
    .map(|(t, name)| {
        let cr = Some(median_ci(&cpu_share_ratios(&r.cpu, t))).filter(|x| x.0.is_finite());
        Target {
            name,
            measured: cr.map_or("-".into(), |(m, lo, hi)| {
                format!(
                    "{:.2} % vs {:.2} % of busy CPU: {m:.2} × (95 % CI {lo:.2}–{hi:.2})",
                    median(&cpu_shares(&r.cpu, t)) * 100.0,
                    median(&cpu_shares(&r.cpu, Tracer::Empty)) * 100.0,
                )
            }),
            verdict: if t == Tracer::Default {
                verdict_ci(cr, |x| x <= 1.3)
            } else {
                verdict_ci(cr, |x| x <= 1.5)
            },
        }
    })
    .collect()
}

/// kaprobe's throughput cost at most 1.5 × the empty programs'.
fn cost_over_floor(r: &Report) -> Target {
    let (d, e) = (
        ratio_of(&r.churn.close, Tracer::Default).map(|x| x.0),
        ratio_of(&r.churn.close, Tracer::Empty).map(|x| x.0),
    );
    // kaprobe's cost minus 1.5 × the floor's, over the same resampled rounds.
    let pd = paired_ratios(&r.churn.close, Tracer::Default);
    let pe = paired_ratios(&r.churn.close, Tracer::Empty);
    let excess = (pd.len() == pe.len() && !pd.is_empty()).then(|| {
        bootstrap(pd.len(), |idx| {
            let m = |v: &[f64]| median(&idx.iter().map(|&i| v[i]).collect::<Vec<_>>());
            (1.0 - m(&pd)) - 1.5 * (1.0 - m(&pe))
        })
    });
    Target {
        name: "churn, kaprobe's cost ≤ 1.5 × the empty programs' cost (throughput)",
        measured: match (d, e, excess) {
            (Some(d), Some(e), Some((x, lo, hi))) => format!(
                "kaprobe {:.1} %, empty {:.1} % (limit {:.1} %); kaprobe − limit {:+.1} \
                 points (95 % CI {:+.1} to {:+.1})",
                (1.0 - d) * 100.0,
                (1.0 - e) * 100.0,
                1.5 * (1.0 - e) * 100.0,
                x * 100.0,
                lo * 100.0,
                hi * 100.0
            ),
            _ => "-".into(),
        },
        verdict: verdict_ci(excess, |x| x <= 0.0),
    }
}

fn agent_throughput(r: &Report) -> Target {
    let tp = Some(median(&r.throughput.records_per_s)).filter(|x| x.is_finite());
    let tpe = Some(median(&r.throughput.events_per_s)).filter(|x| x.is_finite());
    Target {
        name: "agent ≥ 1 M events/s on one core",
        measured: match (tp, tpe) {
            (Some(r), Some(e)) => format!(
                "{:.2} M records/s in, {:.2} M events/s out",
                r / 1e6,
                e / 1e6
            ),
            _ => "-".into(),
        },
        verdict: verdict(tp.zip(tpe).map(|(r, e)| r.min(e) >= 1e6)),
    }
}

fn memory(plan: &Plan, r: &Report) -> Target {
    let m100 = r.memory.iter().find(|m| m.conns >= 100_000);
    Target {
        name: "100k tracked connections ≤ 100 MB RSS",
        measured: m100.map_or(
            if plan.quick {
                "not run by --quick".into()
            } else {
                "not measured (see Memory)".into()
            },
            |m| format!("{:.1} MB (VmHWM)", m.hwm_kb as f64 / 1000.0),
        ),
        verdict: verdict(m100.map(|m| m.hwm_kb as f64 / 1000.0 <= 100.0)),
    }
}

fn startup(r: &Report) -> Target {
    let su = r
        .startup
        .iter()
        .find(|s| s.tracer == Tracer::Default)
        .map(|s| median(&s.ready_secs));
    Target {
        name: "start-up to agent_start ≤ 0.3 s",
        measured: su.map_or("-".into(), |s| format!("{s:.3} s")),
        verdict: verdict(su.map(|s| s <= 0.3)),
    }
}

fn burst(r: &Report) -> Target {
    let st = r.stress.as_ref();
    Target {
        name: "timeout burst, default ring: 0 events lost",
        measured: st.map_or("-".into(), |s| {
            format!("{} lost of {} timeouts", s.events_lost, s.conns)
        }),
        verdict: verdict(st.map(|s| s.events_lost == 0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_with_intervals() {
        let at_least = |x: f64| x >= 0.97;
        assert_eq!(verdict_ci(Some((0.98, 0.975, 0.99)), at_least), "PASS");
        assert_eq!(verdict_ci(Some((0.95, 0.94, 0.96)), at_least), "MISS");
        assert_eq!(
            verdict_ci(Some((0.98, 0.95, 0.99)), at_least),
            "INCONCLUSIVE (median passes)"
        );
        assert_eq!(
            verdict_ci(Some((0.96, 0.95, 0.99)), at_least),
            "INCONCLUSIVE (median misses)"
        );
        assert_eq!(verdict_ci(None, at_least), "NOT MEASURED");
    }
}
