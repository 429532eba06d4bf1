//! The results of a kernel's tests as the guest writes them (one status file per case, in
//! order), each printed as it arrives.
use std::{fs, path::PathBuf};

use super::{TEST_TIMEOUT_S, cases::Case};

/// Results of the cases so far (they arrive in order).
pub(super) struct Tally<'a> {
    pub(super) label: &'a str,
    pub(super) cases: &'a [Case],
    pub(super) results: PathBuf,
    pub(super) reported: usize,
    pub(super) passed: usize,
    pub(super) failed: usize,
    failures: Vec<usize>,
}

impl<'a> Tally<'a> {
    /// No result yet of `cases`, whose files the guest writes into `results`.
    pub(super) fn new(label: &'a str, cases: &'a [Case], results: PathBuf) -> Tally<'a> {
        Tally {
            label,
            cases,
            results,
            reported: 0,
            passed: 0,
            failed: 0,
            failures: Vec::new(),
        }
    }

    /// Reads the statuses the guest has written since the last call; prints each.
    pub(super) fn update(&mut self) {
        while self.reported < self.cases.len() {
            let i = self.reported;
            let Ok(status) = fs::read_to_string(self.results.join(format!("{i}.status"))) else {
                break;
            };
            let ms: u64 = fs::read_to_string(self.results.join(format!("{i}.ms")))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            let secs = ms as f64 / 1000.0;
            let status = status.trim();
            if status == "0" {
                self.passed += 1;
                self.print_pass(i, secs);
            } else {
                self.failed += 1;
                self.print_fail(i, status, secs);
                self.failures.push(i);
            }
            self.reported += 1;
        }
    }

    /// Case `i` passed, maybe on its second attempt (then with the first one's output).
    fn print_pass(&self, i: usize, secs: f64) {
        let (label, c) = (self.label, &self.cases[i]);
        match fs::read_to_string(self.results.join(format!("{i}.first"))) {
            Err(_) => eprintln!(
                "xtask: [{label}] PASS {}::{} ({secs:.1} s)",
                c.target, c.name
            ),
            Ok(rc) => {
                let log = fs::read_to_string(self.results.join(format!("{i}.first.log")))
                    .unwrap_or_default();
                eprintln!(
                    "xtask: [{label}] PASS ON RETRY {}::{} ({secs:.1} s; the first attempt failed with status {}):\n{}",
                    c.target,
                    c.name,
                    rc.trim(),
                    tail(&log, 40)
                );
            }
        }
    }

    /// Case `i` failed with exit status `status` (124 and 137: `timeout` ended it).
    fn print_fail(&self, i: usize, status: &str, secs: f64) {
        let (label, c) = (self.label, &self.cases[i]);
        let why = if status == "124" || status == "137" {
            format!("timed out after {TEST_TIMEOUT_S} s")
        } else {
            format!("exit status {status}")
        };
        eprintln!(
            "xtask: [{label}] FAIL {}::{} ({why}, {secs:.1} s)",
            c.target, c.name
        );
    }

    /// The output so far of the case that was running when a boot ended.
    pub(super) fn print_partial(&self) {
        let Some(c) = self.cases.get(self.reported) else {
            return;
        };
        for name in [
            format!("{}.first.log", self.reported),
            format!("{}.log", self.reported),
        ] {
            if let Ok(partial) = fs::read_to_string(self.results.join(&name)) {
                eprintln!(
                    "---- [{}] output so far of {} ({name}) ----\n{}",
                    self.label,
                    c.name,
                    partial.trim_end()
                );
            }
        }
        if let Ok(guest) = fs::read_to_string(self.results.join("guest.log")) {
            eprintln!(
                "---- [{}] guest script log ----\n{}",
                self.label,
                tail(&guest, 40)
            );
        }
    }

    /// The output of every case that failed.
    pub(super) fn print_failures(&self) {
        for &i in &self.failures {
            let c = &self.cases[i];
            let log = fs::read_to_string(self.results.join(format!("{i}.log"))).unwrap_or_default();
            eprintln!(
                "---- [{}] {}::{} output (guest) ----\n{}\n---- end of {} ----",
                self.label,
                c.target,
                c.name,
                log.trim_end(),
                c.name
            );
        }
    }

    /// Counts the cases without a result as failed, and says so.
    pub(super) fn fail_missing(&mut self) {
        for c in &self.cases[self.reported..] {
            eprintln!(
                "xtask: [{}] FAIL {}::{} (no result)",
                self.label, c.target, c.name
            );
        }
        self.failed += self.cases.len() - self.reported;
    }
}

/// The last `lines` lines of `text`.
pub(super) fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
