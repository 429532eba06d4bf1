//! Agent throughput: kaprobe-user/examples/agent_throughput.rs, the agent's user-space path
//! from kernel records to JSON Lines, pinned to one CPU.
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
}

pub(super) fn throughput(plan: &Plan, tools: &Tools) -> Result<Throughput> {
    let mut t = Throughput::default();
    for _ in 0..plan.throughput_runs {
        // One core: the agent is single-threaded; pinned so that it does not migrate.
        let out = child::output(
            Command::new("taskset")
                .args(["-c", "1"])
                .arg(&tools.throughput)
                .arg(plan.throughput_records.to_string()),
        )?;
        let v: Value = serde_json::from_str(out.trim())
            .with_context(|| format!("agent_throughput printed {out}"))?;
        let secs = v["seconds"].as_f64().unwrap_or(0.0);
        t.records = v["records"].as_u64().unwrap_or(0);
        t.events = v["events"].as_u64().unwrap_or(0);
        t.bytes = v["bytes"].as_u64().unwrap_or(0);
        if secs <= 0.0 || t.events == 0 {
            bail!("agent_throughput measured nothing: {out}");
        }
        t.records_per_s.push(t.records as f64 / secs);
        t.events_per_s.push(t.events as f64 / secs);
    }
    Ok(t)
}
