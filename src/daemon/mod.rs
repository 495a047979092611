//! The gateway mesh service: one process wiring the durable node, the QUIC peers and the local
//! HTTP API together (`edgesync run`), and the in-process three-node demo (`edgesync demo`).

pub mod api;
pub mod config;
pub mod demo;
pub mod guard;
pub mod local;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::mesh::Mesh;
use crate::net::{Credentials, Endpoint};
use crate::node::{DurableNode, NodeHandle, NodeOptions};
pub use config::Settings;

/// The process-wide Prometheus recorder.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (an embedding app's): then ours only
            // renders what is recorded through it, which is nothing, and /metrics is empty.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// A running node: store, core, peers, API.
pub struct Daemon {
    node: Option<DurableNode>,
    mesh: Arc<Mesh>,
    /// Where the HTTP API listens.
    pub api_addr: SocketAddr,
    /// Where QUIC listens, if it does.
    pub quic_addr: Option<SocketAddr>,
    /// Where the separate metrics listener is, if there is one.
    pub metrics_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    servers: Vec<JoinHandle<()>>,
    reloader: JoinHandle<()>,
    sinks: Option<crate::sinks::Sinks>,
}

async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    mut stop: watch::Receiver<bool>,
) {
    let shutdown = async move {
        let _ = stop.wait_for(|s| *s).await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %e, "HTTP server failed");
    }
}

impl Daemon {
    /// Opens the store, loads credentials, binds QUIC and the API, and starts everything.
    pub async fn start(s: Settings) -> anyhow::Result<Daemon> {
        let creds = Credentials::load(&s.tls, &s.name).context("loading TLS credentials")?;
        let token = s
            .api_token_file
            .as_deref()
            .map(guard::read_token)
            .transpose()?;
        if token.is_none() && !s.api.ip().is_loopback() {
            tracing::warn!(
                api = %s.api,
                "THE HTTP API LISTENS ON A NON-LOOPBACK ADDRESS WITHOUT A TOKEN: anyone who \
                 can reach {} can read and write this node's data; set api_token_file",
                s.api
            );
        }
        let guard = guard::Guard::new(&s.api_hosts, token);
        let core = s.core_config();
        let bind = s
            .listen
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let endpoint = Arc::new(
            Endpoint::bind(
                bind,
                s.listen.is_some(),
                creds.clone(),
                crate::net::NetOptions {
                    reset_key: Some(
                        crate::net::reset_key(&s.data_dir)
                            .context("loading the QUIC stateless-reset key")?,
                    ),
                    ..s.net.clone().with_core(&core)
                },
            )
            .context("binding QUIC")?,
        );
        let quic_addr = s.listen.map(|_| endpoint.local_addr()).transpose()?;
        let api_listener = tokio::net::TcpListener::bind(s.api)
            .await
            .with_context(|| format!("binding the HTTP API on {}", s.api))?;
        let api_addr = api_listener.local_addr()?;
        let metrics_listener = match s.metrics {
            Some(a) => Some(
                tokio::net::TcpListener::bind(a)
                    .await
                    .with_context(|| format!("binding the metrics listener on {a}"))?,
            ),
            None => None,
        };
        let metrics_addr = metrics_listener
            .as_ref()
            .map(tokio::net::TcpListener::local_addr)
            .transpose()?;
        let mut core = core;
        core.trust = crate::net::authorship::trust(&creds, &s.data_dir, s.rules.clone())
            .context("loading the authoring key")?;
        let mut opts = NodeOptions::new(core, &s.data_dir);
        opts.durability = s.durability;
        let node = tokio::task::spawn_blocking(move || DurableNode::start(opts))
            .await?
            .with_context(|| format!("opening the node in {}", s.data_dir.display()))?;
        let mesh = Arc::new(Mesh::start(
            node.handle(),
            endpoint,
            s.peers.clone(),
            s.retry.clone(),
        ));
        let sinks = crate::sinks::Sinks::start(
            node.handle(),
            node.sink_store(),
            s.sinks.clone(),
            s.sink_retry.clone(),
        );
        let state = api::AppState {
            node: node.handle(),
            mesh: mesh.clone(),
            metrics: metrics_handle(),
            sinks: sinks.status(),
        };
        let guard = Arc::new(guard);
        let (stop, stop_rx) = watch::channel(false);
        let mut servers = vec![tokio::spawn(serve(
            api_listener,
            api::router(state.clone(), guard.clone()),
            stop_rx.clone(),
        ))];
        if let Some(l) = metrics_listener {
            servers.push(tokio::spawn(serve(
                l,
                api::metrics_router(state, guard),
                stop_rx,
            )));
        }
        let reloader = creds.spawn_reloader(Duration::from_secs(5));
        tracing::info!(name = %s.name, api = %api_addr, quic = ?quic_addr, peers = s.peers.len(), "node started");
        Ok(Daemon {
            node: Some(node),
            mesh,
            api_addr,
            quic_addr,
            metrics_addr,
            stop,
            servers,
            reloader,
            sinks: Some(sinks),
        })
    }

    /// The node, for in-process use.
    pub fn handle(&self) -> NodeHandle {
        self.node.as_ref().expect("running").handle()
    }

    /// The peers.
    pub fn mesh(&self) -> &Arc<Mesh> {
        &self.mesh
    }

    /// Graceful shutdown: stop the API, close every link (sessions end with a Close), then
    /// answer what is queued and close the store cleanly.
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for s in self.servers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
        }
        if let Some(sinks) = self.sinks.take() {
            sinks.shutdown().await;
        }
        self.mesh.shutdown().await;
        self.reloader.abort();
        if let Some(node) = self.node.take() {
            let _ = tokio::task::spawn_blocking(move || node.shutdown()).await;
        }
        tracing::info!("node stopped");
    }
}

/// The line `edgesync run` prints on stdout once it serves: the addresses it bound (a
/// configured port 0 becomes the port the system chose), so a supervisor or a test learns them
/// without probing for a free port first.
pub fn ready_line(d: &Daemon) -> String {
    serde_json::json!({
        "ready": true,
        "api": d.api_addr.to_string(),
        "quic": d.quic_addr.map(|a| a.to_string()),
        "metrics": d.metrics_addr.map(|a| a.to_string()),
    })
    .to_string()
}

/// `edgesync run`: runs until SIGTERM or SIGINT.
pub async fn run(s: Settings) -> anyhow::Result<()> {
    let daemon = Daemon::start(s).await?;
    {
        use std::io::Write;
        // Written once; a closed stdout is not an error for the node.
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", ready_line(&daemon));
        let _ = out.flush();
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
    }
    daemon.shutdown().await;
    Ok(())
}
