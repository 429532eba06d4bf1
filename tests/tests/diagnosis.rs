//! Diagnoses (docs/events.md, "Diagnosis"): each death made for real in namespaces, the
//! verdict checked, with the namespace's own counters (`nstat`) and the error the
//! application saw as the reference.
use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use kaprobe_tests::*;
use serde_json::Value;

/// Debian's nginx in namespace `ns`, on `addr:port`, answering every request with a short
/// body, with `keepalive_timeout` as given. Killed (and its files removed) on drop.
struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    fn start(ns: &NetNs, addr: IpAddr, port: u16, keepalive_timeout: &str) -> Nginx {
        let dir = std::env::temp_dir().join(format!("kpt-nginx-{}-{port}", std::process::id()));
        std::fs::create_dir_all(dir.join("logs")).expect("nginx dir");
        let listen = match addr {
            IpAddr::V4(a) => format!("{a}:{port}"),
            IpAddr::V6(a) => format!("[{a}]:{port}"),
        };
        let conf = format!(
            "worker_processes 1;\n\
             daemon off;\n\
             master_process on;\n\
             pid {dir}/nginx.pid;\n\
             error_log {dir}/logs/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {dir}/body;\n\
               proxy_temp_path {dir}/proxy;\n\
               fastcgi_temp_path {dir}/fastcgi;\n\
               uwsgi_temp_path {dir}/uwsgi;\n\
               scgi_temp_path {dir}/scgi;\n\
               keepalive_timeout {keepalive_timeout};\n\
               server {{ listen {listen}; location / {{ return 200 \"ok\\n\"; }} }}\n\
             }}\n",
            dir = dir.display()
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).expect("nginx.conf");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name, "nginx", "-p"])
            .arg(&dir)
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (apt-get install nginx)");
        let nginx = Nginx { child, dir };
        // Ready when it answers (a readiness wait, not a sleep).
        let to = SocketAddr::new(addr, port);
        let deadline = Instant::now() + Duration::from_secs(20);
        let ready = ns.run(move || {
            while Instant::now() < deadline {
                if matches!(http_get(to, "/"), Ok((200, _))) {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            false
        });
        assert!(ready, "nginx did not answer on {to}: {}", nginx.error_log());
        nginx
    }

    fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("logs/error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The workers (the master's children) go when the namespace's processes do.
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("nginx.pid")) {
            let _ = Command::new("kill")
                .arg(pid.trim())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Python's http.client (it does not check a pooled connection before reusing it): one GET,
/// a pause of `pause_s`, a second GET on the same connection. Returns the client's local
/// port and what the second request gave (`ok`, or the exception's name and errno).
fn pooled_client(ns: &NetNs, addr: IpAddr, port: u16, pause_s: f64) -> (u16, String) {
    let script = format!(
        "import http.client, time\n\
         c = http.client.HTTPConnection('{addr}', {port}, timeout=10)\n\
         c.request('GET', '/'); r = c.getresponse(); r.read()\n\
         print(c.sock.getsockname()[1], flush=True)\n\
         time.sleep({pause_s})\n\
         try:\n\
         \x20   c.request('GET', '/'); r = c.getresponse(); r.read(); print('ok')\n\
         except Exception as e:\n\
         \x20   print(type(e).__name__, getattr(e, 'errno', None))\n"
    );
    let out = ns.exec("python3", &["-c", &script]);
    let mut lines = out.lines();
    let sport = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("client printed no port: {out}"));
    (sport, lines.next().unwrap_or("").trim().to_owned())
}

fn diagnosis(e: &Value) -> &Value {
    let d = &e["diagnosis"];
    assert!(d.is_object(), "no diagnosis: {e}");
    d
}

fn verdict(e: &Value) -> &str {
    diagnosis(e)["verdict"].as_str().unwrap_or("")
}

fn evidence_ms(e: &Value, name: &str) -> u64 {
    diagnosis(e)["evidence"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no evidence.{name}: {e}"))
}

fn delta(
    after: &std::collections::HashMap<String, u64>,
    before: &std::collections::HashMap<String, u64>,
    name: &str,
) -> u64 {
    after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0)
}

#[test]
fn nginx_keepalive_race_is_diagnosed_on_both_sides() {
    if need_root() {
        return;
    }
    let link = Link::new("dkr");
    let port = free_port();
    let nginx = Nginx::start(&link.b, link.b4, port, "1s");
    let (na, nb) = (link.a.inode().to_string(), link.b.inode().to_string());
    let agent = Agent::start(&["--netns", &na, "--netns", &nb]);
    let (before_a, before_b) = (link.a.nstat(), link.b.nstat());
    // nginx closes the idle connection after 1 s; the client reuses it after 2.5 s.
    let (sport, outcome) = pooled_client(&link.a, link.b4, port, 2.5);
    let (ns_a, ns_b) = (link.a.inode(), link.b.inode());
    let client_close = agent.wait_for("the client's close", Duration::from_secs(10), |e| {
        is(e, "connection_closed", ns_a, sport)
    });
    let server_rst = kernel_traces_socketless_resets().then(|| {
        agent.wait_for("nginx's RST", Duration::from_secs(10), |e| {
            e["event"] == "reset_sent" && e["netns"] == ns_b && e["dport"] == sport
        })
    });
    let all = agent.stop();
    let (after_a, after_b) = (link.a.nstat(), link.b.nstat());
    drop(nginx);
    // What the application saw: the second request failed on the reused connection.
    assert!(
        outcome.starts_with("RemoteDisconnected")
            || outcome.starts_with("ConnectionResetError")
            || outcome.starts_with("BrokenPipeError"),
        "the reused connection should fail: {outcome}"
    );
    // The kernel's own counts: one RST out of the server, one reset of the client's
    // connection.
    assert_eq!(delta(&after_b, &before_b, "TcpOutRsts"), 1, "server RSTs");
    assert_eq!(
        delta(&after_a, &before_a, "TcpEstabResets"),
        1,
        "client resets"
    );
    // The client: reset after the peer's FIN, i.e. in CLOSE_WAIT; the race, with the
    // server's idle time before its FIN (~1 s) and the reuse after it (~1.5 s).
    assert_eq!(client_close["cause"], "reset_received", "{client_close}");
    assert_eq!(client_close["last_state"], "close_wait", "{client_close}");
    assert_eq!(verdict(&client_close), "keepalive_race", "{client_close}");
    let idle = evidence_ms(&client_close, "peer_idle_before_close_ms");
    assert!(
        (900..=1400).contains(&idle),
        "peer idle {idle} ms: {client_close}"
    );
    let reused = evidence_ms(&client_close, "reused_after_ms");
    assert!(
        (1100..=1900).contains(&reused),
        "reused after {reused} ms: {client_close}"
    );
    // One close for the client's connection, none reported for nginx's orderly idle close
    // (not a connection kaprobe reports by default).
    assert_eq!(conn_kind(&all, ns_a, sport, "connection_closed").len(), 1);
    assert!(conn_kind(&all, ns_b, port, "connection_closed").is_empty());
    let Some(server_rst) = server_rst else {
        // 6.1 does not trace an RST from a TIME_WAIT socket: the client's story stands on
        // its own evidence (still `certain`: the peer's FIN, then an RST to data).
        assert!(
            diagnosis(&client_close)["evidence"]["other_end"].is_null(),
            "{client_close}"
        );
        assert_eq!(
            diagnosis(&client_close)["confidence"],
            "certain",
            "{client_close}"
        );
        return;
    };
    assert_eq!(
        diagnosis(&client_close)["evidence"]["other_end"],
        "reset_sent:tcp_timewait_socket",
        "the server on this host confirms it: {client_close}"
    );
    // The server: an RST from its TIME_WAIT socket, named after nginx, diagnosed too, with
    // its own idle time before closing.
    assert_eq!(server_rst["state"], "time_wait", "{server_rst}");
    assert_eq!(server_rst["answering"], "data", "{server_rst}");
    assert_eq!(server_rst["owner"]["comm"], "nginx", "{server_rst}");
    assert_eq!(verdict(&server_rst), "keepalive_race", "{server_rst}");
    let idle = evidence_ms(&server_rst, "idle_before_close_ms");
    assert!(
        (900..=1400).contains(&idle),
        "server idle {idle} ms: {server_rst}"
    );
    let before = evidence_ms(&server_rst, "closed_before_ms");
    assert!(
        (1100..=1900).contains(&before),
        "closed {before} ms before: {server_rst}"
    );
}

/// A server that answers one request on each accepted connection, waits `pause` without a
/// word (idle), then shuts the connection down (`shutdown(SHUT_RDWR)`) but keeps its socket:
/// a FIN_WAIT2 socket that still has its process, where data that comes is aborted on
/// (`tcp_abort_on_data`). Returns the listener's port and the accepted socket.
fn shutdown_after_idle(
    ns: &NetNs,
    addr: IpAddr,
    pause: Duration,
) -> (u16, std::sync::mpsc::Receiver<TcpStream>) {
    let listener = listen(ns, addr);
    let port = listener.local_addr().expect("addr").port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut req = [0u8; 64];
        let n = s.read(&mut req).expect("request");
        assert!(n > 0, "a request");
        s.write_all(b"response").expect("response");
        std::thread::sleep(pause);
        s.shutdown(std::net::Shutdown::Both).expect("shutdown");
        let _ = tx.send(s);
    });
    (port, rx)
}

#[test]
fn data_after_shutdown_is_one_close_on_each_side_and_the_race() {
    if need_root() {
        return;
    }
    let link = Link::new("dad");
    let (na, nb) = (link.a.inode(), link.b.inode());
    let agent = Agent::start(&["--netns", &na.to_string(), "--netns", &nb.to_string()]);
    let before_b = link.b.nstat();
    let (port, server) = shutdown_after_idle(&link.b, link.b4, Duration::from_millis(600));
    let client = connect(&link.a, SocketAddr::new(link.b4, port));
    (&client).write_all(b"request").expect("request");
    let mut got = [0u8; 8];
    (&client).read_exact(&mut got).expect("response");
    // The server shuts down after 0.6 s idle; the client reuses the connection 1 s later.
    let server = server
        .recv_timeout(Duration::from_secs(10))
        .expect("server shut down");
    let mut eof = [0u8; 1];
    assert_eq!(
        (&client).read(&mut eof).expect("EOF"),
        0,
        "the server's FIN"
    );
    std::thread::sleep(Duration::from_millis(1000));
    (&client)
        .write_all(b"second request")
        .expect("write into CLOSE_WAIT");
    let sport = kaprobe_tests::port(&client);
    let server_close = agent.wait_for("the server's close", Duration::from_secs(10), |e| {
        is(e, "connection_closed", nb, port)
    });
    let client_close = agent.wait_for("the client's close", Duration::from_secs(10), |e| {
        is(e, "connection_closed", na, sport)
    });
    let all = agent.stop();
    drop(server);
    let after_b = link.b.nstat();
    // (A read after the FIN keeps returning EOF: the error is the socket's.)
    assert_eq!(
        socket_error(&client),
        Some(libc::EPIPE),
        "the client's connection was reset after the peer's FIN"
    );
    // The kernel aborted the server's connection on the data (its own count), and sent one
    // RST.
    assert_eq!(delta(&after_b, &before_b, "TcpExtTCPAbortOnData"), 1);
    assert_eq!(delta(&after_b, &before_b, "TcpOutRsts"), 1);
    // One close on each side; on the server no RST was received, whatever the kernel's RST
    // path made of it.
    assert_eq!(
        conn_kind(&all, nb, port, "connection_closed").len(),
        1,
        "server closes"
    );
    assert_eq!(
        conn_kind(&all, na, sport, "connection_closed").len(),
        1,
        "client closes"
    );
    assert!(
        conn_kind(&all, nb, port, "reset_received").is_empty(),
        "no RST came to the server: {:?}",
        conn_kind(&all, nb, port, "reset_received")
    );
    assert_eq!(server_close["cause"], "reset_sent", "{server_close}");
    assert_eq!(server_close["closed_by"], "local", "{server_close}");
    assert_eq!(verdict(&server_close), "keepalive_race", "{server_close}");
    let idle = evidence_ms(&server_close, "idle_before_close_ms");
    assert!(
        (500..=900).contains(&idle),
        "server idle {idle} ms: {server_close}"
    );
    let after = evidence_ms(&server_close, "closed_before_ms");
    assert!(
        (800..=1500).contains(&after),
        "data {after} ms after: {server_close}"
    );
    let rst = the_one(&all, nb, port, "reset_sent");
    assert_eq!(rst["answering"], "data", "{rst}");
    assert_eq!(
        rst["reason"],
        expected_reset_reason(&all, "tcp_abort_on_data"),
        "{rst}"
    );
    // The client: reset in CLOSE_WAIT after reusing the connection the server had closed,
    // confirmed by the server's RST on this host.
    assert_eq!(client_close["last_state"], "close_wait", "{client_close}");
    assert_eq!(verdict(&client_close), "keepalive_race", "{client_close}");
    assert_eq!(
        diagnosis(&client_close)["evidence"]["other_end"],
        "reset_sent:tcp_abort_on_data",
        "{client_close}"
    );
}

/// A client namespace `c` and a server namespace `s` with a router `r` between them that
/// masquerades the client (a NAT) and forgets connections idle for 2 s (conntrack,
/// `nf_conntrack_tcp_loose=0`): the next segment of a forgotten connection is INVALID, and
/// is rejected with an RST (`reject`) or dropped (`drop`).
struct Middlebox {
    c: NetNs,
    r: NetNs,
    s: NetNs,
    server: IpAddr,
}

static SUBNET: AtomicU32 = AtomicU32::new(0);

impl Middlebox {
    fn new(tag: &str, invalid: &str) -> Middlebox {
        let (c, r, s) = (
            NetNs::new(&format!("{tag}c")),
            NetNs::new(&format!("{tag}r")),
            NetNs::new(&format!("{tag}s")),
        );
        let n = SUBNET.fetch_add(1, Ordering::Relaxed) % 100;
        let pid = std::process::id() % 10000;
        let (cr, rc, rs, sr) = (
            format!("kmc{pid}_{n}"),
            format!("kmrc{pid}_{n}"),
            format!("kmrs{pid}_{n}"),
            format!("kms{pid}_{n}"),
        );
        let veth = |a: &NetNs, an: &str, b: &NetNs, bn: &str| {
            sh(
                "ip",
                &[
                    "link", "add", an, "netns", &a.name, "type", "veth", "peer", "name", bn,
                    "netns", &b.name,
                ],
            );
        };
        veth(&c, &cr, &r, &rc);
        veth(&r, &rs, &s, &sr);
        let (c_ip, rc_ip) = (format!("172.20.{n}.1"), format!("172.20.{n}.2"));
        let (rs_ip, s_ip) = (format!("172.21.{n}.1"), format!("172.21.{n}.2"));
        c.ip(&["addr", "add", &format!("{c_ip}/24"), "dev", &cr]);
        r.ip(&["addr", "add", &format!("{rc_ip}/24"), "dev", &rc]);
        r.ip(&["addr", "add", &format!("{rs_ip}/24"), "dev", &rs]);
        s.ip(&["addr", "add", &format!("{s_ip}/24"), "dev", &sr]);
        for (ns, dev) in [(&c, &cr), (&r, &rc), (&r, &rs), (&s, &sr)] {
            ns.ip(&["link", "set", dev, "up"]);
        }
        c.ip(&["route", "add", "default", "via", &rc_ip]);
        r.exec("sysctl", &["-q", "-w", "net.ipv4.ip_forward=1"]);
        // (Chain names must not be nft keywords.)
        r.nft(&format!(
            "add table ip middlebox\n\
             add chain ip middlebox forwarding {{ type filter hook forward priority 0; }}\n\
             add rule ip middlebox forwarding ct state invalid {invalid}\n\
             add chain ip middlebox outbound {{ type nat hook postrouting priority 100; }}\n\
             add rule ip middlebox outbound oifname {rs} masquerade\n"
        ));
        // Conntrack is loaded in the router's namespace by now: its own settings.
        r.exec(
            "sysctl",
            &["-q", "-w", "net.netfilter.nf_conntrack_tcp_loose=0"],
        );
        r.exec(
            "sysctl",
            &[
                "-q",
                "-w",
                "net.netfilter.nf_conntrack_tcp_timeout_established=2",
            ],
        );
        Middlebox {
            c,
            r,
            s,
            server: s_ip.parse().expect("v4"),
        }
    }

    /// A connection from `c` to `s` (through the router), with one byte each way so that
    /// the peer has been answering.
    fn connection(&self) -> (TcpStream, TcpStream) {
        let listener = listen(&self.s, self.server);
        let client = connect(&self.c, listener.local_addr().expect("addr"));
        let (server, _) = listener.accept().expect("accept");
        (&client).write_all(b"q").expect("write");
        let mut b = [0u8; 1];
        (&server).read_exact(&mut b).expect("read");
        (&server).write_all(b"a").expect("write");
        (&client).read_exact(&mut b).expect("read");
        (client, server)
    }
}

fn ms(e: &Value, name: &str) -> u64 {
    evidence_ms(e, name)
}

#[test]
fn a_middlebox_that_resets_forgotten_connections() {
    if need_root() {
        return;
    }
    let mb = Middlebox::new("dmr", "reject with tcp reset");
    let nc = mb.c.inode().to_string();
    // The same death seen with a --nat-timeout below the silence and one above it.
    let below = Agent::start(&["--netns", &nc, "--nat-timeout", "3s"]);
    let above = Agent::start(&["--netns", &nc, "--nat-timeout", "10s"]);
    let (client, _server) = mb.connection();
    let before = mb.c.nstat();
    // Silent for longer than the middlebox remembers, then the client sends.
    std::thread::sleep(Duration::from_millis(4000));
    (&client).write_all(b"x").expect("write");
    let errno = read_until_error(&client);
    let (ns, sport) = (mb.c.inode(), port(&client));
    let pick = |a: &Agent| {
        a.wait_for("the client's close", Duration::from_secs(10), |e| {
            is(e, "connection_closed", ns, sport)
        })
    };
    let (closed_below, closed_above) = (pick(&below), pick(&above));
    let after = mb.c.nstat();
    drop((below.stop(), above.stop()));
    assert_eq!(errno, libc::ECONNRESET, "the application sees ECONNRESET");
    assert_eq!(delta(&after, &before, "TcpEstabResets"), 1);
    assert_eq!(closed_below["cause"], "reset_received", "{closed_below}");
    assert_eq!(
        verdict(&closed_below),
        "middlebox_idle_timeout",
        "{closed_below}"
    );
    assert_eq!(diagnosis(&closed_below)["confidence"], "likely");
    let silence = ms(&closed_below, "silence_ms");
    assert!(
        (3900..=4600).contains(&silence),
        "silence {silence}: {closed_below}"
    );
    assert_eq!(ms(&closed_below, "nat_timeout_ms"), 3000);
    // Under 10 s, a 4 s silence is not a middlebox's: the peer no longer had it.
    assert_eq!(verdict(&closed_above), "peer_restarted", "{closed_above}");
    drop(mb.r);
}

#[test]
fn a_middlebox_that_drops_forgotten_connections() {
    if need_root() {
        return;
    }
    let mb = Middlebox::new("dmd", "drop");
    let nc = mb.c.inode().to_string();
    let below = Agent::start(&["--netns", &nc, "--nat-timeout", "3s"]);
    let above = Agent::start(&["--netns", &nc, "--nat-timeout", "10s"]);
    // Data after the silence, retransmitted until TCP_USER_TIMEOUT; and keepalive whose
    // idle time (4 s) is longer than the middlebox remembers (2 s).
    let (data, _s1) = mb.connection();
    set_user_timeout(&data, 3000);
    let (ka, _s2) = mb.connection();
    set_keepalive(
        &ka,
        Keepalive {
            idle_s: 4,
            intvl_s: 1,
            count: 3,
        },
    );
    let before = mb.c.nstat();
    std::thread::sleep(Duration::from_millis(4000));
    (&data).write_all(b"x").expect("write");
    let (data_errno, ka_errno) = (read_until_error(&data), read_until_error(&ka));
    let ns = mb.c.inode();
    let (dport, kport) = (port(&data), port(&ka));
    let pick = |a: &Agent, sport: u16| {
        a.wait_for("a close", Duration::from_secs(15), |e| {
            is(e, "connection_closed", ns, sport)
        })
    };
    let (data_below, ka_below) = (pick(&below, dport), pick(&below, kport));
    let (data_above, ka_above) = (pick(&above, dport), pick(&above, kport));
    let after = mb.c.nstat();
    let all = below.stop();
    drop(above.stop());
    assert_eq!((data_errno, ka_errno), (libc::ETIMEDOUT, libc::ETIMEDOUT));
    assert_eq!(delta(&after, &before, "TcpExtTCPAbortOnTimeout"), 2);
    assert_eq!(
        delta(&after, &before, "TcpExtTCPKeepAlive"),
        conn_kind(&all, ns, kport, "keepalive_probe").len() as u64,
        "probes: the kernel's count"
    );
    // The data: never acknowledged after a 4 s silence.
    assert_eq!(data_below["cause"], "retransmit_timeout", "{data_below}");
    assert_eq!(
        verdict(&data_below),
        "middlebox_idle_timeout",
        "{data_below}"
    );
    let silence = ms(&data_below, "silence_ms");
    assert!(
        (3900..=5000).contains(&silence),
        "silence {silence}: {data_below}"
    );
    assert_eq!(verdict(&data_above), "peer_unreachable", "{data_above}");
    // Keepalive: the first probe came after the middlebox had forgotten the connection.
    assert_eq!(ka_below["cause"], "keepalive_timeout", "{ka_below}");
    assert_eq!(verdict(&ka_below), "middlebox_idle_timeout", "{ka_below}");
    assert_eq!(ms(&ka_below, "keepalive_idle_ms"), 4000);
    assert!(
        diagnosis(&ka_below)["advice"]
            .as_str()
            .is_some_and(|a| a.contains("TCP_KEEPIDLE")),
        "{ka_below}"
    );
    assert_eq!(verdict(&ka_above), "peer_unreachable", "{ka_above}");
    drop(mb.r);
}

#[test]
fn a_closed_listener_is_forgotten() {
    if need_root() {
        return;
    }
    let link = Link::new("dcl");
    let nb = link.b.inode();
    let agent = Agent::start(&[
        "--netns",
        &nb.to_string(),
        "--netns",
        &link.a.inode().to_string(),
    ]);
    // A server listens, then closes its listener: a later connect to that port is refused
    // by the host, for no server (the RST names no owner).
    let listener = listen(&link.b, link.b4);
    let to = listener.local_addr().expect("addr");
    drop(listener);
    let err = link
        .a
        .run(move || TcpStream::connect(to).expect_err("refused"));
    assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED));
    if !kernel_traces_socketless_resets() {
        // 6.1 does not trace the RST its host sends for no socket: nothing to check here.
        drop(agent.stop());
        return;
    }
    let rst = agent.wait_for("the refusing RST", Duration::from_secs(10), |e| {
        e["event"] == "reset_sent" && e["netns"] == nb && e["sport"] == to.port()
    });
    drop(agent.stop());
    assert_eq!(rst["answering"], "syn", "{rst}");
    assert_eq!(verdict(&rst), "refused", "{rst}");
    assert!(rst["owner"].is_null(), "the listener is gone: {rst}");
}
