//! How an event is serialised: one flat JSON object, `ts` and `event` first, then the
//! connection's endpoints and owner (connection events), then the body's fields. Written as
//! a map by hand (no `flatten`, no `untagged`: serde buffers those through its `Content`
//! tree, field by field).
use serde::{Serialize, Serializer, ser::SerializeMap};

use super::{Body, Event};

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("ts", &self.ts)?;
        m.serialize_entry("event", self.body.name())?;
        if let Some(c) = &self.conn {
            m.serialize_entry("saddr", &c.saddr)?;
            m.serialize_entry("sport", &c.sport)?;
            m.serialize_entry("daddr", &c.daddr)?;
            m.serialize_entry("dport", &c.dport)?;
            m.serialize_entry("family", &c.family)?;
            m.serialize_entry("netns", &c.netns)?;
            // Present (possibly null) exactly on connection events.
            m.serialize_entry("owner", &self.owner)?;
        }
        self.body.entries(&mut m)?;
        m.end()
    }
}

impl Body {
    /// The body's fields, as entries of the event's map.
    fn entries<M: SerializeMap>(&self, m: &mut M) -> Result<(), M::Error> {
        match self {
            Body::AgentStart {
                version,
                schema_version,
                kernel,
                mode,
                hooks,
                features,
                ring_buffer_bytes,
                max_connections,
                birth_budget,
            } => {
                m.serialize_entry("version", version)?;
                m.serialize_entry("schema_version", schema_version)?;
                m.serialize_entry("kernel", kernel)?;
                m.serialize_entry("mode", mode)?;
                m.serialize_entry("hooks", hooks)?;
                m.serialize_entry("features", features)?;
                m.serialize_entry("ring_buffer_bytes", ring_buffer_bytes)?;
                m.serialize_entry("max_connections", max_connections)?;
                m.serialize_entry("birth_budget", birth_budget)
            }
            Body::AgentStop {
                duration_ms,
                totals,
                summary,
            } => {
                m.serialize_entry("duration_ms", duration_ms)?;
                m.serialize_entry("totals", totals)?;
                m.serialize_entry("summary", summary)
            }
            Body::Summary {
                interval_ms,
                summary,
            } => {
                m.serialize_entry("interval_ms", interval_ms)?;
                m.serialize_entry("summary", summary)
            }
            Body::KeepaliveProbe {
                probe,
                max_probes,
                idle_ms,
                interval_ms,
                inferred,
            } => {
                m.serialize_entry("probe", probe)?;
                m.serialize_entry("max_probes", max_probes)?;
                m.serialize_entry("idle_ms", idle_ms)?;
                m.serialize_entry("interval_ms", interval_ms)?;
                inferred_entry(m, *inferred)
            }
            Body::KeepaliveAck { probes_unanswered } => {
                m.serialize_entry("probes_unanswered", probes_unanswered)
            }
            Body::KeepaliveTimeout {
                probes,
                max_probes,
                idle_ms,
                error,
                user_timeout_ms,
                inferred,
            } => {
                m.serialize_entry("probes", probes)?;
                m.serialize_entry("max_probes", max_probes)?;
                m.serialize_entry("idle_ms", idle_ms)?;
                m.serialize_entry("error", error)?;
                m.serialize_entry("user_timeout_ms", user_timeout_ms)?;
                inferred_entry(m, *inferred)
            }
            Body::ResetSent {
                reason,
                state,
                answering,
                diagnosis,
            } => {
                m.serialize_entry("reason", reason)?;
                m.serialize_entry("state", state)?;
                m.serialize_entry("answering", answering)?;
                match diagnosis {
                    Some(d) => m.serialize_entry("diagnosis", d),
                    None => Ok(()),
                }
            }
            Body::ResetReceived {
                during_keepalive,
                state,
            } => {
                m.serialize_entry("during_keepalive", during_keepalive)?;
                m.serialize_entry("state", state)
            }
            Body::FinSent { state } | Body::FinReceived { state } => {
                m.serialize_entry("state", state)
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
                m.serialize_entry("cause", cause)?;
                m.serialize_entry("error", error)?;
                m.serialize_entry("closed_by", closed_by)?;
                m.serialize_entry("time_wait", time_wait)?;
                m.serialize_entry("lifetime_ms", lifetime_ms)?;
                m.serialize_entry("idle_ms", idle_ms)?;
                m.serialize_entry("keepalive_probes", keepalive_probes)?;
                m.serialize_entry("keepalive_acks", keepalive_acks)?;
                m.serialize_entry("last_state", last_state)?;
                m.serialize_entry("bytes_sent", bytes_sent)?;
                m.serialize_entry("bytes_received", bytes_received)?;
                m.serialize_entry("direction", direction)?;
                m.serialize_entry("segments", segments)?;
                m.serialize_entry("segments_sent", segments_sent)?;
                m.serialize_entry("segments_received", segments_received)?;
                m.serialize_entry("diagnosis", diagnosis)?;
                if let Some(c) = socket_cgroup {
                    m.serialize_entry("socket_cgroup", &**c)?;
                }
                Ok(())
            }
            Body::EventsLost {
                count,
                source,
                total,
                records,
            } => {
                m.serialize_entry("count", count)?;
                m.serialize_entry("source", source)?;
                m.serialize_entry("total", total)?;
                match records {
                    Some(r) => m.serialize_entry("records", r),
                    None => Ok(()),
                }
            }
        }
    }
}

/// `inferred` is written only when true.
fn inferred_entry<M: SerializeMap>(m: &mut M, inferred: bool) -> Result<(), M::Error> {
    if inferred {
        m.serialize_entry("inferred", &true)
    } else {
        Ok(())
    }
}
