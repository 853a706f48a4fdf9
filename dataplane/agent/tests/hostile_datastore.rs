//! A datastore folder no file can stop: a link to /dev/zero, a FIFO, a 100 MB file, a link
//! leaving the folder, an empty file and a bad document sit in the watched folder while the
//! agent keeps applying every other change, stays responsive and does not grow. Needs root.

use std::time::{Duration, Instant};

mod common;
use common::*;

const DENY_INGRESS: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {matchLabels: {app: p2}}, policyTypes: [Ingress]}\n";

fn rss_kib() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").expect("status");
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).expect("VmRSS")
}

#[test]
fn hostile_files_are_rejected_one_by_one_and_every_other_change_applies() {
    let t = Topo::create();
    let (agent, _pins) = start_agent_watching(&t, true);
    tcp_echo(&t, 2, 8080);
    assert!(connect(&t).is_some(), "no policy: connect works");
    let rss0 = rss_kib();

    std::os::unix::fs::symlink("/dev/zero", t.dir.join("zero.yaml")).expect("link to /dev/zero");
    std::os::unix::fs::symlink("/etc/hostname", t.dir.join("outside.yaml")).expect("link outside");
    let fifo = std::ffi::CString::new(t.dir.join("fifo.yaml").to_str().unwrap()).unwrap();
    // SAFETY: valid C string.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0, "mkfifo");
    std::fs::File::create(t.dir.join("huge.yaml")).and_then(|f| f.set_len(100 << 20)).expect("100 MB file");
    std::fs::write(t.dir.join("empty.yaml"), "").expect("empty file");
    std::fs::write(
        t.dir.join("zz-bad.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: x}\nspec: {podSelector: {}, ingress: [{ports: [{port: 70000}]}]}\n",
    )
    .expect("bad document");

    // With all of them present, a good change still applies, through the watcher and on demand.
    std::fs::write(t.dir.join("deny.yaml"), DENY_INGRESS).expect("write deny");
    let t0 = Instant::now();
    while connect(&t).is_some() {
        assert!(t0.elapsed() < Duration::from_secs(10), "the deny policy was not applied while hostile files sit in the folder");
        std::thread::sleep(Duration::from_millis(100));
    }
    let report = agent.sync_now().expect("the sync goes on");
    let rejected = report.rejected.join("\n");
    for (file, why) in [
        ("zero.yaml", "outside the datastore folder"),
        ("outside.yaml", "outside the datastore folder"),
        ("fifo.yaml", "not a regular file"),
        ("huge.yaml", "limit"),
        ("empty.yaml", "empty"),
        ("zz-bad.yaml", "port"),
    ] {
        assert!(rejected.lines().any(|l| l.contains(file) && l.contains(why)), "{file} rejected ({why}):\n{rejected}");
    }

    // A bad edit of a good file keeps its last good version; removing the file removes it.
    std::fs::write(t.dir.join("deny.yaml"), "kind: [unclosed\n").expect("break deny");
    let report = agent.sync_now().expect("sync");
    assert!(report.rejected.iter().any(|r| r.contains("deny.yaml") && r.contains("last good version")), "{:?}", report.rejected);
    assert!(connect(&t).is_none(), "a broken edit must not drop the deny");
    std::fs::remove_file(t.dir.join("deny.yaml")).expect("rm deny");
    agent.sync_now().expect("sync");
    assert!(connect(&t).is_some(), "removing the deny file applies with the hostile files still present");

    let grown = rss_kib().saturating_sub(rss0);
    assert!(grown < 64 * 1024, "the agent's process grew by {grown} KiB while the hostile files were present");
}
