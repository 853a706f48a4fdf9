//! The map names are typed twice: in `bulkhead_common::map_names` (what the agent opens and
//! pins) and in each `#[map(name = "...")]` of the eBPF crate, since aya-ebpf's attribute
//! takes only a literal. This checks the built object against the table, so a mismatch fails
//! here, naming the map, instead of at load.

use std::collections::BTreeSet;

use crate::loader::{ALL_MAPS, EBPF_OBJECT};

#[test]
fn the_objects_maps_are_exactly_the_named_table() {
    let obj = aya_obj::Object::parse(EBPF_OBJECT).expect("the built eBPF object parses");
    // Sections the toolchain adds for globals (.bss, .data, .rodata) are maps to aya too.
    let in_object: BTreeSet<&str> = obj.maps.keys().map(String::as_str).filter(|n| !n.starts_with('.')).collect();
    let named: BTreeSet<&str> = ALL_MAPS.iter().copied().collect();
    assert_eq!(named.len(), ALL_MAPS.len(), "a name is listed twice in ALL_MAPS");
    let missing: Vec<_> = named.difference(&in_object).collect();
    let unnamed: Vec<_> = in_object.difference(&named).collect();
    assert!(missing.is_empty() && unnamed.is_empty(), "map_names lists {missing:?} that the object lacks; the object has {unnamed:?} that map_names does not list");
}
