//! Expected-reachability matrices: pattern matching, expansion of `expect:` blocks, rendering.
use serde::{Deserialize, Serialize};

/// A verdict for one ordered pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Traffic gets through.
    Allow,
    /// Traffic is dropped.
    Deny,
}

impl Verdict {
    /// From a probe outcome.
    pub fn from_reachable(ok: bool) -> Verdict {
        if ok { Verdict::Allow } else { Verdict::Deny }
    }
    fn symbol(self) -> char {
        match self {
            Verdict::Allow => '.',
            Verdict::Deny => 'X',
        }
    }
}

/// One `expect.rules` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Source pattern.
    pub from: String,
    /// Destination pattern.
    pub to: String,
    /// Verdict for matching pairs.
    pub verdict: Verdict,
}

/// An `expect:` block: a default, then rules applied in order (a later rule wins).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expect {
    /// Verdict for every pair before any rule.
    pub default: Verdict,
    /// Rules.
    #[serde(default)]
    pub rules: Vec<Rule>,
}

/// Whether `pattern` (`*`, `ns/*`, `ns/pod`) matches endpoint `key` (`ns/pod`).
pub fn pattern_matches(pattern: &str, key: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix("/*") {
        Some(ns) => key.split_once('/').is_some_and(|(kns, _)| kns == ns),
        None => pattern == key,
    }
}

/// Checks a pattern's syntax (the runner rejects typos instead of silently matching nothing).
pub fn pattern_is_valid(pattern: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.split_once('/') {
        Some((ns, rest)) => !ns.is_empty() && !ns.contains('*') && !rest.is_empty() && (rest == "*" || !rest.contains(['*', '/'])),
        None => !pattern.is_empty() && !pattern.contains('*'),
    }
}

/// A cell: a verdict, or not probed (`from == to`, or a named port the destination lacks).
pub type Cell = Option<Verdict>;

/// A reachability matrix over sources (rows) and destinations (columns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matrix {
    /// Row keys.
    pub from: Vec<String>,
    /// Column keys.
    pub to: Vec<String>,
    /// `cells[row][col]`.
    pub cells: Vec<Vec<Cell>>,
}

impl Matrix {
    /// Expands `expect` over the given endpoints; `from == to` is left unprobed.
    pub fn expand(expect: &Expect, from: &[String], to: &[String]) -> Matrix {
        let cells = from
            .iter()
            .map(|f| {
                to.iter()
                    .map(|t| {
                        (f != t).then(|| {
                            expect
                                .rules
                                .iter()
                                .rev()
                                .find(|r| pattern_matches(&r.from, f) && pattern_matches(&r.to, t))
                                .map_or(expect.default, |r| r.verdict)
                        })
                    })
                    .collect()
            })
            .collect();
        Matrix { from: from.to_vec(), to: to.to_vec(), cells }
    }

    /// Pairs whose cells differ: `(from, to, expected, observed)`; unprobed cells never differ.
    pub fn diff(&self, observed: &Matrix) -> Vec<(String, String, Verdict, Verdict)> {
        let mut out = Vec::new();
        for (r, f) in self.from.iter().enumerate() {
            for (c, t) in self.to.iter().enumerate() {
                if let (Some(e), Some(o)) = (self.cells[r][c], observed.cells[r][c])
                    && e != o
                {
                    out.push((f.clone(), t.clone(), e, o));
                }
            }
        }
        out
    }

    /// Counts (allowed, denied) among probed cells.
    pub fn counts(&self) -> (usize, usize) {
        let all = self.cells.iter().flatten().flatten();
        let allow = all.clone().filter(|v| **v == Verdict::Allow).count();
        (allow, all.count() - allow)
    }

    /// Renders the matrix: rows = from, numbered columns = to (legend is the row list when the
    /// endpoints are the same), `.` allow, `X` deny, `-` not probed; a `*` after a cell marks a
    /// difference from `other`.
    pub fn render(&self, title: &str, other: Option<&Matrix>) -> String {
        let w = self.from.iter().chain(self.to.iter()).map(String::len).max().unwrap_or(1).max(4);
        let mut s = format!("{title}\n{:w$}  ", "");
        for c in 0..self.to.len() {
            s.push_str(&format!("{c:<3}"));
        }
        s.push('\n');
        for (r, f) in self.from.iter().enumerate() {
            s.push_str(&format!("{f:w$}  "));
            for c in 0..self.to.len() {
                let cell = self.cells[r][c];
                let sym = cell.map_or('-', Verdict::symbol);
                let differs = other.is_some_and(|o| matches!((cell, o.cells[r][c]), (Some(a), Some(b)) if a != b));
                s.push(sym);
                s.push(if differs { '*' } else { ' ' });
                s.push(' ');
            }
            s.push('\n');
        }
        if self.to != self.from {
            for (c, t) in self.to.iter().enumerate() {
                s.push_str(&format!("  {c} = {t}\n"));
            }
        } else {
            s.push_str(&format!("  columns: {}\n", self.to.iter().enumerate().map(|(i, t)| format!("{i}={t}")).collect::<Vec<_>>().join(" ")));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Vec<String> {
        ["x/a", "x/b", "y/a"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn patterns() {
        assert!(pattern_matches("*", "x/a"));
        assert!(pattern_matches("x/*", "x/a"));
        assert!(!pattern_matches("x/*", "xx/a"));
        assert!(!pattern_matches("x/*", "y/x"));
        assert!(pattern_matches("x/a", "x/a"));
        assert!(!pattern_matches("x/a", "x/ab"));
        assert!(pattern_matches("outside", "outside"));
        assert!(pattern_is_valid("x/*") && pattern_is_valid("*") && pattern_is_valid("x/a"));
        assert!(!pattern_is_valid("x*") && !pattern_is_valid("x/a*") && !pattern_is_valid("/a"));
    }

    #[test]
    fn later_rules_win_and_diagonal_is_skipped() {
        let e = Expect {
            default: Verdict::Allow,
            rules: vec![
                Rule { from: "*".into(), to: "x/a".into(), verdict: Verdict::Deny },
                Rule { from: "x/b".into(), to: "x/a".into(), verdict: Verdict::Allow },
            ],
        };
        let m = Matrix::expand(&e, &keys(), &keys());
        assert_eq!(m.cells[0][0], None);
        assert_eq!(m.cells[1][0], Some(Verdict::Allow));
        assert_eq!(m.cells[2][0], Some(Verdict::Deny));
        assert_eq!(m.cells[0][2], Some(Verdict::Allow));
        assert_eq!(m.counts(), (5, 1));
    }

    #[test]
    fn diff_and_render_mark_cells() {
        let k = keys();
        let exp = Matrix::expand(&Expect { default: Verdict::Deny, rules: vec![] }, &k, &k);
        let mut obs = exp.clone();
        obs.cells[1][2] = Some(Verdict::Allow);
        let d = exp.diff(&obs);
        assert_eq!(d, vec![("x/b".into(), "y/a".into(), Verdict::Deny, Verdict::Allow)]);
        let r = obs.render("observed", Some(&exp));
        assert!(r.lines().any(|l| l.starts_with("x/b") && l.contains(".*")), "{r}");
    }
}
