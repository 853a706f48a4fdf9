//! A Kubernetes API-server emulator for tests that cannot have a cluster.
//!
//! It speaks the real HTTP protocol, so the real clients run against it unchanged: kube-rs
//! (Bulkhead's agent and fw-sync), `kubectl` and the official Python client are checked
//! against it in the test suite.
//!
//! # Covered
//! - Legacy discovery: `/version`, `/api`, `/api/v1`, `/apis`, `/apis/<group>`,
//!   `/apis/<group>/<version>` (APIVersions, APIGroupList, APIGroup, APIResourceList).
//! - Built-in Namespaces, Pods, ConfigMaps, Secrets, ServiceAccounts, Nodes, NetworkPolicies,
//!   Leases and CustomResourceDefinitions; a created CRD serves its kinds at once (and shows in
//!   discovery), a deleted one takes its objects with it.
//! - get, list (all namespaces or one; `limit` / `continue`), create (POST, with
//!   `generateName`), replace (PUT), patch (merge, strategic as merge, server-side apply as a
//!   merge that creates), delete (a Namespace deletes its objects). Errors are `Status`
//!   objects with the API server's reasons and codes: 404 NotFound, 409 AlreadyExists, 409
//!   Conflict on a stale `metadata.resourceVersion` (optimistic concurrency), 400, 422, 410.
//! - One global resourceVersion (etcd's revision); a no-op write bumps nothing.
//! - Watch (`watch=true`) from a resourceVersion (history replayed), from "0"/none (synthetic
//!   ADDED first), or with `sendInitialEvents=true` (ADDED for the current state, then a
//!   BOOKMARK annotated `k8s.io/initial-events-end`); periodic BOOKMARKs with
//!   `allowWatchBookmarks`; `timeoutSeconds`; a resourceVersion older than the kept history
//!   gets 410 Gone as an ERROR event inside a 200 stream, as the real server sends it.
//!   Selectors are applied to events as the server does: an object that starts matching is
//!   ADDED, one that stops matching is DELETED. A watcher that falls too far behind is cut off.
//! - `labelSelector` (equality and set-based) and `fieldSelector` (`metadata.name`,
//!   `metadata.namespace`, Pods' `spec.nodeName`, `status.phase`, `status.podIP`).
//! - Faults for tests: [`Emulator::compact`] (history lost: resuming watches get 410),
//!   [`Emulator::drop_watches`] (every open watch connection broken mid-stream),
//!   [`Emulator::fail_next`] (the next requests answer with a 5xx), [`Emulator::set_down`]
//!   (connections closed without an answer).
//!
//! # Departures from a real API server
//! - No authentication, authorization, admission, OpenAPI documents (`/openapi/v2|v3` are
//!   404: run kubectl with `--validate=false`), Table output (clients print client-side),
//!   protobuf, aggregated discovery, or CRD schema validation and pruning.
//! - No controllers: an object's `status` is stored as written (tests set a Pod's IP this
//!   way, as a kubelet would), a Namespace is deleted at once with its objects, there are no
//!   finalizers or graceful deletion.
//! - Strategic merge patches are applied as JSON merge patches (lists are replaced, not
//!   merged by key); JSON patches are refused with 415; server-side apply keeps no field
//!   ownership (`managedFields`).
//! - `limit` / `continue` pages are read from the current state, not a snapshot at the first
//!   page's resourceVersion.

mod http;
pub mod objects;
pub mod select;
pub mod store;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

pub use store::{ApiError, ResourceType, Store};

/// Shared by the server's connection threads and the test's handle.
pub(crate) struct Shared {
    pub store: Mutex<Store>,
    pub fail_next: Mutex<VecDeque<u16>>,
    pub down: AtomicBool,
    /// Bumped by [`Emulator::drop_watches`]; a watch that sees it change breaks its connection.
    pub watch_epoch: AtomicU64,
    pub bookmark_every: Duration,
    pub requests: AtomicU64,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, Store> {
        // A panicking handler must not take the whole emulator down with it.
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Options of an emulator.
#[derive(Clone, Debug)]
pub struct Options {
    /// Address to listen on; port 0 picks one.
    pub listen: String,
    /// How often an idle watch that allows bookmarks gets one (the real server: about a
    /// minute; tests want it sooner).
    pub bookmark_every: Duration,
    /// Events kept for resuming watches.
    pub history: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options { listen: "127.0.0.1:0".into(), bookmark_every: Duration::from_secs(1), history: store::DEFAULT_HISTORY }
    }
}

/// A running emulator; stops when dropped.
pub struct Emulator {
    shared: Arc<Shared>,
    server: bulkhead_httpd::Server,
}

impl Emulator {
    /// Starts an emulator with default options on a free loopback port.
    pub fn start() -> std::io::Result<Emulator> {
        Self::start_with(Options::default())
    }

    /// Starts an emulator.
    pub fn start_with(opts: Options) -> std::io::Result<Emulator> {
        let mut store = Store::new();
        store.history_limit = opts.history.max(1);
        let shared = Arc::new(Shared {
            store: Mutex::new(store),
            fail_next: Mutex::new(VecDeque::new()),
            down: AtomicBool::new(false),
            watch_epoch: AtomicU64::new(0),
            bookmark_every: opts.bookmark_every,
            requests: AtomicU64::new(0),
        });
        let s = shared.clone();
        let server = bulkhead_httpd::Server::start(&opts.listen, None, Arc::new(move |r: &bulkhead_httpd::Request| http::handle(&s, r)))?;
        Ok(Emulator { shared, server })
    }

    /// The server's URL (`http://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// A kubeconfig pointing at this emulator, for kubectl and kube-rs.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: emulator\n  cluster:\n    server: {}\ncontexts:\n- name: emulator\n  context:\n    cluster: emulator\n    user: tester\n    namespace: default\ncurrent-context: emulator\nusers:\n- name: tester\n  user: {{}}\n",
            self.url()
        )
    }

    /// Creates an object from JSON (`apiVersion`, `kind`, `metadata.name` and for namespaced
    /// kinds `metadata.namespace` required), as a POST would.
    pub fn create(&self, obj: serde_json::Value) -> Result<serde_json::Value, ApiError> {
        let (t, ns) = self.type_of(&obj)?;
        self.shared.lock().create(&t, &ns, obj)
    }

    /// Creates or replaces (unconditionally) an object.
    pub fn apply(&self, obj: serde_json::Value) -> Result<serde_json::Value, ApiError> {
        let (t, ns) = self.type_of(&obj)?;
        let name = obj.pointer("/metadata/name").and_then(|v| v.as_str()).unwrap_or("").to_string();
        let mut st = self.shared.lock();
        match st.get(&t, &ns, &name) {
            Ok(_) => {
                let mut obj = obj;
                if let Some(m) = obj.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                    m.remove("resourceVersion");
                }
                st.replace(&t, &ns, &name, obj)
            }
            Err(_) => st.create(&t, &ns, obj),
        }
    }

    /// Merge-patches an object.
    pub fn patch(&self, api_version: &str, kind: &str, ns: &str, name: &str, patch: serde_json::Value) -> Result<serde_json::Value, ApiError> {
        let t = self.find_kind(api_version, kind)?;
        self.shared.lock().patch(&t, ns, name, patch, false)
    }

    /// Deletes an object.
    pub fn delete(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Result<serde_json::Value, ApiError> {
        let t = self.find_kind(api_version, kind)?;
        self.shared.lock().delete(&t, ns, name)
    }

    /// Reads an object.
    pub fn get(&self, api_version: &str, kind: &str, ns: &str, name: &str) -> Result<serde_json::Value, ApiError> {
        let t = self.find_kind(api_version, kind)?;
        self.shared.lock().get(&t, ns, name)
    }

    /// The current resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv
    }

    /// Forgets the event history: every watch that resumes from an older resourceVersion
    /// gets 410 Gone and must list again.
    pub fn compact(&self) {
        self.shared.lock().compact();
    }

    /// Breaks every open watch connection mid-stream (no end of the chunked body).
    pub fn drop_watches(&self) {
        self.shared.watch_epoch.fetch_add(1, Ordering::SeqCst);
        self.shared.lock().subs.clear();
    }

    /// The next `n` requests are answered with `code` (e.g. 500, 503).
    pub fn fail_next(&self, n: usize, code: u16) {
        self.shared.fail_next.lock().unwrap_or_else(|p| p.into_inner()).extend(std::iter::repeat_n(code, n));
    }

    /// While down, every connection is closed without an answer (and open watches break).
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
        if down {
            self.drop_watches();
        }
    }

    /// Open watch streams.
    pub fn open_watches(&self) -> usize {
        self.shared.lock().subs.len()
    }

    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }

    fn find_kind(&self, api_version: &str, kind: &str) -> Result<ResourceType, ApiError> {
        let st = self.shared.lock();
        st.types
            .iter()
            .find(|t| t.api_version() == api_version && t.kind == kind)
            .cloned()
            .ok_or_else(|| ApiError::new(404, "NotFound", format!("the server could not find the requested resource ({api_version} {kind})")))
    }

    fn type_of(&self, obj: &serde_json::Value) -> Result<(ResourceType, String), ApiError> {
        let s = |p: &str| obj.pointer(p).and_then(|v| v.as_str()).unwrap_or("").to_string();
        let t = self.find_kind(&s("/apiVersion"), &s("/kind"))?;
        let ns = s("/metadata/namespace");
        if t.namespaced && ns.is_empty() {
            return Err(ApiError::bad_request(format!("{} {:?}: metadata.namespace is required", t.kind, s("/metadata/name"))));
        }
        Ok((t, ns))
    }
}
