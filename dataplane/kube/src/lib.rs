//! Bulkhead's Kubernetes client side, shared by the agent and fw-sync.
//!
//! [`WatchSet`] runs one kube-rs watcher per kind on a small tokio runtime it owns and keeps,
//! per kind, the objects of the last complete list plus the changes since. A relist (after a
//! dropped watch or a 410 Gone) is buffered and swapped in only when complete (`InitDone`), so
//! a reader never sees a half-listed kind. Each object is turned into the reader's own type
//! when it arrives; an object the conversion rejects keeps its last accepted version (or
//! nothing, if it never had one) and carries the error, so a reader can report it by kind,
//! namespace/name and field while the rest of the cluster's state still applies.
//!
//! [`lease`] elects one leader among replicas on a `coordination.k8s.io/v1` Lease.
//! [`quarantine`] is the Quarantine resource the agent writes and fw-sync answers.

pub mod lease;
pub mod quarantine;
pub mod schema;

/// The client type the watchers use.
pub use kube::Client;
/// The runtime the watchers run on.
pub use tokio::runtime::Handle as RuntimeHandle;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt as _;
use kube::runtime::watcher::{self, Event};
use serde_json::Value;

/// A Kubernetes API failure, naming the server.
#[derive(Debug, thiserror::Error)]
#[error("kubernetes API {server}: {detail}")]
pub struct KubeError {
    pub server: String,
    pub detail: String,
}

/// A kind to watch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WatchedKind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
}

impl WatchedKind {
    pub const fn new(group: &'static str, version: &'static str, kind: &'static str, plural: &'static str) -> Self {
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
}

/// How to connect.
#[derive(Clone, Debug)]
pub struct KubeOptions {
    /// A kubeconfig file; `None` infers (`KUBECONFIG`, `~/.kube/config`, then in-cluster).
    pub kubeconfig: Option<PathBuf>,
    /// How long [`WatchSet::connect`] waits for every kind's first complete list.
    pub ready_timeout: Duration,
}

impl Default for KubeOptions {
    fn default() -> Self {
        KubeOptions { kubeconfig: None, ready_timeout: Duration::from_secs(30) }
    }
}

/// One object: its last accepted conversion and why a newer version was rejected, if it was.
#[derive(Clone, Debug)]
pub struct Obj<T> {
    pub good: Option<T>,
    pub error: Option<String>,
}

/// What is known of one kind.
#[derive(Debug)]
pub struct KindState<T> {
    /// Listed completely at least once (or not served: see `absent`).
    pub ready: bool,
    /// Set when the server does not serve the kind (its CRD is not installed): it is empty.
    pub absent: Option<String>,
    /// By (namespace, name).
    pub objects: BTreeMap<(String, String), Obj<T>>,
    relist: Option<BTreeMap<(String, String), Obj<T>>>,
    seen_rv: u64,
    list_started: Option<Instant>,
    listed_from: Option<Instant>,
    pub last_error: Option<String>,
}

impl<T> Default for KindState<T> {
    fn default() -> Self {
        KindState { ready: false, absent: None, objects: BTreeMap::new(), relist: None, seen_rv: 0, list_started: None, listed_from: None, last_error: None }
    }
}

/// Turns one object (as JSON, server bookkeeping removed) into the reader's type; `origin`
/// names it (`kubernetes <Kind> <namespace>/<name>`) for messages.
pub type Accept<T> = Arc<dyn Fn(&WatchedKind, &str, Value) -> Result<T, String> + Send + Sync>;

/// Called with `true` on a change; returns false once nobody listens any more.
pub type Notify = Box<dyn Fn(bool) -> bool + Send + Sync>;

struct Shared<T> {
    kinds: Vec<WatchedKind>,
    state: Mutex<Vec<KindState<T>>>,
    cond: Condvar,
    generation: AtomicU64,
    notify: Mutex<Option<Notify>>,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, Vec<KindState<T>>> {
        // A watcher task that panicked must not take the readers with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cond.notify_all();
        let mut n = self.notify.lock().unwrap_or_else(|p| p.into_inner());
        if n.as_ref().is_some_and(|f| !f(true)) {
            *n = None;
        }
    }

    fn wait_seen(&self, api_version: &str, kind: &str, rv: u64, written: Instant, timeout: Duration) -> bool {
        let Some(i) = self.kinds.iter().position(|k| k.api_version() == api_version && k.kind == kind) else { return false };
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        loop {
            let st = &g[i];
            if st.relist.is_none() && (st.seen_rv >= rv || st.listed_from.is_some_and(|t| t >= written)) {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            g = self.cond.wait_timeout(g, left.min(Duration::from_millis(50))).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

/// A handle for tests and tools: waits until the watchers have seen a write.
#[derive(Clone)]
pub struct KubeHandle(Arc<dyn Fn(&str, &str, u64, Instant, Duration) -> bool + Send + Sync>);

impl KubeHandle {
    /// Waits until the watcher of `api_version`/`kind` has seen a write made at `written` with
    /// resourceVersion `rv`: an event with that version (or a later one), or a complete list
    /// that started after the write (a deletion shows in a relist only by absence); and no
    /// relist of the kind is in progress. False on timeout.
    pub fn wait_seen(&self, api_version: &str, kind: &str, rv: u64, written: Instant, timeout: Duration) -> bool {
        (self.0)(api_version, kind, rv, written, timeout)
    }
}

/// Watchers over a set of kinds; stops them when dropped.
pub struct WatchSet<T> {
    shared: Arc<Shared<T>>,
    runtime: Option<tokio::runtime::Runtime>,
    client: kube::Client,
    server: String,
}

/// The JSON a reader sees: apiVersion and kind set, the server's bookkeeping dropped (and
/// `status`, except a Pod's, which carries its IP).
fn document(k: &WatchedKind, obj: DynamicObject) -> Value {
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
        }
    }
    v
}

/// `kubernetes <Kind> <namespace>/<name>` (no namespace for cluster-scoped kinds).
pub fn origin(kind: &str, namespace: &str, name: &str) -> String {
    if namespace.is_empty() { format!("kubernetes {kind} {name}") } else { format!("kubernetes {kind} {namespace}/{name}") }
}

fn key_of(obj: &DynamicObject) -> (String, String) {
    (obj.metadata.namespace.clone().unwrap_or_default(), obj.metadata.name.clone().unwrap_or_default())
}

fn rv_of(obj: &DynamicObject) -> u64 {
    obj.metadata.resource_version.as_deref().and_then(|r| r.parse().ok()).unwrap_or(0)
}

impl<T: Clone + Send + Sync + 'static> WatchSet<T> {
    /// Connects, starts one watcher per kind and waits until every kind has been listed once
    /// (a kind the server does not serve counts as empty). An API server that stays down or
    /// failing for `ready_timeout` is an error naming the kinds not listed.
    pub fn connect(opts: &KubeOptions, kinds: &[WatchedKind], accept: Accept<T>) -> Result<Self, KubeError> {
        let err = |server: &str, detail: String| KubeError { server: server.to_string(), detail };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("bh-kube")
            .enable_all()
            .build()
            .map_err(|e| err("", format!("tokio runtime: {e}")))?;
        let config = runtime.block_on(async {
            match &opts.kubeconfig {
                Some(p) => {
                    let kc = kube::config::Kubeconfig::read_from(p).map_err(|e| err("", format!("kubeconfig {}: {e}", p.display())))?;
                    kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                        .await
                        .map_err(|e| err("", format!("kubeconfig {}: {e}", p.display())))
                }
                None => kube::Config::infer().await.map_err(|e| err("", format!("no kubeconfig or in-cluster config: {e}"))),
            }
        })?;
        let server = config.cluster_url.to_string();
        let client = {
            let _g = runtime.enter();
            kube::Client::try_from(config).map_err(|e| err(&server, e.to_string()))?
        };
        let shared = Arc::new(Shared {
            kinds: kinds.to_vec(),
            state: Mutex::new(kinds.iter().map(|_| KindState::default()).collect()),
            cond: Condvar::new(),
            generation: AtomicU64::new(0),
            notify: Mutex::new(None),
        });
        for (i, k) in kinds.iter().enumerate() {
            runtime.spawn(watch_kind(client.clone(), i, *k, shared.clone(), accept.clone()));
        }
        let set = WatchSet { shared: shared.clone(), runtime: Some(runtime), client, server: server.clone() };
        let deadline = Instant::now() + opts.ready_timeout;
        let mut g = shared.lock();
        while !g.iter().all(|k| k.ready) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let missing: Vec<String> = kinds
                    .iter()
                    .zip(g.iter())
                    .filter(|(_, s)| !s.ready)
                    .map(|(k, s)| format!("{} {} ({})", k.api_version(), k.kind, s.last_error.as_deref().unwrap_or("no answer")))
                    .collect();
                return Err(err(&server, format!("not listed within {:?}: {}", opts.ready_timeout, missing.join("; "))));
            }
            g = shared.cond.wait_timeout(g, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        drop(g);
        Ok(set)
    }

    /// Reads the current state of every kind (in the order given to `connect`).
    pub fn read<R>(&self, f: impl FnOnce(&[WatchedKind], &[KindState<T>]) -> R) -> R {
        let g = self.shared.lock();
        f(&self.shared.kinds, &g)
    }

    /// Bumped on every change a reader would see.
    pub fn generation(&self) -> u64 {
        self.shared.generation.load(Ordering::SeqCst)
    }

    /// Waits up to `timeout` for the generation to move past `seen`; true if it did.
    pub fn wait_change(&self, seen: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut g = self.shared.lock();
        while self.generation() == seen {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            g = self.shared.cond.wait_timeout(g, left).unwrap_or_else(|p| p.into_inner()).0;
        }
        true
    }

    /// Starts telling `notify` about changes.
    pub fn subscribe(&self, notify: Notify) {
        *self.shared.notify.lock().unwrap_or_else(|p| p.into_inner()) = Some(notify);
    }

    /// A handle that waits for writes to be seen.
    pub fn handle(&self) -> KubeHandle {
        let s = self.shared.clone();
        KubeHandle(Arc::new(move |a, k, rv, w, t| s.wait_seen(a, k, rv, w, t)))
    }

    /// The API server's URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The client, for other calls (a Lease) on this set's runtime.
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The runtime the watchers run on.
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        self.runtime.as_ref().expect("runtime lives as long as the set").handle()
    }
}

impl<T> Drop for WatchSet<T> {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn accept_one<T: Clone>(k: &WatchedKind, obj: DynamicObject, previous: Option<&Obj<T>>, accept: &Accept<T>) -> Obj<T> {
    let (ns, name) = key_of(&obj);
    match accept(k, &origin(k.kind, &ns, &name), document(k, obj)) {
        Ok(t) => Obj { good: Some(t), error: None },
        Err(e) => Obj { good: previous.and_then(|p| p.good.clone()), error: Some(e) },
    }
}

/// The watcher of one kind, for the life of the runtime.
async fn watch_kind<T: Clone + Send + 'static>(client: kube::Client, i: usize, k: WatchedKind, shared: Arc<Shared<T>>, accept: Accept<T>) {
    let api: Api<DynamicObject> = Api::all_with(client, &k.resource());
    let mut stream = watcher::watcher(api, watcher::Config::default()).default_backoff().boxed();
    let span = tracing::info_span!("kube_watch", kind = k.kind, group = k.group);
    while let Some(ev) = stream.next().await {
        let _g = span.enter();
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
                let obj = accept_one(&k, o, st.objects.get(&key), &accept);
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
                let obj = accept_one(&k, o, st.objects.get(&key), &accept);
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
                    // The kind's CRD is not installed: nothing of it exists. The watcher keeps
                    // retrying and lists it once the CRD appears.
                    st.ready = true;
                    st.absent = Some(msg);
                    true
                } else if matches!(&e, watcher::Error::WatchError(s) if s.code == 410) {
                    tracing::info!(error = %msg, "watch history expired; listing again (the last complete state stays until the list is complete)");
                    false
                } else {
                    tracing::warn!(error = %msg, "watch failed; retrying (the last complete state stays)");
                    false
                }
            }
        };
        drop(g);
        if changed {
            shared.changed();
        } else {
            shared.cond.notify_all();
        }
    }
}
