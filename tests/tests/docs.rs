//! docs/events.md and docs/events.schema.json against each other and against what kaprobe
//! writes: the Example section's lines follow the schema and have the shape (keys, nested
//! keys and JSON types) of the lines a real run of the same scenario writes now, and every
//! field and enumerated value of the schema is named in the doc.
use std::{collections::BTreeSet, net::SocketAddr, time::Duration};

use kaprobe_tests::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn events_md() -> String {
    std::fs::read_to_string(repo_root().join("docs/events.md")).expect("read docs/events.md")
}

fn schema() -> Value {
    let text = std::fs::read_to_string(event_schema()).expect("read docs/events.schema.json");
    serde_json::from_str(&text).expect("the schema is JSON")
}

/// The lines of the ```json block of events.md's `## Example` section.
fn example_lines() -> Vec<String> {
    let doc = events_md();
    let section = doc
        .split("\n## Example\n")
        .nth(1)
        .expect("events.md has an Example section");
    let block = section
        .split("```json\n")
        .nth(1)
        .and_then(|b| b.split("\n```").next())
        .expect("the Example section has a json block");
    let lines: Vec<String> = block.lines().map(str::to_owned).collect();
    assert!(
        lines.len() >= 5,
        "the example shows a few events: {lines:?}"
    );
    lines
}

#[test]
fn the_schema_is_valid_and_the_doc_example_follows_it() {
    check_event_schema();
    validate_event_lines(&example_lines());
}

/// Every property and every enumerated (or constant) string the schema names, collected
/// from the whole schema.
fn schema_names(v: &Value, names: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Object(props)) = m.get("properties") {
                names.extend(props.keys().cloned());
            }
            let values = m
                .get("enum")
                .and_then(Value::as_array)
                .into_iter()
                .flatten();
            names.extend(
                values
                    .chain(m.get("const"))
                    .filter_map(Value::as_str)
                    .map(str::to_owned),
            );
            m.values().for_each(|c| schema_names(c, names));
        }
        Value::Array(a) => a.iter().for_each(|c| schema_names(c, names)),
        _ => {}
    }
}

#[test]
fn every_field_and_value_of_the_schema_is_documented() {
    let doc = events_md();
    let mut names = BTreeSet::new();
    schema_names(&schema(), &mut names);
    // (`name`, or the last part of a dotted name: `features.hz`.)
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !doc.contains(&format!("`{n}`")) && !doc.contains(&format!(".{n}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "named in docs/events.schema.json, not in docs/events.md (as `name`): {missing:?}"
    );
    for kind in schema()["$defs"]["event_name"]["enum"]
        .as_array()
        .expect("event names")
    {
        let kind = kind.as_str().expect("a name");
        assert!(
            doc.lines()
                .any(|l| l.starts_with("### ") && l.contains(&format!("`{kind}`"))),
            "event {kind} has no section in docs/events.md"
        );
    }
}

/// Objects whose keys are data (causes, verdicts, reasons, kinds), not field names: their
/// values are compared, not their keys.
const DATA_KEYED: &[&str] = &[
    "closed_by_cause",
    "by_kind",
    "verdicts",
    "closes_by_cause",
    "by_cause",
    "resets",
];

/// The shape of an event: one `path: type` entry per value, nested objects and array items
/// included (`[]` for an item, `*` for a value of a data-keyed object). `container_id` is
/// left out: it is there only when the test runs in a container.
fn shape(v: &Value, path: &str, data_keyed: bool, out: &mut BTreeSet<String>) {
    let kind = match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(items) => {
            for item in items {
                shape(item, &format!("{path}[]"), false, out);
            }
            "array"
        }
        Value::Object(fields) => {
            for (key, value) in fields {
                if data_keyed {
                    // (A reset's direction holds reasons: data again.)
                    shape(value, &format!("{path}.*"), path.ends_with(".resets"), out);
                } else if key != "container_id" {
                    shape(
                        value,
                        &format!("{path}.{key}"),
                        DATA_KEYED.contains(&key.as_str()),
                        out,
                    );
                }
            }
            "object"
        }
    };
    out.insert(format!("{path}: {kind}"));
}

fn shape_of(v: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    shape(v, "", false, &mut out);
    out
}

/// A connection whose peer goes silent (keepalive probes answered, then unanswered until the
/// timeout; both ends on this host), then a connect() refused: what the Example section of
/// docs/events.md shows. Returns every line the agent wrote, as written.
fn example_scenario() -> Vec<String> {
    let link = Link::new("doc");
    let (ns_a, ns_b) = (link.a.inode(), link.b.inode());
    let agent = Agent::start(&["--netns", &ns_a.to_string(), "--netns", &ns_b.to_string()]);
    let (client, server) = connected(&link, link.b4);
    set_keepalive(&client, KEEPALIVE_1S_3);
    let (sport, server_port) = (port(&client), port(&server));
    agent.wait_for("an answered probe", WAIT, |v| {
        is(v, "keepalive_ack", ns_a, sport)
    });
    link.silence_b();
    assert_eq!(read_until_error(&client), ETIMEDOUT);
    for (what, ns, p) in [("client", ns_a, sport), ("server", ns_b, server_port)] {
        agent.wait_for(&format!("the {what}'s close"), WAIT, |v| {
            is(v, "connection_closed", ns, p)
        });
    }
    link.unsilence_b();
    // Nothing ever listened on this port of the new namespace: no owner for the RST.
    let closed_port = 9001;
    let to = SocketAddr::new(link.b4, closed_port);
    let refused = link.a.run(move || {
        std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5))
            .expect_err("nothing listens")
            .raw_os_error()
    });
    assert_eq!(refused, Some(libc::ECONNREFUSED));
    agent.wait_for("the refused connect's close", WAIT, |v| {
        v["event"] == "connection_closed" && v["netns"] == ns_a && v["dport"] == closed_port
    });
    if kernel_traces_socketless_resets() {
        agent.wait_for("the RST for no socket", WAIT, |v| {
            v["event"] == "reset_sent" && v["netns"] == ns_b && v["sport"] == closed_port
        });
    }
    drop(server);
    agent.stop_with_lines().1
}

#[test]
fn the_doc_example_has_the_shape_of_real_output() {
    if need_root() {
        return;
    }
    let lines = example_scenario();
    // Shown when the test fails, or with --nocapture: lines to paste into the doc.
    eprintln!("{}", lines.join("\n"));
    let real: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("JSON"))
        .collect();
    let mut wrong = Vec::new();
    for line in example_lines() {
        let doc: Value = serde_json::from_str(&line).expect("the example is JSON");
        if doc["event"] == "reset_sent"
            && doc["state"].is_null()
            && !kernel_traces_socketless_resets()
        {
            continue; // an RST for no socket, which this kernel does not trace (6.1)
        }
        let want = shape_of(&doc);
        let same_kind: Vec<BTreeSet<String>> = real
            .iter()
            .filter(|v| v["event"] == doc["event"])
            .map(shape_of)
            .collect();
        if same_kind.contains(&want) {
            continue;
        }
        // The closest real event of that kind, and how they differ.
        let closest = same_kind
            .iter()
            .min_by_key(|s| s.symmetric_difference(&want).count());
        wrong.push(match closest {
            None => format!("{}: no such event in the real run", doc["event"]),
            Some(s) => format!(
                "{}: only in the doc {:?}; only in the real event {:?}",
                doc["event"],
                want.difference(s).collect::<Vec<_>>(),
                s.difference(&want).collect::<Vec<_>>()
            ),
        });
    }
    assert!(
        wrong.is_empty(),
        "the Example of docs/events.md is not what kaprobe writes now:\n{}",
        wrong.join("\n")
    );
}
