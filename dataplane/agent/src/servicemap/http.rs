//! The service map over HTTP: the page, the model with its layout, the SVG. Read-only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bulkhead_httpd::{Handler, Reply, Request, Response, Server};
use serde::Serialize;

use super::{API_PATH, Layout, MAX_RECORDS, PAGE_HTML, SVG_PATH, ServiceMap, layout, render_svg};

/// The API's answer: the map, its layout, and where it came from.
#[derive(Serialize)]
struct ApiView<'a> {
    source: String,
    /// Why the map is empty when the flow log cannot be read.
    note: Option<String>,
    summary: String,
    #[serde(flatten)]
    map: &'a ServiceMap,
    layout: Layout,
}

fn map_of(state_dir: &Path) -> (PathBuf, ServiceMap, Option<String>) {
    let path = state_dir.join(crate::flows::FLOW_LOG_FILE);
    match ServiceMap::from_flow_log(&path, MAX_RECORDS) {
        Ok(m) => (path, m, None),
        Err(e) => {
            let note = format!("no flow log at {}: {e} (is the agent instance running?)", path.display());
            (path, ServiceMap::default(), Some(note))
        }
    }
}

/// The service map's routes for a server of the instance whose state folder is `state_dir`:
/// the page at `/`, the model at [`API_PATH`], the SVG at [`SVG_PATH`]; `None` for other
/// paths. Read-only: the caller refuses other methods.
pub fn respond(path: &str, state_dir: &Path) -> Option<Response> {
    let mut resp = match path {
        "/" | "/index.html" => {
            let mut r = Response::new(200, "text/html; charset=utf-8", PAGE_HTML);
            // The page needs nothing from elsewhere: say so, so a label value that looks like
            // markup can never load anything.
            r.headers.push((
                "Content-Security-Policy".into(),
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:".into(),
            ));
            r
        }
        API_PATH => {
            let (source, map, note) = map_of(state_dir);
            let view = ApiView { source: source.display().to_string(), note, summary: map.summary(), layout: layout(&map), map: &map };
            match serde_json::to_string(&view) {
                Ok(body) => Response::new(200, "application/json", body),
                Err(e) => Response::text(500, format!("encoding the service map: {e}\n")),
            }
        }
        SVG_PATH => Response::new(200, "image/svg+xml", render_svg(&map_of(state_dir).1)),
        _ => return None,
    };
    resp.headers.push(("Cache-Control".into(), "no-store".into()));
    Some(resp)
}

/// A read-only handler serving the service map of `state_dir` (see [`respond`]).
pub fn handler(state_dir: PathBuf) -> Handler {
    Arc::new(move |req: &Request| {
        Reply::Respond(match (req.method.as_str(), respond(&req.path, &state_dir)) {
            ("GET", Some(r)) => r,
            ("GET", None) => Response::text(404, format!("try / (the service map), {API_PATH} or {SVG_PATH}\n")),
            _ => Response::text(405, "read-only: GET only\n"),
        })
    })
}

/// The service map server could not start.
#[derive(Debug, thiserror::Error)]
#[error("service map endpoint on {addr}: {source}")]
pub struct ServeError {
    pub addr: String,
    #[source]
    pub source: std::io::Error,
}

/// Serves the service map of `state_dir` on `addr` until the server is dropped.
pub fn serve(addr: &str, state_dir: PathBuf) -> Result<Server, ServeError> {
    Server::start(addr, None, handler(state_dir)).map_err(|source| ServeError { addr: addr.to_string(), source })
}
