//! Endpoints registered by the CNI plugin: the attachments (container, interface, host veth,
//! addresses, pod name, cgroup) the runtime reported, kept on disk so a restarted agent still
//! knows them, and laid over the datastore's model at every sync: a registered pod gets its
//! address, host interface and cgroup from its attachment and its labels from the datastore
//! (a pod the datastore does not know yet is enforced with no labels, so namespace-wide
//! policies still hold for it).
//!
//! The control socket (`/run/bulkhead/<instance>.sock`) takes one JSON request per connection
//! ([`bulkhead_cni::api`]) from a thread of its own and hands it to the agent thread, which
//! answers once the change is enforced.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    sync::mpsc,
    time::Duration,
};

use bulkhead_cni::api::{Attachment, Request, Response};
use policy_compiler::model::{Model, Namespace, Pod, PodRef};

use crate::{detect::policy::DetectorInput, error::AgentError};

/// The registered attachments of one instance, mirrored in `<state dir>/endpoints/*.json`.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    dir: PathBuf,
    entries: BTreeMap<(String, String), Attachment>,
}

fn file_name(key: &(String, String)) -> String {
    format!("{}-{}.json", key.0, key.1)
}

impl Registry {
    /// Loads what an earlier agent registered under `state_dir`.
    pub fn load(state_dir: &Path) -> Registry {
        let dir = state_dir.join("endpoints");
        let mut entries = BTreeMap::new();
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.extension().and_then(|x| x.to_str()) != Some("json") {
                    continue;
                }
                match std::fs::read(&p).map_err(|e| e.to_string()).and_then(|b| serde_json::from_slice::<Attachment>(&b).map_err(|e| e.to_string())) {
                    Ok(a) => {
                        entries.insert(a.key(), a);
                    }
                    Err(e) => tracing::error!(file = %p.display(), error = %e, "registered endpoint unreadable; skipped"),
                }
            }
        }
        Registry { dir, entries }
    }

    /// Registers (or replaces) an attachment, on disk first (atomically).
    pub fn insert(&mut self, a: Attachment) -> Result<(), AgentError> {
        let key = a.key();
        let path = self.dir.join(file_name(&key));
        let tmp = self.dir.join(format!(".{}.tmp", file_name(&key)));
        let bytes = serde_json::to_vec_pretty(&a).map_err(|e| AgentError::Datastore { path: path.clone(), detail: e.to_string() })?;
        std::fs::create_dir_all(&self.dir)
            .and_then(|()| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| AgentError::Datastore { path, detail: e.to_string() })?;
        self.entries.insert(key, a);
        Ok(())
    }

    /// Forgets an attachment; true when it was registered.
    pub fn remove(&mut self, container_id: &str, ifname: &str) -> bool {
        let key = (container_id.to_string(), ifname.to_string());
        let _ = std::fs::remove_file(self.dir.join(file_name(&key)));
        self.entries.remove(&key).is_some()
    }

    pub fn get(&self, container_id: &str, ifname: &str) -> Option<&Attachment> {
        self.entries.get(&(container_id.to_string(), ifname.to_string()))
    }

    /// Keys of every registered attachment.
    pub fn keys(&self) -> Vec<(String, String)> {
        self.entries.keys().cloned().collect()
    }

    /// Applies the DELs the plugin queued while no agent ran.
    pub fn replay_del_queue(&mut self, queue: &Path) -> usize {
        let Ok(rd) = std::fs::read_dir(queue) else { return 0 };
        let mut n = 0;
        for e in rd.flatten() {
            let p = e.path();
            if let Ok(Request::Del { container_id, ifname }) = std::fs::read(&p).map_err(|_| ()).and_then(|b| serde_json::from_slice(&b).map_err(|_| ())) {
                self.remove(&container_id, &ifname);
                n += 1;
            }
            let _ = std::fs::remove_file(&p);
        }
        n
    }

    /// Finds the cgroup of attachments that have none yet: the runtime calls ADD before the
    /// container's first process exists, so the agent looks later for a process in the
    /// attachment's network namespace and takes its cgroup v2 path. Returns whether any
    /// attachment got one (the caller then syncs, so the detector binds to it).
    pub fn resolve_cgroups(&mut self) -> bool {
        let pending: Vec<(String, String)> = self.entries.iter().filter(|(_, a)| a.cgroup.is_none()).map(|(k, _)| k.clone()).collect();
        if pending.is_empty() {
            return false;
        }
        let mut found = false;
        for key in pending {
            let Some(a) = self.entries.get(&key) else { continue };
            let Some(cg) = cgroup_in_netns(&a.netns) else { continue };
            let mut a = a.clone();
            tracing::info!(container = %a.container_id, cgroup = %cg.display(), "container cgroup found");
            a.cgroup = Some(cg);
            if self.insert(a).is_ok() {
                found = true;
            }
        }
        found
    }

    /// Lays the attachments over the datastore's model (address, host interface) and the
    /// detector's input (cgroup).
    pub fn overlay(&self, model: &mut Model, detector: &mut DetectorInput) {
        for a in self.entries.values() {
            let r = PodRef::new(&a.pod_namespace, &a.pod_name);
            let ip = a.ips.iter().find_map(|a| match a {
                std::net::IpAddr::V4(a) => Some(*a),
                _ => None,
            });
            let ip6 = a.ips.iter().find_map(|a| match a {
                std::net::IpAddr::V6(a) => Some(*a),
                _ => None,
            });
            match model.pods.get_mut(&r) {
                Some(p) => {
                    p.ip = p.ip.or(ip);
                    p.ip6 = p.ip6.or(ip6);
                    p.interface = Some(a.host_interface.clone());
                }
                None => {
                    if !model.namespaces.contains_key(&a.pod_namespace) {
                        let mut labels = policy_compiler::model::Labels::new();
                        labels.insert(policy_compiler::k8s::NAMESPACE_NAME_LABEL.to_string(), a.pod_namespace.clone());
                        model.upsert_namespace(Namespace { name: a.pod_namespace.clone(), labels });
                    }
                    model.upsert_pod(Pod {
                        namespace: a.pod_namespace.clone(),
                        name: a.pod_name.clone(),
                        labels: Default::default(),
                        service_account: "default".into(),
                        ip,
                        ip6,
                        ports: Vec::new(),
                        interface: Some(a.host_interface.clone()),
                    });
                }
            }
            // A cgroup that is gone (the container exited) is not handed on: the detector
            // would reject the whole sync for it.
            if let Some(cg) = a.cgroup.as_ref().filter(|c| c.is_dir()) {
                detector.cgroups.entry((a.pod_namespace.clone(), a.pod_name.clone())).or_insert_with(|| cg.clone());
            }
        }
    }
}

/// Where cgroup v2 is mounted on this machine kind (hybrid layout), else the unified root.
fn cgroup2_root() -> &'static Path {
    if Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() { Path::new("/sys/fs/cgroup/unified") } else { Path::new("/sys/fs/cgroup") }
}

/// The cgroup v2 folder of a process living in the network namespace at `netns`.
fn cgroup_in_netns(netns: &str) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt as _;
    let want = std::fs::metadata(netns).ok()?;
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())) else { continue };
        let Ok(ns) = std::fs::metadata(format!("/proc/{pid}/ns/net")) else { continue };
        if ns.ino() != want.ino() || ns.dev() != want.dev() {
            continue;
        }
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
        let path = cgroup2_root().join(rel.trim_start_matches('/'));
        if path.is_dir() && rel != "/" {
            return Some(path);
        }
    }
    None
}

/// A request from the socket thread, with where the answer goes.
pub type Pending = (Request, mpsc::Sender<Response>);

/// The running control socket; [`ControlSocket::close`] ends its thread and removes it.
pub struct ControlSocket {
    path: PathBuf,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl ControlSocket {
    /// Stops accepting (the blocked accept is woken by one last connection) and removes the
    /// socket file.
    pub fn close(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::os::unix::net::UnixStream::connect(&self.path);
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listens on `path` (replacing a stale socket) and hands every request to `forward` until
/// closed or until `forward` reports the agent gone.
pub fn spawn_control_socket(path: &Path, forward: impl Fn(Pending) -> bool + Send + 'static) -> Result<ControlSocket, AgentError> {
    let _ = std::fs::remove_file(path);
    if let Some(d) = path.parent() {
        let _ = std::fs::create_dir_all(d);
    }
    let listener = UnixListener::bind(path).map_err(|e| AgentError::Datastore { path: path.to_path_buf(), detail: format!("control socket: {e}") })?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handle = ControlSocket { path: path.to_path_buf(), stop: stop.clone() };
    std::thread::Builder::new()
        .name("bh-control".into())
        .spawn(move || {
            for conn in listener.incoming() {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut line = String::new();
                if BufReader::new(&conn).read_line(&mut line).is_err() {
                    continue;
                }
                let answer = match serde_json::from_str::<Request>(&line) {
                    Err(e) => Response::err(format!("bad request: {e}")),
                    Ok(req) => {
                        let (tx, rx) = mpsc::channel();
                        if !forward((req, tx)) {
                            break;
                        }
                        rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| Response::err("the agent did not answer"))
                    }
                };
                let _ = writeln!(conn, "{}", serde_json::to_string(&answer).unwrap_or_default());
            }
        })
        .map_err(|_| AgentError::Stopped)?;
    Ok(handle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(c: &str, ns: &str, pod: &str) -> Attachment {
        Attachment {
            container_id: c.into(),
            ifname: "eth0".into(),
            netns: "/run/netns/x".into(),
            host_interface: format!("veth{c}"),
            ips: vec!["10.88.0.9".parse().expect("ip")],
            pod_namespace: ns.into(),
            pod_name: pod.into(),
            cgroup: Some(std::env::temp_dir()),
        }
    }

    #[test]
    fn registrations_survive_a_restart_and_overlay_the_model() {
        let dir = std::env::temp_dir().join(format!("bh-registry-{}", std::process::id()));
        let mut r = Registry::load(&dir);
        r.insert(att("c1", "shop", "web")).expect("insert");
        r.insert(att("c2", "new", "x")).expect("insert");
        let r2 = Registry::load(&dir);
        assert_eq!(r2.keys().len(), 2, "reloaded from disk");
        let mut model = Model::default();
        let mut labels = policy_compiler::model::Labels::new();
        labels.insert("app".into(), "web".into());
        model.upsert_namespace(Namespace { name: "shop".into(), labels: Default::default() });
        model.upsert_pod(Pod { namespace: "shop".into(), name: "web".into(), labels, service_account: "default".into(), ip: None, ip6: None, ports: vec![], interface: None });
        let mut det = DetectorInput::default();
        r2.overlay(&mut model, &mut det);
        let web = &model.pods[&PodRef::new("shop", "web")];
        assert_eq!((web.ip, web.interface.as_deref(), web.labels.get("app").map(String::as_str)), (Some("10.88.0.9".parse().unwrap()), Some("vethc1"), Some("web")));
        assert!(model.pods.contains_key(&PodRef::new("new", "x")) && model.namespaces.contains_key("new"), "unknown pod enforced without labels");
        assert_eq!(det.cgroups.len(), 2);
        // A queued DEL is applied at the next start.
        let q = dir.join("q");
        std::fs::create_dir_all(&q).unwrap();
        std::fs::write(q.join("c1-eth0.json"), serde_json::to_vec(&Request::Del { container_id: "c1".into(), ifname: "eth0".into() }).unwrap()).unwrap();
        let mut r3 = Registry::load(&dir);
        assert_eq!(r3.replay_del_queue(&q), 1);
        assert_eq!(Registry::load(&dir).keys(), vec![("c2".to_string(), "eth0".to_string())]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
