//! An agent upgraded in place (root): maps whose layout changed get new names, and the old
//! layout's pins must go, or they would hold their maps (hundreds of MB of preallocated hashes)
//! in kernel memory until reboot.

use std::path::{Path, PathBuf};

use bulkhead_agent::loader::Dataplane;
use bulkhead_common::map_names;

/// Removes the pin folder and everything in it even when an assertion fails.
struct Folder(PathBuf);

impl Drop for Folder {
    fn drop(&mut self) {
        if let Ok(rd) = std::fs::read_dir(&self.0) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir_all(e.path());
                } else {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn pinned(dir: &Path, name: &str) -> bool {
    dir.join(name).exists()
}

#[test]
fn loading_unpins_maps_of_an_earlier_layout_and_keeps_everything_else() {
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test loads eBPF maps: run it as root (CI does)");
    let dir = Folder(PathBuf::from(format!("/sys/fs/bpf/bh-test-upgrade-{}", std::process::id())));
    // A first agent, stopped without uninstalling: its pins stay, as on a real node.
    drop(Dataplane::load(&dir.0).expect("loading the dataplane"));
    // Its peer and port maps as an older build named them (same kind of object, old names).
    let old = ["BH_PEER_V2", "BH_PORT_V3"];
    std::fs::rename(dir.0.join(map_names::PEERS), dir.0.join(old[0])).expect("renaming a pin on bpffs");
    std::fs::rename(dir.0.join(map_names::PORTS), dir.0.join(old[1])).expect("renaming a pin on bpffs");
    // Something of the operator's beside our pins, not named like ours.
    std::fs::create_dir(dir.0.join("operator-notes")).expect("a folder on bpffs");
    let dp = Dataplane::load(&dir.0).expect("loading again");
    for name in old {
        assert!(!pinned(&dir.0, name), "{name}: a map of an earlier layout is still pinned");
    }
    for name in [map_names::PEERS, map_names::PORTS, map_names::PEER_SLOTS, map_names::CONFIG] {
        assert!(pinned(&dir.0, name), "{name}: this build's map is not pinned");
    }
    assert!(pinned(&dir.0, "operator-notes"), "a pin not named like ours was removed");
    dp.unload();
}
