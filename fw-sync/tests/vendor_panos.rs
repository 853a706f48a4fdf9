//! The PAN-OS emulator checked with Palo Alto's own client, pan-python, installed by
//! `scripts/setup.sh` in /opt/bulkhead/pyenv: `tests/vendor/panos_client.py` drives a
//! firewall and a Panorama emulator through `pan.xapi.PanXapi` over verified TLS.

use std::path::Path;
use std::process::Command;

use bulkhead_fw_emulator::panos::{PanosEmulator, PanosOptions};

const PYTHON: &str = "/opt/bulkhead/pyenv/bin/python3";

#[test]
fn pan_python_agrees_with_the_emulator() {
    assert!(Path::new(PYTHON).exists(), "{PYTHON} is missing: run scripts/setup.sh (installs the vendor clients)");
    let opts = PanosOptions { user: "pyadmin".into(), password: "py-pass-1".into(), api_key: "LUFRPT1pythonkey".into(), ..PanosOptions::default() };
    let fw = PanosEmulator::start(opts.clone()).expect("firewall emulator");
    let pano = PanosEmulator::start(PanosOptions { panorama: true, ..opts.clone() }).expect("Panorama emulator");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vendor/panos_client.py");
    let out = Command::new(PYTHON)
        .arg(&script)
        .env("PANOS_HOST", "localhost")
        .env("PANOS_PORT", fw.port().to_string())
        .env("PANOS_PANORAMA_PORT", pano.port().to_string())
        .env("PANOS_CA", fw.ca_file())
        .env("PANOS_PANORAMA_CA", pano.ca_file())
        .env("PANOS_USER", &opts.user)
        .env("PANOS_PASSWORD", &opts.password)
        .env("PANOS_KEY", &opts.api_key)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {PYTHON} {}: {e}", script.display()));
    let shown = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "pan-python checks failed ({}):\n{shown}", out.status);
    assert!(shown.contains("all pan-python checks passed"), "{shown}");
    assert!(fw.commits() >= 2 && pano.pushes() == 1, "commits {} pushes {}:\n{shown}", fw.commits(), pano.pushes());
}
