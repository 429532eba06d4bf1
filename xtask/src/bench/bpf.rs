//! What the kernel says about a tracer's BPF programs and maps (bpftool, /proc/PID/fdinfo):
//! which programs it attached, their run counts and times, its maps' memory.
use std::{fs, process::Command};

use anyhow::Result;
use serde_json::Value;

use crate::child;

/// `bpftool <args> --json`, parsed.
fn bpftool(args: &[&str]) -> Result<Value> {
    let out = child::output(Command::new("bpftool").args(args).arg("--json"))?;
    Ok(serde_json::from_str(&out)?)
}

/// (program id, tracepoint) of the tracepoint programs that process `pid` attached.
pub(super) fn perf_progs(pid: u32) -> Result<Vec<(u64, String)>> {
    let v = bpftool(&["perf", "list"])?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["pid"].as_u64() == Some(pid as u64))
        .filter_map(|e| {
            Some((
                e["prog_id"].as_u64()?,
                e["tracepoint"].as_str().unwrap_or("?").to_owned(),
            ))
        })
        .collect())
}

/// A program's runs and run time so far (`kernel.bpf_stats_enabled`).
#[derive(Clone, Debug)]
pub(super) struct ProgCost {
    pub(super) tracepoint: String,
    pub(super) name: String,
    pub(super) runs: u64,
    pub(super) ns: u64,
}

/// The costs of the programs `ids` (from [`perf_progs`]).
pub(super) fn prog_stats(ids: &[(u64, String)]) -> Result<Vec<ProgCost>> {
    let v = bpftool(&["prog", "show"])?;
    let all = v.as_array().cloned().unwrap_or_default();
    Ok(ids
        .iter()
        .map(|(id, tp)| {
            let p = all.iter().find(|p| p["id"].as_u64() == Some(*id));
            let get = |k: &str| p.and_then(|p| p[k].as_u64()).unwrap_or(0);
            ProgCost {
                tracepoint: tp.clone(),
                name: p.and_then(|p| p["name"].as_str()).unwrap_or("?").to_owned(),
                runs: get("run_cnt"),
                ns: get("run_time_ns"),
            }
        })
        .collect())
}

/// Ids of the BPF maps process `pid` holds open.
fn map_ids(pid: u32) -> Vec<u64> {
    let mut ids: Vec<u64> = fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| fs::read_to_string(e.path()).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("map_id:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// A map's kernel memory (`bytes_memlock`).
#[derive(Clone, Debug)]
pub(super) struct MapMem {
    pub(super) name: String,
    pub(super) kind: String,
    pub(super) bytes: u64,
}

/// The memory of the maps process `pid` holds open.
pub(super) fn map_memory(pid: u32) -> Result<Vec<MapMem>> {
    let ids = map_ids(pid);
    let v = bpftool(&["map", "show"])?;
    Ok(v.as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["id"].as_u64().is_some_and(|id| ids.contains(&id)))
        .map(|m| MapMem {
            name: m["name"].as_str().unwrap_or("?").to_owned(),
            kind: m["type"].as_str().unwrap_or("?").to_owned(),
            bytes: m["bytes_memlock"]
                .as_u64()
                .or_else(|| m["bytes_memlock"].as_str().and_then(|s| s.parse().ok()))
                .unwrap_or(0),
        })
        .collect())
}
