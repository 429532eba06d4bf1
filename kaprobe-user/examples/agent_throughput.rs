//! Agent throughput benchmark, run by `cargo xtask bench`: raw kernel records, encoded as
//! the kernel writes them into the ring buffer, go through what `kaprobe watch` does with
//! each (decode, correlation, owner resolution, filter, totals, summary, JSON Lines) into a
//! sink, on this one thread.
//!
//! `agent_throughput [RECORDS] [keepalive|churn]` (default 2,000,000, keepalive) prints one
//! JSON line: `{"records":…,"events":…,"bytes":…,"seconds":…}`, where `seconds` counts only
//! the processing (the records are made beforehand, in chunks).
//!
//! `keepalive` follows a keepalive-heavy server: 4096 connections interleaved; each gets a
//! keepalive probe and its answer, then ends by FIN (70 %), by an RST from the peer (20 %)
//! or by a keepalive timeout (10 %).
//!
//! `churn` is what `watch --all` receives under `Connection: close` churn with both ends on
//! the host (the bench's nginx and wrk): one close record per socket, the server's (it sent
//! the first FIN, from FIN_WAIT2, owner nginx) then the client's (from LAST_ACK, owner wrk),
//! each of which makes a `connection_closed` and its `fin_sent`/`fin_received` events. One
//! record is one reported connection.
use std::{
    io::{self, BufWriter, Write},
    time::Instant,
};

use kaprobe_common::{
    AF_INET, CloseInfo, CloseRecord, Header, Owner as RawOwner, ResetRecvRecord, StateRecord,
    TimerRecord, Tuple, close_flag, kind, tcp_state, timer_flag,
};
use kaprobe_user::{
    bpf::decode::encode,
    cli::Format,
    correlate::{Clock, Correlator, Settings},
    sink::{Filter, Output},
    watch::Pipeline,
};

const HZ: u32 = 250;
/// Connections in flight at once (records of different connections interleave).
const WINDOW: usize = 4096;
/// Kernel time between two records: 2 µs, i.e. 500k records/s.
const STEP_NS: u64 = 2_000;
const CHUNK: usize = 65_536;

/// Counts what the JSON writer produces, and throws it away.
struct CountingSink(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .fetch_add(buf.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One connection of the generator: its number and how far along its life it is.
#[derive(Clone, Copy)]
struct Slot {
    conn: u64,
    stage: u8,
}

#[derive(Clone, Copy, PartialEq)]
enum Mix {
    Keepalive,
    Churn,
}

struct Generator {
    now_ns: u64,
    next_conn: u64,
    slots: Vec<Slot>,
    cursor: usize,
    owner: RawOwner,
    /// The client's owner (`churn`).
    client: RawOwner,
}

impl Generator {
    fn new(cgroup_id: u64) -> Self {
        let mut comm = [0u8; 16];
        comm[..5].copy_from_slice(b"nginx");
        let mut client = [0u8; 16];
        client[..3].copy_from_slice(b"wrk");
        Generator {
            client: RawOwner {
                tgid: 4343,
                flags: 0,
                cgroup_id,
                comm: client,
            },
            now_ns: 1_000_000_000_000,
            next_conn: WINDOW as u64,
            slots: (0..WINDOW as u64)
                .map(|conn| Slot { conn, stage: 0 })
                .collect(),
            cursor: 0,
            owner: RawOwner {
                tgid: 4242,
                flags: 0,
                cgroup_id,
                comm,
            },
        }
    }

    fn jiffies(&self) -> u64 {
        4_294_000_000 + self.now_ns / (1_000_000_000 / HZ as u64)
    }

    fn tuple(conn: u64) -> Tuple {
        let mut t = Tuple {
            sport: 443,
            dport: 1024 + (conn % 60_000) as u16,
            family: AF_INET,
            netns: 4026531840,
            ..Tuple::default()
        };
        t.saddr[..4].copy_from_slice(&[10, 1, 0, 1]);
        t.daddr[..4].copy_from_slice(&[10, 2, (conn >> 8) as u8, conn as u8]);
        t
    }

    fn header(&self, kind: u32, conn: u64) -> Header {
        Header {
            kind,
            cpu: (conn % 2) as u32,
            ts_ns: self.now_ns,
            // Socket addresses are reused, as the kernel's are, once a connection is gone.
            sk: 0xffff_8881_0000_0000 + (conn % 1_000_000) * 0x1000,
        }
    }

    fn close_info(&self, conn: u64, old_state: u8, flags: u32, sk_err: i32) -> CloseInfo {
        let born = self.now_ns.saturating_sub(30_000_000_000);
        CloseInfo {
            birth_ns: born,
            fin_sent_ns: if flags & close_flag::RST_RECV == 0 {
                self.now_ns - 1_000_000
            } else {
                0
            },
            fin_recv_ns: if flags & close_flag::RST_RECV == 0 {
                self.now_ns - 500_000
            } else {
                0
            },
            sk_err,
            reset_reason: kaprobe_common::REASON_UNKNOWN,
            rcv_tstamp: self.jiffies() as u32,
            jiffies: self.jiffies() as u32,
            flags: flags | close_flag::TRACKED | close_flag::KEEPOPEN | close_flag::INBOUND,
            old_state,
            probes_out: 0,
            _pad: [0; 2],
            bytes_sent: 10_000 + conn % 5000,
            bytes_received: 700 + conn % 300,
            segs_out: 14,
            segs_in: 11,
            lsndtime: self.jiffies() as u32 - 2,
            lrcvtime: self.jiffies() as u32 - 3,
            fin_idle: 0,
            unacked: 0,
            retrans_stamp: 0,
            mstamp_ms: 0,
        }
    }

    /// A keepalive timer firing: `before` → `after` unanswered probes.
    fn timer(&self, conn: u64, before: u8, after: u8, probe: bool, died: bool) -> TimerRecord {
        let j = self.jiffies();
        let intvl = 75 * HZ;
        let mut flags = timer_flag::KEEPOPEN;
        if probe {
            flags |= timer_flag::PROBE_BRANCH;
        }
        let mut r = TimerRecord {
            header: self.header(kind::KA_TIMER, conn),
            tuple: Self::tuple(conn),
            jiffies: j,
            expires_after: j + if probe { intvl as u64 } else { 3 * HZ as u64 },
            rcv_tstamp: (j - if before == 0 { 5 } else { 7200 * HZ as u64 }) as u32,
            keepalive_time: 7200 * HZ,
            keepalive_intvl: intvl,
            user_timeout_ms: 0,
            packets_out: 0,
            unacked_bytes: 0,
            error: 0,
            reset_reason: kaprobe_common::REASON_UNKNOWN,
            flags,
            lrcvtime: (j - 7200 * HZ as u64) as u32,
            segs_out_before: 10,
            segs_out_after: if probe { 11 } else { 10 },
            state_before: tcp_state::ESTABLISHED,
            state_after: tcp_state::ESTABLISHED,
            probes_before: before,
            probes_after: after,
            keepalive_probes: 2,
            _pad: [0; 3],
            close: CloseInfo::default(),
            owner: self.owner,
        };
        if died {
            r.flags |= timer_flag::DIED | timer_flag::ERROR_REPORTED | timer_flag::RST_SENT;
            r.error = 110;
            r.reset_reason = 15;
            r.expires_after = 0;
            r.state_after = tcp_state::CLOSE;
            r.close = self.close_info(conn, tcp_state::ESTABLISHED, 0, 110);
        }
        r
    }

    /// The next close of `--all` churn: the server's side of connection `n / 2`, then the
    /// client's.
    fn next_churn(&mut self) -> Vec<u8> {
        self.now_ns += STEP_NS;
        let n = self.next_conn;
        self.next_conn += 1;
        let conn = n / 2;
        let server = n.is_multiple_of(2);
        let mut tuple = Self::tuple(conn);
        if !server {
            std::mem::swap(&mut tuple.saddr, &mut tuple.daddr);
            std::mem::swap(&mut tuple.sport, &mut tuple.dport);
        }
        let mut close = CloseInfo {
            birth_ns: self.now_ns - 1_000_000,
            // The server's FIN first, the client's answer 100 µs later.
            fin_sent_ns: self.now_ns - if server { 200_000 } else { 100_000 },
            fin_recv_ns: self.now_ns - if server { 100_000 } else { 200_000 },
            bytes_sent: if server { 235 } else { 70 },
            bytes_received: if server { 70 } else { 235 },
            segs_out: if server { 4 } else { 5 },
            segs_in: 5,
            ..self.close_info(conn, tcp_state::FIN_WAIT2, 0, 0)
        };
        close.flags = close_flag::TRACKED
            | if server {
                close_flag::INBOUND | close_flag::FIN_IDLE
            } else {
                close_flag::OUTBOUND
            };
        if !server {
            close.old_state = tcp_state::LAST_ACK;
        }
        close.lsndtime = self.jiffies() as u32;
        close.lrcvtime = self.jiffies() as u32;
        encode(&CloseRecord {
            header: Header {
                kind: kind::CLOSE,
                cpu: (n % 2) as u32,
                ts_ns: self.now_ns,
                sk: 0xffff_8881_0000_0000 + (n % 1_000_000) * 0x1000,
            },
            tuple,
            close,
            owner: if server { self.owner } else { self.client },
        })
    }

    /// The next record of the interleaved stream.
    fn next(&mut self) -> Vec<u8> {
        self.now_ns += STEP_NS;
        let i = self.cursor;
        self.cursor = (self.cursor + 1) % WINDOW;
        let Slot { conn, stage } = self.slots[i];
        let end = conn % 10;
        let (bytes, done) = match (stage, end) {
            // A probe goes out, then the next firing sees it answered.
            (0, _) => (encode(&self.timer(conn, 0, 1, true, false)), false),
            (1, _) => (encode(&self.timer(conn, 0, 0, false, false)), false),
            // FIN from this side, then TCP_CLOSE from FIN_WAIT2.
            (2, 0..=6) => (
                encode(&StateRecord {
                    header: self.header(kind::STATE, conn),
                    tuple: Self::tuple(conn),
                    old_state: tcp_state::ESTABLISHED,
                    new_state: tcp_state::FIN_WAIT1,
                    _pad: [0; 6],
                    owner: self.owner,
                }),
                false,
            ),
            (3, 0..=6) => (
                encode(&CloseRecord {
                    header: self.header(kind::CLOSE, conn),
                    tuple: Self::tuple(conn),
                    close: self.close_info(conn, tcp_state::FIN_WAIT2, 0, 0),
                    owner: self.owner,
                }),
                true,
            ),
            // The peer resets the connection.
            (2, 7 | 8) => (
                encode(&ResetRecvRecord {
                    header: self.header(kind::RST_RECV, conn),
                    tuple: Self::tuple(conn),
                    packets_out: 0,
                    state: tcp_state::ESTABLISHED,
                    probes_out: 0,
                    keepopen: 1,
                    _pad: 0,
                    owner: self.owner,
                }),
                false,
            ),
            (3, 7 | 8) => (
                encode(&CloseRecord {
                    header: self.header(kind::CLOSE, conn),
                    tuple: Self::tuple(conn),
                    close: self.close_info(conn, tcp_state::ESTABLISHED, close_flag::RST_RECV, 104),
                    owner: self.owner,
                }),
                true,
            ),
            // Keepalive timeout: a second probe unanswered, then death in the timer.
            (2, _) => (encode(&self.timer(conn, 0, 1, true, false)), false),
            _ => (encode(&self.timer(conn, 1, 1, true, true)), true),
        };
        if done {
            self.slots[i] = Slot {
                conn: self.next_conn,
                stage: 0,
            };
            self.next_conn += 1;
        } else {
            self.slots[i].stage += 1;
        }
        bytes
    }
}

/// A real cgroup's id (its directory's inode), so owner resolution finds a path.
fn some_cgroup_id() -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/sys/fs/cgroup")
        .map(|m| m.ino())
        .unwrap_or(1)
}

fn main() {
    let total: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse().expect("RECORDS must be a number"))
        .unwrap_or(2_000_000);
    let mix = match std::env::args().nth(2).as_deref() {
        None | Some("keepalive") => Mix::Keepalive,
        Some("churn") => Mix::Churn,
        Some(other) => panic!("the mix is keepalive or churn, not {other}"),
    };
    let mut reasons = std::collections::HashMap::new();
    reasons.insert(15, "tcp_keepalive_timeout".to_owned());
    let clock = Clock {
        realtime_offset_ns: 1_700_000_000_000_000_000,
        hz: HZ,
    };
    let correlator = Correlator::new(Settings {
        clock,
        reset_reasons: reasons,
        max_connections: 65536,
        traced_since_ns: 0,
        nat_timeout_ms: 350_000,
    });
    let bytes_out = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sink = BufWriter::with_capacity(64 * 1024, CountingSink(bytes_out.clone()));
    // What `watch` does with each record, without metrics (and with a summary of the whole
    // run only, as without --summary-interval).
    let mut pipe = Pipeline::new(
        correlator,
        Filter::default(),
        Output::new(Box::new(sink), Format::Json),
        false,
    );
    let mut generator = Generator::new(some_cgroup_id());
    let (mut done, mut bad) = (0u64, 0u64);
    let mut elapsed = std::time::Duration::ZERO;
    while done < total {
        let n = CHUNK.min((total - done) as usize);
        let chunk: Vec<Vec<u8>> = (0..n)
            .map(|_| match mix {
                Mix::Keepalive => generator.next(),
                Mix::Churn => generator.next_churn(),
            })
            .collect();
        let start = Instant::now();
        for item in &chunk {
            if !pipe.record(item).expect("sink") {
                bad += 1;
            }
        }
        pipe.write_scratch().expect("sink");
        pipe.flush().expect("sink");
        elapsed += start.elapsed();
        done += n as u64;
    }
    let start = Instant::now();
    pipe.finish().expect("sink");
    pipe.flush().expect("sink");
    elapsed += start.elapsed();
    assert_eq!(bad, 0, "every generated record decodes");
    println!(
        "{{\"records\":{done},\"events\":{},\"bytes\":{},\"seconds\":{:.6},\"tracked_at_end\":{}}}",
        pipe.written(),
        bytes_out.load(std::sync::atomic::Ordering::Relaxed),
        elapsed.as_secs_f64(),
        pipe.tracked()
    );
}
