//! Scripted etcdctl sessions and the normalisation that makes two servers' outputs comparable.
//!
//! A session is a list of [`Step`]s run in order against one fresh server. Each step's stdout,
//! stderr (minus the client library's JSON log lines) and exit code are normalised into an
//! [`Observed`] value: identifiers that legitimately differ between servers (cluster/member ids,
//! raft terms, lease ids, URLs, timings) become placeholders, and remaining lease TTLs are kept
//! aside to be compared with a ±1 s tolerance.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Map, Value};

use crate::harness::{Etcdctl, HarnessError};

/// How a step's output is normalised beyond the generic rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Generic rules only.
    Generic,
    /// `member list`: member ids and URLs become placeholders.
    MemberList,
    /// `endpoint status -w json`: keep only revision, leadership, version presence and raftIndex>0.
    EndpointStatus,
    /// `endpoint health`: drop timings.
    EndpointHealth,
}

/// Where to record a lease id produced by a step, for later steps' `{NAME}` substitutions.
#[derive(Debug, Clone)]
pub enum Capture {
    /// Nothing to capture.
    None,
    /// Take field `ID` of a `lease grant -w json` answer.
    LeaseJson(&'static str),
    /// Take the second word of a plain `lease grant` answer (`lease <hex> granted ...`).
    LeaseText(&'static str),
}

/// What a step does.
#[derive(Debug, Clone)]
pub enum Action {
    /// Run etcdctl with these args (after `{NAME}` substitution) and optional stdin.
    Run {
        /// Arguments.
        args: Vec<String>,
        /// Stdin (for `txn`).
        stdin: Option<String>,
    },
    /// Spawn a command expected to end by itself (e.g. a watch the server cancels); killed after 30 s.
    RunToExit {
        /// Arguments.
        args: Vec<String>,
    },
    /// Spawn etcdctl (a `watch`), read exactly `lines` stdout lines, make sure no more arrive, kill it.
    Watch {
        /// Arguments.
        args: Vec<String>,
        /// Number of stdout lines the watch must print.
        lines: usize,
    },
}

/// One operation of a scripted session.
#[derive(Debug, Clone)]
pub struct Step {
    /// What to run.
    pub action: Action,
    /// Output-specific normalisation.
    pub shape: Shape,
    /// Lease id to remember.
    pub capture: Capture,
}

impl Step {
    /// A plain etcdctl command given as whitespace-separated words (no quoting; use [`Step::args`] for that).
    pub fn cmd(words: &str) -> Step {
        Step::args(words.split_whitespace().map(String::from).collect())
    }

    /// A command with explicit arguments (e.g. an empty-string key).
    pub fn args(args: Vec<String>) -> Step {
        Step {
            action: Action::Run { args, stdin: None },
            shape: Shape::Generic,
            capture: Capture::None,
        }
    }

    /// A `txn` fed `stdin` (the non-interactive format: compares, blank, success, blank, failure, blank).
    pub fn txn(extra_flags: &str, stdin: &str) -> Step {
        let mut args = vec!["txn".to_string()];
        args.extend(extra_flags.split_whitespace().map(String::from));
        Step {
            action: Action::Run {
                args,
                stdin: Some(stdin.to_string()),
            },
            shape: Shape::Generic,
            capture: Capture::None,
        }
    }

    /// A watch that must print exactly `lines` lines.
    pub fn watch(words: &str, lines: usize) -> Step {
        Step {
            action: Action::Watch {
                args: words.split_whitespace().map(String::from).collect(),
                lines,
            },
            shape: Shape::Generic,
            capture: Capture::None,
        }
    }

    /// A command (e.g. a watch the server must cancel) that has to end by itself.
    pub fn to_exit(words: &str) -> Step {
        Step {
            action: Action::RunToExit {
                args: words.split_whitespace().map(String::from).collect(),
            },
            shape: Shape::Generic,
            capture: Capture::None,
        }
    }

    /// Sets the output shape.
    pub fn shape(mut self, shape: Shape) -> Step {
        self.shape = shape;
        self
    }

    /// Sets what to capture.
    pub fn capture(mut self, capture: Capture) -> Step {
        self.capture = capture;
        self
    }

    /// The command line as written in the script, for reports.
    pub fn describe(&self) -> String {
        match &self.action {
            Action::Run { args, stdin } => {
                let mut s = format!("etcdctl {}", shell_words(args));
                if let Some(input) = stdin {
                    let _ = write!(s, " <<< {input:?}");
                }
                s
            }
            Action::RunToExit { args } => {
                format!("etcdctl {} (must exit by itself)", shell_words(args))
            }
            Action::Watch { args, lines } => {
                format!("etcdctl {} (read {lines} lines)", shell_words(args))
            }
        }
    }
}

fn shell_words(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if a.is_empty() || a.contains(char::is_whitespace) {
                format!("{a:?}")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The normalised result of one step.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// Exit code (-1 when killed by a signal, as for watches; -2 when a must-exit command had to be killed).
    pub exit_code: i32,
    /// Normalised stdout.
    pub stdout: String,
    /// Normalised stderr: every line except the client library's `{"level":...}` logs.
    pub stderr: String,
    /// Remaining-TTL numbers lifted out of the output, compared with ±1 tolerance.
    pub ttls: Vec<i64>,
    /// Raw stdout, for reports.
    pub raw_stdout: String,
}

impl Observed {
    /// Describes how `self` (reference) and `other` differ, or None if they match.
    pub fn diff(&self, other: &Observed) -> Option<String> {
        let mut out = String::new();
        if self.exit_code != other.exit_code {
            let _ = writeln!(
                out,
                "  exit code: {} vs {}",
                self.exit_code, other.exit_code
            );
        }
        if self.stdout != other.stdout {
            let fields = field_diffs(&self.stdout, &other.stdout);
            if !fields.is_empty() {
                let _ = writeln!(out, "  fields (etcd vs tugboat): {}", fields.join("; "));
            }
            let _ = writeln!(
                out,
                "  stdout differs:\n    etcd:    {}\n    tugboat: {}",
                self.stdout.replace('\n', "\n             "),
                other.stdout.replace('\n', "\n             ")
            );
        }
        if self.stderr != other.stderr {
            let _ = writeln!(
                out,
                "  stderr differs:\n    etcd:    {}\n    tugboat: {}",
                self.stderr.replace('\n', "\n             "),
                other.stderr.replace('\n', "\n             ")
            );
        }
        let ttl_ok = self.ttls.len() == other.ttls.len()
            && self
                .ttls
                .iter()
                .zip(&other.ttls)
                .all(|(a, b)| (a - b).abs() <= 1);
        if !ttl_ok {
            let _ = writeln!(
                out,
                "  remaining TTLs differ by more than 1 s: {:?} vs {:?}",
                self.ttls, other.ttls
            );
        }
        if out.is_empty() {
            None
        } else {
            Some(out)
        }
    }
}

/// Lists `path: a vs b` for every JSON leaf that differs, when both outputs are JSON documents.
fn field_diffs(a: &str, b: &str) -> Vec<String> {
    let (Some(va), Some(vb)) = (parse_json_stream(a), parse_json_stream(b)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if va.len() != vb.len() {
        out.push(format!("{} vs {} JSON documents", va.len(), vb.len()));
    }
    for (i, (x, y)) in va.iter().zip(&vb).enumerate() {
        let root = if va.len() > 1 {
            format!("[doc {i}]")
        } else {
            String::new()
        };
        diff_values(&root, x, y, &mut out);
    }
    out
}

fn diff_values(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    match (a, b) {
        (Value::Object(ma), Value::Object(mb)) => {
            for (k, va) in ma {
                let p = format!("{path}.{k}");
                match mb.get(k) {
                    Some(vb) => diff_values(&p, va, vb, out),
                    None => out.push(format!("{p}: {va} vs <absent>")),
                }
            }
            for (k, vb) in mb {
                if !ma.contains_key(k) {
                    out.push(format!("{path}.{k}: <absent> vs {vb}"));
                }
            }
        }
        (Value::Array(xa), Value::Array(xb)) => {
            if xa.len() != xb.len() {
                out.push(format!("{path}: {} vs {} items", xa.len(), xb.len()));
            }
            for (i, (va, vb)) in xa.iter().zip(xb).enumerate() {
                diff_values(&format!("{path}[{i}]"), va, vb, out);
            }
        }
        _ if a != b => out.push(format!("{path}: {a} vs {b}")),
        _ => {}
    }
}

/// Per-run state: captured lease ids and the placeholder maps.
#[derive(Debug, Default)]
pub struct SessionState {
    vars: HashMap<String, String>,
    lease_ids: HashMap<i64, usize>,
    endpoint: String,
}

impl SessionState {
    /// Fresh state for a session against `endpoint` (used to hide the endpoint URL in outputs).
    pub fn new(endpoint: &str) -> Self {
        SessionState {
            endpoint: endpoint.to_string(),
            ..Default::default()
        }
    }

    fn lease_placeholder(&mut self, id: i64) -> String {
        let next = self.lease_ids.len() + 1;
        let n = *self.lease_ids.entry(id).or_insert(next);
        format!("<lease#{n}>")
    }

    fn substitute(&self, arg: &str) -> String {
        let mut s = arg.to_string();
        for (k, v) in &self.vars {
            s = s.replace(&format!("{{{k}}}"), v);
        }
        s
    }
}

/// Runs `steps` in order with `ctl`, returning one [`Observed`] per step.
pub fn run_session(ctl: &Etcdctl, steps: &[Step]) -> Result<Vec<Observed>, HarnessError> {
    let mut state = SessionState::new(ctl.endpoint());
    let mut results = Vec::with_capacity(steps.len());
    for step in steps {
        let (exit_code, stdout, stderr) = match &step.action {
            Action::Run { args, stdin } => {
                let args: Vec<String> = args.iter().map(|a| state.substitute(a)).collect();
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                let out = ctl.run(&refs, stdin.as_deref())?;
                (out.status.code().unwrap_or(-1), out.stdout, out.stderr)
            }
            Action::RunToExit { args } => {
                let args: Vec<String> = args.iter().map(|a| state.substitute(a)).collect();
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                let mut child = ctl.spawn(&refs)?;
                let code = match child.wait_exit(Duration::from_secs(30))? {
                    Some(status) => status.code().unwrap_or(-1),
                    None => -2,
                };
                let mut text = child.received().join("\n");
                if !text.is_empty() {
                    text.push('\n');
                }
                (code, text, child.stderr())
            }
            Action::Watch { args, lines } => {
                let args: Vec<String> = args.iter().map(|a| state.substitute(a)).collect();
                let refs: Vec<&str> = args.iter().map(String::as_str).collect();
                let mut child = ctl.spawn(&refs)?;
                // A missing event is a finding to report with the others, not a reason to stop.
                let mut got = match child.wait_lines(*lines, Duration::from_secs(30)) {
                    Ok(got) => got,
                    Err(_) => {
                        let mut partial = child.received().to_vec();
                        partial.push(format!(
                            "<watch printed {} of {lines} expected lines within 30 s>",
                            child.received().len()
                        ));
                        partial
                    }
                };
                // Extra events would show up right behind the expected ones; give them a moment.
                if got.len() == *lines {
                    got = child.drain_for(Duration::from_millis(700));
                }
                child.kill();
                let mut text = got.join("\n");
                text.push('\n');
                (-1, text, child.stderr())
            }
        };
        capture(&step.capture, &stdout, &mut state);
        results.push(normalize(
            step.shape, exit_code, &stdout, &stderr, &mut state,
        ));
    }
    Ok(results)
}

fn capture(cap: &Capture, stdout: &str, state: &mut SessionState) {
    match cap {
        Capture::None => {}
        Capture::LeaseJson(name) => {
            if let Ok(v) = serde_json::from_str::<Value>(stdout.trim()) {
                if let Some(id) = v.get("ID").and_then(Value::as_i64) {
                    state.vars.insert(name.to_string(), format!("{id:x}"));
                }
            }
        }
        Capture::LeaseText(name) => {
            if let Some(hex) = stdout.split_whitespace().nth(1) {
                state.vars.insert(name.to_string(), hex.to_string());
            }
        }
    }
}

/// Normalises one step's raw output.
pub fn normalize(
    shape: Shape,
    exit_code: i32,
    stdout: &str,
    stderr: &str,
    state: &mut SessionState,
) -> Observed {
    let mut ttls = Vec::new();
    let stdout_norm = match parse_json_stream(stdout) {
        Some(values) => values
            .into_iter()
            .map(|v| {
                let v = normalize_json(shape, v, state, &mut ttls);
                serde_json::to_string(&v).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n"),
        None => normalize_text(shape, stdout, state, &mut ttls),
    };
    let stderr_norm = stderr
        .lines()
        .filter(|l| !l.trim_start().starts_with("{\"level\""))
        .map(|l| normalize_text(shape, l, state, &mut ttls))
        .collect::<Vec<_>>()
        .join("\n");
    Observed {
        exit_code,
        stdout: stdout_norm,
        stderr: stderr_norm,
        ttls,
        raw_stdout: stdout.to_string(),
    }
}

/// Parses a concatenation of JSON documents (etcdctl sometimes omits newlines); None if it is not JSON.
pub fn parse_json_stream(text: &str) -> Option<Vec<Value>> {
    let trimmed = text.trim();
    if !(trimmed.starts_with('{') || trimmed.starts_with('[')) {
        return None;
    }
    let mut out = Vec::new();
    for v in serde_json::Deserializer::from_str(trimmed).into_iter::<Value>() {
        out.push(v.ok()?);
    }
    Some(out)
}

const DROPPED_KEYS: [&str; 3] = ["cluster_id", "member_id", "raft_term"];

fn normalize_json(shape: Shape, v: Value, state: &mut SessionState, ttls: &mut Vec<i64>) -> Value {
    match shape {
        Shape::EndpointStatus => normalize_endpoint_status(v),
        Shape::MemberList => normalize_member_list(v),
        Shape::EndpointHealth | Shape::Generic => walk_json(v, state, ttls, None),
    }
}

fn walk_json(v: Value, state: &mut SessionState, ttls: &mut Vec<i64>, key: Option<&str>) -> Value {
    match v {
        Value::Object(map) => {
            let mut out = Map::new();
            for (k, child) in map {
                if DROPPED_KEYS.contains(&k.as_str()) || k == "took" {
                    continue;
                }
                let nv = walk_json(child, state, ttls, Some(&k));
                out.insert(k, nv);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(
            items
                .into_iter()
                .map(|i| walk_json(i, state, ttls, key))
                .collect(),
        ),
        Value::Number(n) => match (key, n.as_i64()) {
            (Some("ID") | Some("id") | Some("lease"), Some(id)) if id != 0 => {
                Value::String(state.lease_placeholder(id))
            }
            (Some("ttl"), Some(t)) => {
                ttls.push(t);
                Value::String("<ttl>".into())
            }
            _ => Value::Number(n),
        },
        Value::String(s) if key == Some("endpoint") || key == Some("Endpoint") => {
            Value::String(hide_urls(&s, &state.endpoint))
        }
        other => other,
    }
}

fn normalize_endpoint_status(v: Value) -> Value {
    let mut out = Vec::new();
    if let Value::Array(items) = v {
        for item in items {
            let status = item.get("Status").cloned().unwrap_or(Value::Null);
            let header = status.get("header").cloned().unwrap_or(Value::Null);
            let member = header.get("member_id").and_then(Value::as_u64);
            let leader = status.get("leader").and_then(Value::as_u64);
            let mut m = Map::new();
            m.insert(
                "header.revision".into(),
                header.get("revision").cloned().unwrap_or(Value::Null),
            );
            m.insert(
                "is_leader".into(),
                Value::Bool(member.is_some() && member == leader),
            );
            m.insert(
                "version_set".into(),
                Value::Bool(
                    status
                        .get("version")
                        .and_then(Value::as_str)
                        .is_some_and(|s| !s.is_empty()),
                ),
            );
            m.insert(
                "raftIndex>0".into(),
                Value::Bool(
                    status
                        .get("raftIndex")
                        .and_then(Value::as_u64)
                        .is_some_and(|i| i > 0),
                ),
            );
            out.push(Value::Object(m));
        }
    }
    Value::Array(out)
}

fn normalize_member_list(v: Value) -> Value {
    let header_member = v
        .get("header")
        .and_then(|h| h.get("member_id"))
        .and_then(Value::as_u64);
    let mut out = Map::new();
    let mut members = Vec::new();
    if let Some(Value::Array(items)) = v.get("members") {
        for m in items {
            let mut nm = Map::new();
            let id = m.get("ID").and_then(Value::as_u64);
            nm.insert(
                "ID".into(),
                Value::String(if id.is_some() && id == header_member {
                    "<self>".into()
                } else {
                    "<other>".into()
                }),
            );
            for key in ["name", "isLearner"] {
                if let Some(x) = m.get(key) {
                    nm.insert(key.into(), x.clone());
                }
            }
            for key in ["peerURLs", "clientURLs"] {
                if let Some(Value::Array(urls)) = m.get(key) {
                    let hidden: Vec<Value> = urls
                        .iter()
                        .map(|u| Value::String(hide_urls(u.as_str().unwrap_or(""), "")))
                        .collect();
                    nm.insert(key.into(), Value::Array(hidden));
                }
            }
            members.push(Value::Object(nm));
        }
    }
    out.insert("members".into(), Value::Array(members));
    Value::Object(out)
}

/// Replaces `endpoint` with `<endpoint>` and any other `http(s)://host:port` with `<url>`.
pub fn hide_urls(text: &str, endpoint: &str) -> String {
    let text = if endpoint.is_empty() {
        text.to_string()
    } else {
        text.replace(endpoint, "<endpoint>")
    };
    let mut out = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(pos) = rest.find("://") {
        let scheme_start = rest[..pos]
            .rfind(|c: char| !c.is_ascii_alphabetic())
            .map_or(0, |i| i + 1);
        let after = &rest[pos + 3..];
        let end = after
            .find(|c: char| {
                !(c.is_ascii_alphanumeric()
                    || c == '.'
                    || c == ':'
                    || c == '-'
                    || c == '['
                    || c == ']')
            })
            .unwrap_or(after.len());
        out.push_str(&rest[..scheme_start]);
        out.push_str("<url>");
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

fn normalize_text(
    shape: Shape,
    text: &str,
    state: &mut SessionState,
    ttls: &mut Vec<i64>,
) -> String {
    // Members may advertise another served URL (e.g. the TLS one): the conformance test checks which.
    let endpoint = if shape == Shape::MemberList {
        ""
    } else {
        state.endpoint.as_str()
    };
    let mut t = hide_urls(text, endpoint);
    if shape == Shape::EndpointHealth {
        if let Some(pos) = t.find(": took = ") {
            let end = t[pos..].find('\n').map_or(t.len(), |e| pos + e);
            t.replace_range(pos..end, ": took = <took>");
        }
    }
    // remaining(49s) in `lease timetolive`.
    let mut out = String::new();
    let mut rest = t.as_str();
    while let Some(pos) = rest.find("remaining(") {
        let start = pos + "remaining(".len();
        out.push_str(&rest[..start]);
        let digits_end = rest[start..]
            .find(|c: char| !(c.is_ascii_digit() || c == '-'))
            .map_or(rest.len(), |e| start + e);
        if let Ok(n) = rest[start..digits_end].parse::<i64>() {
            ttls.push(n);
            out.push_str("<ttl>");
        } else {
            out.push_str(&rest[start..digits_end]);
        }
        rest = &rest[digits_end..];
    }
    out.push_str(rest);
    let mut t = out;
    if shape == Shape::MemberList {
        // `member list` prints the id first with %x, so it has no fixed width.
        t = t
            .lines()
            .map(|line| match line.split_once(", ") {
                Some((id, rest)) if !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()) => {
                    format!("<member>, {rest}")
                }
                _ => line.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
    }
    // 16-hex-digit tokens are lease ids (member ids only appear in MemberList shape).
    let mut result = String::with_capacity(t.len());
    let bytes = t.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let is_word_start = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
        if is_word_start && i + 16 <= bytes.len() {
            let cand = &t[i..i + 16];
            let boundary = i + 16 == bytes.len() || !bytes[i + 16].is_ascii_alphanumeric();
            if boundary && cand.bytes().all(|b| b.is_ascii_hexdigit()) {
                if let Ok(id) = u64::from_str_radix(cand, 16) {
                    let ph = if shape == Shape::MemberList {
                        "<member>".to_string()
                    } else {
                        state.lease_placeholder(id as i64)
                    };
                    result.push_str(&ph);
                    i += 16;
                    continue;
                }
            }
        }
        // Copy one UTF-8 character.
        let ch_len = t[i..].chars().next().map_or(1, char::len_utf8);
        result.push_str(&t[i..i + ch_len]);
        i += ch_len;
    }
    result
}

/// Compares two runs of the same script; returns a readable report of every differing step.
pub fn compare_runs(
    steps: &[Step],
    reference: &[Observed],
    candidate: &[Observed],
) -> Option<String> {
    let mut report = String::new();
    let mut differing = 0usize;
    for (i, step) in steps.iter().enumerate() {
        let (Some(a), Some(b)) = (reference.get(i), candidate.get(i)) else {
            let _ = writeln!(report, "op #{}: missing result", i + 1);
            continue;
        };
        if let Some(d) = a.diff(b) {
            differing += 1;
            let _ = writeln!(report, "op #{} `{}`:\n{d}", i + 1, step.describe());
        }
    }
    if report.is_empty() {
        None
    } else {
        Some(format!(
            "{differing} of {} operations differ (full transcripts are printed above):\n{report}",
            steps.len()
        ))
    }
}

/// Renders one run as a readable transcript (printed by tests; shown by cargo on failure or with --nocapture).
pub fn transcript(steps: &[Step], results: &[Observed]) -> String {
    let mut out = String::new();
    for (i, (step, r)) in steps.iter().zip(results).enumerate() {
        let _ = writeln!(
            out,
            "#{} {} -> exit {}",
            i + 1,
            step.describe(),
            r.exit_code
        );
        if !r.stdout.trim().is_empty() {
            let _ = writeln!(
                out,
                "  out: {}",
                r.stdout.trim_end().replace('\n', "\n       ")
            );
        }
        if !r.stderr.trim().is_empty() {
            let _ = writeln!(
                out,
                "  err: {}",
                r.stderr.trim_end().replace('\n', "\n       ")
            );
        }
        if !r.ttls.is_empty() {
            let _ = writeln!(out, "  ttls: {:?}", r.ttls);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_headers_and_lease_ids_are_normalized() {
        let mut st = SessionState::new("http://127.0.0.1:1234");
        let o = normalize(
            Shape::Generic,
            0,
            r#"{"cluster_id":1,"member_id":2,"revision":5,"raft_term":2,"ID":77,"TTL":100,"Error":""}"#,
            "",
            &mut st,
        );
        assert_eq!(
            o.stdout,
            r#"{"Error":"","ID":"<lease#1>","TTL":100,"revision":5}"#
        );
        let o = normalize(
            Shape::Generic,
            0,
            "lease 000000000000004d granted with TTL(100s), remaining(99s), attached keys([k])\n",
            "",
            &mut st,
        );
        assert_eq!(
            o.stdout,
            "lease <lease#1> granted with TTL(100s), remaining(<ttl>s), attached keys([k])\n"
        );
        assert_eq!(o.ttls, vec![99]);
    }

    #[test]
    fn stderr_drops_client_logs_and_keeps_errors() {
        let mut st = SessionState::new("");
        let o = normalize(
            Shape::Generic,
            1,
            "",
            "{\"level\":\"warn\",\"msg\":\"x\"}\nError: etcdserver: key not found\n",
            &mut st,
        );
        assert_eq!(o.stderr, "Error: etcdserver: key not found");
    }

    #[test]
    fn ttl_tolerance_is_one_second() {
        let mk = |t: i64| Observed {
            exit_code: 0,
            stdout: String::new(),
            stderr: String::new(),
            ttls: vec![t],
            raw_stdout: String::new(),
        };
        assert!(mk(10).diff(&mk(9)).is_none());
        assert!(mk(10).diff(&mk(8)).is_some());
    }

    #[test]
    fn compare_runs_reports_the_differing_op() {
        let steps = vec![Step::cmd("put a 1"), Step::cmd("get a")];
        let mut st = SessionState::new("");
        let a = vec![
            normalize(Shape::Generic, 0, "OK\n", "", &mut st),
            normalize(Shape::Generic, 0, "a\n1\n", "", &mut st),
        ];
        let mut b = a.clone();
        assert!(compare_runs(&steps, &a, &b).is_none());
        b[1] = normalize(Shape::Generic, 0, "a\n2\n", "", &mut st);
        let report = compare_runs(&steps, &a, &b).unwrap_or_default();
        assert!(report.starts_with("1 of 2 operations differ"), "{report}");
        assert!(report.contains("op #2 `etcdctl get a`"), "{report}");
    }

    #[test]
    fn field_diffs_name_the_differing_leaves() {
        let d = field_diffs(
            r#"{"header":{"revision":2},"kvs":[{"v":1}]}"#,
            r#"{"header":{"revision":1},"kvs":[{"v":1},{"v":2}],"more":true}"#,
        );
        assert_eq!(
            d,
            vec![
                ".header.revision: 2 vs 1",
                ".kvs: 1 vs 2 items",
                ".more: <absent> vs true"
            ]
        );
    }

    #[test]
    fn urls_are_hidden() {
        assert_eq!(
            hide_urls(
                "http://127.0.0.1:5 is healthy, https://127.0.0.1:9",
                "http://127.0.0.1:5"
            ),
            "<endpoint> is healthy, <url>"
        );
    }

    #[test]
    fn concatenated_json_documents_parse() {
        let v = parse_json_stream("{\"a\":1}{\"b\":2}\n").map(|v| v.len());
        assert_eq!(v, Some(2));
        assert!(parse_json_stream("OK\n").is_none());
    }
}
