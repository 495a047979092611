//! Sinks: the change feed delivered into systems outside the fleet.
//!
//! Each sink is a task that reads the node's feed ([`crate::node::NodeHandle::feed`]) from its
//! own cursor, kept in the store ([`SinkState`]), and delivers batches of events at least
//! once, each batch identified by its cursor range so the target can drop a batch it already
//! has (exactly once in effect):
//!
//! 1. The next batch is the feed page after the delivered cursor (events of the sink's
//!    documents, at most `batch`), ending at the page's `next`. Before its first attempt the
//!    batch's end is written, synced, as the state's `inflight`: after a restart or a kill the
//!    sink rebuilds the same batch (the same events, the same key) instead of a larger one.
//! 2. It is retried until the target takes it, with capped exponential backoff and jitter
//!    ([`SinkRetry`]); a failing sink never touches the node's health, and never drops an
//!    event.
//! 3. Then `delivered` moves to the batch's end (not synced: a crash before the next sync only
//!    repeats the batch, which the target recognises).
//!
//! A page with no event of the sink's documents moves the cursor past what it looked at. If
//! the feed dropped events the sink had not delivered (it was down for longer than the feed
//! keeps), the sink counts them as skipped, logs it, and goes on from the oldest event held.
//!
//! `kind = "webhook"`: each batch is `POST url` with `{"sink", "from", "to", "events": [...]}`
//! (`from` exclusive, `to` inclusive cursors; events as `GET /v1/feed` shows them) and the
//! header `Idempotency-Key`, derived from the sink's name and the range; any 2xx is success.
//!
//! `kind = "postgres"`: readings become rows `(doc, id, ts, fields jsonb, origin, received_at)`
//! of `table` (created if missing; primary key `(doc, id)`; `ON CONFLICT DO NOTHING`), and the
//! sink's cursor lives in PostgreSQL (`edgesync_sink_cursors`), written in the same
//! transaction as the batch's rows: a batch is in the table exactly when the cursor is past
//! it, so after any crash the sink resumes right after what the table holds, and the primary
//! key keeps a reading once even if two nodes deliver it. Changes to generic documents are not
//! rows. The connection is plain TCP (no TLS yet): keep the database on a trusted network.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgesync_proto::Cursor;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::node::{DocPattern, FeedError, NodeHandle, FEED_PAGE_MAX};
use crate::store::{SinkState, SinkStore};

/// How long one delivery attempt may take.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle sink waits for new events before it looks again anyway.
const IDLE_RECHECK: Duration = Duration::from_secs(5);

/// Where a sink delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SinkKind {
    /// `POST` batches to this URL.
    Webhook {
        /// `http://` or `https://` (certificates checked against the Mozilla roots).
        url: String,
    },
    /// Rows into a PostgreSQL table.
    Postgres {
        /// `postgres://user[:password]@host[:port]/database`.
        url: String,
        /// The table: a lower-case SQL identifier.
        table: String,
    },
}

impl SinkKind {
    /// The kind's name in the configuration.
    pub fn name(&self) -> &'static str {
        match self {
            SinkKind::Webhook { .. } => "webhook",
            SinkKind::Postgres { .. } => "postgres",
        }
    }

    /// Its URL.
    pub fn url(&self) -> &str {
        match self {
            SinkKind::Webhook { url } | SinkKind::Postgres { url, .. } => url,
        }
    }
}

/// The table the PostgreSQL sinks keep their cursors in.
pub const PG_CURSOR_TABLE: &str = "edgesync_sink_cursors";

/// Whether `t` can name a table without quoting: `[a-z_][a-z0-9_]*`, at most 63 bytes.
pub fn is_table_name(t: &str) -> bool {
    (1..=63).contains(&t.len())
        && t.bytes()
            .enumerate()
            .all(|(i, b)| b == b'_' || b.is_ascii_lowercase() || (i > 0 && b.is_ascii_digit()))
}

/// How sinks retry a target that fails.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkRetry {
    /// The first delay, ms.
    pub base_ms: u64,
    /// The longest delay, ms.
    pub cap_ms: u64,
    /// Failures in a row after which the delay is the cap.
    pub max_retries: u32,
}

impl Default for SinkRetry {
    fn default() -> SinkRetry {
        SinkRetry {
            base_ms: 1_000,
            cap_ms: 10_000,
            max_retries: 3,
        }
    }
}

impl SinkRetry {
    /// The delay before attempt `failures + 1` (after `failures` failures in a row, at least
    /// one): `base · 2^(failures-1)` up to the cap, the cap itself past `max_retries`; then a
    /// random part of it between a half and all of it (`jitter` in 0..=1), so sinks of many
    /// nodes do not retry in step.
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let full = if failures > self.max_retries {
            self.cap_ms
        } else {
            let shift = failures.saturating_sub(1).min(30);
            self.base_ms.saturating_mul(1 << shift).min(self.cap_ms)
        };
        let ms = (full as f64) * (0.5 + 0.5 * jitter.clamp(0.0, 1.0));
        Duration::from_millis(ms as u64)
    }
}

/// One sink.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SinkConfig {
    /// Its name: its state's key in the store, and its label in metrics.
    pub name: String,
    /// Where it delivers.
    pub kind: SinkKind,
    /// Which documents' events it delivers (all when `None`).
    pub docs: Option<DocPattern>,
    /// Events per batch, 1 to [`FEED_PAGE_MAX`].
    pub batch: usize,
}

/// What `/v1/status` and the metrics show of a sink.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct SinkStatus {
    /// The sink's name.
    pub name: String,
    /// Its kind.
    pub kind: String,
    /// Events delivered since the node started.
    pub delivered_events: u64,
    /// Batches delivered since the node started.
    pub delivered_batches: u64,
    /// Failed attempts since the node started.
    pub failed_attempts: u64,
    /// Events of the feed after the sink's cursor (of any document: an upper bound).
    pub lag_events: u64,
    /// Events the feed dropped before the sink delivered them, ever.
    pub skipped_events: u64,
    /// The last failure, if the last attempt failed.
    pub last_error: Option<String>,
    /// The cursor everything up to which was delivered.
    pub delivered: Option<String>,
}

/// Reads the sinks' status from anywhere.
#[derive(Clone, Default)]
pub struct SinkStatusHandle(Arc<Mutex<BTreeMap<String, SinkStatus>>>);

impl SinkStatusHandle {
    /// Every sink's status, by name.
    pub fn get(&self) -> Vec<SinkStatus> {
        lock(&self.0).values().cloned().collect()
    }
}

/// The running sinks.
pub struct Sinks {
    status: Arc<Mutex<BTreeMap<String, SinkStatus>>>,
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl Sinks {
    /// Starts one task per sink.
    pub fn start(
        node: NodeHandle,
        store: SinkStore,
        sinks: Vec<SinkConfig>,
        retry: SinkRetry,
    ) -> Sinks {
        let status = Arc::new(Mutex::new(BTreeMap::new()));
        let (stop, stop_rx) = watch::channel(false);
        let tasks = sinks
            .into_iter()
            .map(|cfg| {
                let task = Task {
                    node: node.clone(),
                    store: store.clone(),
                    retry: retry.clone(),
                    status: status.clone(),
                    stop: stop_rx.clone(),
                    cfg,
                    pg: None,
                    http: ureq::Agent::config_builder()
                        .timeout_global(Some(ATTEMPT_TIMEOUT))
                        .http_status_as_error(false)
                        .build()
                        .into(),
                };
                tokio::spawn(task.run())
            })
            .collect();
        Sinks {
            status,
            tasks,
            stop,
        }
    }

    /// A handle on every sink's status.
    pub fn status(&self) -> SinkStatusHandle {
        SinkStatusHandle(self.status.clone())
    }

    /// Stops every sink (a batch being delivered is delivered again on the next start).
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A batch to deliver: the events after `from` up to `to`.
struct Batch {
    from: Option<Cursor>,
    to: Cursor,
    events: Vec<Value>,
}

/// One reading's row.
type Row = (String, String, i64, Value, String);

/// What the next step is.
enum Next {
    Deliver(Batch),
    /// Nothing new: wait for the feed to grow.
    Idle,
    /// The cursor moved without anything to deliver (filtered or skipped events): persist.
    Moved,
}

struct Task {
    node: NodeHandle,
    store: SinkStore,
    retry: SinkRetry,
    status: Arc<Mutex<BTreeMap<String, SinkStatus>>>,
    stop: watch::Receiver<bool>,
    cfg: SinkConfig,
    /// The PostgreSQL connection, while it works.
    pg: Option<tokio_postgres::Client>,
    /// The webhook client, made once (its TLS roots and connection pool are reused).
    http: ureq::Agent,
}

impl Task {
    fn update(&self, f: impl FnOnce(&mut SinkStatus)) {
        let mut all = lock(&self.status);
        let s = all
            .entry(self.cfg.name.clone())
            .or_insert_with(|| SinkStatus {
                name: self.cfg.name.clone(),
                kind: self.cfg.kind.name().to_string(),
                ..SinkStatus::default()
            });
        f(s);
        let labels = [("sink", self.cfg.name.clone())];
        metrics::gauge!("edgesync_sink_lag_events", &labels).set(s.lag_events as f64);
    }

    async fn load(&self) -> Option<SinkState> {
        let store = self.store.clone();
        let name = self.cfg.name.clone();
        match tokio::task::spawn_blocking(move || store.get(&name)).await {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                tracing::error!(sink = %self.cfg.name, error = %e, "cannot read the sink's state");
                None
            }
            Err(_) => None,
        }
    }

    async fn save(&self, state: &SinkState, sync: bool) -> bool {
        let store = self.store.clone();
        let name = self.cfg.name.clone();
        let st = state.clone();
        match tokio::task::spawn_blocking(move || store.put(&name, &st, sync)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::error!(sink = %self.cfg.name, error = %e, "cannot write the sink's state");
                false
            }
            Err(_) => false,
        }
    }

    /// Sleeps `d`; false if the sink is stopping.
    async fn pause(&mut self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => !*self.stop.borrow(),
            _ = self.stop.changed() => false,
        }
    }

    async fn run(mut self) {
        let mut state = loop {
            if let Some(s) = self.load().await {
                break s;
            }
            if !self.pause(Duration::from_secs(1)).await {
                return;
            }
        };
        if let SinkKind::Postgres { .. } = self.cfg.kind {
            // The cursor that counts is the one committed with the rows.
            let mut failures = 0;
            loop {
                match self.pg_cursor().await {
                    Ok(c) => {
                        state.delivered = c.or(state.delivered);
                        state.inflight = None;
                        break;
                    }
                    Err(e) => {
                        failures += 1;
                        self.failed(e);
                        let d = self.retry.delay(failures, jitter());
                        if !self.pause(d).await {
                            return;
                        }
                    }
                }
            }
        }
        let mut head = self.node.feed_head();
        self.update(|s| {
            s.skipped_events = state.skipped;
            s.delivered = state.delivered.map(|c| c.to_string());
        });
        loop {
            if *self.stop.borrow() {
                return;
            }
            let lag = head
                .borrow()
                .n
                .saturating_sub(state.delivered.map_or(0, |c| c.n));
            self.update(|s| s.lag_events = lag);
            let next = match self.next_batch(&mut state).await {
                Ok(n) => n,
                Err(e) => {
                    self.update(|s| s.last_error = Some(e));
                    if !self.pause(Duration::from_secs(1)).await {
                        return;
                    }
                    continue;
                }
            };
            let batch = match next {
                Next::Idle => {
                    tokio::select! {
                        _ = head.changed() => {}
                        _ = tokio::time::sleep(IDLE_RECHECK) => {}
                        _ = self.stop.changed() => return,
                    }
                    continue;
                }
                Next::Moved => {
                    self.save(&state, false).await;
                    continue;
                }
                Next::Deliver(b) => b,
            };
            let keeps_range = matches!(self.cfg.kind, SinkKind::Webhook { .. });
            if keeps_range && state.inflight != Some(batch.to) {
                state.inflight = Some(batch.to);
                if !self.save(&state, true).await {
                    state.inflight = None;
                    if !self.pause(Duration::from_secs(1)).await {
                        return;
                    }
                    continue;
                }
            }
            if !self.deliver(&batch).await {
                return;
            }
            let n = batch.events.len() as u64;
            state.delivered = Some(batch.to);
            state.inflight = None;
            self.save(&state, false).await;
            self.update(|s| {
                s.delivered_events += n;
                s.delivered_batches += 1;
                s.last_error = None;
                s.delivered = Some(batch.to.to_string());
            });
            let labels = [("sink", self.cfg.name.clone())];
            metrics::counter!("edgesync_sink_delivered_events_total", &labels).increment(n);
        }
    }

    /// The batch in flight again, or the next one.
    async fn next_batch(&self, state: &mut SinkState) -> Result<Next, String> {
        let page = match self
            .node
            .feed(state.delivered, self.cfg.batch, self.cfg.docs.clone())
            .await
        {
            Ok(p) => p,
            Err(FeedError::Gone { oldest }) => {
                let from = state.delivered.map_or(0, |c| c.n);
                let lost = if state.delivered.is_some_and(|c| c.store == oldest.store) {
                    oldest.n.saturating_sub(from)
                } else {
                    // Another store's sequence (the node was restored or replaced): the
                    // events after the sink's cursor cannot be told apart; count none.
                    0
                };
                tracing::error!(
                    sink = %self.cfg.name,
                    skipped = lost,
                    resume = %oldest,
                    "the feed no longer holds what this sink has not delivered; it goes on from the oldest event held"
                );
                state.skipped += lost;
                state.delivered = Some(oldest);
                state.inflight = None;
                self.update(|s| s.skipped_events = state.skipped);
                return Ok(Next::Moved);
            }
            Err(e) => return Err(e.to_string()),
        };
        let mut events = page.events;
        let to = match state.inflight {
            // The batch tried before (maybe before a restart): exactly its events.
            Some(to) => {
                events.retain(|(c, _)| *c <= to);
                to
            }
            None => page.next,
        };
        if events.is_empty() {
            if Some(to) != state.delivered && state.inflight.is_none() {
                state.delivered = Some(to);
                return Ok(Next::Moved);
            }
            if state.inflight.is_some() {
                // Its events were all trimmed meanwhile: nothing to deliver.
                state.delivered = Some(to);
                state.inflight = None;
                return Ok(Next::Moved);
            }
            return Ok(Next::Idle);
        }
        Ok(Next::Deliver(Batch {
            from: state.delivered,
            to,
            events: events
                .iter()
                .map(|(c, e)| crate::daemon::api::feed_event_json(c, e))
                .collect(),
        }))
    }

    /// Counts and reports a failed attempt.
    fn failed(&self, e: String) {
        let labels = [("sink", self.cfg.name.clone())];
        metrics::counter!("edgesync_sink_failures_total", &labels).increment(1);
        tracing::warn!(sink = %self.cfg.name, error = %e, "delivery failed");
        self.update(|s| {
            s.failed_attempts += 1;
            s.last_error = Some(e);
        });
    }

    /// Delivers `batch` until the target takes it; false if the sink is stopping.
    async fn deliver(&mut self, batch: &Batch) -> bool {
        let mut failures = 0u32;
        loop {
            let r = match self.cfg.kind.clone() {
                SinkKind::Webhook { url } => self.post(&url, batch).await,
                SinkKind::Postgres { table, .. } => self.pg_write(&table, batch).await,
            };
            match r {
                Ok(()) => return true,
                Err(e) => {
                    failures += 1;
                    self.failed(e);
                    if !self.pause(self.retry.delay(failures, jitter())).await {
                        return false;
                    }
                }
            }
        }
    }

    /// The PostgreSQL client, connected (and the tables created) if it is not.
    async fn pg_client(&mut self) -> Result<&mut tokio_postgres::Client, String> {
        if self.pg.as_ref().is_some_and(|c| c.is_closed()) {
            self.pg = None;
        }
        if self.pg.is_none() {
            let SinkKind::Postgres { url, table } = &self.cfg.kind else {
                return Err("not a postgres sink".into());
            };
            let connect = tokio_postgres::connect(url, tokio_postgres::NoTls);
            let (client, conn) = tokio::time::timeout(ATTEMPT_TIMEOUT, connect)
                .await
                .map_err(|_| "connecting to PostgreSQL timed out".to_string())?
                .map_err(|e| format!("connecting to PostgreSQL: {e}"))?;
            let name = self.cfg.name.clone();
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::warn!(sink = %name, error = %e, "PostgreSQL connection ended");
                }
            });
            // Both names are checked identifiers (`is_table_name`), never input text.
            let ddl = format!(
                "CREATE TABLE IF NOT EXISTS {table} (doc text NOT NULL, id text NOT NULL, \
                 ts bigint NOT NULL, fields jsonb NOT NULL, origin text NOT NULL, \
                 received_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (doc, id)); \
                 CREATE TABLE IF NOT EXISTS {PG_CURSOR_TABLE} (sink text PRIMARY KEY, \
                 cursor text NOT NULL)"
            );
            client
                .batch_execute(&ddl)
                .await
                .map_err(|e| format!("creating the tables: {e}"))?;
            self.pg = Some(client);
        }
        Ok(self.pg.as_mut().expect("set above"))
    }

    /// The sink's cursor as PostgreSQL holds it.
    async fn pg_cursor(&mut self) -> Result<Option<Cursor>, String> {
        let name = self.cfg.name.clone();
        let client = self.pg_client().await?;
        let q = format!("SELECT cursor FROM {PG_CURSOR_TABLE} WHERE sink = $1");
        let row = client.query_opt(&q, &[&name]).await;
        let row = match row {
            Ok(r) => r,
            Err(e) => {
                self.pg = None;
                return Err(format!("reading the cursor: {e}"));
            }
        };
        match row {
            None => Ok(None),
            Some(r) => {
                let text: String = r.get(0);
                text.parse()
                    .map(Some)
                    .map_err(|e| format!("{PG_CURSOR_TABLE} holds a bad cursor: {e}"))
            }
        }
    }

    /// The batch's readings and the sink's cursor, in one transaction.
    async fn pg_write(&mut self, table: &str, batch: &Batch) -> Result<(), String> {
        let rows: Vec<Row> = batch
            .events
            .iter()
            .filter_map(|e| {
                Some((
                    e["doc"].as_str()?.to_string(),
                    e["id"].as_str()?.to_string(),
                    e["ts"].as_i64()?,
                    e["fields"].clone(),
                    e["origin"].as_str()?.to_string(),
                ))
            })
            .collect();
        let name = self.cfg.name.clone();
        let to = batch.to.to_string();
        let insert = format!(
            "INSERT INTO {table} (doc, id, ts, fields, origin) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (doc, id) DO NOTHING"
        );
        let cursor = format!(
            "INSERT INTO {PG_CURSOR_TABLE} (sink, cursor) VALUES ($1, $2) \
             ON CONFLICT (sink) DO UPDATE SET cursor = EXCLUDED.cursor"
        );
        let client = self.pg_client().await?;
        let r: Result<(), tokio_postgres::Error> = async {
            let tx = client.transaction().await?;
            let stmt = tx.prepare(&insert).await?;
            for (doc, id, ts, fields, origin) in &rows {
                tx.execute(&stmt, &[doc, id, ts, fields, origin]).await?;
            }
            tx.execute(&cursor, &[&name, &to]).await?;
            tx.commit().await
        }
        .await;
        r.map_err(|e| {
            self.pg = None;
            format!("writing the batch: {e}")
        })
    }

    async fn post(&self, url: &str, batch: &Batch) -> Result<(), String> {
        let body = json!({
            "sink": self.cfg.name,
            "from": batch.from.map(|c| c.to_string()),
            "to": batch.to.to_string(),
            "events": batch.events,
        })
        .to_string();
        let key = idempotency_key(&self.cfg.name, batch.from, batch.to);
        let url = url.to_string();
        let agent = self.http.clone();
        let r = tokio::task::spawn_blocking(move || {
            agent
                .post(&url)
                .header("Idempotency-Key", &key)
                .header("Content-Type", "application/json")
                .send(body)
                .map(|r| r.status().as_u16())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?;
        match r {
            Ok(s) if (200..300).contains(&s) => Ok(()),
            Ok(s) => Err(format!("the target answered HTTP {s}")),
            Err(e) => Err(e),
        }
    }
}

/// `url` with its password, if any, shown as `***` (for logs and `config check`).
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (auth, host) = match rest.split_once('@') {
        Some(x) => x,
        None => return url.to_string(),
    };
    match auth.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// A random number in 0..=1 for the backoff's jitter.
fn jitter() -> f64 {
    crate::os::random_bytes::<8>()
        .map(|b| u64::from_le_bytes(b) as f64 / u64::MAX as f64)
        .unwrap_or(1.0)
}

/// The key of a batch: the same for the same sink and range, whenever it is sent.
pub fn idempotency_key(sink: &str, from: Option<Cursor>, to: Cursor) -> String {
    let mut h = blake3::Hasher::new_derive_key("edgesync sink batch v1");
    h.update(&(sink.len() as u64).to_be_bytes());
    h.update(sink.as_bytes());
    h.update(from.map_or(String::new(), |c| c.to_string()).as_bytes());
    h.update(b"..");
    h.update(to.to_string().as_bytes());
    h.finalize().to_hex()[..32].to_string()
}

/// Checks a sink's batch size.
pub fn check_batch(batch: usize) -> Result<usize, String> {
    if (1..=FEED_PAGE_MAX).contains(&batch) {
        Ok(batch)
    } else {
        Err(format!("must be 1 to {FEED_PAGE_MAX}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Delays double from the base up to the cap, are the cap past max_retries, and jitter
    // takes between a half and all of them.
    #[test]
    fn backoff_doubles_to_the_cap_with_jitter() {
        let r = SinkRetry {
            base_ms: 2_000,
            cap_ms: 10_000,
            max_retries: 3,
        };
        let full: Vec<u64> = (1..=6)
            .map(|f| r.delay(f, 1.0).as_millis() as u64)
            .collect();
        assert_eq!(full, [2_000, 4_000, 8_000, 10_000, 10_000, 10_000]);
        let one = SinkRetry {
            base_ms: 100,
            cap_ms: 10_000,
            max_retries: 1,
        };
        assert_eq!(
            one.delay(2, 1.0),
            Duration::from_millis(10_000),
            "past max_retries: the cap"
        );
        assert_eq!(r.delay(1, 0.0), Duration::from_millis(1_000));
        assert_eq!(r.delay(40, 0.5), Duration::from_millis(7_500));
    }

    #[test]
    fn a_batch_key_names_its_sink_and_range() {
        let c = |n| Cursor { store: [1; 8], n };
        let k = idempotency_key("wh", Some(c(3)), c(9));
        assert_eq!(k, idempotency_key("wh", Some(c(3)), c(9)));
        assert_ne!(k, idempotency_key("wh", Some(c(3)), c(10)));
        assert_ne!(k, idempotency_key("wh", None, c(9)));
        assert_ne!(k, idempotency_key("wh2", Some(c(3)), c(9)));
        assert_eq!(k.len(), 32);
    }
}
