//! Placeholder: the Panos backend is being written.

use crate::backend::Backend;
use crate::backend::http::{HttpClient, TlsOptions};
use crate::config::PanosConfig;
use crate::diff::Diff;
use crate::error::FwSyncError;
use crate::group::FirewallState;

/// Panos backend.
pub struct PanosBackend {
    http: HttpClient,
    #[allow(dead_code)]
    config: PanosConfig,
}

impl PanosBackend {
    /// A backend for firewall `name`.
    pub fn new(name: &str, config: PanosConfig, tls: &TlsOptions) -> Result<Self, FwSyncError> {
        Ok(PanosBackend { http: HttpClient::new(name, &config.url, tls)?, config })
    }
}

impl Backend for PanosBackend {
    fn firewall(&self) -> &str {
        self.http.firewall()
    }
    fn read_owned_state(&mut self) -> Result<FirewallState, FwSyncError> {
        Err(FwSyncError::Backend { firewall: self.http.firewall().into(), object: "-".into(), detail: "not written yet".into() })
    }
    fn apply(&mut self, _diff: &Diff) -> Result<(), FwSyncError> {
        Err(FwSyncError::Backend { firewall: self.http.firewall().into(), object: "-".into(), detail: "not written yet".into() })
    }
    fn calls(&self) -> u64 {
        self.http.calls()
    }
}
