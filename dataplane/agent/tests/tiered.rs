//! Tiered policy against real packets: a security tier above the application tier, staged
//! policy counted in the kernel without changing verdicts, and Log rules producing flow
//! events. Needs root.

mod common;
use common::*;

const NS_AND_TIERS: &str = r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security, annotations: {bulkhead.io/cluster-scoped-only: "true"}}
spec: {order: 100, defaultAction: Pass}
"#;

#[test]
fn security_tier_deny_beats_application_allow_and_pass_hands_over() {
    let t = Topo::create();
    tcp_echo(&t, 2, 8080);
    tcp_echo(&t, 2, 9090);
    std::fs::write(t.dir.join("tiers.yaml"), NS_AND_TIERS).expect("write tiers");
    // Security: deny 9090 to p2 from anywhere, pass everything else down.
    std::fs::write(
        t.dir.join("security.yaml"),
        r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: security.no-admin-port}
spec:
  tier: security
  order: 10
  selector: app == 'p2'
  types: [Ingress]
  ingress:
  - {action: Deny, protocol: TCP, destination: {ports: [9090]}}
  - {action: Pass}
"#,
    )
    .expect("write security");
    // Application: allow everything to p2 (it tries to open 9090 too).
    std::fs::write(
        t.dir.join("app.yaml"),
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: allow-all, namespace: x}\nspec: {podSelector: {matchLabels: {app: p2}}, ingress: [{}]}\n",
    )
    .expect("write app");
    let (agent, pin_dir) = start_agent(&t);
    assert!(connect_port(&t, 8080).is_some(), "pass then application allow: 8080 open");
    assert!(connect_port(&t, 9090).is_none(), "security deny wins over application allow on 9090");

    // A namespaced policy may not be placed in the cluster-scoped security tier.
    std::fs::write(
        t.dir.join("zz-sneaky.yaml"),
        "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: security.sneaky, namespace: x}\nspec: {tier: security, order: 1, selector: all(), ingress: [{action: Allow}]}\n",
    )
    .expect("write sneaky");
    let err = agent.sync_now().expect_err("namespaced policy in a cluster-scoped tier is rejected").to_string();
    assert!(err.contains("zz-sneaky.yaml") && err.contains("security"), "error names file and tier: {err}");
    assert!(connect_port(&t, 9090).is_none(), "after the rejected change the security deny holds");
    drop(agent);
    assert!(!pin_dir.exists(), "pins removed");
}

#[test]
fn staged_policy_is_counted_in_the_kernel_and_never_changes_the_verdict() {
    let t = Topo::create();
    tcp_echo(&t, 2, 8080);
    std::fs::write(
        t.dir.join("staged.yaml"),
        r#"
apiVersion: projectcalico.org/v3
kind: StagedGlobalNetworkPolicy
metadata: {name: would-deny-p2}
spec:
  selector: app == 'p2'
  types: [Ingress]
  ingress:
  - {action: Deny}
"#,
    )
    .expect("write staged");
    let (agent, _pins) = start_agent(&t);
    for i in 0..3 {
        assert!(connect_port(&t, 8080).is_some(), "staged deny never blocks (attempt {i})");
    }
    let stats = agent.policy_stats().expect("policy stats");
    let row = stats.iter().find(|r| r.policy.contains("would-deny-p2")).unwrap_or_else(|| panic!("staged policy has a row: {stats:?}"));
    assert!(row.staged, "the row says staged: {row:?}");
    assert!(row.would_deny >= 3, "three new flows the staged policy would deny: {row:?} counters {:?}", agent.counters());
    assert_eq!(row.denied, 0, "a staged policy never denies: {row:?}");
    // Each flow's record carries both verdicts: allowed, and what the staged policy would do.
    let flows = agent.recent_flows().expect("flows");
    let rec = flows
        .iter()
        .find(|f| f.dst_port == 8080 && f.kind == "new-allowed" && f.staged.as_ref().is_some_and(|s| s.policy.as_deref().is_some_and(|p| p.contains("would-deny-p2"))))
        .unwrap_or_else(|| panic!("a flow record names the staged policy: {flows:?}"));
    assert_eq!((rec.verdict.action, rec.staged.as_ref().map(|s| s.action)), ("allow", Some("deny")), "{rec:?}");
}

#[test]
fn log_rule_records_the_flow_and_evaluation_goes_on() {
    let t = Topo::create();
    udp_echo(&t, 2, 5353);
    std::fs::write(
        t.dir.join("log.yaml"),
        r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: log-then-allow-dns}
spec:
  selector: app == 'p2'
  types: [Ingress]
  ingress:
  - {action: Log, protocol: UDP}
  - {action: Allow, protocol: UDP, destination: {ports: [5353]}}
"#,
    )
    .expect("write log policy");
    let (agent, _pins) = start_agent(&t);
    assert!(udp_roundtrip(&t, 5353), "Log goes on to the Allow rule: the datagram passes");
    assert!(!udp_roundtrip(&t, 5354), "nothing allows 5354: end-of-tier deny");
    let flows = agent.recent_flows().expect("flows");
    let logged = flows
        .iter()
        .find(|f| f.dst_port == 5353 && f.verdict.log_policy.as_deref().is_some_and(|p| p.contains("log-then-allow-dns")))
        .unwrap_or_else(|| panic!("a flow event names the Log rule's policy: {flows:?}"));
    assert_eq!(logged.verdict.action, "allow", "{logged:?}");
    assert_eq!(logged.verdict.log_rule, Some(0), "the Log rule is rule 0: {logged:?}");
    assert_eq!(logged.verdict.rule, Some(1), "rule 1 decided: {logged:?}");
}
