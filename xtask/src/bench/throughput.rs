//! Agent throughput: kaprobe-user/examples/agent_throughput.rs, the agent's user-space path
//! from kernel records to JSON Lines, pinned to one CPU: the keepalive mix, and the churn mix
//! (what `watch --all` receives under `Connection: close` churn: one close record per
//! reported connection).
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::{Plan, Tools};
use crate::child;

/// Records in and events out per second, run by run; the counts of the last run.
#[derive(Clone, Debug, Default)]
pub(super) struct Throughput {
    pub(super) records_per_s: Vec<f64>,
    pub(super) events_per_s: Vec<f64>,
    pub(super) records: u64,
    pub(super) events: u64,
    pub(super) bytes: u64,
    /// The churn mix, run by run: µs of the agent per reported connection.
    pub(super) churn_us_per_conn: Vec<f64>,
    /// Its events per connection and bytes of JSON per event (last run).
    pub(super) churn_events_per_conn: f64,
    pub(super) churn_bytes_per_event: f64,
}

/// One run of the example: (records, events, bytes, seconds).
fn run(tools: &Tools, records: u64, mix: &str) -> Result<(u64, u64, u64, f64)> {
    // One core: the agent is single-threaded; pinned so that it does not migrate.
    let out = child::output(
        Command::new("taskset")
            .args(["-c", "1"])
            .arg(&tools.throughput)
            .arg(records.to_string())
            .arg(mix),
    )?;
    let v: Value = serde_json::from_str(out.trim())
        .with_context(|| format!("agent_throughput printed {out}"))?;
    let secs = v["seconds"].as_f64().unwrap_or(0.0);
    let events = v["events"].as_u64().unwrap_or(0);
    if secs <= 0.0 || events == 0 {
        bail!("agent_throughput ({mix}) measured nothing: {out}");
    }
    Ok((
        v["records"].as_u64().unwrap_or(0),
        events,
        v["bytes"].as_u64().unwrap_or(0),
        secs,
    ))
}

pub(super) fn throughput(plan: &Plan, tools: &Tools) -> Result<Throughput> {
    let mut t = Throughput::default();
    for _ in 0..plan.throughput_runs {
        let (records, events, bytes, secs) = run(tools, plan.throughput_records, "keepalive")?;
        (t.records, t.events, t.bytes) = (records, events, bytes);
        t.records_per_s.push(records as f64 / secs);
        t.events_per_s.push(events as f64 / secs);
        // A quarter as many: each churn record makes three events.
        let (conns, events, bytes, secs) = run(tools, plan.throughput_records / 4, "churn")?;
        t.churn_us_per_conn.push(secs * 1e6 / conns.max(1) as f64);
        t.churn_events_per_conn = events as f64 / conns.max(1) as f64;
        t.churn_bytes_per_event = bytes as f64 / events.max(1) as f64;
    }
    Ok(t)
}
