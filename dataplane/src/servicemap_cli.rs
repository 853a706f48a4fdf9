//! `bulkhead ui` (the service map page of an instance, served on its own) and `bulkhead flows
//! graph` (the map as a static SVG or as JSON).

use std::path::PathBuf;

use anyhow::{Context as _, bail};
use bulkhead_agent::servicemap::{self, ServiceMap};

/// The state folder of an instance, where its agent writes the flow log.
fn state_dir(instance: &str) -> anyhow::Result<PathBuf> {
    bulkhead_agent::instance::validate_name(instance)?;
    Ok(bulkhead_agent::AgentConfig::state_dir_of(instance))
}

/// `bulkhead ui`: serves the page until the process is interrupted (nothing to clean up: the
/// server only reads the flow log).
pub fn ui(instance: &str, listen: &str) -> anyhow::Result<i32> {
    listen
        .parse::<std::net::SocketAddr>()
        .with_context(|| format!("--listen {listen:?}: expected ADDRESS:PORT (e.g. {})", servicemap::DEFAULT_LISTEN))?;
    let dir = state_dir(instance)?;
    let log = dir.join(bulkhead_agent::flows::FLOW_LOG_FILE);
    let server = servicemap::serve(listen, dir)?;
    println!("service map of instance {instance}: http://{}/ (Ctrl-C stops it)", server.addr());
    if !log.exists() {
        eprintln!("bulkhead ui: no flow log at {} yet (is an agent of instance {instance:?} running?); the page shows flows once it appears", log.display());
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// `bulkhead flows graph`: the map of the last `last` flow records, as SVG or JSON.
pub fn graph(instance: &str, output: &str, last: usize) -> anyhow::Result<i32> {
    if !matches!(output, "svg" | "json") {
        bail!("-o {output:?}: unknown output (expected svg or json)");
    }
    let log = state_dir(instance)?.join(bulkhead_agent::flows::FLOW_LOG_FILE);
    let map = ServiceMap::from_flow_log(&log, last).with_context(|| format!("{} (is the agent instance {instance:?} running?)", log.display()))?;
    if output == "svg" {
        print!("{}", servicemap::render_svg(&map));
    } else {
        println!("{}", serde_json::to_string_pretty(&map)?);
    }
    Ok(0)
}
