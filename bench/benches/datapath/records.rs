//! How many flow records per second the agent takes without losing one: a pod sends UDP
//! datagrams to another at a paced rate, each to a port of its own (so each is a new flow,
//! reported at the sender's egress and at the receiver's ingress), for one second per step;
//! the agent's flow log must then hold every record, and neither lost-record counter (the
//! ring's, the flow log's) may move. Past the highest such rate, what is not logged must be
//! counted.

use std::net::UdpSocket;
use std::path::Path;
use std::time::{Duration, Instant};

use bulkhead_bench::result;
use bulkhead_lab::datastore::Datastore;
use bulkhead_lab::{Lab, LabOptions, Topology};

const TOPOLOGY: &str = "
kind: Topology
name: bench-records
namespaces:
  - {name: br, labels: {kubernetes.io/metadata.name: br}}
pods:
  - {namespace: br, name: a, ip: 10.251.0.10, labels: {app: a}}
  - {namespace: br, name: b, ip: 10.251.0.11, labels: {app: b}}
";

/// Flows per second tried, one second each. One sending thread tops out near 58k datagrams
/// per second here, and past 50k flows a step's records outgrow the log's 64 MiB rotation
/// (two rotations would drop the older file, which this count could not tell from a loss).
const RATES: [u32; 3] = [5_000, 20_000, 50_000];

/// Runs the steps; prints each step's loss and the highest rate without loss.
pub fn agent_record_rate() {
    let topo = Topology::parse(TOPOLOGY, Path::new("bench-records.yaml")).expect("topology");
    let lab = Lab::create(&topo, &LabOptions { serve: false, ..Default::default() }).expect("lab");
    Datastore::for_lab(&lab).flush().expect("datastore");
    let agent = lab.start_agent(false).expect("agent");
    let log = lab.agent_config(false).state_dir().join(bulkhead_agent::flows::FLOW_LOG_FILE);
    let (a, b) = (&lab.pods()[0], &lab.pods()[1]);
    // Lost in the ring (the datapath's counter) or behind it (the flow log's).
    let lost = |agent: &bulkhead_lab::agent::Agent| {
        agent.counters().expect("counters").into_iter().find(|(k, _)| k == "flow_events_dropped").map_or(0, |(_, v)| v) + agent.detector().flow_records_lost()
    };
    let mut sustained = 0;
    for rate in RATES {
        let lost_before = lost(&agent);
        let counters_before = agent.counters().expect("counters");
        let to = b.ip;
        // A socket of its own per step: its source port tells this step's records apart.
        let (port, sent, secs) = bulkhead_netns::in_netns(&a.netns, move || {
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
            let port = s.local_addr().expect("addr").port();
            let t0 = Instant::now();
            let mut sent = 0u32;
            while sent < rate {
                // Paced per millisecond.
                let due = (t0.elapsed().as_micros() as u64 * u64::from(rate) / 1_000_000).min(u64::from(rate)) as u32;
                while sent < due {
                    let _ = s.send_to(b"r", (to, 1024 + (sent % 60_000) as u16));
                    sent += 1;
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            (port, sent, t0.elapsed().as_secs_f64())
        })
        .expect("sender in pod a");
        // Until the log stops growing (the reader's tick is 500 ms): a backlog is not a loss.
        let needle = format!("\"src_port\":{port},");
        let count = || {
            // The log rotates at 64 MiB into `.1`: both hold this step's records.
            let mut rotated = log.clone().into_os_string();
            rotated.push(".1");
            [log.clone(), rotated.into()]
                .iter()
                .map(|p| std::fs::read_to_string(p).unwrap_or_default().lines().filter(|l| l.contains("\"kind\":\"new-allowed\"") && l.contains(&needle)).count())
                .sum::<usize>()
        };
        let (mut logged, mut since) = (count(), Instant::now());
        let started = Instant::now();
        while since.elapsed() < Duration::from_millis(1500) && started.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(250));
            let n = count();
            if n != logged {
                (logged, since) = (n, Instant::now());
            }
        }
        let behind_s = since.duration_since(started).as_secs_f64();
        let want = 2 * sent as usize;
        if std::env::var("RECORDS_DEBUG").is_ok() {
            for (k, v) in agent.counters().expect("counters") {
                let b = counters_before.iter().find(|(n, _)| *n == k).map_or(0, |(_, v)| *v);
                if v != b {
                    eprintln!("  counter {k} +{}", v - b);
                }
            }
        }
        println!("  the last record logged {behind_s:.1} s after the burst");
        let dropped = lost(&agent) - lost_before;
        let achieved = f64::from(sent) / secs;
        println!("flow records: {sent} flows in {secs:.2} s ({achieved:.0}/s, {:.0} records/s): {logged} of {want} records logged, {dropped} counted lost", 2.0 * achieved);
        result(&format!("flow_records_logged_of_{rate}_per_s"), format!("{logged}/{want}"));
        if logged == want && dropped == 0 {
            sustained = rate;
        } else {
            break;
        }
    }
    result("flow_records_sustained_flows_per_s", sustained);
    result("flow_records_sustained_records_per_s", 2 * sustained);
    drop(agent);
    drop(lab);
}
