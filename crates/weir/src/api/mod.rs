//! weir's HTTP API and Prometheus metrics (feature `http-api`): an [`axum::Router`] that
//! `weir serve --http ADDR` and `weir http ADDR` serve, and that a library user can mount in
//! their own service (`Router::nest("/weir", api.router())`).
//!
//! | route | token | what |
//! |---|---|---|
//! | `GET /healthz` | none | the process is up |
//! | `GET /readyz` | none | the broker (and the workflow store, if any) answer; 503 with the reason if not |
//! | `GET /metrics` | read | Prometheus text format |
//! | `GET /openapi.json` | none | the OpenAPI 3.1 description of these routes |
//! | `GET /api/v1/queues` | read | job counts by queue and state (or RabbitMQ's depths) |
//! | `GET /api/v1/workers` | read | worker reports: pool size, busy, last autoscaler decision |
//! | `GET /api/v1/jobs?state=&queue=&kind=&since=&until=&text=&limit=&cursor=` | read | a page of jobs, newest first, and the next page's cursor |
//! | `GET /api/v1/jobs/{id}` | read | one job: payload, result, error, attempts |
//! | `DELETE /api/v1/jobs/{id}` | admin | delete a finished job |
//! | `POST /api/v1/jobs/bulk` | admin | retry, cancel or delete every job matching a filter |
//! | `POST /api/v1/jobs` | admin | enqueue one job (an object) or many (an array) |
//! | `POST /api/v1/jobs/{id}/retry`, `/cancel` | admin | run a finished job again; cancel one |
//! | `POST /api/v1/workflows` | admin | submit a workflow |
//! | `GET /api/v1/workflows/{id}` | read | a workflow's progress, members and result |
//! | `GET /api/v1/audit` | read | the last state changes made through the API |
//! | `GET /api/v1/config` | read | the configuration file followed, secrets redacted, and whether it is the one in force |
//!
//! Errors are JSON `{"error": "…"}` with a status that says whose fault it is: 400 (the
//! request; nothing was changed), 401/403 (the token), 404, 413 (the body), 501 (the broker
//! cannot do it, e.g. RabbitMQ has no get-by-id), 503 (the broker is unreachable).
//!
//! **Security.** Two bearer tokens: `read` (every `GET`) and `admin` (everything). With no
//! token configured the API is open, which [`check_bind`] allows on a loopback address only.
//! With tokens but no admin token, nothing can be changed. Bodies are limited
//! ([`ApiConfig::max_body`]) and every request has a timeout. Broker and store URLs never
//! appear in a response.

mod audit;
mod jobs;
pub mod metrics;
mod openapi;
mod queues;
mod settings;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use weir_core::{Broker, BrokerError, Timestamp};

pub use audit::AuditEntry;
use weir_workflow::{StateStore, Workflows};

/// Settings of the API. See each field for its default.
#[derive(Clone, Default)]
pub struct ApiConfig {
    /// The bearer token that may read (every `GET`). By default, none.
    pub read_token: Option<String>,
    /// The bearer token that may also change state. By default, none.
    pub admin_token: Option<String>,
    /// The largest request body, in bytes. By default (0), 8 MiB.
    pub max_body: usize,
    /// How long one request may take. By default (zero), 30 s.
    pub timeout: Duration,
    /// Queues to report on where the broker cannot list its queues (RabbitMQ). By default,
    /// none: then the live configuration's `[queues.*]` (see [`Api::live_config`]), else
    /// `default`.
    pub queues: Vec<String>,
}

impl std::fmt::Debug for ApiConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiConfig")
            .field("read_token", &self.read_token.as_ref().map(|_| "***"))
            .field("admin_token", &self.admin_token.as_ref().map(|_| "***"))
            .field("max_body", &self.max_body)
            .field("timeout", &self.timeout)
            .field("queues", &self.queues)
            .finish()
    }
}

/// A configured token, if any: an empty one is none (it would match an empty header).
fn token(t: &Option<String>) -> Option<&str> {
    t.as_deref().filter(|t| !t.is_empty())
}

/// Refuses to serve an open API (no token) on an address other than loopback.
pub fn check_bind(addr: SocketAddr, config: &ApiConfig) -> Result<(), String> {
    if !addr.ip().is_loopback()
        && token(&config.read_token).is_none()
        && token(&config.admin_token).is_none()
    {
        return Err(format!(
            "refusing to serve the HTTP API on {addr} without a token: anyone who can reach it \
             could enqueue and cancel jobs. Set WEIR_API_ADMIN_TOKEN (and WEIR_API_READ_TOKEN \
             for read-only clients), or bind to 127.0.0.1"
        ));
    }
    Ok(())
}

/// What every handler shares.
pub(crate) struct ApiState {
    pub(crate) broker: Arc<dyn Broker>,
    pub(crate) store: Option<Arc<dyn StateStore>>,
    pub(crate) workflows: Option<Workflows>,
    pub(crate) config: ApiConfig,
    pub(crate) metrics: Option<metrics::MetricsHandle>,
    pub(crate) live: Option<Arc<crate::reload::LiveConfig>>,
    pub(crate) throughput: queues::Throughput,
    audit: audit::AuditLog,
}

impl ApiState {
    /// The queues to report depths of where the broker cannot list its queues (RabbitMQ):
    /// `ApiConfig::queues`, else those of the live configuration, else `default`.
    pub(crate) fn served_queues(&self) -> Vec<String> {
        if !self.config.queues.is_empty() {
            return self.config.queues.clone();
        }
        let from_config: Vec<String> = self
            .live
            .as_ref()
            .map(|l| l.current().queues.keys().cloned().collect())
            .unwrap_or_default();
        if from_config.is_empty() {
            vec![weir_core::DEFAULT_QUEUE.to_owned()]
        } else {
            from_config
        }
    }
}

/// The API over one broker (and optionally a workflow store and the metrics recorder).
pub struct Api {
    state: Arc<ApiState>,
}

impl Api {
    /// An API over `broker`, with `config`.
    pub fn new(broker: Arc<dyn Broker>, config: ApiConfig) -> Self {
        Api {
            state: Arc::new(ApiState {
                broker,
                store: None,
                workflows: None,
                config,
                metrics: None,
                live: None,
                throughput: Default::default(),
                audit: audit::AuditLog::default(),
            }),
        }
    }

    /// Serves workflows from `store` too. By default, none (the workflow routes answer 501).
    pub fn store(mut self, store: Arc<dyn StateStore>) -> Self {
        let s = Arc::get_mut(&mut self.state).expect("not shared before router()");
        s.workflows = Some(Workflows::new(s.broker.clone(), store.clone()));
        s.store = Some(store);
        self
    }

    /// Serves `/metrics` from this recorder. By default, none (`/metrics` answers 501).
    pub fn metrics(mut self, handle: metrics::MetricsHandle) -> Self {
        Arc::get_mut(&mut self.state)
            .expect("not shared before router()")
            .metrics = Some(handle);
        self
    }

    /// Appends the audit log to `path` too (one JSON line per change, synced), and lists its
    /// last entries from the start, so the record outlives a restart. By default, the log
    /// is kept in memory only (and in the `weir::audit` log lines). Errors: the file cannot
    /// be read or opened for appending.
    pub fn audit_log(mut self, path: &std::path::Path) -> std::io::Result<Self> {
        let log = audit::AuditLog::open(path)?;
        Arc::get_mut(&mut self.state)
            .expect("not shared before router()")
            .audit = log;
        Ok(self)
    }

    /// Shows this configuration file at `/api/v1/config` (secrets redacted). By default,
    /// none (the route answers with `null`s).
    pub fn live_config(mut self, live: Arc<crate::reload::LiveConfig>) -> Self {
        Arc::get_mut(&mut self.state)
            .expect("not shared before router()")
            .live = Some(live);
        self
    }

    /// The routes, with authentication, body limit and timeout applied.
    pub fn router(&self) -> Router {
        let st = self.state.clone();
        let max_body = match st.config.max_body {
            0 => 8 << 20,
            n => n,
        };
        let timeout = match st.config.timeout {
            d if d.is_zero() => Duration::from_secs(30),
            d => d,
        };
        let api: Router<Arc<ApiState>> = Router::new()
            .route("/queues", get(queues::queues))
            .route("/workers", get(queues::workers))
            .route("/jobs", get(jobs::list).post(jobs::enqueue))
            .route("/jobs/bulk", post(jobs::bulk))
            .route("/jobs/{id}", get(jobs::get_job).delete(jobs::delete))
            .route("/jobs/{id}/retry", post(jobs::retry))
            .route("/jobs/{id}/cancel", post(jobs::cancel))
            .route("/workflows", post(jobs::submit_workflow))
            .route("/workflows/{id}", get(jobs::get_workflow))
            .route("/audit", get(audit::list))
            .route("/config", get(settings::show));
        // The timeout sits inside `authorize`, so a change that runs out of time is still
        // written to the audit log (with its 503).
        let timeout = || {
            tower_http::timeout::TimeoutLayer::with_status_code(
                StatusCode::SERVICE_UNAVAILABLE,
                timeout,
            )
        };
        Router::new()
            .nest("/api/v1", api)
            .route("/metrics", get(metrics::serve))
            .layer(timeout())
            .layer(axum::middleware::from_fn_with_state(st.clone(), authorize))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(ready))
            .route("/openapi.json", get(openapi::document))
            .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
            .layer(axum::extract::DefaultBodyLimit::max(max_body))
            .layer(timeout())
            .with_state(st)
    }

    /// Serves [`router`](Self::router) on `addr` until `shutdown` resolves. Refuses an open
    /// API on a non-loopback address ([`check_bind`]).
    pub async fn serve(
        &self,
        addr: SocketAddr,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let listener = self.bind(addr).await?;
        self.serve_on(listener, shutdown).await
    }

    /// Binds `addr` for [`serve_on`](Self::serve_on), after [`check_bind`]: a caller that
    /// binds first learns of a taken port before it starts anything else.
    pub async fn bind(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
        check_bind(addr, &self.state.config)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::PermissionDenied, e))?;
        tokio::net::TcpListener::bind(addr).await
    }

    /// Serves on a bound listener until `shutdown` resolves, then finishes the requests in
    /// flight.
    pub async fn serve_on(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::info!(addr = %listener.local_addr()?, "HTTP API listening");
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await
    }
}

/// An error answer: a status and `{"error": "…"}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn not_implemented(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_IMPLEMENTED, message)
    }
}

impl From<BrokerError> for ApiError {
    fn from(e: BrokerError) -> Self {
        let status = match &e {
            BrokerError::NotFound(_) => StatusCode::NOT_FOUND,
            BrokerError::InvalidJob { .. } | BrokerError::Invalid(_) => StatusCode::BAD_REQUEST,
            BrokerError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
            BrokerError::WrongState { .. } => StatusCode::CONFLICT,
            e if e.is_transient() => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

/// Which token a request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Read,
    Admin,
    /// No tokens are configured: everything is allowed (loopback only, see [`check_bind`]).
    Open,
}

fn role(st: &ApiState, req: &Request) -> Result<Role, ApiError> {
    let (read, admin) = (token(&st.config.read_token), token(&st.config.admin_token));
    if read.is_none() && admin.is_none() {
        return Ok(Role::Open);
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "this API needs a token: send `Authorization: Bearer TOKEN`",
            )
        })?;
    let is = |t: Option<&str>| t.is_some_and(|t| same(t, given));
    if is(admin) {
        Ok(Role::Admin)
    } else if is(read) {
        Ok(Role::Read)
    } else {
        Err(ApiError::new(StatusCode::UNAUTHORIZED, "unknown token"))
    }
}

/// Compares tokens in time independent of where (and whether) they differ: both sides are
/// hashed first, so neither the position of a difference nor the token's length shows.
fn same(a: &str, b: &str) -> bool {
    use std::hash::{BuildHasher, Hasher};
    let keyed = std::collections::hash_map::RandomState::new();
    let digest = |s: &str| {
        let mut h = keyed.build_hasher();
        h.write(s.as_bytes());
        h.finish()
    };
    (digest(a) ^ digest(b)) == 0 && a == b
}

/// Checks the token against the method (reads need `read` or `admin`, changes `admin`), and
/// writes every attempted change, allowed or refused, to the audit log.
async fn authorize(State(st): State<Arc<ApiState>>, req: Request, next: Next) -> Response {
    use axum::http::Method;
    let changes = ![Method::GET, Method::HEAD, Method::OPTIONS].contains(req.method());
    let mut what = format!("{} {}", req.method(), req.uri().path());
    if what.len() > 256 {
        let mut end = 256;
        while !what.is_char_boundary(end) {
            end -= 1;
        }
        what.truncate(end);
        what.push('…');
    }
    let (who, resp) = match role(&st, &req) {
        Err(e) => ("unauthenticated", e.into_response()),
        Ok(Role::Read) if changes => (
            "read",
            ApiError::new(
                StatusCode::FORBIDDEN,
                "the read-only token cannot change anything; use the admin token",
            )
            .into_response(),
        ),
        Ok(role) => {
            let who = match role {
                Role::Admin => "admin",
                Role::Read => "read",
                Role::Open => "open",
            };
            (who, next.run(req).await)
        }
    };
    // Refused requests without a valid token are logged, but kept out of the list: anyone
    // could otherwise flush the real changes out of it.
    if changes && who == "unauthenticated" {
        tracing::info!(target: "weir::audit", who, what = %what, "API change refused: no valid token");
    } else if changes {
        let status = resp.status().as_u16();
        tracing::info!(target: "weir::audit", who, what = %what, status, "API change");
        st.audit
            .record(AuditEntry {
                at: Timestamp::now(),
                who: who.to_owned(),
                what,
                status,
            })
            .await;
    }
    resp
}

/// 200 if the broker (and the store) answer a cheap read, else 503 with the reason.
async fn ready(State(st): State<Arc<ApiState>>) -> Response {
    let broker = match tokio::time::timeout(
        Duration::from_secs(5),
        st.broker.backlog(&["default".to_owned()]),
    )
    .await
    {
        Ok(Ok(_)) | Ok(Err(BrokerError::Unsupported(_))) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 5 s".to_owned()),
    };
    let store = match &st.store {
        None => Ok(()),
        Some(s) => match tokio::time::timeout(
            Duration::from_secs(5),
            s.status(weir_workflow::WorkflowId::new()),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 5 s".to_owned()),
        },
    };
    // /readyz answers without a token (for load balancers and probes): behind tokens, the
    // reason (which may name hosts and users) goes to the log only.
    let guarded = token(&st.config.read_token).is_some() || token(&st.config.admin_token).is_some();
    let say = |what: &str, e: &str| -> String {
        if guarded {
            tracing::warn!(error = %e, "/readyz: the {what} is unavailable");
            "unavailable (the reason is in the server's log)".to_owned()
        } else {
            e.to_owned()
        }
    };
    let body = serde_json::json!({
        "broker": broker.as_ref().err().map_or("ok".to_owned(), |e| say("broker", e)),
        "store": match (&st.store, &store) {
            (None, _) => "none".to_owned(),
            (Some(_), Ok(())) => "ok".to_owned(),
            (Some(_), Err(e)) => say("store", e),
        },
    });
    let code = if broker.is_ok() && store.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}
