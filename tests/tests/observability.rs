//! The observability files in deploy/: the Prometheus alerting rules (promtool's check and
//! the rules' unit tests; loaded into a real Prometheus) and the Grafana dashboard (every
//! query and variable run against a real Prometheus scraping a real agent that saw real
//! keepalive timeouts).
use std::{
    collections::{BTreeSet, HashSet},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use kaprobe_tests::*;
use serde_json::Value;

const RULES: &str = "deploy/prometheus/kaprobe-alerts.yaml";
const RULE_TESTS: &str = "deploy/prometheus/kaprobe-alerts.test.yaml";
const DASHBOARD: &str = "deploy/grafana/kaprobe-dashboard.json";
const WAIT: Duration = Duration::from_secs(30);

/// What every panel and query names as its data source: the dashboard's variable.
fn datasource() -> Value {
    serde_json::json!({"type": "prometheus", "uid": "${datasource}"})
}

/// `promtool ARGS`: (success, stdout and stderr).
fn promtool(args: &[&str]) -> (bool, String) {
    let out = Command::new("promtool").args(args).output().expect(
        "cannot run promtool (Debian package `prometheus`; `cargo xtask setup` installs it)",
    );
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The alert names of the rule file, in order.
fn alert_names() -> Vec<String> {
    read(RULES)
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(|n| n.trim().to_owned())
        .collect()
}

/// A scratch directory holding copies of the rule file and its tests, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("kaprobe-rules-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        for f in [RULES, RULE_TESTS] {
            let name = Path::new(f).file_name().expect("file name");
            std::fs::copy(repo_root().join(f), dir.join(name)).expect("copy");
        }
        Scratch(dir)
    }

    /// Replaces `from` (which must occur) by `to` in the rule file copy; returns its path.
    fn edit_rules(&self, from: &str, to: &str) -> String {
        let path = self.0.join("kaprobe-alerts.yaml");
        let text = std::fs::read_to_string(&path).expect("read copy");
        assert!(text.contains(from), "{from:?} is not in {RULES}");
        std::fs::write(&path, text.replacen(from, to, 1)).expect("write copy");
        path.display().to_string()
    }

    fn tests(&self) -> String {
        self.0
            .join("kaprobe-alerts.test.yaml")
            .display()
            .to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let rules = repo_root().join(RULES).display().to_string();
    let (ok, out) = promtool(&["check", "rules", &rules]);
    assert!(ok, "promtool check rules {RULES}:\n{out}");
    let n = alert_names().len();
    assert!(
        out.contains(&format!("SUCCESS: {n} rules found")),
        "{n} rules: {out}"
    );
    // Relative paths in the test file resolve against its own folder, wherever we run.
    let tests = repo_root().join(RULE_TESTS).display().to_string();
    let (ok, out) = promtool(&["test", "rules", &tests]);
    assert!(ok, "promtool test rules {RULE_TESTS}:\n{out}");
    assert!(out.contains("SUCCESS"), "{out}");
}

#[test]
fn every_alert_is_tested_firing_and_not_firing() {
    let tests = read(RULE_TESTS);
    // Each `- eval_time:` item up to the next: its alert name and whether it expects alerts.
    let mut fires = HashSet::new();
    let mut quiet = HashSet::new();
    for item in tests.split("- eval_time:").skip(1) {
        let name = item
            .lines()
            .find_map(|l| l.trim().strip_prefix("alertname: "))
            .expect("an alertname in each alert_rule_test item")
            .trim()
            .to_owned();
        if item.contains("exp_alerts:") {
            fires.insert(name);
        } else {
            quiet.insert(name);
        }
    }
    let names = alert_names();
    assert!(names.len() >= 12, "the alerts: {names:?}");
    for name in &names {
        assert!(fires.contains(name), "no test of {name} firing");
        assert!(quiet.contains(name), "no test of {name} not firing");
    }
    for name in fires.union(&quiet) {
        assert!(
            names.contains(name),
            "{RULE_TESTS} tests {name}, not in {RULES}"
        );
    }
}

#[test]
fn broken_rules_fail_promtool() {
    // A PromQL syntax error: check names the rule and the error.
    let scratch = Scratch::new("syntax");
    let path = scratch.edit_rules(
        "increase(kaprobe_bad_records_total[10m]) > 0",
        "increase(kaprobe_bad_records_total[10m] > 0",
    );
    let (ok, out) = promtool(&["check", "rules", &path]);
    assert!(!ok, "a syntax error passes promtool check:\n{out}");
    assert!(
        out.contains("KaprobeBadRecords") && out.contains("parse error"),
        "{out}"
    );

    // A malformed `for:`.
    let scratch = Scratch::new("for");
    let path = scratch.edit_rules("for: 5m", "for: five minutes");
    let (ok, out) = promtool(&["check", "rules", &path]);
    assert!(!ok, "a bad duration passes promtool check:\n{out}");
    assert!(out.contains("not a valid duration"), "{out}");

    // A valid rule with another threshold: the unit tests catch it.
    let scratch = Scratch::new("threshold");
    scratch.edit_rules(
        "increase(kaprobe_keepalive_timeouts_total[10m]) >= 10",
        "increase(kaprobe_keepalive_timeouts_total[10m]) >= 100",
    );
    let (ok, out) = promtool(&["test", "rules", &scratch.tests()]);
    assert!(!ok, "the unit tests pass a changed threshold:\n{out}");
    assert!(out.contains("KaprobeKeepaliveTimeoutsSpiking"), "{out}");
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD)).expect("the dashboard is JSON")
}

/// Every panel, those inside collapsed rows included.
fn panels(d: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        all.push(p);
        all.extend(p["panels"].as_array().into_iter().flatten());
    }
    all
}

/// (panel title, expr) of every query of the dashboard.
fn queries(d: &Value) -> Vec<(String, String)> {
    panels(d)
        .into_iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or("?").to_owned();
            p["targets"]
                .as_array()
                .into_iter()
                .flatten()
                .map(move |t| (title.clone(), t["expr"].as_str().unwrap_or("").to_owned()))
        })
        .collect()
}

/// The names of the dashboard's query variables (job, instance, ...), longest first.
fn variables(d: &Value) -> Vec<String> {
    let mut vars: Vec<String> = d["templating"]["list"]
        .as_array()
        .expect("templating.list")
        .iter()
        .filter(|v| v["type"] != "datasource")
        .filter_map(|v| v["name"].as_str().map(str::to_owned))
        .collect();
    vars.sort_by_key(|v| std::cmp::Reverse(v.len()));
    vars
}

/// `expr` as Grafana sends it with every variable at "All" (`.*`) and a 10-minute range.
fn resolve(expr: &str, vars: &[String]) -> String {
    let mut e = expr
        .replace("$__rate_interval", "1m")
        .replace("$__interval", "15s")
        .replace("$__range", "10m");
    for v in vars {
        for form in [
            format!("${{{v}:regex}}"),
            format!("${{{v}}}"),
            format!("${v}"),
        ] {
            e = e.replace(&form, ".*");
        }
    }
    e
}

#[test]
fn dashboard_is_well_formed() {
    let d = dashboard();
    assert!(d["schemaVersion"].as_u64() >= Some(38), "schemaVersion");
    assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty()), "uid");
    let templating = d["templating"]["list"].as_array().expect("templating");
    assert!(
        templating.iter().any(|v| v["type"] == "datasource"
            && v["name"] == "datasource"
            && v["query"] == "prometheus"),
        "a Prometheus data source variable named datasource"
    );
    for v in templating.iter().filter(|v| v["type"] == "query") {
        assert_eq!(v["datasource"], datasource(), "variable {}", v["name"]);
    }

    let mut ids = HashSet::new();
    let mut boxes: Vec<(&str, [u64; 4])> = Vec::new();
    for p in panels(&d) {
        let title = p["title"].as_str().expect("every panel has a title");
        assert!(ids.insert(p["id"].as_u64().expect("id")), "id of {title}");
        let g = &p["gridPos"];
        let b = ["x", "y", "w", "h"].map(|k| g[k].as_u64().expect("gridPos"));
        assert!(b[0] + b[2] <= 24, "{title} is wider than the grid");
        for (other, o) in &boxes {
            let apart = b[0] + b[2] <= o[0]
                || o[0] + o[2] <= b[0]
                || b[1] + b[3] <= o[1]
                || o[1] + o[3] <= b[1];
            assert!(apart, "{title} overlaps {other}");
        }
        boxes.push((title, b));
        if p["type"] == "row" {
            continue;
        }
        assert_eq!(p["datasource"], datasource(), "datasource of {title}");
        assert!(
            p["description"].as_str().is_some_and(|s| !s.is_empty()),
            "{title} says what it shows"
        );
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has queries");
        let mut refs = HashSet::new();
        for t in targets {
            assert_eq!(t["datasource"], datasource(), "a query of {title}");
            assert!(refs.insert(t["refId"].as_str().expect("refId")), "{title}");
        }
    }

    let vars = variables(&d);
    for (title, expr) in queries(&d) {
        assert!(
            expr.contains("kaprobe_") || expr.contains("up{"),
            "{title}: {expr}"
        );
        let resolved = resolve(&expr, &vars);
        assert!(
            !resolved.contains('$'),
            "{title}: unknown variable in {expr}"
        );
    }
}

/// `label_values(SELECTOR, LABEL)` of a Grafana variable query.
fn label_values(query: &str) -> (String, String) {
    let inner = query
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .unwrap_or_else(|| panic!("not label_values(...): {query}"));
    let (selector, label) = inner
        .rsplit_once(',')
        .expect("label_values(selector, label)");
    (selector.trim().to_owned(), label.trim().to_owned())
}

/// Names of the series in an exposition (`name{...} value` and `name value` lines).
fn exposed_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// The `kaprobe_...` metric names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("kaprobe_"))
        .map(str::to_owned)
        .collect()
}

/// The state (`inactive`, `pending`, `firing`) of each alerting rule, by name.
fn alert_states(prom: &Prometheus) -> Vec<(String, String)> {
    prom.rules()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or("").to_owned(),
                r["state"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn state_of(prom: &Prometheus, alert: &str) -> String {
    alert_states(prom)
        .into_iter()
        .find(|(n, _)| n == alert)
        .map(|(_, s)| s)
        .unwrap_or_else(|| panic!("no rule {alert} loaded"))
}

#[test]
fn dashboard_queries_and_alert_rules_work_against_a_real_agent() {
    if need_root() {
        return;
    }
    // At least the floor of KaprobeKeepaliveTimeoutsSpiking and
    // KaprobePeerUnreachableSpiking (10 in 10 minutes), so that both go pending.
    const N: usize = 12;
    let link = Link::new("obs");
    let listener = listen(&link.b, link.b4);
    let port = listener.local_addr().expect("addr").port();
    let rules = [repo_root().join(RULES)];
    let (agent, prom, metrics) = scraped_agent(port, &["--metrics-remote-port"], &rules);

    // N keepalive timeouts against a silenced peer: N peer_unreachable diagnoses.
    let _conns = keepalive_timeouts(&link, listener, N);
    let ns = link.a.inode();
    agent.wait_count("a peer_unreachable close per connection", N, WAIT, |v| {
        v["event"] == "connection_closed"
            && v["netns"] == ns
            && v["diagnosis"]["verdict"] == "peer_unreachable"
    });
    let n = N as f64;
    assert_eq!(
        prom.wait_value("kaprobe_keepalive_timeouts_total", n),
        Some(n)
    );
    let unreachable = "kaprobe_diagnoses_total{verdict=\"peer_unreachable\"}";
    assert_eq!(prom.wait_value(unreachable, n), Some(n));

    // Every dashboard query returns data.
    let d = dashboard();
    let vars = variables(&d);
    let mut failed = Vec::new();
    let mut results = Vec::new();
    for (title, expr) in queries(&d) {
        let q = resolve(&expr, &vars);
        let v = prom.instant(&q);
        let result = v["data"]["result"].as_array().cloned().unwrap_or_default();
        if v["status"] != "success" || result.is_empty() {
            failed.push(format!("panel {title:?}: {q}\n  -> {v}"));
        }
        results.push((title, result));
    }
    assert!(
        failed.is_empty(),
        "queries without data:\n{}",
        failed.join("\n")
    );
    let value = |s: &Value| -> f64 {
        s["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let panel = |title: &str| -> Vec<Value> {
        results
            .iter()
            .filter(|(t, _)| t == title)
            .flat_map(|(_, r)| r.clone())
            .collect()
    };
    assert!(
        panel("Keepalive timeouts").iter().any(|s| value(s) >= n),
        "the timeouts stat counts {N}: {:?}",
        panel("Keepalive timeouts")
    );
    assert!(
        panel("Diagnoses in the time range")
            .iter()
            .any(|s| s["metric"]["verdict"] == "peer_unreachable" && value(s) >= n),
        "{:?}",
        panel("Diagnoses in the time range")
    );
    let port = port.to_string();
    assert!(
        panel("Events by remote port (top 10)")
            .iter()
            .any(|s| s["metric"]["remote_port"] == port.as_str()),
        "the server's port {port}: {:?}",
        panel("Events by remote port (top 10)")
    );
    assert!(
        panel("Agents")
            .iter()
            .any(|s| s["metric"]["version"].is_string() && s["metric"]["kernel"].is_string()),
        "{:?}",
        panel("Agents")
    );

    // The variables list this agent.
    for v in d["templating"]["list"].as_array().expect("templating") {
        let Some(query) = v["definition"].as_str() else {
            continue;
        };
        let (selector, label) = label_values(query);
        let path = format!(
            "/api/v1/label/{label}/values?match[]={}",
            url_encode(&resolve(&selector, &vars))
        );
        let values = prom.data(&path);
        let want = if label == "job" {
            "kaprobe".to_owned()
        } else {
            metrics.to_string()
        };
        assert!(
            values
                .as_array()
                .is_some_and(|a| a.contains(&Value::from(want.as_str()))),
            "variable {}: {query} gives {values}, not {want}",
            v["name"]
        );
    }

    // Every metric the rules and the dashboard use is one the agent exports.
    let (status, body) = http_get(metrics, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200);
    let exposed = exposed_names(&body);
    let rules = prom.wait_until("every rule evaluated", || {
        let rules = prom.rules();
        rules
            .iter()
            .all(|r| r["health"] != "unknown")
            .then_some(rules)
    });
    let used = rules
        .iter()
        .filter_map(|r| r["query"].as_str().map(str::to_owned))
        .chain(queries(&d).into_iter().map(|(_, e)| e));
    for expr in used {
        for name in metric_names(&expr) {
            assert!(
                exposed.contains(&name),
                "{name} (in {expr}) is not exported"
            );
        }
    }

    // The rules load and evaluate: each healthy, with for:, severity and annotations.
    let loaded: Vec<&str> = rules.iter().filter_map(|r| r["name"].as_str()).collect();
    assert_eq!(loaded, alert_names(), "the rules Prometheus loaded");
    for r in &rules {
        let name = &r["name"];
        assert_eq!(r["health"], "ok", "{name}: {r}");
        assert_eq!(r["type"], "alerting", "{name}");
        assert!(r["duration"].as_f64() > Some(0.0), "{name} has a for: {r}");
        assert!(
            ["info", "warning", "critical"]
                .contains(&r["labels"]["severity"].as_str().unwrap_or("")),
            "{name} severity: {r}"
        );
        for a in ["summary", "description"] {
            assert!(
                r["annotations"][a].as_str().is_some_and(|s| s.len() > 10),
                "{name} {a}: {r}"
            );
        }
    }

    // The timeouts make the spike alerts pending (their for: keeps them from firing).
    for alert in [
        "KaprobeKeepaliveTimeoutsSpiking",
        "KaprobePeerUnreachableSpiking",
    ] {
        prom.wait_until(&format!("{alert} pending"), || {
            (state_of(&prom, alert) == "pending").then_some(())
        });
    }
    let states = alert_states(&prom);
    for alert in [
        "KaprobeAgentDown",
        "KaprobeAgentAbsent",
        "KaprobeEventsLost",
        "KaprobeConnectionTableFull",
        "KaprobeBirthsShed",
        "KaprobeBadRecords",
        "KaprobeKeepaliveRaces",
        "KaprobeMiddleboxIdleTimeouts",
    ] {
        assert!(
            states.contains(&(alert.to_owned(), "inactive".to_owned())),
            "{alert} inactive: {states:?}"
        );
    }

    // The agent stops: its scrapes fail and KaprobeAgentDown goes pending.
    agent.stop();
    prom.wait_until("KaprobeAgentDown pending after the agent stopped", || {
        (state_of(&prom, "KaprobeAgentDown") == "pending").then_some(())
    });
}
