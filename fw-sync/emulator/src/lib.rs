//! Emulators of the firewall APIs fw-sync drives where no real device can run here: the
//! PAN-OS XML API ([`panos`]) and the FortiOS REST API ([`fortios`]). Each follows the
//! vendor's documented behaviour (see `../shared/reference/firewall-apis.md` in the project's
//! history and the module docs) and is checked with the vendor's own Python clients in
//! `fw-sync/tests/vendor_clients.rs`.
//!
//! Shared here: HTTPS with a throw-away CA ([`tls`]) and fault injection ([`Faults`]):
//! added latency, 5xx answers and connection resets, at a rate, from a seeded generator so a
//! failing run can be replayed.

pub mod fortios;
pub mod panos;
pub mod tls;

use std::sync::Mutex;
use std::time::Duration;

use bulkhead_httpd::{Reply, Response};

/// Faults injected in front of an emulator's API; changeable while it runs.
#[derive(Clone, Debug, Default)]
pub struct FaultConfig {
    /// Added to every request before it is handled.
    pub latency: Duration,
    /// Share of requests answered with a server error instead of being handled (0.0..=1.0).
    pub error_rate: f64,
    /// Share of requests whose connection is closed without an answer (0.0..=1.0).
    pub reset_rate: f64,
}

/// Faults with their random generator and counts of what was injected.
#[derive(Debug)]
pub struct Faults {
    state: Mutex<FaultState>,
}

#[derive(Debug)]
struct FaultState {
    config: FaultConfig,
    rng: u64,
    injected_errors: u64,
    injected_resets: u64,
}

/// What [`Faults::decide`] chose for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Handle the request normally.
    None,
    /// Answer with the vendor's server error.
    ServerError,
    /// Close the connection without an answer.
    Reset,
}

impl Faults {
    /// No faults; `seed` fixes the sequence of random choices.
    pub fn new(seed: u64) -> Faults {
        Faults { state: Mutex::new(FaultState { config: FaultConfig::default(), rng: seed | 1, injected_errors: 0, injected_resets: 0 }) }
    }

    /// Replaces the fault settings.
    pub fn set(&self, config: FaultConfig) {
        self.state.lock().expect("faults lock").config = config;
    }

    /// Sleeps the configured latency, then decides the request's fate.
    pub fn decide(&self) -> Fault {
        let (latency, fault) = {
            let mut s = self.state.lock().expect("faults lock");
            let r = next_unit(&mut s.rng);
            let fault = if r < s.config.reset_rate {
                s.injected_resets += 1;
                Fault::Reset
            } else if r < s.config.reset_rate + s.config.error_rate {
                s.injected_errors += 1;
                Fault::ServerError
            } else {
                Fault::None
            };
            (s.config.latency, fault)
        };
        if !latency.is_zero() {
            std::thread::sleep(latency);
        }
        fault
    }

    /// (server errors, resets) injected so far.
    pub fn injected(&self) -> (u64, u64) {
        let s = self.state.lock().expect("faults lock");
        (s.injected_errors, s.injected_resets)
    }

    /// Applies [`Faults::decide`] around a handler: `server_error` builds the vendor's 5xx.
    pub fn wrap(&self, server_error: impl FnOnce() -> Response, handle: impl FnOnce() -> Reply) -> Reply {
        match self.decide() {
            Fault::None => handle(),
            Fault::ServerError => Reply::Respond(server_error()),
            Fault::Reset => Reply::Reset,
        }
    }
}

/// xorshift64*: uniform in [0, 1).
fn next_unit(state: &mut u64) -> f64 {
    let mut x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_rates_are_close_to_configured() {
        let f = Faults::new(7);
        f.set(FaultConfig { latency: Duration::ZERO, error_rate: 0.2, reset_rate: 0.1 });
        let n = 10_000;
        for _ in 0..n {
            f.decide();
        }
        let (e, r) = f.injected();
        assert!((1_700..2_300).contains(&e) && (700..1_300).contains(&r), "errors {e}, resets {r} of {n}");
    }
}
