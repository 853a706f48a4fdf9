//! Leader election on a `coordination.k8s.io/v1` Lease, as client-go's leaderelection does:
//! the holder renews `spec.renewTime` every [`Election::renew_every`]; another replica takes
//! the Lease over only after `leaseDurationSeconds` without a renewal, with an update that
//! carries the resourceVersion it read (a 409 means someone else won). A leader that cannot
//! renew within the lease duration must stop acting: [`Leadership::is_lost`] says so.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};

use crate::KubeError;

/// Which Lease and who is asking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Election {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (the pod name).
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
}

impl Election {
    /// The usual timings (15 s lease, renewed every 5 s).
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        Election {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }
}

/// Held leadership; renewal runs on the client's runtime until dropped.
pub struct Leadership {
    lost: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Leadership {
    /// True once a renewal failed for longer than the lease duration (another replica may
    /// lead now): stop writing.
    pub fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// One attempt: Ok(true) when this replica holds the Lease afterwards.
async fn try_acquire(api: &Api<Lease>, e: &Election) -> Result<bool, kube::Error> {
    let fresh = || {
        let mut l = Lease::default();
        l.metadata.name = Some(e.name.clone());
        l.metadata.namespace = Some(e.namespace.clone());
        let spec = l.spec.get_or_insert_with(Default::default);
        spec.holder_identity = Some(e.identity.clone());
        spec.lease_duration_seconds = Some(e.lease_duration.as_secs() as i32);
        spec.acquire_time = Some(now());
        spec.renew_time = Some(now());
        spec.lease_transitions = Some(0);
        l
    };
    let current = match api.get_opt(&e.name).await? {
        None => {
            return match api.create(&PostParams::default(), &fresh()).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(err) => Err(err),
            };
        }
        Some(l) => l,
    };
    let spec = current.spec.clone().unwrap_or_default();
    let mine = spec.holder_identity.as_deref() == Some(e.identity.as_str());
    let expired = match spec.renew_time.as_ref() {
        Some(t) => {
            let age = k8s_openapi::jiff::Timestamp::now().duration_since(t.0);
            let limit = i64::from(spec.lease_duration_seconds.unwrap_or(15));
            age.as_secs() >= limit
        }
        None => true,
    };
    if !mine && !expired {
        return Ok(false);
    }
    let mut next = current.clone();
    let s = next.spec.get_or_insert_with(Default::default);
    if !mine {
        s.acquire_time = Some(now());
        s.lease_transitions = Some(s.lease_transitions.unwrap_or(0) + 1);
    }
    s.holder_identity = Some(e.identity.clone());
    s.lease_duration_seconds = Some(e.lease_duration.as_secs() as i32);
    s.renew_time = Some(now());
    // The resourceVersion read above makes this a compare-and-swap.
    match api.replace(&e.name, &PostParams::default(), &next).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(st)) if st.code == 409 => Ok(false),
        Err(err) => Err(err),
    }
}

/// Blocks until this replica leads (or `stop` is set: `Ok(None)`), then renews in the
/// background on `rt`.
pub fn acquire(rt: &tokio::runtime::Handle, client: kube::Client, e: &Election, stop: &AtomicBool) -> Result<Option<Leadership>, KubeError> {
    let api: Api<Lease> = Api::namespaced(client, &e.namespace);
    let mut logged = false;
    loop {
        if stop.load(Ordering::SeqCst) {
            return Ok(None);
        }
        match rt.block_on(try_acquire(&api, e)) {
            Ok(true) => break,
            Ok(false) => {
                if !logged {
                    tracing::info!(lease = %e.name, "another replica leads; waiting");
                    logged = true;
                }
            }
            Err(err) => tracing::warn!(error = %err, lease = %e.name, "lease not readable; retrying"),
        }
        std::thread::sleep(e.renew_every.min(Duration::from_secs(2)));
    }
    tracing::info!(lease = %e.name, identity = %e.identity, "leading");
    let lost = Arc::new(AtomicBool::new(false));
    let stop_renew = Arc::new(AtomicBool::new(false));
    let (l2, s2, e2) = (lost.clone(), stop_renew.clone(), e.clone());
    rt.spawn(async move {
        let mut last_ok = tokio::time::Instant::now();
        while !s2.load(Ordering::SeqCst) {
            tokio::time::sleep(e2.renew_every).await;
            match try_acquire(&api, &e2).await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    tracing::error!(lease = %e2.name, "lost the lease to another replica");
                    l2.store(true, Ordering::SeqCst);
                    return;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "lease renewal failed");
                    if last_ok.elapsed() >= e2.lease_duration {
                        l2.store(true, Ordering::SeqCst);
                        return;
                    }
                }
            }
        }
    });
    Ok(Some(Leadership { lost, stop: stop_renew }))
}
