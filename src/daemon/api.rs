//! The local HTTP API (JSON). Every error is `{"error": "..."}` with a 4xx status for bad input
//! (5xx when the node cannot serve); bodies are bounded and parsed before use.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{middleware, Json, Router};
use edgesync_proto::stream::{self, Cursor, Range};
use edgesync_proto::{DocId, IngestOutcome, NodeError, Reading};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::{json, Value};
use tokio_stream::StreamExt;

use super::guard::Guard;
use crate::error_chain;
use crate::mesh::Mesh;
use crate::node::{DocPattern, FeedError, NodeHandle, ReadError, Stopped, WriteError};
use crate::os;

/// Largest request body, bytes.
pub const BODY_BYTES_MAX: usize = 256 * 1024;

/// What handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The node.
    pub node: NodeHandle,
    /// Its peers.
    pub mesh: Arc<Mesh>,
    /// The metrics registry.
    pub metrics: PrometheusHandle,
    /// The sinks' status.
    pub sinks: crate::sinks::SinkStatusHandle,
}

/// An API error.
pub struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({"error": self.1}))).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

/// The status for a request the core refused or failed: the client's fault (422) or the
/// node's (503).
fn core_status(e: &NodeError) -> StatusCode {
    match e {
        NodeError::Reading(_)
        | NodeError::Patch(_)
        | NodeError::KindMismatch { .. }
        | NodeError::ChangeTooLarge { .. }
        | NodeError::TooManyActors { .. }
        | NodeError::View { .. }
        | NodeError::NoReadingsMap { .. }
        | NodeError::Stream(_)
        | NodeError::OutsideBucket { .. }
        | NodeError::TooFarAhead { .. }
        | NodeError::Expired { .. }
        | NodeError::Pruned { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        NodeError::Forbidden { .. } => StatusCode::FORBIDDEN,
        NodeError::Poisoned
        | NodeError::Store(_)
        | NodeError::Load { .. }
        | NodeError::Fold { .. }
        | NodeError::Unsettled { .. }
        | NodeError::ActorSlotsExhausted { .. } => StatusCode::SERVICE_UNAVAILABLE,
    }
}

impl From<WriteError> for ApiError {
    fn from(e: WriteError) -> ApiError {
        let status = match &e {
            WriteError::Refused(core) => core_status(core),
            WriteError::NotDurable(_) | WriteError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, error_chain(&e))
    }
}

impl From<ReadError> for ApiError {
    fn from(e: ReadError) -> ApiError {
        let status = match &e {
            ReadError::Core(core) => core_status(core),
            ReadError::Stopped => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError(status, error_chain(&e))
    }
}

impl From<Stopped> for ApiError {
    fn from(e: Stopped) -> ApiError {
        ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> ApiError {
        ApiError(e.status(), e.body_text())
    }
}

type ApiResult = Result<Json<Value>, ApiError>;

/// The API's routes, every request checked by `guard` first ([`super::guard`]).
pub fn router(state: AppState, guard: Arc<Guard>) -> Router {
    Router::new()
        .route("/v1/ingest", post(ingest))
        .route("/v1/docs", get(docs))
        .route("/v1/docs/{*doc}", get(get_doc).patch(patch_doc))
        .route("/v1/status", get(status))
        .route("/v1/feed", get(feed))
        .route("/v1/feed/stream", get(feed_stream))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .fallback(|| async { ApiError(StatusCode::NOT_FOUND, "no such endpoint".into()) })
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(middleware::from_fn_with_state(guard, super::guard::check))
        .with_state(state)
}

/// A router serving only `/metrics` (its requests checked by `guard` too: a rebound name is
/// refused; no token is needed).
pub fn metrics_router(state: AppState, guard: Arc<Guard>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_text))
        .layer(middleware::from_fn_with_state(guard, super::guard::check))
        .with_state(state)
}

fn parse_body(body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let body = body?;
    serde_json::from_slice(&body).map_err(|e| bad(format!("malformed JSON: {e}")))
}

fn doc_id(s: &str) -> Result<DocId, ApiError> {
    DocId::new(s).map_err(|e| bad(format!("invalid doc id: {e}")))
}

fn fresh_id(node: &str) -> String {
    format!("{node}-{}-{:016x}", os::now_ms(), os::random_u64())
}

/// Most readings in one batched ingest request (a JSON array or NDJSON lines).
pub const INGEST_BATCH_MAX: usize = 1000;

/// One reading of an ingest request, parsed: its document, id and reading.
fn parse_reading(st: &AppState, v: &Value) -> Result<(DocId, Reading), ApiError> {
    let obj = v
        .as_object()
        .ok_or_else(|| bad("a reading must be a JSON object"))?;
    for k in obj.keys() {
        if !matches!(k.as_str(), "doc" | "id" | "ts" | "fields") {
            return Err(bad(format!(
                "unknown key {k:?}; expected doc, id, ts, fields"
            )));
        }
    }
    let doc = doc_id(
        obj.get("doc")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("\"doc\" (a string) is required"))?,
    )?;
    let id = match obj.get("id") {
        None | Some(Value::Null) => fresh_id(st.node.name().as_str()),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(bad("\"id\" must be a string")),
    };
    let ts = match obj.get("ts") {
        None | Some(Value::Null) => os::now_ms() as i64,
        Some(t) => t
            .as_i64()
            .ok_or_else(|| bad("\"ts\" must be an integer (ms since the Unix epoch)"))?,
    };
    let fields = obj
        .get("fields")
        .ok_or_else(|| bad("\"fields\" (an object) is required"))?;
    let reading = Reading::from_json(id, ts, fields).map_err(|e| bad(e.to_string()))?;
    Ok((doc, reading))
}

/// The answer for one reading the core took: `{"doc", "id", "duplicate"}`, or 409 for an id
/// already held with other content.
fn ingest_answer(doc: &DocId, id: &str, out: Option<&IngestOutcome>) -> Result<Value, ApiError> {
    let duplicate = match out {
        Some(IngestOutcome::Inserted) => false,
        Some(IngestOutcome::Duplicate) => true,
        Some(IngestOutcome::Conflict) => {
            return Err(ApiError(
                StatusCode::CONFLICT,
                format!("reading {id:?} already exists in {doc} with other content"),
            ))
        }
        None => {
            return Err(ApiError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "no outcome".into(),
            ))
        }
    };
    Ok(json!({"doc": doc.as_str(), "id": id, "duplicate": duplicate}))
}

/// What an ingest request holds: one reading (a JSON object), or a batch (a JSON array, or
/// `application/x-ndjson`: one JSON object per line).
enum IngestBody {
    One(Value),
    Batch(Vec<Value>),
}

fn ingest_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<IngestBody, ApiError> {
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .is_some_and(super::guard::is_ndjson);
    if !ndjson {
        return match parse_body(body)? {
            Value::Array(items) => Ok(IngestBody::Batch(items)),
            v @ Value::Object(_) => Ok(IngestBody::One(v)),
            _ => Err(bad(
                "body must be a JSON object (one reading) or an array of readings",
            )),
        };
    }
    let body = body?;
    let mut items = Vec::new();
    for (n, line) in body.split(|&b| b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if items.len() == INGEST_BATCH_MAX {
            return Err(too_many());
        }
        items.push(
            serde_json::from_slice(line)
                .map_err(|e| bad(format!("malformed JSON on line {}: {e}", n + 1)))?,
        );
    }
    Ok(IngestBody::Batch(items))
}

fn too_many() -> ApiError {
    bad(format!("a batch holds at most {INGEST_BATCH_MAX} readings"))
}

async fn ingest(
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let started = Instant::now();
    let items = match ingest_body(&headers, body)? {
        IngestBody::One(v) => {
            let (doc, reading) = parse_reading(&st, &v)?;
            let id = reading.id.clone();
            let out = st.node.ingest_async(doc.clone(), vec![reading]).await?;
            metrics::counter!("edgesync_ingest_readings_total").increment(1);
            metrics::histogram!("edgesync_ingest_seconds").record(started.elapsed().as_secs_f64());
            return ingest_answer(&doc, &id, out.first()).map(Json);
        }
        IngestBody::Batch(items) => items,
    };
    if items.len() > INGEST_BATCH_MAX {
        return Err(too_many());
    }
    let n = items.len();
    let results = ingest_batch(&st, items).await;
    metrics::counter!("edgesync_ingest_readings_total").increment(n as u64);
    metrics::histogram!("edgesync_ingest_seconds").record(started.elapsed().as_secs_f64());
    Ok(Json(json!({ "results": results })))
}

/// A per-reading error inside a batch's answer.
fn item_error(e: ApiError, doc: Option<&DocId>, id: Option<&str>) -> Value {
    let mut v = json!({"status": e.0.as_u16(), "error": e.1});
    if let Some(doc) = doc {
        v["doc"] = json!(doc.as_str());
    }
    if let Some(id) = id {
        v["id"] = json!(id);
    }
    v
}

/// Ingests a batch: readings of one document go to the core together (one commit, one
/// fsync shared with every other document's), all documents at once; answered, in order,
/// once everything is durable. A document whose readings the core refuses together (one of
/// them expired, say) has them ingested one by one, so that each reading gets its own answer.
async fn ingest_batch(st: &AppState, items: Vec<Value>) -> Vec<Value> {
    let mut results: Vec<Option<Value>> = vec![None; items.len()];
    let mut groups: std::collections::BTreeMap<DocId, Vec<(usize, Reading)>> = Default::default();
    for (i, v) in items.iter().enumerate() {
        match parse_reading(st, v) {
            Ok((doc, r)) => groups.entry(doc).or_default().push((i, r)),
            Err(e) => results[i] = Some(item_error(e, None, v.get("id").and_then(Value::as_str))),
        }
    }
    let tasks: Vec<_> = groups
        .into_iter()
        .map(|(doc, part)| {
            let node = st.node.clone();
            tokio::spawn(async move {
                let readings: Vec<Reading> = part.iter().map(|(_, r)| r.clone()).collect();
                let together = node.ingest_async(doc.clone(), readings).await;
                let outs: Vec<(usize, Value)> = match together {
                    Ok(out) => part
                        .iter()
                        .zip(out.iter().map(Some).chain(std::iter::repeat(None)))
                        .map(|((i, r), o)| {
                            let v = ingest_answer(&doc, &r.id, o)
                                .unwrap_or_else(|e| item_error(e, Some(&doc), Some(&r.id)));
                            (*i, v)
                        })
                        .collect(),
                    Err(e) if part.len() == 1 => {
                        let (i, r) = &part[0];
                        vec![(*i, item_error(e.into(), Some(&doc), Some(&r.id)))]
                    }
                    Err(_) => {
                        let mut outs = Vec::new();
                        for (i, r) in &part {
                            let v = match node.ingest_async(doc.clone(), vec![r.clone()]).await {
                                Ok(out) => ingest_answer(&doc, &r.id, out.first()),
                                Err(e) => Err(e.into()),
                            };
                            outs.push((
                                *i,
                                v.unwrap_or_else(|e| item_error(e, Some(&doc), Some(&r.id))),
                            ));
                        }
                        outs
                    }
                };
                outs
            })
        })
        .collect();
    for t in tasks {
        match t.await {
            Ok(outs) => {
                for (i, v) in outs {
                    results[i] = Some(v);
                }
            }
            Err(e) => tracing::error!(error = %e, "an ingest task failed"),
        }
    }
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| json!({"status": 500, "error": "the reading was not processed"}))
        })
        .collect()
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DocQuery {
    conflicts: Option<bool>,
    from: Option<i64>,
    to: Option<i64>,
    limit: Option<usize>,
    after: Option<String>,
}

impl DocQuery {
    /// The range asked for, if any range parameter was given.
    fn range(&self) -> Result<Option<Range>, ApiError> {
        if self.from.is_none() && self.to.is_none() && self.limit.is_none() && self.after.is_none()
        {
            return Ok(None);
        }
        let limit = self.limit.unwrap_or(stream::PAGE_DEFAULT);
        if !(1..=stream::PAGE_MAX).contains(&limit) {
            return Err(bad(format!("limit must be 1 to {}", stream::PAGE_MAX)));
        }
        let after = self
            .after
            .as_deref()
            .map(Cursor::decode)
            .transpose()
            .map_err(|e| bad(format!("after: {e}")))?;
        Ok(Some(Range {
            from_ms: self.from,
            to_ms: self.to,
            after,
            limit,
        }))
    }
}

async fn get_doc(
    State(st): State<AppState>,
    Path(doc): Path<String>,
    q: Result<Query<DocQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    if let Some(d) = doc.strip_suffix("/events") {
        return match doc_id(d) {
            Ok(d) => events(st, d).await.into_response(),
            Err(e) => e.into_response(),
        };
    }
    if let Some(d) = doc.strip_suffix("/latest") {
        return latest(st, d).await.into_response();
    }
    let r: ApiResult = async {
        let Query(q) = q.map_err(|e| bad(e.body_text()))?;
        let doc = doc_id(&doc)?;
        if let Some(range) = q.range()? {
            if q.conflicts.is_some() {
                return Err(bad("conflicts does not go with a range of a stream"));
            }
            return match st.node.read_range_async(doc.clone(), range).await? {
                Some(page) => Ok(Json(page.to_json())),
                None => Err(ApiError(StatusCode::NOT_FOUND, format!("no stream {doc}"))),
            };
        }
        match st
            .node
            .json_async(doc.clone(), q.conflicts.unwrap_or(false))
            .await?
        {
            Some(v) => Ok(Json(v)),
            None => Err(ApiError(
                StatusCode::NOT_FOUND,
                format!("no document {doc}"),
            )),
        }
    }
    .await;
    r.into_response()
}

async fn latest(st: AppState, stream: &str) -> ApiResult {
    let stream = doc_id(stream)?;
    match st.node.latest_async(stream.clone()).await? {
        Some(Some(r)) => Ok(Json(stream::latest_json(&r))),
        Some(None) => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("stream {stream} holds no readings"),
        )),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("no stream {stream}"),
        )),
    }
}

async fn events(
    st: AppState,
    doc: DocId,
) -> Sse<impl tokio_stream::Stream<Item = Result<SseEvent, Infallible>>> {
    let want = doc.to_string();
    // Subscribed before the first byte goes out: a client that has read `ready` misses no
    // change after it.
    let ready = tokio_stream::once(Ok(SseEvent::default().event("ready").data("{}")));
    let stream =
        tokio_stream::wrappers::BroadcastStream::new(st.node.subscribe()).filter_map(move |ev| {
            match ev {
                Ok(ev) if ev.doc == want => Some(Ok(SseEvent::default()
                    .event("change")
                    .data(serde_json::to_string(&ev).unwrap_or_default()))),
                Ok(_) => None,
                Err(_) => Some(Ok(SseEvent::default().event("lagged").data("{}"))),
            }
        });
    Sse::new(ready.chain(stream)).keep_alive(KeepAlive::default())
}

/// Events a feed page holds unless `limit` says otherwise.
const FEED_PAGE_DEFAULT: usize = 1_000;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedQuery {
    after: Option<String>,
    limit: Option<usize>,
    docs: Option<String>,
}

/// A feed request's parameters, parsed: `after` (a cursor), `limit`, `docs` (a pattern).
fn feed_params(
    after: Option<&str>,
    limit: Option<usize>,
    docs: Option<&str>,
) -> Result<(Option<edgesync_proto::Cursor>, usize, Option<DocPattern>), ApiError> {
    let after = after.map(str::parse).transpose().map_err(bad)?;
    let limit = limit.unwrap_or(FEED_PAGE_DEFAULT);
    if !(1..=crate::node::FEED_PAGE_MAX).contains(&limit) {
        return Err(bad(format!(
            "limit must be 1 to {}",
            crate::node::FEED_PAGE_MAX
        )));
    }
    let docs = docs.map(DocPattern::new).transpose().map_err(bad)?;
    Ok((after, limit, docs))
}

/// One feed event as the API shows it: a reading `{"cursor", "doc", "id", "ts", "fields",
/// "origin"}` (a bucket's reading names its stream), or a generic document's change `{"cursor",
/// "doc", "kind": "doc", "origin"}`; `origin` is `local` or the peer it came from.
pub fn feed_event_json(cursor: &edgesync_proto::Cursor, e: &edgesync_proto::FeedEvent) -> Value {
    let doc = stream::Bucket::parse(&e.doc).map_or(e.doc.to_string(), |b| b.stream.to_string());
    let origin = e
        .origin
        .as_ref()
        .map_or("local".to_string(), |o| o.to_string());
    match &e.reading {
        Some((id, body)) => match Reading::decode(id, body) {
            Ok(r) => json!({
                "cursor": cursor.to_string(),
                "doc": doc,
                "id": r.id,
                "ts": r.ts_ms,
                "fields": r.fields_json(),
                "origin": origin,
            }),
            // Stored readings were checked before they were stored; this shows the bytes.
            Err(err) => json!({
                "cursor": cursor.to_string(),
                "doc": doc,
                "id": id,
                "body": body,
                "invalid": err.to_string(),
                "origin": origin,
            }),
        },
        None => json!({
            "cursor": cursor.to_string(),
            "doc": doc,
            "kind": "doc",
            "origin": origin,
        }),
    }
}

fn gone_message(oldest: &edgesync_proto::Cursor) -> String {
    format!("the feed no longer holds what follows this cursor (it was trimmed, or the node's store was restored or replaced); resume from {oldest}")
}

async fn feed(
    State(st): State<AppState>,
    q: Result<Query<FeedQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let params = q
        .map_err(|e| bad(e.body_text()))
        .and_then(|Query(q)| feed_params(q.after.as_deref(), q.limit, q.docs.as_deref()));
    let (after, limit, docs) = match params {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    match st.node.feed(after, limit, docs).await {
        Ok(page) => Json(json!({
            "events": page.events.iter().map(|(c, e)| feed_event_json(c, e)).collect::<Vec<_>>(),
            "next": page.next.to_string(),
        }))
        .into_response(),
        // 410 carries the oldest cursor to resume from.
        Err(FeedError::Gone { oldest }) => (
            StatusCode::GONE,
            Json(json!({"error": gone_message(&oldest), "oldest": oldest.to_string()})),
        )
            .into_response(),
        Err(FeedError::Core(core)) => {
            ApiError(core_status(&core), error_chain(&core)).into_response()
        }
        Err(FeedError::Stopped) => {
            ApiError(StatusCode::SERVICE_UNAVAILABLE, "node stopped".into()).into_response()
        }
    }
}

/// The feed as server-sent events: each event's `id:` is its cursor, its `event:` `reading`
/// or `doc`, its data the JSON of [`feed_event_json`]. Resumes after `Last-Event-ID` (or
/// `?after=`); without either, from the oldest event held. Waits for new events at the head;
/// a cursor the feed no longer holds ends the stream with one `gone` event naming the oldest.
async fn feed_stream(
    State(st): State<AppState>,
    headers: HeaderMap,
    q: Result<Query<FeedQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let parsed = (|| {
        let Query(q) = q.map_err(|e| bad(e.body_text()))?;
        let last = headers
            .get("last-event-id")
            .map(|v| v.to_str().map_err(|_| bad("Last-Event-ID is not text")))
            .transpose()?;
        feed_params(last.or(q.after.as_deref()), q.limit, q.docs.as_deref())
    })();
    let (mut after, limit, docs) = match parsed {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<SseEvent, Infallible>>(64);
    let node = st.node.clone();
    tokio::spawn(async move {
        let mut head = node.feed_head();
        loop {
            let page = match node.feed(after, limit, docs.clone()).await {
                Ok(p) => p,
                Err(FeedError::Gone { oldest }) => {
                    let data = json!({"oldest": oldest.to_string()}).to_string();
                    let _ = tx
                        .send(Ok(SseEvent::default().event("gone").data(data)))
                        .await;
                    return;
                }
                Err(_) => return,
            };
            let full = page.events.len() == limit;
            for (c, e) in &page.events {
                let kind = if e.reading.is_some() {
                    "reading"
                } else {
                    "doc"
                };
                let ev = SseEvent::default()
                    .id(c.to_string())
                    .event(kind)
                    .data(feed_event_json(c, e).to_string());
                if tx.send(Ok(ev)).await.is_err() {
                    return;
                }
            }
            let moved = after != Some(page.next);
            after = Some(page.next);
            if full || (moved && page.next < *head.borrow_and_update()) {
                continue;
            }
            if page.next >= *head.borrow_and_update() {
                tokio::select! {
                    changed = head.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        }
    });
    Sse::new(tokio_stream::wrappers::ReceiverStream::new(rx))
        .keep_alive(KeepAlive::default())
        .into_response()
}

async fn patch_doc(
    State(st): State<AppState>,
    Path(doc): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let doc = doc_id(&doc)?;
    let patch = parse_body(body)?;
    let changed = st.node.patch_async(doc.clone(), patch).await?;
    Ok(Json(json!({"doc": doc.as_str(), "changed": changed})))
}

async fn docs(State(st): State<AppState>) -> ApiResult {
    let docs = st.node.docs_async().await?;
    Ok(Json(json!({
        "docs": docs.iter().map(|d| json!({"doc": d.as_str()})).collect::<Vec<_>>()
    })))
}

async fn status(State(st): State<AppState>) -> ApiResult {
    let peers = st.mesh.status();
    let s = st.node.status_async(st.mesh.peer_names()).await?;
    let peers: Vec<Value> = peers
        .into_iter()
        .map(|p| {
            let mut v = serde_json::to_value(&p).unwrap_or_default();
            v["unacked_changes"] = json!(s.unacked.get(&p.name).copied().unwrap_or(0));
            v
        })
        .collect();
    Ok(Json(json!({
        "name": s.name,
        "healthy": s.healthy && st.node.is_healthy(),
        "core_alive": st.node.is_core_alive(),
        "uptime_secs": st.node.uptime().as_secs_f64(),
        "docs": s.docs,
        "commits": s.commits,
        "durable_commits": s.durable_commits,
        "pending_changes": s.pending_changes,
        "journal_readings": s.journal_readings,
        "actor_slots": s.actor_slots,
        "peers": peers,
        "sessions": s.sessions,
        "totals": s.totals,
        "pruning": s.pruning,
        "refused_sessions": s.refused_sessions,
        "refused_as_copy": s.refused_as_copy,
        "rejected_connections": st.mesh.endpoint().rejections(),
        "feed_head": st.node.feed_head().borrow().to_string(),
        "sinks": st.sinks.get(),
    })))
}

async fn healthz(State(st): State<AppState>) -> Response {
    let problem = if !st.node.is_core_alive() {
        Some("core thread stopped; restart the node")
    } else if !st.node.is_healthy() {
        Some("store failed; restart the node")
    } else {
        None
    };
    match problem {
        None => Json(json!({"healthy": true, "core_alive": true})).into_response(),
        Some(why) => ApiError(StatusCode::SERVICE_UNAVAILABLE, why.into()).into_response(),
    }
}

async fn metrics_text(State(st): State<AppState>) -> Response {
    if let Ok(s) = st.node.status_async(st.mesh.peer_names()).await {
        let t = &s.totals;
        for (name, v) in [
            ("edgesync_frames_in_total", t.frames_in),
            ("edgesync_frames_out_total", t.frames_out),
            ("edgesync_bytes_in_total", t.bytes_in),
            ("edgesync_bytes_out_total", t.bytes_out),
            ("edgesync_changes_sent_total", t.changes_sent),
            ("edgesync_changes_received_total", t.changes_received),
            ("edgesync_changes_applied_total", t.changes_applied),
            ("edgesync_changes_duplicate_total", t.changes_duplicate),
            ("edgesync_snapshots_sent_total", t.snapshots_sent),
            ("edgesync_snapshots_received_total", t.snapshots_received),
        ] {
            metrics::counter!(name).absolute(v);
        }
        for (peer, n) in &s.unacked {
            metrics::gauge!("edgesync_peer_unacked_changes", "peer" => peer.clone()).set(*n as f64);
        }
        metrics::gauge!("edgesync_docs").set(s.docs as f64);
        metrics::gauge!("edgesync_pending_changes").set(s.pending_changes as f64);
        metrics::gauge!("edgesync_journal_readings").set(s.journal_readings as f64);
        if let Some(left) = s.actor_slots.left {
            metrics::gauge!("edgesync_actor_slots_left").set(f64::from(left));
        }
        metrics::gauge!("edgesync_actor_slot_settled").set(if s.actor_slots.settled {
            1.0
        } else {
            0.0
        });
        metrics::gauge!("edgesync_prune_waiting_buckets").set(s.pruning.waiting as f64);
    }
    let peers = st.mesh.status();
    metrics::gauge!("edgesync_peers_connected")
        .set(peers.iter().filter(|p| p.connected).count() as f64);
    for p in &peers {
        metrics::gauge!("edgesync_peer_connected", "peer" => p.name.clone()).set(if p.connected {
            1.0
        } else {
            0.0
        });
    }
    for (kind, n) in st.mesh.endpoint().rejections() {
        metrics::counter!("edgesync_connections_rejected_total", "reason" => kind).absolute(n);
    }
    metrics::gauge!("edgesync_store_healthy").set(if st.node.is_healthy() { 1.0 } else { 0.0 });
    let mem = st.node.store_memory();
    metrics::gauge!("edgesync_store_memtable_bytes").set(mem.memtables as f64);
    metrics::gauge!("edgesync_store_block_cache_bytes").set(mem.block_cache as f64);
    metrics::gauge!("edgesync_store_table_readers_bytes").set(mem.table_readers as f64);
    metrics::counter!("edgesync_store_bytes_written_total").absolute(st.node.bytes_written());
    (
        [("content-type", "text/plain; version=0.0.4")],
        st.metrics.render(),
    )
        .into_response()
}
