//! The configuration tree and the subset of XPath PAN-OS clients use to address it:
//! absolute paths of element steps, each optionally narrowed by `[@name='v']` (an entry) or
//! `[text()='v']` (a list member), as pan-python, pan-os-python and the GUI's API browser
//! produce them.

use std::fmt::Write as _;

/// One element of the configuration (PAN-OS config has no mixed content).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub tag: String,
    pub attrs: Vec<(String, String)>,
    pub text: String,
    pub children: Vec<Node>,
}

impl Node {
    /// An empty element.
    pub fn new(tag: &str) -> Node {
        Node { tag: tag.to_string(), attrs: Vec::new(), text: String::new(), children: Vec::new() }
    }

    /// An `<entry name="..."/>`-style element.
    pub fn named(tag: &str, name: &str) -> Node {
        let mut n = Node::new(tag);
        n.attrs.push(("name".into(), name.to_string()));
        n
    }

    /// An attribute's value.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attrs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    /// The `name` attribute.
    pub fn name(&self) -> Option<&str> {
        self.attr("name")
    }

    /// The first child with this tag.
    pub fn child(&self, tag: &str) -> Option<&Node> {
        self.children.iter().find(|c| c.tag == tag)
    }

    /// Children with this tag.
    pub fn children_named<'a>(&'a self, tag: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
        self.children.iter().filter(move |c| c.tag == tag)
    }

    /// Serialises the element (attributes with double quotes, text escaped).
    pub fn write(&self, out: &mut String) {
        out.push('<');
        out.push_str(&self.tag);
        for (k, v) in &self.attrs {
            let _ = write!(out, " {k}=\"{}\"", escape(v));
        }
        if self.children.is_empty() && self.text.is_empty() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        out.push_str(&escape(&self.text));
        for c in &self.children {
            c.write(out);
        }
        let _ = write!(out, "</{}>", self.tag);
    }

    /// The element as a string.
    pub fn to_xml(&self) -> String {
        let mut s = String::new();
        self.write(&mut s);
        s
    }

    /// Converts a parsed element (whitespace-only text dropped, as PAN-OS does).
    pub fn from_xml(n: roxmltree::Node) -> Node {
        let mut out = Node::new(n.tag_name().name());
        out.attrs = n.attributes().map(|a| (a.name().to_string(), a.value().to_string())).collect();
        for c in n.children() {
            if c.is_element() {
                out.children.push(Node::from_xml(c));
            } else if c.is_text() {
                out.text.push_str(c.text().unwrap_or(""));
            }
        }
        if out.text.trim().is_empty() {
            out.text.clear();
        } else {
            out.text = out.text.trim().to_string();
        }
        out
    }

    /// Parses a fragment: zero or more sibling elements (an `element=` parameter).
    pub fn parse_fragment(text: &str) -> Result<Vec<Node>, String> {
        let wrapped = format!("<fragment-root>{text}</fragment-root>");
        let doc = roxmltree::Document::parse(&wrapped).map_err(|e| format!("malformed element: {e}"))?;
        Ok(doc.root_element().children().filter(|c| c.is_element()).map(Node::from_xml).collect())
    }

    /// Whether `self` is what step `s` selects.
    fn matches(&self, s: &Step) -> bool {
        self.tag == s.tag
            && match &s.pred {
                None => true,
                Some(Pred::Name(v)) => self.name() == Some(v.as_str()),
                Some(Pred::Text(v)) => self.text == *v,
            }
    }
}

/// Escapes text and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

/// A step's predicate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pred {
    /// `[@name='v']`
    Name(String),
    /// `[text()='v']`
    Text(String),
}

/// One location step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub tag: String,
    pub pred: Option<Pred>,
}

/// Parses an absolute xpath under `/config`; the error is PAN-OS's code 6 text.
pub fn parse_xpath(xpath: &str) -> Result<Vec<Step>, String> {
    let bad = || format!("Bad XPath: {xpath}");
    let rest = xpath.strip_prefix('/').ok_or_else(bad)?;
    let mut steps = Vec::new();
    let mut cur = String::new();
    let (mut in_brackets, mut quote) = (false, None::<char>);
    let mut raw = Vec::new();
    for ch in rest.chars() {
        match (ch, quote) {
            (q @ ('\'' | '"'), None) if in_brackets => quote = Some(q),
            (q, Some(open)) if q == open => quote = None,
            ('[', None) => in_brackets = true,
            (']', None) => in_brackets = false,
            ('/', None) if !in_brackets => {
                raw.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    if quote.is_some() || in_brackets {
        return Err(bad());
    }
    raw.push(cur);
    for r in raw {
        let (tag, pred) = match r.split_once('[') {
            None => (r.as_str(), None),
            Some((tag, p)) => {
                let p = p.strip_suffix(']').ok_or_else(bad)?;
                let (kind, value) = p.split_once('=').ok_or_else(bad)?;
                let value = value.trim();
                let unquoted = value
                    .strip_prefix('\'')
                    .and_then(|v| v.strip_suffix('\''))
                    .or_else(|| value.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
                    .ok_or_else(bad)?;
                match kind.trim() {
                    "@name" => (tag, Some(Pred::Name(unquoted.to_string()))),
                    "text()" => (tag, Some(Pred::Text(unquoted.to_string()))),
                    _ => return Err(bad()),
                }
            }
        };
        if tag.is_empty() || !tag.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') {
            return Err(bad());
        }
        steps.push(Step { tag: tag.to_string(), pred });
    }
    if steps.first().map(|s| s.tag.as_str()) != Some("config") || steps[0].pred.is_some() {
        return Err(bad());
    }
    Ok(steps)
}

/// Every node the steps select (`root` is `<config>`, matched by the first step).
pub fn select<'a>(root: &'a Node, steps: &[Step]) -> Vec<&'a Node> {
    if steps.is_empty() || !root.matches(&steps[0]) {
        return Vec::new();
    }
    let mut cur = vec![root];
    for s in &steps[1..] {
        cur = cur.iter().flat_map(|n| n.children.iter().filter(|c| c.matches(s))).collect();
    }
    cur
}

/// Child indices leading to the first node the steps select.
pub fn find_path(root: &Node, steps: &[Step]) -> Option<Vec<usize>> {
    if steps.is_empty() || !root.matches(&steps[0]) {
        return None;
    }
    let mut path = Vec::new();
    let mut n = root;
    for s in &steps[1..] {
        let i = n.children.iter().position(|c| c.matches(s))?;
        path.push(i);
        n = &n.children[i];
    }
    Some(path)
}

/// The node at a path of child indices.
pub fn at_mut<'a>(root: &'a mut Node, path: &[usize]) -> &'a mut Node {
    path.iter().fold(root, |n, &i| &mut n.children[i])
}

/// The node the steps select, created (with its predicate's name or text) where missing.
pub fn ensure<'a>(root: &'a mut Node, steps: &[Step]) -> &'a mut Node {
    let mut n = root;
    for s in &steps[1..] {
        let i = match n.children.iter().position(|c| c.matches(s)) {
            Some(i) => i,
            None => {
                let mut c = Node::new(&s.tag);
                match &s.pred {
                    Some(Pred::Name(v)) => c.attrs.push(("name".into(), v.clone())),
                    Some(Pred::Text(v)) => c.text = v.clone(),
                    None => {}
                }
                n.children.push(c);
                n.children.len() - 1
            }
        };
        n = &mut n.children[i];
    }
    n
}

/// `set` semantics: merges `add` into `into`. Entries match by name, list members by text,
/// other elements by tag; leaves take the new text.
pub fn merge(into: &mut Node, add: &Node) {
    for c in &add.children {
        let same = |e: &&mut Node| {
            e.tag == c.tag
                && match (c.name(), c.tag.as_str()) {
                    (Some(n), _) => e.name() == Some(n),
                    (None, "member") => e.text == c.text,
                    (None, _) => true,
                }
        };
        match into.children.iter_mut().find(same) {
            Some(existing) if c.children.is_empty() && c.tag != "member" => {
                existing.text = c.text.clone();
                existing.attrs = c.attrs.clone();
            }
            Some(existing) => merge(existing, c),
            None => into.children.push(c.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_entry_and_member_predicates() {
        let s = parse_xpath("/config/devices/entry[@name='localhost.localdomain']/vsys/entry[@name=\"vs 1\"]/address-group/entry[@name='g']/static/member[text()='a/b']")
            .expect("valid xpath");
        assert_eq!(s.len(), 9);
        assert_eq!(s[2].pred, Some(Pred::Name("localhost.localdomain".into())));
        assert_eq!(s[4].pred, Some(Pred::Name("vs 1".into())));
        assert_eq!(s[8], Step { tag: "member".into(), pred: Some(Pred::Text("a/b".into())) });
        for bad in ["config/devices", "/devices", "/config/x[@name='a", "/config/x[@id='a']", "/config//x", "/config/x[@name=a]"] {
            assert!(parse_xpath(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn set_merges_edit_replaces_and_select_finds() {
        let mut root = Node::new("config");
        let steps = parse_xpath("/config/shared/address-group/entry[@name='g']").expect("xpath");
        let frag = Node::parse_fragment("<static><member>a</member><member>b</member></static>").expect("fragment");
        let mut wrapper = Node::new("x");
        wrapper.children = frag;
        merge(ensure(&mut root, &steps), &wrapper);
        let more = Node::parse_fragment("<static><member>b</member><member>c</member></static>").expect("fragment");
        wrapper.children = more;
        merge(ensure(&mut root, &steps), &wrapper);
        let g = select(&root, &steps);
        assert_eq!(g.len(), 1);
        let members: Vec<_> = g[0].child("static").expect("static").children.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(members, ["a", "b", "c"]);
        let m = parse_xpath("/config/shared/address-group/entry[@name='g']/static/member[text()='b']").expect("xpath");
        let p = find_path(&root, &m).expect("member b");
        assert_eq!(g[0].to_xml(), "<entry name=\"g\"><static><member>a</member><member>b</member><member>c</member></static></entry>");
        assert_eq!(at_mut(&mut root, &p).text, "b");
        assert!(select(&root, &parse_xpath("/config/shared/address-group/entry[@name='h']").expect("xpath")).is_empty());
    }
}
