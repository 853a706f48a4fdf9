//! The real `fw-sync` binary against the PAN-OS and FortiOS emulators, with every log level
//! on: the API key and the token never appear in its output, and `--dry-run` / `status`
//! read the firewalls through verified TLS and apply nothing.

use std::process::Command;

use bulkhead_fw_emulator::fortios::{FortiosEmulator, FortiosOptions};
use bulkhead_fw_emulator::panos::{PanosEmulator, PanosOptions};

const KEY: &str = "LUFRPT1-very-secret-panos-key";
const TOKEN: &str = "fgt-very-secret-token-1234";

#[test]
fn credentials_never_reach_the_output() {
    let pa = PanosEmulator::start(PanosOptions { api_key: KEY.into(), ..PanosOptions::default() }).expect("PAN-OS emulator");
    let fg = FortiosEmulator::start(FortiosOptions { token: TOKEN.into(), ..FortiosOptions::default() }).expect("FortiOS emulator");
    let dir = std::env::temp_dir().join(format!("fw-sync-secrets-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("datastore")).expect("dirs");
    struct Cleanup(std::path::PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(dir.clone());
    std::fs::write(dir.join("pa.key"), format!("{KEY}\n")).expect("key file");
    std::fs::write(
        dir.join("datastore/lab.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: lab}\n---\napiVersion: v1\nkind: Pod\nmetadata: {name: web-1, namespace: lab, labels: {app: web}}\nstatus: {podIP: 10.9.0.1}\n---\napiVersion: bulkhead.io/v1alpha1\nkind: AddressGroup\nmetadata: {name: web}\nspec:\n  podSelector: app == 'web'\n  targets:\n  - {firewall: pa, kind: panos-static-group, name: web}\n  - {firewall: fg, kind: fortios-addrgrp, name: web}\n",
    )
    .expect("datastore");
    let config = dir.join("fw-sync.yaml");
    std::fs::write(
        &config,
        format!(
            "firewalls:\n- name: pa\n  type: panos\n  panos: {{url: '{}', apiKey: {{file: pa.key}}}}\n  tls: {{caFile: '{}'}}\n- name: fg\n  type: fortios\n  fortios: {{url: '{}', token: {{env: FWSYNC_TEST_TOKEN}}}}\n  tls: {{caFile: '{}'}}\ndatastore: datastore\n",
            pa.url(),
            pa.ca_file().display(),
            fg.url(),
            fg.ca_file().display()
        ),
    )
    .expect("config");
    let bin = env!("CARGO_BIN_EXE_fw-sync");
    for args in [vec!["run", "--dry-run"], vec!["status"]] {
        let out = Command::new(bin)
            .args(&args)
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "trace")
            .env("FWSYNC_TEST_TOKEN", TOKEN)
            .output()
            .expect("run fw-sync");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "fw-sync {args:?} failed:\n{text}");
        assert!(!text.contains(KEY) && !text.contains(TOKEN), "fw-sync {args:?} printed a credential:\n{text}");
        assert!(text.contains("10.9.0.1"), "fw-sync {args:?} shows the pending member:\n{text}");
    }
    assert_eq!(pa.running_static_group("vsys1", "bhfw-web"), None, "dry run and status apply nothing");
    assert_eq!(fg.group_members("root", "bhfw-web"), None, "dry run and status apply nothing");

    // Without the CA file, verification fails and says so (no silent fallback).
    let no_ca = std::fs::read_to_string(&config).expect("config").replacen(&format!("  tls: {{caFile: '{}'}}\n", pa.ca_file().display()), "", 1);
    std::fs::write(&config, no_ca).expect("config");
    let out = Command::new(bin).args(["status", "--config"]).arg(&config).env("FWSYNC_TEST_TOKEN", TOKEN).output().expect("run fw-sync");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("firewall pa: cannot read") && text.to_lowercase().contains("cert"), "status without the CA:\n{text}{}", String::from_utf8_lossy(&out.stderr));
}
