//! Peers: dialling configured peers and accepting inbound ones over [`crate::net`], one
//! protocol session per link. When to dial, how long to back off (capped exponential backoff
//! with full jitter), the circuit breaker and which of two crossed links survives are decided
//! by the core's sans-IO [`Dialer`] and [`keep_new_link`]; this module only performs them.
//!
//! At most one link per peer. When two nodes dial each other at once, both keep the link
//! dialled by the node whose name sorts first, so both make the same choice; a new link in the
//! same direction as an existing one replaces it (the peer reconnected).
//!
//! Relay needs nothing here: a change received from one peer is committed like a local one and
//! pushed live to every other session by the core, so edge → gateway → cloud works along any
//! chain of links.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use edgesync_proto::{keep_new_link, Dialer, NodeName};
use tokio::sync::{watch, Notify};
use tokio::task::JoinSet;

use crate::net::{close, close_connection, Endpoint, Link, LinkError};
use crate::node::{outbound_channel, InboundCredit, NodeHandle, Outbound};
use crate::os;

/// A peer to dial.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// The name its certificate must carry.
    pub name: NodeName,
    /// `host:port`, resolved at every attempt.
    pub addr: String,
}

/// Reconnection policy (the core's: the simulator runs the same).
pub use edgesync_proto::RetryPolicy;

/// What the status page shows about a peer.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PeerStatus {
    /// Name.
    pub name: String,
    /// Configured address, if this node dials it.
    pub addr: Option<String>,
    /// A link is up.
    pub connected: bool,
    /// Who dialled the current link.
    pub dialled_by: Option<String>,
    /// Remote address of the current link.
    pub remote: Option<String>,
    /// Seconds the current link has been up.
    pub connected_secs: Option<f64>,
    /// Bytes received on the current link and not yet handled by the core.
    pub inbound_queued_bytes: usize,
    /// Role and site from the peer's certificate, when connected.
    pub role: Option<String>,
    /// Site from the certificate.
    pub site: Option<String>,
    /// Consecutive failed dials.
    pub failures: u32,
    /// `closed` (dialling normally), `open` (probing once per cap interval).
    pub breaker: &'static str,
    /// Links established since start.
    pub connects: u64,
    /// The last error.
    pub last_error: Option<String>,
}

struct Current {
    token: u64,
    dialled_by_me: bool,
    remote: SocketAddr,
    since: Instant,
    role: String,
    site: Option<String>,
    conn: quinn::Connection,
    /// The peer certificate's serial number.
    serial: Vec<u8>,
    credit: InboundCredit,
}

#[derive(Default)]
struct PeerEntry {
    addr: Option<String>,
    /// For configured peers: when to dial.
    dialer: Option<Dialer>,
    current: Option<Current>,
    connects: u64,
    last_error: Option<String>,
}

impl PeerEntry {
    fn failures(&self) -> u32 {
        self.dialer.as_ref().map_or(0, Dialer::failures)
    }
}

struct Shared {
    me: NodeName,
    peers: Mutex<BTreeMap<NodeName, PeerEntry>>,
    next_token: Mutex<u64>,
    /// Signalled whenever a link comes up or ends.
    changed: Notify,
    /// The dialers' time origin (monotonic).
    started: Instant,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeName, PeerEntry>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Monotonic milliseconds for the dialers.
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Runs `f` on the dialer of configured peer `peer`.
    fn dialer<T>(&self, peer: &NodeName, f: impl FnOnce(&mut Dialer) -> T) -> Option<T> {
        self.lock()
            .get_mut(peer)
            .and_then(|e| e.dialer.as_mut())
            .map(f)
    }
}

/// The running peer layer.
pub struct Mesh {
    node: NodeHandle,
    endpoint: Arc<Endpoint>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    tasks: Mutex<JoinSet<()>>,
}

impl Mesh {
    /// Starts accepting on `endpoint` (if it listens) and dialling `peers`.
    pub fn start(
        node: NodeHandle,
        endpoint: Arc<Endpoint>,
        peers: Vec<PeerConfig>,
        retry: RetryPolicy,
    ) -> Mesh {
        let shared = Arc::new(Shared {
            me: node.name().clone(),
            peers: Mutex::new(BTreeMap::new()),
            next_token: Mutex::new(1),
            changed: Notify::new(),
            started: Instant::now(),
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        {
            let mut map = shared.lock();
            for p in &peers {
                let e = map.entry(p.name.clone()).or_default();
                e.addr = Some(p.addr.clone());
                e.dialer = Some(Dialer::new(retry.clone()));
            }
        }
        let (ep, sh, n, mut st) = (
            endpoint.clone(),
            shared.clone(),
            node.clone(),
            stop_rx.clone(),
        );
        tasks.spawn(async move {
            loop {
                let inc = tokio::select! {
                    i = ep.accept() => match i { Some(i) => i, None => return },
                    _ = st.changed() => return,
                };
                let (ep, sh, n, st) = (ep.clone(), sh.clone(), n.clone(), st.clone());
                tokio::spawn(async move {
                    if let Ok(link) = ep.establish(inc).await {
                        run_link(link, n, sh, st).await;
                    }
                });
            }
        });
        tasks.spawn(close_revoked(
            endpoint.clone(),
            shared.clone(),
            stop_rx.clone(),
        ));
        for p in peers {
            let (ep, sh, n, st) = (
                endpoint.clone(),
                shared.clone(),
                node.clone(),
                stop_rx.clone(),
            );
            tasks.spawn(dial_loop(p, ep, sh, n, st));
        }
        Mesh {
            node,
            endpoint,
            shared,
            stop,
            tasks: Mutex::new(tasks),
        }
    }

    /// Every known peer: configured ones and any that connected.
    pub fn status(&self) -> Vec<PeerStatus> {
        self.shared
            .lock()
            .iter()
            .map(|(name, e)| PeerStatus {
                name: name.to_string(),
                addr: e.addr.clone(),
                connected: e.current.is_some(),
                dialled_by: e.current.as_ref().map(|c| {
                    if c.dialled_by_me {
                        self.shared.me.to_string()
                    } else {
                        name.to_string()
                    }
                }),
                remote: e.current.as_ref().map(|c| c.remote.to_string()),
                connected_secs: e.current.as_ref().map(|c| c.since.elapsed().as_secs_f64()),
                inbound_queued_bytes: e.current.as_ref().map_or(0, |c| c.credit.queued()),
                role: e.current.as_ref().map(|c| c.role.clone()),
                site: e.current.as_ref().and_then(|c| c.site.clone()),
                failures: e.failures(),
                breaker: if e.dialer.as_ref().is_some_and(Dialer::breaker_open) {
                    "open"
                } else {
                    "closed"
                },
                connects: e.connects,
                last_error: e.last_error.clone(),
            })
            .collect()
    }

    /// Names of every known peer.
    pub fn peer_names(&self) -> Vec<NodeName> {
        self.shared.lock().keys().cloned().collect()
    }

    /// The endpoint.
    pub fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    /// Ends every session with a Close frame and waits (at most 2 s) for the links to finish,
    /// then stops dialling and accepting and closes the endpoint.
    pub async fn shutdown(&self) {
        if let Ok(n) = self.node.close_sessions_async("node shutting down").await {
            if n > 0 {
                let all_down = async {
                    loop {
                        let notified = self.shared.changed.notified();
                        if self.shared.lock().values().all(|e| e.current.is_none()) {
                            return;
                        }
                        notified.await;
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), all_down).await;
            }
        }
        let _ = self.stop.send(true);
        self.endpoint.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        let mut tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|p| p.into_inner()));
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}

/// Dials `peer` whenever its [`Dialer`] says so, and runs each link it establishes.
async fn dial_loop(
    peer: PeerConfig,
    ep: Arc<Endpoint>,
    shared: Arc<Shared>,
    node: NodeHandle,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        // Registered before the dialer is read, so no change between the two is missed.
        let changed = shared.changed.notified();
        let due = shared.dialer(&peer.name, |d| d.poll_timeout()).flatten();
        let wait = due.map(|at| Duration::from_millis(at.saturating_sub(shared.now_ms())));
        if wait != Some(Duration::ZERO) {
            tokio::select! {
                _ = changed => continue,
                _ = tokio::time::sleep(wait.unwrap_or(Duration::MAX)), if wait.is_some() => {}
                _ = stop.changed() => return,
            }
        }
        if *stop.borrow() {
            return;
        }
        if node.refused_as_copy(&peer.name) {
            // Another node runs from a copy of this store and the peer took it: dialling again
            // would only replace that node's link over and over. Until restart.
            let _ = stop.changed().await;
            return;
        }
        if shared.dialer(&peer.name, |d| d.poll_dial(shared.now_ms())) != Some(true) {
            continue;
        }
        match dial(&ep, &peer).await {
            Ok(link) => {
                // Up, but not yet proven: a peer that refuses this node's certificate after
                // the handshake (TLS 1.3) ends it at once. Failures reset on its first frame.
                shared.dialer(&peer.name, Dialer::handle_link_up);
                run_link(link, node.clone(), shared.clone(), stop.clone()).await;
            }
            Err(e) => dial_failed(&shared, &peer, &e),
        }
    }
}

/// Whenever the revocation list changes, closes the link of every peer whose certificate it
/// now names (new handshakes are refused by the TLS verifiers themselves).
async fn close_revoked(ep: Arc<Endpoint>, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let creds = ep.credentials().clone();
    let mut changes = creds.revocation_changes();
    loop {
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = stop.changed() => return,
        }
        let map = shared.lock();
        for (peer, entry) in map.iter() {
            let Some(cur) = &entry.current else { continue };
            if let Some(e) = creds.revoked(&cur.serial) {
                let reason = e.reason.map_or("unspecified", |r| r.as_str());
                tracing::warn!(%peer, reason, "peer certificate revoked; closing its link");
                metrics::counter!("edgesync_peer_revoked_total", "peer" => peer.to_string())
                    .increment(1);
                ep.count_rejection("revoked");
                close_connection(
                    &cur.conn,
                    close::BAD_IDENTITY,
                    "certificate revoked by the fleet",
                );
            }
        }
    }
}

async fn dial(ep: &Endpoint, peer: &PeerConfig) -> Result<Link, LinkError> {
    let mut addrs = tokio::net::lookup_host(&peer.addr)
        .await
        .map_err(|source| LinkError::Resolve {
            addr: peer.addr.clone(),
            source: Arc::new(source),
        })?;
    let addr = addrs.next().ok_or_else(|| LinkError::NoAddress {
        addr: peer.addr.clone(),
    })?;
    ep.dial(addr, &peer.name).await
}

fn dial_failed(shared: &Shared, peer: &PeerConfig, e: &LinkError) {
    metrics::counter!("edgesync_dial_failures_total", "peer" => peer.name.to_string(), "reason" => e.kind()).increment(1);
    tracing::debug!(peer = %peer.name, addr = %peer.addr, reason = e.kind(), error = %e, "dial failed");
    let now = shared.now_ms();
    let mut map = shared.lock();
    let Some(entry) = map.get_mut(&peer.name) else {
        return;
    };
    entry.last_error = Some(e.to_string());
    let Some(d) = entry.dialer.as_mut() else {
        return;
    };
    let was_open = d.breaker_open();
    d.handle_failed(now, os::random_u64());
    if d.breaker_open() && !was_open {
        let (failures, cap_ms) = (d.failures(), d.policy().cap_ms);
        tracing::warn!(peer = %peer.name, failures, "circuit breaker open; probing once per {cap_ms} ms");
    }
}

/// Runs one link until it ends: registers it (one per peer), starts a session, and moves
/// frames both ways with separate reader and writer tasks so that neither direction's flow
/// control can stall the other.
async fn run_link(link: Link, node: NodeHandle, shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let peer = link.peer.name.clone();
    let dialled_by_me = link.dialled;
    let token = {
        let mut t = shared.next_token.lock().unwrap_or_else(|p| p.into_inner());
        *t += 1;
        *t
    };
    let credit = node.inbound_credit();
    {
        let mut map = shared.lock();
        let entry = map.entry(peer.clone()).or_default();
        if let Some(cur) = &entry.current {
            if !keep_new_link(&shared.me, &peer, cur.dialled_by_me, dialled_by_me) {
                drop(map);
                link.close(close::SESSION_CLOSED, "duplicate link");
                return;
            }
            cur.conn
                .close(close::SESSION_CLOSED.into(), b"replaced by a newer link");
        }
        entry.current = Some(Current {
            token,
            dialled_by_me,
            remote: link.remote,
            since: Instant::now(),
            role: link.peer.role.to_string(),
            site: link.peer.site.clone(),
            conn: link.conn.clone(),
            serial: link.serial.clone(),
            credit: credit.clone(),
        });
        entry.connects += 1;
        entry.last_error = None;
        if let Some(d) = entry.dialer.as_mut() {
            d.handle_link_up();
        }
    }
    metrics::counter!("edgesync_connections_total", "peer" => peer.to_string()).increment(1);
    tracing::info!(%peer, remote = %link.remote, dialled = dialled_by_me, "link up");
    let (out_tx, mut out_rx) = outbound_channel();
    let who = crate::net::authorship::core_identity(&link.peer);
    let outcome = match node.peer_up(who, out_tx).await {
        Err(e) => {
            link.close(close::SESSION_CLOSED, "node unavailable");
            (format!("node unavailable: {e}"), false)
        }
        Ok(sid) => {
            let Link {
                mut tx,
                mut rx,
                conn,
                ..
            } = link;
            let wconn = conn.clone();
            let mut writer = tokio::spawn(async move {
                while let Some(o) = out_rx.recv().await {
                    match o {
                        Outbound::Frame(f) => {
                            if tx.send(&f).await.is_err() {
                                return;
                            }
                            out_rx.written(f.len());
                        }
                        Outbound::Close(end) => {
                            tx.finish();
                            // Let the Close frame arrive before the connection goes (bounded:
                            // the peer may be gone).
                            let _ =
                                tokio::time::timeout(Duration::from_secs(1), tx.delivered()).await;
                            close_connection(&wconn, close::for_session(end.code), &end.reason);
                            return;
                        }
                    }
                }
            });
            let mut stop = stop;
            let mut refused = false;
            let mut proven = false;
            let outcome = loop {
                tokio::select! {
                    f = rx.next_frame() => match f {
                        Ok(Some(frame)) => {
                            if !proven {
                                proven = true;
                                shared.dialer(&peer, Dialer::handle_connected);
                            }
                            // While the core is behind, stop reading: QUIC slows the peer.
                            let held = credit.reserve(frame.len()).await;
                            if node.peer_input(sid, frame, Some(held)).is_err() {
                                break "node stopped".to_string();
                            }
                        }
                        Ok(None) => break "peer finished the stream".to_string(),
                        Err(e) => {
                            // The peer refused this node's certificate after the handshake
                            // completed on this side (TLS 1.3 clients learn it on first use),
                            // or closed the link over its identity (revoked): a failure, so
                            // redials back off instead of hammering it.
                            refused = matches!(e, LinkError::Handshake { .. } | LinkError::BadIdentity(_));
                            if !matches!(e, LinkError::Closed(_) | LinkError::Timeout(_)) {
                                tracing::warn!(%peer, reason = e.kind(), error = %e, "link failed");
                                close_connection(&conn, e.close_code(), &e.to_string());
                            }
                            break e.to_string();
                        }
                    },
                    _ = &mut writer => break "link closed".to_string(),
                    _ = stop.changed() => break "shutdown".to_string(),
                }
            };
            node.peer_down(sid);
            // Let the writer flush a final Close, if the core queued one (a finished writer's
            // handle must not be polled again).
            if !writer.is_finished()
                && tokio::time::timeout(Duration::from_secs(1), &mut writer)
                    .await
                    .is_err()
            {
                writer.abort();
            }
            conn.close(close::SESSION_CLOSED.into(), b"link ended");
            (outcome, refused)
        }
    };
    let (outcome, refused) = outcome;
    tracing::info!(%peer, reason = %outcome, "link down");
    {
        let now = shared.now_ms();
        let mut map = shared.lock();
        if let Some(e) = map.get_mut(&peer) {
            if e.current.as_ref().is_some_and(|c| c.token == token) {
                e.current = None;
                if let Some(d) = e.dialer.as_mut() {
                    if refused {
                        d.handle_failed(now, os::random_u64());
                    } else {
                        d.handle_link_down(now, os::random_u64());
                    }
                }
            }
            e.last_error = Some(outcome);
        }
    }
    shared.changed.notify_waiters();
}
