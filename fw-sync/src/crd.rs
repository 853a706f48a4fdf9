//! The `bulkhead.io/v1alpha1` `AddressGroup` custom resource (wire format) -> [`AddressGroup`].
//!
//! Read strictly: an unknown field is an error, so a typo cannot silently put pods in or out
//! of a firewall group. Errors name the file, the document and the field.

use serde_yaml::Value;

use crate::error::FwSyncError;
use crate::group::{AddressGroup, ObjectRef, Target, TargetKind};
use crate::yaml::{Ctx, child, get, index};

/// API group/version of the AddressGroup resource.
pub const API_VERSION: &str = "bulkhead.io/v1alpha1";
/// Kind of the AddressGroup resource.
pub const KIND: &str = "AddressGroup";

/// Longest target name per kind: ipset names are at most 31 bytes and fw-sync needs room for
/// its `bhfw-` prefix and `-v6` suffix (`bhfw-<name>-v6`, the IPv6 set) and for the temporary
/// sets of the atomic swap (`bhfwtmp-<name>`, `bhfwt6-<name>`): 23 characters.
fn max_name_len(kind: TargetKind) -> usize {
    match kind {
        TargetKind::Ipset => 31 - crate::group::OWNED_PREFIX.len() - crate::group::V6_SUFFIX.len(),
        TargetKind::NftablesSet => 64,
        // PAN-OS and FortiOS limit names to 63 and 79 characters.
        TargetKind::PanosStaticGroup | TargetKind::PanosDynamicTag => 63 - crate::group::OWNED_PREFIX.len(),
        // The IPv6 half is the addrgrp6 `bhfw-<name>-v6`.
        TargetKind::FortiosAddrgrp => 79 - crate::group::OWNED_PREFIX.len() - crate::group::V6_SUFFIX.len(),
        // `system external-resource` names: at most 35 characters (6.4 schema, 7.2 CLI reference).
        TargetKind::FortiosThreatFeed => 35 - crate::group::OWNED_PREFIX.len(),
    }
}

/// Whether a document is an AddressGroup (the caller skips other kinds).
pub fn is_address_group(doc: &Value) -> bool {
    let s = |k| doc.as_mapping().and_then(|m| get(m, k)).and_then(Value::as_str);
    s("apiVersion") == Some(API_VERSION) && s("kind") == Some(KIND)
}

/// Parses one AddressGroup document; `place` is `file: document N` for messages.
pub fn parse(place: &str, doc: &Value) -> Result<AddressGroup, FwSyncError> {
    let mut ctx = Ctx::new(format!("{place} ({KIND})"));
    let top = ctx.strict_map(doc, "", &["apiVersion", "kind", "metadata", "spec"])?;
    let meta = ctx.strict_map(ctx.required(top, "", "metadata")?, "metadata", &["name", "labels", "annotations", "uid", "resourceVersion", "generation", "creationTimestamp"])?;
    let name = ctx.str(ctx.required(meta, "metadata", "name")?, "metadata.name")?;
    if let Some(problem) = name_problem(name, 253) {
        return Err(ctx.err("metadata.name", format!("invalid name {name:?}: {problem}")));
    }
    ctx = Ctx::new(format!("{place} ({KIND} {name})"));
    let spec = ctx.strict_map(ctx.required(top, "", "spec")?, "spec", &["podSelector", "namespaceSelector", "targets"])?;
    let selector = |field: &str| -> Result<Option<_>, FwSyncError> {
        let Some(v) = get(spec, field) else { return Ok(None) };
        let path = child("spec", field);
        let text = ctx.str(v, &path)?;
        policy_compiler::selector_parser::parse_selector(text)
            .map(Some)
            .map_err(|e| ctx.err(&path, format!("invalid selector {text:?}: {e}")))
    };
    let pod_selector = selector("podSelector")?.ok_or_else(|| ctx.err("spec.podSelector", "required (use \"all()\" for every pod)"))?;
    let namespace_selector = selector("namespaceSelector")?;
    let list = ctx.seq(ctx.required(spec, "spec", "targets")?, "spec.targets")?;
    if list.is_empty() {
        return Err(ctx.err("spec.targets", "at least one target is required"));
    }
    let mut targets = Vec::new();
    for (i, t) in list.iter().enumerate() {
        let path = index("spec.targets", i);
        let m = ctx.strict_map(t, &path, &["firewall", "kind", "name"])?;
        let firewall = ctx.str(ctx.required(m, &path, "firewall")?, &child(&path, "firewall"))?;
        let kind_path = child(&path, "kind");
        let kind_text = ctx.str(ctx.required(m, &path, "kind")?, &kind_path)?;
        let kind = TargetKind::parse(kind_text).ok_or_else(|| {
            let known: Vec<_> = TargetKind::ALL.iter().map(|(_, n)| *n).collect();
            ctx.err(&kind_path, format!("unknown kind {kind_text:?} (expected one of: {})", known.join(", ")))
        })?;
        let name_path = child(&path, "name");
        let object = ctx.str(ctx.required(m, &path, "name")?, &name_path)?;
        if let Some(problem) = name_problem(object, max_name_len(kind)) {
            return Err(ctx.err(&name_path, format!("invalid {kind} name {object:?}: {problem}")));
        }
        if kind.splits_families() && object.ends_with(crate::group::V6_SUFFIX) {
            let why = format!("names ending in {:?} are reserved: {kind} keeps a target's IPv6 members in `bhfw-<name>{}`", crate::group::V6_SUFFIX, crate::group::V6_SUFFIX);
            return Err(ctx.err(&name_path, format!("invalid {kind} name {object:?}: {why}")));
        }
        let target = Target { firewall: firewall.to_string(), object: ObjectRef { kind, name: object.to_string() } };
        if targets.contains(&target) {
            return Err(ctx.err(&path, format!("target {} on firewall {firewall} is listed twice", target.object)));
        }
        targets.push(target);
    }
    Ok(AddressGroup {
        name: name.to_string(),
        pod_selector,
        namespace_selector,
        targets,
        origin: place.to_string(),
    })
}

/// What is wrong with `name` as a target of `kind`, if anything (the AddressGroup's rules,
/// for objects named elsewhere, such as the quarantine group).
pub(crate) fn name_problem_for(kind: TargetKind, name: &str) -> Option<String> {
    if let Some(p) = name_problem(name, max_name_len(kind)) {
        return Some(p);
    }
    if kind.splits_families() && name.ends_with(crate::group::V6_SUFFIX) {
        return Some(format!("names ending in {:?} are reserved for the IPv6 half", crate::group::V6_SUFFIX));
    }
    None
}

/// Names are kept to what every firewall accepts unquoted, so one name works on all of them.
fn name_problem(name: &str, max: usize) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name.len() > max {
        return Some(format!("longer than {max} characters"));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') {
        return Some("only letters, digits, '-', '_' and '.' are allowed".into());
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Some("must start with a letter or digit".into());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(text: &str) -> Value {
        serde_yaml::from_str(text).expect("test YAML parses")
    }

    const GOOD: &str = "apiVersion: bulkhead.io/v1alpha1\nkind: AddressGroup\nmetadata: {name: web}\nspec:\n  podSelector: app == 'web'\n  namespaceSelector: env in {'prod'}\n  targets:\n  - {firewall: edge, kind: ipset, name: web}\n  - {firewall: nft, kind: nftables-set, name: web}\n";

    fn err(text: &str) -> String {
        match parse("groups.yaml: document 1", &doc(text)) {
            Ok(g) => panic!("expected an error for:\n{text}\ngot {g:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_a_full_group() {
        let g = parse("g.yaml: document 1", &doc(GOOD)).expect("GOOD parses");
        assert_eq!(g.name, "web");
        assert_eq!(g.targets.len(), 2, "{g:?}");
        assert_eq!(g.targets[1].object, ObjectRef { kind: TargetKind::NftablesSet, name: "web".into() });
        assert!(g.namespace_selector.is_some(), "{g:?}");
        assert!(is_address_group(&doc(GOOD)));
        assert!(!is_address_group(&doc("apiVersion: v1\nkind: Pod\n")));
    }

    #[test]
    fn errors_name_file_document_and_field() {
        let e = err(&GOOD.replace("podSelector: app", "podSelectr: app"));
        assert!(e.starts_with("groups.yaml: document 1 (AddressGroup web): spec.podSelectr: unknown field"), "{e}");
        let e = err(&GOOD.replace("kind: ipset", "kind: ipsett"));
        assert!(e.contains("spec.targets[0].kind: unknown kind \"ipsett\""), "{e}");
        assert!(e.ends_with("(nothing applied)"), "{e}");
        let e = err(&GOOD.replace("app == 'web'", "app == "));
        assert!(e.contains("spec.podSelector: invalid selector"), "{e}");
        let e = err(&GOOD.replace("name: web}\n  -", "name: \"a b\"}\n  -"));
        assert!(e.contains("spec.targets[0].name: invalid ipset name \"a b\""), "{e}");
        let e = err(&GOOD.replace("name: web}\n  -", "name: abcdefghijklmnopqrstuvwxyz}\n  -"));
        assert!(e.contains("longer than 23"), "{e}");
        // 23 characters fit: bhfw-<23>-v6 is 31, ipset's limit.
        assert!(parse("g.yaml: document 1", &doc(&GOOD.replace("name: web}\n  -", "name: abcdefghijklmnopqrstuvw}\n  -"))).is_ok());
        let e = err(&GOOD.replace("name: web}\n  -", "name: web-v6}\n  -"));
        assert!(e.contains("spec.targets[0].name: invalid ipset name \"web-v6\": names ending in \"-v6\" are reserved"), "{e}");
        let e = err(&GOOD.replace("nftables-set, name: web}", "nftables-set, name: web-v6}"));
        assert!(e.contains("spec.targets[1].name: invalid nftables-set name \"web-v6\""), "{e}");
        let e = err(&GOOD.replace("nft, kind: nftables-set", "edge, kind: ipset"));
        assert!(e.contains("spec.targets[1]: target ipset web on firewall edge is listed twice"), "{e}");
        let e = err("apiVersion: bulkhead.io/v1alpha1\nkind: AddressGroup\nmetadata: {name: x}\nspec: {podSelector: all(), targets: []}\n");
        assert!(e.contains("spec.targets: at least one target"), "{e}");
        let e = err("apiVersion: bulkhead.io/v1alpha1\nkind: AddressGroup\nmetadata: {name: x, namespace: y}\nspec: {podSelector: all()}\n");
        assert!(e.contains("metadata.namespace: unknown field"), "{e}");
    }
}
