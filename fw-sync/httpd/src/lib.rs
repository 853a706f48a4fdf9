//! A small blocking HTTP/1.1 server, optionally over TLS (rustls).
//!
//! Two users, both with little traffic and a need for full control over the connection:
//! fw-sync's Prometheus endpoint, and the PAN-OS / FortiOS emulators, which must be able to
//! answer late, answer with a 5xx, or reset the connection without answering (fault
//! injection). A thread per connection; keep-alive honoured; request bodies by
//! `Content-Length` only (chunked request bodies get 411, which no client used here sends).

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// Largest request accepted (PAN-OS documents a 5 MB cap on POST bodies).
pub const MAX_BODY: usize = 5 * 1024 * 1024;

/// One parsed request.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Path without the query string, percent-decoded.
    pub path: String,
    /// The raw query string (without `?`), as sent.
    pub query: String,
    /// Header names lower-cased.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
    pub peer: SocketAddr,
}

impl Request {
    /// A header by lower-case name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    /// Query parameters, then `application/x-www-form-urlencoded` body parameters, decoded;
    /// later duplicates win, as in PHP-style servers such as PAN-OS's.
    pub fn params(&self) -> BTreeMap<String, String> {
        let mut out = parse_form(&self.query);
        let form = self.header("content-type").is_some_and(|c| c.starts_with("application/x-www-form-urlencoded"));
        if form {
            out.extend(parse_form(&String::from_utf8_lossy(&self.body)));
        }
        out
    }
}

/// What the handler wants done with a request.
pub enum Reply {
    /// Send this response.
    Respond(Response),
    /// Close the connection without answering (a reset as the client sees it).
    Reset,
    /// Send the head of `Response` (its body is ignored) with chunked transfer encoding, then
    /// let the writer send chunks until it returns; the connection closes afterwards. `Ok`
    /// ends the body properly, `Err` drops the connection mid-body (a broken stream as the
    /// client sees it). Long-lived streams such as Kubernetes watches use this.
    Stream(Response, StreamWriter),
}

/// Writes a streamed body: each call of the given function sends one chunk and flushes it.
pub type StreamWriter = Box<dyn FnOnce(&mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> + Send>;

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reply::Respond(r) => f.debug_tuple("Respond").field(r).finish(),
            Reply::Reset => f.write_str("Reset"),
            Reply::Stream(r, _) => f.debug_tuple("Stream").field(&r.status).finish(),
        }
    }
}

/// A response; `Content-Length` and `Connection` are added by the server.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A response with a body and its content type.
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Response { status, headers: vec![("Content-Type".into(), content_type.into())], body: body.into() }
    }

    /// A `text/plain` response.
    pub fn text(status: u16, body: impl Into<String>) -> Self {
        Self::new(status, "text/plain; charset=utf-8", body.into())
    }
}

/// Handles one request; called from the connection's thread.
pub type Handler = Arc<dyn Fn(&Request) -> Reply + Send + Sync>;

/// A running server; stops accepting when dropped (open connections finish their request).
pub struct Server {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds `addr` (port 0 picks one) and serves `handler`, over TLS when `tls` is given.
    pub fn start(addr: &str, tls: Option<Arc<rustls::ServerConfig>>, handler: Handler) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new().name(format!("httpd-{}", addr.port())).spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(stream) = conn else { continue };
                let (handler, tls) = (handler.clone(), tls.clone());
                let _ = std::thread::Builder::new().name("httpd-conn".into()).spawn(move || serve_connection(stream, tls, handler));
            }
        })?;
        Ok(Server { addr, stop, thread: Some(thread) })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve_connection(stream: TcpStream, tls: Option<Arc<rustls::ServerConfig>>, handler: Handler) {
    let peer = match stream.peer_addr() {
        Ok(p) => p,
        Err(_) => return,
    };
    let _ = stream.set_nodelay(true);
    let raw = match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    };
    match tls {
        Some(cfg) => {
            let Ok(conn) = rustls::ServerConnection::new(cfg) else { return };
            let tls_stream = rustls::StreamOwned::new(conn, stream);
            serve_requests(tls_stream, &raw, peer, &handler);
        }
        None => serve_requests(stream, &raw, peer, &handler),
    }
}

fn serve_requests<S: Read + Write>(stream: S, raw: &TcpStream, peer: SocketAddr, handler: &Handler) {
    let mut reader = BufReader::new(stream);
    loop {
        let (req, keep_alive) = match read_request(&mut reader, peer) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(resp) => {
                let _ = write_response(reader.get_mut(), &resp, false);
                return;
            }
        };
        match handler(&req) {
            Reply::Reset => {
                // SO_LINGER 0 would send an RST; a plain shutdown is what most middleboxes and
                // crashed servers produce and is enough for a client to see "connection closed".
                let _ = raw.shutdown(Shutdown::Both);
                return;
            }
            Reply::Stream(head, body) => {
                let w = reader.get_mut();
                let ok = write_stream(w, &head, body).is_ok();
                if ok {
                    let _ = w.flush();
                }
                let _ = raw.shutdown(Shutdown::Both);
                return;
            }
            Reply::Respond(resp) => {
                if write_response(reader.get_mut(), &resp, keep_alive).is_err() || !keep_alive {
                    let _ = reader.get_mut().flush();
                    let _ = raw.shutdown(Shutdown::Both);
                    return;
                }
            }
        }
    }
}

/// Reads one request: `Ok(None)` at a clean end of the connection, `Err(response)` for a
/// request the server refuses.
fn read_request<R: BufRead>(reader: &mut R, peer: SocketAddr) -> Result<Option<(Request, bool)>, Response> {
    let mut head = Vec::new();
    loop {
        let n = reader.read_until(b'\n', &mut head).map_err(|_| Response::text(400, "bad request"))?;
        if n == 0 {
            return if head.is_empty() { Ok(None) } else { Err(Response::text(400, "truncated request")) };
        }
        if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
            break;
        }
        if head.len() > 64 * 1024 {
            return Err(Response::text(431, "request header too large"));
        }
    }
    let mut hdrs = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Request::new(&mut hdrs);
    match parsed.parse(&head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(Response::text(400, "malformed request")),
    }
    let method = parsed.method.unwrap_or("GET").to_string();
    let target = parsed.path.unwrap_or("/");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let headers: BTreeMap<String, String> =
        parsed.headers.iter().map(|h| (h.name.to_ascii_lowercase(), String::from_utf8_lossy(h.value).into_owned())).collect();
    let keep_alive = match headers.get("connection").map(|c| c.to_ascii_lowercase()) {
        Some(c) if c.contains("close") => false,
        Some(c) if c.contains("keep-alive") => true,
        _ => parsed.version == Some(1),
    };
    if headers.get("transfer-encoding").is_some_and(|t| !t.eq_ignore_ascii_case("identity")) {
        return Err(Response::text(411, "length required"));
    }
    let len: usize = match headers.get("content-length") {
        Some(l) => l.trim().parse().map_err(|_| Response::text(400, "bad content-length"))?,
        None => 0,
    };
    if len > MAX_BODY {
        return Err(Response::text(413, "request entity too large"));
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).map_err(|_| Response::text(400, "truncated body"))?;
    let req = Request { method, path: percent_decode(path), query: query.to_string(), headers, body, peer };
    Ok(Some((req, keep_alive)))
}

fn write_response<W: Write>(w: &mut W, resp: &Response, keep_alive: bool) -> io::Result<()> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (k, v) in &resp.headers {
        head += &format!("{k}: {v}\r\n");
    }
    head += &format!("Content-Length: {}\r\nConnection: {}\r\n\r\n", resp.body.len(), if keep_alive { "keep-alive" } else { "close" });
    w.write_all(head.as_bytes())?;
    w.write_all(&resp.body)?;
    w.flush()
}

fn write_stream<W: Write>(w: &mut W, head: &Response, body: StreamWriter) -> io::Result<()> {
    let mut text = format!("HTTP/1.1 {} {}\r\n", head.status, reason(head.status));
    for (k, v) in &head.headers {
        text += &format!("{k}: {v}\r\n");
    }
    text += "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    w.write_all(text.as_bytes())?;
    w.flush()?;
    body(&mut |chunk: &[u8]| {
        if chunk.is_empty() {
            return Ok(());
        }
        w.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())?;
        w.write_all(chunk)?;
        w.write_all(b"\r\n")?;
        w.flush()
    })?;
    w.write_all(b"0\r\n\r\n")
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        410 => "Gone",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        411 => "Length Required",
        413 => "Payload Too Large",
        424 => "Failed Dependency",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Decodes `a=1&b=x%20y` (with `+` as space).
pub fn parse_form(s: &str) -> BTreeMap<String, String> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(&k.replace('+', " ")), percent_decode(&v.replace('+', " ")))
        })
        .collect()
}

/// Decodes `%XX` escapes; invalid escapes are kept as written.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = std::str::from_utf8(&b[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        let f = parse_form("type=config&xpath=%2Fconfig%2Fa&element=%3Centry+name%3D%27x%27%2F%3E&empty");
        assert_eq!(f["type"], "config");
        assert_eq!(f["xpath"], "/config/a");
        assert_eq!(f["element"], "<entry name='x'/>");
        assert_eq!(f["empty"], "");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }

    #[test]
    fn serves_keep_alive_and_resets() {
        let handler: Handler = Arc::new(|r: &Request| {
            if r.path == "/reset" {
                Reply::Reset
            } else {
                Reply::Respond(Response::text(200, format!("{} {} {}", r.method, r.path, String::from_utf8_lossy(&r.body))))
            }
        });
        let server = Server::start("127.0.0.1:0", None, handler).expect("bind");
        let mut s = TcpStream::connect(server.addr()).expect("connect");
        s.write_all(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhiGET /b HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        assert!(out.contains("POST /a hi") && out.contains("GET /b ") && out.matches("HTTP/1.1 200").count() == 2, "{out}");
        let mut s = TcpStream::connect(server.addr()).expect("connect");
        s.write_all(b"GET /reset HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        assert!(out.is_empty(), "a reset sends nothing: {}", String::from_utf8_lossy(&out));
    }
}
