//! The load of the churn benchmark: nginx serving a small page on loopback, and wrk
//! requesting it (with `Connection: close`, a new TCP connection per request, or not).
use std::{
    fs,
    net::SocketAddr,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Result, anyhow, bail};
use kaprobe_tests::{free_port, http_get};

use super::{process::Proc, system::cpu_ticks, system::ticks_per_second};
use crate::child;

/// The page nginx serves: like nginx's default one, small.
pub(super) fn page() -> String {
    format!(
        "<html><body>{}</body></html>\n",
        "kaprobe benchmark ".repeat(32)
    )
}

/// A running nginx, stopped when dropped.
pub(super) struct Nginx {
    _proc: Proc,
    pub(super) port: u16,
}

/// Starts nginx on a free loopback port (HTTP keep-alive on or off); returns once it
/// answers.
pub(super) fn start_nginx(work: &Path, keepalive: bool) -> Result<Nginx> {
    let dir = work.join(if keepalive {
        "nginx-keepalive"
    } else {
        "nginx-close"
    });
    fs::create_dir_all(dir.join("www"))?;
    fs::create_dir_all(dir.join("tmp"))?;
    fs::write(dir.join("www/index.html"), page())?;
    let port = free_port();
    fs::write(dir.join("nginx.conf"), nginx_conf(&dir, port, keepalive))?;
    let mut p = Proc::spawn(
        "nginx",
        Command::new("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null()),
        Some(dir.join("stderr")),
    )?;
    // Ready when it answers.
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        p.check_alive()?;
        if http_get(addr, "/index.html").is_ok_and(|(status, _)| status == 200) {
            return Ok(Nginx { _proc: p, port });
        }
        if Instant::now() > deadline {
            bail!("nginx does not answer on {addr}: {}", p.stderr());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One nginx process serving `dir/www` on 127.0.0.1:`port`, everything it writes in `dir`.
fn nginx_conf(dir: &Path, port: u16, keepalive: bool) -> String {
    let d = dir.display();
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
         error_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\n\
         http {{\n  access_log off;\n  keepalive_timeout {};\n  keepalive_requests 1000000;\n\
         client_body_temp_path {d}/tmp/body;\n  proxy_temp_path {d}/tmp/proxy;\n\
         fastcgi_temp_path {d}/tmp/fastcgi;\n  uwsgi_temp_path {d}/tmp/uwsgi;\n\
         scgi_temp_path {d}/tmp/scgi;\n\
         server {{\n    listen 127.0.0.1:{port} backlog=4096;\n    root {d}/www;\n\
         location / {{ }}\n  }}\n}}\n",
        if keepalive { 65 } else { 0 }
    )
}

/// One wrk run.
#[derive(Clone, Debug, Default)]
pub(super) struct WrkResult {
    pub(super) rps: f64,
    pub(super) requests: u64,
    pub(super) errors: u64,
    /// Machine CPU time per request, µs (both cores, everything running).
    pub(super) cpu_us: f64,
}

/// `wrk -t1 -c32` on nginx's page for `secs` seconds, with `Connection: close` if `close`.
pub(super) fn wrk(port: u16, secs: u64, close: bool) -> Result<WrkResult> {
    let url = format!("http://127.0.0.1:{port}/index.html");
    let d = format!("{secs}s");
    let mut args = vec!["-t1", "-c32", "-d", &d];
    if close {
        args.extend(["-H", "Connection: close"]);
    }
    args.push(&url);
    let (b0, _) = cpu_ticks();
    let out = child::output(Command::new("wrk").args(&args))?;
    let (b1, _) = cpu_ticks();
    let mut res = parse_wrk(&out)?;
    res.cpu_us = (b1 - b0) as f64 / ticks_per_second() * 1e6 / res.requests as f64;
    Ok(res)
}

/// Requests per second, requests and errors from wrk's report.
fn parse_wrk(out: &str) -> Result<WrkResult> {
    let num_after = |key: &str| -> Option<f64> {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.trim_end_matches(',').parse().ok())
    };
    let rps = num_after("Requests/sec:").ok_or_else(|| anyhow!("wrk said: {out}"))?;
    let requests = out
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut errors = num_after("Non-2xx or 3xx responses:").unwrap_or(0.0) as u64;
    if let Some(l) = out.lines().find(|l| l.trim().starts_with("Socket errors:")) {
        errors += l
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse::<u64>().ok())
            .sum::<u64>();
    }
    if rps <= 0.0 || requests == 0 {
        bail!("wrk made no requests: {out}");
    }
    Ok(WrkResult {
        rps,
        requests,
        errors,
        cpu_us: 0.0,
    })
}
