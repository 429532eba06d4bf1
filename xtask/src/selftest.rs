//! `cargo xtask selftest`: a minute to see kaprobe work on this machine. It makes one real
//! keepalive timeout between two network namespaces of its own (a client with keepalive
//! 1 s / 1 s / 3 probes, a server that answers, then goes silent), runs `kaprobe watch` on
//! the client's namespace, and shows the lines kaprobe printed, explained. Nothing leaves
//! the machine; the namespaces are deleted afterwards.
use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use kaprobe_tests::{ETIMEDOUT, Keepalive, Link, connected, port, read_until_error, set_keepalive};

use crate::{build, setup};

/// `kaprobe watch` in human format on one namespace; its lines arrive on a channel.
struct Watch {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Watch {
    fn start(bin: &std::path::Path, netns: u64) -> Result<Watch> {
        let mut child = Command::new(bin)
            .args(["watch", "--format", "human", "--netns", &netns.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let out = child.stdout.take().context("kaprobe's stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Watch { child, lines })
    }

    /// Lines until one contains `what`, for at most `within`.
    fn until(&self, what: &str, within: Duration) -> Result<Vec<String>> {
        let deadline = Instant::now() + within;
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(what);
                    seen.push(line);
                    if done {
                        return Ok(seen);
                    }
                }
                Err(_) => break,
            }
        }
        bail!(
            "kaprobe printed no `{what}` within {} s (lines so far:\n{})",
            within.as_secs(),
            seen.join("\n")
        )
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn run() -> Result<()> {
    if !setup::is_root() {
        bail!(
            "the self-test needs root (eBPF and network namespaces): run `sudo -E cargo xtask selftest`"
        );
    }
    setup::apt_install(&["iproute2", "nftables"])?;
    let bin = build::run(&build::Options::release())?;
    eprintln!("xtask: selftest: two network namespaces, a client with keepalive 1 s / 1 s / 3");
    let link = Link::new("self");
    let watch = Watch::start(&bin, link.a.inode())?;
    watch.until("agent_start", Duration::from_secs(30))?;
    let (client, _server) = connected(&link, link.b4);
    set_keepalive(
        &client,
        Keepalive {
            idle_s: 1,
            intvl_s: 1,
            count: 3,
        },
    );
    let mut lines = watch.until("keepalive_ack", Duration::from_secs(10))?;
    eprintln!("xtask: selftest: the server answered a probe; now it goes silent");
    link.silence_b();
    let errno = read_until_error(&client);
    lines.extend(watch.until("connection_closed", Duration::from_secs(20))?);
    let sport = format!(":{}", port(&client));
    eprintln!("\nkaprobe printed, for the client's connection:\n");
    for l in lines.iter().filter(|l| l.contains(&sport)) {
        eprintln!("  {l}");
    }
    eprintln!(
        "\nWhat happened, in kaprobe's words: after 1 s without traffic the kernel sent a \
         keepalive probe (keepalive_probe) and the server answered (keepalive_ack). Then the \
         server went silent: three probes a second apart went unanswered, the kernel gave up \
         (keepalive_timeout, ETIMEDOUT), reset the connection (reset_sent) and closed it \
         (connection_closed), whose line ends with the diagnosis: peer_unreachable, with the \
         evidence. The application saw errno {errno} ({}).",
        if errno == ETIMEDOUT {
            "ETIMEDOUT"
        } else {
            "unexpected: ETIMEDOUT was due"
        }
    );
    if errno != ETIMEDOUT {
        bail!("the client saw errno {errno}, not ETIMEDOUT");
    }
    eprintln!("xtask: selftest: kaprobe works on this machine");
    Ok(())
}
