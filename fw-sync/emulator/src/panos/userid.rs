//! The User-ID API for dynamic address groups: `type=user-id` register / unregister of
//! IP-tag mappings (no commit), with per-entry messages, 32 tags per IP, timeouts up to
//! 2,592,000 s that really expire, and the paginated registered-ip read-back.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use super::xml;
use super::{ApiReply, State};

/// PAN-OS limits.
const MAX_TAGS_PER_IP: usize = 32;
const MAX_TIMEOUT: u64 = 2_592_000;
/// Entries per page of `show object registered-ip`.
pub(crate) const PAGE: usize = 500;

/// IP -> tag -> expiry (None: never), per User-ID target (`""` is the device itself).
pub(crate) type Registrations = BTreeMap<String, BTreeMap<IpAddr, BTreeMap<String, Option<Instant>>>>;

impl State {
    /// The emulator's clock: real time plus what a test advanced it by.
    pub(crate) fn now(&self) -> Instant {
        Instant::now() + self.clock_offset
    }

    /// Drops expired registrations.
    pub(crate) fn expire(&mut self) {
        let now = self.now();
        for ips in self.uid.values_mut() {
            for tags in ips.values_mut() {
                tags.retain(|_, exp| exp.is_none_or(|e| e > now));
            }
            ips.retain(|_, tags| !tags.is_empty());
        }
    }

    /// IPs registered with `tag` on `target` (None: any target).
    pub(crate) fn tagged(&self, target: Option<&str>, tag: &str) -> BTreeSet<IpAddr> {
        let now = self.now();
        self.uid
            .iter()
            .filter(|(t, _)| target.is_none_or(|x| x == t.as_str()))
            .flat_map(|(_, ips)| ips.iter())
            .filter(|(_, tags)| tags.get(tag).is_some_and(|e| e.is_none_or(|e| e > now)))
            .map(|(ip, _)| *ip)
            .collect()
    }
}

/// `type=user-id&cmd=<uid-message>...`.
pub(crate) fn handle(st: &mut State, p: &BTreeMap<String, String>) -> ApiReply {
    let cmd = p.get("cmd").map(String::as_str).unwrap_or("");
    let Ok(doc) = roxmltree::Document::parse(cmd) else {
        return ApiReply::error(Some(18), "Malformed uid-message");
    };
    let msg = doc.root_element();
    let Some(payload) = msg.children().find(|c| c.has_tag_name("payload")).filter(|_| msg.has_tag_name("uid-message")) else {
        return ApiReply::error(Some(18), "uid-message without payload");
    };
    st.expire();
    let now = st.now();
    let target = p.get("target").cloned().unwrap_or_default();
    let table = st.uid.entry(target).or_default();
    let mut messages = String::new();
    let mut sections = String::new();
    for section in payload.children().filter(|c| c.is_element()) {
        let op = section.tag_name().name();
        if op != "register" && op != "unregister" {
            continue;
        }
        let mut lines = String::new();
        for entry in section.children().filter(|c| c.has_tag_name("entry")) {
            let ip_text = entry.attribute("ip").unwrap_or("");
            let mut fail = |m: String| {
                let _ = write!(lines, "<entry ip=\"{}\" message=\"{}\"/>", xml::escape(ip_text), xml::escape(&m));
            };
            let Ok(ip) = ip_text.parse::<IpAddr>() else {
                fail(format!("invalid ip address {ip_text}"));
                continue;
            };
            let members: Vec<_> = entry.descendants().filter(|m| m.has_tag_name("member")).collect();
            for m in members {
                let tag = m.text().unwrap_or("").trim().to_string();
                let tags = table.entry(ip).or_default();
                if op == "unregister" {
                    if tags.remove(&tag).is_none() {
                        fail(format!("tag {tag} does not exist, ignore unreg"));
                    }
                    continue;
                }
                let timeout = m.attribute("timeout").map(|t| t.parse::<u64>());
                let expiry = match timeout {
                    None | Some(Ok(0)) => None,
                    Some(Ok(t)) if t <= MAX_TIMEOUT => Some(now + Duration::from_secs(t)),
                    _ => {
                        fail(format!("invalid timeout {} (0 to {MAX_TIMEOUT})", m.attribute("timeout").unwrap_or("")));
                        continue;
                    }
                };
                if tag.is_empty() || tag.chars().count() > 127 {
                    fail(format!("invalid tag '{tag}'"));
                } else if tags.contains_key(&tag) {
                    fail(format!("tag {tag} already exists, ignore"));
                } else if tags.len() >= MAX_TAGS_PER_IP {
                    fail(format!("cannot register tag {tag}: {MAX_TAGS_PER_IP} tags per IP at most"));
                } else {
                    tags.insert(tag, expiry);
                }
            }
            if table.get(&ip).is_some_and(|t| t.is_empty()) {
                table.remove(&ip);
            }
        }
        let _ = write!(sections, "<{op}>{lines}</{op}>");
        messages.push_str(&lines);
    }
    if messages.is_empty() {
        return ApiReply::ok(format!(
            "<response status=\"success\"><result><uid-response><version>2.0</version><payload>{sections}</payload></uid-response></result></response>"
        ));
    }
    ApiReply::ok(format!(
        "<response status=\"error\"><msg><line><uid-response><version>2.0</version><payload>{sections}</payload></uid-response></line></msg></response>"
    ))
}

/// `<show><object><registered-ip>[<tag><entry name="t"/></tag>][<ip>..</ip>][<limit>][<start-point>]`.
pub(crate) fn show_registered(st: &mut State, target: Option<&str>, q: roxmltree::Node) -> ApiReply {
    st.expire();
    let num = |tag: &str| q.children().find(|c| c.has_tag_name(tag)).map(|n| n.text().unwrap_or("").trim().parse::<usize>());
    let limit = match num("limit") {
        None => PAGE,
        Some(Ok(l)) if (1..=PAGE).contains(&l) => l,
        Some(_) => return ApiReply::error(Some(17), &format!("registered-ip -> limit must be 1 to {PAGE}")),
    };
    let start = match num("start-point") {
        None => 1,
        Some(Ok(s)) if s >= 1 => s,
        Some(_) => return ApiReply::error(Some(17), "registered-ip -> start-point must be 1 or more"),
    };
    let tags: Vec<String> =
        q.children().filter(|c| c.has_tag_name("tag")).flat_map(|t| t.children()).filter_map(|e| e.attribute("name").map(String::from)).collect();
    let ip_filter = q.children().find(|c| c.has_tag_name("ip")).and_then(|n| n.text()).map(|t| t.trim().to_string());
    let mut merged: BTreeMap<IpAddr, BTreeSet<&String>> = BTreeMap::new();
    for (t, ips) in &st.uid {
        if target.is_some_and(|x| x != t) {
            continue;
        }
        for (ip, ts) in ips {
            merged.entry(*ip).or_default().extend(ts.keys());
        }
    }
    let mut out = String::new();
    let mut count = 0;
    let selected = merged
        .iter()
        .filter(|(ip, ts)| (tags.is_empty() || tags.iter().any(|t| ts.contains(t))) && ip_filter.as_ref().is_none_or(|f| *f == ip.to_string()));
    for (ip, ts) in selected.skip(start - 1).take(limit) {
        count += 1;
        let _ = write!(out, "<entry ip=\"{ip}\" from_agent=\"0\" persistent=\"1\"><tag>");
        for t in ts {
            let _ = write!(out, "<member>{}</member>", xml::escape(t));
        }
        out.push_str("</tag></entry>");
    }
    ApiReply::ok(format!("<response status=\"success\"><result>{out}<count>{count}</count></result></response>"))
}
