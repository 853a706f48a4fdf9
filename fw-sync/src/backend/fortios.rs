//! Placeholder: the Fortios backend is being written.

use crate::backend::Backend;
use crate::backend::http::{HttpClient, TlsOptions};
use crate::config::FortiosConfig;
use crate::diff::Diff;
use crate::error::FwSyncError;
use crate::group::FirewallState;

/// Fortios backend.
pub struct FortiosBackend {
    http: HttpClient,
    #[allow(dead_code)]
    config: FortiosConfig,
}

impl FortiosBackend {
    /// A backend for firewall `name`.
    pub fn new(name: &str, config: FortiosConfig, tls: &TlsOptions) -> Result<Self, FwSyncError> {
        Ok(FortiosBackend { http: HttpClient::new(name, &config.url, tls)?, config })
    }
}

impl Backend for FortiosBackend {
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
