//! `bulkhead detector status | events | release | profile ...`: the detector's state from an
//! instance's pins and state files (work without a running agent: enforcement state lives in
//! pinned maps); `profile import` hands a validated file to the running agent.
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use bulkhead_agent::{AgentConfig, detect};

fn state_dir(instance: &str) -> PathBuf {
    AgentConfig::state_dir_of(instance)
}

/// Monitored workloads (from the agent's state file), isolated endpoints (pinned map) and the
/// detector's counters (drops of the exec and flow event rings included).
pub fn status(instance: &str, json: bool) -> anyhow::Result<i32> {
    let pin_dir = AgentConfig::default_pin_dir(instance);
    let isolated = detect::isolated_pinned(&pin_dir).with_context(|| format!("is agent instance {instance:?} loaded? (pins at {})", pin_dir.display()))?;
    let wl_file = state_dir(instance).join(detect::WORKLOADS_FILE);
    let workloads: Vec<detect::WorkloadState> = match std::fs::read_to_string(&wl_file) {
        Ok(t) => serde_json::from_str(&t).with_context(|| format!("{}: unreadable", wl_file.display()))?,
        Err(_) => Vec::new(),
    };
    let profiles = load_profiles(instance);
    let prof = |w: &detect::WorkloadState| profiles.iter().find(|p| p.name == w.profile_name());
    let counters: Vec<(String, u64)> = bulkhead_agent::status::read(&pin_dir)
        .map(|s| s.counters.into_iter().filter(|(k, _)| k.starts_with("detector") || k.starts_with("flow_events") || k.contains("isolat")).collect())
        .unwrap_or_default();
    if json {
        let wl: Vec<_> = workloads
            .iter()
            .map(|w| {
                serde_json::json!({
                    "name": w.spec.name, "cgroup": w.spec.cgroup, "cgroup_id": w.cgroup_id, "mode": w.spec.mode,
                    "actions": w.spec.actions, "ifindex": w.ifindex,
                    "profile": w.profile_name(), "policy": w.opts.policy,
                    "learned_execs": prof(w).map(|p| p.execs.iter().cloned().collect::<Vec<_>>()).unwrap_or_default(),
                    "learned_egress": prof(w).map(|p| p.network.egress.len()).unwrap_or(0),
                    "sequence_model": w.opts.sequences,
                    "learned_sequence_syscalls": prof(w).and_then(|p| p.syscall_model.as_ref()).map_or(0, |m| m.len()),
                    "learned_lineage": prof(w).map(|p| p.lineage.len()).unwrap_or(0),
                    "file_baseline": w.opts.files,
                    "learned_dirs": prof(w).map(|p| p.files.dirs.len()).unwrap_or(0),
                    "isolated": isolated.iter().any(|(i, v)| *i == w.ifindex || v.cgroup_id == w.cgroup_id),
                    "profile_missing": w.profile_missing, "effective_mode": w.effective_mode(),
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
    println!(
        "{:<24} {:<8} {:<24} {:>5} {:>6} {:>8} {:>5} {:<9} {:<7} policy",
        "WORKLOAD", "MODE", "PROFILE", "EXECS", "EGRESS", "SEQUENCE", "DIRS", "ISOLATED", "FROZEN"
    );
    for w in &workloads {
        let iso = isolated.iter().any(|(i, v)| *i == w.ifindex || v.cgroup_id == w.cgroup_id);
        let frozen = detect::cgroup::is_frozen(&w.spec.cgroup).unwrap_or(false);
        // Normal syscalls in the sequence model, or "-" without one.
        let seq = match w.opts.sequences {
            Some(_) => prof(w).and_then(|p| p.syscall_model.as_ref()).map_or(0, |m| m.len()).to_string(),
            None => "-".into(),
        };
        // Directories in the file baseline, or "-" without one.
        let dirs = match w.opts.files {
            Some(_) => prof(w).map_or(0, |p| p.files.dirs.len()).to_string(),
            None => "-".into(),
        };
        println!(
            "{:<24} {:<8} {:<24} {:>5} {:>6} {:>8} {:>5} {:<9} {:<7} {}",
            w.spec.name,
            format!("{:?}", w.spec.mode).to_lowercase(),
            w.profile_name(),
            prof(w).map(|p| p.execs.len()).unwrap_or(0),
            prof(w).map(|p| p.network.egress.len()).unwrap_or(0),
            seq,
            dirs,
            iso,
            frozen,
            w.opts.policy.as_deref().unwrap_or("-")
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
        if v.get("dst").is_some() || v["kind"] == "egress-volume" {
            println!(
                "{:<13} {:<20} {:<8} peer {} dst {} user={} isolate_us={} {}",
                v["kind"].as_str().unwrap_or("?"),
                v["workload"].as_str().unwrap_or("?"),
                v["mode"].as_str().unwrap_or("?"),
                v["peer"].as_str().unwrap_or("-"),
                v["dst"].as_str().unwrap_or("-"),
                v["user_actions"],
                v["isolate_ns"].as_u64().map(|n| format!("{:.0}", n as f64 / 1000.0)).unwrap_or_else(|| "-".into()),
                v["detail"].as_str().unwrap_or(""),
            );
            continue;
        }
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

fn load_profiles(instance: &str) -> Vec<detect::profile::Profile> {
    detect::profile::load_dir(&state_dir(instance).join(detect::profile::PROFILES_DIR))
}

fn find_profile(instance: &str, name: &str) -> anyhow::Result<detect::profile::Profile> {
    let all = load_profiles(instance);
    let names: Vec<&str> = all.iter().map(|p| p.name.as_str()).collect();
    all.iter()
        .find(|p| p.name == name)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no profile {name:?} in instance {instance:?} (profiles: {})", if names.is_empty() { "none".to_string() } else { names.join(", ") }))
}

/// The instance's profiles with the workloads using them.
pub fn profile_list(instance: &str, json: bool) -> anyhow::Result<i32> {
    let profiles = load_profiles(instance);
    let wl_file = state_dir(instance).join(detect::WORKLOADS_FILE);
    let workloads: Vec<detect::WorkloadState> =
        std::fs::read_to_string(&wl_file).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    let users = |n: &str| workloads.iter().filter(|w| w.profile_name() == n).map(|w| w.spec.name.clone()).collect::<Vec<_>>();
    if json {
        let v: Vec<_> = profiles
            .iter()
            .map(|p| serde_json::json!({"name": p.name, "execs": p.execs.len(), "egress": p.network.egress.len(), "syscalls": p.syscalls.len(), "workloads": users(&p.name)}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!("{:<32} {:>5} {:>6} {:>8} workloads", "PROFILE", "EXECS", "EGRESS", "SYSCALLS");
    for p in &profiles {
        println!("{:<32} {:>5} {:>6} {:>8} {}", p.name, p.execs.len(), p.network.egress.len(), p.syscalls.len(), users(&p.name).join(", "));
    }
    Ok(0)
}

/// One profile, as tables (or JSON).
pub fn profile_show(instance: &str, name: &str, json: bool) -> anyhow::Result<i32> {
    let p = find_profile(instance, name)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&p)?);
        return Ok(0);
    }
    println!("profile {}", p.name);
    if !p.labels.is_empty() {
        let l: Vec<String> = p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("labels  {}", l.join(", "));
    }
    println!("\nEXECUTABLES ({})", p.execs.len());
    for e in &p.execs {
        println!("  {e}");
    }
    println!("\nOUTBOUND ({})\n  {:<32} {:>5} PROTOCOL", p.network.egress.len(), "PEER", "PORT");
    for e in &p.network.egress {
        println!("  {:<32} {:>5} {:?}", e.peer().to_string(), e.port, e.protocol);
    }
    println!("\nINBOUND ({})\n  {:<32} {:>5} PROTOCOL", p.network.ingress.len(), "PEER", "PORT");
    for e in &p.network.ingress {
        println!("  {:<32} {:>5} {:?}", e.peer().to_string(), e.port, e.protocol);
    }
    println!(
        "\nEGRESS VOLUME  largest flow {} bytes; peak {} bytes/s",
        p.network.max_flow_bytes, p.network.max_egress_bytes_per_second
    );
    let total: u64 = p.syscalls.values().sum();
    println!("\nSYSCALLS ({} distinct, {total} calls)", p.syscalls.len());
    let mut top: Vec<(&u32, &u64)> = p.syscalls.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1));
    for (nr, c) in top.iter().take(15) {
        println!("  {nr:>4} {c:>12}");
    }
    match &p.syscall_model {
        Some(m) => println!(
            "\nSYSCALL SEQUENCES  {} normal syscalls in {} sequences (cap {}, {} not learned: cap reached)",
            m.len(),
            m.sequences(),
            m.max_syscalls(),
            p.syscall_model_dropped
        ),
        None => println!("\nSYSCALL SEQUENCES  none learned"),
    }
    Ok(0)
}

/// One profile as YAML on stdout.
pub fn profile_export(instance: &str, name: &str) -> anyhow::Result<i32> {
    print!("{}", find_profile(instance, name)?.to_yaml());
    Ok(0)
}

/// Validates `file` here (a bad file is reported and nothing is handed over), then drops it in
/// the agent's import folder and waits for the agent's answer.
pub fn profile_import(instance: &str, file: &Path, timeout: std::time::Duration, json: bool) -> anyhow::Result<i32> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let p = match detect::profile::Profile::from_yaml(&file.display().to_string(), &text) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}\nnothing imported");
            return Ok(2);
        }
    };
    let dir = state_dir(instance).join(detect::profile::IMPORT_DIR);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = format!("{}-{}", std::process::id(), detect::profile::file_of(&dir, &p.name).file_name().unwrap().to_string_lossy());
    let (tmp, req) = (dir.join(format!(".{name}.tmp")), dir.join(&name));
    let answer = dir.join(format!("{name}.result.json"));
    std::fs::write(&tmp, &text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &req).with_context(|| format!("writing {}", req.display()))?;
    let deadline = std::time::Instant::now() + timeout;
    let reply = loop {
        if let Ok(t) = std::fs::read_to_string(&answer) {
            let _ = std::fs::remove_file(&answer);
            break serde_json::from_str::<serde_json::Value>(&t).with_context(|| format!("{}: bad answer", answer.display()))?;
        }
        if std::time::Instant::now() > deadline {
            let _ = std::fs::remove_file(&req);
            anyhow::bail!("no agent of instance {instance:?} answered within {timeout:?}; nothing imported");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    if json {
        println!("{reply}");
    } else if reply["ok"] == true {
        let r = &reply["report"];
        println!("imported profile {} ({} executables, {} outbound destinations); workloads: {}", r["profile"], r["execs"], r["egress"], r["workloads"]);
    } else {
        eprintln!("error: {}", reply["error"].as_str().unwrap_or("?"));
    }
    Ok(if reply["ok"] == true { 0 } else { 2 })
}
