//! The tests a VM runs: the integration test binaries of kaprobe-tests, built on the host,
//! and the cases chosen from them (the core scenarios, or those a filter names).
use std::{
    io::BufRead,
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{build, child};

/// The core scenarios run on every VM kernel (tests/tests/keepalive.rs; the diagnosis
/// whose kernel evidence differs most between kernels: RST reasons came in 6.10; and the
/// start of an accepted connection, which 6.1 and 6.12 make differently from 6.18: its
/// cookie is set after the SYN_RECV tracepoint; and that every mode's programs pass this
/// kernel's verifier as BTF tracepoints).
const CORE_TESTS: &[&str] = &[
    "dead_peer_times_out_v4",
    "dead_peer_times_out_v6",
    "restarted_peer_answers_the_probe_with_rst",
    "data_in_flight_ends_by_retransmission_not_keepalive",
    "peer_closes_with_fin",
    "data_after_shutdown_is_one_close_on_each_side_and_the_race",
    "owner_and_bytes_of_a_client_and_an_accepted_connection",
    "every_mode_loads_as_btf_tracepoints",
];

/// A test binary of kaprobe-tests and the tests it holds.
struct TestBinary {
    target: String,
    path: PathBuf,
    tests: Vec<String>,
}

/// Builds the integration test binaries (without running them); returns the tests whose name
/// contains `filter`, else the core scenarios.
pub(super) fn cases(filter: Option<&str>) -> Result<Vec<Case>> {
    select(&build_tests()?, filter)
}

/// Builds the integration test binaries (without running them) and lists their tests.
fn build_tests() -> Result<Vec<TestBinary>> {
    let out = build::cargo(&[
        "test",
        "--package",
        "kaprobe-tests",
        "--no-run",
        "--message-format=json-render-diagnostics",
    ])
    .stdout(Stdio::piped())
    .stderr(Stdio::inherit())
    .output()
    .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the integration tests failed");
    }
    let mut bins = Vec::new();
    for line in out.stdout.as_slice().lines() {
        let line = line?;
        let Ok(msg) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        bins.push(TestBinary {
            target: msg["target"]["name"].as_str().unwrap_or("?").to_owned(),
            path: PathBuf::from(exe),
            tests: list_tests(exe)?,
        });
    }
    if bins.is_empty() {
        bail!("cargo built no integration test binary");
    }
    Ok(bins)
}

/// The names of the tests in test binary `exe`.
fn list_tests(exe: &str) -> Result<Vec<String>> {
    let list = child::output(Command::new(exe).args(["--list", "--format", "terse"]))?;
    Ok(list
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_owned)
        .collect())
}

/// One test to run in the guest.
pub(super) struct Case {
    pub(super) binary: PathBuf,
    pub(super) target: String,
    pub(super) name: String,
}

fn select(bins: &[TestBinary], filter: Option<&str>) -> Result<Vec<Case>> {
    let case = |b: &TestBinary, t: &String| Case {
        binary: b.path.clone(),
        target: b.target.clone(),
        name: t.clone(),
    };
    match filter {
        Some(f) => {
            let cases: Vec<Case> = bins
                .iter()
                .flat_map(|b| {
                    b.tests
                        .iter()
                        .filter(|t| t.contains(f))
                        .map(move |t| case(b, t))
                })
                .collect();
            if cases.is_empty() {
                bail!("no integration test name contains `{f}`");
            }
            Ok(cases)
        }
        None => CORE_TESTS
            .iter()
            .map(|name| {
                bins.iter()
                    .find_map(|b| b.tests.iter().find(|t| t == name).map(|t| case(b, t)))
                    .with_context(|| format!("core test `{name}` not found in kaprobe-tests"))
            })
            .collect(),
    }
}
