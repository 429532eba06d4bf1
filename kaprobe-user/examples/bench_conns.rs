//! Benchmark helper, run by `cargo xtask bench`: holds many TCP connections between two
//! network namespaces (both ends in this process), so that the agent has something to
//! follow.
//!
//! `bench_conns CLIENT_NS SERVER_NS SERVER_ADDR LISTENERS COUNT` (namespaces by their
//! `ip netns` name) opens LISTENERS listeners on SERVER_ADDR in SERVER_NS and COUNT
//! connections to them (round robin) from CLIENT_NS, prints `connected COUNT`, then obeys
//! commands on standard input, one a line:
//! - `keepalive IDLE INTVL CNT`: SO_KEEPALIVE with these TCP_KEEPIDLE/KEEPINTVL/KEEPCNT on
//!   every client socket (answers `ok`);
//! - `exit` (or end of input): closes everything and exits.
//!
//! It gives up (exit status 1) if the connections are not all up within 30 s plus 1 s per
//! thousand.
use std::{
    io::{BufRead, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

fn fail(msg: String) -> ! {
    eprintln!("bench_conns: {msg}");
    std::process::exit(1)
}

fn enter(ns: &str) {
    let path = format!("/run/netns/{ns}");
    let file = std::fs::File::open(&path).unwrap_or_else(|e| fail(format!("open {path}: {e}")));
    // SAFETY: setns on an fd we own; it changes this thread's network namespace only.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        fail(format!("setns {path}: {}", std::io::Error::last_os_error()));
    }
}

/// A listener with a deep backlog (std's is 128).
fn listen(addr: IpAddr) -> TcpListener {
    let l = TcpListener::bind(SocketAddr::new(addr, 0))
        .unwrap_or_else(|e| fail(format!("bind {addr}: {e}")));
    // SAFETY: listen() again on our own listening socket only changes its backlog.
    if unsafe { libc::listen(l.as_raw_fd(), 65535) } != 0 {
        fail(format!("listen: {}", std::io::Error::last_os_error()));
    }
    l
}

fn setsockopt(fd: i32, level: i32, name: i32, value: i32) {
    // SAFETY: setsockopt with a pointer to a live i32 and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        fail(format!(
            "setsockopt({level}, {name}): {}",
            std::io::Error::last_os_error()
        ));
    }
}

/// Raises the open-file limit to `n`, or (without CAP_SYS_RESOURCE) to the hard limit if
/// that is enough for `need`.
fn raise_fd_limit(n: u64, need: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: setrlimit/getrlimit read or write the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } == 0 {
        return;
    }
    // SAFETY: as above.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: as above.
    if lim.rlim_max < need || unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        fail(format!(
            "cannot open {need} files (hard limit {}): {}",
            lim.rlim_max,
            std::io::Error::last_os_error()
        ));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [client_ns, server_ns, server, listeners, count] = &args[..] else {
        fail("usage: bench_conns CLIENT_NS SERVER_NS SERVER_ADDR LISTENERS COUNT".into())
    };
    let server: IpAddr = server
        .parse()
        .unwrap_or_else(|_| fail(format!("bad address {server}")));
    let n_listeners: usize = listeners.parse().unwrap_or(1).max(1);
    let count: usize = count
        .parse()
        .unwrap_or_else(|_| fail(format!("bad count {count}")));
    raise_fd_limit(2 * count as u64 + 4096, 2 * count as u64 + 64);
    let deadline = Instant::now() + Duration::from_secs(30 + count as u64 / 1000);

    let server_ns2 = server_ns.clone();
    let listeners: Vec<TcpListener> = std::thread::spawn(move || {
        enter(&server_ns2);
        (0..n_listeners).map(|_| listen(server)).collect()
    })
    .join()
    .expect("listener thread");
    let targets: Vec<SocketAddr> = listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr"))
        .collect();
    let accepted = Arc::new(AtomicUsize::new(0));
    let servers = Arc::new(Mutex::new(Vec::with_capacity(count)));
    for l in listeners {
        let (accepted, servers) = (accepted.clone(), servers.clone());
        // Detached: they end with the process.
        std::thread::spawn(move || {
            while let Ok((s, _)) = l.accept() {
                servers.lock().expect("lock").push(s);
                accepted.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    let client_ns2 = client_ns.clone();
    let clients: Vec<TcpStream> = std::thread::spawn(move || {
        enter(&client_ns2);
        (0..count)
            .map(|i| {
                if Instant::now() > deadline {
                    fail(format!("only {i} of {count} connections made in time"));
                }
                let to = targets[i % targets.len()];
                TcpStream::connect_timeout(&to, Duration::from_secs(5))
                    .unwrap_or_else(|e| fail(format!("connection {i} to {to}: {e}")))
            })
            .collect()
    })
    .join()
    .expect("client thread");
    while accepted.load(Ordering::Relaxed) < count {
        if Instant::now() > deadline {
            fail(format!(
                "only {} of {count} connections accepted in time",
                accepted.load(Ordering::Relaxed)
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut out = std::io::stdout().lock();
    let say = |out: &mut std::io::StdoutLock, s: &str| {
        writeln!(out, "{s}").and_then(|()| out.flush()).ok();
    };
    say(&mut out, &format!("connected {count}"));
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words[..] {
            ["keepalive", idle, intvl, cnt] => {
                let num = |s: &str| -> i32 {
                    s.parse()
                        .unwrap_or_else(|_| fail(format!("bad number {s}")))
                };
                let (idle, intvl, cnt) = (num(idle), num(intvl), num(cnt));
                for c in &clients {
                    let fd = c.as_raw_fd();
                    setsockopt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
                    setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle);
                    setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, intvl);
                    setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, cnt);
                }
                say(&mut out, "ok");
            }
            ["exit"] => break,
            _ => fail(format!("unknown command `{line}`")),
        }
    }
    drop(clients);
    // The server ends (and the accept threads) go with the process.
    drop(servers);
}
