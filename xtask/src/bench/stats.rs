//! The statistics of the report: medians, ranges, bootstrap confidence intervals, and the
//! per-round ratios of a tracer's throughput or CPU share to a reference.
use super::{churn::Series, perf::CpuRun, tracers::Tracer};

pub(super) fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

pub(super) fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        })
}

/// Throughput of `t` relative to no tracer, round by round: each run is divided by the
/// no-tracer run of the same round, which cancels the machine's slow drifts (this VM's
/// speed wanders by ±10 % over seconds to minutes).
pub(super) fn paired_ratios(s: &[Series], t: Tracer) -> Vec<f64> {
    let find = |t| s.iter().find(|x| x.tracer == Some(t));
    let (Some(base), Some(x)) = (find(Tracer::None), find(t)) else {
        return vec![];
    };
    base.runs
        .iter()
        .zip(&x.runs)
        .filter(|(b, _)| b.rps > 0.0)
        .map(|(b, x)| x.rps / b.rps)
        .collect()
}

/// `stat` over all `n` rounds, and a 95 % bootstrap confidence interval of it: `stat` of
/// 2000 resamplings of the round indices with replacement (a fixed seed: the same data
/// give the same interval).
pub(super) fn bootstrap(n: usize, stat: impl Fn(&[usize]) -> f64) -> (f64, f64, f64) {
    if n == 0 {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        // xorshift64*
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize
    };
    let all: Vec<usize> = (0..n).collect();
    let mut stats: Vec<f64> = (0..2000)
        .map(|_| stat(&(0..n).map(|_| next() % n).collect::<Vec<_>>()))
        .collect();
    stats.sort_by(|a, b| a.total_cmp(b));
    (stat(&all), stats[50], stats[1949])
}

/// The median of `v` and its 95 % bootstrap confidence interval.
pub(super) fn median_ci(v: &[f64]) -> (f64, f64, f64) {
    bootstrap(v.len(), |idx| {
        median(&idx.iter().map(|&i| v[i]).collect::<Vec<_>>())
    })
}

/// Median paired ratio of `t` (see [`paired_ratios`]).
pub(super) fn ratio_of(s: &[Series], t: Tracer) -> Option<(f64, f64, f64)> {
    let r = median_ci(&paired_ratios(s, t));
    r.0.is_finite().then_some(r)
}

/// The CPU shares ([`CpuRun::share`]) of tracer `t`, round by round.
pub(super) fn cpu_shares(runs: &[CpuRun], t: Tracer) -> Vec<f64> {
    runs.iter()
        .filter(|c| c.tracer == t)
        .map(CpuRun::share)
        .collect()
}

/// Tracer `t`'s CPU share over the empty programs', round by round.
pub(super) fn cpu_share_ratios(runs: &[CpuRun], t: Tracer) -> Vec<f64> {
    let d = cpu_shares(runs, t);
    let e = cpu_shares(runs, Tracer::Empty);
    d.iter()
        .zip(&e)
        .filter(|(_, e)| **e > 0.0)
        .map(|(d, e)| d / e)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::workloads::WrkResult;

    #[test]
    fn paired() {
        let run = |rps| WrkResult {
            rps,
            ..WrkResult::default()
        };
        let series = vec![
            Series {
                tracer: Some(Tracer::None),
                runs: vec![run(100.0), run(200.0), run(150.0)],
            },
            Series {
                tracer: Some(Tracer::Default),
                runs: vec![run(90.0), run(190.0), run(150.0)],
            },
        ];
        assert_eq!(
            paired_ratios(&series, Tracer::Default),
            vec![0.9, 0.95, 1.0]
        );
        let (m, lo, hi) = ratio_of(&series, Tracer::Default).expect("a ratio");
        assert_eq!(m, 0.95);
        assert!(
            lo >= 0.9 && hi <= 1.0 && lo <= m && m <= hi,
            "{lo} {m} {hi}"
        );
        assert!(ratio_of(&series, Tracer::All).is_none());
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(min_max(&[2.0, 5.0, 1.0]), (1.0, 5.0));
    }
}
