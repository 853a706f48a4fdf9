//! Optional alert webhook: every detector event is also POSTed as JSON to a URL, from a
//! thread of its own, so a slow or dead receiver never delays a detection or an action.
//!
//! The URL comes from the environment (`BULKHEAD_ALERT_WEBHOOK`) or from a file named there
//! (`BULKHEAD_ALERT_WEBHOOK_FILE`, for URLs that carry a token, like chat webhooks). It is a
//! secret: logs name its scheme and host only. Events wait in a bounded queue; when it is full
//! they are dropped and counted (the JSON-lines file still has them all).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, SyncSender, TrySendError, sync_channel},
    },
    time::Duration,
};

/// Environment variable holding the webhook URL.
pub const WEBHOOK_ENV: &str = "BULKHEAD_ALERT_WEBHOOK";
/// Environment variable naming a file that holds the webhook URL.
pub const WEBHOOK_FILE_ENV: &str = "BULKHEAD_ALERT_WEBHOOK_FILE";
/// Events waiting for the receiver at most.
pub const QUEUE: usize = 1024;
/// Per request (connect and answer).
const TIMEOUT: Duration = Duration::from_secs(2);

/// Delivery counters of the webhook.
#[derive(Debug, Default)]
pub struct WebhookStats {
    pub sent: AtomicU64,
    /// Not accepted by the receiver (error status, timeout, connection refused) after a retry.
    pub failed: AtomicU64,
    /// Dropped because the queue was full.
    pub dropped: AtomicU64,
}

/// The sending side; the thread ends when this is dropped.
#[derive(Debug)]
pub struct Webhook {
    tx: SyncSender<String>,
    stats: Arc<WebhookStats>,
}

impl Webhook {
    /// The webhook configured in the environment, if any. A file that cannot be read or a
    /// URL that is not http(s) is an error naming the variable (not the URL).
    pub fn from_env() -> Result<Option<Webhook>, String> {
        let url = match (std::env::var(WEBHOOK_ENV), std::env::var(WEBHOOK_FILE_ENV)) {
            (Ok(u), _) if !u.trim().is_empty() => u.trim().to_string(),
            (_, Ok(path)) if !path.trim().is_empty() => std::fs::read_to_string(path.trim())
                .map_err(|e| format!("{WEBHOOK_FILE_ENV}={path}: {e}"))?
                .trim()
                .to_string(),
            _ => return Ok(None),
        };
        Webhook::start(&url).map(Some)
    }

    /// Starts the sender thread for `url` (`http://` or `https://`).
    pub fn start(url: &str) -> Result<Webhook, String> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("alert webhook: the URL must start with http:// or https:// (set in {WEBHOOK_ENV} or {WEBHOOK_FILE_ENV})"));
        }
        let receiver = redacted(url);
        let (tx, rx) = sync_channel(QUEUE);
        let stats = Arc::new(WebhookStats::default());
        let (url, thread_stats) = (url.to_string(), stats.clone());
        std::thread::Builder::new()
            .name("bh-webhook".into())
            .spawn(move || run(&url, rx, &thread_stats))
            .map_err(|e| format!("alert webhook thread: {e}"))?;
        tracing::info!(%receiver, "detector alerts also go to a webhook");
        Ok(Webhook { tx, stats })
    }

    /// Queues one event (JSON); never blocks.
    pub fn send(&self, json: String) {
        match self.tx.try_send(json) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Delivery counters.
    pub fn stats(&self) -> &WebhookStats {
        &self.stats
    }
}

/// Scheme and host of a URL, without path, query or credentials (which may be secrets).
fn redacted(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("?", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit('@').next().unwrap_or(host);
    format!("{scheme}://{host}/…")
}

fn run(url: &str, rx: Receiver<String>, stats: &WebhookStats) {
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(TIMEOUT)).http_status_as_error(true).build().into();
    let receiver = redacted(url);
    while let Ok(body) = rx.recv() {
        // One retry: a receiver restarting should not lose the alert; a dead one costs two
        // timeouts per event at most while the queue absorbs the rest.
        let ok = (0..2).any(|attempt| {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(200));
            }
            match agent.post(url).header("content-type", "application/json").send(body.as_str()) {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(receiver = %receiver, attempt, error = %e, "alert webhook refused the event");
                    false
                }
            }
        });
        let counter = if ok { &stats.sent } else { &stats.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;

    /// A one-shot HTTP receiver: answers `status` to each request and hands over the bodies.
    fn receiver(status: u16, requests: usize) -> (String, std::thread::JoinHandle<Vec<String>>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hooks/secret-token", l.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let mut bodies = Vec::new();
            for _ in 0..requests {
                let (s, _) = l.accept().unwrap();
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut len = 0;
                loop {
                    let mut line = String::new();
                    r.read_line(&mut line).unwrap();
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; len];
                r.read_exact(&mut body).unwrap();
                bodies.push(String::from_utf8(body).unwrap());
                write!(&s, "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").unwrap();
            }
            bodies
        });
        (url, h)
    }

    fn wait(stats: &WebhookStats, f: impl Fn(&WebhookStats) -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !f(stats) {
            assert!(std::time::Instant::now() < deadline, "webhook counters: {stats:?}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn events_are_posted_as_json() {
        let (url, h) = receiver(200, 2);
        let w = Webhook::start(&url).expect("webhook");
        w.send(r#"{"kind":"violation","n":1}"#.into());
        w.send(r#"{"kind":"syscall-unseen","n":2}"#.into());
        wait(w.stats(), |s| s.sent.load(Ordering::Relaxed) == 2);
        let bodies = h.join().unwrap();
        assert_eq!(bodies, vec![r#"{"kind":"violation","n":1}"#, r#"{"kind":"syscall-unseen","n":2}"#]);
    }

    #[test]
    fn a_refusing_receiver_is_counted_after_a_retry() {
        let (url, h) = receiver(500, 2);
        let w = Webhook::start(&url).expect("webhook");
        w.send("{}".into());
        wait(w.stats(), |s| s.failed.load(Ordering::Relaxed) == 1);
        assert_eq!(h.join().unwrap().len(), 2, "one retry");
        assert_eq!(w.stats().sent.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn bad_urls_are_refused_and_secrets_never_shown() {
        let e = Webhook::start("ftp://example.com/x").unwrap_err();
        assert!(e.contains("http://") && !e.contains("example.com"), "{e}");
        assert_eq!(redacted("https://user:pw@hooks.example.com:8443/T0/B1/secret?x=1"), "https://hooks.example.com:8443/…");
    }
}
