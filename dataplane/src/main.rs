//! The `bulkhead` command.
use std::{
    path::PathBuf,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

mod detector_cli;
mod flows_cli;
mod servicemap_cli;
mod recommend_cli;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bulkhead", version, about = "Microsegmentation dataplane for Kubernetes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum AgentAction {
    /// Remove an instance from the node: detach every program it keeps attached (pod
    /// interfaces, detector probes), remove its pinned maps and programs and its runtime files
    /// (flow log, policy table, detector profiles, workloads, events). Refused while an agent
    /// runs on the instance.
    Uninstall {
        #[arg(long, default_value = "node")]
        instance: String,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent: load the eBPF programs, attach them to the pods' interfaces and keep the
    /// maps in step with the datastore until interrupted. SIGTERM/SIGINT stop the agent but
    /// leave the kernel enforcing (links and maps stay pinned; the next agent adopts them);
    /// `bulkhead agent uninstall` removes an instance from the node.
    #[command(args_conflicts_with_subcommands = true)]
    Agent {
        #[command(subcommand)]
        action: Option<AgentAction>,
        /// Where the cluster's state comes from: a folder of Kubernetes-style YAML
        /// (Namespaces, Pods, policies), watched live, or `kubernetes` for the Kubernetes API
        /// (see --kubeconfig).
        #[arg(long)]
        datastore: Option<PathBuf>,
        /// With `--datastore kubernetes`: the kubeconfig (default: KUBECONFIG, ~/.kube/config,
        /// then the in-cluster service account).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Network namespace holding the pods' host-side veths (default: the current one).
        #[arg(long)]
        node_netns: Option<String>,
        /// Instance name: maps are pinned under /sys/fs/bpf/bulkhead/INSTANCE.
        #[arg(long, default_value = "node")]
        instance: String,
        /// Prometheus metrics at http://ADDR/metrics (read-only); `off` disables it. Loopback
        /// by default: expose it wider only on purpose (e.g. `0.0.0.0:9964`).
        #[arg(long, default_value = bulkhead_agent::metrics::DEFAULT_LISTEN)]
        metrics_listen: String,
        /// Flow records (`bulkhead flows`, the service map, `policy recommend`): every new
        /// flow and every flow's end, per endpoint, aggregated in the kernel. `off` keeps only
        /// denied flows of monitored workloads, revoked flows, Log rules and drops.
        #[arg(long, default_value = "on", value_parser = ["on", "off"])]
        flow_records: String,
    },
    /// Print the CustomResourceDefinitions of the kinds the agent reads from Kubernetes
    /// (deploy/kubernetes/crds/bulkhead-agent.yaml holds this output).
    Crds,
    /// Show an agent instance's state from its pinned maps: entries and datapath counters.
    Status {
        /// Instance name (the folder under /sys/fs/bpf/bulkhead).
        #[arg(long, default_value = "node")]
        instance: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Policy tools: check a datastore, explain a verdict, per-policy counters.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Flow records of an agent instance (denied, revoked and dropped flows, Log rules, every
    /// new flow of monitored workloads), like `hubble observe`: the last N, optionally
    /// followed, filtered (filters combine with AND; namespace, pod, label and port match
    /// either end). `bulkhead flows graph` draws them as a service map.
    #[command(args_conflicts_with_subcommands = true)]
    Flows {
        #[command(subcommand)]
        action: Option<FlowsAction>,
        #[arg(long, default_value = "node")]
        instance: String,
        /// How many of the most recent matching records to print first.
        #[arg(long, default_value_t = 20)]
        last: usize,
        /// Keep printing matching records as they arrive (until interrupted).
        #[arg(long, short = 'f')]
        follow: bool,
        /// Output: table, json (one array; without --follow) or jsonl (one object per line).
        #[arg(long, short = 'o', default_value = "table")]
        output: String,
        /// Same as `-o jsonl` (kept for scripts).
        #[arg(long)]
        json: bool,
        /// Either end in this namespace.
        #[arg(long)]
        namespace: Option<String>,
        /// Either end is this pod (NAME or NAMESPACE/NAME).
        #[arg(long)]
        pod: Option<String>,
        /// Either end carries this label (KEY=VALUE; repeat for several).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// allowed, denied, dropped or revoked (comma-separated for several).
        #[arg(long)]
        verdict: Option<String>,
        /// Source or destination port.
        #[arg(long)]
        port: Option<String>,
        /// tcp, udp, icmp, icmpv6, sctp or a protocol number.
        #[arg(long)]
        protocol: Option<String>,
        /// The deciding (or staged, or logging) policy, by name or tier/name.
        #[arg(long)]
        policy: Option<String>,
        /// ingress or egress (of the pod whose interface saw it).
        #[arg(long)]
        direction: Option<String>,
    },
    /// Detector tools (the syscall-behaviour model).
    #[command(subcommand)]
    Detector(DetectorCommand),
    /// The uplink pre-filter: XDP in driver mode on a node's physical interface, dropping
    /// packets from denied IPv4 source prefixes before the stack allocates anything for them.
    /// Never on pod veths (XDP there turns TSO off; see the README).
    #[command(subcommand)]
    Prefilter(PrefilterCommand),
    /// Network-namespace lab: pods, echo servers, conformance runner, demo.
    #[command(subcommand)]
    Lab(bulkhead_lab::LabCommand),
    /// The service map of an agent instance as a web page (workloads grouped by namespace,
    /// flows coloured by verdict, the deciding policy and rule on a click on an edge), served
    /// until interrupted. The agent serves the same page at its metrics address.
    Ui {
        #[arg(long, default_value = "node")]
        instance: String,
        /// Where to listen. Loopback by default: expose it wider only on purpose.
        #[arg(long, default_value = bulkhead_agent::servicemap::DEFAULT_LISTEN)]
        listen: String,
    },
}

#[derive(Subcommand)]
enum FlowsAction {
    /// The service map of the last flow records: workloads grouped by namespace, flows as
    /// edges coloured by verdict and labelled with port and deciding policy.
    Graph {
        #[arg(long, default_value = "node")]
        instance: String,
        /// svg (a static picture) or json (the model: nodes, edges, deciding policies).
        #[arg(long, short = 'o', default_value = "svg")]
        output: String,
        /// How many of the most recent flow records to draw from.
        #[arg(long, default_value_t = bulkhead_agent::servicemap::MAX_RECORDS)]
        last: usize,
    },
}

#[derive(Subcommand)]
enum DetectorCommand {
    /// Monitored workloads, isolated endpoints and detector counters (drops included) of an
    /// agent instance, from its pins and state files.
    Status {
        #[arg(long, default_value = "node")]
        instance: String,
        #[arg(long)]
        json: bool,
    },
    /// The detector's alerts (exec events and violations with the actions taken).
    Events {
        #[arg(long, default_value = "node")]
        instance: String,
        #[arg(long)]
        json: bool,
    },
    /// Undo isolate and pause of a workload: remove its isolation entries and thaw its cgroup.
    Release {
        #[arg(long, default_value = "node")]
        instance: String,
        /// The workload's cgroup v2 folder.
        #[arg(long)]
        cgroup: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Behaviour profiles shared by workloads with the same labels (executables, syscall
    /// counts, outbound peers and ports, egress volume).
    #[command(subcommand)]
    Profile(ProfileCommand),
}

#[derive(Subcommand)]
enum PrefilterCommand {
    /// Deny source prefixes of either family (`203.0.113.0/24`, `2001:db8::/32`, or an address
    /// for /32 or /128). All are checked before any is written.
    Add {
        #[arg(long, default_value = "node")]
        instance: String,
        #[arg(required = true)]
        prefixes: Vec<String>,
    },
    /// Stop denying source prefixes.
    Remove {
        #[arg(long, default_value = "node")]
        instance: String,
        #[arg(required = true)]
        prefixes: Vec<String>,
    },
    /// The denied prefixes and the interfaces the pre-filter is attached to.
    List {
        #[arg(long, default_value = "node")]
        instance: String,
        #[arg(long)]
        json: bool,
    },
    /// Attach the pre-filter to an uplink (driver mode; the link stays pinned with the
    /// instance until `detach` or `bulkhead agent uninstall`).
    Attach {
        #[arg(long, default_value = "node")]
        instance: String,
        /// Network namespace of the interface (default: the current one).
        #[arg(long)]
        netns: Option<String>,
        interface: String,
    },
    /// Detach the pre-filter from an uplink.
    Detach {
        #[arg(long, default_value = "node")]
        instance: String,
        interface: String,
    },
}

#[derive(Subcommand)]
enum ProfileCommand {
    /// Profiles of the instance (name, workloads, sizes).
    List {
        #[arg(long, default_value = "node")]
        instance: String,
        #[arg(long)]
        json: bool,
    },
    /// One profile, readable (or as JSON).
    Show {
        /// Profile name, e.g. `shop/app=web`.
        name: String,
        #[arg(long, default_value = "node")]
        instance: String,
        #[arg(long)]
        json: bool,
    },
    /// One profile as YAML on stdout (edit it, then `profile import`).
    Export {
        name: String,
        #[arg(long, default_value = "node")]
        instance: String,
    },
    /// Validate a profile file and hand it to the running agent, which replaces the profile
    /// and updates the kernel at once. A bad file changes nothing.
    Import {
        file: PathBuf,
        #[arg(long, default_value = "node")]
        instance: String,
        /// How long to wait for the agent (seconds).
        #[arg(long, default_value_t = 10)]
        timeout: u64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Validate a datastore folder and compile it; errors name the file, document and field.
    Check {
        #[arg(long)]
        datastore: PathBuf,
    },
    /// Why is a connection allowed or denied? For each direction: the deciding tier, policy and
    /// rule (or the tier's default), and the staged verdicts, from the compiled maps the
    /// kernel is given, looked up with the kernel's algorithm.
    Explain {
        #[arg(long)]
        datastore: PathBuf,
        /// Source: a pod as NAMESPACE/NAME, or an IPv4 or IPv6 address.
        #[arg(long)]
        from: String,
        /// Destination: a pod as NAMESPACE/NAME, or an IPv4 or IPv6 address.
        #[arg(long)]
        to: String,
        /// IPv4 or IPv6: which addresses of pods given by name (an address given as such
        /// decides the family itself).
        #[arg(long, default_value = "IPv4")]
        family: String,
        /// Destination port (a number, or a port name of the destination pod).
        #[arg(long)]
        port: String,
        /// TCP, UDP, SCTP, ICMP or a protocol number.
        #[arg(long, default_value = "TCP")]
        protocol: String,
    },
    /// Per-policy counters of a running instance: allowed and denied new flows, and what
    /// staged policies would have allowed or denied.
    Stats {
        #[arg(long, default_value = "node")]
        instance: String,
        #[arg(long)]
        json: bool,
    },
    /// Recommend policies from the flows an instance observed: one per workload, admitting
    /// exactly the allowed flows seen, in the `namespace-isolation` tier; staged by default,
    /// to review with `policy stats` before enforcing. Stability per workload goes to stderr.
    Recommend {
        #[arg(long, default_value = "node")]
        instance: String,
        /// The cluster's datastore folder: every pod gets a policy (a workload with no flow is
        /// isolated). Without it, only workloads named in the flow records.
        #[arg(long)]
        datastore: Option<PathBuf>,
        /// A file of flow records instead of the instance's flow log.
        #[arg(long)]
        flows: Option<PathBuf>,
        /// calico-staged (StagedNetworkPolicy), calico (NetworkPolicy, to enforce) or
        /// kubernetes (networking.k8s.io NetworkPolicy).
        #[arg(long, short = 'o', default_value = "calico-staged")]
        output: String,
        /// A workload's recommendation is stable once no new peer, port or protocol arrived
        /// for this long (300s, 5m, 1h).
        #[arg(long, default_value = "300s")]
        stable_after: String,
        /// Keep reading the flow log and print the recommendation again when it changes.
        #[arg(long, short = 'f')]
        follow: bool,
    },
}

fn protocol_number(p: &str) -> anyhow::Result<u8> {
    Ok(match p.to_ascii_uppercase().as_str() {
        "TCP" => 6,
        "UDP" => 17,
        "SCTP" => 132,
        "ICMP" => 1,
        "ICMPV6" => 58,
        n => n.parse().with_context(|| format!("--protocol: {p:?} is not TCP, UDP, SCTP, ICMP, ICMPv6 or a number"))?,
    })
}

fn endpoint(model: &policy_compiler::Model, s: &str, flag: &str) -> anyhow::Result<policy_compiler::lookup::Endpoint> {
    use policy_compiler::{lookup::Endpoint, model::PodRef};
    if let Ok(ip) = s.parse() {
        return Ok(Endpoint::Ip(ip));
    }
    let (ns, name) = s.split_once('/').with_context(|| format!("{flag}: {s:?} is neither NAMESPACE/POD nor an IP address"))?;
    let r = PodRef::new(ns, name);
    anyhow::ensure!(model.pods.contains_key(&r), "{flag}: no pod {s} in the datastore");
    Ok(Endpoint::Pod(r))
}

/// Loads a datastore folder for the offline commands: any rejected file is an error there.
fn load_strict(datastore: &std::path::Path) -> anyhow::Result<policy_compiler::model::Model> {
    use bulkhead_agent::datastore::{Datastore as _, FileDatastore};
    let mut store = FileDatastore::new(datastore)?;
    let model = store.load()?;
    let rejected = store.rejected();
    anyhow::ensure!(rejected.is_empty(), "{}", rejected.join("\n"));
    Ok(model)
}

fn run_policy(cmd: PolicyCommand) -> anyhow::Result<i32> {
    match cmd {
        PolicyCommand::Recommend { instance, datastore, flows, output, stable_after, follow } => {
            let format = recommend_cli::parse_format(&output)?;
            let stable_after = recommend_cli::parse_window(&stable_after)?;
            let model = datastore.as_deref().map(load_strict).transpose()?;
            let flows = flows.unwrap_or_else(|| bulkhead_agent::AgentConfig::flow_log_of(&instance));
            recommend_cli::run(recommend_cli::Args { flows: &flows, model, format, stable_after, follow })?;
            Ok(0)
        }
        PolicyCommand::Check { datastore } => {
            let model = load_strict(&datastore)?;
            let mut compiler = policy_compiler::Compiler::new(policy_compiler::Limits::default());
            let c = compiler.compile(&model)?;
            println!(
                "{}: {} namespaces, {} pods, {} NetworkPolicies, {} tiered policies in {} tiers; compiled to {} peer entries ({} staged) over {} verdict tables, {} IP cache entries",
                datastore.display(),
                model.namespaces.len(),
                model.pods.len(),
                model.policies.len(),
                model.tiered.len(),
                c.tier_table.len(),
                c.policy.len(),
                c.staged.len(),
                c.tables.len(),
                c.ipcache.len()
            );
            for o in &c.overflow {
                println!("overflow (fails closed): {o}");
            }
            Ok(if c.overflow.is_empty() { 0 } else { 1 })
        }
        PolicyCommand::Explain { datastore, from, to, port, protocol, family } => {
            let v6 = match family.as_str() {
                "IPv4" | "ipv4" | "4" => false,
                "IPv6" | "ipv6" | "6" => true,
                f => anyhow::bail!("--family: {f:?} is not IPv4 or IPv6"),
            };
            let model = load_strict(&datastore)?;
            let mut compiler = policy_compiler::Compiler::new(policy_compiler::Limits::default());
            let c = compiler.compile(&model)?;
            let src = endpoint(&model, &from, "--from")?;
            let dst = endpoint(&model, &to, "--to")?;
            let proto = protocol_number(&protocol)?;
            let port: u16 = match port.parse() {
                Ok(p) => p,
                Err(_) => {
                    let policy_compiler::lookup::Endpoint::Pod(r) = &dst else {
                        anyhow::bail!("--port: a port name needs a pod destination");
                    };
                    let pod = &model.pods[r];
                    pod.ports
                        .iter()
                        .find(|p| p.name.as_deref() == Some(port.as_str()) && p.protocol.number() == proto)
                        .map(|p| p.port)
                        .with_context(|| format!("--port: pod {r} has no {protocol} port named {port:?}"))?
                }
            };
            let e = policy_compiler::explain::explain_family(&c, &model, &src, &dst, proto, port, v6);
            println!("{e}");
            Ok(0)
        }
        PolicyCommand::Stats { instance, json } => {
            let table_path = bulkhead_agent::AgentConfig::state_dir_of(&instance).join("policies.json");
            let table: bulkhead_agent::PolicyTable = serde_json::from_str(
                &std::fs::read_to_string(&table_path)
                    .with_context(|| format!("is agent instance {instance:?} running? ({} missing)", table_path.display()))?,
            )
            .with_context(|| format!("{}: not a policy table", table_path.display()))?;
            let rows = bulkhead_agent::status::policy_stats(&bulkhead_agent::AgentConfig::default_pin_dir(&instance), &table)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("{:<58} {:<26} {:>8} {:>8} {:>12} {:>11}", "POLICY", "TIER", "ALLOWED", "DENIED", "WOULD-ALLOW", "WOULD-DENY");
                for r in rows {
                    let name = if r.staged { format!("{} (staged)", r.policy) } else { r.policy };
                    println!("{:<58} {:<26} {:>8} {:>8} {:>12} {:>11}", name, r.tier, r.allowed, r.denied, r.would_allow, r.would_deny);
                }
            }
            Ok(0)
        }
    }
}

fn run_flows(instance: &str, args: &flows_cli::FilterArgs, last: usize, output: String, follow: bool) -> anyhow::Result<i32> {
    // Bad filters first: nothing is read for a question that cannot be answered.
    let (filter, out) = match args.parse().and_then(|f| flows_cli::Output::parse(&output).map(|o| (f, o))) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("bulkhead flows: {e}");
            return Ok(2);
        }
    };
    let path = bulkhead_agent::AgentConfig::flow_log_of(instance);
    // Following ends with the process (Ctrl-C): there is nothing to clean up.
    flows_cli::run(&mut std::io::stdout().lock(), &path, &filter, last, out, follow, &|| STOP.load(Ordering::SeqCst)).with_context(|| format!("agent instance {instance:?}"))?;
    Ok(0)
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn run_prefilter(cmd: PrefilterCommand) -> anyhow::Result<i32> {
    use bulkhead_agent::uplink;
    let pins = |instance: &str| -> anyhow::Result<PathBuf> {
        bulkhead_agent::instance::validate_name(instance)?;
        Ok(bulkhead_agent::AgentConfig::default_pin_dir(instance))
    };
    let parse = |v: &[String]| -> anyhow::Result<Vec<ipnetwork::IpNetwork>> { v.iter().map(|p| Ok(uplink::parse_prefix(p)?)).collect() };
    match cmd {
        PrefilterCommand::Add { instance, prefixes } => {
            let nets = parse(&prefixes)?;
            uplink::add(&pins(&instance)?, &nets)?;
            println!("denied {} prefix(es)", nets.len());
        }
        PrefilterCommand::Remove { instance, prefixes } => {
            let nets = parse(&prefixes)?;
            let missing = uplink::remove(&pins(&instance)?, &nets)?;
            for m in &missing {
                eprintln!("bulkhead prefilter: {m} was not denied");
            }
            println!("removed {} prefix(es)", nets.len() - missing.len());
        }
        PrefilterCommand::List { instance, json } => {
            let dir = pins(&instance)?;
            let denied: Vec<String> = uplink::list(&dir)?.iter().map(|n| n.to_string()).collect();
            let interfaces = uplink::attached(&dir);
            if json {
                println!("{}", serde_json::json!({ "denied": denied, "interfaces": interfaces }));
            } else {
                println!("interfaces: {}", if interfaces.is_empty() { "(none)".to_string() } else { interfaces.join(", ") });
                println!("denied source prefixes: {}", denied.len());
                for d in denied {
                    println!("  {d}");
                }
            }
        }
        PrefilterCommand::Attach { instance, netns, interface } => {
            let dir = pins(&instance)?;
            match netns {
                // A thread of its own enters the namespace, so this process's stays as it was.
                Some(ns) => std::thread::scope(|s| {
                    s.spawn(|| -> anyhow::Result<()> {
                        bulkhead_agent::netns::enter(&ns)?;
                        Ok(uplink::attach(&dir, &interface)?)
                    })
                    .join()
                    .map_err(|_| anyhow::anyhow!("the attach thread panicked"))?
                })?,
                None => uplink::attach(&dir, &interface)?,
            }
            println!("pre-filter attached to {interface} (driver mode)");
        }
        PrefilterCommand::Detach { instance, interface } => {
            if !uplink::detach(&pins(&instance)?, &interface) {
                anyhow::bail!("the pre-filter is not attached to {interface} in instance {instance}");
            }
            println!("pre-filter detached from {interface}");
        }
    }
    Ok(0)
}

fn run_agent(datastore: PathBuf, kubeconfig: Option<PathBuf>, node_netns: Option<String>, instance: String, metrics_listen: &str, flow_records: bool) -> anyhow::Result<i32> {
    let kubernetes = datastore.as_os_str() == "kubernetes";
    if kubeconfig.is_some() && !kubernetes {
        anyhow::bail!("--kubeconfig needs --datastore kubernetes");
    }
    let cfg = bulkhead_agent::AgentConfig {
        datastore_dir: datastore,
        node_netns,
        pin_dir: bulkhead_agent::AgentConfig::default_pin_dir(&instance),
        watch: true,
        flow_records,
    };
    // SAFETY: the handler only stores to an atomic. A supervisor may start us with the signals
    // blocked (the mask survives exec): unblock them, or SIGTERM would never stop the agent.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
    }
    let agent = if kubernetes {
        // Until the API server answers, a previous agent's pinned programs keep enforcing
        // its last policy: wait for the API rather than start without it.
        let opts = bulkhead_agent::kubernetes::KubeOptions { api: bulkhead_agent::kubernetes::ApiOptions { kubeconfig, ..Default::default() }, ..Default::default() };
        let store = loop {
            match bulkhead_agent::kubernetes::KubeDatastore::connect(&opts) {
                Ok((store, _)) => break store,
                Err(e) if STOP.load(Ordering::SeqCst) => return Err(e).context("connecting to the Kubernetes API"),
                Err(e) => eprintln!("bulkhead agent: waiting for the Kubernetes API: {e}"),
            }
        };
        bulkhead_agent::Agent::start_with(cfg, Box::new(store)).context("starting the agent")?
    } else {
        bulkhead_agent::Agent::start(cfg).context("starting the agent")?
    };
    let pin_dir = bulkhead_agent::AgentConfig::default_pin_dir(&instance);
    // A metrics endpoint that cannot bind (the port taken, e.g. by a second instance) is
    // reported and left out: enforcement never waits for it. A malformed address is refused
    // before the agent starts (in main).
    let _metrics = if metrics_listen == "off" {
        None
    } else {
        let state_dir = PathBuf::from("/run/bulkhead").join(&instance);
        match bulkhead_agent::metrics::serve(metrics_listen, pin_dir, state_dir, Some(agent.detector()), agent.sync_metrics()) {
            Ok(server) => {
                eprintln!("bulkhead agent: metrics at http://{}/metrics", server.addr());
                Some(server)
            }
            Err(e) => {
                eprintln!("bulkhead agent: no metrics endpoint: {e} (--metrics-listen ADDR or off)");
                None
            }
        }
    };
    eprintln!(
        "bulkhead agent running (instance {instance}, pid {}); SIGTERM/Ctrl-C stop it and leave the kernel enforcing; \
         `bulkhead agent uninstall --instance {instance}` removes it",
        std::process::id()
    );
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
    }
    // As Cilium and Calico do on a DaemonSet rollout: the programs stay attached with the
    // last policy and isolation, and the next agent adopts them.
    let kept = agent.stop_keep_enforcing().context("stopping the agent")?;
    eprintln!("bulkhead agent stopped; {kept} links stay attached and enforcing");
    Ok(0)
}

fn run_uninstall(instance: &str) -> anyhow::Result<i32> {
    let r = bulkhead_agent::uninstall(instance).with_context(|| format!("uninstalling agent instance {instance:?}"))?;
    println!(
        "instance {instance}: detached {} links, removed {} pins and {} runtime files",
        r.links.len(),
        r.pins.len(),
        r.state.len()
    );
    for p in r.links.iter().chain(&r.pins).chain(&r.state) {
        println!("  removed {}", p.display());
    }
    Ok(0)
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("BULKHEAD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Agent { action: Some(AgentAction::Uninstall { instance }), .. } => run_uninstall(&instance)?,
        Command::Agent { action: None, datastore, kubeconfig, node_netns, instance, metrics_listen, flow_records } => {
            let datastore = datastore.context("bulkhead agent: --datastore DIR|kubernetes is required")?;
            bulkhead_agent::instance::validate_name(&instance)?;
            if metrics_listen != "off" {
                metrics_listen
                    .parse::<std::net::SocketAddr>()
                    .with_context(|| format!("--metrics-listen {metrics_listen:?}: expected ADDRESS:PORT (e.g. 127.0.0.1:9964) or off"))?;
            }
            run_agent(datastore, kubeconfig, node_netns, instance, &metrics_listen, flow_records == "on")?
        }
        Command::Crds => {
            print!("{}", bulkhead_agent::crds::render_yaml(&bulkhead_agent::crds::agent_crds()));
            0
        }
        Command::Status { instance, json } => {
            let dir = bulkhead_agent::AgentConfig::default_pin_dir(&instance);
            let st = bulkhead_agent::status::read(&dir)
                .with_context(|| format!("is an agent instance {instance:?} running? (no pins at {})", dir.display()))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                println!("instance {} (pins in {})", instance, st.pin_dir);
                println!("  policy revision   {}", st.policy_rev);
                println!("  endpoints         {}", st.endpoints);
                println!("  ip cache entries  {}", st.ipcache_entries);
                println!(
                    "  policy peers      {} (verdict tables: {} slices, +{} port, {} range exceptions)",
                    st.policy_peers, st.policy_slices, st.policy_ports, st.policy_ranges
                );
                println!("  conntrack entries {} IPv4, {} IPv6", st.conntrack_entries, st.conntrack6_entries);
                println!("  datapath counters:");
                for (k, v) in &st.counters {
                    println!("    {k:<34} {v}");
                }
                if !st.drops.is_empty() {
                    println!("  drops by reason          ingress     egress");
                    for d in &st.drops {
                        println!("    {:<34} {:>10} {:>10}", d.reason, d.ingress, d.egress);
                    }
                }
            }
            0
        }
        Command::Policy(cmd) => run_policy(cmd)?,
        Command::Flows { action: Some(FlowsAction::Graph { instance, output, last }), .. } => servicemap_cli::graph(&instance, &output, last)?,
        Command::Flows { action: None, instance, last, follow, output, json, namespace, pod, labels, verdict, port, protocol, policy, direction } => {
            let args = flows_cli::FilterArgs { namespace, pod, labels, verdict, port, protocol, policy, direction };
            run_flows(&instance, &args, last, if json { "jsonl".into() } else { output }, follow)?
        }
        Command::Prefilter(cmd) => run_prefilter(cmd)?,
        Command::Detector(DetectorCommand::Status { instance, json }) => detector_cli::status(&instance, json)?,
        Command::Detector(DetectorCommand::Profile(ProfileCommand::List { instance, json })) => detector_cli::profile_list(&instance, json)?,
        Command::Detector(DetectorCommand::Profile(ProfileCommand::Show { name, instance, json })) => {
            detector_cli::profile_show(&instance, &name, json)?
        }
        Command::Detector(DetectorCommand::Profile(ProfileCommand::Export { name, instance })) => detector_cli::profile_export(&instance, &name)?,
        Command::Detector(DetectorCommand::Profile(ProfileCommand::Import { file, instance, timeout, json })) => {
            detector_cli::profile_import(&instance, &file, std::time::Duration::from_secs(timeout), json)?
        }
        Command::Detector(DetectorCommand::Events { instance, json }) => detector_cli::events(&instance, json)?,
        Command::Detector(DetectorCommand::Release { instance, cgroup, json }) => detector_cli::release(&instance, &cgroup, json)?,
        Command::Lab(cmd) => bulkhead_lab::run(cmd)?,
        Command::Ui { instance, listen } => servicemap_cli::ui(&instance, &listen)?,
    };
    std::process::exit(code);
}
