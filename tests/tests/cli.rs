//! The command line's behaviour on bad input, signals and a closed stdout.
use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use kaprobe_tests::*;

/// Runs kaprobe; returns (exit status, stderr).
fn kaprobe(args: &[&str]) -> (i32, String) {
    let out = Command::new(kaprobe_bin())
        .args(args)
        .output()
        .expect("run kaprobe");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn one_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got: {stderr:?}");
    lines[0]
}

#[test]
fn bad_flags_give_one_line_and_status_2() {
    for (args, needle) in [
        (&["watch", "--port", "70000"][..], "70000"),
        (&["watch", "--addr", "1.2.3/99"], "1.2.3/99"),
        (&["watch", "--addr", "10.0.0.0/33"], "10.0.0.0/33"),
        (&["watch", "--ring-size", "3000"], "power of two"),
        (&["watch", "--duration", "-1"], "-1"),
        (&["watch", "--format", "xml"], "xml"),
        (&["watch", "--max-connections", "0"], "0"),
        (&["frobnicate"], "frobnicate"),
    ] {
        let (code, stderr) = kaprobe(args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        let line = one_line(&stderr);
        assert!(
            line.starts_with("kaprobe: ") && line.contains(needle),
            "{args:?}: {line}"
        );
    }
}

#[test]
fn unwritable_output_file_is_status_5() {
    if need_root() {
        return;
    }
    let (code, stderr) = kaprobe(&["watch", "-o", "/proc/kaprobe-nonexistent/events.jsonl"]);
    assert_eq!(code, 5, "{stderr}");
    assert!(one_line(&stderr).contains("cannot open /proc/kaprobe-nonexistent/events.jsonl"));
}

#[test]
fn without_privileges_it_says_which_capabilities_are_missing() {
    if need_root() {
        return;
    }
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ])
        .arg(kaprobe_bin())
        .arg("watch")
        .output()
        .expect("setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let line = one_line(&stderr);
    for cap in ["CAP_BPF", "CAP_PERFMON", "CAP_SYSLOG"] {
        assert!(line.contains(cap), "{line}");
    }
}

/// IDs of the eBPF programs process `pid` holds.
fn prog_ids(pid: u32) -> Vec<u32> {
    let mut ids = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .expect("fdinfo")
        .flatten()
    {
        if let Ok(text) = std::fs::read_to_string(fd.path()) {
            ids.extend(
                text.lines()
                    .filter_map(|l| l.strip_prefix("prog_id:"))
                    .filter_map(|v| v.trim().parse::<u32>().ok()),
            );
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn prog_exists(id: u32) -> bool {
    Command::new("bpftool")
        .args(["prog", "show", "id", &id.to_string()])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn sigterm_writes_agent_stop_and_unloads_everything() {
    if need_root() {
        return;
    }
    let mut child = Command::new(kaprobe_bin())
        .args(["watch", "--format", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = lines.next().expect("a line").expect("read");
    assert!(first.contains("\"agent_start\""), "{first}");
    let ids = prog_ids(child.id());
    assert_eq!(ids.len(), 7, "seven programs attached: {ids:?}");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    assert!(
        rest.last().is_some_and(|l| l.contains("\"agent_stop\"")),
        "last line is agent_stop: {rest:?}"
    );
    // The kernel frees programs after an RCU grace period, a little after the last fd closes.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for id in ids {
        while prog_exists(id) {
            assert!(
                std::time::Instant::now() < deadline,
                "program {id} is still loaded 10 s after exit"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn closed_stdout_ends_quietly() {
    if need_root() {
        return;
    }
    // `kaprobe watch | head -1`: the reader goes away after the first line.
    let mut child = Command::new(kaprobe_bin())
        .args(["watch", "--format", "json", "--all"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    out.read_line(&mut first).expect("read");
    assert!(first.contains("agent_start"));
    drop(out);
    // Make events so that kaprobe writes into the closed pipe.
    let ns = NetNs::new("pipe");
    let l = listen(&ns, "127.0.0.1".parse().expect("ip"));
    let to = l.local_addr().expect("addr");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        let c = connect(&ns, to);
        drop(c);
        let _ = l.accept();
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "kaprobe kept running with nobody reading"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "quietly: {stderr}");
}
