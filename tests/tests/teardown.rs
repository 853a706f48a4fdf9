//! (b) Labs leave nothing behind: after a normal run of the binary, and after a panic while a
//! lab built in this process is alive. Also checks that probes see real allow and deny.
use std::time::Duration;

use bulkhead_e2e::{LabIdsGuard, bulkhead_bin, lab_ids, leftovers, require_root, run_bulkhead, workspace_root};
use bulkhead_lab::probe::probe;
use bulkhead_lab::{Lab, LabOptions, Protocol, Topology};

#[test]
fn binary_run_leaves_nothing_behind() {
    require_root();
    let out = run_bulkhead(&["lab", "conformance", "tests/conformance/cases/k8s-33-stop-enforcing-after-delete.yaml", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}); stderr:\n{}", String::from_utf8_lossy(&out.stderr)));
    let ids = lab_ids(&report);
    let _guard = LabIdsGuard(ids.clone());
    assert_eq!(ids.len(), 1, "one case, one lab: {report}");
    assert_eq!(leftovers(&ids[0]), Vec::<String>::new());
}

#[test]
fn lab_is_torn_down_on_panic_and_probes_are_real() {
    require_root();
    let topo = Topology::load(&workspace_root().join("tests/conformance/cases/standard.yaml")).expect("standard topology");
    let opts = LabOptions { server_bin: Some(bulkhead_bin()), ..Default::default() };
    let id = std::sync::Mutex::new(String::new());
    let result = std::panic::catch_unwind(|| {
        let lab = Lab::create(&topo, &opts).expect("lab");
        *id.lock().unwrap() = lab.id().to_string();
        let (a, b) = (&lab.pods()[0], &lab.pods()[4]);
        let t = Duration::from_secs(1);
        assert!(probe(a, b.ip, 80, Protocol::Tcp, t), "TCP 80 x/a -> y/b");
        assert!(probe(a, b.ip, 81, Protocol::Udp, t), "UDP 81 x/a -> y/b");
        assert!(probe(lab.outside(), b.ip, 80, Protocol::Tcp, t), "TCP 80 outside -> y/b");
        assert!(!probe(a, b.ip, 82, Protocol::Tcp, t), "nothing listens on TCP 82");
        assert!(!probe(a, "10.240.9.9".parse::<std::net::Ipv4Addr>().unwrap(), 80, Protocol::Tcp, t), "no such pod");
        assert!(!leftovers(lab.id()).is_empty(), "the lab exists while alive");
        panic!("deliberate panic with the lab alive");
    });
    assert!(result.is_err());
    let id = id.into_inner().unwrap();
    let _guard = LabIdsGuard(vec![id.clone()]);
    assert!(!id.is_empty(), "lab was not created");
    assert_eq!(leftovers(&id), Vec::<String>::new(), "lab {id} not torn down after panic");
}
