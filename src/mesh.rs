//! Peers: dialling configured peers and accepting inbound ones over [`crate::net`], one
//! protocol session per link, reconnection with capped exponential backoff and full jitter, and
//! a per-peer circuit breaker.
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

use edgesync_proto::NodeName;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinSet;

use crate::net::{close, Endpoint, Link, LinkError};
use crate::node::{NodeHandle, Outbound};

/// A peer to dial.
#[derive(Clone, Debug)]
pub struct PeerConfig {
    /// The name its certificate must carry.
    pub name: NodeName,
    /// `host:port`, resolved at every attempt.
    pub addr: String,
}

/// Reconnection policy.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// First retry delay bound. Default 500 ms.
    pub base: Duration,
    /// Largest delay. Default 10 s (a healed link is redialled within it).
    pub cap: Duration,
    /// Consecutive failures that open the circuit breaker. Default 5.
    pub breaker_failures: u32,
}

impl Default for RetryPolicy {
    fn default() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(10),
            breaker_failures: 5,
        }
    }
}

impl RetryPolicy {
    /// The delay before attempt `failures + 1`: uniform in `[0, min(cap, base * 2^failures))`
    /// (full jitter); with the breaker open, one probe per `cap`.
    pub fn delay(&self, failures: u32, unit: f64) -> Duration {
        if failures >= self.breaker_failures {
            return self.cap;
        }
        let ceiling = self
            .base
            .saturating_mul(1u32 << failures.min(20))
            .min(self.cap);
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }
}

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
}

#[derive(Default)]
struct PeerEntry {
    addr: Option<String>,
    current: Option<Current>,
    failures: u32,
    connects: u64,
    last_error: Option<String>,
}

struct Shared {
    me: NodeName,
    peers: Mutex<BTreeMap<NodeName, PeerEntry>>,
    next_token: Mutex<u64>,
    /// Signalled whenever a link ends.
    changed: Notify,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<NodeName, PeerEntry>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
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

fn jitter() -> f64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
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
        });
        let (stop, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        {
            let mut map = shared.lock();
            for p in &peers {
                map.entry(p.name.clone()).or_default().addr = Some(p.addr.clone());
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
        for p in peers {
            let (ep, sh, n, st, r) = (
                endpoint.clone(),
                shared.clone(),
                node.clone(),
                stop_rx.clone(),
                retry.clone(),
            );
            tasks.spawn(dial_loop(p, ep, sh, n, st, r));
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
    pub fn status(&self, retry: &RetryPolicy) -> Vec<PeerStatus> {
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
                role: e.current.as_ref().map(|c| c.role.clone()),
                site: e.current.as_ref().and_then(|c| c.site.clone()),
                failures: e.failures,
                breaker: if e.failures >= retry.breaker_failures {
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

async fn dial_loop(
    peer: PeerConfig,
    ep: Arc<Endpoint>,
    shared: Arc<Shared>,
    node: NodeHandle,
    mut stop: watch::Receiver<bool>,
    retry: RetryPolicy,
) {
    loop {
        if *stop.borrow() {
            return;
        }
        // Wait while a link (either direction) is up.
        loop {
            let notified = shared.changed.notified();
            if shared
                .lock()
                .get(&peer.name)
                .is_none_or(|e| e.current.is_none())
            {
                break;
            }
            tokio::select! {
                _ = notified => {}
                _ = stop.changed() => return,
            }
        }
        let result = match tokio::net::lookup_host(&peer.addr).await {
            Ok(mut addrs) => match addrs.next() {
                Some(a) => ep.dial(a, &peer.name).await,
                None => Err(LinkError::Dial(format!(
                    "{} resolves to nothing",
                    peer.addr
                ))),
            },
            Err(e) => Err(LinkError::Dial(format!("{}: {e}", peer.addr))),
        };
        let failures = match result {
            Ok(link) => {
                {
                    let mut map = shared.lock();
                    let e = map.entry(peer.name.clone()).or_default();
                    e.failures = 0;
                }
                run_link(link, node.clone(), shared.clone(), stop.clone()).await;
                0
            }
            Err(e) => {
                metrics::counter!("edgesync_dial_failures_total", "peer" => peer.name.to_string(), "reason" => e.kind()).increment(1);
                let mut map = shared.lock();
                let entry = map.entry(peer.name.clone()).or_default();
                entry.failures = entry.failures.saturating_add(1);
                if entry.failures == retry.breaker_failures {
                    tracing::warn!(peer = %peer.name, failures = entry.failures, "circuit breaker open; probing once per {:?}", retry.cap);
                }
                tracing::debug!(peer = %peer.name, addr = %peer.addr, reason = e.kind(), error = %e, "dial failed");
                entry.last_error = Some(e.to_string());
                entry.failures
            }
        };
        let delay = retry.delay(failures, jitter());
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.changed() => return,
        }
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
    {
        let mut map = shared.lock();
        let entry = map.entry(peer.clone()).or_default();
        if let Some(cur) = &entry.current {
            // Both dialled: keep the link dialled by the node whose name sorts first.
            let preferred_by_me = shared.me < peer;
            let keep_new = cur.dialled_by_me == dialled_by_me || dialled_by_me == preferred_by_me;
            if !keep_new {
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
        });
        entry.connects += 1;
        entry.last_error = None;
    }
    metrics::counter!("edgesync_connections_total", "peer" => peer.to_string()).increment(1);
    tracing::info!(%peer, remote = %link.remote, dialled = dialled_by_me, "link up");
    let (out_tx, mut out_rx) = mpsc::unbounded_channel();
    let outcome = match node.peer_up(peer.clone(), out_tx).await {
        Err(e) => {
            link.close(close::SESSION_CLOSED, "node unavailable");
            format!("node unavailable: {e}")
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
                        }
                        Outbound::Close(why) => {
                            tx.finish();
                            // Let the Close frame arrive before the connection goes (bounded:
                            // the peer may be gone).
                            let _ =
                                tokio::time::timeout(Duration::from_secs(1), tx.delivered()).await;
                            let mut why = why;
                            why.truncate(200);
                            wconn.close(close::SESSION_CLOSED.into(), why.as_bytes());
                            return;
                        }
                    }
                }
            });
            let mut stop = stop;
            let outcome = loop {
                tokio::select! {
                    f = rx.next_frame() => match f {
                        Ok(Some(frame)) => {
                            if node.peer_input(sid, frame).is_err() {
                                break "node stopped".to_string();
                            }
                        }
                        Ok(None) => break "peer finished the stream".to_string(),
                        Err(e) => {
                            if !matches!(e, LinkError::Closed(_) | LinkError::Timeout(_)) {
                                tracing::warn!(%peer, reason = e.kind(), error = %e, "link failed");
                                conn.close(e.close_code().into(), e.to_string().as_bytes());
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
            outcome
        }
    };
    tracing::info!(%peer, reason = %outcome, "link down");
    {
        let mut map = shared.lock();
        if let Some(e) = map.get_mut(&peer) {
            if e.current.as_ref().is_some_and(|c| c.token == token) {
                e.current = None;
            }
            e.last_error = Some(outcome);
        }
    }
    shared.changed.notify_waiters();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_capped_full_jitter_and_the_breaker_probes_at_the_cap() {
        let r = RetryPolicy::default();
        assert_eq!(r.delay(0, 1.0), Duration::from_millis(500));
        assert_eq!(r.delay(3, 1.0), Duration::from_secs(4));
        assert_eq!(r.delay(4, 0.0), Duration::ZERO);
        assert_eq!(r.delay(4, 1.0), Duration::from_secs(8));
        assert_eq!(r.delay(5, 0.3), r.cap, "breaker open: one probe per cap");
        let big = RetryPolicy {
            breaker_failures: 100,
            ..RetryPolicy::default()
        };
        assert_eq!(big.delay(40, 1.0), big.cap);
        assert!(jitter() < 1.0);
    }
}
