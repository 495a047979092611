//! What every request to the local HTTP API must pass before a handler sees it:
//!
//! 1. its `Host` is one that cannot be rebound (DNS rebinding: a web page whose name resolves to
//!    this host would otherwise reach the API from the user's browser): an IP literal,
//!    `localhost`, or a name configured in `api_hosts`; else 421;
//! 2. when an API token is set, `Authorization: Bearer <token>` (every route but `/healthz` and
//!    `/metrics`); else 401;
//! 3. a request with a body (POST, PUT, PATCH) declares a JSON content type: `application/json`
//!    (any parameters, e.g. a charset), `application/merge-patch+json` on PATCH, or
//!    `application/x-ndjson` on `POST /v1/ingest`; else 415.
//!    A browser sends `text/plain`, form types or no type at all without asking the server
//!    first (a CORS "simple request"), so a JSON body under any of them is refused.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Largest token file, bytes.
pub const TOKEN_FILE_BYTES_MAX: u64 = 4096;
/// Shortest token, bytes: a token an attacker can guess protects nothing.
pub const TOKEN_BYTES_MIN: usize = 16;

/// The request checks' settings.
#[derive(Clone, Debug, Default)]
pub struct Guard {
    /// Host names accepted besides IP literals and `localhost` (lowercase, without port).
    hosts: Vec<String>,
    /// The bearer token every route but `/healthz` and `/metrics` requires, if any.
    token: Option<String>,
}

/// An API token file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read.
    #[error("{}: cannot read the API token", path.display())]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file's content is not a usable token.
    #[error("{}: {why}", path.display())]
    Invalid {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        why: String,
    },
}

/// Reads a token file: one line of at least [`TOKEN_BYTES_MIN`] printable ASCII characters
/// (surrounding whitespace ignored), the file at most [`TOKEN_FILE_BYTES_MAX`] bytes.
pub fn read_token(path: &Path) -> Result<String, TokenError> {
    let read = |source| TokenError::Read {
        path: path.to_path_buf(),
        source,
    };
    let invalid = |why: String| TokenError::Invalid {
        path: path.to_path_buf(),
        why,
    };
    let len = std::fs::metadata(path).map_err(read)?.len();
    if len > TOKEN_FILE_BYTES_MAX {
        return Err(invalid(format!("larger than {TOKEN_FILE_BYTES_MAX} bytes")));
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    let token = text.trim();
    if token.len() < TOKEN_BYTES_MIN {
        return Err(invalid(format!(
            "the token must be at least {TOKEN_BYTES_MIN} characters"
        )));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            "the token must be one word of printable ASCII".into(),
        ));
    }
    Ok(token.to_string())
}

impl Guard {
    /// Checks with these extra host names and this token.
    pub fn new(hosts: &[String], token: Option<String>) -> Guard {
        Guard {
            hosts: hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            token,
        }
    }

    /// True when a token is required.
    pub fn has_token(&self) -> bool {
        self.token.is_some()
    }

    fn host_allowed(&self, headers: &HeaderMap) -> bool {
        let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
            return false;
        };
        let Some(name) = host_name(host) else {
            return false;
        };
        name.parse::<IpAddr>().is_ok()
            || name.eq_ignore_ascii_case("localhost")
            || self.hosts.iter().any(|h| h.eq_ignore_ascii_case(name))
    }

    fn token_ok(&self, headers: &HeaderMap) -> bool {
        let Some(want) = &self.token else {
            return true;
        };
        let got = headers
            .get(header::AUTHORIZATION)
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .unwrap_or("");
        // Compared through hashes: the time taken says nothing about how much of it matched.
        blake3::hash(got.as_bytes()) == blake3::hash(want.as_bytes())
    }
}

/// The host part of a `Host` header value: `name`, `name:port`, `[v6]` or `[v6]:port`.
fn host_name(host: &str) -> Option<&str> {
    if let Some(rest) = host.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(is_port)) {
            return None;
        }
        return v6.parse::<std::net::Ipv6Addr>().is_ok().then_some(v6);
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if is_port(port) => name,
        Some(_) => return None,
        None => host,
    };
    (!name.is_empty()).then_some(name)
}

fn is_port(s: &str) -> bool {
    !s.is_empty() && s.len() <= 5 && s.bytes().all(|b| b.is_ascii_digit())
}

fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

fn is_json(content_type: &str, merge_patch: bool) -> bool {
    let essence = essence(content_type);
    essence == "application/json" || (merge_patch && essence == "application/merge-patch+json")
}

/// Whether a content type is newline-delimited JSON (taken by `POST /v1/ingest` only).
pub(super) fn is_ndjson(content_type: &str) -> bool {
    essence(content_type) == "application/x-ndjson"
}

fn refuse(status: StatusCode, msg: String) -> Response {
    (status, Json(json!({ "error": msg }))).into_response()
}

/// The middleware: the three checks, in that order.
pub async fn check(State(guard): State<Arc<Guard>>, req: Request, next: Next) -> Response {
    let headers = req.headers();
    if !guard.host_allowed(headers) {
        metrics::counter!("edgesync_api_refused_total", "reason" => "host").increment(1);
        let host = headers
            .get(header::HOST)
            .map(|h| String::from_utf8_lossy(h.as_bytes()).into_owned());
        return refuse(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "host {host:?} is not this API's: use an IP address or localhost, or list the \
                 name in api_hosts"
            ),
        );
    }
    let path = req.uri().path();
    if path != "/healthz" && path != "/metrics" && !guard.token_ok(headers) {
        metrics::counter!("edgesync_api_refused_total", "reason" => "token").increment(1);
        let mut r = refuse(
            StatusCode::UNAUTHORIZED,
            "this API requires \"Authorization: Bearer <token>\" with the token of its \
             api_token_file"
                .into(),
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, "Bearer".parse().expect("header"));
        return r;
    }
    let method = req.method();
    if matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
        let ct = headers
            .get(header::CONTENT_TYPE)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("");
        let ndjson_ok = *method == Method::POST && req.uri().path() == "/v1/ingest";
        let accepted = is_json(ct, *method == Method::PATCH) || (ndjson_ok && is_ndjson(ct));
        if !accepted {
            metrics::counter!("edgesync_api_refused_total", "reason" => "content-type")
                .increment(1);
            let want = if *method == Method::PATCH {
                "application/json or application/merge-patch+json"
            } else if ndjson_ok {
                "application/json or application/x-ndjson"
            } else {
                "application/json"
            };
            return refuse(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("content type {ct:?} refused: send {want}"),
            );
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), v.parse().unwrap());
        }
        h
    }

    // Only names that cannot be rebound pass: IP literals, localhost, configured names.
    #[test]
    fn hosts() {
        let g = Guard::new(&["Gw-1.Site-A.example".into()], None);
        for ok in [
            "127.0.0.1:8401",
            "127.0.0.1",
            "10.1.2.3:80",
            "[::1]:8401",
            "[::1]",
            "localhost:8401",
            "LOCALHOST",
            "gw-1.site-a.example:8401",
        ] {
            assert!(g.host_allowed(&headers(&[(header::HOST, ok)])), "{ok}");
        }
        for bad in [
            "evil.example:8401",
            "evil.example",
            "localhost.evil.example",
            "127.0.0.1.nip.io:8401",
            "[::1]x",
            "[not-v6]:1",
            "127.0.0.1:port",
            ":8401",
            "",
        ] {
            assert!(!g.host_allowed(&headers(&[(header::HOST, bad)])), "{bad}");
        }
        assert!(!g.host_allowed(&HeaderMap::new()), "no Host at all");
    }

    #[test]
    fn tokens() {
        let g = Guard::new(&[], Some("0123456789abcdef".into()));
        let auth = |v: &str| headers(&[(header::AUTHORIZATION, v)]);
        assert!(g.token_ok(&auth("Bearer 0123456789abcdef")));
        assert!(!g.token_ok(&auth("Bearer 0123456789abcdeF")));
        assert!(!g.token_ok(&auth("0123456789abcdef")));
        assert!(!g.token_ok(&HeaderMap::new()));
        assert!(Guard::default().token_ok(&HeaderMap::new()));
    }

    #[test]
    fn content_types() {
        assert!(is_json("application/json", false));
        assert!(is_json("Application/JSON; charset=utf-8", false));
        assert!(!is_json("application/merge-patch+json", false));
        assert!(is_json("application/merge-patch+json", true));
        assert!(is_ndjson("application/x-ndjson; charset=utf-8"));
        assert!(!is_ndjson("application/json"));
        for bad in [
            "text/plain",
            "",
            "application/x-www-form-urlencoded",
            "application/jsonx",
        ] {
            assert!(!is_json(bad, true), "{bad}");
        }
    }

    #[test]
    fn token_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "  0123456789abcdef\n").unwrap();
        assert_eq!(read_token(&p).unwrap(), "0123456789abcdef");
        std::fs::write(&p, "short\n").unwrap();
        assert!(read_token(&p).is_err());
        std::fs::write(&p, "0123456789 abcdef\n").unwrap();
        assert!(read_token(&p).is_err());
        std::fs::write(&p, vec![b'a'; 5000]).unwrap();
        assert!(read_token(&p).is_err());
        assert!(read_token(&dir.path().join("missing")).is_err());
    }
}
