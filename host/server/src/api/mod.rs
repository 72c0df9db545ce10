//! weir's HTTP API (warp): tenants and keys, plugins, pipelines, deployments (swap,
//! rollback, canary, shadow, promote), results, and operations.
//!
//! Every route but `/healthz`, `/readyz` and `/openapi.json` needs `Authorization: Bearer
//! <key>`. A tenant's key reaches only that tenant's objects: another tenant's id answers
//! 404 exactly like a missing one. The admin key manages tenants and keys and owns nothing.
//! Every error is `{"code", "message"}` JSON, produced by [`error::recover`]; the document
//! at `/openapi.json` is generated from the handlers' annotations ([`openapi::ApiDoc`]).

pub mod auth;
pub mod ceilings;
pub mod error;
mod gaps;
mod handlers;
mod ingest;
mod keys;
mod limits;
pub mod manager;
pub mod openapi;
mod pipelines;
pub mod quotas;
mod stream;

use auth::{CursorSigner, RateLimiter};
use error::ApiError;
use manager::Manager;
use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;
use warp::Filter;
use warp::reply::Response;
use weir_engine::Engine;
use weir_store::{ADMIN_TENANT, Store};
use weir_worker::kafka::Broker;

/// Settings of the API server.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Largest plugin upload, bytes.
    pub max_plugin_bytes: u64,
    /// Longest a plugin may take to compile.
    pub compile_timeout: Duration,
    /// Compilations one tenant may run at once; more are 429.
    pub compiles_per_tenant: usize,
    /// Uploads and swaps per tenant per minute (each a token bucket; 0 turns limits off).
    pub rate_per_minute: f64,
    /// Burst of uploads or swaps a tenant may make at once.
    pub rate_burst: f64,
    /// Largest JSON request body, bytes.
    pub max_json_bytes: u64,
    /// Largest batch of events one `POST /v1/pipelines/{id}/events` may carry, bytes.
    pub max_ingest_bytes: u64,
    /// The default ceiling on every tenant's sandbox limits and grants (the admin sets
    /// other ceilings per tenant); see [`ceilings`].
    pub ceiling: weir_engine::Manifest,
    /// The default quotas of every tenant (the admin sets others per tenant); see
    /// [`quotas`].
    pub quotas: quotas::Quotas,
    /// Share the CPU fairly between tenants (see [`weir_worker::CpuShare`]): a tenant's
    /// pipelines together get no more than any other busy tenant's. Off, each pipeline's
    /// worker thread competes on its own.
    pub fair_cpu: bool,
    /// Bounds on tenants' specs: window sizes, lateness, label waits, training windows.
    pub spec_bounds: weir_stream::spec::SpecBounds,
    /// A connection must send a request's headers within this long (and an idle kept-alive
    /// connection its next request's), or it is closed.
    pub header_timeout: Duration,
    /// A request's body must arrive within this long (408 otherwise).
    pub body_timeout: Duration,
    /// Most open connections; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// On shutdown, connections get this long to finish their requests; then they are
    /// closed.
    pub shutdown_grace: Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            max_plugin_bytes: 16 << 20,
            compile_timeout: Duration::from_secs(60),
            compiles_per_tenant: 2,
            rate_per_minute: 60.0,
            rate_burst: 20.0,
            max_json_bytes: 1 << 20,
            max_ingest_bytes: 8 << 20,
            ceiling: ceilings::default_ceiling(),
            quotas: quotas::Quotas::default(),
            fair_cpu: true,
            spec_bounds: weir_stream::spec::SpecBounds::default(),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Everything a handler needs.
pub struct AppState {
    /// The database.
    pub store: Arc<Store>,
    /// Running pipelines.
    pub manager: Manager,
    /// Settings.
    pub config: ApiConfig,
    /// Upload and swap limits.
    pub limiter: RateLimiter,
    /// Signs result cursors.
    pub cursors: CursorSigner,
    compiles: Mutex<HashMap<i64, Arc<Semaphore>>>,
    /// When each key's last use was recorded.
    touched: Mutex<HashMap<i64, std::time::Instant>>,
    /// Ingestions writing at once (more wait: back-pressure).
    ingest: Arc<Semaphore>,
    ready: AtomicBool,
}

impl AppState {
    /// Builds the state. Makes sure an admin key exists: `admin_key` (for example from
    /// `WEIR_ADMIN_KEY`) is stored if given; otherwise, on the first start only, a new one
    /// is generated and returned so the caller can print it once.
    pub async fn new(
        store: Arc<Store>,
        engine: Engine,
        broker: Broker,
        config: ApiConfig,
        admin_key: Option<String>,
    ) -> Result<(Arc<AppState>, Option<String>), ApiError> {
        let mut printed = None;
        if let Some(k) = admin_key {
            // The given key is the admin key: stored if new, and every other admin key is
            // revoked (so changing `WEIR_ADMIN_KEY` rotates it).
            let h = auth::hash_key(&k);
            if store.key_match(&h).await?.is_none() {
                store.insert_api_key(ADMIN_TENANT, &h, "admin").await?;
            }
            let revoked = store.revoke_admin_keys_except(&h).await?;
            if revoked > 0 {
                tracing::info!("the admin key was rotated: {revoked} earlier admin key(s) revoked");
            }
        } else if !store.has_admin_key().await? {
            let k = auth::new_key();
            store
                .insert_api_key(ADMIN_TENANT, &auth::hash_key(&k), "admin")
                .await?;
            printed = Some(k);
        }
        // Cursors are signed with a key derived from a secret only the server holds: the
        // hashes of the admin keys, so cursors stay valid across restarts.
        let secret = store.admin_secret().await?;
        let state = Arc::new(AppState {
            manager: Manager::new(store.clone(), engine, broker, &config),
            limiter: RateLimiter::new(config.rate_per_minute, config.rate_burst),
            cursors: CursorSigner::new(secret.as_bytes()),
            store,
            config,
            compiles: Mutex::default(),
            touched: Mutex::default(),
            ingest: Arc::new(Semaphore::new(4)),
            ready: AtomicBool::new(true),
        });
        Ok((state, printed))
    }

    /// A permit to compile for `tenant`, or 429 when its compilations are all busy.
    pub fn compile_permit(
        &self,
        tenant: i64,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        let sem = manager::lock(&self.compiles)
            .entry(tenant)
            .or_insert_with(|| Arc::new(Semaphore::new(self.config.compiles_per_tenant.max(1))))
            .clone();
        sem.try_acquire_owned()
            .map_err(|_| ApiError::rate_limited("concurrent compilations", 1))
    }

    /// Records a key's use, at most once a minute per key (a failure is only logged).
    pub async fn touch_key(&self, key_id: i64) {
        let now = std::time::Instant::now();
        {
            let mut t = manager::lock(&self.touched);
            if t.get(&key_id)
                .is_some_and(|at| now.duration_since(*at) < Duration::from_secs(60))
            {
                return;
            }
            t.insert(key_id, now);
        }
        let at = i64::try_from(crate::run::now_ms()).unwrap_or(i64::MAX);
        if let Err(e) = self.store.touch_key(key_id, at).await {
            tracing::warn!("recording a key's last use: {e}");
        }
    }

    /// Restarts the pipelines whose status is `running` (after a server restart).
    pub async fn resume(&self) {
        let Ok(list) = self.store.pipelines_with_status("running").await else {
            return;
        };
        for p in list {
            let Ok(Some(t)) = self.store.tenant(p.tenant_id).await else {
                continue;
            };
            match self.manager.start(t.id, &t.name, &p).await {
                Ok(_) => tracing::info!("resumed pipeline {} of tenant {}", p.name, t.name),
                Err(e) => tracing::warn!("could not resume pipeline {}: {}", p.name, e.message),
            }
        }
    }

    /// Marks the server not ready (shutting down).
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// True while the server accepts work.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// Passes the state into a handler.
fn with(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Arc<AppState>,), Error = Infallible> + Clone {
    warp::any().map(move || state.clone())
}

/// The `Authorization` header, if any.
fn authz() -> impl Filter<Extract = (Option<String>,), Error = Infallible> + Clone {
    warp::header::optional::<String>("authorization")
        .or(warp::any().map(|| None))
        .unify()
}

/// Any valid key, checked before the body is read: an unauthenticated request is 401
/// without reading a byte of its body. (The handler then decides what the caller may do.)
fn keyed(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Option<String>,), Error = warp::Rejection> + Clone {
    authz()
        .and(with(state))
        .and_then(|authz: Option<String>, state: Arc<AppState>| async move {
            handlers::caller(&state, authz.clone())
                .await
                .map(|_| authz)
                .map_err(warp::reject::custom)
        })
}

/// A body of at most `limit` bytes (JSON, parsed by the handler; or JSON Lines for
/// ingestion). The limit holds while the body streams in, chunked or not: reading stops at
/// the first byte over it (413), and a body slower than `timeout` is 408.
fn limited_body(
    limit: u64,
    timeout: Duration,
) -> impl Filter<Extract = (bytes::Bytes,), Error = warp::Rejection> + Clone {
    warp::header::optional::<u64>("content-length")
        .and_then(move |len: Option<u64>| async move {
            match len {
                Some(n) if n > limit => Err(warp::reject::custom(ApiError::too_large(limit))),
                _ => Ok(()),
            }
        })
        .untuple_one()
        .and(warp::body::stream())
        .and_then(move |body| async move {
            match tokio::time::timeout(timeout, read_limited(body, limit)).await {
                Ok(read) => read.map_err(warp::reject::custom),
                Err(_) => Err(warp::reject::custom(ApiError::new(
                    warp::http::StatusCode::REQUEST_TIMEOUT,
                    "request_timeout",
                    format!("the body did not arrive within {} s", timeout.as_secs()),
                ))),
            }
        })
}

/// Reads a body stream up to `limit` bytes; 413 at the first chunk that goes over.
async fn read_limited<S, B>(body: S, limit: u64) -> Result<bytes::Bytes, ApiError>
where
    S: futures_util::Stream<Item = Result<B, warp::Error>>,
    B: bytes::Buf,
{
    use futures_util::StreamExt;
    let mut body = std::pin::pin!(body);
    let mut out = bytes::BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
        if (out.len() + chunk.remaining()) as u64 > limit {
            return Err(ApiError::too_large(limit));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            out.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(out.freeze())
}

type Reply = Result<Response, warp::Rejection>;

/// Every route, with the one `recover`.
pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (impl warp::Reply,), Error = Infallible> + Clone {
    use handlers as h;
    use pipelines as p;
    use warp::{delete, get, path, post};
    let s = || with(state.clone());
    let k = || keyed(state.clone());
    let (limit, body_timeout) = (state.config.max_json_bytes, state.config.body_timeout);
    let body = move || limited_body(limit, body_timeout);
    let ingest_limit = state.config.max_ingest_bytes;
    let events_body = move || limited_body(ingest_limit, body_timeout);

    let ops = path!("healthz")
        .and(get())
        .and(s())
        .and_then(h::healthz)
        .or(path!("readyz").and(get()).and(s()).and_then(h::readyz))
        .unify()
        .or(path!("metrics")
            .and(get())
            .and(authz())
            .and(s())
            .and_then(h::metrics))
        .unify()
        .or(path!("openapi.json").and(get()).and_then(h::openapi))
        .unify()
        .boxed();

    let tenants = path!("v1" / "tenants")
        .and(post())
        .and(k())
        .and(body())
        .and(s())
        .and_then(h::create_tenant)
        .or(path!("v1" / "tenants")
            .and(get())
            .and(authz())
            .and(s())
            .and_then(h::list_tenants))
        .unify()
        .or(path!("v1" / "tenants" / i64 / "keys")
            .and(post())
            .and(authz())
            .and(s())
            .and_then(h::create_key))
        .unify()
        .or(path!("v1" / "tenants" / i64 / "keys")
            .and(get())
            .and(authz())
            .and(s())
            .and_then(keys::list))
        .unify()
        .or(path!("v1" / "tenants" / i64 / "keys" / i64)
            .and(delete())
            .and(authz())
            .and(s())
            .and_then(keys::revoke))
        .unify()
        .or(path!("v1" / "tenants" / i64 / "keys" / i64 / "rotate")
            .and(post())
            .and(authz())
            .and(s())
            .and_then(keys::rotate))
        .unify()
        .or(path!("v1" / "tenants" / i64 / "limits")
            .and(get())
            .and(authz())
            .and(s())
            .and_then(limits::get))
        .unify()
        .or(path!("v1" / "tenants" / i64 / "limits")
            .and(warp::put())
            .and(k())
            .and(body())
            .and(s())
            .and_then(limits::set))
        .unify()
        .or(path!("v1" / "whoami")
            .and(get())
            .and(authz())
            .and(s())
            .and_then(h::whoami))
        .unify()
        .boxed();

    let plugins = path!("v1" / "plugins")
        .and(post())
        .and(authz())
        .and(warp::query::<h::UploadQuery>())
        .and(warp::header::optional::<u64>("content-length"))
        .and(warp::body::stream())
        .and(s())
        .and_then(h::upload_plugin)
        .or(path!("v1" / "plugins")
            .and(get())
            .and(authz())
            .and(s())
            .and_then(h::list_plugins))
        .unify()
        .or(path!("v1" / "plugins" / i64)
            .and(get())
            .and(authz())
            .and(s())
            .and_then(h::get_plugin))
        .unify()
        .or(path!("v1" / "plugins" / i64 / "download")
            .and(get())
            .and(authz())
            .and(s())
            .and_then(h::download_plugin))
        .unify()
        .or(path!("v1" / "plugins" / i64 / "logs")
            .and(get())
            .and(authz())
            .and(s())
            .and_then(h::plugin_logs))
        .unify()
        .or(path!("v1" / "plugins" / i64)
            .and(delete())
            .and(authz())
            .and(s())
            .and_then(h::delete_plugin))
        .unify()
        .boxed();

    let pipes = path!("v1" / "pipelines")
        .and(post())
        .and(k())
        .and(body())
        .and(s())
        .and_then(p::create)
        .or(path!("v1" / "pipelines")
            .and(get())
            .and(authz())
            .and(s())
            .and_then(p::list))
        .unify()
        .or(path!("v1" / "pipelines" / i64)
            .and(get())
            .and(authz())
            .and(s())
            .and_then(p::get))
        .unify()
        .or(path!("v1" / "pipelines" / i64)
            .and(delete())
            .and(authz())
            .and(s())
            .and_then(p::delete))
        .unify()
        .or(path!("v1" / "pipelines" / i64 / "start")
            .and(post())
            .and(authz())
            .and(s())
            .and_then(p::start))
        .unify()
        .or(path!("v1" / "pipelines" / i64 / "stop")
            .and(post())
            .and(authz())
            .and(s())
            .and_then(p::stop))
        .unify()
        .or(path!("v1" / "pipelines" / i64 / "events")
            .and(post())
            .and(k())
            .and(events_body())
            .and(s())
            .and_then(ingest::events))
        .unify()
        .or(path!("v1" / "pipelines" / i64 / "deployments")
            .and(get())
            .and(authz())
            .and(s())
            .and_then(p::deployments))
        .unify()
        .or(path!("v1" / "pipelines" / i64 / "training")
            .and(get())
            .and(authz())
            .and(warp::query::<p::TrainingQuery>())
            .and(s())
            .and_then(p::training))
        .unify()
        .or(path!("v1" / "pipelines" / i64 / "gaps")
            .and(get())
            .and(authz())
            .and(s())
            .and_then(gaps::list))
        .unify()
        .or(path!("v1" / "pipelines" / i64 / "metrics")
            .and(get())
            .and(authz())
            .and(s())
            .and_then(p::metrics))
        .unify()
        .or(path!("v1" / "pipelines" / i64 / "predictions" / "stream")
            .and(get())
            .and(authz())
            .and(warp::header::optional::<String>("last-event-id"))
            .and(warp::query::<stream::StreamQuery>())
            .and(s())
            .and_then(stream::predictions))
        .unify()
        .or(path!("v1" / "pipelines" / i64 / "predictions")
            .and(get())
            .and(authz())
            .and(warp::query::<p::ResultQuery>())
            .and(s())
            .and_then(p::predictions))
        .unify()
        .or(path!("v1" / "pipelines" / i64 / "windows")
            .and(get())
            .and(authz())
            .and(warp::query::<p::ResultQuery>())
            .and(s())
            .and_then(p::windows))
        .unify()
        .boxed();

    let stage_ops = path!("v1" / "pipelines" / i64 / "stages" / String / String)
        .and(post())
        .and(k())
        .and(body())
        .and(s())
        .and_then(p::stage_action)
        .or(path!("v1" / "pipelines" / i64 / "stages" / String / String)
            .and(delete())
            .and(authz())
            .and(s())
            .and_then(p::stage_abort))
        .unify()
        .boxed();

    ops.or(tenants)
        .unify()
        .or(plugins)
        .unify()
        .or(pipes)
        .unify()
        .or(stage_ops)
        .unify()
        .recover(error::recover)
        .unify()
        .with(warp::log("weir::api"))
}

/// Serves the API on `listener` until `shutdown` resolves; then lets open requests finish
/// for at most [`ApiConfig::shutdown_grace`], stops the pipelines (they commit first) and
/// returns.
///
/// The connection loop is weir's own over warp's service (warp 0.4 has no timeouts): each
/// connection must send its request headers within [`ApiConfig::header_timeout`] (an idle
/// kept-alive one too), and past [`ApiConfig::max_connections`] new connections are closed
/// at once, so slow or idle clients cannot hold the server.
pub async fn serve(
    state: Arc<AppState>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let config = state.config.clone();
    let svc = warp::service(routes(state.clone()));
    let slots = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut refused = 0u64;
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, for example: back off instead of spinning.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(
                    "{refused} connections refused: {} are open (max_connections)",
                    config.max_connections
                );
            }
            drop(tcp);
            continue;
        };
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_timeout);
        let conn = builder.serve_connection_with_upgrades(
            TokioIo::new(tcp),
            hyper_util::service::TowerToHyperService::new(svc.clone()),
        );
        let conn = graceful.watch(conn.into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("connection: {e}");
            }
            drop(slot);
        });
    }
    drop(listener);
    state.set_ready(false);
    if tokio::time::timeout(config.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "connections still open after {} s of shutdown: closing them",
            config.shutdown_grace.as_secs()
        );
    }
    state.manager.shutdown().await;
}
