//! The shipped deploy files agree with the code: the CRD lists every target kind the parser
//! accepts, and the example config and datastore load and fit together.

use std::path::Path;

use fw_sync::config::DaemonConfig;
use fw_sync::group::TargetKind;

fn dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy"))
}

#[test]
fn crd_lists_every_target_kind() {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/kubernetes/crds/addressgroup.yaml"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let crd: serde_yaml::Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let kinds = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["targets"]["items"]["properties"]["kind"]["enum"];
    let listed: Vec<&str> = kinds.as_sequence().unwrap_or_else(|| panic!("no kind enum in {}: {kinds:?}", path.display())).iter().filter_map(|v| v.as_str()).collect();
    let known: Vec<&str> = TargetKind::ALL.iter().map(|(_, n)| *n).collect();
    assert_eq!(listed, known, "{} and TargetKind::ALL disagree", path.display());
}

#[test]
fn example_config_and_datastore_load() {
    let config = DaemonConfig::load(&dir().join("example/fw-sync.yaml")).unwrap_or_else(|e| panic!("example config: {e}"));
    let snapshot = fw_sync::source::load(&config.datastore).unwrap_or_else(|e| panic!("example datastore: {e}"));
    config.check_groups(&snapshot.groups).unwrap_or_else(|e| panic!("example groups: {e}"));
    assert!(!snapshot.groups.is_empty(), "the example has AddressGroups");
    assert_eq!(config.quarantine_targets().len(), config.firewalls.len(), "the example keeps a quarantine group on every firewall");
}
