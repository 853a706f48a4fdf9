//! FortiOS REST calls: the Bearer token in a header (never in a URL, never logged), bounded
//! retries of transient failures, and FortiOS's JSON error envelopes turned into messages
//! that name the firewall, the method and the path.

use std::time::Duration;

use serde_json::Value;

use crate::backend::http::{HttpClient, HttpReply};
use crate::error::FwSyncError;
use crate::secret::Secret;

/// Attempts per request: a transport failure or a 5xx without a FortiOS error code (the web
/// server busy, a proxy) is retried twice, after 50 and 200 ms.
const ATTEMPTS: u32 = 3;
const BACKOFF: [Duration; 2] = [Duration::from_millis(50), Duration::from_millis(200)];

/// FortiOS internal error codes fw-sync reacts to.
pub const ERR_NOT_FOUND: i64 = -3;
pub const ERR_DUPLICATE: i64 = -5;
pub const ERR_DUPLICATE_2: i64 = -15;
pub const ERR_IN_USE: i64 = -23;

/// A FortiOS answer: HTTP status and the JSON body (Null when the body is not JSON).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub json: Value,
}

impl Answer {
    /// The internal error code of an error envelope.
    pub fn code(&self) -> Option<i64> {
        self.json.get("error").and_then(Value::as_i64)
    }

    /// A success envelope (HTTP 200, `status: success`).
    pub fn ok(&self) -> bool {
        self.status == 200 && self.json.get("status").and_then(Value::as_str) == Some("success")
    }

    pub fn duplicate(&self) -> bool {
        matches!(self.code(), Some(ERR_DUPLICATE | ERR_DUPLICATE_2))
    }

    pub fn missing(&self) -> bool {
        self.status == 404 || (self.code() == Some(ERR_NOT_FOUND) && self.status != 424)
    }

    pub fn in_use(&self) -> bool {
        self.code() == Some(ERR_IN_USE)
    }

    /// What went wrong, for an error message.
    pub fn describe(&self) -> String {
        if self.status == 401 {
            return "HTTP 401: the API token was refused (check the token, and the REST API administrator's trusted hosts)".into();
        }
        let mut s = format!("HTTP {}", self.status);
        if let Some(code) = self.code() {
            s += &format!(", FortiOS error {code}");
        }
        if let Some(cli) = self.json.get("cli_error").and_then(Value::as_str) {
            s += &format!(": {}", cli.lines().filter(|l| !l.trim().is_empty()).collect::<Vec<_>>().join("; "));
        }
        if self.json.is_null() {
            s += " (not a FortiOS JSON answer)";
        }
        s
    }
}

/// One FortiGate's REST API in one VDOM.
pub struct Client {
    http: HttpClient,
    token: Secret,
    vdom: String,
}

impl Client {
    pub fn new(http: HttpClient, token: Secret, vdom: &str) -> Self {
        Client { http, token, vdom: vdom.to_string() }
    }

    pub fn firewall(&self) -> &str {
        self.http.firewall()
    }

    pub fn calls(&self) -> u64 {
        self.http.calls()
    }

    /// `/api/v2/cmdb/firewall/{table}[/{name}]?vdom=V[&extra]`.
    pub fn path(&self, table: &str, name: Option<&str>, extra: &str) -> String {
        self.api_path(&format!("cmdb/firewall/{table}"), name, extra)
    }

    /// `/api/v2/{endpoint}[/{name}]?vdom=V[&extra]`, e.g. `cmdb/system/external-resource` or
    /// `monitor/system/external-resource/dynamic`.
    pub fn api_path(&self, endpoint: &str, name: Option<&str>, extra: &str) -> String {
        let mut p = format!("/api/v2/{endpoint}");
        if let Some(n) = name {
            p += "/";
            p += &encode(n);
        }
        p += &format!("?vdom={}", encode(&self.vdom));
        if !extra.is_empty() {
            p += "&";
            p += extra;
        }
        p
    }

    /// Sends one request with retries; returns the answer whatever its status, or the
    /// transport error of the last attempt.
    pub fn call(&mut self, method: &str, path: &str, body: Option<&Value>) -> Result<Answer, FwSyncError> {
        let auth = format!("Bearer {}", self.token.expose());
        let headers = [("Authorization", auth.as_str()), ("Accept", "application/json")];
        let bytes = body.map(|b| serde_json::to_vec(b).expect("JSON values serialise"));
        let what = format!("{method} {path}");
        let mut attempt = 0;
        loop {
            let result = self.http.send(method, path, &headers, bytes.as_deref().map(|b| ("application/json", b)), &what);
            let transient = match &result {
                Err(_) => true,
                Ok(r) => r.status >= 500 && parse(r).get("error").and_then(Value::as_i64).is_none(),
            };
            attempt += 1;
            if !transient || attempt >= ATTEMPTS {
                let reply = result?;
                return Ok(Answer { status: reply.status, json: parse(&reply) });
            }
            tracing::debug!(request = %what, attempt, "transient failure; retrying");
            std::thread::sleep(BACKOFF[(attempt - 1) as usize]);
        }
    }

    /// The error for a refused request.
    pub fn refused(&self, method: &str, path: &str, answer: &Answer) -> FwSyncError {
        FwSyncError::Backend { firewall: self.firewall().to_string(), object: format!("{method} {path}"), detail: answer.describe() }
    }
}

fn parse(r: &HttpReply) -> Value {
    serde_json::from_str(&r.body).unwrap_or(Value::Null)
}

/// Percent-encodes everything but unreserved characters (a name may hold '/', ' ', ...).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out += &format!("%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn error_envelopes_are_described_without_secrets() {
        let a = Answer { status: 500, json: json!({"status": "error", "http_status": 500, "error": -23, "cli_error": "entry \"x\" is used\n\nCommand fail. Return code -23"}) };
        assert!(a.in_use() && !a.duplicate() && !a.ok());
        assert_eq!(a.describe(), "HTTP 500, FortiOS error -23: entry \"x\" is used; Command fail. Return code -23");
        let a = Answer { status: 503, json: Value::Null };
        assert_eq!(a.describe(), "HTTP 503 (not a FortiOS JSON answer)");
        assert!(Answer { status: 401, json: Value::Null }.describe().contains("token was refused"));
        assert!(Answer { status: 404, json: json!({"http_status": 404}) }.missing());
        assert!(!Answer { status: 424, json: json!({"error": -3}) }.missing(), "a missing member reference is not a missing entry");
        assert_eq!(encode("10.0.0.0/8 a~b"), "10.0.0.0%2F8%20a~b");
    }
}
