//! `bulkhead detector status | events | release`: the detector's state from an instance's pins
//! and state files (work without a running agent: enforcement state lives in pinned maps).
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use bulkhead_agent::{AgentConfig, detect};

fn state_dir(instance: &str) -> PathBuf {
    AgentConfig { datastore_dir: PathBuf::new(), node_netns: None, pin_dir: AgentConfig::default_pin_dir(instance), watch: false }
        .state_dir()
}

/// Monitored workloads (from the agent's state file), isolated endpoints (pinned map) and the
/// detector's counters (drops included).
pub fn status(instance: &str, json: bool) -> anyhow::Result<i32> {
    let pin_dir = AgentConfig::default_pin_dir(instance);
    let isolated = detect::isolated_pinned(&pin_dir).with_context(|| format!("is agent instance {instance:?} loaded? (pins at {})", pin_dir.display()))?;
    let wl_file = state_dir(instance).join(detect::WORKLOADS_FILE);
    let workloads: Vec<detect::WorkloadState> = match std::fs::read_to_string(&wl_file) {
        Ok(t) => serde_json::from_str(&t).with_context(|| format!("{}: unreadable", wl_file.display()))?,
        Err(_) => Vec::new(),
    };
    let counters: Vec<(String, u64)> = bulkhead_agent::status::read(&pin_dir)
        .map(|s| s.counters.into_iter().filter(|(k, _)| k.starts_with("detector") || k.contains("isolat")).collect())
        .unwrap_or_default();
    if json {
        let wl: Vec<_> = workloads
            .iter()
            .map(|w| {
                serde_json::json!({
                    "name": w.spec.name, "cgroup": w.spec.cgroup, "cgroup_id": w.cgroup_id, "mode": w.spec.mode,
                    "actions": w.spec.actions, "learned_execs": w.learned, "ifindex": w.ifindex,
                    "isolated": isolated.iter().any(|(i, v)| *i == w.ifindex || v.cgroup_id == w.cgroup_id),
                    "frozen": detect::cgroup::is_frozen(&w.spec.cgroup).unwrap_or(false),
                })
            })
            .collect();
        let iso: Vec<_> = isolated
            .iter()
            .map(|(i, v)| serde_json::json!({"ifindex": i, "cgroup_id": v.cgroup_id, "reason": v.reason, "since_ns": v.since_ns}))
            .collect();
        let c: serde_json::Map<String, serde_json::Value> = counters.into_iter().map(|(k, v)| (k, v.into())).collect();
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({"workloads": wl, "isolated": iso, "counters": c}))?);
        return Ok(0);
    }
    println!("{:<24} {:<8} {:>8} {:<9} {:<7} cgroup", "WORKLOAD", "MODE", "LEARNED", "ISOLATED", "FROZEN");
    for w in &workloads {
        let iso = isolated.iter().any(|(i, v)| *i == w.ifindex || v.cgroup_id == w.cgroup_id);
        let frozen = detect::cgroup::is_frozen(&w.spec.cgroup).unwrap_or(false);
        println!(
            "{:<24} {:<8} {:>8} {:<9} {:<7} {}",
            w.spec.name,
            format!("{:?}", w.spec.mode).to_lowercase(),
            w.learned.len(),
            iso,
            frozen,
            w.spec.cgroup.display()
        );
    }
    println!("isolated endpoints: {}", isolated.len());
    for (k, v) in counters {
        println!("  {k:<40} {v}");
    }
    Ok(0)
}

/// The alert log (JSON lines as written, or one line per event).
pub fn events(instance: &str, json: bool) -> anyhow::Result<i32> {
    let path = state_dir(instance).join(detect::EVENTS_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| format!("no detector events for {instance:?} ({} missing)", path.display()))?;
    for line in text.lines() {
        if json {
            println!("{line}");
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(line).with_context(|| format!("{}: bad line", path.display()))?;
        println!(
            "{:<9} {:<20} pid {:<7} ppid {:<7} uid {:<5} {} kernel={} user={}",
            v["kind"].as_str().unwrap_or("?"),
            v["workload"].as_str().unwrap_or("?"),
            v["pid"],
            v["ppid"],
            v["uid"],
            v["path"].as_str().unwrap_or("?"),
            v["kernel_actions"],
            v["user_actions"],
        );
    }
    Ok(0)
}

/// Undoes isolate and pause of the workload in `cgroup`, from the pinned maps (with or
/// without a running agent).
pub fn release(instance: &str, cgroup: &Path, json: bool) -> anyhow::Result<i32> {
    let pin_dir = AgentConfig::default_pin_dir(instance);
    let (isolated, frozen) = detect::release_pinned(&pin_dir, cgroup).with_context(|| format!("releasing {}", cgroup.display()))?;
    if json {
        println!("{}", serde_json::json!({"cgroup": cgroup, "was_isolated": isolated, "was_frozen": frozen}));
    } else {
        println!("released {} (was isolated: {isolated}, was frozen: {frozen})", cgroup.display());
    }
    Ok(0)
}
