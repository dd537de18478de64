//! The files in packaging/ checked against the code they describe. The Grafana
//! dashboard queries only metric families that /metrics serves, and filters,
//! groups and labels them only by labels those families carry. The systemd
//! unit starts the daemon with flags it has. The example config lists every
//! key the daemon accepts, and each one parses. No root needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Parser;
use serde_json::Value;
use tcptrace::cli::{Cli, Command as Subcommand};
use tcptrace::config::{DaemonConfig, FileConfig};
use tcptrace::snapshot::Snapshot;

/// Labels that Prometheus adds to every scraped series.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

fn read_packaging(file: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging")
        .join(file);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

// ---------------------------------------------------------------------------
// What /metrics serves
// ---------------------------------------------------------------------------

/// One listening port with something in every field, so that every family has
/// samples: time in CLOSE_WAIT, handshakes, SYN-ACK retransmits, resets both
/// ways, retransmits, an accept queue, a finding, and lost, undecodable and
/// untracked events. Built from JSON, the way reports carry snapshots, so that
/// fields added later with a serde default need no change here.
fn representative_snapshot() -> Snapshot {
    serde_json::from_value(serde_json::json!({
        "time": "2026-01-01T00:00:00Z",
        "uptime_s": 60.0,
        "events": {
            "total": 20,
            "by_kind": {"state": 20},
            "lost": 1,
            "undecodable": 1,
            "untracked": 1,
            "folded_ports": 1
        },
        "sockets_tracked": 1,
        "ports": [{
            "port": 8080,
            "direction": "in",
            "listening": true,
            "accept_queue": {"len": 2, "max": 128},
            "transitions": 5,
            "states": {
                "CLOSE_WAIT": {
                    "now": 1,
                    "oldest_s": 2.5,
                    "oldest_exact": true,
                    "entered": 3,
                    "exits": {"LAST_ACK": 2},
                    "dwell": {
                        "count": 2, "min_us": 150_000, "p50_us": 200_000, "p90_us": 250_000,
                        "p99_us": 250_000, "max_us": 250_000, "mean_us": 200_000.0,
                        "buckets": [{"le_us": 262_144, "count": 2}]
                    },
                    "dwell_unknown": 0
                }
            },
            "synack_retrans": 4,
            "handshakes": {
                "completed": 9,
                "failed": 1,
                "time": {
                    "count": 9, "min_us": 40, "p50_us": 50, "p90_us": 60, "p99_us": 60,
                    "max_us": 60, "mean_us": 50.0, "buckets": [{"le_us": 64, "count": 9}]
                }
            },
            "resets_sent": [
                {"reason": "TCP_ABORT_ON_CLOSE", "state_before": "ESTABLISHED", "count": 2}
            ],
            "resets_received": {"ESTABLISHED": 1},
            "retransmits": 6,
            "oldest": []
        }],
        "findings": [{
            "rule": "close_wait_leak",
            "port": 8080,
            "direction": "in",
            "severity": "warning",
            "evidence": "1 in CLOSE_WAIT",
            "cause": "the application does not close",
            "action": "find the owner"
        }]
    }))
    .expect("a snapshot")
}

/// What `metrics::encode` writes: each family's TYPE (from its `# TYPE` line,
/// written even when the family has no sample), and the label names its
/// samples carry.
#[derive(Debug)]
struct Exposition {
    types: BTreeMap<String, String>,
    labels: BTreeMap<String, BTreeSet<String>>,
}

impl Exposition {
    fn of(snap: &Snapshot) -> Self {
        let text = tcptrace::metrics::encode(snap);
        let mut types = BTreeMap::new();
        let mut labels: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for line in text.lines() {
            if let Some(decl) = line.strip_prefix("# TYPE ") {
                let (name, kind) = decl.split_once(' ').expect("# TYPE name kind");
                types.insert(name.to_string(), kind.to_string());
            } else if !line.starts_with('#') && !line.is_empty() {
                let end = line.find(['{', ' ']).expect("a sample line has a value");
                let family = Self::family_in(&types, &line[..end])
                    .unwrap_or_else(|| panic!("sample of an undeclared family: {line}"));
                let names = labels.entry(family.to_string()).or_default();
                if let Some(inner) = line[end..]
                    .strip_prefix('{')
                    .and_then(|rest| rest.split_once('}'))
                    .map(|(inner, _)| inner)
                {
                    // Label values here are ports, states, reasons, kinds,
                    // rules and severities: no commas or quotes inside.
                    for pair in inner.split(',') {
                        let (name, _) = pair.split_once('=').expect("label=\"value\"");
                        names.insert(name.to_string());
                    }
                }
            }
        }
        Self { types, labels }
    }

    /// The family a series name belongs to: the family itself, or a
    /// histogram's `_bucket`, `_sum` or `_count` series.
    fn family(&self, series: &str) -> Option<&str> {
        Self::family_in(&self.types, series)
    }

    fn family_in<'a>(types: &'a BTreeMap<String, String>, series: &str) -> Option<&'a str> {
        if let Some((name, kind)) = types.get_key_value(series) {
            return (kind != "histogram").then_some(name.as_str());
        }
        ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
            let (name, kind) = types.get_key_value(series.strip_suffix(suffix)?)?;
            (kind == "histogram").then_some(name.as_str())
        })
    }

    /// Label names a query can use on `family`'s series.
    fn labels_of(&self, family: &str) -> BTreeSet<String> {
        let mut names = self.labels.get(family).cloned().unwrap_or_default();
        names.extend(TARGET_LABELS.map(String::from));
        names
    }
}

#[test]
fn every_family_is_declared_even_without_samples_and_the_snapshot_fills_them_all() {
    let full = Exposition::of(&representative_snapshot());
    let empty = Exposition::of(&Snapshot::default());
    assert_eq!(
        full.types, empty.types,
        "encode declares the same families whatever the snapshot holds"
    );
    let declared: BTreeSet<&String> = full.types.keys().collect();
    let with_samples: BTreeSet<&String> = full.labels.keys().collect();
    assert_eq!(
        declared, with_samples,
        "the representative snapshot gives every family samples, so that their labels are known"
    );
    assert_eq!(
        full.labels["tcptrace_state_dwell_seconds"],
        BTreeSet::from(["direction", "le", "port", "state"].map(String::from))
    );
}

// ---------------------------------------------------------------------------
// PromQL, as far as the dashboard needs it
// ---------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    Sym(String),
}

fn tokens(expr: &str) -> Vec<Token> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '"' {
            let mut text = String::new();
            i += 1;
            while chars[i] != '"' {
                if chars[i] == '\\' {
                    i += 1;
                }
                text.push(chars[i]);
                i += 1;
            }
            out.push(Token::Str(text));
            i += 1;
        } else if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && word(chars[i]) {
                i += 1;
            }
            out.push(Token::Ident(chars[start..i].iter().collect()));
        } else if c == '$' || c.is_ascii_digit() || c == '.' {
            // A Grafana variable or a number: neither names a metric or label.
            i += 1;
            while i < chars.len() && (word(chars[i]) || chars[i] == '.') {
                i += 1;
            }
        } else {
            let two: String = chars[i..chars.len().min(i + 2)].iter().collect();
            let len = if ["=~", "!~", "!=", "=="].contains(&two.as_str()) {
                2
            } else {
                1
            };
            out.push(Token::Sym(chars[i..i + len].iter().collect()));
            i += len;
        }
    }
    out
}

/// The metric selectors of a PromQL expression (series name and the label
/// names it matches on) and the labels of its `by (...)` clauses.
#[derive(Debug, Default)]
struct Query {
    selectors: Vec<(String, Vec<String>)>,
    grouping: BTreeSet<String>,
}

impl Query {
    fn parse(expr: &str) -> Self {
        let toks = tokens(expr);
        let sym = |i: usize, s: &str| matches!(toks.get(i), Some(Token::Sym(t)) if t == s);
        let mut q = Query::default();
        let mut i = 0;
        while i < toks.len() {
            let Token::Ident(name) = &toks[i] else {
                i += 1;
                continue;
            };
            if name == "by" && sym(i + 1, "(") {
                i += 2;
                while !sym(i, ")") {
                    if let Token::Ident(label) = &toks[i] {
                        q.grouping.insert(label.clone());
                    }
                    i += 1;
                }
            } else if sym(i + 1, "{") {
                let mut matched = Vec::new();
                i += 2;
                while !sym(i, "}") {
                    if let (Token::Ident(label), Some(Token::Sym(_)), Some(Token::Str(_))) =
                        (&toks[i], toks.get(i + 1), toks.get(i + 2))
                    {
                        matched.push(label.clone());
                        i += 3;
                    } else {
                        i += 1;
                    }
                }
                q.selectors.push((name.clone(), matched));
            } else if name.starts_with("tcptrace_") {
                q.selectors.push((name.clone(), Vec::new()));
            }
            i += 1;
        }
        q
    }
}

#[test]
fn promql_scanner_finds_selectors_matchers_and_grouping() {
    let q = Query::parse(
        r#"histogram_quantile(0.99, sum by (state, le) (rate(tcptrace_state_dwell_seconds_bucket{port=~"$port",state!="A,B}"}[$__rate_interval]))) / tcptrace_sockets"#,
    );
    assert_eq!(
        q.selectors,
        [
            (
                "tcptrace_state_dwell_seconds_bucket".to_string(),
                vec!["port".to_string(), "state".to_string()]
            ),
            ("tcptrace_sockets".to_string(), vec![])
        ]
    );
    assert_eq!(
        q.grouping,
        BTreeSet::from(["le", "state"].map(String::from))
    );
}

// ---------------------------------------------------------------------------
// The Grafana dashboard
// ---------------------------------------------------------------------------

fn dashboard() -> Value {
    serde_json::from_str(&read_packaging("grafana-dashboard.json")).expect("dashboard is JSON")
}

/// Every panel, rows' nested panels included, rows themselves left out.
fn panels(dash: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        if p["type"] == "row" {
            out.extend(p["panels"].as_array().into_iter().flatten());
        } else {
            out.push(p);
        }
    }
    out
}

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

/// `{{label}}` references of a legend format.
fn legend_labels(format: &str) -> Vec<String> {
    format
        .split("{{")
        .skip(1)
        .map(|rest| {
            rest.split_once("}}")
                .expect("closing }}")
                .0
                .trim()
                .to_string()
        })
        .collect()
}

/// Checks one PromQL expression: every series belongs to a family that
/// encode declares, every matcher and grouping label exists on the family,
/// every legend label survives the aggregation. Returns the families used.
fn check_expr(exp: &Exposition, place: &str, expr: &str, legend: &str) -> BTreeSet<String> {
    let q = Query::parse(expr);
    assert!(!q.selectors.is_empty(), "{place}: no metric in `{expr}`");
    let mut families = BTreeSet::new();
    let mut available = BTreeSet::new();
    for (series, matched) in &q.selectors {
        let family = exp
            .family(series)
            .unwrap_or_else(|| panic!("{place}: `{series}` is not served by /metrics"));
        let labels = exp.labels_of(family);
        for label in matched {
            assert!(
                labels.contains(label),
                "{place}: `{series}` has no label `{label}` (it has {labels:?})"
            );
        }
        available.extend(labels);
        families.insert(family.to_string());
    }
    for label in &q.grouping {
        assert!(
            available.contains(label),
            "{place}: grouping by `{label}`, which none of {families:?} has"
        );
    }
    let output = if q.grouping.is_empty() {
        &available
    } else {
        &q.grouping
    };
    for label in legend_labels(legend) {
        assert!(
            output.contains(&label),
            "{place}: legend uses `{{{{{label}}}}}`, which `{expr}` does not return"
        );
    }
    families
}

#[test]
fn dashboard_queries_only_what_metrics_serves_and_uses_every_family() {
    let exp = Exposition::of(&representative_snapshot());
    let dash = dashboard();
    let mut used = BTreeSet::new();
    for panel in panels(&dash) {
        let title = text(panel, "title");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            let place = format!("panel {title:?} query {}", text(t, "refId"));
            let legend = t["legendFormat"].as_str().unwrap_or("");
            used.extend(check_expr(&exp, &place, text(t, "expr"), legend));
        }
    }
    for var in dash["templating"]["list"].as_array().expect("variables") {
        if var["type"] != "query" {
            continue;
        }
        let name = text(var, "name");
        let query = text(var, "query");
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .unwrap_or_else(|| panic!("variable {name}: expected label_values(..): {query}"));
        let (selector, label) = inner.rsplit_once(',').expect("label_values(metric, label)");
        let families = check_expr(&exp, &format!("variable {name}"), selector, "");
        let family = families.first().expect("one family");
        assert!(
            exp.labels_of(family).contains(label.trim()),
            "variable {name}: `{family}` has no label `{}`",
            label.trim()
        );
    }
    let served: BTreeSet<String> = exp.types.keys().cloned().collect();
    assert_eq!(
        used, served,
        "the dashboard shows every family /metrics serves"
    );
}

#[test]
fn dashboard_takes_its_datasource_from_the_import_input() {
    let dash = dashboard();
    let inputs = dash["__inputs"].as_array().expect("__inputs");
    assert_eq!(inputs.len(), 1);
    assert_eq!(
        (text(&inputs[0], "name"), text(&inputs[0], "pluginId")),
        ("DS_PROMETHEUS", "prometheus")
    );
    let vars = dash["templating"]["list"].as_array().expect("variables");
    let ds = vars
        .iter()
        .find(|v| v["type"] == "datasource")
        .expect("a datasource variable");
    assert_eq!(text(ds, "name"), "datasource");
    assert_eq!(text(ds, "query"), "prometheus");
    assert_eq!(text(&ds["current"], "value"), "${DS_PROMETHEUS}");
    let port = vars.iter().find(|v| v["name"] == "port").expect("$port");
    assert_eq!(
        text(port, "query"),
        r#"label_values(tcptrace_sockets{instance=~"$instance"}, port)"#
    );
    let wanted = serde_json::json!({"type": "prometheus", "uid": "${datasource}"});
    for v in vars.iter().filter(|v| v["type"] == "query") {
        assert_eq!(v["datasource"], wanted, "variable {}", text(v, "name"));
    }
    for panel in panels(&dash) {
        let title = text(panel, "title");
        assert_eq!(panel["datasource"], wanted, "panel {title}");
        for t in panel["targets"].as_array().expect("targets") {
            assert_eq!(t["datasource"], wanted, "panel {title}");
        }
    }
}

#[test]
fn dashboard_has_dwell_heatmaps_and_a_lost_events_stat_that_turns_red() {
    let dash = dashboard();
    let all = panels(&dash);
    let ids: BTreeSet<u64> = dash["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .map(|p| p["id"].as_u64().expect("id"))
        .collect();
    assert_eq!(
        ids.len(),
        dash["panels"].as_array().map_or(0, Vec::len),
        "panel ids are unique"
    );

    let mut heatmap_states = BTreeSet::new();
    for panel in all.iter().filter(|p| p["type"] == "heatmap") {
        assert_eq!(panel["options"]["calculate"], false, "Prometheus buckets");
        for t in panel["targets"].as_array().expect("targets") {
            assert_eq!(text(t, "format"), "heatmap");
            let expr = text(t, "expr");
            let q = Query::parse(expr);
            assert_eq!(q.grouping, BTreeSet::from(["le".to_string()]), "{expr}");
            assert_eq!(
                q.selectors.iter().map(|s| s.0.as_str()).collect::<Vec<_>>(),
                ["tcptrace_state_dwell_seconds_bucket"]
            );
            let state = expr
                .split("state=\"")
                .nth(1)
                .and_then(|rest| rest.split_once('"'))
                .expect("one state per heatmap")
                .0;
            heatmap_states.insert(state.to_string());
        }
    }
    assert_eq!(
        heatmap_states,
        BTreeSet::from(["CLOSE_WAIT", "ESTABLISHED", "FIN_WAIT2", "SYN_SENT"].map(String::from))
    );

    let lost: Vec<&&Value> = all
        .iter()
        .filter(|p| {
            p["type"] == "stat"
                && p["targets"][0]["expr"]
                    .as_str()
                    .is_some_and(|e| e.contains("tcptrace_events_lost_total"))
        })
        .collect();
    assert_eq!(lost.len(), 1, "one stat panel for lost events");
    assert_eq!(
        lost[0]["fieldConfig"]["defaults"]["thresholds"]["steps"],
        serde_json::json!([{"color": "green", "value": null}, {"color": "red", "value": 1}]),
        "green at 0 lost events, red from the first one"
    );
}

// ---------------------------------------------------------------------------
// The systemd unit, logrotate and sysusers
// ---------------------------------------------------------------------------

/// `Key=value` settings of a unit file, in order; a key set twice keeps both.
fn unit_settings() -> Vec<(String, String)> {
    read_packaging("tcptrace.service")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .map(|l| {
            let (k, v) = l
                .split_once('=')
                .unwrap_or_else(|| panic!("not Key=value: {l}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn unit_value(settings: &[(String, String)], key: &str) -> String {
    let values: Vec<&String> = settings
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(values.len(), 1, "{key}= is set once in the unit");
    values[0].clone()
}

#[test]
fn unit_starts_the_daemon_with_flags_it_has() {
    let settings = unit_settings();
    let exec = unit_value(&settings, "ExecStart");
    let argv: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(argv[..2], ["/usr/local/bin/tcptrace", "daemon"]);

    let help = Command::new(env!("CARGO_BIN_EXE_tcptrace"))
        .args(["daemon", "--help"])
        .output()
        .expect("run tcptrace daemon --help");
    assert!(help.status.success(), "{help:?}");
    let help = String::from_utf8(help.stdout).expect("UTF-8 help");
    let listed: BTreeSet<&str> = help
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .collect();
    for flag in argv.iter().filter(|a| a.starts_with('-')) {
        assert!(
            listed.contains(flag),
            "ExecStart uses {flag}, which `tcptrace daemon --help` does not list: {listed:?}"
        );
    }

    let mut args = vec!["tcptrace"];
    args.extend_from_slice(&argv[1..]);
    let Subcommand::Daemon(daemon) = Cli::try_parse_from(args).expect("ExecStart parses").command
    else {
        panic!("ExecStart runs `tcptrace daemon`");
    };
    assert_eq!(
        daemon.config,
        Some(PathBuf::from("/etc/tcptrace/tcptrace.toml"))
    );
    assert_eq!(daemon.user.as_deref(), Some("tcptrace"));
}

#[test]
fn unit_grants_what_loading_and_the_privilege_drop_need() {
    let settings = unit_settings();
    // The drop relies on the kernel clearing capabilities when uid 0 becomes
    // another uid; with a non-root User= and ambient capabilities they stay.
    assert_eq!(unit_value(&settings, "User"), "root");
    assert_eq!(unit_value(&settings, "AmbientCapabilities"), "");
    let caps = unit_value(&settings, "CapabilityBoundingSet");
    let caps: BTreeSet<&str> = caps.split_whitespace().collect();
    assert_eq!(
        caps,
        BTreeSet::from([
            "CAP_BPF",
            "CAP_PERFMON",
            "CAP_SETGID",
            "CAP_SETUID",
            "CAP_SYS_ADMIN",
            "CAP_SYS_PTRACE",
        ])
    );
    assert_eq!(
        unit_value(&settings, "ExecReload"),
        "/bin/kill -HUP $MAINPID"
    );
    assert_eq!(unit_value(&settings, "LimitMEMLOCK"), "infinity");
}

#[test]
fn unit_config_logrotate_and_sysusers_agree_on_paths_user_and_group() {
    let settings = unit_settings();
    let group = unit_value(&settings, "Group");
    let exec = unit_value(&settings, "ExecStart");
    let user = exec
        .split_once("--user ")
        .expect("ExecStart has --user")
        .1
        .split_whitespace()
        .next()
        .expect("a user name");
    assert_eq!(user, group, "the drop's user has the unit's group");
    assert_eq!(
        read_packaging("sysusers.conf")
            .lines()
            .filter(|l| l.starts_with("u "))
            .map(|l| l.split_whitespace().nth(1).expect("u NAME"))
            .collect::<Vec<_>>(),
        [user],
        "sysusers.conf creates the user (and its group)"
    );

    let logs = Path::new("/var/log").join(unit_value(&settings, "LogsDirectory"));
    let config = FileConfig::parse(&read_packaging("tcptrace.toml")).expect("config parses");
    let output = config.output.expect("the example writes to a file");
    assert_eq!(
        output.parent(),
        Some(logs.as_path()),
        "output in LogsDirectory="
    );
    let ext = output
        .extension()
        .and_then(|e| e.to_str())
        .expect("output has an extension");

    let rotate = read_packaging("logrotate");
    let patterns: Vec<&str> = rotate
        .lines()
        .find(|l| l.starts_with('/'))
        .and_then(|l| l.strip_suffix('{'))
        .expect("a `/path/glob ... {` line")
        .split_whitespace()
        .collect();
    assert!(
        patterns.contains(&format!("{}/*.{ext}", logs.display()).as_str()),
        "logrotate covers {}: {patterns:?}",
        output.display()
    );
    let directives: BTreeSet<&str> = rotate.lines().map(str::trim).collect();
    for wanted in [
        format!("su root {group}"),
        format!("create 0660 root {group}"),
    ] {
        assert!(directives.contains(wanted.as_str()), "logrotate: {wanted}");
    }
    assert!(
        directives.contains("systemctl reload tcptrace.service >/dev/null 2>&1 || true"),
        "logrotate makes the daemon reopen its output"
    );
}

// ---------------------------------------------------------------------------
// The example config
// ---------------------------------------------------------------------------

/// Keys whose commented-out line shows an example, not a default: without
/// them the daemon runs as root, in every namespace, with the host's
/// net.ipv4.tcp_synack_retries, and with one ring per CPU (up to 4).
const NO_DEFAULT: [&str; 4] = ["user", "netns", "synack_retries", "rings"];

/// One `key = value` line of the example.
#[derive(Debug)]
struct Setting {
    /// The `[table]` it sits in, if any.
    table: Option<String>,
    key: String,
    /// The line without its `# `, as a TOML document of its own.
    toml: String,
    commented: bool,
}

fn example_settings(text: &str) -> (Vec<Setting>, Vec<String>) {
    let mut table = None;
    let mut tables = Vec::new();
    let mut settings = Vec::new();
    for line in text.lines() {
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            table = Some(name.to_string());
            tables.push(name.to_string());
            continue;
        }
        let (line, commented) = match line.strip_prefix("# ") {
            Some(rest) => (rest, true),
            None => (line, false),
        };
        let Some((key, _)) = line.split_once(" = ") else {
            continue;
        };
        if !key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            continue;
        }
        let toml = match &table {
            Some(t) => format!("[{t}]\n{line}\n"),
            None => format!("{line}\n"),
        };
        settings.push(Setting {
            table: table.clone(),
            key: key.to_string(),
            toml,
            commented,
        });
    }
    (settings, tables)
}

/// The keys `FileConfig` accepts at the top level or in `[table]`, as the
/// error about an unknown key lists them.
fn accepted_keys(table: Option<&str>) -> BTreeSet<String> {
    let header = table.map(|t| format!("[{t}]\n")).unwrap_or_default();
    let err = FileConfig::parse(&format!("{header}no_such_key = 1\n"))
        .expect_err("unknown keys are rejected");
    let list = err
        .split_once("expected one of ")
        .unwrap_or_else(|| panic!("no key list in: {err}"))
        .1;
    list.split(", ")
        .map(|k| k.trim_matches('`').to_string())
        .collect()
}

/// The daemon's settings with `toml` as its config file and no flags.
fn resolved(toml: &str) -> String {
    let file = FileConfig::parse(toml).unwrap_or_else(|e| panic!("`{toml}`: {e}"));
    let Subcommand::Daemon(args) = Cli::try_parse_from(["tcptrace", "daemon"])
        .expect("no flags")
        .command
    else {
        unreachable!("tcptrace daemon");
    };
    let config =
        DaemonConfig::resolve(args, file, None).unwrap_or_else(|e| panic!("`{toml}`: {e}"));
    format!("{config:?}")
}

#[test]
fn example_config_parses_and_sets_output_and_format() {
    let config = FileConfig::parse(&read_packaging("tcptrace.toml"))
        .unwrap_or_else(|e| panic!("tcptrace.toml: {e}"));
    assert_eq!(
        config.output,
        Some(PathBuf::from("/var/log/tcptrace/reports.jsonl"))
    );
    assert_eq!(config.format, Some(tcptrace::report::Format::Json));
}

#[test]
fn example_config_lists_every_key_once() {
    let (settings, tables) = example_settings(&read_packaging("tcptrace.toml"));
    for table in [None]
        .into_iter()
        .chain(tables.iter().map(|t| Some(t.as_str())))
    {
        let mut listed: Vec<String> = settings
            .iter()
            .filter(|s| s.table.as_deref() == table)
            .map(|s| s.key.clone())
            .collect();
        if table.is_none() {
            listed.extend(tables.iter().cloned());
        }
        let unique: BTreeSet<String> = listed.iter().cloned().collect();
        assert_eq!(
            unique.len(),
            listed.len(),
            "a key twice in {table:?}: {listed:?}"
        );
        assert_eq!(
            unique,
            accepted_keys(table),
            "tcptrace.toml lists every key the daemon accepts in {table:?}"
        );
    }
}

#[test]
fn example_config_comments_out_each_default_with_its_value() {
    let (settings, _) = example_settings(&read_packaging("tcptrace.toml"));
    let defaults = resolved("");
    for s in settings.iter().filter(|s| s.commented) {
        let with_it = resolved(&s.toml);
        if NO_DEFAULT.contains(&s.key.as_str()) {
            assert_ne!(with_it, defaults, "`{}` is an example value", s.toml.trim());
        } else {
            assert_eq!(with_it, defaults, "`{}` is the default", s.toml.trim());
        }
    }
    let set: Vec<&str> = settings
        .iter()
        .filter(|s| !s.commented)
        .map(|s| s.key.as_str())
        .collect();
    assert_eq!(set, ["output", "format"], "only these are set");
}
