//! `bulkhead policy recommend`: flow records -> [`policy_compiler::recommend`] -> YAML.
//! The flow log's records become observations here (the compiler knows nothing of the log's
//! format); stability goes to stderr so the YAML on stdout depends on the flows alone.

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use policy_compiler::model::{Model, Pod, PodRef};
use policy_compiler::recommend::{self, Observation, Party, render::Format};
use serde_json::Value;

/// What the command was asked.
pub struct Args<'a> {
    /// The instance's flow log (or another file of flow records).
    pub flows: &'a Path,
    /// Every pod and namespace (so idle workloads are isolated too), or `None`: the workloads
    /// named in the flow records only.
    pub model: Option<Model>,
    pub format: Format,
    pub stable_after: Duration,
    pub follow: bool,
}

/// `calico-staged` (default), `calico` or `kubernetes`.
pub fn parse_format(s: &str) -> anyhow::Result<Format> {
    Ok(match s {
        "calico-staged" | "staged" => Format::CalicoStaged,
        "calico" => Format::Calico,
        "kubernetes" | "k8s" => Format::Kubernetes,
        other => bail!("-o {other:?}: expected calico-staged, calico or kubernetes"),
    })
}

/// `300s`, `5m`, `1h` or plain seconds.
pub fn parse_window(s: &str) -> anyhow::Result<Duration> {
    let (n, unit) = s.find(|c: char| !c.is_ascii_digit()).map_or((s, "s"), |i| s.split_at(i));
    let n: u64 = n.parse().with_context(|| format!("--stable-after {s:?}: expected a duration such as 300s, 5m or 1h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => bail!("--stable-after {s:?}: unknown unit {unit:?} (s, m or h)"),
    };
    Ok(Duration::from_secs(secs))
}

/// Prints the recommendation (and, with `follow`, again whenever it changes).
pub fn run(args: Args<'_>) -> anyhow::Result<()> {
    let mut last = String::new();
    loop {
        let (model, flows, records) = read(&args)?;
        let recs = recommend::recommend(&model, &flows);
        let text = recommend::render::render(&recs, args.format);
        if text != last {
            if !last.is_empty() {
                println!("# --- recomputed: the flows changed the recommendation ---");
            }
            print!("{text}");
            report(&recs, records, flows.len(), args.stable_after);
            last = text;
        }
        if !args.follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The model (the given one plus pods the records name that it lacks) and the allowed flows.
fn read(args: &Args<'_>) -> anyhow::Result<(Model, Vec<Observation>, usize)> {
    let file = std::fs::File::open(args.flows).with_context(|| format!("{} (is the agent instance running, with --flow-records on?)", args.flows.display()))?;
    let mut model = args.model.clone().unwrap_or_default();
    let mut flows = Vec::new();
    let mut records = 0;
    for line in std::io::BufReader::new(file).lines() {
        let line = line.with_context(|| format!("reading {}", args.flows.display()))?;
        let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
        records += 1;
        // Allowed flows only: a denied one is what policy refuses today, not what to admit.
        if !matches!(v["kind"].as_str(), Some("new-allowed" | "end")) {
            continue;
        }
        let (Some(src), Some(dst)) = (party(&v, "src", &mut model, args.model.is_none()), party(&v, "dst", &mut model, args.model.is_none())) else { continue };
        let protocol = v["protocol"].as_u64().unwrap_or(0) as u8;
        flows.push(Observation { src, dst, port: v["dst_port"].as_u64().unwrap_or(0) as u16, protocol, ts_ns: v["ts_ns"].as_u64().unwrap_or(0) });
    }
    Ok((model, flows, records))
}

/// One end of a record: its pod (added to the model from the record's labels when no
/// datastore was given) or its address.
fn party(v: &Value, end: &str, model: &mut Model, learn_pods: bool) -> Option<Party> {
    let w = &v[format!("{end}_workload")];
    if let (Some(ns), Some(name)) = (w["namespace"].as_str(), w["name"].as_str()) {
        let r = PodRef::new(ns, name);
        if learn_pods && !model.pods.contains_key(&r) {
            let labels: BTreeMap<String, String> =
                w["labels"].as_object().map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect()).unwrap_or_default();
            model.pods.insert(r, Pod { namespace: ns.into(), name: name.into(), labels, service_account: String::new(), ip: None, ip6: None, ports: vec![], interface: None }.into());
        }
        return Some(Party::Pod { namespace: ns.into(), name: name.into() });
    }
    v[end].as_str()?.parse().ok().map(Party::Outside)
}

/// Per workload: its rules and whether it is stable, on stderr.
fn report(recs: &[recommend::Recommended], records: usize, flows: usize, window: Duration) {
    // The flow records' clock (CLOCK_MONOTONIC).
    let now = bulkhead_agent::clock::monotonic_ns();
    let window_ns = window.as_nanos() as u64;
    let stable = recs.iter().filter(|r| r.stable(now, window_ns)).count();
    eprintln!("{} policies from {flows} allowed flows ({records} records); {stable} stable (no change for {} s):", recs.len(), window.as_secs());
    for r in recs {
        let state = match r.last_change_ns {
            None => "stable (no flows: isolated)".to_string(),
            Some(t) if r.stable(now, window_ns) => format!("stable (unchanged for {} s)", now.saturating_sub(t) / 1_000_000_000),
            Some(t) => format!("not yet stable (changed {} s ago)", now.saturating_sub(t) / 1_000_000_000),
        };
        eprintln!("  {}/{}: {} ingress, {} egress rules; {state}", r.workload.namespace, r.name, r.ingress.len(), r.egress.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_and_formats_parse_and_bad_ones_are_named() {
        assert_eq!(parse_window("90").expect("plain"), Duration::from_secs(90));
        assert_eq!(parse_window("5m").expect("minutes"), Duration::from_secs(300));
        assert!(parse_window("5d").unwrap_err().to_string().contains("--stable-after \"5d\""));
        assert!(parse_format("yaml").unwrap_err().to_string().contains("-o \"yaml\""));
        assert_eq!(parse_format("kubernetes").expect("k8s"), Format::Kubernetes);
    }
}
