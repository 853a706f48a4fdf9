//! PAN-OS XML API transport: form-encoded POSTs to `/api/` with the key in the `X-PAN-KEY`
//! header (never in a URL or a message), response parsing with roxmltree, and the error
//! classes the backend acts on (busy, reference count, missing node, transient).

use std::time::Duration;

use crate::backend::http::{HttpClient, TlsOptions};
use crate::error::FwSyncError;
use crate::secret::Secret;

/// Why a call failed.
#[derive(Debug)]
pub(crate) enum CallError {
    /// Transport failure, a 5xx or another non-XML answer: worth another try.
    Transient(String),
    /// The firewall refused: `status="error"` (or HTTP 403).
    Refused { code: Option<u16>, msg: String, body: String },
}

impl CallError {
    /// The firewall's message or the transport's.
    pub(crate) fn message(&self) -> &str {
        match self {
            CallError::Transient(m) => m,
            CallError::Refused { msg, .. } => msg,
        }
    }

    /// A commit in progress or a config lock held by another admin: retry later.
    pub(crate) fn busy(&self) -> bool {
        let m = self.message().to_ascii_lowercase();
        matches!(self, CallError::Refused { .. }) && (m.contains("try again later") || m.contains("is locked by"))
    }
}

/// One firewall's API endpoint.
pub(crate) struct Api {
    http: HttpClient,
    key: Secret,
}

/// Tries per idempotent request when the transport fails.
const TRANSIENT_TRIES: u32 = 3;

impl Api {
    pub(crate) fn new(firewall: &str, url: &str, key: Secret, tls: &TlsOptions) -> Result<Api, FwSyncError> {
        Ok(Api { http: HttpClient::new(firewall, url, tls)?, key })
    }

    pub(crate) fn firewall(&self) -> &str {
        self.http.firewall()
    }

    pub(crate) fn calls(&self) -> u64 {
        self.http.calls()
    }

    /// One request; returns the body of a `status="success"` response.
    pub(crate) fn call_once(&mut self, params: &[(&str, &str)], what: &str) -> Result<String, CallError> {
        let body = form(params);
        let reply = self
            .http
            .send("POST", "/api/", &[("X-PAN-KEY", self.key.expose())], Some(("application/x-www-form-urlencoded", body.as_bytes())), what)
            .map_err(|e| CallError::Transient(e.to_string()))?;
        let parsed = roxmltree::Document::parse(&reply.body);
        let doc = match (reply.status, parsed) {
            (200 | 400 | 403, Ok(doc)) => doc,
            (status, _) => return Err(CallError::Transient(format!("HTTP {status}: {}", summary(&reply.body)))),
        };
        let root = doc.root_element();
        let code = root.attribute("code").and_then(|c| c.parse().ok());
        if reply.status == 403 {
            let msg = format!("HTTP 403: {} (check the API key)", messages(root));
            return Err(CallError::Refused { code, msg, body: String::new() });
        }
        if root.attribute("status") != Some("success") {
            let msg = messages(root);
            return Err(CallError::Refused { code, msg, body: reply.body });
        }
        Ok(reply.body)
    }

    /// A request that is safe to repeat, tried again after transport failures.
    pub(crate) fn call(&mut self, params: &[(&str, &str)], what: &str) -> Result<String, CallError> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.call_once(params, what) {
                Err(CallError::Transient(m)) if tries < TRANSIENT_TRIES => {
                    tracing::debug!(request = what, error = %m, "transient failure; trying again");
                    std::thread::sleep(Duration::from_millis(20 * u64::from(tries)));
                }
                other => return other,
            }
        }
    }

    /// The crate error for a failed call.
    pub(crate) fn error(&self, what: &str, e: CallError) -> FwSyncError {
        match e {
            CallError::Transient(detail) => FwSyncError::Http { firewall: self.firewall().into(), request: what.into(), detail },
            CallError::Refused { code, msg, .. } => {
                let code = code.map(|c| format!(" (code {c})")).unwrap_or_default();
                FwSyncError::Backend { firewall: self.firewall().into(), object: what.into(), detail: format!("{msg}{code}") }
            }
        }
    }
}

/// `application/x-www-form-urlencoded`.
pub(crate) fn form(params: &[(&str, &str)]) -> String {
    let enc = |s: &str| {
        let mut out = String::with_capacity(s.len());
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    };
    params.iter().map(|(k, v)| format!("{}={}", enc(k), enc(v))).collect::<Vec<_>>().join("&")
}

/// Escapes text and attribute values for XML.
pub(crate) fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&apos;")
}

/// The text of a response's messages: `msg/line` (nested lines too) or `msg`, joined.
pub(crate) fn messages(root: roxmltree::Node) -> String {
    let lines: Vec<String> = root
        .descendants()
        .filter(|n| n.has_tag_name("line") && !n.children().any(|c| c.is_element()))
        .map(|n| n.text().unwrap_or("").trim().to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if !lines.is_empty() {
        return lines.join("; ");
    }
    let msgs: Vec<String> = root.descendants().filter(|n| n.has_tag_name("msg")).filter_map(|n| n.text()).map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect();
    if msgs.is_empty() { "no message".into() } else { msgs.join("; ") }
}

/// A short, single-line view of a non-XML body (a web server's error page).
fn summary(body: &str) -> String {
    if let (Some(a), Some(b)) = (body.find("<title>"), body.find("</title>"))
        && a < b
    {
        return body[a + 7..b].trim().to_string();
    }
    body.chars().take(120).collect::<String>().replace(['\r', '\n'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_forms_and_reads_messages() {
        assert_eq!(form(&[("type", "config"), ("xpath", "/a/entry[@name='x y']")]), "type=config&xpath=%2Fa%2Fentry%5B%40name%3D%27x%20y%27%5D");
        assert_eq!(esc("<a href='x'>&\""), "&lt;a href=&apos;x&apos;&gt;&amp;&quot;");
        let doc = roxmltree::Document::parse("<response status=\"error\" code=\"10\"><msg><line>a cannot be deleted</line><line><line>nested</line></line></msg></response>").expect("xml");
        assert_eq!(messages(doc.root_element()), "a cannot be deleted; nested");
        let doc = roxmltree::Document::parse("<response status='error' code='403'><result><msg>Invalid Credential</msg></result></response>").expect("xml");
        assert_eq!(messages(doc.root_element()), "Invalid Credential");
        assert_eq!(summary("<html><head><title>503 Service Temporarily Unavailable</title></head></html>"), "503 Service Temporarily Unavailable");
        let busy = CallError::Refused { code: None, msg: "Configuration is locked by bob".into(), body: String::new() };
        assert!(busy.busy() && !CallError::Transient("try again later".into()).busy());
    }
}
