//! `type=config`: set (merge), edit (replace), delete, get (candidate), show (running) and
//! multi-config, with the checks PAN-OS makes when a change is made: xpath syntax (code 6),
//! object names and addresses (code 12), references on delete (code 10).

use std::fmt::Write as _;

use super::xml::{self, Node, Pred, Step};
use super::{ApiReply, State};

/// One operation's outcome: (code, message) either way.
pub(crate) type OpResult = Result<(u16, String), (u16, String)>;

/// Applies one change to `tree`; on error `tree` may be half changed (callers work on a copy).
pub(crate) fn apply_op(tree: &mut Node, action: &str, xpath: &str, element: Option<Vec<Node>>) -> OpResult {
    let steps = xml::parse_xpath(xpath).map_err(|m| (6, m))?;
    match action {
        "set" => {
            let mut wrapper = Node::new("element");
            wrapper.children = element.ok_or((18, "Missing element".to_string()))?;
            xml::merge(xml::ensure(tree, &steps), &wrapper);
            validate_at(tree, &steps)?;
            Ok((20, "command succeeded".into()))
        }
        "edit" => {
            let mut element = element.ok_or((18, "Missing element".to_string()))?;
            let last = steps.last().expect("xpath has a step");
            let identity = element.len() == 1
                && element[0].tag == last.tag
                && match &last.pred {
                    Some(Pred::Name(n)) => element[0].name() == Some(n.as_str()),
                    Some(Pred::Text(t)) => element[0].text == *t,
                    None => true,
                };
            if !identity || steps.len() < 2 {
                return Err((12, format!("edit breaks config object identity: {}", last.tag)));
            }
            let node = element.remove(0);
            match xml::find_path(tree, &steps) {
                Some(p) => *xml::at_mut(tree, &p) = node,
                None => xml::ensure(tree, &steps[..steps.len() - 1]).children.push(node),
            }
            validate_at(tree, &steps)?;
            Ok((20, "command succeeded".into()))
        }
        "delete" => {
            let Some(path) = xml::find_path(tree, &steps) else {
                return Ok((7, "Object doesn't exist".into()));
            };
            let (last, parent_path) = path.split_last().expect("never deletes the root");
            let parent = xml::at_mut(tree, parent_path);
            let removed = parent.children.remove(*last);
            let mut names = Vec::new();
            object_names(&steps[steps.len() - 2].tag, &removed, &mut names);
            let scope = scope(&steps);
            let mut refs = Vec::new();
            if let Some(p) = xml::find_path(tree, &scope) {
                let root: &Node = tree;
                let scope_node = p.iter().fold(root, |n, &i| &n.children[i]);
                for name in &names {
                    references(scope_node, name, &mut Vec::new(), &mut refs);
                }
            }
            if !refs.is_empty() {
                xml::at_mut(tree, parent_path).children.insert(*last, removed);
                let mut msg = format!("{} cannot be deleted because of references from:", names.join(", "));
                for r in refs {
                    let _ = write!(msg, "\n {r}");
                }
                return Err((10, msg));
            }
            Ok((20, "command succeeded".into()))
        }
        other => Err((12, format!("Unsupported action {other} in this context"))),
    }
}

/// Names of objects (address, group, tag entries) in a deleted subtree whose parent is `parent_tag`.
fn object_names(parent_tag: &str, n: &Node, out: &mut Vec<String>) {
    if n.tag == "entry" && matches!(parent_tag, "address" | "address-group" | "tag") {
        out.extend(n.name().map(String::from));
    }
    for c in &n.children {
        object_names(&n.tag, c, out);
    }
}

/// Where references to an object may come from: its vsys or device group, or everything
/// for shared objects.
fn scope(steps: &[Step]) -> Vec<Step> {
    if steps.iter().any(|s| s.tag == "shared") {
        return steps[..1].to_vec();
    }
    match steps.iter().position(|s| s.tag == "vsys" || s.tag == "device-group") {
        Some(i) if i + 1 < steps.len() => steps[..=i + 1].to_vec(),
        _ => steps[..1].to_vec(),
    }
}

/// Members naming `name`, described as PAN-OS does (`address-group -> g -> static`).
fn references(n: &Node, name: &str, trail: &mut Vec<String>, out: &mut Vec<String>) {
    for c in &n.children {
        if c.tag == "member" && c.text == name {
            out.push(trail.join(" -> "));
            continue;
        }
        trail.push(c.name().map(String::from).unwrap_or_else(|| c.tag.clone()));
        references(c, name, trail, out);
        trail.pop();
    }
}

/// Checks what a change at `steps` produced: names of addresses, groups and tags, and
/// ip-netmask values.
fn validate_at(tree: &Node, steps: &[Step]) -> Result<(), (u16, String)> {
    let parent = if steps.len() >= 2 { steps[steps.len() - 2].tag.as_str() } else { "" };
    for n in xml::select(tree, steps) {
        validate(parent, n).map_err(|m| (12, m))?;
    }
    Ok(())
}

fn validate(parent_tag: &str, n: &Node) -> Result<(), String> {
    if n.tag == "entry" && matches!(parent_tag, "address" | "address-group" | "tag") {
        let name = n.name().unwrap_or("");
        let max = if parent_tag == "tag" { 127 } else { 63 };
        if !valid_name(name, max) {
            return Err(format!("{parent_tag} -> {name} is not a valid name (at most {max} characters: letters, digits, '-', '_', '.', space)"));
        }
        if parent_tag == "address"
            && let Some(ip) = n.child("ip-netmask")
            && !valid_netmask(&ip.text)
        {
            return Err(format!("address -> {name} -> ip-netmask '{}' is not a valid IP netmask", ip.text));
        }
        if parent_tag == "address-group" && n.child("static").is_some() && n.child("dynamic").is_some() {
            return Err(format!("address-group -> {name} has both static and dynamic"));
        }
    }
    for c in &n.children {
        validate(&n.tag, c)?;
    }
    Ok(())
}

fn valid_name(name: &str, max: usize) -> bool {
    let first_ok = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    first_ok && name.chars().count() <= max && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_. ".contains(c))
}

/// `a.b.c.d[/n]` or an IPv6 address with an optional prefix.
fn valid_netmask(s: &str) -> bool {
    let (addr, len) = s.split_once('/').map(|(a, l)| (a, Some(l))).unwrap_or((s, None));
    if let Ok(ip) = addr.parse::<std::net::IpAddr>() {
        let max = if ip.is_ipv4() { 32 } else { 128 };
        return len.is_none_or(|l| l.parse::<u8>().is_ok_and(|n| n <= max));
    }
    false
}

/// Runs one `type=config` request.
pub(crate) fn handle(st: &mut State, user: &str, p: &std::collections::BTreeMap<String, String>) -> ApiReply {
    let action = p.get("action").map(String::as_str).unwrap_or("");
    let xpath = p.get("xpath").map(String::as_str).unwrap_or("");
    let changes = matches!(action, "set" | "edit" | "delete" | "multi-config");
    if changes && let Some(holder) = st.lock.as_ref().filter(|h| *h != user) {
        return ApiReply::error(None, &format!("Configuration is locked by {holder}"));
    }
    match action {
        "get" | "show" => {
            let steps = match xml::parse_xpath(xpath) {
                Ok(s) => s,
                Err(m) => return ApiReply::error(Some(6), &m),
            };
            let tree = if action == "get" { &st.candidate } else { &st.running };
            let found = xml::select(tree, &steps);
            let mut inner = String::new();
            for n in &found {
                n.write(&mut inner);
            }
            match (action, found.len()) {
                ("get", 0) => ApiReply::ok("<response status=\"success\" code=\"7\"><result/></response>".into()),
                ("get", k) => ApiReply::ok(format!("<response status=\"success\" code=\"19\"><result total-count=\"{k}\" count=\"{k}\">{inner}</result></response>")),
                (_, 0) => ApiReply::error(None, "No such node"),
                _ => ApiReply::ok(format!("<response status=\"success\"><result>{inner}</result></response>")),
            }
        }
        "set" | "edit" | "delete" => {
            let element = match p.get("element").map(|e| Node::parse_fragment(e)).transpose() {
                Ok(e) => e,
                Err(m) => return ApiReply::error(Some(18), &m),
            };
            let mut tree = st.candidate.clone();
            match apply_op(&mut tree, action, xpath, element) {
                Ok((code, msg)) => {
                    st.candidate = tree;
                    ApiReply::ok(format!("<response status=\"success\" code=\"{code}\"><msg>{}</msg></response>", xml::escape(&msg)))
                }
                Err((code, msg)) => ApiReply::error(Some(code), &msg),
            }
        }
        "multi-config" => multi_config(st, p),
        "" => ApiReply::error(Some(18), "Missing action"),
        other => ApiReply::error(Some(12), &format!("Unsupported action {other}")),
    }
}

/// `action=multi-config`: every operation in order; with `strict-transactional=yes` all
/// or nothing, and refused while a commit is in progress.
fn multi_config(st: &mut State, p: &std::collections::BTreeMap<String, String>) -> ApiReply {
    let strict = p.get("strict-transactional").is_some_and(|v| v == "yes");
    let ops = match p.get("element").map(|e| Node::parse_fragment(e)) {
        Some(Ok(mut v)) if v.len() == 1 && v[0].tag == "multi-config" => std::mem::take(&mut v[0].children),
        Some(Err(m)) => return ApiReply::error(Some(18), &m),
        _ => return ApiReply::error(Some(18), "element must be one <multi-config> element"),
    };
    if strict && st.commit_in_progress() {
        return ApiReply::error(None, "Commit is pending: strict-transactional multi-config refused. Please try again later");
    }
    let mut tree = st.candidate.clone();
    let mut nested = String::new();
    let mut failed = None;
    for op in ops {
        let id = op.attr("id").unwrap_or("").to_string();
        let xpath = op.attr("xpath").unwrap_or("").to_string();
        let element = (op.tag != "delete").then_some(op.children);
        // Non-strict: a failed operation leaves the others applied.
        let before = (!strict).then(|| tree.clone());
        match apply_op(&mut tree, &op.tag, &xpath, element) {
            Ok((code, msg)) => {
                let _ = write!(nested, "<response status=\"success\" code=\"{code}\" id=\"{}\"><msg>{}</msg></response>", xml::escape(&id), xml::escape(&msg));
            }
            Err((code, msg)) => {
                let _ = write!(nested, "<response status=\"error\" code=\"{code}\" id=\"{}\"><msg><line>{}</line></msg></response>", xml::escape(&id), xml::escape(&msg));
                failed.get_or_insert(code);
                if let Some(b) = before {
                    tree = b;
                }
                if strict {
                    break;
                }
            }
        }
    }
    if failed.is_none() || !strict {
        st.candidate = tree;
    }
    match failed {
        None => ApiReply::ok(format!("<response status=\"success\" code=\"20\">{nested}</response>")),
        Some(code) => ApiReply::ok(format!("<response status=\"error\" code=\"{code}\">{nested}</response>")),
    }
}

/// Problems that make a commit fail: empty static groups and members naming no address or
/// group in the same vsys / device group or in shared.
pub(crate) fn commit_errors(config: &Node) -> Vec<String> {
    let shared: Vec<&Node> = config.child("shared").into_iter().collect();
    let mut locations: Vec<(String, &Node)> = shared.iter().map(|s| ("shared".to_string(), *s)).collect();
    for dev in config.child("devices").into_iter().flat_map(|d| d.children_named("entry")) {
        for kind in ["vsys", "device-group"] {
            for loc in dev.child(kind).into_iter().flat_map(|v| v.children_named("entry")) {
                locations.push((format!("{kind} {}", loc.name().unwrap_or("")), loc));
            }
        }
    }
    let names = |n: &Node| -> Vec<String> {
        ["address", "address-group"]
            .iter()
            .flat_map(|k| n.child(k).into_iter().flat_map(|c| c.children_named("entry")).filter_map(|e| e.name().map(String::from)))
            .collect()
    };
    let shared_names: Vec<String> = shared.iter().flat_map(|s| names(s)).collect();
    let mut errors = Vec::new();
    for (label, loc) in &locations {
        let known: Vec<String> = names(loc).into_iter().chain(shared_names.iter().cloned()).collect();
        for g in loc.child("address-group").into_iter().flat_map(|c| c.children_named("entry")) {
            let gname = g.name().unwrap_or("");
            if let Some(st) = g.child("static") {
                if st.children_named("member").next().is_none() {
                    errors.push(format!("{label}: address-group -> {gname} -> static is missing 'member'"));
                }
                for m in st.children_named("member") {
                    if !known.contains(&m.text) {
                        errors.push(format!("{label}: address-group -> {gname} -> static '{}' is not a valid reference", m.text));
                    }
                }
            }
        }
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    const VSYS: &str = "/config/devices/entry[@name='localhost.localdomain']/vsys/entry[@name='vsys1']";

    fn frag(s: &str) -> Option<Vec<Node>> {
        Some(Node::parse_fragment(s).expect("test fragment"))
    }

    #[test]
    fn delete_refuses_referenced_objects_and_commit_checks_references() {
        let mut t = Node::new("config");
        let a = format!("{VSYS}/address/entry[@name='a1']");
        let g = format!("{VSYS}/address-group/entry[@name='g']");
        assert_eq!(apply_op(&mut t, "set", &a, frag("<ip-netmask>10.0.0.1/32</ip-netmask>")), Ok((20, "command succeeded".into())));
        apply_op(&mut t, "set", &g, frag("<static><member>a1</member></static>")).expect("set group");
        let e = apply_op(&mut t, "delete", &a, None).expect_err("referenced");
        assert_eq!(e.0, 10, "{e:?}");
        assert!(e.1.contains("address-group -> g -> static"), "{e:?}");
        assert!(commit_errors(&t).is_empty(), "{:?}", commit_errors(&t));
        apply_op(&mut t, "delete", &format!("{g}/static/member[text()='a1']"), None).expect("member delete");
        assert_eq!(commit_errors(&t), ["vsys vsys1: address-group -> g -> static is missing 'member'"]);
        apply_op(&mut t, "set", &g, frag("<static><member>nope</member></static>")).expect("set");
        assert!(commit_errors(&t)[0].contains("'nope' is not a valid reference"));
        apply_op(&mut t, "delete", &g, None).expect("group delete");
        assert_eq!(apply_op(&mut t, "delete", &a, None), Ok((20, "command succeeded".into())));
        assert_eq!(apply_op(&mut t, "delete", &a, None), Ok((7, "Object doesn't exist".into())));
    }

    #[test]
    fn ipv6_host_addresses_are_checked_like_ipv4_ones() {
        let mut t = Node::new("config");
        let a = |n: &str| format!("{VSYS}/address/entry[@name='{n}']");
        assert_eq!(apply_op(&mut t, "set", &a("bhfw-fd00-9--1"), frag("<ip-netmask>fd00:9::1/128</ip-netmask>")), Ok((20, "command succeeded".into())));
        assert_eq!(apply_op(&mut t, "set", &a("v6net"), frag("<ip-netmask>2001:db8::/32</ip-netmask>")), Ok((20, "command succeeded".into())));
        for bad in ["fd00:9::1/129", "fd00:9::zz/128", "fd00:9::1/", "fd00:9:::1"] {
            let e = apply_op(&mut t, "set", &a("bad6"), frag(&format!("<ip-netmask>{bad}</ip-netmask>"))).expect_err(bad);
            assert_eq!(e.0, 12, "{bad}: {e:?}");
            assert!(e.1.contains(&format!("ip-netmask '{bad}' is not a valid IP netmask")), "{e:?}");
        }
        // PAN-OS names take no colon: an IPv6 address cannot be a name as it is.
        let e = apply_op(&mut t, "set", &a("fd00:9::1"), frag("<ip-netmask>fd00:9::1/128</ip-netmask>")).expect_err("colon");
        assert_eq!(e.0, 12, "{e:?}");
    }

    #[test]
    fn invalid_names_addresses_and_edits_are_refused() {
        let mut t = Node::new("config");
        let long = "x".repeat(64);
        let e = apply_op(&mut t, "set", &format!("{VSYS}/address/entry[@name='{long}']"), frag("<ip-netmask>10.0.0.1</ip-netmask>")).expect_err("name");
        assert_eq!(e.0, 12);
        let e = apply_op(&mut t, "set", &format!("{VSYS}/address/entry[@name='a']"), frag("<ip-netmask>10.0.0.300/32</ip-netmask>")).expect_err("ip");
        assert_eq!(e.0, 12);
        assert_eq!(apply_op(&mut t, "set", "/config/x[", None).expect_err("xpath").0, 6);
        let e = apply_op(&mut t, "edit", &format!("{VSYS}/address/entry[@name='a']"), frag("<entry name='b'/>")).expect_err("identity");
        assert_eq!(e.0, 12);
        // A failed operation may leave its copy half changed: callers discard it.
        let mut t = Node::new("config");
        apply_op(&mut t, "edit", &format!("{VSYS}/address/entry[@name='a']"), frag("<entry name='a'><ip-netmask>10.0.0.2/32</ip-netmask></entry>")).expect("edit creates");
        assert_eq!(xml::select(&t, &xml::parse_xpath(&format!("{VSYS}/address/entry")).expect("xpath")).len(), 1);
    }
}
