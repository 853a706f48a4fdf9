//! The Calico selector grammar -> [`Selector`].
//!
//! ```text
//! expr    := and ( "||" and )*
//! and     := unary ( "&&" unary )*
//! unary   := "!" unary | primary
//! primary := "(" expr ")" | "all()" | "has(" key ")"
//!          | key "==" str | key "!=" str
//!          | key "in" "{" [ str ( "," str )* ] "}" | key "not" "in" "{" ... "}"
//!          | key "contains" str | key "starts" "with" str | key "ends" "with" str
//! str     := '...' | "..."   (no escapes, as in Calico)
//! key     := [A-Za-z0-9_./-]+  (e.g. projectcalico.org/namespace)
//! ```
//!
//! The empty (or all-blank) selector is `all()`. Precedence: `!` > `&&` > `||`.
//! [`render`] writes a selector back in this grammar (`parse(render(s)) == s`).

use std::collections::BTreeSet;
use std::fmt;

use crate::tiered::Selector;

/// Why a selector does not parse: a 1-based character position and what went wrong there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorError {
    /// 1-based character (not byte) position of the offending text; `len + 1` at end of input.
    pub position: usize,
    pub message: String,
}

impl fmt::Display for SelectorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at position {}: {}", self.position, self.message)
    }
}

impl std::error::Error for SelectorError {}

/// Parses a Calico selector expression.
pub fn parse_selector(text: &str) -> Result<Selector, SelectorError> {
    let chars: Vec<char> = text.chars().collect();
    let mut p = Parser { chars, pos: 0 };
    p.skip_ws();
    if p.at_end() {
        return Ok(Selector::All);
    }
    let sel = p.expr()?;
    p.skip_ws();
    if !p.at_end() {
        return Err(p.unexpected("'&&', '||' or the end of the selector"));
    }
    Ok(sel)
}

struct Parser {
    chars: Vec<char>,
    pos: usize,
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '/' | '-')
}

impl Parser {
    fn at_end(&self) -> bool {
        self.pos >= self.chars.len()
    }

    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while self.peek().is_some_and(char::is_whitespace) {
            self.pos += 1;
        }
    }

    fn rest_starts_with(&self, s: &str) -> bool {
        (self.pos..).zip(s.chars()).all(|(i, c)| self.chars.get(i) == Some(&c))
    }

    /// Consumes `s` (after blanks) if it is next.
    fn eat(&mut self, s: &str) -> bool {
        self.skip_ws();
        if self.rest_starts_with(s) {
            self.pos += s.chars().count();
            true
        } else {
            false
        }
    }

    /// Consumes the word `w` (after blanks) if it is next and not the start of a longer word.
    fn eat_word(&mut self, w: &str) -> bool {
        self.skip_ws();
        let n = w.chars().count();
        if self.rest_starts_with(w) && !self.chars.get(self.pos + n).copied().is_some_and(is_key_char) {
            self.pos += n;
            true
        } else {
            false
        }
    }

    fn err_at(&self, pos: usize, message: impl Into<String>) -> SelectorError {
        SelectorError { position: pos + 1, message: message.into() }
    }

    /// "expected X, found <next token>" at the current position.
    fn unexpected(&self, expected: &str) -> SelectorError {
        let found = if self.at_end() {
            "the end of the selector".to_string()
        } else {
            let c = self.chars[self.pos];
            let end = if is_key_char(c) {
                (self.pos..self.chars.len()).find(|&i| !is_key_char(self.chars[i])).unwrap_or(self.chars.len())
            } else {
                let mut e = self.pos + 1;
                // Two-character operators read as one token.
                if e < self.chars.len()
                    && matches!((c, self.chars[e]), ('&', '&') | ('|', '|') | ('=', '=') | ('!', '='))
                {
                    e += 1;
                }
                e
            };
            let tok: String = self.chars[self.pos..end].iter().collect();
            format!("{tok:?}")
        };
        self.err_at(self.pos, format!("expected {expected}, found {found}"))
    }

    fn expr(&mut self) -> Result<Selector, SelectorError> {
        let mut parts = vec![self.and()?];
        while self.eat("||") {
            parts.push(self.and()?);
        }
        Ok(flatten(parts, true))
    }

    fn and(&mut self) -> Result<Selector, SelectorError> {
        let mut parts = vec![self.unary()?];
        while self.eat("&&") {
            parts.push(self.unary()?);
        }
        Ok(flatten(parts, false))
    }

    fn unary(&mut self) -> Result<Selector, SelectorError> {
        self.skip_ws();
        if self.peek() == Some('!') && self.chars.get(self.pos + 1) != Some(&'=') {
            self.pos += 1;
            return Ok(Selector::Not(Box::new(self.unary()?)));
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Selector, SelectorError> {
        self.skip_ws();
        if self.eat("(") {
            let inner = self.expr()?;
            if !self.eat(")") {
                return Err(self.unexpected("')'"));
            }
            return Ok(inner);
        }
        let start = self.pos;
        if self.eat_word("all") && self.eat("(") {
            if !self.eat(")") {
                return Err(self.unexpected("')' (all() takes no argument)"));
            }
            return Ok(Selector::All);
        }
        self.pos = start;
        if self.eat_word("has") && self.eat("(") {
            self.skip_ws();
            let key = self.key("a label key inside has()")?;
            if !self.eat(")") {
                return Err(self.unexpected("')'"));
            }
            return Ok(Selector::Has(key));
        }
        self.pos = start;
        if self.eat_word("global") && self.eat("(") {
            return Err(self.err_at(start, "global() (non-namespaced endpoints) is not supported"));
        }
        self.pos = start;
        let key = self.key("a label key, all(), has(...), '!' or '('")?;
        self.skip_ws();
        let op_pos = self.pos;
        if self.eat("==") {
            return Ok(Selector::Eq(key, self.string()?));
        }
        if self.eat("!=") {
            return Ok(Selector::Ne(key, self.string()?));
        }
        if self.eat_word("in") {
            return Ok(Selector::In(key, self.set()?));
        }
        if self.eat_word("not") {
            if !self.eat_word("in") {
                return Err(self.unexpected("'in' after 'not'"));
            }
            return Ok(Selector::NotIn(key, self.set()?));
        }
        if self.eat_word("contains") {
            return Ok(Selector::Contains(key, self.string()?));
        }
        if self.eat_word("starts") {
            if !self.eat_word("with") {
                return Err(self.unexpected("'with' after 'starts'"));
            }
            return Ok(Selector::StartsWith(key, self.string()?));
        }
        if self.eat_word("ends") {
            if !self.eat_word("with") {
                return Err(self.unexpected("'with' after 'ends'"));
            }
            return Ok(Selector::EndsWith(key, self.string()?));
        }
        self.pos = op_pos;
        if self.peek() == Some('=') && self.chars.get(self.pos + 1) != Some(&'=') {
            return Err(self.err_at(op_pos, "found '=', Calico selectors compare with '=='"));
        }
        Err(self.unexpected(&format!(
            "an operator after label key {key:?} (==, !=, in, not in, contains, starts with, ends with)"
        )))
    }

    fn key(&mut self, expected: &str) -> Result<String, SelectorError> {
        self.skip_ws();
        let start = self.pos;
        while self.peek().is_some_and(is_key_char) {
            self.pos += 1;
        }
        if self.pos == start {
            return Err(self.unexpected(expected));
        }
        Ok(self.chars[start..self.pos].iter().collect())
    }

    fn string(&mut self) -> Result<String, SelectorError> {
        self.skip_ws();
        let Some(q @ ('\'' | '"')) = self.peek() else {
            return Err(self.unexpected("a quoted string ('...' or \"...\")"));
        };
        let start = self.pos;
        self.pos += 1;
        let body_start = self.pos;
        while self.peek().is_some_and(|c| c != q) {
            self.pos += 1;
        }
        if self.at_end() {
            return Err(self.err_at(start, format!("unterminated string (missing closing {q})")));
        }
        let s = self.chars[body_start..self.pos].iter().collect();
        self.pos += 1;
        Ok(s)
    }

    fn set(&mut self) -> Result<BTreeSet<String>, SelectorError> {
        if !self.eat("{") {
            return Err(self.unexpected("'{' starting a set of quoted strings"));
        }
        let mut out = BTreeSet::new();
        if self.eat("}") {
            return Ok(out);
        }
        loop {
            out.insert(self.string()?);
            if self.eat("}") {
                return Ok(out);
            }
            if !self.eat(",") {
                return Err(self.unexpected("',' or '}'"));
            }
        }
    }
}

/// One part stays itself; nested operators of the same kind are merged.
fn flatten(parts: Vec<Selector>, or: bool) -> Selector {
    if parts.len() == 1 {
        return parts.into_iter().next().expect("one part");
    }
    let mut out = Vec::new();
    for p in parts {
        match (p, or) {
            (Selector::Or(v), true) | (Selector::And(v), false) => out.extend(v),
            (p, _) => out.push(p),
        }
    }
    if or { Selector::Or(out) } else { Selector::And(out) }
}

/// Writes a selector in Calico's grammar. Quotes are `'` unless the value contains one.
pub fn render(s: &Selector) -> String {
    fn q(v: &str) -> String {
        if v.contains('\'') { format!("\"{v}\"") } else { format!("'{v}'") }
    }
    fn set(vs: &BTreeSet<String>) -> String {
        vs.iter().map(|v| q(v)).collect::<Vec<_>>().join(", ")
    }
    fn operand(s: &Selector) -> String {
        match s {
            Selector::And(_) | Selector::Or(_) => format!("({})", render(s)),
            _ => render(s),
        }
    }
    match s {
        Selector::All => "all()".into(),
        Selector::Has(k) => format!("has({k})"),
        Selector::Eq(k, v) => format!("{k} == {}", q(v)),
        Selector::Ne(k, v) => format!("{k} != {}", q(v)),
        Selector::In(k, vs) => format!("{k} in {{{}}}", set(vs)),
        Selector::NotIn(k, vs) => format!("{k} not in {{{}}}", set(vs)),
        Selector::Contains(k, v) => format!("{k} contains {}", q(v)),
        Selector::StartsWith(k, v) => format!("{k} starts with {}", q(v)),
        Selector::EndsWith(k, v) => format!("{k} ends with {}", q(v)),
        Selector::Not(inner) => format!("!{}", operand(inner)),
        Selector::And(v) => v.iter().map(operand).collect::<Vec<_>>().join(" && "),
        Selector::Or(v) => v
            .iter()
            .map(|s| if matches!(s, Selector::Or(_)) { format!("({})", render(s)) } else { render(s) })
            .collect::<Vec<_>>()
            .join(" || "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Labels;

    fn p(s: &str) -> Selector {
        parse_selector(s).unwrap_or_else(|e| panic!("{s:?} must parse: {e}"))
    }
    fn e(s: &str) -> String {
        parse_selector(s).expect_err(&format!("{s:?} must be rejected")).to_string()
    }
    fn eq(k: &str, v: &str) -> Selector {
        Selector::Eq(k.into(), v.into())
    }
    fn set(vs: &[&str]) -> BTreeSet<String> {
        vs.iter().map(|s| s.to_string()).collect()
    }
    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn every_operator() {
        assert_eq!(p(""), Selector::All);
        assert_eq!(p("   "), Selector::All);
        assert_eq!(p("all()"), Selector::All);
        assert_eq!(p(" all ( ) "), Selector::All);
        assert_eq!(p("has(app)"), Selector::Has("app".into()));
        assert_eq!(p("app == 'web'"), eq("app", "web"));
        assert_eq!(p("app==\"web\""), eq("app", "web"));
        assert_eq!(p("app != 'web'"), Selector::Ne("app".into(), "web".into()));
        assert_eq!(p("app in {'a', \"b\"}"), Selector::In("app".into(), set(&["a", "b"])));
        assert_eq!(p("app in {}"), Selector::In("app".into(), set(&[])));
        assert_eq!(p("app not in {'a'}"), Selector::NotIn("app".into(), set(&["a"])));
        assert_eq!(p("app contains 'e'"), Selector::Contains("app".into(), "e".into()));
        assert_eq!(p("app starts with 'w'"), Selector::StartsWith("app".into(), "w".into()));
        assert_eq!(p("app ends with 'b'"), Selector::EndsWith("app".into(), "b".into()));
        assert_eq!(p("!has(app)"), Selector::Not(Box::new(Selector::Has("app".into()))));
        assert_eq!(
            p("projectcalico.org/namespace == 'x' && kubernetes.io/metadata.name != 'y'"),
            Selector::And(vec![
                eq("projectcalico.org/namespace", "x"),
                Selector::Ne("kubernetes.io/metadata.name".into(), "y".into())
            ])
        );
        assert_eq!(p("my_key-1.a/b == ''"), eq("my_key-1.a/b", ""));
        // Words that start like keywords are keys.
        assert_eq!(p("index == 'a'"), eq("index", "a"));
        assert_eq!(p("hasx == 'a'"), eq("hasx", "a"));
        assert_eq!(p("all == 'a'"), eq("all", "a"));
    }

    #[test]
    fn precedence_not_and_or() {
        let (a, b, c) = (eq("a", "1"), eq("b", "1"), eq("c", "1"));
        assert_eq!(
            p("a == '1' || b == '1' && c == '1'"),
            Selector::Or(vec![a.clone(), Selector::And(vec![b.clone(), c.clone()])])
        );
        assert_eq!(
            p("a == '1' && b == '1' || c == '1'"),
            Selector::Or(vec![Selector::And(vec![a.clone(), b.clone()]), c.clone()])
        );
        assert_eq!(
            p("(a == '1' || b == '1') && c == '1'"),
            Selector::And(vec![Selector::Or(vec![a.clone(), b.clone()]), c.clone()])
        );
        assert_eq!(
            p("!a == '1' && b == '1'"),
            Selector::And(vec![Selector::Not(Box::new(a.clone())), b.clone()]),
            "! binds tighter than &&"
        );
        assert_eq!(p("!(a == '1' && b == '1')"), Selector::Not(Box::new(Selector::And(vec![a.clone(), b.clone()]))));
        assert_eq!(p("!!a == '1'"), Selector::Not(Box::new(Selector::Not(Box::new(a.clone())))));
        assert_eq!(
            p("a == '1' && b == '1' && c == '1'"),
            Selector::And(vec![a.clone(), b.clone(), c.clone()]),
            "flattened"
        );
        assert_eq!(p("a == '1' || (b == '1' || c == '1')"), Selector::Or(vec![a, b, c]), "flattened through parens");
    }

    #[test]
    fn evaluation_follows_calico() {
        let l = labels(&[("app", "web"), ("tier", "frontend"), ("projectcalico.org/namespace", "x")]);
        let none = Labels::new();
        let cases: &[(&str, bool, bool)] = &[
            // selector, on l, on no labels
            ("", true, true),
            ("all()", true, true),
            ("has(app)", true, false),
            ("app == 'web'", true, false),
            ("app == 'db'", false, false),
            ("app != 'db'", true, true),
            ("app != 'web'", false, true),
            ("app in {'web', 'db'}", true, false),
            ("app not in {'web'}", false, true),
            ("app not in {'db'}", true, true),
            ("tier contains 'ont'", true, false),
            ("tier starts with 'front'", true, false),
            ("tier ends with 'end'", true, false),
            ("tier ends with 'front'", false, false),
            ("!has(app)", false, true),
            ("app == 'db' || tier == 'frontend'", true, false),
            ("app == 'web' && !(tier == 'frontend')", false, false),
            ("projectcalico.org/namespace == 'x' && app == 'web'", true, false),
            ("!app == 'web' || has(tier)", true, true),
        ];
        for (s, on_l, on_none) in cases {
            let sel = p(s);
            assert_eq!(sel.matches(&l), *on_l, "{s:?} on {l:?}");
            assert_eq!(sel.matches(&none), *on_none, "{s:?} on no labels");
        }
    }

    #[test]
    fn render_round_trips() {
        for s in [
            "all()",
            "has(a)",
            "a == 'x' && (b == 'y' || !has(c))",
            "!(a == 'x' && b != 'y') || c in {'1', '2'} && d not in {}",
            "a contains 'q\"' || b starts with \"it's\" || c ends with ''",
            "!!a == 'x'",
            "(a == '1' || b == '2') && (c == '3' || d == '4')",
        ] {
            let sel = p(s);
            let text = render(&sel);
            assert_eq!(p(&text), sel, "{s:?} rendered as {text:?}");
        }
    }

    #[test]
    fn errors_name_position_and_text() {
        assert_eq!(
            e("app == 'a' &&"),
            "at position 14: expected a label key, all(), has(...), '!' or '(', found the end of the selector"
        );
        assert_eq!(e("app = 'a'"), "at position 5: found '=', Calico selectors compare with '=='");
        assert_eq!(e("app == a"), "at position 8: expected a quoted string ('...' or \"...\"), found \"a\"");
        assert_eq!(e("app == 'a"), "at position 8: unterminated string (missing closing ')");
        assert_eq!(e("app in ('a')"), "at position 8: expected '{' starting a set of quoted strings, found \"(\"");
        assert_eq!(e("app in {'a' 'b'}"), "at position 13: expected ',' or '}', found \"'\"");
        assert_eq!(e("(app == 'a'"), "at position 12: expected ')', found the end of the selector");
        assert_eq!(
            e("app == 'a' & b == 'c'"),
            "at position 12: expected '&&', '||' or the end of the selector, found \"&\""
        );
        assert_eq!(
            e("app == 'a' and b == 'c'"),
            "at position 12: expected '&&', '||' or the end of the selector, found \"and\""
        );
        assert_eq!(e("app not on {'a'}"), "at position 9: expected 'in' after 'not', found \"on\"");
        assert_eq!(e("app starts 'a'"), "at position 12: expected 'with' after 'starts', found \"'\"");
        assert_eq!(
            e("app"),
            "at position 4: expected an operator after label key \"app\" (==, !=, in, not in, contains, starts with, ends with), found the end of the selector"
        );
        assert_eq!(e("has()"), "at position 5: expected a label key inside has(), found \")\"");
        assert_eq!(e("all(x)"), "at position 5: expected ')' (all() takes no argument), found \"x\"");
        assert_eq!(e("global()"), "at position 1: global() (non-namespaced endpoints) is not supported");
        assert_eq!(
            e("a == 'é' && ?"),
            "at position 13: expected a label key, all(), has(...), '!' or '(', found \"?\"",
            "positions count characters"
        );
    }
}
