//! The FortiOS emulator checked with an independent client, `fortigate-api` from PyPI
//! (installed by `scripts/setup.sh` in /opt/bulkhead/pyenv): `tests/vendor/fortios_client.py`
//! drives it over verified TLS (the emulator's CA via REQUESTS_CA_BUNDLE), threat feeds
//! included (CMDB connector, push and entry list through its generic methods).

use std::path::Path;
use std::process::Command;

use bulkhead_fw_emulator::fortios::{FortiosEmulator, FortiosOptions};

const PYTHON: &str = "/opt/bulkhead/pyenv/bin/python3";

#[test]
fn fortigate_api_agrees_with_the_emulator() {
    assert!(Path::new(PYTHON).exists(), "{PYTHON} is missing: run scripts/setup.sh (installs the vendor clients)");
    let token = "py-fortios-token-5b1e";
    // 7.2.5: the threat-feed push API exists (7.2.1+).
    let emu = FortiosEmulator::start(FortiosOptions { token: token.into(), vdoms: vec!["root".into(), "dmz".into()], version: "v7.2.5".into(), ..FortiosOptions::default() })
        .expect("FortiOS emulator");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vendor/fortios_client.py");
    let out = Command::new(PYTHON)
        .arg(&script)
        .env("FORTIOS_HOST", "localhost")
        .env("FORTIOS_PORT", emu.port().to_string())
        .env("FORTIOS_TOKEN", token)
        .env("REQUESTS_CA_BUNDLE", emu.ca_file())
        .env_remove("CURL_CA_BUNDLE")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {PYTHON} {}: {e}", script.display()));
    let shown = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "fortigate-api checks failed ({}):\n{shown}", out.status);
    assert!(shown.contains("all fortigate-api checks passed"), "{shown}");
    // What the client did is visible on the device.
    assert_eq!(emu.names("dmz").0, ["py-dmz"], "{shown}");
    assert!(emu.names("root").0.is_empty(), "root cleaned up by the script:\n{shown}");
    let log = emu.request_log();
    assert!(log.iter().any(|r| r.path == "/api/v2/monitor/system/status" && r.status == 200), "token check seen");
    assert!(log.iter().any(|r| r.status == 401), "wrong token seen");
    assert!(log.iter().any(|r| r.path == "/api/v2/monitor/system/external-resource/dynamic" && r.status == 200 && r.query.get("vdom").is_some_and(|v| v == "root")), "feed push seen");
    assert!(emu.feed_names("root").is_empty(), "feeds cleaned up by the script:\n{shown}");
}
