//! Workloads for the detector's live scenarios (tests, benchmarks).

/// The Python interpreter the scenarios run (Debian's, installed by `scripts/setup.sh`).
pub const PYTHON: &str = "/usr/bin/python3";

/// A Python TCP echo server (`python3 server.py PORT`): one request per connection, echoed
/// back. A request starting with `exploit` stands for an injected payload (the Log4j
/// pattern: code run inside the server process, no new executable): the process enumerates
/// its environment (ids, groups, host, limits, /proc, a password file) and tries to become
/// root, as reconnaissance after a remote code execution does.
pub const RECON_SERVER: &str = include_str!("../assets/recon_server.py");
