//! The Kubernetes datastore: the same [`Datastore`] as the folder of YAML, read from an API
//! server with kube-rs watchers.
//!
//! One watcher per kind runs on a small tokio runtime owned by the datastore; the agent's
//! thread only ever reads a snapshot. Each kind keeps the objects of its last complete list
//! plus the changes since: a relist (after a dropped watch or a 410 Gone) is buffered and
//! swapped in only when it is complete (`InitDone`), so a relist never shows the compiler a
//! half-listed cluster and never flips a verdict on its own. Each object is parsed when it
//! arrives; one the parsers reject is reported with its kind, namespace/name and field, and
//! its last good version stays in force (or nothing, if it never had one), as a bad file does
//! in the folder datastore.
//!
//! Every pod is watched, not only this node's: peers' labels decide verdicts. Endpoints on
//! this node come from the CNI plugin's registrations; the annotations naming a pod's host
//! interface and cgroup are taken from the API only when [`KubeOptions::trust_pod_annotations`]
//! is set (the lab, which plays kubelet and CNI itself), so an API object can never point the
//! agent at an interface.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;
use policy_compiler::k8s::Resource;
use policy_compiler::model::Model;
use serde_json::Value;

use crate::datastore::{Datastore, Notify};
use crate::detect::policy::DetectorInput;
use crate::error::AgentError;

/// A kind the agent watches.
#[derive(Clone, Copy, Debug)]
pub struct WatchedKind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
}

impl WatchedKind {
    const fn new(group: &'static str, version: &'static str, kind: &'static str, plural: &'static str) -> Self {
        WatchedKind { group, version, kind, plural }
    }

    /// `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_string() } else { format!("{}/{}", self.group, self.version) }
    }

    fn resource(&self) -> ApiResource {
        ApiResource {
            group: self.group.into(),
            version: self.version.into(),
            api_version: self.api_version(),
            kind: self.kind.into(),
            plural: self.plural.into(),
        }
    }

    fn is_detector_policy(&self) -> bool {
        self.kind == "DetectorPolicy"
    }
}

/// Everything the agent reads from the API: Namespaces, Pods, the policy kinds of Kubernetes,
/// AdminNetworkPolicy and Calico, and the detector's policies.
pub const WATCHED: [WatchedKind; 11] = [
    WatchedKind::new("", "v1", "Namespace", "namespaces"),
    WatchedKind::new("", "v1", "Pod", "pods"),
    WatchedKind::new("networking.k8s.io", "v1", "NetworkPolicy", "networkpolicies"),
    WatchedKind::new("policy.networking.k8s.io", "v1alpha1", "AdminNetworkPolicy", "adminnetworkpolicies"),
    WatchedKind::new("policy.networking.k8s.io", "v1alpha1", "BaselineAdminNetworkPolicy", "baselineadminnetworkpolicies"),
    WatchedKind::new("projectcalico.org", "v3", "Tier", "tiers"),
    WatchedKind::new("projectcalico.org", "v3", "NetworkPolicy", "networkpolicies"),
    WatchedKind::new("projectcalico.org", "v3", "GlobalNetworkPolicy", "globalnetworkpolicies"),
    WatchedKind::new("projectcalico.org", "v3", "StagedNetworkPolicy", "stagednetworkpolicies"),
    WatchedKind::new("projectcalico.org", "v3", "StagedGlobalNetworkPolicy", "stagedglobalnetworkpolicies"),
    WatchedKind::new("bulkhead.io", "v1alpha1", "DetectorPolicy", "detectorpolicies"),
];

/// How the datastore connects.
#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// A kubeconfig file; `None` infers (`KUBECONFIG`, `~/.kube/config`, then in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// How long [`KubeDatastore::connect`] waits for every kind's first complete list.
    pub ready_timeout: Duration,
    /// Take `bulkhead.io/interface` and `bulkhead.io/cgroup` from Pod annotations (the lab
    /// only: in a cluster the CNI plugin says where a pod is).
    pub trust_pod_annotations: bool,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions { kubeconfig: None, ready_timeout: Duration::from_secs(30), trust_pod_annotations: false }
    }
}

/// One object as last seen, with its last version the parsers accepted.
#[derive(Clone, Debug, Default)]
struct Obj {
    /// Text and policy documents of the last accepted version.
    good: Option<(String, Vec<Resource>)>,
    /// Why the newest version was rejected, if it was.
    error: Option<String>,
}

#[derive(Debug, Default)]
struct KindState {
    ready: bool,
    /// Set when the kind is not served (its CRD is not installed): it counts as empty.
    absent: Option<String>,
    objects: BTreeMap<(String, String), Obj>,
    /// A relist in progress; swapped in at its end.
    relist: Option<BTreeMap<(String, String), Obj>>,
    /// Highest resourceVersion seen in an event of this kind.
    seen_rv: u64,
    /// When the relist in progress started.
    list_started: Option<Instant>,
    /// When the last complete list started: it reflects every write made before.
    listed_from: Option<Instant>,
    last_error: Option<String>,
}

struct Shared {
    kinds: Mutex<Vec<KindState>>,
    ready: Condvar,
    /// Bumped on every change a sync would see.
    generation: AtomicU64,
    notify: Mutex<Option<Notify>>,
    trust_pod_annotations: bool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Vec<KindState>> {
        self.kinds.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.ready.notify_all();
        let mut n = self.notify.lock().unwrap_or_else(|p| p.into_inner());
        if n.as_ref().is_some_and(|f| !f(true)) {
            *n = None;
        }
    }
}

/// A handle on a running [`KubeDatastore`] for tests and tools: waits until the watchers have
/// seen a write.
#[derive(Clone)]
pub struct KubeHandle(Arc<Shared>);

impl KubeHandle {
    /// Waits until the watcher of `api_version`/`kind` has seen a write made at `written`
    /// with resourceVersion `rv`: an event with that version (or a later one), or a complete
    /// list that started after the write (a deletion shows in a relist only by absence);
    /// and no relist of the kind is in progress. False on timeout.
    pub fn wait_seen(&self, api_version: &str, kind: &str, rv: u64, written: Instant, timeout: Duration) -> bool {
        let Some(i) = WATCHED.iter().position(|k| k.api_version() == api_version && k.kind == kind) else { return false };
        let deadline = Instant::now() + timeout;
        let mut g = self.0.lock();
        loop {
            let st = &g[i];
            if st.relist.is_none() && (st.seen_rv >= rv || st.listed_from.is_some_and(|t| t >= written)) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            g = self.0.ready.wait_timeout(g, left.min(Duration::from_millis(50))).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

/// The Kubernetes API datastore.
pub struct KubeDatastore {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
    server: String,
    last_generation: u64,
    /// Texts of the last load's pods and detector policies, for the detector.
    current: Vec<(String, String)>,
    rejected: Vec<String>,
}

impl KubeDatastore {
    /// Connects, starts one watcher per kind and waits until every kind has been listed once
    /// (a kind the server does not serve counts as empty). An API server that stays down or
    /// failing for `ready_timeout` is an error naming the kinds not listed.
    pub fn connect(opts: &KubeOptions) -> Result<(KubeDatastore, KubeHandle), AgentError> {
        let err = |detail: String| AgentError::Kubernetes { server: String::new(), detail };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bh-kube")
            .enable_all()
            .build()
            .map_err(|e| err(format!("tokio runtime: {e}")))?;
        let config = runtime.block_on(async {
            match &opts.kubeconfig {
                Some(p) => {
                    let kc = kube::config::Kubeconfig::read_from(p).map_err(|e| err(format!("kubeconfig {}: {e}", p.display())))?;
                    kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                        .await
                        .map_err(|e| err(format!("kubeconfig {}: {e}", p.display())))
                }
                None => kube::Config::infer().await.map_err(|e| err(format!("no kubeconfig or in-cluster config: {e}"))),
            }
        })?;
        let server = config.cluster_url.to_string();
        let client = {
            let _g = runtime.enter();
            kube::Client::try_from(config).map_err(|e| AgentError::Kubernetes { server: server.clone(), detail: e.to_string() })?
        };
        let shared = Arc::new(Shared {
            kinds: Mutex::new(WATCHED.iter().map(|_| KindState::default()).collect()),
            ready: Condvar::new(),
            generation: AtomicU64::new(0),
            notify: Mutex::new(None),
            trust_pod_annotations: opts.trust_pod_annotations,
        });
        for (i, k) in WATCHED.iter().enumerate() {
            runtime.spawn(watch_kind(client.clone(), i, *k, shared.clone()));
        }
        let store = KubeDatastore { shared: shared.clone(), runtime: Some(runtime), server: server.clone(), last_generation: 0, current: Vec::new(), rejected: Vec::new() };
        let deadline = Instant::now() + opts.ready_timeout;
        let mut g = shared.lock();
        while !g.iter().all(|k| k.ready) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let missing: Vec<String> = WATCHED
                    .iter()
                    .zip(g.iter())
                    .filter(|(_, s)| !s.ready)
                    .map(|(k, s)| format!("{} {} ({})", k.api_version(), k.kind, s.last_error.as_deref().unwrap_or("no answer")))
                    .collect();
                return Err(AgentError::Kubernetes {
                    server,
                    detail: format!("not listed within {:?}: {}", opts.ready_timeout, missing.join("; ")),
                });
            }
            g = shared.ready.wait_timeout(g, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        drop(g);
        Ok((store, KubeHandle(shared)))
    }
}

impl Drop for KubeDatastore {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The JSON the parsers read: apiVersion and kind set, server bookkeeping dropped, and a Pod's
/// location annotations removed unless trusted.
fn document(k: &WatchedKind, obj: DynamicObject, trust_pod_annotations: bool) -> Value {
    let mut v = serde_json::to_value(obj).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert("apiVersion".into(), k.api_version().into());
        o.insert("kind".into(), k.kind.into());
        if k.kind != "Pod" {
            o.remove("status");
        }
        if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
            for f in ["managedFields", "resourceVersion", "uid", "creationTimestamp", "generation", "selfLink"] {
                m.remove(f);
            }
            if k.kind == "Pod" && !trust_pod_annotations {
                if let Some(a) = m.get_mut("annotations").and_then(Value::as_object_mut) {
                    a.remove(policy_compiler::k8s::INTERFACE_ANNOTATION);
                    a.remove(crate::detect::policy::CGROUP_ANNOTATION);
                }
            }
        }
    }
    v
}

fn key_of(obj: &DynamicObject) -> (String, String) {
    (obj.metadata.namespace.clone().unwrap_or_default(), obj.metadata.name.clone().unwrap_or_default())
}

fn rv_of(obj: &DynamicObject) -> u64 {
    obj.metadata.resource_version.as_deref().and_then(|r| r.parse().ok()).unwrap_or(0)
}

/// Parses one object; a rejected version keeps the previous good one.
fn accept(k: &WatchedKind, obj: DynamicObject, previous: Option<&Obj>, trust: bool) -> Obj {
    let (ns, name) = key_of(&obj);
    let origin = if ns.is_empty() { format!("kubernetes {} {name}", k.kind) } else { format!("kubernetes {} {ns}/{name}", k.kind) };
    let text = serde_json::to_string_pretty(&document(k, obj, trust)).unwrap_or_default();
    let parsed = (|| -> Result<Vec<Resource>, String> {
        crate::detect::policy::parse_documents(&origin, &text, &mut DetectorInput::default())?;
        if k.is_detector_policy() {
            return Ok(Vec::new());
        }
        policy_compiler::k8s::parse_documents(&origin, &text).map_err(|e| e.to_string())
    })();
    match parsed {
        Ok(docs) => Obj { good: Some((text, docs)), error: None },
        Err(e) => Obj { good: previous.and_then(|p| p.good.clone()), error: Some(e) },
    }
}

/// The watcher of one kind, for the life of the runtime.
async fn watch_kind(client: kube::Client, i: usize, k: WatchedKind, shared: Arc<Shared>) {
    let api: Api<DynamicObject> = Api::all_with(client, &k.resource());
    let mut stream = watcher::watcher(api, watcher::Config::default()).default_backoff().boxed();
    let span = tracing::info_span!("kube_watch", kind = k.kind, group = k.group);
    while let Some(ev) = stream.next().await {
        let _g = span.enter();
        let trust = shared.trust_pod_annotations;
        let mut g = shared.lock();
        let st = &mut g[i];
        let changed = match ev {
            Ok(Event::Init) => {
                st.relist = Some(BTreeMap::new());
                st.list_started = Some(Instant::now());
                false
            }
            Ok(Event::InitApply(o)) => {
                st.seen_rv = st.seen_rv.max(rv_of(&o));
                let key = key_of(&o);
                let obj = accept(&k, o, st.objects.get(&key), trust);
                st.relist.get_or_insert_with(BTreeMap::new).insert(key, obj);
                false
            }
            Ok(Event::InitDone) => {
                // The complete list replaces the old state in one step.
                st.objects = st.relist.take().unwrap_or_default();
                st.listed_from = st.list_started.take();
                st.ready = true;
                st.absent = None;
                st.last_error = None;
                tracing::debug!(objects = st.objects.len(), "listed");
                true
            }
            Ok(Event::Apply(o)) => {
                st.seen_rv = st.seen_rv.max(rv_of(&o));
                let key = key_of(&o);
                let obj = accept(&k, o, st.objects.get(&key), trust);
                st.objects.insert(key, obj);
                true
            }
            Ok(Event::Delete(o)) => {
                st.seen_rv = st.seen_rv.max(rv_of(&o));
                st.objects.remove(&key_of(&o));
                true
            }
            Err(e) => {
                let not_served = matches!(&e, watcher::Error::InitialListFailed(kube::Error::Api(s)) if s.code == 404);
                let msg = e.to_string();
                st.last_error = Some(msg.clone());
                if not_served && !st.ready {
                    // The kind's CRD is not installed: nothing of it exists. The watcher
                    // keeps retrying and lists it once the CRD appears.
                    st.ready = true;
                    st.absent = Some(msg);
                    true
                } else if matches!(&e, watcher::Error::WatchError(s) if s.code == 410) {
                    tracing::info!(error = %msg, "watch history expired; listing again (the last complete state stays in force until the list is complete)");
                    false
                } else {
                    tracing::warn!(error = %msg, "watch failed; retrying (the last complete state stays in force)");
                    false
                }
            }
        };
        drop(g);
        if changed {
            shared.changed();
        } else {
            shared.ready.notify_all();
        }
    }
}

impl Datastore for KubeDatastore {
    fn load(&mut self) -> Result<Model, AgentError> {
        self.last_generation = self.shared.generation.load(Ordering::SeqCst);
        let g = self.shared.lock();
        let mut resources = Vec::new();
        let mut rejected = Vec::new();
        let mut current = Vec::new();
        for (k, st) in WATCHED.iter().zip(g.iter()) {
            if !st.ready {
                return Err(AgentError::Kubernetes { server: self.server.clone(), detail: format!("{} {} not listed yet", k.api_version(), k.kind) });
            }
            for ((ns, name), obj) in &st.objects {
                if let Some(e) = &obj.error {
                    let fate = if obj.good.is_some() { "its last good version stays in force" } else { "it is not applied" };
                    rejected.push(format!("{e} ({fate})"));
                }
                if let Some((text, docs)) = &obj.good {
                    resources.extend(docs.iter().cloned());
                    if k.kind == "Pod" || k.is_detector_policy() {
                        current.push((format!("kubernetes {} {ns}/{name}", k.kind), text.clone()));
                    }
                }
            }
        }
        drop(g);
        let model = policy_compiler::k8s::build_model(resources)
            .map_err(|e| AgentError::Invalid(format!("kubernetes datastore {}: {e}", self.server)))?;
        self.current = current;
        self.rejected = rejected;
        Ok(model)
    }

    fn poll_changed(&mut self) -> bool {
        self.shared.generation.load(Ordering::SeqCst) != self.last_generation
    }

    fn describe(&self) -> String {
        format!("kubernetes datastore {}", self.server)
    }

    fn load_detector(&self) -> Result<DetectorInput, AgentError> {
        let mut input = DetectorInput::default();
        for (name, text) in &self.current {
            crate::detect::policy::parse_documents(name, text, &mut input).map_err(|e| AgentError::Invalid(format!("{}: {e}", self.server)))?;
        }
        Ok(input)
    }

    fn rejected(&self) -> Vec<String> {
        self.rejected.clone()
    }

    fn subscribe(&mut self, notify: Notify) -> Result<(), AgentError> {
        *self.shared.notify.lock().unwrap_or_else(|p| p.into_inner()) = Some(notify);
        Ok(())
    }
}
