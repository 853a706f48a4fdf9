//! `bulkhead flows`: the instance's flow log (JSON lines the agent writes) read like
//! `hubble observe`: the last N records, optionally followed, filtered by namespace, pod,
//! label, verdict, port, protocol, policy and direction, as a table or as JSON.
//!
//! Filters combine with AND; namespace, pod, label and port match either end of a flow. A
//! filter that cannot match anything (a bad port, an unknown verdict or protocol, a label
//! without `=`) is an error naming the flag and the value, before anything is read.

use std::io::{BufRead as _, Seek as _, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::Value;

/// What `bulkhead flows` was asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    namespace: Option<String>,
    /// `(namespace, name)`; namespace `None` = any.
    pod: Option<(Option<String>, String)>,
    labels: Vec<(String, String)>,
    /// Record kinds (`new-allowed`, `denied`, `dropped`, `revoked`, `end`).
    kinds: Vec<&'static str>,
    port: Option<u16>,
    protocol: Option<u8>,
    policy: Option<String>,
    direction: Option<&'static str>,
}

/// The flags as given, to check and turn into a [`Filter`].
#[derive(Clone, Debug, Default)]
pub struct FilterArgs {
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub labels: Vec<String>,
    pub verdict: Option<String>,
    pub port: Option<String>,
    pub protocol: Option<String>,
    pub policy: Option<String>,
    pub direction: Option<String>,
}

/// Output formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    /// One JSON array.
    Json,
    /// One JSON object per line.
    Jsonl,
}

impl Output {
    pub fn parse(s: &str) -> anyhow::Result<Output> {
        Ok(match s {
            "table" => Output::Table,
            "json" => Output::Json,
            "jsonl" => Output::Jsonl,
            other => bail!("-o {other:?}: unknown output (expected table, json or jsonl)"),
        })
    }
}

fn name_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
}

impl FilterArgs {
    /// Checks every flag; the error names the first bad one and its value.
    pub fn parse(&self) -> anyhow::Result<Filter> {
        let mut f = Filter::default();
        if let Some(ns) = &self.namespace {
            if !name_ok(ns) {
                bail!("--namespace {ns:?}: not a namespace name");
            }
            f.namespace = Some(ns.clone());
        }
        if let Some(p) = &self.pod {
            let (ns, name) = match p.split_once('/') {
                Some((ns, name)) => (Some(ns.to_string()), name.to_string()),
                None => (None, p.clone()),
            };
            if !name_ok(&name) || ns.as_deref().is_some_and(|n| !name_ok(n)) {
                bail!("--pod {p:?}: expected NAME or NAMESPACE/NAME");
            }
            f.pod = Some((ns, name));
        }
        for l in &self.labels {
            let Some((k, v)) = l.split_once('=') else { bail!("--label {l:?}: expected KEY=VALUE") };
            if k.is_empty() || k.contains(|c: char| c.is_whitespace() || c == '=' || c == ',') {
                bail!("--label {l:?}: {k:?} is not a label key");
            }
            f.labels.push((k.to_string(), v.to_string()));
        }
        if let Some(v) = &self.verdict {
            for part in v.split(',') {
                f.kinds.push(match part {
                    "allowed" | "allow" | "forwarded" => "new-allowed",
                    "denied" | "deny" => "denied",
                    "dropped" | "drop" => "dropped",
                    "revoked" => "revoked",
                    "end" | "ended" => "end",
                    other => bail!("--verdict {other:?}: unknown verdict (expected allowed, denied, dropped, revoked or end)"),
                });
            }
        }
        if let Some(p) = &self.port {
            f.port = Some(p.parse::<u16>().ok().filter(|&n| n != 0).with_context(|| format!("--port {p:?}: not a port number (1-65535)"))?);
        }
        if let Some(p) = &self.protocol {
            f.protocol = Some(match p.to_ascii_lowercase().as_str() {
                "tcp" => 6,
                "udp" => 17,
                "icmp" => 1,
                "icmpv6" => 58,
                "sctp" => 132,
                n => n.parse::<u8>().ok().with_context(|| format!("--protocol {p:?}: expected tcp, udp, icmp, icmpv6, sctp or a protocol number"))?,
            });
        }
        f.policy = self.policy.clone();
        if let Some(d) = &self.direction {
            f.direction = Some(match d.as_str() {
                "ingress" => "ingress",
                "egress" => "egress",
                other => bail!("--direction {other:?}: expected ingress or egress"),
            });
        }
        Ok(f)
    }
}

fn workloads(v: &Value) -> impl Iterator<Item = &Value> {
    ["src_workload", "dst_workload"].into_iter().map(move |k| &v[k]).filter(|w| w.is_object())
}

impl Filter {
    /// Whether a flow record (one line of the flow log) passes every filter.
    pub fn matches(&self, v: &Value) -> bool {
        if let Some(ns) = &self.namespace
            && !workloads(v).any(|w| w["namespace"] == ns.as_str())
        {
            return false;
        }
        if let Some((ns, name)) = &self.pod
            && !workloads(v).any(|w| w["name"] == name.as_str() && ns.as_deref().is_none_or(|ns| w["namespace"] == ns))
        {
            return false;
        }
        if !self.labels.iter().all(|(k, val)| workloads(v).any(|w| w["labels"][k] == val.as_str())) {
            return false;
        }
        if !self.kinds.is_empty() && !self.kinds.iter().any(|k| v["kind"] == *k) {
            return false;
        }
        if let Some(p) = self.port
            && v["src_port"] != p
            && v["dst_port"] != p
        {
            return false;
        }
        if let Some(p) = self.protocol
            && v["protocol"] != p
        {
            return false;
        }
        if let Some(p) = &self.policy {
            let named = |r: &Value| r["policy"].as_str().is_some_and(|n| n == p || n.ends_with(&format!("/{p}"))) || r["log_policy"].as_str() == Some(p.as_str());
            if !named(&v["verdict"]) && !named(&v["staged"]) {
                return false;
            }
        }
        if let Some(d) = self.direction
            && v["direction"] != d
        {
            return false;
        }
        true
    }
}

fn endpoint(v: &Value, side: &str) -> String {
    let addr = v[side].as_str().unwrap_or("?");
    let port = &v[format!("{side}_port")];
    let w = &v[format!("{side}_workload")];
    match (w["namespace"].as_str(), w["name"].as_str()) {
        (Some(ns), Some(n)) => format!("{ns}/{n} ({addr}:{port})"),
        _ => format!("{addr}:{port}"),
    }
}

/// One record as a table line.
pub fn table_line(v: &Value) -> String {
    let head = format!(
        "{:<11} {:<7} {} -> {} proto {}",
        v["kind"].as_str().unwrap_or("?"),
        v["direction"].as_str().unwrap_or("?"),
        endpoint(v, "src"),
        endpoint(v, "dst"),
        v["protocol"],
    );
    if v["kind"] == "end" {
        let t = &v["totals"];
        return format!(
            "{head} sent {} packets / {} bytes, received {} packets / {} bytes in {} ms",
            t["packets_sent"], t["bytes_sent"], t["packets_received"], t["bytes_received"], t["duration_ms"]
        );
    }
    if v["kind"] == "dropped" {
        return format!("{head} reason {} (identities local {} peer {})", v["drop_reason"].as_str().unwrap_or("?"), v["local_identity"], v["peer_identity"]);
    }
    let verdict = &v["verdict"];
    let by = verdict["policy"].as_str().map(|p| format!("{p} rule {}", verdict["rule"])).unwrap_or_else(|| {
        if verdict["end_of_tier"].as_bool() == Some(true) {
            format!("end of tier {}", verdict["tier"].as_str().unwrap_or("?"))
        } else {
            "default (no tier applies)".into()
        }
    });
    let staged = v["staged"]["action"].as_str().map(|a| format!(" [staged: would {a}]")).unwrap_or_default();
    let logged = verdict["log_policy"].as_str().map(|p| format!(" [logged by {p} rule {}]", verdict["log_rule"])).unwrap_or_default();
    format!("{head} {} by {by}{staged}{logged}", verdict["action"].as_str().unwrap_or("?"))
}

fn print(w: &mut dyn Write, v: &Value, out: Output) -> std::io::Result<()> {
    match out {
        Output::Table => writeln!(w, "{}", table_line(v)),
        Output::Json | Output::Jsonl => writeln!(w, "{v}"),
    }
}

/// Prints the last `last` matching records of the flow log at `path`, then (with `follow`)
/// every matching record appended until `stop` says so. A rotated log (renamed to `.1`) is
/// followed into its new file.
pub fn run(w: &mut dyn Write, path: &Path, filter: &Filter, last: usize, out: Output, follow: bool, stop: &dyn Fn() -> bool) -> anyhow::Result<()> {
    let file = std::fs::File::open(path).with_context(|| format!("{} (is the agent instance running?)", path.display()))?;
    let mut reader = std::io::BufReader::new(file);
    let mut tail = std::collections::VecDeque::new();
    let mut line = String::new();
    while reader.read_line(&mut line)? > 0 {
        if line.ends_with('\n') {
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && filter.matches(&v)
            {
                if tail.len() == last {
                    tail.pop_front();
                }
                if last > 0 {
                    tail.push_back(v);
                }
            }
            line.clear();
        }
    }
    if out == Output::Json && !follow {
        writeln!(w, "{}", Value::Array(tail.into_iter().collect()))?;
        return Ok(());
    }
    for v in &tail {
        print(w, v, out)?;
    }
    if !follow {
        return Ok(());
    }
    // A partial last line stays in `line` until its end arrives.
    let mut pos = reader.stream_position()?;
    let mut inode = std::fs::metadata(path).map(|m| std::os::unix::fs::MetadataExt::ino(&m)).unwrap_or(0);
    while !stop() {
        std::thread::sleep(Duration::from_millis(100));
        let Ok(meta) = std::fs::metadata(path) else { continue };
        let now_inode = std::os::unix::fs::MetadataExt::ino(&meta);
        if now_inode != inode || meta.len() < pos {
            // Rotated: the open file is the old log under its new name (or unlinked, still
            // readable through this descriptor), complete since the agent writes the new one:
            // finish it, then start on the new file. A slow reader loses nothing.
            if now_inode != inode {
                print_complete_lines(w, &mut reader, &mut line, filter, out)?;
            }
            reader = std::io::BufReader::new(std::fs::File::open(path)?);
            inode = now_inode;
            line.clear();
        }
        print_complete_lines(w, &mut reader, &mut line, filter, out)?;
        pos = reader.stream_position()?;
    }
    Ok(())
}

/// Prints the matching records of every complete line from `reader`; a partial last line
/// stays in `line` until its end arrives.
fn print_complete_lines(w: &mut dyn Write, reader: &mut std::io::BufReader<std::fs::File>, line: &mut String, filter: &Filter, out: Output) -> std::io::Result<()> {
    while reader.read_line(line)? > 0 {
        if !line.ends_with('\n') {
            break;
        }
        if let Ok(v) = serde_json::from_str::<Value>(line)
            && filter.matches(&v)
        {
            print(w, &v, out)?;
        }
        line.clear();
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `-f` across a rotation: the records appended to the old file after the last read, and
    /// those in the new file, are all printed, in order.
    #[test]
    fn following_across_a_rotation_loses_nothing() {
        let dir = std::env::temp_dir().join(format!("bh-flows-rot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let log = dir.join("flows.jsonl");
        let line = |n: u32| format!("{{\"kind\":\"denied\",\"n\":{n}}}\n");
        std::fs::write(&log, line(1)).expect("write");
        let stop = std::sync::atomic::AtomicBool::new(false);
        let mut got = Vec::new();
        std::thread::scope(|s| {
            s.spawn(|| {
                let append = |n: u32| {
                    let mut f = std::fs::OpenOptions::new().append(true).open(&log).expect("open");
                    f.write_all(line(n).as_bytes()).expect("append");
                };
                std::thread::sleep(Duration::from_millis(250));
                // Written to the old file, then rotated away before the reader's next look.
                append(2);
                std::fs::rename(&log, dir.join("flows.jsonl.1")).expect("rotate");
                std::fs::write(&log, line(3)).expect("new log");
                std::thread::sleep(Duration::from_millis(400));
                stop.store(true, std::sync::atomic::Ordering::SeqCst);
            });
            run(&mut got, &log, &Filter::default(), 10, Output::Jsonl, true, &|| stop.load(std::sync::atomic::Ordering::SeqCst)).expect("run");
        });
        let _ = std::fs::remove_dir_all(&dir);
        let ns: Vec<u64> = String::from_utf8(got).expect("utf8").lines().map(|l| serde_json::from_str::<Value>(l).expect("json")["n"].as_u64().expect("n")).collect();
        assert_eq!(ns, [1, 2, 3]);
    }

    fn rec(kind: &str, src_ns: &str, src: &str, dport: u16, policy: Option<&str>) -> Value {
        serde_json::json!({
            "kind": kind, "direction": "ingress", "src": "10.0.0.1", "dst": "10.0.0.2", "src_port": 40000, "dst_port": dport, "protocol": 6,
            "verdict": {"action": if kind == "denied" {"deny"} else {"allow"}, "policy": policy, "rule": 0, "end_of_tier": false},
            "src_workload": {"namespace": src_ns, "name": src, "labels": {"app": src}},
            "dst_workload": {"namespace": "shop", "name": "db", "labels": {"app": "db"}},
        })
    }

    fn filter(f: impl FnOnce(&mut FilterArgs)) -> Filter {
        let mut a = FilterArgs::default();
        f(&mut a);
        a.parse().expect("valid filter")
    }

    #[test]
    fn filters_match_either_end_and_combine() {
        let allowed = rec("new-allowed", "web", "frontend", 5432, Some("shop/allow-db"));
        let denied = rec("denied", "tools", "debug", 5432, None);
        let ns = filter(|a| a.namespace = Some("tools".into()));
        assert!(ns.matches(&denied) && !ns.matches(&allowed));
        assert!(filter(|a| a.namespace = Some("shop".into())).matches(&allowed), "the destination's namespace");
        assert!(filter(|a| a.pod = Some("web/frontend".into())).matches(&allowed));
        assert!(!filter(|a| a.pod = Some("tools/frontend".into())).matches(&allowed));
        assert!(filter(|a| a.labels = vec!["app=db".into()]).matches(&denied));
        let deny = filter(|a| a.verdict = Some("denied".into()));
        assert!(deny.matches(&denied) && !deny.matches(&allowed));
        assert!(filter(|a| a.verdict = Some("allowed,denied".into())).matches(&allowed));
        assert!(filter(|a| a.port = Some("5432".into())).matches(&allowed) && !filter(|a| a.port = Some("80".into())).matches(&allowed));
        assert!(filter(|a| a.protocol = Some("TCP".into())).matches(&allowed) && !filter(|a| a.protocol = Some("udp".into())).matches(&allowed));
        assert!(filter(|a| a.policy = Some("allow-db".into())).matches(&allowed) && !filter(|a| a.policy = Some("allow-db".into())).matches(&denied));
        assert!(!filter(|a| a.direction = Some("egress".into())).matches(&allowed));
        let both = filter(|a| {
            a.namespace = Some("web".into());
            a.verdict = Some("denied".into());
        });
        assert!(!both.matches(&allowed) && !both.matches(&denied), "filters combine with AND");
    }

    #[test]
    fn a_filter_that_cannot_match_is_an_error_naming_it() {
        for (f, want) in [
            (FilterArgs { port: Some("http".into()), ..Default::default() }, "--port \"http\""),
            (FilterArgs { port: Some("70000".into()), ..Default::default() }, "--port \"70000\""),
            (FilterArgs { verdict: Some("maybe".into()), ..Default::default() }, "--verdict \"maybe\""),
            (FilterArgs { protocol: Some("quic".into()), ..Default::default() }, "--protocol \"quic\""),
            (FilterArgs { labels: vec!["app".into()], ..Default::default() }, "--label \"app\": expected KEY=VALUE"),
            (FilterArgs { pod: Some("a/b/c".into()), ..Default::default() }, "--pod \"a/b/c\""),
            (FilterArgs { direction: Some("up".into()), ..Default::default() }, "--direction \"up\""),
        ] {
            let e = f.parse().expect_err(want).to_string();
            assert!(e.contains(want), "{e}");
        }
        assert!(Output::parse("yaml").unwrap_err().to_string().contains("-o \"yaml\""));
    }

    #[test]
    fn table_lines_name_pods_and_staged_verdicts() {
        let mut v = rec("new-allowed", "web", "frontend", 5432, Some("shop/allow-db"));
        v["staged"] = serde_json::json!({"action": "deny"});
        let l = table_line(&v);
        assert!(l.contains("web/frontend (10.0.0.1:40000) -> shop/db (10.0.0.2:5432)") && l.contains("allow by shop/allow-db rule 0 [staged: would deny]"), "{l}");
    }
}
