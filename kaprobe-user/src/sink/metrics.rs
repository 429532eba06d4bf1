//! Prometheus metrics (`watch --metrics-addr`): counters of what the event log reports,
//! served in the OpenMetrics text format on `/metrics` by hyper.
//!
//! Labels are bounded: causes, directions and reasons come from fixed sets (reset reasons
//! from the kernel's `enum sk_rst_reason`); nothing is labelled per connection. The per
//! remote port breakdown is opt-in (`--metrics-remote-port`) and capped at
//! [`MAX_REMOTE_PORTS`] distinct ports (the rest count as port 0).
use std::{
    collections::{HashMap, HashSet},
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::AtomicU64},
};

use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::{Atomic, Counter},
        family::Family,
        gauge::Gauge,
    },
    registry::Registry,
};

use crate::{
    bpf::progstats::ProgStats,
    event::{
        Body, Cause, Event, LostRecords, Side,
        diagnosis::{Diagnosis, Verdict},
    },
};

/// Distinct remote ports labelled before the rest are counted as port 0.
pub(crate) const MAX_REMOTE_PORTS: usize = 256;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResetLabels {
    direction: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    verdict: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabels {
    cause: &'static str,
    closed_by: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabels {
    source: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabels {
    remote_port: u16,
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProgramLabels {
    program: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    version: String,
    kernel: String,
    attach: String,
    mode: String,
}

/// What the agent tells the metrics at start-up.
pub(crate) struct AgentInfo<'a> {
    pub(crate) version: &'a str,
    pub(crate) kernel: &'a str,
    pub(crate) attach: &'a str,
    pub(crate) mode: &'a str,
    pub(crate) ring_buffer_bytes: u32,
}

/// Every metric kaprobe exports.
pub(crate) struct Metrics {
    registry: Registry,
    probes: Counter,
    acks: Counter,
    timeouts: Counter,
    inferred: Family<EventLabels, Counter>,
    resets: Family<ResetLabels, Counter>,
    fins: Family<DirectionLabels, Counter>,
    closes: Family<CloseLabels, Counter>,
    diagnoses: Family<VerdictLabels, Counter>,
    lost: Family<SourceLabels, Counter>,
    lost_records: Family<KindLabels, Counter>,
    lost_connection_ends: Counter,
    records_read: Counter,
    bad_records: Counter,
    evicted: Counter,
    births_shed: Counter,
    /// kaprobe's own cost: the agent process's CPU time and memory, the programs' runs and
    /// time in the kernel (see [`Metrics::own_cost`]).
    agent_cpu: Counter<f64, AtomicU64>,
    agent_rss: Gauge,
    program_runs: Family<ProgramLabels, Counter>,
    program_seconds: Family<ProgramLabels, Counter<f64, AtomicU64>>,
    tracked: Gauge,
    ring_used: Gauge,
    ring_peak: Gauge,
    by_port: Option<Family<PortLabels, Counter>>,
    /// Reset reason names, interned (a small fixed set from the kernel's enum).
    reasons: Mutex<HashMap<String, &'static str>>,
    ports: Mutex<HashSet<u16>>,
    hot: Hot,
}

/// The series every FIN and close counts in, taken once from their families (a counter is
/// shared: the same value): an event then costs one atomic add, not a read lock and a
/// hash of the labels per series (~25 % of the agent's time under `--all` churn).
#[derive(Default)]
struct Hot {
    fins: [Counter; 2],
    /// By cause (in `Cause::ALL` order), then local / remote.
    closes: [[Counter; 2]; Cause::ALL.len()],
    /// In `Verdict::ALL` order.
    verdicts: [Counter; Verdict::ALL.len()],
}

impl Hot {
    fn of(m: &Metrics) -> Hot {
        let fin = |direction| m.fins.get_or_create(&DirectionLabels { direction }).clone();
        let close = |cause: Cause, closed_by| {
            m.closes
                .get_or_create(&CloseLabels {
                    cause: cause.as_str(),
                    closed_by,
                })
                .clone()
        };
        Hot {
            fins: [fin("sent"), fin("received")],
            closes: Cause::ALL.map(|c| [close(c, "local"), close(c, "remote")]),
            verdicts: Verdict::ALL.map(|v| {
                m.diagnoses
                    .get_or_create(&VerdictLabels {
                        verdict: v.as_str(),
                    })
                    .clone()
            }),
        }
    }

    fn close(&self, cause: Cause, closed_by: Side) -> &Counter {
        let i = Cause::ALL.iter().position(|&c| c == cause).unwrap_or(0);
        &self.closes[i][usize::from(closed_by == Side::Remote)]
    }

    fn verdict(&self, v: Verdict) -> &Counter {
        &self.verdicts[Verdict::ALL.iter().position(|&x| x == v).unwrap_or(0)]
    }
}

impl Metrics {
    pub(crate) fn new(per_remote_port: bool, info: &AgentInfo) -> Metrics {
        let mut registry = Registry::with_prefix("kaprobe");
        let m = Metrics {
            probes: Counter::default(),
            acks: Counter::default(),
            timeouts: Counter::default(),
            inferred: Family::default(),
            resets: Family::default(),
            fins: Family::default(),
            closes: Family::default(),
            diagnoses: Family::default(),
            lost: Family::default(),
            lost_records: Family::default(),
            lost_connection_ends: Counter::default(),
            records_read: Counter::default(),
            bad_records: Counter::default(),
            evicted: Counter::default(),
            births_shed: Counter::default(),
            agent_cpu: Counter::default(),
            agent_rss: Gauge::default(),
            program_runs: Family::default(),
            program_seconds: Family::default(),
            tracked: Gauge::default(),
            ring_used: Gauge::default(),
            ring_peak: Gauge::default(),
            by_port: per_remote_port.then(Family::default),
            reasons: Mutex::new(HashMap::new()),
            ports: Mutex::new(HashSet::new()),
            registry: Registry::default(),
            hot: Hot::default(),
        };
        m.register_events(&mut registry);
        m.register_agent(&mut registry, info);
        m.precreate_series();
        let hot = Hot::of(&m);
        Metrics { registry, hot, ..m }
    }

    /// What happened to connections.
    fn register_events(&self, registry: &mut Registry) {
        registry.register(
            "keepalive_probes",
            "Keepalive probes sent",
            self.probes.clone(),
        );
        registry.register(
            "keepalive_acks",
            "Keepalive probes answered by the peer",
            self.acks.clone(),
        );
        registry.register(
            "keepalive_timeouts",
            "Connections the kernel gave up on in its keepalive timer (ETIMEDOUT)",
            self.timeouts.clone(),
        );
        registry.register(
            "resets",
            "RSTs sent and received on reported connections, by direction and reason",
            self.resets.clone(),
        );
        registry.register(
            "inferred_events",
            "Keepalive events of timer firings no tracepoint saw, inferred afterwards (also counted in keepalive_probes / keepalive_timeouts; see docs/design.md)",
            self.inferred.clone(),
        );
        registry.register(
            "fins",
            "FINs sent and received on reported connections",
            self.fins.clone(),
        );
        registry.register(
            "diagnoses",
            "Diagnoses of connection deaths (connection_closed) and of RSTs that closed none, by verdict (docs/events.md)",
            self.diagnoses.clone(),
        );
        registry.register(
            "connections_closed",
            "Reported connections that ended, by cause and by the side that ended them",
            self.closes.clone(),
        );
        registry.register(
            "events_lost",
            "What could not be followed or delivered, by source (ring_buffer: records; kernel_conn_table: sockets; agent_conn_table: connections evicted by the agent; recursion: hook runs)",
            self.lost.clone(),
        );
        registry.register(
            "lost_records",
            "Records lost because the ring buffer was full, by record kind",
            self.lost_records.clone(),
        );
        registry.register(
            "lost_connection_ends",
            "Connection ends (connection_closed events) lost with the ring buffer full",
            self.lost_connection_ends.clone(),
        );
    }

    /// The agent itself: records, losses, tables, ring buffer, build.
    fn register_agent(&self, registry: &mut Registry, info: &AgentInfo) {
        registry.register(
            "records_read",
            "Records read from the kernel's ring buffer",
            self.records_read.clone(),
        );
        registry.register(
            "bad_records",
            "Records that failed to decode",
            self.bad_records.clone(),
        );
        registry.register(
            "evicted_connections",
            "Connections the agent stopped following because its table was full",
            self.evicted.clone(),
        );
        registry.register(
            "births_shed",
            "Starts of connections without keepalive not recorded, over --birth-budget (those that fail are reported without owner or lifetime)",
            self.births_shed.clone(),
        );
        registry.register(
            "agent_cpu_seconds",
            "CPU time of the agent process (user and system, all threads)",
            self.agent_cpu.clone(),
        );
        registry.register(
            "agent_resident_memory_bytes",
            "Resident memory of the agent process",
            self.agent_rss.clone(),
        );
        registry.register(
            "program_runs",
            "Runs of each of kaprobe's eBPF programs, counted while the kernel's BPF run-time statistics are on (--program-stats, or sysctl kernel.bpf_stats_enabled=1)",
            self.program_runs.clone(),
        );
        registry.register(
            "program_run_seconds",
            "Time kaprobe's eBPF programs ran in the kernel, counted while the kernel's BPF run-time statistics are on (--program-stats, or sysctl kernel.bpf_stats_enabled=1)",
            self.program_seconds.clone(),
        );
        registry.register(
            "tracked_connections",
            "Connections the agent follows now",
            self.tracked.clone(),
        );
        registry.register(
            "ring_buffer_used_bytes",
            "Bytes waiting in the ring buffer when the agent last drained it",
            self.ring_used.clone(),
        );
        registry.register(
            "ring_buffer_peak_used_bytes",
            "Most bytes found waiting in the ring buffer since start",
            self.ring_peak.clone(),
        );
        let size = Gauge::<i64>::default();
        size.set(info.ring_buffer_bytes as i64);
        registry.register(
            "ring_buffer_size_bytes",
            "Size of the ring buffer (--ring-size)",
            size,
        );
        let build = Family::<InfoLabels, Gauge>::default();
        build
            .get_or_create(&InfoLabels {
                version: info.version.into(),
                kernel: info.kernel.into(),
                attach: info.attach.into(),
                mode: info.mode.into(),
            })
            .set(1);
        registry.register(
            "agent_info",
            "The agent: version, kernel, how the hooks attached, mode",
            build,
        );
        if let Some(f) = &self.by_port {
            registry.register(
                "remote_port_events",
                "Keepalive and close events by remote port (--metrics-remote-port; at most 256 ports, the rest as 0)",
                f.clone(),
            );
        }
    }

    /// Series that exist from the start, at 0, so that a first increase shows in rate().
    fn precreate_series(&self) {
        for source in [
            "ring_buffer",
            "kernel_conn_table",
            "agent_conn_table",
            "recursion",
        ] {
            let _ = self.lost.get_or_create(&SourceLabels { source });
        }
        for direction in ["sent", "received"] {
            let _ = self.fins.get_or_create(&DirectionLabels { direction });
        }
        for event in ["keepalive_probe", "keepalive_timeout"] {
            let _ = self.inferred.get_or_create(&EventLabels { event });
        }
        for reason in ["answer_to_keepalive_probe", "unspecified"] {
            let _ = self.resets.get_or_create(&ResetLabels {
                direction: "received",
                reason,
            });
        }
        for verdict in Verdict::ALL {
            let _ = self.diagnoses.get_or_create(&VerdictLabels {
                verdict: verdict.as_str(),
            });
        }
        for cause in Cause::ALL {
            for closed_by in ["local", "remote"] {
                let _ = self.closes.get_or_create(&CloseLabels {
                    cause: cause.as_str(),
                    closed_by,
                });
            }
        }
    }

    fn reason(&self, name: &str) -> &'static str {
        let mut reasons = self.reasons.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = reasons.get(name) {
            return r;
        }
        // Bounded by the kernel's enum sk_rst_reason (a few dozen names).
        let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
        reasons.insert(name.to_owned(), leaked);
        leaked
    }

    fn diagnosis(&self, d: &Diagnosis) {
        self.hot.verdict(d.verdict).inc();
    }

    fn inferred_event(&self, event: &'static str) {
        self.inferred.get_or_create(&EventLabels { event }).inc();
    }

    fn port_event(&self, e: &Event, event: &'static str) {
        let (Some(family), Some(conn)) = (&self.by_port, &e.conn) else {
            return;
        };
        let mut ports = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        let port = if ports.contains(&conn.dport) || ports.len() < MAX_REMOTE_PORTS {
            ports.insert(conn.dport);
            conn.dport
        } else {
            0
        };
        family
            .get_or_create(&PortLabels {
                remote_port: port,
                event,
            })
            .inc();
    }

    /// Counts one event written to the log.
    pub(crate) fn observe(&self, e: &Event) {
        match &e.body {
            Body::KeepaliveProbe { inferred, .. } => {
                self.probes.inc();
                if *inferred {
                    self.inferred_event("keepalive_probe");
                }
                self.port_event(e, "keepalive_probe");
            }
            Body::KeepaliveAck { .. } => {
                self.acks.inc();
            }
            Body::KeepaliveTimeout { inferred, .. } => {
                self.timeouts.inc();
                if *inferred {
                    self.inferred_event("keepalive_timeout");
                }
                self.port_event(e, "keepalive_timeout");
            }
            Body::ResetSent {
                reason, diagnosis, ..
            } => {
                if let Some(d) = diagnosis {
                    self.diagnosis(d);
                }
                self.resets
                    .get_or_create(&ResetLabels {
                        direction: "sent",
                        reason: self.reason(reason),
                    })
                    .inc();
                self.port_event(e, "reset_sent");
            }
            Body::ResetReceived {
                during_keepalive, ..
            } => {
                let reason = if *during_keepalive {
                    "answer_to_keepalive_probe"
                } else {
                    "unspecified"
                };
                self.resets
                    .get_or_create(&ResetLabels {
                        direction: "received",
                        reason,
                    })
                    .inc();
                self.port_event(e, "reset_received");
            }
            Body::FinSent { .. } => {
                self.hot.fins[0].inc();
            }
            Body::FinReceived { .. } => {
                self.hot.fins[1].inc();
            }
            Body::ConnectionClosed {
                cause,
                closed_by,
                diagnosis,
                ..
            } => {
                self.diagnosis(diagnosis);
                self.hot.close(*cause, *closed_by).inc();
                self.port_event(e, "connection_closed");
            }
            Body::EventsLost {
                count,
                source,
                records,
                ..
            } => {
                self.lost
                    .get_or_create(&SourceLabels { source })
                    .inc_by(*count);
                if let Some(r) = records {
                    self.lost_by_kind(r);
                }
            }
            Body::AgentStart { .. } | Body::AgentStop { .. } | Body::Summary { .. } => {}
        }
    }

    fn lost_by_kind(&self, r: &LostRecords) {
        for (&kind, &n) in &r.by_kind {
            self.lost_records
                .get_or_create(&KindLabels { kind })
                .inc_by(n);
        }
        self.lost_connection_ends.inc_by(r.connection_ends);
    }

    /// Records read from the ring buffer in one drain, and their bytes.
    pub(crate) fn drained(&self, records: u64, bad: u64, bytes: u64) {
        self.records_read.inc_by(records);
        self.bad_records.inc_by(bad);
        self.ring_used.set(bytes as i64);
        if bytes as i64 > self.ring_peak.get() {
            self.ring_peak.set(bytes as i64);
        }
    }

    /// The agent's connection table now, and its evictions so far.
    pub(crate) fn table(&self, tracked: usize, evicted_total: u64) {
        self.tracked.set(tracked as i64);
        raise_to(&self.evicted, evicted_total);
    }

    /// Births shed so far (the kernel's total).
    pub(crate) fn births_shed(&self, total: u64) {
        raise_to(&self.births_shed, total);
    }

    /// kaprobe's own cost so far: the agent's CPU time (seconds) and resident memory (bytes),
    /// and each program's counters from the kernel (totals since it was loaded).
    pub(crate) fn own_cost(
        &self,
        cpu_seconds: f64,
        rss_bytes: u64,
        programs: &[(&'static str, ProgStats)],
    ) {
        raise_to(&self.agent_cpu, cpu_seconds);
        self.agent_rss.set(rss_bytes as i64);
        for &(program, stats) in programs {
            let labels = ProgramLabels { program };
            raise_to(&self.program_runs.get_or_create(&labels), stats.run_cnt);
            raise_to(
                &self.program_seconds.get_or_create(&labels),
                stats.run_time_ns as f64 / 1e9,
            );
        }
    }

    /// The exposition, as Prometheus scrapes it.
    pub(crate) fn render(&self) -> String {
        let mut text = String::with_capacity(8192);
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

/// Raises counter `c` to `total`, a total kept elsewhere (the kernel's, the process's):
/// a counter only goes up, so a reading that went back changes nothing.
fn raise_to<N, A>(c: &Counter<N, A>, total: N)
where
    N: Copy + PartialOrd + std::ops::Sub<Output = N>,
    A: Atomic<N>,
{
    let seen = c.get();
    if total > seen {
        c.inc_by(total - seen);
    }
}

/// Binds the metrics address now, so that a bad or busy address fails before anything is
/// loaded.
pub(crate) fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    Ok(listener)
}

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn respond(
    metrics: Arc<Metrics>,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (status, body, content_type) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            (StatusCode::OK, metrics.render(), CONTENT_TYPE)
        }
        (&Method::GET, "/") => (
            StatusCode::OK,
            "kaprobe: metrics at /metrics\n".to_owned(),
            "text/plain",
        ),
        (&Method::GET | &Method::HEAD, _) => (
            StatusCode::NOT_FOUND,
            "not found\n".to_owned(),
            "text/plain",
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n".to_owned(),
            "text/plain",
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(content_type) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    Ok(resp)
}

/// Serves `/metrics` on `listener` until the runtime stops; one task per scrape connection.
pub(crate) async fn serve(listener: std::net::TcpListener, metrics: Arc<Metrics>) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            log::error!("metrics endpoint: {e}");
            return;
        }
    };
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // E.g. out of file descriptors: keep serving what we can.
                log::warn!("metrics endpoint: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| respond(metrics.clone(), req));
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                log::debug!("metrics endpoint: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{
        Endpoints, Family as Fam, Timestamp,
        diagnosis::{Verdict, test_diagnosis},
    };

    /// A `connection_closed` body (what the metrics read of it: the cause, the side, the
    /// verdict).
    fn closed(cause: Cause, closed_by: Side, verdict: Verdict) -> Body {
        Body::ConnectionClosed {
            cause,
            error: None,
            closed_by,
            time_wait: false,
            lifetime_ms: None,
            idle_ms: None,
            keepalive_probes: 0,
            keepalive_acks: 0,
            last_state: None,
            direction: None,
            bytes_sent: None,
            bytes_received: None,
            segments: None,
            segments_sent: None,
            segments_received: None,
            diagnosis: Arc::new(test_diagnosis(verdict)),
            socket_cgroup: None,
        }
    }

    fn ev(body: Body) -> Event {
        let conn = Endpoints {
            saddr: "10.0.0.1".parse().unwrap(),
            sport: 40000,
            daddr: "10.0.0.2".parse().unwrap(),
            dport: 5432,
            family: Fam::Ipv4,
            netns: 1,
        };
        Event {
            ts: Timestamp(0),
            conn: Some(conn),
            owner: None,
            body,
        }
    }

    fn info() -> AgentInfo<'static> {
        AgentInfo {
            version: "0.1.0",
            kernel: "6.18.0",
            attach: "tp_btf",
            mode: "default",
            ring_buffer_bytes: 4096,
        }
    }

    /// Closes, FINs and verdicts count in the series their labels name (the hot path holds
    /// the counters of these series directly).
    #[test]
    fn own_cost_follows_the_kernel_totals() {
        let m = Metrics::new(false, &info());
        let stats = |run_cnt, run_time_ns| ProgStats {
            recursion_misses: 0,
            run_cnt,
            run_time_ns,
        };
        m.own_cost(0.5, 20_000_000, &[("kp_set_state", stats(10, 2_000))]);
        m.own_cost(
            1.25,
            30_000_000,
            &[
                ("kp_set_state", stats(40, 9_000)),
                ("kp_recv_reset", stats(4, 400)),
            ],
        );
        // A reading that went back (a racing update) changes nothing.
        m.own_cost(1.0, 30_000_000, &[("kp_set_state", stats(30, 5_000))]);
        let text = m.render();
        let value = |series: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{series} in\n{text}"))
        };
        assert_eq!(value("kaprobe_agent_cpu_seconds_total"), 1.25);
        assert_eq!(value("kaprobe_agent_resident_memory_bytes"), 30e6);
        assert_eq!(
            value(r#"kaprobe_program_runs_total{program="kp_set_state"}"#),
            40.0
        );
        assert_eq!(
            value(r#"kaprobe_program_runs_total{program="kp_recv_reset"}"#),
            4.0
        );
        let seconds = |p: &str| {
            value(&format!(
                r#"kaprobe_program_run_seconds_total{{program="{p}"}}"#
            ))
        };
        assert!((seconds("kp_set_state") - 9e-6).abs() < 1e-12);
        assert!((seconds("kp_recv_reset") - 4e-7).abs() < 1e-12);
    }

    #[test]
    fn every_close_fin_and_verdict_lands_in_its_series() {
        let m = Metrics::new(false, &info());
        let close = |cause, closed_by, verdict| ev(closed(cause, closed_by, verdict));
        // Cause i closed locally i+1 times and remotely i+2 times; verdict j j+1 times.
        for (i, cause) in Cause::ALL.into_iter().enumerate() {
            for _ in 0..=i {
                m.observe(&close(cause, Side::Local, Verdict::Unknown));
            }
            for _ in 0..=i + 1 {
                m.observe(&close(cause, Side::Remote, Verdict::Unknown));
            }
        }
        let unknowns: usize = (0..Cause::ALL.len()).map(|i| 2 * i + 3).sum();
        for (j, verdict) in Verdict::ALL.into_iter().enumerate() {
            if verdict != Verdict::Unknown {
                for _ in 0..=j {
                    m.observe(&close(Cause::Other, Side::Local, verdict));
                }
            }
        }
        for _ in 0..3 {
            m.observe(&ev(Body::FinSent { state: "fin_wait1" }));
        }
        m.observe(&ev(Body::FinReceived {
            state: "close_wait",
        }));
        let text = m.render();
        let value = |series: String| -> u64 {
            let line = text
                .lines()
                .find(|l| l.starts_with(&format!("{series} ")))
                .unwrap_or_else(|| panic!("no {series} in {text}"));
            line.rsplit(' ').next().unwrap().parse().unwrap()
        };
        let others = Verdict::ALL.len() * (Verdict::ALL.len() + 1) / 2
            - (Verdict::ALL
                .iter()
                .position(|&v| v == Verdict::Unknown)
                .unwrap()
                + 1);
        for (i, cause) in Cause::ALL.into_iter().enumerate() {
            let series = |side: &str| {
                format!(
                    r#"kaprobe_connections_closed_total{{cause="{}",closed_by="{side}"}}"#,
                    cause.as_str()
                )
            };
            let extra = if cause == Cause::Other { others } else { 0 };
            assert_eq!(value(series("local")), (i + 1 + extra) as u64, "{cause:?}");
            assert_eq!(value(series("remote")), (i + 2) as u64, "{cause:?}");
        }
        for (j, verdict) in Verdict::ALL.into_iter().enumerate() {
            let want = if verdict == Verdict::Unknown {
                unknowns
            } else {
                j + 1
            };
            let series = format!(
                r#"kaprobe_diagnoses_total{{verdict="{}"}}"#,
                verdict.as_str()
            );
            assert_eq!(value(series), want as u64, "{verdict:?}");
        }
        assert_eq!(value(r#"kaprobe_fins_total{direction="sent"}"#.into()), 3);
        assert_eq!(
            value(r#"kaprobe_fins_total{direction="received"}"#.into()),
            1
        );
    }

    #[test]
    fn counts_events_with_bounded_labels() {
        let m = Metrics::new(true, &info());
        for i in 0..3 {
            m.observe(&ev(Body::KeepaliveTimeout {
                probes: 3,
                max_probes: 3,
                idle_ms: 1,
                error: None,
                user_timeout_ms: None,
                inferred: i == 2,
            }));
        }
        m.observe(&ev(Body::ResetSent {
            reason: "TCP_KEEPALIVE_TIMEOUT".into(),
            state: None,
            answering: None,
            diagnosis: None,
        }));
        m.observe(&ev(closed(
            Cause::KeepaliveTimeout,
            Side::Local,
            Verdict::PeerUnreachable,
        )));
        let mut lost = LostRecords::default();
        lost.by_kind.insert("keepalive_timer", 2);
        lost.connection_ends = 2;
        m.observe(&Event {
            ts: Timestamp(0),
            conn: None,
            owner: None,
            body: Body::EventsLost {
                count: 5,
                source: "ring_buffer",
                total: 5,
                records: Some(lost),
            },
        });
        let text = m.render();
        assert!(
            text.contains("kaprobe_keepalive_timeouts_total 3\n"),
            "{text}"
        );
        assert!(
            text.contains(r#"kaprobe_inferred_events_total{event="keepalive_timeout"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kaprobe_inferred_events_total{event="keepalive_probe"} 0"#),
            "{text}"
        );
        assert!(
            text.contains(
                r#"kaprobe_resets_total{direction="sent",reason="TCP_KEEPALIVE_TIMEOUT"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"kaprobe_connections_closed_total{cause="keepalive_timeout",closed_by="local"} 1"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"kaprobe_diagnoses_total{verdict="peer_unreachable"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kaprobe_diagnoses_total{verdict="keepalive_race"} 0"#),
            "every verdict from the start: {text}"
        );
        assert!(
            text.contains(r#"kaprobe_events_lost_total{source="ring_buffer"} 5"#),
            "{text}"
        );
        assert!(
            text.contains(r#"kaprobe_lost_records_total{kind="keepalive_timer"} 2"#),
            "{text}"
        );
        assert!(
            text.contains("kaprobe_lost_connection_ends_total 2\n"),
            "{text}"
        );
        assert!(text.contains(r#"kaprobe_remote_port_events_total{remote_port="5432",event="keepalive_timeout"} 3"#), "{text}");
        assert!(
            text.contains("kaprobe_ring_buffer_size_bytes 4096\n"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn remote_ports_are_capped() {
        let m = Metrics::new(true, &info());
        for port in 1..=(MAX_REMOTE_PORTS as u16 + 10) {
            let mut e = ev(Body::KeepaliveProbe {
                probe: 1,
                max_probes: 3,
                idle_ms: 1,
                interval_ms: 1,
                inferred: false,
            });
            e.conn.as_mut().unwrap().dport = port;
            m.observe(&e);
        }
        let text = m.render();
        let series = text
            .lines()
            .filter(|l| l.starts_with("kaprobe_remote_port_events_total{"))
            .count();
        assert_eq!(series, MAX_REMOTE_PORTS + 1, "{text}");
        assert!(text.contains(
            r#"kaprobe_remote_port_events_total{remote_port="0",event="keepalive_probe"} 10"#
        ));
    }

    #[test]
    fn no_port_breakdown_unless_asked() {
        let m = Metrics::new(false, &info());
        m.observe(&ev(Body::KeepaliveProbe {
            probe: 1,
            max_probes: 3,
            idle_ms: 1,
            interval_ms: 1,
            inferred: false,
        }));
        let text = m.render();
        assert!(!text.contains("remote_port"));
        assert!(text.contains("kaprobe_keepalive_probes_total 1\n"));
    }
}
