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
        (&["watch", "--metrics-addr", "nowhere:port"], "nowhere:port"),
        (&["watch", "--metrics-addr", "127.0.0.1:70000"], "70000"),
        (&["watch", "--metrics-remote-port"], "--metrics-addr"),
        (&["watch", "--lean", "--all"], "--all"),
        (&["watch", "--summary-interval", "-1"], "-1"),
        (&["watch", "--summary-interval", "500ms"], "500ms"),
        (&["watch", "--pid", "x"], "x"),
        (&["watch", "--netns", "-3"], "-3"),
        (&["ls", "--nat-timeout", "0s"], "0s"),
        (&["ls", "--port", "70000"], "70000"),
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
    bpf_ids(pid, "prog_id:")
}

/// IDs of the eBPF objects (`prog_id:` or `map_id:`) process `pid` holds.
fn bpf_ids(pid: u32, key: &str) -> Vec<u32> {
    let mut ids = Vec::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .expect("fdinfo")
        .flatten()
    {
        if let Ok(text) = std::fs::read_to_string(fd.path()) {
            ids.extend(
                text.lines()
                    .filter_map(|l| l.strip_prefix(key))
                    .filter_map(|v| v.trim().parse::<u32>().ok()),
            );
        }
    }
    ids.sort_unstable();
    ids.dedup();
    ids
}

fn bpf_exists(kind: &str, id: u32) -> bool {
    Command::new("bpftool")
        .args([kind, "show", "id", &id.to_string()])
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
    let maps = bpf_ids(child.id(), "map_id:");
    assert!(
        maps.len() >= 5,
        "the ring buffer, counters and tables: {maps:?}"
    );
    assert_eq!(ids.len(), 6, "six programs attached: {ids:?}");
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
    let objects = ids
        .iter()
        .map(|&id| ("prog", id))
        .chain(maps.iter().map(|&id| ("map", id)));
    for (kind, id) in objects {
        while bpf_exists(kind, id) {
            assert!(
                std::time::Instant::now() < deadline,
                "{kind} {id} is still loaded 10 s after exit"
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

/// Runs `kaprobe <args>` in a new mount namespace after `setup` (shell commands): (status,
/// stdout, stderr).
fn kaprobe_in_mount_ns(setup: &str, args: &str) -> (i32, String, String) {
    let script = format!("{setup}\nexec {} {args}", kaprobe_bin());
    let out = Command::new("unshare")
        .args(["-m", "sh", "-c", &script])
        .output()
        .expect("unshare");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn no_kernel_btf_is_one_line_and_status_4() {
    if need_root() {
        return;
    }
    // A kernel without BTF: /sys/kernel/btf hidden in a private mount namespace.
    let (code, _, stderr) =
        kaprobe_in_mount_ns("mount -t tmpfs none /sys/kernel/btf || exit 99", "watch");
    assert_eq!(code, 4, "{stderr}");
    let line = one_line(&stderr);
    assert!(
        line.contains("BTF") && line.contains("CONFIG_DEBUG_INFO_BTF"),
        "{line}"
    );
}

#[test]
fn runs_without_tracefs() {
    if need_root() {
        return;
    }
    // Neither tracefs nor debugfs: hooks attach by BTF id or raw tracepoint name.
    let hide = "mount -t tmpfs none /sys/kernel/tracing || exit 99\n\
                mount -t tmpfs none /sys/kernel/debug || exit 99";
    for attach in ["tp_btf", "raw-tracepoint"] {
        let (code, stdout, stderr) = kaprobe_in_mount_ns(
            hide,
            &format!("watch --format json --duration 1s --attach {attach}"),
        );
        assert_eq!(code, 0, "{attach}: {stderr}");
        let lines: Vec<&str> = stdout.lines().collect();
        assert!(
            lines.first().is_some_and(|l| l.contains("\"agent_start\"")),
            "{attach}: {stdout}"
        );
        assert!(
            lines.last().is_some_and(|l| l.contains("\"agent_stop\"")),
            "{attach}: {stdout}"
        );
    }
}

/// Every configuration that makes the verifier see a different program (`.rodata` settings
/// are constants to it: whole paths of `kp_set_state` exist in one mode only) loads as BTF
/// tracepoints. A program the verifier rejects would fall back to raw tracepoints silently
/// but for a warning (a verifier bug on 6.12 and 6.18 did just that to the default mode).
#[test]
fn every_mode_loads_as_btf_tracepoints() {
    if need_root() {
        return;
    }
    let modes: [&[&str]; 7] = [
        &[],
        &["--lean"],
        &["--all"],
        &["--birth-budget", "unlimited"],
        &["--birth-budget", "0"],
        &["--netns", "1"],
        &["--port", "80"],
    ];
    for mode in modes {
        let out = Command::new(kaprobe_bin())
            .args([
                "watch",
                "--format",
                "json",
                "--duration",
                "1s",
                "--attach",
                "tp_btf",
            ])
            .args(mode)
            .output()
            .expect("run kaprobe");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{mode:?}: {stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let start: serde_json::Value = serde_json::from_str(stdout.lines().next().unwrap_or(""))
            .unwrap_or_else(|e| panic!("{mode:?}: agent_start: {e}: {stdout}"));
        let hooks = start["hooks"].as_array().expect("hooks");
        assert_eq!(hooks.len(), 6, "{mode:?}: {start}");
        assert!(
            hooks.iter().all(|h| h["attach"] == "tp_btf"),
            "{mode:?}: {start}"
        );
    }
}

#[test]
fn metrics_address_in_use_is_one_line_and_status_6() {
    if need_root() {
        return;
    }
    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = busy.local_addr().expect("addr").to_string();
    let (code, stderr) = kaprobe(&["watch", "--metrics-addr", &addr]);
    assert_eq!(code, 6, "{stderr}");
    let line = one_line(&stderr);
    assert!(line.contains(&addr) && line.contains("in use"), "{line}");
}

#[test]
fn sighup_reopens_the_output_file() {
    if need_root() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("kaprobe-hup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let log = dir.join("events.jsonl");
    let rotated = dir.join("events.jsonl.1");
    let mut child = Command::new(kaprobe_bin())
        .args(["watch", "--all", "-o"])
        .arg(&log)
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
    let wait = |what: &str, p: &std::path::Path, needle: &str| {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !read(p).contains(needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: {needle} not in {}",
                p.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait("start", &log, "\"agent_start\"");
    // logrotate: move the file away, then SIGHUP.
    std::fs::rename(&log, &rotated).expect("rename");
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !log.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reopen {}",
            log.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // A connection closed after the reopen goes to the new file.
    let ns = NetNs::new("hup");
    let l = listen(&ns, "127.0.0.1".parse().expect("ip"));
    let c = connect(&ns, l.local_addr().expect("addr"));
    let sport = port(&c);
    drop(c);
    drop(l.accept().expect("accept"));
    let needle = format!("\"sport\":{sport},");
    wait("close after SIGHUP", &log, &needle);
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    let (old, new) = (read(&rotated), read(&log));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        old.contains("\"agent_start\"") && !old.contains(&needle),
        "old file: {old}"
    );
    assert!(
        new.contains("\"agent_stop\""),
        "new file ends with agent_stop: {new}"
    );
    assert!(!new.contains("\"agent_start\""));
}

#[test]
fn a_missing_tracepoint_is_one_line_naming_it_and_status_4() {
    if need_root() {
        return;
    }
    // A kernel without `tcp:tcp_receive_reset`: the running kernel's BTF with that
    // tracepoint's typedef renamed, bind-mounted over /sys/kernel/btf/vmlinux in a private
    // mount namespace.
    let mut btf = std::fs::read("/sys/kernel/btf/vmlinux").expect("read kernel BTF");
    let name = b"btf_trace_tcp_receive_reset\0";
    let at = btf
        .windows(name.len())
        .position(|w| w == name)
        .expect("the typedef's name");
    btf[at + name.len() - 2] = b'x';
    let path = std::env::temp_dir().join(format!("kaprobe-btf-{}", std::process::id()));
    std::fs::write(&path, &btf).expect("write BTF copy");
    let setup = format!(
        "mount --bind {} /sys/kernel/btf/vmlinux || exit 99",
        path.display()
    );
    let (code, _, stderr) = kaprobe_in_mount_ns(&setup, "watch");
    let _ = std::fs::remove_file(&path);
    assert_eq!(code, 4, "{stderr}");
    let line = one_line(&stderr);
    assert!(
        line.contains("tracepoint") && line.contains("tcp_receive_reset"),
        "{line}"
    );
}
