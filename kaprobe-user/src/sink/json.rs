//! JSON Lines for connection events, written directly into a byte buffer.
//!
//! The serde model ([`crate::event`], documented in docs/events.md) defines the JSON; this
//! module writes the very same bytes for the events that come at high rates (keepalive,
//! reset, FIN and close events), without serde_json's per-field map machinery and string
//! escaping of every key. Every other event goes through serde_json. The tests check the
//! two against each other, and each writer below destructures its type completely, so a
//! field added to the model does not compile until it is written here too.
use std::{io::Write as _, net::IpAddr, sync::Arc};

use crate::{
    LastFew,
    event::{
        Body, Endpoints, Event, Family, Owner, Side, Timestamp,
        diagnosis::{Confidence, Diagnosis, Evidence},
        owner::OwnerData,
        time::RFC3339_MICROS_LEN,
    },
};

/// The JSON of the last owners, endpoints and diagnoses written, reused while the events
/// name the same (every event of a connection does, and they come together: a close and its
/// FINs; under churn most connections belong to a few processes, and closes share their
/// diagnosis): the texts are formatted, checked for escapes and copied once, not with every
/// event.
#[derive(Default)]
pub(crate) struct Recent {
    /// (Under churn a server's and its clients' owners alternate.)
    owners: Kept<Owner>,
    conn: Option<Endpoints>,
    conn_json: Vec<u8>,
    /// Recognised by address: the correlator shares its recent diagnoses
    /// ([`crate::correlate`]); under churn the server's and the client's alternate.
    diagnoses: Kept<Arc<Diagnosis>>,
}

/// The last four values of a kind written, with their JSON.
struct Kept<K>(LastFew<(K, Vec<u8>)>);

impl<K> Default for Kept<K> {
    fn default() -> Self {
        Kept(LastFew::default())
    }
}

impl<K: Clone> Kept<K> {
    /// Appends the JSON kept for a value `same` recognises, or writes `v`'s with `json`
    /// and keeps it (in place of the oldest).
    fn write(
        &mut self,
        out: &mut Vec<u8>,
        v: &K,
        same: impl Fn(&K, &K) -> bool,
        json: impl FnOnce(&mut Vec<u8>, &K),
    ) {
        if let Some((_, kept)) = self.0.find(|(k, _)| same(k, v)) {
            out.extend_from_slice(kept);
            return;
        }
        let start = out.len();
        json(out, v);
        self.0.keep((v.clone(), out[start..].to_vec()));
    }
}

impl Recent {
    fn owner(&mut self, out: &mut Vec<u8>, o: &Owner) {
        self.owners.write(out, o, |a, b| a == b, write_owner);
    }

    fn endpoints(&mut self, out: &mut Vec<u8>, c: &Endpoints) {
        if self.conn.as_ref() != Some(c) {
            self.conn_json.clear();
            endpoints(&mut self.conn_json, c);
            self.conn = Some(*c);
        }
        out.extend_from_slice(&self.conn_json);
    }

    fn diagnosis(&mut self, out: &mut Vec<u8>, d: &Arc<Diagnosis>) {
        self.diagnoses
            .write(out, d, Arc::ptr_eq, |out, d| diagnosis_object(out, d));
    }
}

/// Appends `e` as serde_json would serialise it (without a newline).
#[cfg(test)]
pub(crate) fn write_event(out: &mut Vec<u8>, e: &Event) -> serde_json::Result<()> {
    write_event_with(out, e, &mut Recent::default())
}

/// [`write_event`], with the owner's and the endpoints' JSON from `recent` when they are
/// the last ones written.
pub(crate) fn write_event_with(
    out: &mut Vec<u8>,
    e: &Event,
    recent: &mut Recent,
) -> serde_json::Result<()> {
    let Event {
        ts,
        conn,
        owner,
        body,
    } = e;
    let Some(conn) = conn else {
        return serde_json::to_writer(out, e);
    };
    if !is_connection_body(body) {
        return serde_json::to_writer(out, e);
    }
    out.extend_from_slice(b"{\"ts\":");
    timestamp(out, ts);
    out.extend_from_slice(b",\"event\":");
    name(out, body.name());
    out.push(b',');
    recent.endpoints(out, conn);
    out.extend_from_slice(b",\"owner\":");
    match owner {
        Some(o) => recent.owner(out, o),
        None => out.extend_from_slice(b"null"),
    }
    connection_body(out, body, recent);
    out.push(b'}');
    Ok(())
}

/// The bodies [`connection_body`] writes.
fn is_connection_body(body: &Body) -> bool {
    match body {
        Body::KeepaliveProbe { .. }
        | Body::KeepaliveAck { .. }
        | Body::KeepaliveTimeout { .. }
        | Body::ResetSent { .. }
        | Body::ResetReceived { .. }
        | Body::FinSent { .. }
        | Body::FinReceived { .. }
        | Body::ConnectionClosed { .. } => true,
        Body::AgentStart { .. }
        | Body::AgentStop { .. }
        | Body::Summary { .. }
        | Body::EventsLost { .. } => false,
    }
}

fn timestamp(out: &mut Vec<u8>, ts: &Timestamp) {
    let mut text = [0; RFC3339_MICROS_LEN];
    ts.rfc3339_ascii(&mut text);
    out.push(b'"');
    out.extend_from_slice(&text);
    out.push(b'"');
}

/// The fields of [`Endpoints`] (flattened into the event).
fn endpoints(out: &mut Vec<u8>, c: &Endpoints) {
    let Endpoints {
        saddr,
        sport,
        daddr,
        dport,
        family,
        netns,
    } = c;
    out.extend_from_slice(b"\"saddr\":");
    ip(out, saddr);
    out.extend_from_slice(b",\"sport\":");
    uint(out, *sport);
    out.extend_from_slice(b",\"daddr\":");
    ip(out, daddr);
    out.extend_from_slice(b",\"dport\":");
    uint(out, *dport);
    out.extend_from_slice(match family {
        Family::Ipv4 => b",\"family\":\"ipv4\",\"netns\":",
        Family::Ipv6 => b",\"family\":\"ipv6\",\"netns\":",
    });
    uint(out, *netns);
}

fn write_owner(out: &mut Vec<u8>, o: &Owner) {
    let OwnerData {
        pid,
        comm,
        cgroup,
        container_id,
        cgroup_id: _,
    } = &**o;
    out.extend_from_slice(b"{\"pid\":");
    uint(out, *pid);
    out.extend_from_slice(b",\"comm\":");
    string(out, comm);
    out.extend_from_slice(b",\"cgroup\":");
    opt_string(out, cgroup.as_deref());
    if let Some(id) = container_id {
        out.extend_from_slice(b",\"container_id\":");
        string(out, id);
    }
    out.push(b'}');
}

/// The fields of a connection event's body, each after a comma.
fn connection_body(out: &mut Vec<u8>, body: &Body, recent: &mut Recent) {
    match body {
        Body::KeepaliveProbe {
            probe,
            max_probes,
            idle_ms,
            interval_ms,
            inferred,
        } => {
            out.extend_from_slice(b",\"probe\":");
            uint(out, *probe);
            out.extend_from_slice(b",\"max_probes\":");
            uint(out, *max_probes);
            out.extend_from_slice(b",\"idle_ms\":");
            uint(out, *idle_ms);
            out.extend_from_slice(b",\"interval_ms\":");
            uint(out, *interval_ms);
            if *inferred {
                out.extend_from_slice(b",\"inferred\":true");
            }
        }
        Body::KeepaliveAck { probes_unanswered } => {
            out.extend_from_slice(b",\"probes_unanswered\":");
            uint(out, *probes_unanswered);
        }
        Body::KeepaliveTimeout {
            probes,
            max_probes,
            idle_ms,
            error,
            user_timeout_ms,
            inferred,
        } => {
            out.extend_from_slice(b",\"probes\":");
            uint(out, *probes);
            out.extend_from_slice(b",\"max_probes\":");
            uint(out, *max_probes);
            out.extend_from_slice(b",\"idle_ms\":");
            uint(out, *idle_ms);
            out.extend_from_slice(b",\"error\":");
            opt_name(out, *error);
            out.extend_from_slice(b",\"user_timeout_ms\":");
            opt_uint(out, *user_timeout_ms);
            if *inferred {
                out.extend_from_slice(b",\"inferred\":true");
            }
        }
        Body::ResetSent {
            reason,
            state,
            answering,
            diagnosis,
        } => {
            out.extend_from_slice(b",\"reason\":");
            string(out, reason);
            out.extend_from_slice(b",\"state\":");
            opt_name(out, *state);
            out.extend_from_slice(b",\"answering\":");
            opt_name(out, *answering);
            if let Some(d) = diagnosis {
                out.extend_from_slice(b",\"diagnosis\":");
                // (Rare events: serde is fast enough.)
                serde_json::to_writer(&mut *out, d).expect("write to memory");
            }
        }
        Body::ResetReceived {
            during_keepalive,
            state,
        } => {
            out.extend_from_slice(b",\"during_keepalive\":");
            boolean(out, *during_keepalive);
            out.extend_from_slice(b",\"state\":");
            name(out, state);
        }
        Body::FinSent { state } | Body::FinReceived { state } => {
            out.extend_from_slice(b",\"state\":");
            name(out, state);
        }
        Body::ConnectionClosed {
            cause,
            error,
            closed_by,
            time_wait,
            lifetime_ms,
            idle_ms,
            keepalive_probes,
            keepalive_acks,
            last_state,
            bytes_sent,
            bytes_received,
            direction,
            segments,
            segments_sent,
            segments_received,
            diagnosis,
            socket_cgroup,
        } => {
            out.extend_from_slice(b",\"cause\":");
            name(out, cause.as_str());
            out.extend_from_slice(b",\"error\":");
            opt_name(out, *error);
            out.extend_from_slice(match closed_by {
                Side::Local => b",\"closed_by\":\"local\",\"time_wait\":",
                Side::Remote => b",\"closed_by\":\"remote\",\"time_wait\":",
            });
            boolean(out, *time_wait);
            out.extend_from_slice(b",\"lifetime_ms\":");
            opt_uint(out, *lifetime_ms);
            out.extend_from_slice(b",\"idle_ms\":");
            opt_uint(out, *idle_ms);
            out.extend_from_slice(b",\"keepalive_probes\":");
            uint(out, *keepalive_probes);
            out.extend_from_slice(b",\"keepalive_acks\":");
            uint(out, *keepalive_acks);
            out.extend_from_slice(b",\"last_state\":");
            opt_name(out, *last_state);
            out.extend_from_slice(b",\"bytes_sent\":");
            opt_uint(out, *bytes_sent);
            out.extend_from_slice(b",\"bytes_received\":");
            opt_uint(out, *bytes_received);
            out.extend_from_slice(b",\"direction\":");
            opt_name(out, *direction);
            out.extend_from_slice(b",\"segments\":");
            opt_uint(out, *segments);
            out.extend_from_slice(b",\"segments_sent\":");
            opt_uint(out, *segments_sent);
            out.extend_from_slice(b",\"segments_received\":");
            opt_uint(out, *segments_received);
            out.extend_from_slice(b",\"diagnosis\":");
            recent.diagnosis(out, diagnosis);
            if let Some(c) = socket_cgroup {
                out.extend_from_slice(b",\"socket_cgroup\":");
                string(out, c);
            }
        }
        Body::AgentStart { .. }
        | Body::AgentStop { .. }
        | Body::Summary { .. }
        | Body::EventsLost { .. } => unreachable!("not a connection body: {}", body.name()),
    }
}

/// A [`Diagnosis`] (every `connection_closed` has one).
fn diagnosis_object(out: &mut Vec<u8>, d: &Diagnosis) {
    let Diagnosis {
        verdict,
        confidence,
        text,
        evidence,
        advice,
    } = d;
    out.extend_from_slice(b"{\"verdict\":");
    name(out, verdict.as_str());
    out.extend_from_slice(match confidence {
        Confidence::Certain => b",\"confidence\":\"certain\",\"text\":",
        Confidence::Likely => b",\"confidence\":\"likely\",\"text\":",
        Confidence::Undecided => b",\"confidence\":\"undecided\",\"text\":",
    });
    string(out, text);
    out.extend_from_slice(b",\"evidence\":");
    evidence_object(out, evidence);
    out.extend_from_slice(b",\"advice\":");
    opt_string(out, *advice);
    out.push(b'}');
}

/// The named numbers of an [`Evidence`], those present.
fn evidence_object(out: &mut Vec<u8>, e: &Evidence) {
    let Evidence {
        peer_idle_before_close_ms,
        reused_after_ms,
        idle_before_close_ms,
        closed_before_ms,
        silence_ms,
        nat_timeout_ms,
        keepalive_idle_ms,
        probes_sent,
        probes_answered,
        bytes_received,
        segment_bytes,
        other_end,
    } = e;
    let mut first = true;
    let mut key = |out: &mut Vec<u8>, name: &[u8]| {
        out.extend_from_slice(if first { b"{\"" } else { b",\"" });
        first = false;
        out.extend_from_slice(name);
        out.extend_from_slice(b"\":");
    };
    let numbers: [(&[u8], Option<u64>); 11] = [
        (b"peer_idle_before_close_ms", *peer_idle_before_close_ms),
        (b"reused_after_ms", *reused_after_ms),
        (b"idle_before_close_ms", *idle_before_close_ms),
        (b"closed_before_ms", *closed_before_ms),
        (b"silence_ms", *silence_ms),
        (b"nat_timeout_ms", *nat_timeout_ms),
        (b"keepalive_idle_ms", *keepalive_idle_ms),
        (b"probes_sent", probes_sent.map(u64::from)),
        (b"probes_answered", probes_answered.map(u64::from)),
        (b"bytes_received", *bytes_received),
        (b"segment_bytes", segment_bytes.map(u64::from)),
    ];
    for (name, value) in numbers {
        if let Some(v) = value {
            key(out, name);
            uint(out, v);
        }
    }
    if let Some(o) = other_end {
        key(out, b"other_end");
        string(out, o);
    }
    if first {
        out.extend_from_slice(b"{}");
    } else {
        out.push(b'}');
    }
}

fn ip(out: &mut Vec<u8>, a: &IpAddr) {
    match a {
        IpAddr::V4(a) => {
            // `"255.255.255.255"`
            let mut text = [0; 17];
            text[0] = b'"';
            let mut n = 1;
            for (i, octet) in a.octets().into_iter().enumerate() {
                if i > 0 {
                    text[n] = b'.';
                    n += 1;
                }
                n += decimal_u8(&mut text[n..n + 3], octet);
            }
            text[n] = b'"';
            // The whole buffer, then cut: a copy of a known size is a few moves, not a call
            // to memcpy.
            let start = out.len();
            out.extend_from_slice(&text);
            out.truncate(start + n + 1);
        }
        IpAddr::V6(a) => {
            // Writing into a Vec cannot fail.
            write!(out, "\"{a}\"").expect("write to memory");
        }
    }
}

/// `v` in decimal at the start of `buf`; returns its length.
fn decimal_u8(buf: &mut [u8], v: u8) -> usize {
    if v >= 100 {
        buf[0] = b'0' + v / 100;
        buf[1] = b'0' + v / 10 % 10;
        buf[2] = b'0' + v % 10;
        3
    } else if v >= 10 {
        buf[0] = b'0' + v / 10;
        buf[1] = b'0' + v % 10;
        2
    } else {
        buf[0] = b'0' + v;
        1
    }
}

fn uint(out: &mut Vec<u8>, n: impl Into<u64>) {
    out.extend_from_slice(itoa::Buffer::new().format(n.into()).as_bytes());
}

fn opt_uint(out: &mut Vec<u8>, n: Option<impl Into<u64>>) {
    match n {
        Some(n) => uint(out, n),
        None => out.extend_from_slice(b"null"),
    }
}

fn boolean(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

/// A JSON string, escaped exactly as serde_json escapes it.
fn string(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s) {
        // Rare (names and paths the kernel or the user chose): serde_json's escaping.
        serde_json::to_writer(out, s).expect("write to memory");
        return;
    }
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// Whether `s` has a character JSON escapes (a control character, `"` or `\\`).
fn needs_escape(s: &str) -> bool {
    // No early exit: short strings, and the loop vectorises.
    s.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

/// One of this program's names (an event, a state, a cause, an errno, a verdict): nothing
/// to escape (checked in debug builds, which the tests run over every name).
fn name(out: &mut Vec<u8>, s: &'static str) {
    debug_assert!(!needs_escape(s), "{s}");
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

fn opt_name(out: &mut Vec<u8>, s: Option<&'static str>) {
    match s {
        Some(s) => name(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn opt_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;
    use crate::event::{Cause, diagnosis::Verdict, errno_name, state_name};

    #[test]
    fn numbers_are_written_in_decimal() {
        let mut cases: Vec<u64> = (0..100_000).collect();
        for p in 0..20 {
            let ten = 10u64.pow(p);
            cases.extend([ten - 1, ten, ten + 1, ten.wrapping_mul(7) + 3]);
        }
        cases.extend([u64::MAX, u64::MAX - 1, u64::from(u32::MAX)]);
        let mut out = Vec::new();
        for n in cases {
            out.clear();
            out.extend_from_slice(b"x");
            uint(&mut out, n);
            assert_eq!(out, format!("x{n}").into_bytes());
        }
    }

    /// What [`name`] writes unescaped: every name this program has.
    #[test]
    fn names_need_no_escaping() {
        let mut names: Vec<&str> = (0..=u8::MAX).map(state_name).collect();
        names.extend((i32::from(i16::MIN)..=i32::from(i16::MAX)).filter_map(errno_name));
        names.extend(Cause::ALL.iter().map(Cause::as_str));
        names.extend(Verdict::ALL.iter().map(|v| v.as_str()));
        for n in names {
            assert!(!needs_escape(n), "{n}");
        }
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z_.-]{0,12}".boxed(),
            "[/a-z0-9.-]{0,40}".boxed(),
            any::<String>().boxed(),
            // Every character serde_json escapes.
            proptest::collection::vec(0u8..0x80, 0..20)
                .prop_map(|b| String::from_utf8(b).unwrap())
                .boxed(),
        ]
    }

    fn static_text() -> impl Strategy<Value = &'static str> {
        prop::sample::select(vec![
            "established",
            "fin_wait1",
            "ETIMEDOUT",
            "inbound",
            "outbound",
            "",
            "a\"b\\c\n\u{1}",
        ])
    }

    /// This program's names, as the fields written by [`name`] take them.
    fn static_name() -> impl Strategy<Value = &'static str> {
        let mut names: Vec<&'static str> = (0..=u8::MAX).map(state_name).collect();
        names.extend((-200..200).filter_map(errno_name));
        names.extend(["inbound", "outbound", "syn", "data", "fin", "ack", ""]);
        prop::sample::select(names)
    }

    fn ip_addr() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<u32>().prop_map(|a| IpAddr::V4(Ipv4Addr::from(a))),
            any::<u128>().prop_map(|a| IpAddr::V6(Ipv6Addr::from(a))),
            any::<u32>().prop_map(|a| IpAddr::V6(Ipv4Addr::from(a).to_ipv6_mapped())),
            Just(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
            (any::<u16>(), any::<u16>())
                .prop_map(|(a, b)| IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, a, b))),
        ]
    }

    fn endpoints() -> impl Strategy<Value = Endpoints> {
        (
            ip_addr(),
            any::<u16>(),
            ip_addr(),
            any::<u16>(),
            any::<bool>(),
            any::<u32>(),
        )
            .prop_map(|(saddr, sport, daddr, dport, v6, netns)| Endpoints {
                saddr,
                sport,
                daddr,
                dport,
                family: if v6 { Family::Ipv6 } else { Family::Ipv4 },
                netns,
            })
    }

    fn owner() -> impl Strategy<Value = Option<Owner>> {
        proptest::option::of(
            (
                any::<u32>(),
                text(),
                proptest::option::of(text()),
                proptest::option::of(text()),
                any::<u64>(),
            )
                .prop_map(|(pid, comm, cgroup, container_id, cgroup_id)| {
                    Owner::from(OwnerData {
                        pid,
                        comm: comm.into(),
                        cgroup: cgroup.map(Into::into),
                        container_id: container_id.map(Into::into),
                        cgroup_id,
                    })
                }),
        )
    }

    fn cause() -> impl Strategy<Value = Cause> {
        prop::sample::select(Cause::ALL.to_vec())
    }

    fn body() -> impl Strategy<Value = Body> {
        let s = || proptest::option::of(static_name());
        prop_oneof![
            (
                any::<u8>(),
                any::<u8>(),
                any::<u64>(),
                any::<u64>(),
                any::<bool>()
            )
                .prop_map(|(probe, max_probes, idle_ms, interval_ms, inferred)| {
                    Body::KeepaliveProbe {
                        probe,
                        max_probes,
                        idle_ms,
                        interval_ms,
                        inferred,
                    }
                }),
            any::<u8>().prop_map(|probes_unanswered| Body::KeepaliveAck { probes_unanswered }),
            (
                any::<u8>(),
                any::<u8>(),
                any::<u64>(),
                s(),
                proptest::option::of(any::<u32>()),
                any::<bool>()
            )
                .prop_map(
                    |(probes, max_probes, idle_ms, error, user_timeout_ms, inferred)| {
                        Body::KeepaliveTimeout {
                            probes,
                            max_probes,
                            idle_ms,
                            error,
                            user_timeout_ms,
                            inferred,
                        }
                    }
                ),
            (text(), s(), s(), proptest::option::of(diagnosis())).prop_map(
                |(reason, state, answering, diagnosis)| Body::ResetSent {
                    reason,
                    state,
                    answering,
                    diagnosis: diagnosis.map(std::sync::Arc::new),
                }
            ),
            (any::<bool>(), static_name()).prop_map(|(during_keepalive, state)| {
                Body::ResetReceived {
                    during_keepalive,
                    state,
                }
            }),
            static_name().prop_map(|state| Body::FinSent { state }),
            static_name().prop_map(|state| Body::FinReceived { state }),
            (
                (cause(), s(), any::<bool>(), any::<bool>()),
                (
                    proptest::option::of(any::<u64>()),
                    proptest::option::of(any::<u64>()),
                    any::<u32>(),
                    any::<u32>(),
                    s()
                ),
                (
                    proptest::option::of(any::<u64>()),
                    proptest::option::of(any::<u64>()),
                    s(),
                    proptest::option::of(any::<u64>()),
                    proptest::option::of(any::<u32>()),
                    proptest::option::of(any::<u32>()),
                ),
                (diagnosis(), proptest::option::of(text())),
            )
                .prop_map(
                    |(
                        (cause, error, remote, time_wait),
                        (lifetime_ms, idle_ms, keepalive_probes, keepalive_acks, last_state),
                        (
                            bytes_sent,
                            bytes_received,
                            direction,
                            segments,
                            segments_sent,
                            segments_received,
                        ),
                        (diagnosis, socket_cgroup),
                    )| Body::ConnectionClosed {
                        cause,
                        error,
                        closed_by: if remote { Side::Remote } else { Side::Local },
                        time_wait,
                        lifetime_ms,
                        idle_ms,
                        keepalive_probes,
                        keepalive_acks,
                        last_state,
                        bytes_sent,
                        bytes_received,
                        direction,
                        segments,
                        segments_sent,
                        segments_received,
                        diagnosis: std::sync::Arc::new(diagnosis),
                        socket_cgroup: socket_cgroup.map(std::sync::Arc::from),
                    }
                ),
            any::<u64>().prop_map(|count| Body::EventsLost {
                count,
                source: "ring_buffer",
                total: count,
                records: None,
            }),
        ]
    }

    fn diagnosis() -> impl Strategy<Value = Diagnosis> {
        let s = || proptest::option::of(static_text());
        let n = || proptest::option::of(any::<u64>());
        let n32 = || proptest::option::of(any::<u32>());
        (
            (0..Verdict::ALL.len(), 0..3usize, text(), s()),
            (n(), n(), n(), n(), n(), n(), n()),
            (n32(), n32(), n(), n32(), s()),
        )
            .prop_map(
                |(
                    (verdict, confidence, text, advice),
                    (a, b, c, d, e, f, g),
                    (probes_sent, probes_answered, bytes_received, segment_bytes, other_end),
                )| Diagnosis {
                    verdict: Verdict::ALL[verdict],
                    confidence: [
                        Confidence::Certain,
                        Confidence::Likely,
                        Confidence::Undecided,
                    ][confidence],
                    text: text.into(),
                    evidence: Evidence {
                        peer_idle_before_close_ms: a,
                        reused_after_ms: b,
                        idle_before_close_ms: c,
                        closed_before_ms: d,
                        silence_ms: e,
                        nat_timeout_ms: f,
                        keepalive_idle_ms: g,
                        probes_sent,
                        probes_answered,
                        bytes_received,
                        segment_bytes,
                        other_end,
                    },
                    advice,
                },
            )
    }

    fn event() -> impl Strategy<Value = Event> {
        (
            any::<u64>(),
            proptest::option::of(endpoints()),
            owner(),
            body(),
        )
            .prop_map(|(ts, conn, owner, body)| Event {
                ts: Timestamp(ts),
                conn,
                owner,
                body,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 5000, ..ProptestConfig::default() })]

        #[test]
        fn same_bytes_as_serde_json(e in event()) {
            let mut fast = Vec::new();
            write_event(&mut fast, &e).unwrap();
            let serde = serde_json::to_vec(&e).unwrap();
            prop_assert_eq!(String::from_utf8(fast).unwrap(), String::from_utf8(serde).unwrap());
        }

        /// A cache that saw other owners, endpoints and diagnoses before (or the same ones,
        /// the second time round) writes the same bytes.
        #[test]
        fn the_cache_of_recent_owners_endpoints_and_diagnoses_changes_nothing(events in proptest::collection::vec(event(), 1..6)) {
            let mut recent = Recent::default();
            for e in events.iter().chain(events.iter().rev()) {
                let mut cached = Vec::new();
                write_event_with(&mut cached, e, &mut recent).unwrap();
                let serde = serde_json::to_vec(e).unwrap();
                prop_assert_eq!(String::from_utf8(cached).unwrap(), String::from_utf8(serde).unwrap());
            }
        }
    }

    #[test]
    fn causes_are_named_as_serde_names_them() {
        for c in Cause::ALL {
            assert_eq!(
                serde_json::to_string(&c).unwrap(),
                format!("\"{}\"", c.as_str())
            );
        }
    }
}
