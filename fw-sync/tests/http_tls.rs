//! The HTTP client the PAN-OS and FortiOS backends share: TLS verification is on by default,
//! a CA file makes a private CA trusted, and a reset connection is an error naming the request.

use std::sync::Arc;

use bulkhead_httpd::{Handler, Reply, Request, Response, Server};
use fw_sync::backend::http::{HttpClient, TlsOptions};

fn server() -> (Server, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("fwsync-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let ca = dir.join("ca.pem");
    let (tls, _) = bulkhead_fw_emulator::tls::server_config(&["localhost", "127.0.0.1"], Some(&ca)).expect("test CA");
    let handler: Handler = Arc::new(|r: &Request| {
        if r.path == "/reset" { Reply::Reset } else { Reply::Respond(Response::text(200, format!("hello {}", r.header("x-test").unwrap_or("-")))) }
    });
    (Server::start("127.0.0.1:0", Some(tls), handler).expect("bind"), ca)
}

#[test]
fn verifies_tls_and_reports_failures() {
    let (srv, ca) = server();
    let url = format!("https://localhost:{}", srv.addr().port());

    let mut trusted = HttpClient::new("fw", &url, &TlsOptions { ca_file: Some(ca.clone()), insecure_skip_verify: false }).expect("client");
    let r = trusted.send("GET", "/x", &[("X-Test", "there")], None, "GET /x").expect("trusted CA");
    assert_eq!((r.status, r.body.as_str()), (200, "hello there"));

    let mut default = HttpClient::new("fw", &url, &TlsOptions::default()).expect("client");
    let e = default.send("GET", "/x", &[], None, "GET /x").expect_err("an unknown CA must be refused").to_string();
    assert!(e.starts_with("firewall fw: GET /x: ") && e.to_lowercase().contains("cert"), "{e}");

    let mut insecure = HttpClient::new("fw", &url, &TlsOptions { ca_file: None, insecure_skip_verify: true }).expect("client");
    assert_eq!(insecure.send("GET", "/x", &[], None, "GET /x").expect("verification off").status, 200);

    let e = trusted.send("GET", "/reset", &[], None, "GET /reset").expect_err("reset").to_string();
    assert!(e.starts_with("firewall fw: GET /reset: "), "{e}");
    assert_eq!(trusted.calls(), 2);
    let _ = std::fs::remove_dir_all(ca.parent().expect("ca dir"));
}
