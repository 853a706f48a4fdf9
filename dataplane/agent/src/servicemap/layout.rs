//! Where the map's boxes and lines go, computed once here for both the static SVG and the
//! page (which draws from the layout the API sends, so the two pictures agree).
//!
//! One column per group ([`OUTSIDE`](super::OUTSIDE) first, then namespaces in the order
//! allowed traffic flows through them), nodes stacked by name; edges are cubic curves from the
//! side of one box facing the other, parallel edges of one pair fanned apart, edges that skip
//! a column routed below the columns. Deterministic: the same map gives the same picture.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::{Edge, ServiceMap, Verdict};

const MARGIN: f64 = 24.0;
/// Room above the columns for the caption.
const TOP: f64 = 56.0;
const HEADER: f64 = 28.0;
const PAD: f64 = 12.0;
const COL_W: f64 = 180.0;
/// Wide enough for a label between two columns.
const COL_GAP: f64 = 180.0;
const NODE_H: f64 = 46.0;
const NODE_GAP: f64 = 34.0;
/// Parallel edges of one pair, apart.
const FAN: f64 = 9.0;
const LEGEND_H: f64 = 40.0;
/// Distance between the lanes of edges that skip columns.
const LANE: f64 = 16.0;

/// A group's column.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct GroupBox {
    pub name: String,
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

/// A node's box; `nodes[i]` of the layout is `nodes[i]` of the map.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct NodeBox {
    pub id: String,
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
}

/// An edge's curve (SVG path data) and label; `edges[i]` of the layout is `edges[i]` of the map.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct EdgePath {
    pub d: String,
    pub label: String,
    pub label_x: f64,
    pub label_y: f64,
    /// The label's `text-anchor`: `middle`, or `start` for an edge bulging out of a column.
    pub anchor: &'static str,
    pub colour: &'static str,
}

/// The whole picture.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Layout {
    pub width: f64,
    pub height: f64,
    pub groups: Vec<GroupBox>,
    pub nodes: Vec<NodeBox>,
    pub edges: Vec<EdgePath>,
}

/// Green allowed, red denied, orange dropped.
pub fn colour(v: Verdict) -> &'static str {
    match v {
        Verdict::Allowed => "#2e7d32",
        Verdict::Denied => "#c62828",
        Verdict::Dropped => "#ef6c00",
    }
}

/// "5432/tcp ×3 · shop/api": port, flows, and the deciding policy without its kind.
fn label(e: &Edge) -> String {
    let mut s = match e.port {
        Some(p) => format!("{p}/{}", e.protocol),
        None => e.protocol.clone(),
    };
    if e.flows > 1 {
        let _ = write!(s, " ×{}", e.flows);
    }
    let by = match (&e.policy, &e.tier, &e.drop_reason) {
        (Some(p), ..) => p.rsplit(' ').next().unwrap_or(p).to_string(),
        (None, _, Some(r)) => r.clone(),
        (None, Some(t), None) => format!("end of tier {t}"),
        (None, None, None) => "no policy".into(),
    };
    let _ = write!(s, " · {by}");
    s
}

#[derive(Clone, Copy)]
struct Pt(f64, f64);

fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// A piece of an SVG path after its start.
enum Seg {
    Curve(Pt, Pt, Pt),
    Line(Pt),
}

fn path(start: Pt, segments: &[Seg]) -> String {
    let mut d = format!("M{} {}", round(start.0), round(start.1));
    for s in segments {
        let _ = match s {
            Seg::Curve(a, b, c) => write!(d, " C{} {} {} {} {} {}", round(a.0), round(a.1), round(b.0), round(b.1), round(c.0), round(c.1)),
            Seg::Line(a) => write!(d, " L{} {}", round(a.0), round(a.1)),
        };
    }
    d
}

/// Column order: [`OUTSIDE`](super::OUTSIDE) first, then groups by how many allowed hops they
/// are from it (traffic reads left to right: outside, frontends, backends, data), then by
/// name; groups it does not reach last.
fn column_order(map: &ServiceMap) -> Vec<String> {
    let group: BTreeMap<&str, &str> = map.nodes.iter().map(|n| (n.id.as_str(), n.group.as_str())).collect();
    let mut next: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    let allowed = map.edges.iter().filter(|e| e.current && e.verdict == Verdict::Allowed);
    for e in allowed {
        if let (Some(&a), Some(&b)) = (group.get(e.from.as_str()), group.get(e.to.as_str()))
            && a != b
        {
            next.entry(a).or_default().push(b);
        }
    }
    let mut rank: BTreeMap<&str, usize> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([(super::OUTSIDE, 0)]);
    while let Some((g, r)) = queue.pop_front() {
        if rank.contains_key(g) {
            continue;
        }
        rank.insert(g, r);
        for &n in next.get(g).into_iter().flatten() {
            queue.push_back((n, r + 1));
        }
    }
    let mut groups: Vec<&str> = map.nodes.iter().map(|n| n.group.as_str()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    groups.sort_by_key(|g| (rank.get(g).copied().unwrap_or(usize::MAX), *g));
    groups.into_iter().map(str::to_string).collect()
}

fn label_width(label: &str) -> f64 {
    label.chars().count() as f64 * 5.8
}

/// Moves each label that would overlap one placed before it (in `order`) a line down or up,
/// nearest free line first (widths estimated from the 10-pixel font: no text measuring
/// outside a browser).
fn spread_labels(edges: &mut [EdgePath], order: &[usize]) {
    const LINE: f64 = 13.0;
    let mut placed: Vec<(f64, f64, f64, f64)> = Vec::new();
    for &i in order {
        let e = &mut edges[i];
        if e.d.is_empty() {
            continue;
        }
        let w = label_width(&e.label);
        let x0 = if e.anchor == "start" { e.label_x } else { e.label_x - w / 2.0 };
        let free = |y: f64| !placed.iter().any(|&(a0, a1, b0, b1)| x0 < a1 && a0 < x0 + w && y - 10.0 < b1 && b0 < y + 2.0);
        let y = [0.0, 1.0, -1.0, 2.0, -2.0, 3.0, -3.0].into_iter().map(|k| e.label_y + k * LINE).find(|&y| free(y)).unwrap_or(e.label_y);
        e.label_y = round(y);
        placed.push((x0, x0 + w, y - 10.0, y + 2.0));
    }
}

/// Lays out `map` (see the module docs).
pub fn layout(map: &ServiceMap) -> Layout {
    let order = column_order(map);
    let mut groups = Vec::new();
    let mut nodes = vec![NodeBox { id: String::new(), x: 0.0, y: 0.0, w: 0.0, h: 0.0 }; map.nodes.len()];
    let mut column_of = vec![0; map.nodes.len()];
    let mut tallest: f64 = 0.0;
    for (c, name) in order.iter().enumerate() {
        let members: Vec<usize> = map.nodes.iter().enumerate().filter(|(_, n)| &n.group == name).map(|(i, _)| i).collect();
        let x = MARGIN + c as f64 * (COL_W + COL_GAP);
        let h = HEADER + PAD + members.len() as f64 * (NODE_H + NODE_GAP) - NODE_GAP + PAD;
        tallest = tallest.max(h);
        groups.push(GroupBox { name: name.clone(), x, y: TOP, w: COL_W, h });
        for (row, &i) in members.iter().enumerate() {
            let y = TOP + HEADER + PAD + row as f64 * (NODE_H + NODE_GAP);
            nodes[i] = NodeBox { id: map.nodes[i].id.clone(), x: x + PAD, y, w: COL_W - 2.0 * PAD, h: NODE_H };
            column_of[i] = c;
        }
    }
    let index: BTreeMap<&str, usize> = map.nodes.iter().enumerate().map(|(i, n)| (n.id.as_str(), i)).collect();
    // Edges that skip a column run in a lane of their own below the columns, not through the
    // boxes in between.
    let bottom = TOP + tallest;
    let mut lanes = 0;
    // The picture's right edge: the last column, or what bulges or is written beyond it.
    let mut right = groups.iter().map(|g| g.x + g.w).fold(0.0, f64::max);

    // Current edges are placed first (centred fans, inner lanes, labels where they belong);
    // earlier verdicts, which the page may hide, around them.
    let priority: Vec<usize> = (0..map.edges.len()).filter(|&i| map.edges[i].current).chain((0..map.edges.len()).filter(|&i| !map.edges[i].current)).collect();
    // Edges between the same two nodes (either way) fan out around the centre line.
    let pair = |e: &Edge| if e.from <= e.to { (e.from.clone(), e.to.clone()) } else { (e.to.clone(), e.from.clone()) };
    let mut current_per_pair: BTreeMap<(String, String), usize> = BTreeMap::new();
    for e in map.edges.iter().filter(|e| e.current) {
        *current_per_pair.entry(pair(e)).or_default() += 1;
    }
    let mut seen: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut edges = vec![EdgePath { d: String::new(), label: String::new(), label_x: 0.0, label_y: 0.0, anchor: "middle", colour: "" }; map.edges.len()];
    for &i in &priority {
        let e = &map.edges[i];
        let key = pair(e);
        let centre = (current_per_pair.get(&key).copied().unwrap_or(1).max(1) - 1) as f64 / 2.0;
        let k = seen.entry(key).or_default();
        let off = (*k as f64 - centre) * FAN;
        *k += 1;
        let (Some(&ai), Some(&bi)) = (index.get(e.from.as_str()), index.get(e.to.as_str())) else {
            edges[i] = EdgePath { d: String::new(), label: label(e), label_x: 0.0, label_y: 0.0, anchor: "middle", colour: colour(e.verdict) };
            continue;
        };
        let (a, b) = (&nodes[ai], &nodes[bi]);
        let (acy, bcy) = (a.y + a.h / 2.0 + off, b.y + b.h / 2.0 + off);
        let (ca, cb) = (column_of[ai], column_of[bi]);
        let (d, mid, beside) = if ca.abs_diff(cb) > 1 {
            // Down into the lane, along it, up into the destination.
            let y = bottom + 18.0 + lanes as f64 * LANE;
            lanes += 1;
            let (s, t, dir) = if cb > ca { (Pt(a.x + a.w, acy), Pt(b.x, bcy), 1.0) } else { (Pt(a.x, acy), Pt(b.x + b.w, bcy), -1.0) };
            let segments = [
                Seg::Curve(Pt(s.0 + dir * 60.0, s.1), Pt(s.0 + dir * 60.0, y), Pt(s.0 + dir * 120.0, y)),
                Seg::Line(Pt(t.0 - dir * 120.0, y)),
                Seg::Curve(Pt(t.0 - dir * 60.0, y), Pt(t.0 - dir * 60.0, t.1), t),
            ];
            (path(s, &segments), Pt((s.0 + t.0) / 2.0, y), false)
        } else {
            let (p0, p1, p2, p3) = if ai == bi {
                let r = a.x + a.w;
                (Pt(r, acy - 10.0), Pt(r + 60.0, acy - 34.0), Pt(r + 60.0, acy + 34.0), Pt(r, acy + 10.0))
            } else if ca == cb {
                // Same column: bulge out to the right, further for rows further apart.
                let r = a.x + a.w;
                let bulge = 40.0 + 0.25 * (bcy - acy).abs() + off.abs();
                (Pt(r, acy), Pt(r + bulge, acy), Pt(r + bulge, bcy), Pt(r, bcy))
            } else if cb > ca {
                let (s, t) = (Pt(a.x + a.w, acy), Pt(b.x, bcy));
                let dx = (t.0 - s.0) / 2.0;
                (s, Pt(s.0 + dx, s.1), Pt(t.0 - dx, t.1), t)
            } else {
                let (s, t) = (Pt(a.x, acy), Pt(b.x + b.w, bcy));
                let dx = (s.0 - t.0) / 2.0;
                (s, Pt(s.0 - dx, s.1), Pt(t.0 + dx, t.1), t)
            };
            // The curve's midpoint (t = 1/2).
            let mid = Pt((p0.0 + 3.0 * p1.0 + 3.0 * p2.0 + p3.0) / 8.0, (p0.1 + 3.0 * p1.1 + 3.0 * p2.1 + p3.1) / 8.0);
            right = right.max(p1.0).max(p2.0);
            (path(p0, &[Seg::Curve(p1, p2, p3)]), mid, ca == cb)
        };
        // A curve out of a column and back has its label beside its outermost point; others
        // centred above their middle.
        let (x, y, anchor) = if beside { (mid.0 + 4.0, mid.1 + 3.0, "start") } else { (mid.0, mid.1 - 4.0, "middle") };
        edges[i] = EdgePath { d, label: label(e), label_x: round(x), label_y: round(y), anchor, colour: colour(e.verdict) };
    }
    spread_labels(&mut edges, &priority);
    for e in &edges {
        let w = label_width(&e.label);
        right = right.max(if e.anchor == "start" { e.label_x + w } else { e.label_x + w / 2.0 });
    }
    // Wide enough for the legend, too.
    let width = (right + MARGIN).max(MARGIN + 480.0);
    let height = bottom + 18.0 + lanes as f64 * LANE + LEGEND_H + MARGIN;
    Layout { width: round(width), height: round(height), groups, nodes, edges }
}

/// XML text and attribute escaping: names and labels come from the cluster.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The map as a standalone SVG document (`bulkhead flows graph -o svg`): the same layout and
/// `data-node` / `data-verdict` attributes as the page. Only current edges are drawn, as the
/// page does by default: an edge whose verdict a later flow changed (allowed before a policy,
/// denied after) is counted in the caption and listed by `-o json`.
pub fn render_svg(map: &ServiceMap) -> String {
    let l = layout(map);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#,
        w = l.width,
        h = l.height
    );
    s.push_str("<defs>\n");
    for v in [Verdict::Allowed, Verdict::Denied, Verdict::Dropped] {
        let _ = writeln!(
            s,
            r#"<marker id="arrow-{}" viewBox="0 0 10 10" refX="10" refY="5" markerUnits="userSpaceOnUse" markerWidth="10" markerHeight="10" orient="auto-start-reverse"><path d="M0 0 L10 5 L0 10 z" fill="{}"/></marker>"#,
            v.as_str(),
            colour(v)
        );
    }
    s.push_str("</defs>\n");
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    let _ = writeln!(s, r##"<text x="{MARGIN}" y="28" font-size="16" font-weight="bold" fill="#263238">Bulkhead service map</text>"##);
    let _ = writeln!(s, r##"<text x="{MARGIN}" y="46" fill="#555">{} from {} flow records</text>"##, esc(&map.summary()), map.records);
    for g in &l.groups {
        let _ = writeln!(
            s,
            r##"<g class="group" data-group="{n}"><rect x="{}" y="{}" width="{}" height="{}" rx="8" fill="#eceff1" stroke="#b0bec5"/><text x="{}" y="{}" font-weight="bold" fill="#37474f">{n}</text></g>"##,
            g.x,
            g.y,
            g.w,
            g.h,
            g.x + PAD,
            g.y + 19.0,
            n = esc(&g.name)
        );
    }
    let edge_attrs = |e: &Edge| format!(r#"class="edge" data-from="{}" data-to="{}" data-verdict="{}""#, esc(&e.from), esc(&e.to), e.verdict.as_str());
    let drawn = || map.edges.iter().zip(&l.edges).filter(|(e, _)| e.current);
    for (e, p) in drawn() {
        let _ = writeln!(
            s,
            r#"<g {}><title>{} → {}: {}, {}</title><path d="{}" fill="none" stroke="{}" stroke-width="2" marker-end="url(#arrow-{})"/></g>"#,
            edge_attrs(e),
            esc(&e.from),
            esc(&e.to),
            e.verdict.as_str(),
            esc(&e.decided_by),
            p.d,
            p.colour,
            e.verdict.as_str()
        );
    }
    for (n, b) in map.nodes.iter().zip(&l.nodes) {
        let sub = if n.external { n.addresses.len().to_string() + " address(es)" } else { n.addresses.join(", ") };
        let _ = writeln!(
            s,
            r##"<g class="node" data-node="{}"><rect x="{}" y="{}" width="{}" height="{}" rx="6" fill="#ffffff" stroke="#546e7a"/><text x="{}" y="{}" font-weight="bold">{}</text><text x="{}" y="{}" font-size="10" fill="#666">{}</text></g>"##,
            esc(&n.id),
            b.x,
            b.y,
            b.w,
            b.h,
            b.x + 8.0,
            b.y + 19.0,
            esc(&n.name),
            b.x + 8.0,
            b.y + 35.0,
            esc(&sub)
        );
    }
    // Labels last, over boxes and lines, with a white halo to stay readable.
    for (_, p) in drawn() {
        let _ = writeln!(
            s,
            r##"<text x="{}" y="{}" text-anchor="{}" font-size="10" fill="{}" stroke="#ffffff" stroke-width="3" paint-order="stroke">{}</text>"##,
            p.label_x,
            p.label_y,
            p.anchor,
            p.colour,
            esc(&p.label)
        );
    }
    let ly = l.height - MARGIN - 8.0;
    let mut x = MARGIN;
    for v in [Verdict::Allowed, Verdict::Denied, Verdict::Dropped] {
        let _ = writeln!(
            s,
            r#"<line x1="{x}" y1="{ly}" x2="{}" y2="{ly}" stroke="{}" stroke-width="2" marker-end="url(#arrow-{})"/><text x="{}" y="{}">{}</text>"#,
            x + 30.0,
            colour(v),
            v.as_str(),
            x + 38.0,
            ly + 4.0,
            v.as_str()
        );
        x += 120.0;
    }
    s.push_str("</svg>\n");
    s
}
