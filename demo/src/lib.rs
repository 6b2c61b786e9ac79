//! Test workloads shaped like the tutorial's OAuth2 demo (`shared/seed/oauth2-demo.md`):
//!
//! - `demo-sidecar` stands in for oauth2-proxy: it fronts the Pod's Service port, adds
//!   `X-Forwarded-Access-Token: <JWT>` (payload claim lowercase `email`) and proxies the request to
//!   the app on `127.0.0.1:8155`.
//! - `demo-app` stands in for the FastAPI app: `/items/{id}` reads the claim whose *name* is in a
//!   file (default `/app/claim`, content `Email`), re-read on every request, so a mounted copy of
//!   the file can be "fixed" like the tutorial's code under `--reload`. A missing claim answers 500
//!   (the tutorial's `KeyError: 'Email'`).
#![forbid(unsafe_code)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// The header the sidecar adds (as oauth2-proxy's `--pass-access-token`).
pub const TOKEN_HEADER: &str = "x-forwarded-access-token";
/// Names the instance that answered (its hostname: the Pod name, or the Docker container id).
pub const HOST_HEADER: &str = "x-demo-host";
/// The app's port in the tutorial.
pub const APP_PORT: u16 = 8155;
/// The sidecar's port in the tutorial (oauth2-proxy, port name `http`).
pub const SIDECAR_PORT: u16 = 8809;
/// Default claim file of the app and the claim name used when it is missing.
pub const DEFAULT_CLAIM_FILE: &str = "/app/claim";
pub const DEFAULT_CLAIM: &str = "Email";
/// The email claim the sidecar puts into its token.
pub const DEFAULT_EMAIL: &str = "john@gefyra.dev";

type Body = Full<Bytes>;

// ---------------------------------------------------------------- JWT (unsigned use only)

/// A JWT-shaped token (header.payload.signature, base64url) with `claims` as payload. The
/// signature is a fixed placeholder: like the tutorial's app, readers do not verify it.
pub fn make_token(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string().as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(b"gefyra-demo-unsigned");
    format!("{header}.{payload}.{sig}")
}

/// The payload of a JWT, without verifying the signature.
pub fn token_claims(token: &str) -> Result<serde_json::Map<String, Value>, String> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a JWT (expected header.payload.signature)".into());
    };
    let raw = URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| format!("payload is not base64url: {e}"))?;
    match serde_json::from_slice::<Value>(&raw) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err("payload is not a JSON object".into()),
        Err(e) => Err(format!("payload is not JSON: {e}")),
    }
}

// ---------------------------------------------------------------- serving

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "unknown".into())
}

fn respond(status: StatusCode, ct: &str, body: impl Into<Bytes>, host: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_str(ct).unwrap_or(HeaderValue::from_static("text/plain")),
    );
    if let Ok(v) = HeaderValue::from_str(host) {
        r.headers_mut()
            .insert(HeaderName::from_static(HOST_HEADER), v);
    }
    r
}

fn json_response(status: StatusCode, v: &Value, host: &str) -> Response<Body> {
    respond(status, "application/json", v.to_string(), host)
}

/// Accepts connections until `shutdown` resolves; each is served by `handle` (HTTP/1.1).
async fn serve<H, F>(
    listener: TcpListener,
    handle: H,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()>
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    tokio::pin!(shutdown);
    loop {
        let (stream, _peer) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let handle = handle.clone();
                async move { Ok::<_, std::convert::Infallible>(handle(req).await) }
            });
            // half_close: a client may shut its write side while it waits for the answer (nc,
            // HTTP/1.0 clients); without it hyper drops the request on that EOF
            let _ = hyper::server::conn::http1::Builder::new()
                .half_close(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

// ---------------------------------------------------------------- the app

#[derive(Debug, Clone)]
pub struct AppConfig {
    /// File holding the claim name to read (re-read on every request).
    pub claim_file: PathBuf,
}

impl AppConfig {
    pub fn from_env() -> Self {
        AppConfig {
            claim_file: std::env::var_os("DEMO_CLAIM_FILE")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CLAIM_FILE)),
        }
    }

    /// The claim name now: the file's first line, or `Email` when the file is missing or empty.
    pub fn claim(&self) -> String {
        std::fs::read_to_string(&self.claim_file)
            .ok()
            .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| DEFAULT_CLAIM.to_string())
    }
}

/// One request of the app; logs a line with the token to stdout.
pub fn app_answer(
    cfg: &AppConfig,
    method: &str,
    path: &str,
    token: Option<&str>,
    host: &str,
) -> Response<Body> {
    println!("{method} {path} token={}", token.unwrap_or("-"));
    let path = path.split('?').next().unwrap_or("");
    if method != "GET" {
        return json_response(
            StatusCode::METHOD_NOT_ALLOWED,
            &json!({"detail": "Method Not Allowed"}),
            host,
        );
    }
    if path == "/" {
        return json_response(StatusCode::OK, &json!({"Hello": "World"}), host);
    }
    let Some(id) = path.strip_prefix("/items/") else {
        return json_response(StatusCode::NOT_FOUND, &json!({"detail": "Not Found"}), host);
    };
    let Ok(item_id) = id.parse::<i64>() else {
        return json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({"detail": "item_id must be an integer"}),
            host,
        );
    };
    let Some(token) = token else {
        return json_response(
            StatusCode::OK,
            &json!({"item_id": item_id, "Email": "not given"}),
            host,
        );
    };
    let claim = cfg.claim();
    let value = token_claims(token)
        .map_err(|e| format!("bad token: {e}"))
        .and_then(|m| {
            m.get(&claim).cloned().ok_or_else(|| {
                format!(
                    "KeyError: '{claim}' (the token has: {})",
                    m.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })
        });
    match value {
        Ok(v) => json_response(
            StatusCode::OK,
            &json!({"item_id": item_id, "Email": v}),
            host,
        ),
        Err(e) => {
            println!("ERROR {e}");
            respond(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                "Internal Server Error",
                host,
            )
        }
    }
}

/// Serves the app on `listener` until `shutdown`.
pub async fn run_app(
    listener: TcpListener,
    cfg: AppConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let host: Arc<str> = hostname().into();
    serve(
        listener,
        move |req: Request<Incoming>| {
            let cfg = cfg.clone();
            let host = host.clone();
            async move {
                let token = req
                    .headers()
                    .get(TOKEN_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let path = req
                    .uri()
                    .path_and_query()
                    .map(|p| p.as_str())
                    .unwrap_or("/")
                    .to_string();
                app_answer(&cfg, req.method().as_str(), &path, token.as_deref(), &host)
            }
        },
        shutdown,
    )
    .await
}

// ---------------------------------------------------------------- the sidecar

#[derive(Debug, Clone)]
pub struct SidecarConfig {
    pub upstream: SocketAddr,
    pub email: String,
}

impl SidecarConfig {
    pub fn from_env() -> anyhow::Result<Self> {
        let upstream = match std::env::var("DEMO_UPSTREAM") {
            Ok(s) => s
                .parse()
                .map_err(|e| anyhow::anyhow!("DEMO_UPSTREAM '{s}' is not IP:PORT: {e}"))?,
            Err(_) => SocketAddr::from(([127, 0, 0, 1], APP_PORT)),
        };
        Ok(SidecarConfig {
            upstream,
            email: std::env::var("DEMO_EMAIL").unwrap_or_else(|_| DEFAULT_EMAIL.into()),
        })
    }

    pub fn token(&self) -> String {
        make_token(&json!({
            "sub": "f7e3c1a2-0000-4000-8000-00000000d3m0",
            "email": self.email,
            "email_verified": true,
            "preferred_username": self.email,
            "iss": "http://keycloak.gefyra-demo/auth/realms/demo",
        }))
    }
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
];

async fn forward(
    cfg: &SidecarConfig,
    token: &str,
    req: Request<Incoming>,
) -> Result<Response<Body>, String> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("reading the request body: {e}"))?
        .to_bytes();
    let mut up = Request::builder().method(parts.method.clone()).uri(
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/"),
    );
    for (k, v) in parts.headers.iter() {
        if !HOP_BY_HOP.contains(&k.as_str()) && k.as_str() != TOKEN_HEADER {
            up = up.header(k, v);
        }
    }
    up = up
        .header(TOKEN_HEADER, token)
        .header("x-forwarded-email", cfg.email.as_str())
        .header("x-forwarded-user", cfg.email.as_str());
    let up = up
        .body(Full::new(body))
        .map_err(|e| format!("building the request: {e}"))?;
    let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(cfg.upstream))
        .await
        .map_err(|_| format!("upstream {} did not answer within 5s", cfg.upstream))?
        .map_err(|e| format!("upstream {}: {e}", cfg.upstream))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("upstream {}: {e}", cfg.upstream))?;
    tokio::spawn(conn);
    let resp = tokio::time::timeout(Duration::from_secs(60), send.send_request(up))
        .await
        .map_err(|_| format!("upstream {} gave no answer within 60s", cfg.upstream))?
        .map_err(|e| format!("upstream {}: {e}", cfg.upstream))?;
    let (rparts, rbody) = resp.into_parts();
    let rbody = rbody
        .collect()
        .await
        .map_err(|e| format!("reading the upstream body: {e}"))?
        .to_bytes();
    let mut out = Response::new(Full::new(rbody));
    *out.status_mut() = rparts.status;
    for (k, v) in rparts.headers.iter() {
        if !HOP_BY_HOP.contains(&k.as_str()) && k != hyper::header::CONTENT_LENGTH {
            out.headers_mut().append(k, v.clone());
        }
    }
    Ok(out)
}

/// Serves the sidecar on `listener` until `shutdown`.
pub async fn run_sidecar(
    listener: TcpListener,
    cfg: SidecarConfig,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let token: Arc<str> = cfg.token().into();
    let cfg = Arc::new(cfg);
    let host: Arc<str> = hostname().into();
    serve(
        listener,
        move |req: Request<Incoming>| {
            let cfg = cfg.clone();
            let token = token.clone();
            let host = host.clone();
            async move {
                let line = format!("{} {}", req.method(), req.uri());
                match forward(&cfg, &token, req).await {
                    Ok(r) => {
                        println!("{line} -> {}", r.status().as_u16());
                        r
                    }
                    Err(e) => {
                        println!("{line} -> 502 ({e})");
                        respond(
                            StatusCode::BAD_GATEWAY,
                            "text/plain",
                            format!("Bad Gateway: {e}\n"),
                            &host,
                        )
                    }
                }
            }
        },
        shutdown,
    )
    .await
}

/// Resolves on SIGTERM or Ctrl-C (both binaries run as PID 1 in their containers).
pub async fn terminated() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

/// The listen address from `var` (IP:PORT), default `0.0.0.0:<port>`.
pub fn listen_addr(var: &str, port: u16) -> anyhow::Result<SocketAddr> {
    match std::env::var(var) {
        Ok(s) => s
            .parse()
            .map_err(|e| anyhow::anyhow!("{var} '{s}' is not IP:PORT: {e}")),
        Err(_) => Ok(SocketAddr::from(([0, 0, 0, 0], port))),
    }
}
