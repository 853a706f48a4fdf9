//! The HTTPS client the PAN-OS and FortiOS backends share: TLS verification on by default
//! (system-independent Mozilla roots, or a CA file), timeouts, and a count of every request.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};

use crate::error::FwSyncError;

/// TLS settings of one firewall.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file with the CA certificate(s) that signed the firewall's certificate (instead of
    /// the public roots).
    pub ca_file: Option<PathBuf>,
    /// Accept any certificate. Off by default; meant for a lab only.
    pub insecure_skip_verify: bool,
}

/// What came back.
#[derive(Clone, Debug)]
pub struct HttpReply {
    pub status: u16,
    pub body: String,
}

/// One firewall's HTTP client.
pub struct HttpClient {
    firewall: String,
    base: String,
    agent: ureq::Agent,
    calls: u64,
}

/// Per-request timeout: a hung firewall must not stall the other firewalls' syncs for long.
const TIMEOUT: Duration = Duration::from_secs(10);

impl HttpClient {
    /// A client for `base` (`https://host[:port]`, no trailing slash).
    pub fn new(firewall: &str, base: &str, tls: &TlsOptions) -> Result<HttpClient, FwSyncError> {
        let fail = |detail: String| FwSyncError::Backend { firewall: firewall.to_string(), object: "tls".into(), detail };
        let mut builder = TlsConfig::builder();
        if let Some(ca) = &tls.ca_file {
            let pem = std::fs::read(ca).map_err(|e| fail(format!("cannot read CA file {}: {e}", ca.display())))?;
            let certs: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(PemItem::Certificate(c)) => Some(c),
                    _ => None,
                })
                .collect();
            if certs.is_empty() {
                return Err(fail(format!("CA file {} holds no PEM certificate", ca.display())));
            }
            builder = builder.root_certs(RootCerts::Specific(Arc::new(certs)));
        }
        if tls.insecure_skip_verify {
            builder = builder.disable_verification(true);
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(builder.build())
            .timeout_global(Some(TIMEOUT))
            .http_status_as_error(false)
            .max_idle_connections_per_host(2)
            .build()
            .into();
        Ok(HttpClient { firewall: firewall.to_string(), base: base.trim_end_matches('/').to_string(), agent, calls: 0 })
    }

    /// Sends one request. `path` starts with `/` and may carry a query; `what` names the
    /// request in errors (never the credentials, which travel only in `headers` or `body`).
    pub fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: Option<(&str, &[u8])>, what: &str) -> Result<HttpReply, FwSyncError> {
        self.calls += 1;
        let url = format!("{}{path}", self.base);
        let fail = |detail: String| FwSyncError::Http { firewall: self.firewall.clone(), request: what.to_string(), detail };
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let result = match body {
            Some((content_type, bytes)) => {
                let req = req.header("Content-Type", content_type).body(bytes.to_vec()).map_err(|e| fail(e.to_string()))?;
                self.agent.run(req)
            }
            None => {
                let req = req.body(()).map_err(|e| fail(e.to_string()))?;
                self.agent.run(req)
            }
        };
        let mut resp = result.map_err(|e| fail(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = resp.body_mut().with_config().limit(64 * 1024 * 1024).read_to_string().map_err(|e| fail(format!("reading the response: {e}")))?;
        Ok(HttpReply { status, body })
    }

    /// Requests sent so far (failed ones included).
    pub fn calls(&self) -> u64 {
        self.calls
    }

    /// The firewall's name.
    pub fn firewall(&self) -> &str {
        &self.firewall
    }
}
