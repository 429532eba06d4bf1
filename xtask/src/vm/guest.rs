//! The script the guest runs: each test alone (retried once), its output, status and time
//! written into the directory it shares with the host, and a heartbeat.
use std::path::Path;

use super::{TEST_TIMEOUT_S, cases::Case};
use crate::setup;

fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The script the guest runs: each test alone (`cases` with their indices), its output and
/// status into `results`, and a heartbeat.
pub(super) fn guest_script(cases: &[(usize, &Case)], results: &Path, kaprobe: &Path) -> String {
    let mut s = String::from(
        "#!/bin/bash\n# Written by `cargo xtask test --kernel`; runs inside the VM.\n",
    );
    s += &format!("out={}\n", quote(&results.display().to_string()));
    s += r#"exec >"$out/guest.log" 2>&1
set -x
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
ulimit -l unlimited
uname -r >"$out/uname.tmp" && mv "$out/uname.tmp" "$out/uname"
# The host's proof that the guest still runs user space.
(
    set +x
    n=0
    while :; do
        n=$((n + 1))
        echo $n >"$out/heartbeat.tmp" && mv "$out/heartbeat.tmp" "$out/heartbeat"
        sleep 5
    done
) &
heartbeat=$!
run() {
    local i=$1; shift
    local t0=$(date +%s%N)
    echo "$@" >"$out/$i.cmd"
    timeout -k 10 "#;
    s += &format!("{TEST_TIMEOUT_S}");
    s += r#" "$@" --exact --test-threads=1 >"$out/$i.log" 2>&1
    local rc=$?
    if [ $rc -ne 0 ]; then
        # Once more (software emulation on a busy host is slow and uneven); the first
        # attempt's output is kept and the host reports it.
        mv "$out/$i.log" "$out/$i.first.log"
        echo $rc >"$out/$i.first"
        timeout -k 10 "#;
    s += &format!("{TEST_TIMEOUT_S}");
    s += r#" "$@" --exact --test-threads=1 >"$out/$i.log" 2>&1
        rc=$?
    fi
    echo $(( ($(date +%s%N) - t0) / 1000000 )) >"$out/$i.ms"
    echo $rc >"$out/$i.tmp" && mv "$out/$i.tmp" "$out/$i.status"
}
"#;
    s += &format!(
        "export KAPROBE_BIN={}\n",
        quote(&kaprobe.display().to_string())
    );
    if let Ok(v) = std::env::var("KAPROBE_TEST_VERBOSE") {
        s += &format!("export KAPROBE_TEST_VERBOSE={}\n", quote(&v));
    }
    s += &format!(
        "cd {}\n",
        quote(&setup::workspace_root().join("tests").display().to_string())
    );
    for (i, c) in cases {
        s += &format!(
            "run {i} {} {}\n",
            quote(&c.binary.display().to_string()),
            quote(&c.name)
        );
    }
    s += "kill $heartbeat\ntouch \"$out/done\"\nsync\n";
    s
}
