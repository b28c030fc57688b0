//! `deploy/grafana-dashboard.json` cannot drift from the exporter: every metric name in every
//! panel query (and variable query) must be a series a real `twtrace serve` exposes, scraped
//! while real TCP in private namespaces makes every family present; every query must parse
//! (promtool). Needs root for the serve part, like the serve tests.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use twtrace::experiments::workload::{connect_many, serve, FirstCloser};
use twtrace::host::netns::NetNs;

const BIN: &str = env!("CARGO_BIN_EXE_twtrace");
const SOON: Duration = Duration::from_secs(20);

fn dashboard() -> serde_json::Value {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana-dashboard.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

// ---------------------------------------------------------------------------------------------
// PromQL: the metric names an expression uses.

/// PromQL keywords and operators spelled as words, which are never metric names; the
/// aggregation operators among them because `sum by (x) (…)` puts a modifier before the `(`.
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "group",
    "stddev",
    "stdvar",
    "count",
    "count_values",
    "bottomk",
    "topk",
    "quantile",
    "limitk",
    "limit_ratio",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "atan2",
    "inf",
    "nan",
];

/// The metric names `expr` selects: identifiers that are not a function call (followed by `(`),
/// a keyword, a label name (in `{…}` or in the lists after by/without/on/ignoring/group_*), a
/// string, a duration (`[5m]`, `offset 1h`), a number, or a Grafana variable (`$node`,
/// `$__rate_interval`). Histogram series keep their suffix (`…_bucket`, `…_sum`, `…_count`):
/// those are the names a scrape has.
fn metric_names(expr: &str) -> Vec<String> {
    let b = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut names = Vec::new();
    // After by/without/on/ignoring/group_left/group_right, the next (…) holds label names.
    let mut label_list_next = false;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => {
                // A string: skip to its unescaped end.
                i += 1;
                while i < b.len() && b[i] != c {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b'{' | b'[' => {
                // Label matchers or a range/subquery: nothing in there is a metric name
                // (strings inside may hold `}`: skip them as strings).
                let close = if c == b'{' { b'}' } else { b']' };
                i += 1;
                while i < b.len() && b[i] != close {
                    if b[i] == b'"' || b[i] == b'\'' {
                        let q = b[i];
                        i += 1;
                        while i < b.len() && b[i] != q {
                            i += if b[i] == b'\\' { 2 } else { 1 };
                        }
                    }
                    i += 1;
                }
                i += 1;
            }
            b'(' if label_list_next => {
                label_list_next = false;
                while i < b.len() && b[i] != b')' {
                    i += 1;
                }
                i += 1;
            }
            b'$' => {
                // A Grafana variable: `$name` or `${name}`.
                i += 1;
                if i < b.len() && b[i] == b'{' {
                    while i < b.len() && b[i] != b'}' {
                        i += 1;
                    }
                    i += 1;
                } else {
                    while i < b.len() && ident(b[i]) {
                        i += 1;
                    }
                }
            }
            b'0'..=b'9' | b'.' => {
                // A number or a duration (`1e3`, `0.5`, `5m`, `1h30m`).
                while i < b.len() && (ident(b[i]) || b[i] == b'.') {
                    i += 1;
                }
            }
            c if ident(c) => {
                let start = i;
                while i < b.len() && ident(b[i]) {
                    i += 1;
                }
                let word = &expr[start..i];
                let mut j = i;
                while j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                }
                let call = j < b.len() && b[j] == b'(';
                let lower = word.to_ascii_lowercase();
                if matches!(
                    lower.as_str(),
                    "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
                ) {
                    label_list_next = true;
                } else if !call && !KEYWORDS.contains(&lower.as_str()) {
                    names.push(word.to_string());
                }
            }
            _ => i += 1,
        }
    }
    names
}

/// The label names `expr` uses: in matchers (`{name=~"…"}`) and in the lists after
/// by/without/on/ignoring/group_left/group_right.
fn label_names(expr: &str) -> Vec<String> {
    // String contents out first: `x="a}b,c=d"` must not look like matchers.
    let mut clean = String::new();
    let mut quote = None;
    let mut escaped = false;
    for c in expr.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                    clean.push(c);
                }
            }
            None => {
                if matches!(c, '"' | '\'' | '`') {
                    quote = Some(c);
                }
                clean.push(c);
            }
        }
    }
    let mut out = Vec::new();
    let words = |list: &str, out: &mut Vec<String>| {
        for w in list.split(',') {
            let w = w.trim();
            if !w.is_empty() {
                out.push(w.to_string());
            }
        }
    };
    // Matchers.
    let mut rest = clean.as_str();
    while let Some(open) = rest.find('{') {
        let close = rest[open..].find('}').map_or(rest.len(), |c| open + c);
        for m in rest[open + 1..close].split(',') {
            let name = m.split(['=', '!']).next().unwrap_or("").trim();
            if !name.is_empty() {
                out.push(name.to_string());
            }
        }
        rest = &rest[(close + 1).min(rest.len())..];
    }
    // Label lists: a keyword as a whole word, then `(`.
    let b = clean.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut i = 0;
    while i < b.len() {
        if ident(b[i]) && (i == 0 || !ident(b[i - 1])) {
            let start = i;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            let word = clean[start..i].to_ascii_lowercase();
            if matches!(
                word.as_str(),
                "by" | "without" | "on" | "ignoring" | "group_left" | "group_right"
            ) {
                let after = clean[i..].trim_start();
                if let Some(list) = after.strip_prefix('(') {
                    words(&list[..list.find(')').unwrap_or(list.len())], &mut out);
                }
            }
        } else {
            i += 1;
        }
    }
    out
}

/// The labels a legend names: `{{instance}} ns {{netns}}` → instance, netns.
fn legend_labels(legend: &str) -> Vec<String> {
    legend
        .split("{{")
        .skip(1)
        .filter_map(|p| p.split_once("}}"))
        .map(|(l, _)| l.trim().to_string())
        .collect()
}

/// Every PromQL expression of the dashboard, with where it is: panel targets (rows' nested
/// panels too) and the selector of each `label_values(selector, label)` variable query.
fn queries(d: &serde_json::Value) -> Vec<(String, String)> {
    fn walk(panels: &serde_json::Value, out: &mut Vec<(String, String)>) {
        for p in panels.as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or("?");
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("panel {title:?}: a target without expr: {t}"));
                out.push((format!("panel {title:?} {}", t["refId"]), expr.to_string()));
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    for v in d["templating"]["list"].as_array().into_iter().flatten() {
        let name = v["name"].as_str().unwrap_or("?");
        let q = v["query"]["query"]
            .as_str()
            .or(v["query"].as_str())
            .unwrap_or_else(|| panic!("variable {name}: no query"));
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.rsplit_once(','))
            .map(|(sel, _)| sel.to_string())
            .unwrap_or_else(|| panic!("variable {name}: not label_values(selector, label): {q}"));
        out.push((format!("variable {name}"), inner));
    }
    out
}

/// Every target's legend format.
fn legends(d: &serde_json::Value) -> Vec<String> {
    fn walk(panels: &serde_json::Value, out: &mut Vec<String>) {
        for p in panels.as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(l) = t["legendFormat"].as_str() {
                    out.push(l.to_string());
                }
            }
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&d["panels"], &mut out);
    out
}

/// The expression with Grafana's variables replaced by values Prometheus accepts.
fn concrete(expr: &str) -> String {
    expr.replace("$__rate_interval", "1m")
        .replace("$__interval", "1m")
        .replace("$__range", "1h")
        .replace("$node", ".*")
        .replace("$netns", ".*")
}

#[test]
fn the_tokenizer_finds_metric_names_and_nothing_else() {
    let e = r#"histogram_quantile(0.99, sum by (instance, le) (rate(twtrace_timewait_lifetime_seconds_bucket{netns=~"$netns", x="a}b"}[$__rate_interval])))"#;
    assert_eq!(
        metric_names(e),
        ["twtrace_timewait_lifetime_seconds_bucket"]
    );
    let e = r#"(sum by (instance, netns) (a_metric{instance=~"$node"}) * on (instance, netns) group_left (cgroup, runtime) topk by (netns) (1, other:recorded)) or vector(0) > bool 1e3 unless third offset 5m"#;
    assert_eq!(metric_names(e), ["a_metric", "other:recorded", "third"]);
    assert_eq!(
        metric_names("rate (x_total[5m]) / ignoring(le) y"),
        ["x_total", "y"]
    );
    assert!(metric_names("vector(1) + 0.5 * time()").is_empty());
    assert_eq!(
        label_names(
            r#"sum by (instance, le) (rate(m{netns=~"$netns", x!="a}b,c=d"}[5m])) * on(netns) group_left (cgroup) topk by (netns) (1, i)"#
        ),
        ["netns", "x", "instance", "le", "netns", "cgroup", "netns"]
    );
    assert_eq!(
        legend_labels("{{instance}} ns {{ netns }} → x"),
        ["instance", "netns"]
    );
}

// ---------------------------------------------------------------------------------------------
// The dashboard's shape (no root needed).

#[test]
fn the_dashboard_is_an_importable_grafana_dashboard() {
    let d = dashboard();
    assert!(
        d["schemaVersion"].as_u64().unwrap_or(0) >= 36,
        "schemaVersion"
    );
    assert!(d["uid"].is_string() && d["title"].is_string());
    let inputs = d["__inputs"].as_array().expect("__inputs");
    assert!(
        inputs
            .iter()
            .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"),
        "no DS_PROMETHEUS input"
    );
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(vars, ["node", "netns"]);
    // Every panel and target reads the input's datasource; ids are unique; every non-row panel
    // has a query.
    let mut ids = BTreeSet::new();
    let mut n = 0;
    for p in d["panels"].as_array().unwrap() {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate id {}",
            p["id"]
        );
        if p["type"] == "row" {
            continue;
        }
        n += 1;
        assert_eq!(p["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
        let targets = p["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}: no query", p["title"]);
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", p["title"]);
        }
    }
    assert!(n >= 10, "only {n} panels");
    // What issue 18 asks the dashboard to show.
    let all: String = queries(&d).into_iter().map(|(_, e)| e + "\n").collect();
    for want in [
        "twtrace_timewait_sockets",
        "twtrace_netns_info",
        "twtrace_timewait_entries_total",
        "twtrace_timewait_exits_total",
        "twtrace_timewait_lifetime_seconds_bucket",
        "twtrace_port_pressure_ratio",
        "deriv(twtrace_port_pressure_ratio",
        "twtrace_overflow_drops_total",
        "twtrace_connect_failures_total",
        "twtrace_events_lost_total",
        "twtrace_hook_attached",
    ] {
        assert!(all.contains(want), "no panel uses {want}");
    }
    let heatmaps = d["panels"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["type"] == "heatmap")
        .count();
    assert_eq!(heatmaps, 1, "the lifetime heatmap");
}

/// Every query parses: promtool checks them as recording rules (Grafana variables replaced).
#[test]
fn every_query_parses() {
    let promtool = "/usr/bin/promtool";
    assert!(
        Path::new(promtool).exists(),
        "no promtool: install Debian's `prometheus` package (`cargo xtask setup` does)"
    );
    let q = queries(&dashboard());
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (_, e)) in q.iter().enumerate() {
        let e = serde_json::to_string(&concrete(e)).unwrap();
        rules.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {e}\n"
        ));
    }
    let dir = std::env::temp_dir().join(format!("twtrace-dashboard-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rules.yaml");
    std::fs::write(&file, &rules).unwrap();
    let o = Command::new(promtool)
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        o.status.success(),
        "promtool rejects a dashboard query:\n{}{}\n{rules}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// A real scrape.

/// A child process killed (and reaped) when dropped, with its stderr collected.
struct Proc {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `twtrace serve --listen 127.0.0.1:0 ARGS`, and the address it listens on.
fn start_serve(args: &[String]) -> (Proc, SocketAddr) {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--duration", "120"])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting twtrace serve");
    let stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = channel();
    {
        let log = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if line.contains("listening on http://") {
                    let _ = tx.send(line.clone());
                }
                log.lock().unwrap().push(line);
            }
        });
    }
    let proc = Proc { child, log };
    let line = rx
        .recv_timeout(SOON)
        .unwrap_or_else(|_| panic!("twtrace serve did not start:\n{}", proc.log()));
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    (proc, addr)
}

/// The sample names and the label names of one `/metrics` scrape (Prometheus text format).
fn scrape(addr: SocketAddr) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"),
        "{head}"
    );
    let mut names = BTreeSet::new();
    let mut labels = BTreeSet::new();
    for l in body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name = l.split(['{', ' ']).next().unwrap_or_default();
        names.insert(name.to_string());
        if let Some(set) = l.strip_prefix(name).and_then(|r| r.strip_prefix('{')) {
            // `a="x",b="y"}`: a label name runs up to `=`, its value to the unescaped quote.
            let mut rest = set;
            while let Some((label, after)) = rest.split_once("=\"") {
                labels.insert(label.trim_start_matches(',').to_string());
                let mut end = 0;
                let bytes = after.as_bytes();
                while end < bytes.len() && bytes[end] != b'"' {
                    end += if bytes[end] == b'\\' { 2 } else { 1 };
                }
                rest = &after[(end + 1).min(after.len())..];
                if rest.starts_with('}') {
                    break;
                }
            }
        }
    }
    (names, labels)
}

const SERVICE: SocketAddr = SocketAddr::V4(SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 8080));

/// A namespace whose 4 ports end in TIME_WAIT and a 5th connect() fails (tcp_tw_reuse=0:
/// refusal `reuse_off`), and one where tcp_max_tw_buckets=2 turns closes into overflow drops:
/// with these, every metric family has samples.
#[test]
fn every_metric_a_panel_uses_is_served() {
    let t0 = Instant::now();
    let q = queries(&dashboard());
    let mut used: BTreeSet<String> = BTreeSet::new();
    let mut used_labels: BTreeSet<String> = BTreeSet::new();
    for (where_, e) in &q {
        let names = metric_names(e);
        assert!(!names.is_empty(), "{where_}: no metric in {e}");
        used.extend(names);
        used_labels.extend(label_names(e));
    }
    for l in legends(&dashboard()) {
        used_labels.extend(legend_labels(&l));
    }
    assert!(used.len() >= 12, "{used:?}");
    assert!(used_labels.len() >= 8, "{used_labels:?}");

    let ports = NetNs::new().unwrap();
    ports.sysctl("net.ipv4.tcp_tw_reuse", "0").unwrap();
    ports
        .sysctl("net.ipv4.ip_local_port_range", "40000 40003")
        .unwrap();
    let overflow = NetNs::new().unwrap();
    overflow.sysctl("net.ipv4.tcp_max_tw_buckets", "2").unwrap();
    // Namespaces first: serve maps each to a task and cgroup when it starts.
    let args: Vec<String> = [&ports, &overflow]
        .iter()
        .flat_map(|n| ["--netns".to_string(), n.inode().to_string()])
        .collect();
    let (twtrace, addr) = start_serve(&args);
    {
        let server = serve(&ports, SERVICE, FirstCloser::Client, Duration::ZERO).unwrap();
        connect_many(&ports, server.addr, 4, FirstCloser::Client).unwrap();
        let dst = server.addr;
        let err = ports
            .run(move || TcpStream::connect_timeout(&dst, Duration::from_secs(2)).err())
            .unwrap();
        assert_eq!(
            err.and_then(|e| e.raw_os_error()),
            Some(libc::EADDRNOTAVAIL),
            "the 5th connect() should find no port"
        );
        let server = serve(
            &overflow,
            "127.0.0.1:0".parse().unwrap(),
            FirstCloser::Client,
            Duration::ZERO,
        )
        .unwrap();
        connect_many(&overflow, server.addr, 6, FirstCloser::Client).unwrap();
    }
    // The exposition is rendered once a second: wait until every name is there.
    let deadline = Instant::now() + SOON;
    let (served, served_labels, missing) = loop {
        let (served, served_labels) = scrape(addr);
        let missing: Vec<&String> = used.iter().filter(|n| !served.contains(*n)).collect();
        if missing.is_empty() || Instant::now() >= deadline {
            let missing: Vec<String> = missing.into_iter().cloned().collect();
            break (served, served_labels, missing);
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        missing.is_empty(),
        "dashboard queries use metrics twtrace serve does not expose: {missing:?}\nserved: {served:?}\nserve log:\n{}",
        twtrace.log()
    );
    // Labels: the exporter's, plus the target labels Prometheus adds to every series.
    let missing: Vec<&String> = used_labels
        .iter()
        .filter(|l| !served_labels.contains(*l) && !["instance", "job"].contains(&l.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "dashboard queries or legends use labels twtrace serve does not expose: {missing:?}\nserved: {served_labels:?}"
    );
    // And a name it does not expose is caught (the check can fail).
    let bogus = metric_names("rate(twtrace_timewait_exit_total[5m])");
    assert!(bogus.iter().any(|n| !served.contains(n)), "{bogus:?}");
    drop(twtrace);
    eprintln!(
        "dashboard: {} queries, {} metric names and {} label names, all served; {:.1} s",
        q.len(),
        used.len(),
        used_labels.len(),
        t0.elapsed().as_secs_f64()
    );
}
