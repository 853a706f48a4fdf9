//! A lab instance: one node network namespace, one namespace per pod wired Calico-style, one
//! "outside" client namespace, a cgroup per pod, and an echo server in every pod.
use std::io::Read;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::error::{LabError, Result};
use crate::netns;
use crate::rtnl::{self, Rtnl};
use crate::server::{self, Server};
use crate::teardown::{self, CGROUP_ROOT, PIN_ROOT, Plan, STATE_ROOT};
use crate::topology::{Protocol, Topology};

/// The gateway every pod routes through; it answers ARP from the node namespace.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// The IPv6 gateway of dual-stack pods: a link-local address on the host side of every
/// veth (as Calico's fe80::ecee:eeff:feee:eeee), so it needs no route of its own.
pub const GATEWAY6: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
/// The outside client's address.
pub const OUTSIDE_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
/// The key the outside client has in matrices.
pub const OUTSIDE_KEY: &str = "outside";

/// Options for [`Lab::create`].
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Binary that provides `lab serve`; `None` = `$BULKHEAD_BIN` or the running executable.
    pub server_bin: Option<PathBuf>,
    /// Start echo servers in the pods.
    pub serve: bool,
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions { server_bin: None, serve: true }
    }
}

/// One endpoint of the lab: a pod, or the outside client.
#[derive(Debug, Clone)]
pub struct PodNetns {
    /// `namespace/name`, or [`OUTSIDE_KEY`].
    pub key: String,
    /// Network namespace name under /var/run/netns.
    pub netns: String,
    /// The endpoint's IPv4 address (on its `eth0`).
    pub ip: Ipv4Addr,
    /// Its IPv6 address, for a dual-stack pod.
    pub ip6: Option<Ipv6Addr>,
    /// The host-side veth, in the node namespace.
    pub host_veth: String,
    /// The pod's cgroup v2 directory (none for the outside client).
    pub cgroup: Option<PathBuf>,
}

/// A live lab. Dropping it tears everything down.
pub struct Lab {
    id: String,
    topology: Topology,
    node_netns: String,
    pods: Vec<PodNetns>,
    outside: Option<PodNetns>,
    state_dir: PathBuf,
    plan: Arc<Mutex<Plan>>,
    servers: Vec<Server>,
}

impl Lab {
    /// Builds the lab for `topology`; returns once every echo server listens.
    ///
    /// On error, whatever was already created is torn down before returning.
    pub fn create(topology: &Topology, options: &LabOptions) -> Result<Lab> {
        if topology.pods.iter().any(|p| p.ip == OUTSIDE_IP) {
            return Err(LabError::invalid(&topology.file.display().to_string(), "pods", format!("{OUTSIDE_IP} is reserved for the outside client")));
        }
        let id = fresh_id()?;
        let started = Instant::now();
        let plan = Arc::new(Mutex::new(Plan {
            id: id.clone(),
            pin_dir: Some(Path::new(PIN_ROOT).join(format!("bh-{id}"))),
            state_dir: Some(Path::new(STATE_ROOT).join(format!("bh-{id}"))),
            ..Default::default()
        }));
        teardown::register(plan.clone());
        let mut lab = Lab {
            id: id.clone(),
            topology: topology.clone(),
            node_netns: format!("bh-{id}-node"),
            pods: Vec::new(),
            outside: None,
            state_dir: Path::new(STATE_ROOT).join(format!("bh-{id}")),
            plan,
            servers: Vec::new(),
        };
        // From here on, `?` drops `lab`, whose Drop undoes the partial setup.
        lab.build(options)?;
        tracing::info!(id = %lab.id, pods = lab.pods.len(), ms = started.elapsed().as_millis() as u64, "lab ready");
        Ok(lab)
    }

    fn build(&mut self, options: &LabOptions) -> Result<()> {
        let ds = self.datastore_dir();
        std::fs::create_dir_all(&ds).map_err(|e| LabError::io(&ds, e))?;
        // Lets `lab cleanup` tell a live lab (of another process) from a crashed one's.
        let owner = self.state_dir.join(teardown::OWNER_FILE);
        std::fs::write(&owner, std::process::id().to_string()).map_err(|e| LabError::io(&owner, e))?;

        let node = self.node_netns.clone();
        self.add_netns(&node)?;
        // One socket for the node's whole wiring (every pod's host side and route).
        let mut node_nl = Rtnl::open(&node)?;
        node_nl.set_up("lo")?;
        // A local gateway address makes every veth answer ARP for it (weak host model);
        // proxy_arp below answers for pod IPs as Calico does.
        node_nl.add_address("lo", GATEWAY)?;
        netns::set_ipv4_sysctls(
            &node,
            &[
                ("ip_forward".into(), "1"),
                ("conf/all/rp_filter".into(), "0"),
                ("conf/default/rp_filter".into(), "0"),
            ],
        )?;

        let cg_parent = Path::new(CGROUP_ROOT).join(format!("bh-{}", self.id));
        std::fs::create_dir(&cg_parent).map_err(|e| LabError::io(&cg_parent, e))?;
        self.plan.lock().unwrap().cgroup_parent = Some(cg_parent.clone());

        let mut sysctls = Vec::new();
        let pods: Vec<_> = self.topology.pods.iter().map(|p| (p.key(), p.ip, p.ip6)).collect();
        let dual_stack = pods.iter().any(|p| p.2.is_some());
        for (idx, (key, pod_ip, pod_ip6)) in pods.into_iter().enumerate() {
            let ep = PodNetns {
                key,
                netns: format!("bh-{}-p{idx}", self.id),
                ip: pod_ip,
                ip6: pod_ip6,
                host_veth: format!("bh{}p{idx}", self.id),
                cgroup: Some(cg_parent.join(format!("p{idx}"))),
            };
            self.wire(&mut node_nl, &ep, &mut sysctls)?;
            let cg = ep.cgroup.clone().unwrap();
            std::fs::create_dir(&cg).map_err(|e| LabError::io(&cg, e))?;
            self.plan.lock().unwrap().cgroups.insert(0, cg);
            self.pods.push(ep);
        }
        let out = PodNetns {
            key: OUTSIDE_KEY.into(),
            netns: format!("bh-{}-out", self.id),
            ip: OUTSIDE_IP,
            ip6: None,
            host_veth: format!("bh{}out", self.id),
            cgroup: None,
        };
        self.wire(&mut node_nl, &out, &mut sysctls)?;
        self.outside = Some(out);
        netns::set_ipv4_sysctls(&node, &sysctls)?;
        if dual_stack {
            netns::set_net_sysctls(&node, &[("ipv6/conf/all/forwarding".to_string(), "1")])?;
        }

        if options.serve {
            self.start_servers(options)?;
        }
        Ok(())
    }

    fn add_netns(&self, name: &str) -> Result<()> {
        if teardown::shutting_down() {
            return Err(LabError::Sys { context: format!("creating netns {name}"), source: std::io::ErrorKind::Interrupted.into() });
        }
        // Recorded first so a half-made namespace is still deleted.
        self.plan.lock().unwrap().netns.push(name.to_string());
        rtnl::add_netns(name)
    }

    /// Creates the endpoint's netns and veth pair and routes it from the node namespace.
    /// `node_nl` is the node namespace's socket.
    fn wire(&self, node_nl: &mut Rtnl, ep: &PodNetns, sysctls: &mut Vec<(String, &'static str)>) -> Result<()> {
        let (ns, veth) = (ep.netns.as_str(), ep.host_veth.as_str());
        self.add_netns(ns)?;
        node_nl.add_veth(veth, "eth0", ns)?;
        let mut pod_nl = Rtnl::open(ns)?;
        pod_nl.set_up("lo")?;
        pod_nl.add_address("eth0", ep.ip)?;
        pod_nl.set_up("eth0")?;
        pod_nl.add_default_route_onlink(GATEWAY, "eth0")?;
        if let Some(ip6) = ep.ip6 {
            pod_nl.add_prefix("eth0", ip6.into(), 128)?;
            node_nl.add_prefix(veth, GATEWAY6.into(), 64)?;
        }
        node_nl.set_up(veth)?;
        node_nl.add_host_route(ep.ip, veth)?;
        if let Some(ip6) = ep.ip6 {
            pod_nl.add_default_route6(GATEWAY6, "eth0")?;
            node_nl.add_host_route6(ip6, veth)?;
        }
        sysctls.push((format!("conf/{veth}/proxy_arp"), "1"));
        sysctls.push((format!("conf/{veth}/rp_filter"), "0"));
        sysctls.push((format!("neigh/{veth}/proxy_delay"), "0"));
        Ok(())
    }

    fn start_servers(&mut self, options: &LabOptions) -> Result<()> {
        let bin = match &options.server_bin {
            Some(b) => b.clone(),
            None => server::server_binary()?,
        };
        let mut pending = Vec::new();
        for (idx, pod) in self.topology.pods.iter().enumerate() {
            let ports = self.topology.ports_of(pod);
            let tcp: Vec<u16> = ports.iter().filter(|p| p.protocol == Protocol::Tcp).map(|p| p.port).collect();
            let udp: Vec<u16> = ports.iter().filter(|p| p.protocol == Protocol::Udp).map(|p| p.port).collect();
            let ep = &self.pods[idx];
            let (srv, rx) = server::spawn_in_pod(&bin, &ep.netns, ep.cgroup.as_ref().unwrap(), &tcp, &udp)?;
            self.servers.push(srv);
            pending.push((ep.netns.clone(), rx));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for (ns, rx) in &pending {
            server::wait_ready(ns, rx, deadline)?;
        }
        Ok(())
    }

    /// The lab's id (5 hex characters); every name it creates contains it.
    pub fn id(&self) -> &str {
        &self.id
    }
    /// The topology the lab was built from.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }
    /// The node namespace (host-side veths and pod routes live there).
    pub fn node_netns(&self) -> &str {
        &self.node_netns
    }
    /// Pod endpoints, indexed like `topology().pods`.
    pub fn pods(&self) -> &[PodNetns] {
        &self.pods
    }
    /// A pod endpoint by `namespace/name`, or the outside client by [`OUTSIDE_KEY`].
    pub fn endpoint(&self, key: &str) -> Option<&PodNetns> {
        self.pods.iter().chain(self.outside.iter()).find(|p| p.key == key)
    }
    /// The outside client endpoint.
    pub fn outside(&self) -> &PodNetns {
        self.outside.as_ref().expect("created with the lab")
    }
    /// Directory the datastore YAML files go in.
    pub fn datastore_dir(&self) -> PathBuf {
        self.state_dir.join("datastore")
    }

    /// Starts the agent on this lab: its node namespace, datastore folder and pin folder.
    /// With `watch` the agent follows datastore changes on its own; without, callers sync.
    pub fn start_agent(&self, watch: bool) -> Result<bulkhead_agent::Agent> {
        bulkhead_agent::Agent::start(self.agent_config(watch)).map_err(|e| crate::error::LabError::Agent(e.to_string()))
    }

    /// The configuration of this lab's agent.
    pub fn agent_config(&self, watch: bool) -> bulkhead_agent::AgentConfig {
        bulkhead_agent::AgentConfig {
            datastore_dir: self.datastore_dir(),
            node_netns: Some(self.node_netns().to_string()),
            pin_dir: self.pin_dir(),
            watch,
            flow_records: true,
        }
    }

    /// The agent's bpffs pin directory for this lab.
    pub fn pin_dir(&self) -> PathBuf {
        Path::new(PIN_ROOT).join(format!("bh-{}", self.id))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let plan = teardown::unregister(&self.id).unwrap_or_else(|| self.plan.clone());
        let plan = plan.lock().unwrap().clone();
        let mut children: Vec<_> = self.servers.drain(..).map(|s| s.child).collect();
        teardown::run_plan(&plan, &mut children);
        tracing::info!(id = %self.id, "lab torn down");
    }
}

/// A 5-hex-digit id not used by any existing lab.
fn fresh_id() -> Result<String> {
    for _ in 0..16 {
        let mut b = [0u8; 3];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut b))
            .map_err(|e| LabError::io("/dev/urandom", e))?;
        let id = format!("{:02x}{:02x}{:02x}", b[0], b[1], b[2])[..5].to_string();
        let taken = Path::new(netns::NETNS_DIR).join(format!("bh-{id}-node")).exists()
            || Path::new(CGROUP_ROOT).join(format!("bh-{id}")).exists();
        if !taken {
            return Ok(id);
        }
    }
    Err(LabError::Sys { context: "no free lab id".into(), source: std::io::Error::other("16 collisions") })
}
