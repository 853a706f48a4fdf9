use std::path::Path;
use std::sync::{Arc, Mutex};

use super::*;
use crate::group::{AddressGroup, ObjectRef, Target, TargetKind};

/// An in-memory firewall: what it holds and what was done to it.
#[derive(Default)]
struct Fake {
    state: FirewallState,
    reads: u64,
    applies: u64,
    fail_next_apply: bool,
}

struct FakeBackend(Arc<Mutex<Fake>>);

impl Backend for FakeBackend {
    fn firewall(&self) -> &str {
        "edge"
    }
    fn read_owned_state(&mut self) -> Result<FirewallState, FwSyncError> {
        let mut f = self.0.lock().expect("fake lock");
        f.reads += 1;
        Ok(f.state.clone())
    }
    fn apply(&mut self, diff: &Diff) -> Result<(), FwSyncError> {
        let mut f = self.0.lock().expect("fake lock");
        f.applies += 1;
        if std::mem::take(&mut f.fail_next_apply) {
            return Err(FwSyncError::Backend { firewall: "edge".into(), object: "x".into(), detail: "injected".into() });
        }
        for c in &diff.changes {
            match c.action {
                crate::diff::Action::Delete => f.state.remove(&c.object),
                _ => f.state.insert(c.object.clone(), c.desired.clone()),
            };
        }
        Ok(())
    }
    fn calls(&self) -> u64 {
        let f = self.0.lock().expect("fake lock");
        f.reads + f.applies
    }
}

fn obj() -> ObjectRef {
    ObjectRef { kind: TargetKind::Ipset, name: "web".into() }
}

fn snapshot(pods: &[(&str, &str, &str)]) -> Snapshot {
    let mut yaml = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n");
    for (name, app, ip) in pods {
        yaml += &format!("---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: x, labels: {{app: {app}}}}}\nstatus: {{podIP: {ip}}}\n");
    }
    let docs = policy_compiler::k8s::parse_documents("t.yaml", &yaml).expect("test YAML parses");
    let model = policy_compiler::k8s::build_model(docs).expect("test model builds");
    let group = AddressGroup {
        name: "web".into(),
        pod_selector: policy_compiler::selector_parser::parse_selector("app == 'web'").expect("selector"),
        namespace_selector: None,
        targets: vec![Target { firewall: "edge".into(), object: obj() }],
        origin: "t.yaml: document 9".into(),
    };
    Snapshot { model, groups: vec![group], quarantines: Vec::new() }
}

fn engine() -> (Engine, Arc<Mutex<Fake>>) {
    let config = DaemonConfig::parse("c.yaml", "firewalls: [{name: edge, type: ipset}]\ndatastore: d\n", Path::new("/")).expect("config");
    let fake = Arc::new(Mutex::new(Fake::default()));
    (Engine::new(config, vec![Box::new(FakeBackend(fake.clone()))]), fake)
}

fn members(fake: &Arc<Mutex<Fake>>) -> Vec<String> {
    let f = fake.lock().expect("fake lock");
    f.state.get(&obj()).map(|m| m.iter().map(ToString::to_string).collect()).unwrap_or_default()
}

#[test]
fn events_apply_without_reading_and_reconcile_repairs_drift() {
    let (mut e, fake) = engine();
    e.sync(&snapshot(&[("a", "web", "10.0.0.1"), ("b", "db", "10.0.0.2")]), Mode::Reconcile).expect("first sync");
    assert_eq!(members(&fake), ["10.0.0.1"]);
    let reads = fake.lock().expect("lock").reads;
    // Pod a recreated with a new address: one apply, no read.
    let r = e.sync(&snapshot(&[("a", "web", "10.0.0.7"), ("b", "db", "10.0.0.2")]), Mode::Event).expect("event");
    assert_eq!(members(&fake), ["10.0.0.7"]);
    assert_eq!(fake.lock().expect("lock").reads, reads, "an event must not read the firewall");
    assert_eq!(r[0].calls, 1, "{r:?}");
    // Someone edits the set by hand; the next reconcile notices and repairs it.
    fake.lock().expect("lock").state.insert(obj(), ["10.6.6.6".parse().expect("ip")].into());
    let r = e.sync(&snapshot(&[("a", "web", "10.0.0.7"), ("b", "db", "10.0.0.2")]), Mode::Reconcile).expect("reconcile");
    assert!(r[0].drift, "{r:?}");
    assert_eq!(members(&fake), ["10.0.0.7"]);
}

#[test]
fn restart_converges_from_real_state_without_flush() {
    let (mut e, fake) = engine();
    fake.lock().expect("lock").state.insert(obj(), ["10.0.0.1".parse().expect("ip"), "10.0.0.9".parse().expect("ip")].into());
    let r = e.sync(&snapshot(&[("a", "web", "10.0.0.1")]), Mode::Reconcile).expect("sync");
    let change = &r[0].diff.changes[0];
    assert!(change.add.is_empty() && change.remove.len() == 1, "only the stale member goes: {:?}", r[0].diff);
    assert_eq!(members(&fake), ["10.0.0.1"]);
}

#[test]
fn a_failed_apply_makes_the_next_event_read_again() {
    let (mut e, fake) = engine();
    e.sync(&snapshot(&[("a", "web", "10.0.0.1")]), Mode::Reconcile).expect("first sync");
    fake.lock().expect("lock").fail_next_apply = true;
    let r = e.sync(&snapshot(&[("a", "web", "10.0.0.2")]), Mode::Event).expect("sync runs");
    assert!(r[0].error.is_some(), "{r:?}");
    let reads = fake.lock().expect("lock").reads;
    e.sync(&snapshot(&[("a", "web", "10.0.0.2")]), Mode::Event).expect("retry");
    assert_eq!(fake.lock().expect("lock").reads, reads + 1, "state unknown after a failure: read first");
    assert_eq!(members(&fake), ["10.0.0.2"]);
}

#[test]
fn groups_that_do_not_fit_the_config_apply_nothing() {
    let (mut e, fake) = engine();
    let mut s = snapshot(&[("a", "web", "10.0.0.1")]);
    s.groups[0].targets[0].firewall = "dmz".into();
    let err = e.sync(&s, Mode::Reconcile).expect_err("unknown firewall").to_string();
    assert!(err.contains("t.yaml: document 9 (AddressGroup web): spec.targets[0].firewall"), "{err}");
    assert_eq!(fake.lock().expect("lock").applies, 0);
}
