//! The posup update server.
//!
//! An axum application over [`posup_store::Store`]: the agent API under
//! `/api/v1/agent` (enroll, poll, feedback, downloads), the operator API under
//! `/api/v1`, the TUF repository terminals verify everything against under
//! `/tuf` (see `tuf`), its OpenAPI document at `/api/v1/openapi.json`, and the operator
//! console at `/` (see `console`). Plugins uploaded by vendors are validated by the real plugin
//! runtime; packages are read by their device type's plugin.
//!
//! [`app`] builds the router over an [`AppState`]; [`run`] serves it on a bound
//! listener until a shutdown future completes; [`serve`] is `posup server`.
//!
//! **Invariant:** nothing a request depends on lives only in this process: the
//! contact-time batch is flushed within a second and on shutdown, and the poll
//! caches follow changes made by other processes within a second (see `cache`), so
//! several servers may share one PostgreSQL database and one blob folder behind a
//! load balancer.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::response::IntoResponse;
use axum::routing::get;
use posup_proto::api::Role;
use posup_runtime::{Runtime, RuntimeConfig};
use posup_store::{Store, StoreOptions};
use tokio::net::TcpListener;

use crate::routes::Routes;

mod agent;
mod api;
pub mod auth;
pub mod blobs;
mod cache;
pub mod clock;
pub mod config;
pub mod console;
pub mod error;
mod extract;
mod group;
mod limits;
pub mod metrics;
pub mod notify;
mod notify_api;
pub mod openapi;
mod poll;
mod reports;
mod rollout_api;
mod routes;
pub mod state;
pub mod tls;
pub mod tuf;
mod uploads;

pub use blobs::Blobs;
pub use clock::{Clock, SystemClock};
pub use config::{ServerArgs, ServerConfig};
pub use error::Error;
pub use extract::PeerAddr;
pub use limits::raise_open_files_limit;
pub use state::{AppState, Bundled, Settings};

#[cfg(feature = "test-support")]
pub use clock::ManualClock;

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let max_plugin = state.settings().max_plugin_bytes;
    Router::new()
        .merge(
            console::routes().layer(axum::middleware::from_fn_with_state(
                state.clone(),
                drop_caches,
            )),
        )
        .route("/metrics", get(metrics::metrics))
        .merge(public_api().into_router())
        .nest("/api/v1/agent", agent::routes(&state).into_router())
        .nest(
            "/api/v1",
            operator_api(max_plugin)
                .into_router()
                .route_layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    auth::authorize,
                ))
                .layer(axum::middleware::from_fn_with_state(
                    state.clone(),
                    drop_caches,
                )),
        )
        .fallback(not_found)
        .with_state(state)
}

/// The routes open to anyone: this API's document and the TUF repository.
fn public_api() -> Routes {
    Routes::new()
        .route("/api/v1/openapi.json", routes::get(openapi_json))
        .merge(tuf::public_routes())
}

/// `/api/v1` but the agent's part: the operations whose roles the document
/// names.
fn operator_api(max_plugin: usize) -> Routes {
    api::routes(max_plugin).merge(tuf::api_routes())
}

/// Every operation the application serves that the OpenAPI document must
/// describe, as (lowercase method, path) in the document's spelling.
pub fn documented_routes(state: &AppState) -> Vec<(String, String)> {
    let mut served = public_api().served("");
    served.extend(agent::routes(state).served("/api/v1/agent"));
    served.extend(operator_api(state.settings().max_plugin_bytes).served("/api/v1"));
    served
}

/// Any change an operator makes may change what polls answer: this process reads
/// the change counters at once and drops what moved (other processes notice
/// within a second).
async fn drop_caches(
    axum::extract::State(state): axum::extract::State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let changes = !matches!(
        *request.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    let response = next.run(request).await;
    // The console answers a change with a redirect to the changed page.
    let done = response.status().is_success() || response.status().is_redirection();
    if changes && done {
        // Every change a cache depends on grows a change counter in its own
        // transaction (the replicas' contract): reading them now drops exactly
        // what the change concerns, so a click on a task does not make a fleet's
        // every token be read again.
        if let Err(e) = state.refresh_caches().await {
            tracing::warn!("reading change counters after a change: {e}");
            state.caches().invalidate_all();
        }
    }
    response
}

async fn openapi_json() -> impl IntoResponse {
    axum::Json(openapi::document())
}

async fn not_found(uri: axum::http::Uri) -> Error {
    Error::NotFound(format!("no route {}: see /api/v1/openapi.json", uri.path()))
}

/// Opens the database, blob folder and plugin runtime of `config`, creating the
/// data directory on first start.
pub async fn open(config: &ServerConfig, clock: Arc<dyn Clock>) -> anyhow::Result<AppState> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating the data directory {}", config.data_dir.display()))?;
    let url = config.database_url();
    let store = Store::connect(
        &url,
        &StoreOptions {
            max_connections: config.db_connections,
        },
    )
    .await
    .with_context(|| format!("opening the database {}", posup_store::redact(&url)))?;
    let blobs = Blobs::open(&config.blob_dir)
        .with_context(|| format!("opening the blob folder {}", config.blob_dir.display()))?;
    let runtime = Runtime::new(RuntimeConfig {
        cache_dir: Some(config.data_dir.join("plugin-cache")),
        ..Default::default()
    })
    .context("starting the plugin runtime")?;
    let settings = Settings {
        poll_interval_secs: config.poll_interval_secs,
        offline_after: config.offline_after,
        max_package_bytes: config.max_package_bytes,
        contact_flush: config.contact_flush,
        secure_cookies: config.tls.is_some(),
        ..Settings::default()
    };
    let keys = tuf::load_keys(&config.tuf_keys_dir)?;
    Ok(AppState::new(store, blobs, runtime, clock, settings)
        .with_online_keys(keys)
        .with_bundled(config.bundled))
}

/// Makes sure an administrator token and an enrollment secret exist: the ones
/// configured, or on first start generated ones, written to the data directory
/// (mode 0600) and printed once.
pub async fn bootstrap(state: &AppState, config: &ServerConfig) -> anyhow::Result<()> {
    let store = state.store();
    let now = state.now_ms();
    if let Some(token) = &config.admin_token {
        store
            .ensure_token(
                "configured admin",
                Role::Admin,
                &auth::hash_secret(token),
                now,
            )
            .await?;
    } else if store.admin_token_count().await? == 0 {
        let token = auth::new_secret("pop_");
        store
            .ensure_token("first admin", Role::Admin, &auth::hash_secret(&token), now)
            .await?;
        let file = config.data_dir.join("admin-token");
        write_secret(&file, &token)?;
        eprintln!(
            "posup server: first start: created admin token {token} (also in {})",
            file.display()
        );
    }
    if store.account_count().await? == 0 {
        // The console's first administrator; they choose language and time zone
        // in the console and create the other accounts there.
        let generated = config.admin_password.is_none();
        let password = match &config.admin_password {
            Some(p) => p.clone(),
            None => auth::new_secret("")[..24].to_owned(),
        };
        let hash = console::session::hash_password(&password)?;
        store
            .create_account(
                &posup_store::NewAccount {
                    name: "admin",
                    role: Role::Admin,
                    password: &hash,
                    language: posup_proto::api::Language::En,
                    time_zone: "UTC",
                },
                now,
                "server",
            )
            .await?;
        if generated {
            let file = config.data_dir.join("admin-password");
            write_secret(&file, &password)?;
            eprintln!(
                "posup server: first start: the console's account `admin` has password {password} (also in {})",
                file.display()
            );
        }
    }
    if let Some(secret) = &config.enrollment_secret {
        store
            .ensure_enrollment_secret("configured", &auth::hash_secret(secret), now)
            .await?;
    } else if store.enrollment_secret_count().await? == 0 {
        let secret = auth::new_secret("pes_");
        store
            .ensure_enrollment_secret("first", &auth::hash_secret(&secret), now)
            .await?;
        let file = config.data_dir.join("enrollment-secret");
        write_secret(&file, &secret)?;
        eprintln!(
            "posup server: first start: created enrollment secret {secret} (also in {})",
            file.display()
        );
    }
    Ok(())
}

fn write_secret(path: &std::path::Path, secret: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    writeln!(file, "{secret}").with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Serves `config` on `listener` (with TLS when the configuration has a
/// certificate) until `shutdown` completes, then finishes running requests, writes
/// pending contact times and closes the database.
pub async fn run(
    config: ServerConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    // A bad certificate is found before the database is touched.
    let tls = match &config.tls {
        Some(files) => Some(tls::load(&files.cert, &files.key)?),
        None => None,
    };
    let state = open(&config, Arc::new(SystemClock)).await?;
    bootstrap(&state, &config).await?;
    match tls {
        Some(tls) => {
            let listener = tls::TlsListener::new(listener, tls).context("listening with TLS")?;
            run_with_state(state, listener, shutdown).await
        }
        None => run_with_state(state, listener, shutdown).await,
    }
}

/// [`run`] with a prepared state (tests and benchmarks bring their own clock or
/// store).
pub async fn run_with_state<L>(
    state: AppState,
    listener: L,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
    for<'a> PeerAddr: axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    // The counters as of now: caches filled from here on are checked against them.
    state.refresh_caches().await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let background = tokio::spawn(background(state.clone(), stop_rx));
    let addr = listener.local_addr().ok();
    tracing::info!(?addr, backend = %state.store().backend(), "posup server listening");
    // Each request knows the address it came from (the console's login limit).
    let served = axum::serve(
        listener,
        app(state.clone()).into_make_service_with_connect_info::<PeerAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
    .context("serving HTTP");
    let _ = stop_tx.send(true);
    let _ = background.await;
    if let Err(e) = state.flush_contacts().await {
        tracing::warn!("writing the last contact times: {e}");
    }
    state.store().close().await;
    served
}

/// Periodic work: contact times, task states by time, and the version overview
/// once at start.
async fn background(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let store = state.store().clone();
    let at_start = state.now_ms();
    // The version overview is recomputed on restart (the Openbravo rule); in the
    // background so a large fleet does not delay startup.
    let recompute = tokio::spawn(async move {
        if let Err(e) = store.recompute_versions(None, at_start).await {
            tracing::warn!("recomputing the version overview at start: {e}");
        }
    });
    let flush = state
        .settings()
        .contact_flush
        .unwrap_or(std::time::Duration::from_secs(1));
    let mut ticker = tokio::time::interval(flush.min(std::time::Duration::from_secs(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Notifications go out in a task of their own, so a slow receiver delays
    // neither this loop nor (by starting a second run) itself.
    let mut delivering: Option<tokio::task::JoinHandle<()>> = None;
    // The repository's timestamp is renewed well before it expires; checked at
    // start and then every minute.
    let mut renewed: Option<std::time::Instant> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.changed() => break,
        }
        if let Err(e) = state.flush_contacts().await {
            tracing::warn!("writing contact times: {e}");
        }
        if let Err(e) = state.tick_rollouts(&state.at()).await {
            tracing::warn!("advancing tasks and rollouts: {e}");
        }
        if let Err(e) = state.refresh_caches().await {
            tracing::warn!("reading change counters: {e}");
        }
        if renewed.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60)) {
            renewed = Some(std::time::Instant::now());
            if let Err(e) = tuf::renew(&state).await {
                tracing::warn!("renewing the repository's timestamp: {e}");
            }
        }
        if delivering.as_ref().is_none_or(|d| d.is_finished()) {
            let state = state.clone();
            delivering = Some(tokio::spawn(async move {
                if let Err(e) = notify::deliver_due(&state).await {
                    tracing::warn!("delivering notifications: {e}");
                }
            }));
        }
    }
    // A message cut off here is sent again once its lease runs out.
    if let Some(d) = delivering {
        d.abort();
    }
    recompute.abort();
}

/// `posup server`: resolves the configuration, binds, and serves until Ctrl-C or
/// SIGTERM.
pub async fn serve(args: ServerArgs, bundled: Bundled) -> anyhow::Result<()> {
    let mut config = args.resolve()?;
    config.bundled = bundled;
    if let Some(warning) = raise_open_files_limit() {
        tracing::warn!("{warning}");
    }
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    eprintln!(
        "posup server: listening on {}://{}",
        if config.tls.is_some() {
            "https"
        } else {
            "http"
        },
        listener.local_addr()?
    );
    run(config, listener, shutdown_signal()).await
}

/// Completes on Ctrl-C or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
