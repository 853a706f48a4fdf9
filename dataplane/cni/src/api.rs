//! The wire format between `bulkhead-cni` and the node agent: one JSON request per line over
//! the agent's Unix socket (`/run/bulkhead/<instance>.sock`), one JSON response line back.
//! The agent answers an `add` only once the endpoint's programs are attached and its policy
//! entries written, so the container's first packet is already judged.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    net::IpAddr,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// Folder of the agents' sockets, locks and runtime files.
pub const RUN_DIR: &str = "/run/bulkhead";

/// The control socket of an agent instance.
pub fn socket_path(instance: &str) -> PathBuf {
    Path::new(RUN_DIR).join(format!("{instance}.sock"))
}

/// Where DELs that found no agent wait for it (the agent replays them when it starts).
pub fn del_queue_dir(instance: &str) -> PathBuf {
    Path::new(RUN_DIR).join(instance).join("cni-del-queue")
}

/// One attachment of a container to the pod network, as the CNI runtime described it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub container_id: String,
    /// The interface inside the container (`CNI_IFNAME`).
    pub ifname: String,
    /// The container's network namespace (`CNI_NETNS`).
    pub netns: String,
    /// The host side of the container's veth (its peer, found from inside the netns).
    pub host_interface: String,
    /// The container interface's addresses, both families (a dual-stack pod lists both).
    pub ips: Vec<IpAddr>,
    /// From `CNI_ARGS` `K8S_POD_NAMESPACE` (default `default`) and `K8S_POD_NAME` (default:
    /// the container id).
    pub pod_namespace: String,
    pub pod_name: String,
    /// The container's cgroup, when the runtime or a later step knows it.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
}

impl Attachment {
    /// The registry key: one attachment per (container, interface).
    pub fn key(&self) -> (String, String) {
        (self.container_id.clone(), self.ifname.clone())
    }
}

/// A request to the agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// Register (or replace) an attachment; answered once it is enforced.
    Add(Attachment),
    /// Forget an attachment; idempotent.
    Del { container_id: String, ifname: String },
    /// Whether an attachment is registered, its programs attached and its entry written.
    Check { container_id: String, ifname: String },
    /// Whether the agent is ready.
    Status,
    /// Forget every attachment not in `valid` (container id, ifname).
    Gc { valid: Vec<(String, String)> },
}

/// The agent's answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    /// What went wrong, naming the object.
    #[serde(default)]
    pub error: Option<String>,
    /// The host interface's index, for an `add`.
    #[serde(default)]
    pub ifindex: Option<u32>,
}

impl Response {
    pub fn ok() -> Response {
        Response { ok: true, ..Default::default() }
    }

    pub fn err(e: impl Into<String>) -> Response {
        Response { ok: false, error: Some(e.into()), ifindex: None }
    }
}

/// Sends one request to the agent at `socket` and waits up to `timeout` for its answer.
/// An error here means the agent could not be asked (not running, not answering).
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> std::io::Result<Response> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut line = serde_json::to_string(req).map_err(std::io::Error::other)?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer)?;
    serde_json::from_str(&answer).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("agent answer {answer:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_as_tagged_json() {
        let a = Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
            netns: "/run/netns/x".into(),
            host_interface: "veth1".into(),
            ips: vec![std::net::Ipv4Addr::new(10, 88, 0, 2).into()],
            pod_namespace: "default".into(),
            pod_name: "a".into(),
            cgroup: None,
        };
        for r in [Request::Add(a), Request::Del { container_id: "c1".into(), ifname: "eth0".into() }, Request::Status] {
            let j = serde_json::to_string(&r).expect("serialise");
            assert!(j.contains("\"op\":"), "{j}");
            assert_eq!(serde_json::from_str::<Request>(&j).expect("parse"), r);
        }
    }
}
