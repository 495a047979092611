//! End-to-end tests of the `edgesync` daemon: real processes, real RocksDB, real QUIC with
//! certificates made by `edgesync pki`, talking over loopback; partitions are real cuts of UDP
//! traffic by a relay between the processes.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use edgesync::daemon::local::LocalFleet;
use edgesync::relay::UdpRelay;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_edgesync");

/// Port 0: the node binds a port the system chooses and reports it on its ready line.
fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn cli(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().expect("run edgesync")
}

/// Runs the CLI and requires success.
fn cli_ok(args: &[&str]) -> std::process::Output {
    let out = cli(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "edgesync {args:?}: {err}");
    out
}

/// A fleet CA and certificates for `nodes` (name, role), made with the CLI; gateways and
/// edge nodes are at site `site-a`.
fn fleet(dir: &Path, nodes: &[(&str, &str)]) -> PathBuf {
    let sited: Vec<(&str, &str, Option<&str>)> = nodes
        .iter()
        .map(|(n, r)| (*n, *r, (*r != "cloud").then_some("site-a")))
        .collect();
    fleet_at(dir, &sited)
}

/// A fleet CA and certificates for `nodes` (name, role, site), made with the CLI.
fn fleet_at(dir: &Path, nodes: &[(&str, &str, Option<&str>)]) -> PathBuf {
    let pki = dir.join("pki");
    cli_ok(&["pki", "init", "--dir", pki.to_str().unwrap()]);
    for (name, role, site) in nodes {
        let mut args = vec![
            "pki",
            "issue",
            "--dir",
            pki.to_str().unwrap(),
            "--name",
            name,
            "--role",
            role,
        ];
        if let Some(site) = site {
            args.extend(["--site", site]);
        }
        cli_ok(&args);
    }
    pki
}

struct NodeSpec<'a> {
    name: &'a str,
    /// Listens for QUIC (on a port it chooses and reports).
    listen: bool,
    peers: Vec<(&'a str, SocketAddr)>,
    /// Short timeouts so that a cut drops the link within the test.
    extra: &'a str,
}

impl<'a> NodeSpec<'a> {
    /// A node that neither listens nor dials, with default settings.
    fn named(name: &'a str) -> NodeSpec<'a> {
        NodeSpec {
            name,
            listen: false,
            peers: vec![],
            extra: "",
        }
    }
}

/// A cloud node listening for QUIC, with short timeouts; and its QUIC address.
fn fast_cloud(dir: &Path, pki: &Path) -> (Node, SocketAddr) {
    let spec = NodeSpec {
        listen: true,
        extra: FAST,
        ..NodeSpec::named("cloud")
    };
    let cloud = Node::start(dir, pki, spec);
    let quic = cloud.quic.expect("the cloud listens");
    (cloud, quic)
}

/// A node `name` dialling the cloud at `quic`, with short timeouts.
fn fast_gateway(dir: &Path, pki: &Path, name: &str, quic: SocketAddr) -> Node {
    Node::start(
        dir,
        pki,
        NodeSpec {
            peers: vec![("cloud", quic)],
            extra: FAST,
            ..NodeSpec::named(name)
        },
    )
}

/// A running `edgesync run` process.
struct Node {
    name: String,
    config: PathBuf,
    /// The API's URL, as the running process reported it.
    api: String,
    /// Where the running process listens for QUIC (a restart binds a new port).
    quic: Option<SocketAddr>,
    child: Option<Child>,
    log: PathBuf,
}

impl Node {
    fn write_config(dir: &Path, pki: &Path, spec: &NodeSpec<'_>) -> PathBuf {
        let data = dir.join("data").join(spec.name);
        let cfg = LocalFleet::existing(pki).config_toml(
            spec.name,
            &data,
            any_port(),
            spec.listen.then(any_port),
            &spec.peers,
            spec.extra,
        );
        let path = dir.join(format!("{}.toml", spec.name));
        std::fs::write(&path, cfg).unwrap();
        path
    }

    fn start(dir: &Path, pki: &Path, spec: NodeSpec<'_>) -> Node {
        let config = Node::write_config(dir, pki, &spec);
        let mut n = Node {
            name: spec.name.to_string(),
            config,
            api: String::new(),
            quic: None,
            child: None,
            log: dir.join(format!("{}.log", spec.name)),
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut child = Command::new(BIN)
            .args(["run", "--config", self.config.to_str().unwrap()])
            .env("LOG_LEVEL", "info")
            .env_remove("EDGE_STORAGE_DIR")
            .env_remove("METRICS_PORT")
            .env_remove("SYNC_RETRY_BASE_MS")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn edgesync run");
        // The node prints one line once it serves, with the addresses it bound; the reader
        // then drains stdout to the end so that the node never writes into a closed pipe.
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            for _ in lines {}
        });
        self.child = Some(child);
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => {
                let st = self.child.as_mut().unwrap().try_wait().unwrap();
                panic!(
                    "{} did not report ready ({st:?}): {}",
                    self.name,
                    self.logs()
                );
            }
        };
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("{}: ready line {line:?}: {e}", self.name));
        assert_eq!(ready["ready"], true, "{line}");
        self.api = format!("http://{}", ready["api"].as_str().expect("api address"));
        self.quic = ready["quic"]
            .as_str()
            .map(|a| a.parse().expect("quic address"));
        assert_eq!(
            try_request("GET", &format!("{}/healthz", self.api), None)
                .unwrap()
                .0,
            200,
            "{} serves once ready",
            self.name
        );
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill9(&mut self) {
        let mut c = self.child.take().expect("running");
        c.kill().unwrap();
        c.wait().unwrap();
    }

    /// SIGTERM; returns the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let ok = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        let start = Instant::now();
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return st;
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{} did not stop on SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn ingest(&self, doc: &str, id: &str, ts: i64, temp: f64) -> Value {
        request(
            "POST",
            &format!("{}/v1/ingest", self.api),
            Some(json!({"doc": doc, "id": id, "ts": ts, "fields": {"temp": temp}})),
        )
    }

    fn doc(&self, doc: &str) -> Option<Value> {
        match try_request("GET", &format!("{}/v1/docs/{doc}", self.api), None).unwrap() {
            (200, v) => Some(v),
            (404, _) => None,
            (s, v) => panic!("GET {doc} on {}: {s} {v}", self.name),
        }
    }

    fn reading_ids(&self, doc: &str) -> BTreeSet<String> {
        self.doc(doc)
            .and_then(|v| {
                v["readings"]
                    .as_object()
                    .map(|m| m.keys().cloned().collect())
            })
            .unwrap_or_default()
    }

    /// The reading ids of `doc`, asked with the token of the API token test.
    fn reading_ids_with_token(&self, doc: &str) -> BTreeSet<String> {
        let (status, v) = raw_with(
            "GET",
            &format!("{}/v1/docs/{doc}", self.api),
            &[("authorization", "Bearer s3cret-token-0123456789")],
            vec![],
        );
        if status == 404 {
            return BTreeSet::new();
        }
        assert_eq!(status, 200, "{v}");
        v["readings"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    fn status(&self) -> Value {
        request("GET", &format!("{}/v1/status", self.api), None)
    }

    /// Waits until the node knows its actor slot: a new node that dials peers learns it from
    /// the first one it reaches, and folds and patches nothing before.
    fn wait_settled(&self) {
        wait_for(
            &format!("{} to learn its actor slot", self.name),
            Duration::from_secs(30),
            || self.status()["actor_slots"]["settled"] == true,
        );
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(30)))
        .http_status_as_error(false)
        .build()
        .into()
}

/// One request; the status and the JSON answer.
fn try_request(method: &str, url: &str, body: Option<Value>) -> Result<(u16, Value), String> {
    let a = agent();
    let r = match (method, body) {
        ("POST", Some(b)) => a.post(url).send_json(b),
        ("PATCH", Some(b)) => a.patch(url).send_json(b),
        _ => a.get(url).call(),
    }
    .map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    let text = r.into_body().read_to_string().map_err(|e| e.to_string())?;
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok((status, v))
}

fn request(method: &str, url: &str, body: Option<Value>) -> Value {
    match try_request(method, url, body) {
        Ok((200, v)) => v,
        other => panic!("{method} {url}: {other:?}"),
    }
}

/// Raw bytes to an endpoint: the status and the JSON answer.
fn raw(method: &str, url: &str, content_type: &str, body: Vec<u8>) -> (u16, Value) {
    raw_with(method, url, &[("content-type", content_type)], body)
}

/// Raw bytes with these headers: the status and the JSON answer.
fn raw_with(method: &str, url: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, Value) {
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = agent().run(req.body(body).unwrap()).unwrap();
    let status = r.status().as_u16();
    let text = r.into_body().read_to_string().unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn wait_for(what: &str, within: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

fn peer_connected(n: &Node, peer: &str) -> bool {
    n.status()["peers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|p| p["name"] == peer && p["connected"] == true)
}

const FAST: &str = "[sync]\nretry_base_ms = 200\nretry_cap_ms = 2000\nkeep_alive_ms = 500\nidle_timeout_ms = 2000\n";

/// The seed's partition test, over real processes: disconnect a gateway, ingest 50 readings on
/// each side (and five readings that arrive on both sides), reconnect, and every reading is on
/// both nodes exactly once within the bound the reconnection policy promises.
#[test]
fn partition_then_heal_converges_with_every_reading_once() {
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet(dir.path(), &[("cloud", "cloud"), ("gw-1", "gateway")]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (cloud, cloud_quic) = fast_cloud(dir.path(), &pki);
    let relay = rt.block_on(UdpRelay::start(cloud_quic)).unwrap();
    let gw = Node::start(
        dir.path(),
        &pki,
        NodeSpec {
            peers: vec![("cloud", relay.addr)],
            extra: FAST,
            ..NodeSpec::named("gw-1")
        },
    );
    let doc = "site-a/line-1/temp";
    let t0 = 1_700_000_000_000i64;
    for i in 0..10 {
        gw.ingest(doc, &format!("before-{i}"), t0 + i, 20.0);
    }
    wait_for(
        "the first readings on the cloud",
        Duration::from_secs(30),
        || cloud.reading_ids(doc).len() == 10,
    );

    relay.cut();
    // Past the idle timeout: the link is really gone and the gateway is redialling.
    wait_for(
        "the gateway to see the link down",
        Duration::from_secs(20),
        || !peer_connected(&gw, "cloud"),
    );
    let mut expected: BTreeSet<String> = cloud.reading_ids(doc);
    for i in 0..50 {
        let a = gw.ingest(doc, &format!("gw-{i}"), t0 + 100 + i, 21.0);
        assert_eq!(a["duplicate"], false);
        let b = cloud.ingest(doc, &format!("cloud-{i}"), t0 + 100 + i, 22.0);
        assert_eq!(b["duplicate"], false);
        expected.insert(format!("gw-{i}"));
        expected.insert(format!("cloud-{i}"));
    }
    for i in 0..5 {
        gw.ingest(doc, &format!("both-{i}"), t0 + 200 + i, 23.0);
        cloud.ingest(doc, &format!("both-{i}"), t0 + 200 + i, 23.0);
        expected.insert(format!("both-{i}"));
    }
    // A retried ingest is acknowledged as a duplicate, not stored twice.
    assert_eq!(gw.ingest(doc, "gw-0", t0 + 100, 21.0)["duplicate"], true);
    assert_eq!(gw.reading_ids(doc).len(), 10 + 50 + 5);
    assert_eq!(cloud.reading_ids(doc).len(), 10 + 50 + 5);
    let unacked = gw.status()["peers"][0]["unacked_changes"].as_u64().unwrap();
    assert!(unacked > 0, "the gateway knows the cloud lacks its changes");

    relay.heal();
    let took = wait_for(
        "convergence after the heal",
        Duration::from_secs(20),
        || gw.reading_ids(doc) == expected && cloud.reading_ids(doc) == expected,
    );
    eprintln!("converged {} ms after the heal", took.as_millis());
    assert_eq!(expected.len(), 10 + 50 + 50 + 5);
    assert_eq!(gw.doc(doc), cloud.doc(doc), "identical views");
    let latest = cloud.doc(doc).unwrap()["latest"]["id"].clone();
    assert_eq!(latest, "both-4");
    wait_for("the acknowledgements", Duration::from_secs(10), || {
        gw.status()["peers"][0]["unacked_changes"] == 0
    });
    // The CLI sees the same document.
    let out = cli(&["get", "--api", &gw.api, "--doc", doc]);
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["readings"].as_object().unwrap().len(), expected.len());
    drop(relay);
}

/// Edge → gateway → cloud: the edge only dials the gateway, the gateway dials the cloud, and
/// changes travel both ways through the middle; apps can subscribe to a document's changes.
// A gateway that joins after the cloud wrote a document receives it whole, in its saved form
// (a snapshot, PROTOCOL.md §5.6), over QUIC into its store, and holds what the cloud holds,
// also after SIGKILL and a restart.
#[test]
fn a_new_gateway_receives_a_document_whole() {
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet(dir.path(), &[("cloud", "cloud"), ("gw-1", "gateway")]);
    let (cloud, quic) = fast_cloud(dir.path(), &pki);
    let url = format!("{}/v1/docs/site-a/apps/settings", cloud.api);
    for k in 0..40 {
        let patch = json!({ format!("k{}", k % 7): k, "note": format!("revision {k}") });
        let (s, v) = try_request("PATCH", &url, Some(patch)).unwrap();
        assert_eq!(s, 200, "{v}");
    }
    let want = cloud.doc("site-a/apps/settings").expect("written");
    let mut gw = fast_gateway(dir.path(), &pki, "gw-1", quic);
    wait_for(
        "the document on the new gateway",
        Duration::from_secs(30),
        || gw.doc("site-a/apps/settings").as_ref() == Some(&want),
    );
    let got = gw.status()["totals"].clone();
    assert!(got["snapshots_received"].as_u64().unwrap() >= 1, "{got}");
    assert_eq!(got["changes_applied"].as_u64(), Some(40), "{got}");
    let sent = cloud.status()["totals"].clone();
    assert!(sent["snapshots_sent"].as_u64().unwrap() >= 1, "{sent}");
    gw.kill9();
    gw.spawn();
    assert_eq!(gw.doc("site-a/apps/settings"), Some(want));
}

#[test]
fn changes_relay_across_three_hops_and_events_stream() {
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet(
        dir.path(),
        &[("cloud", "cloud"), ("gw-1", "gateway"), ("edge-1", "edge")],
    );
    let cloud = Node::start(
        dir.path(),
        &pki,
        NodeSpec {
            listen: true,
            ..NodeSpec::named("cloud")
        },
    );
    let gw = Node::start(
        dir.path(),
        &pki,
        NodeSpec {
            listen: true,
            peers: vec![("cloud", cloud.quic.unwrap())],
            ..NodeSpec::named("gw-1")
        },
    );
    let gw_quic = gw.quic.unwrap();
    let edge = Node::start(
        dir.path(),
        &pki,
        NodeSpec {
            peers: vec![("gw-1", gw_quic)],
            ..NodeSpec::named("edge-1")
        },
    );
    // Subscribe on the cloud before the edge writes.
    let events_url = format!("{}/v1/docs/site-a/apps/settings/events", cloud.api);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = agent().get(&events_url).call().unwrap();
        let mut lines = BufReader::new(r.into_body().into_reader()).lines();
        let mut event = String::new();
        while let Some(Ok(line)) = lines.next() {
            if let Some(name) = line.strip_prefix("event:") {
                event = name.trim().to_string();
            } else if let Some(data) = line.strip_prefix("data:") {
                let _ = tx.send((event.clone(), data.trim().to_string()));
            }
        }
    });
    // The stream says when the subscription is live; nothing is written before that.
    let (first, _) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(first, "ready");

    // A new edge patches once it knows its actor slot (until then: 503, see slots_e2e).
    edge.wait_settled();
    edge.ingest("site-a/edge-1/vibration", "v-1", 1_700_000_000_000, 0.5);
    let (s, v) = try_request(
        "PATCH",
        &format!("{}/v1/docs/site-a/apps/settings", edge.api),
        Some(json!({"threshold": 4.5, "mode": "eco"})),
    )
    .unwrap();
    assert_eq!(s, 200, "{v}");
    wait_for(
        "the edge's reading on the cloud",
        Duration::from_secs(30),
        || cloud.reading_ids("site-a/edge-1/vibration").contains("v-1"),
    );
    wait_for(
        "the edge's settings on the cloud",
        Duration::from_secs(30),
        || cloud.doc("site-a/apps/settings") == Some(json!({"threshold": 4.5, "mode": "eco"})),
    );
    let (name, data) = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    assert_eq!(name, "change");
    let ev: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(ev["doc"], "site-a/apps/settings");
    assert_eq!(ev["origin"], "gw-1", "the cloud heard it from the gateway");

    // And back: the cloud's edit reaches the edge through the gateway.
    request(
        "PATCH",
        &format!("{}/v1/docs/site-a/apps/settings", cloud.api),
        Some(json!({"mode": null, "threshold": 5})),
    );
    wait_for(
        "the cloud's edit on the edge",
        Duration::from_secs(30),
        || edge.doc("site-a/apps/settings") == Some(json!({"threshold": 5})),
    );
    let docs = request("GET", &format!("{}/v1/docs", gw.api), None);
    let names: BTreeSet<&str> = docs["docs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["doc"].as_str().unwrap())
        .collect();
    // The stream is kept as one document per hour of reading time.
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains("site-a/apps/settings"), "{names:?}");
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("site-a/edge-1/vibration/_b.")),
        "{names:?}"
    );
    let metrics = agent()
        .get(&format!("{}/metrics", gw.api))
        .call()
        .unwrap()
        .into_body()
        .read_to_string()
        .unwrap();
    for m in [
        "edgesync_changes_applied_total",
        "edgesync_bytes_in_total",
        "edgesync_peer_connected",
        "edgesync_store_healthy 1",
    ] {
        assert!(metrics.contains(m), "{m} missing from:\n{metrics}");
    }
    // RocksDB's memory, within its bounds (the gateway wrote: its memtables hold something).
    let gauge = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing from:\n{metrics}"))
            .trim()
            .parse()
            .unwrap()
    };
    let memtables = gauge("edgesync_store_memtable_bytes");
    assert!(
        memtables > 0.0 && memtables <= (32 << 20) as f64,
        "{memtables}"
    );
    assert!(gauge("edgesync_store_block_cache_bytes") <= (32 << 20) as f64);
    assert_eq!(gw.status()["healthy"], true);
}

/// A gateway killed with SIGKILL while a client is ingesting loses nothing it acknowledged:
/// after the restart every acknowledged reading is there once, and reaches the cloud.
#[test]
fn sigkill_mid_ingest_loses_no_acknowledged_reading() {
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet(dir.path(), &[("cloud", "cloud"), ("gw-1", "gateway")]);
    let (cloud, cloud_quic) = fast_cloud(dir.path(), &pki);
    let mut gw = Node::start(
        dir.path(),
        &pki,
        NodeSpec {
            peers: vec![("cloud", cloud_quic)],
            extra: FAST,
            ..NodeSpec::named("gw-1")
        },
    );
    let doc = "site-a/pump-7";
    let mut acked = BTreeSet::new();
    for round in 0..3 {
        let url = format!("{}/v1/ingest", gw.api);
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let (ack_tx, ack_rx) = std::sync::mpsc::channel::<()>();
        let writer = std::thread::spawn(move || {
            let mut acked = Vec::new();
            for i in 0.. {
                if stop_rx.try_recv().is_ok() {
                    break;
                }
                let id = format!("r{round}-{i}");
                let body = json!({"doc": doc, "id": id, "ts": 1_700_000_000_000i64 + i, "fields": {"rpm": i}});
                match try_request("POST", &url, Some(body)) {
                    Ok((200, _)) => {
                        acked.push(id);
                        let _ = ack_tx.send(());
                    }
                    // A killed process answers nothing: any status but 200 is a failure.
                    Ok((status, v)) => panic!("round {round}: {id} answered {status}: {v}"),
                    // The kill: the connection is refused or reset.
                    Err(_) => break,
                }
            }
            acked
        });
        // Killed mid-stream after a different number of acknowledgements each round.
        for _ in 0..(20 + 30 * round) {
            ack_rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("round {round}: the writer stopped: {}", gw.logs()));
        }
        gw.kill9();
        let _ = stop_tx.send(());
        let ids = writer
            .join()
            .expect("the writer saw only 200s before the kill");
        acked.extend(ids);
        gw.spawn();
        let have = gw.reading_ids(doc);
        let missing: Vec<_> = acked.difference(&have).collect();
        assert!(
            missing.is_empty(),
            "round {round}: lost after SIGKILL: {missing:?}"
        );
    }
    wait_for(
        "the cloud to hold every acknowledged reading",
        Duration::from_secs(30),
        || cloud.reading_ids(doc).is_superset(&acked),
    );
    assert_eq!(cloud.doc(doc), gw.doc(doc));
    // The data directory passes the offline check after the kills.
    gw.terminate();
    cli_ok(&[
        "check",
        "--data-dir",
        dir.path().join("data/gw-1").to_str().unwrap(),
        "--name",
        "gw-1",
    ]);
}

/// A container needs no configuration file: `edgesync config check` validates the environment
/// alone and prints the effective settings, refuses a bad value with exit status 1, and
/// `edgesync run` serves from the same environment.
#[test]
fn a_node_runs_from_the_environment_alone() {
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet(dir.path(), &[("gw-1", "gateway")]);
    let file = |f: &str| pki.join(f).to_str().unwrap().to_string();
    let data = dir.path().join("data").to_str().unwrap().to_string();
    let env: Vec<(&str, String)> = vec![
        ("EDGESYNC_NAME", "gw-1".into()),
        ("EDGESYNC_DATA_DIR", data),
        ("EDGESYNC_TLS_CA", file("ca.crt")),
        ("EDGESYNC_TLS_CERT", file("gw-1.crt")),
        ("EDGESYNC_TLS_KEY", file("gw-1.key")),
        ("EDGESYNC_TLS_CRL", file("crl.pem")),
        ("EDGESYNC_API", "127.0.0.1:0".into()),
        (
            "EDGESYNC_PEERS",
            "gw-1=127.0.0.1:1, cloud=127.0.0.1:9".into(),
        ),
        ("EDGESYNC_KEEP_HOURS", "48".into()),
    ];
    let command = |args: &[&str], extra: &[(&str, &str)]| {
        let mut c = Command::new(BIN);
        c.args(args).env_remove("EDGESYNC_CONFIG");
        for (k, v) in &env {
            c.env(k, v);
        }
        for (k, v) in extra {
            c.env(k, v);
        }
        c
    };
    let out = command(&["config", "check"], &[]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON settings");
    assert_eq!(v["name"], "gw-1");
    assert_eq!(v["retention"]["keep_hours"], 48);
    assert_eq!(
        v["peers"],
        json!([{"name": "cloud", "addr": "127.0.0.1:9"}])
    );
    let out = command(
        &["config", "check"],
        &[("EDGESYNC_DURABILITY", "sometimes")],
    )
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("durability"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = command(&["config", "check"], &[("EDGESYNC_NAME", "")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("EDGESYNC_NAME"));

    // `run` from the same environment serves.
    let mut child = command(&["run"], &[("EDGESYNC_PEERS", "")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ready: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"));
    let api = format!("http://{}", ready["api"].as_str().unwrap());
    let health = try_request("GET", &format!("{api}/healthz"), None).unwrap();
    // The container health check.
    let check = cli(&["health", "--api", &api]);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(health.0, 200, "{health:?}");
    assert!(check.status.success(), "{check:?}");
    assert!(!cli(&["health", "--api", &api]).status.success());
}

/// `POST /v1/ingest` takes a batch (a JSON array, or NDJSON): one answer per reading, in
/// order, once everything is durable; a bad reading gets its own error and does not stop the
/// others; more than the batch limit is a 400.
#[test]
fn batched_ingest_answers_each_reading_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet(dir.path(), &[("gw-1", "gateway")]);
    let gw = Node::start(dir.path(), &pki, NodeSpec::named("gw-1"));
    let ingest = format!("{}/v1/ingest", gw.api);
    gw.ingest("site-a/t1", "held", 1, 1.0);
    let reading = |doc: &str, id: &str, ts: i64| json!({"doc": doc, "id": id, "ts": ts, "fields": {"temp": 2.5}});
    let batch = json!([
        reading("site-a/t1", "b-1", 10),
        reading("site-a/t2", "b-2", 11),
        {"doc": "site-a/t1", "fields": {"temp": [1]}},
        reading("site-a/t1", "b-3", 12),
        {"doc": "site-a/t1", "id": "held", "ts": 1, "fields": {"temp": 1.0}},
        {"doc": "site-a/t1", "id": "held", "ts": 1, "fields": {"temp": 9.0}},
        reading("site-b/t1", "b-4", 13),
        reading("site-a/t2", "b-5", 14),
        "not a reading",
        reading("site-a/t5", "f-1", 30),
        reading("site-a/t5", "far", edgesync_proto::stream::TS_LIMIT_MS),
        reading("site-a/t5", "f-2", 31),
    ]);
    let (status, v) = raw(
        "POST",
        &ingest,
        "application/json",
        batch.to_string().into_bytes(),
    );
    assert_eq!(status, 200, "{v}");
    let results = v["results"].as_array().expect("results");
    let ids: Vec<Option<&str>> = results.iter().map(|r| r["id"].as_str()).collect();
    assert_eq!(
        ids,
        [
            Some("b-1"),
            Some("b-2"),
            None,
            Some("b-3"),
            Some("held"),
            Some("held"),
            Some("b-4"),
            Some("b-5"),
            None,
            Some("f-1"),
            Some("far"),
            Some("f-2")
        ]
    );
    let statuses: Vec<u64> = results
        .iter()
        .map(|r| r["status"].as_u64().unwrap_or(200))
        .collect();
    assert_eq!(
        statuses,
        [200, 200, 400, 200, 200, 409, 403, 200, 400, 200, 422, 200],
        "{v}"
    );
    assert_eq!(results[0]["duplicate"], json!(false));
    assert_eq!(results[4]["duplicate"], json!(true));
    assert!(results[2]["error"].as_str().is_some_and(|e| !e.is_empty()));
    // Answered once durable: every accepted reading is there.
    let t1 = gw.reading_ids("site-a/t1");
    for id in ["held", "b-1", "b-3"] {
        assert!(t1.contains(id), "{id} in {t1:?}");
    }
    assert_eq!(
        gw.reading_ids("site-a/t2"),
        ["b-2", "b-5"].map(String::from).into()
    );
    // A document whose readings the core refuses together: each is tried alone.
    assert_eq!(
        gw.reading_ids("site-a/t5"),
        ["f-1", "f-2"].map(String::from).into()
    );

    // NDJSON: one reading per line, blank lines skipped; a malformed line refuses the request.
    let lines = format!(
        "{}\n\n{}\n",
        reading("site-a/t3", "n-1", 20),
        reading("site-a/t3", "n-2", 21)
    );
    let (status, v) = raw("POST", &ingest, "application/x-ndjson", lines.into_bytes());
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["results"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        gw.reading_ids("site-a/t3"),
        ["n-1", "n-2"].map(String::from).into()
    );
    let (status, v) = raw(
        "POST",
        &ingest,
        "application/x-ndjson",
        b"{\"doc\":\n".to_vec(),
    );
    assert_eq!(status, 400, "{v}");
    // NDJSON elsewhere is still refused.
    let (status, _) = raw(
        "PATCH",
        &format!("{}/v1/docs/site-a/app", gw.api),
        "application/x-ndjson",
        b"{}".to_vec(),
    );
    assert_eq!(status, 415);

    // Bounded: past the batch limit the whole request is refused; an empty batch is fine.
    let many: Vec<Value> = (0..1001)
        .map(|i| reading("site-a/t4", &format!("m-{i}"), i))
        .collect();
    let (status, v) = raw(
        "POST",
        &ingest,
        "application/json",
        Value::Array(many).to_string().into_bytes(),
    );
    assert_eq!(status, 400, "{v}");
    assert!(gw.reading_ids("site-a/t4").is_empty());
    let (status, v) = raw("POST", &ingest, "application/json", b"[]".to_vec());
    assert_eq!((status, v), (200, json!({"results": []})));
}

/// Hostile input to every endpoint gets a 4xx with a JSON error, and the node keeps serving;
/// SIGTERM stops it cleanly and the store reopens.
#[test]
fn bad_requests_get_clear_errors_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet(dir.path(), &[("gw-1", "gateway")]);
    let mut gw = Node::start(
        dir.path(),
        &pki,
        NodeSpec {
            listen: true,
            ..NodeSpec::named("gw-1")
        },
    );
    let api = gw.api.clone();
    let ingest = format!("{api}/v1/ingest");
    let json_ct = "application/json";
    // Ingest bodies refused with 400.
    let bad_ingests: [&[u8]; 11] = [
        b"{not json",
        b"42",
        br#"{"fields":{"t":1}}"#,
        br#"{"doc":"../etc","fields":{"t":1}}"#,
        br#"{"doc":"a//b","fields":{"t":1}}"#,
        br#"{"doc":"a","fields":{"t":{"nested":1}}}"#,
        br#"{"doc":"a","fields":{"t":[1]}}"#,
        br#"{"doc":"a","ts":"soon","fields":{"t":1}}"#,
        br#"{"doc":"a","id":7,"fields":{"t":1}}"#,
        br#"{"doc":"a","fields":{"t":1},"extra":1}"#,
        br#"{"doc":"a","fields":{"t":1e999}}"#,
    ];
    let mut cases: Vec<(&str, String, Vec<u8>, u16)> = bad_ingests
        .iter()
        .map(|b| ("POST", ingest.clone(), b.to_vec(), 400))
        .collect();
    cases.extend([
        ("POST", ingest.clone(), vec![b'x'; 300 * 1024], 413),
        (
            "POST",
            ingest.clone(),
            format!(
                r#"{{"doc":"a","fields":{{"t":"{}"}}}}"#,
                "x".repeat(100_000)
            )
            .into_bytes(),
            400,
        ),
        (
            "PATCH",
            format!("{api}/v1/docs/site-a/app"),
            b"{oops".to_vec(),
            400,
        ),
        (
            "PATCH",
            format!("{api}/v1/docs/bad%20id"),
            b"{}".to_vec(),
            400,
        ),
        ("GET", format!("{api}/v1/docs/nothing-here"), vec![], 404),
        (
            "GET",
            format!("{api}/v1/docs/a?conflicts=perhaps"),
            vec![],
            400,
        ),
        ("GET", format!("{api}/v1/nope"), vec![], 404),
        ("DELETE", format!("{api}/v1/docs/a"), vec![], 405),
    ]);
    for (method, url, body, want) in cases {
        let (status, v) = raw(method, &url, json_ct, body);
        assert_eq!(status, want, "{method} {url}: {v}");
        if status != 405 {
            assert!(
                v["error"].as_str().is_some_and(|e| !e.is_empty()),
                "{method} {url}: {v}"
            );
        }
        assert_eq!(
            try_request("GET", &format!("{api}/healthz"), None)
                .unwrap()
                .0,
            200
        );
    }
    // A reading that conflicts with a stored one of the same id is refused, not merged.
    gw.ingest("site-a/a", "x-1", 1, 1.0);
    let (status, v) = try_request(
        "POST",
        &ingest,
        Some(json!({"doc": "site-a/a", "id": "x-1", "ts": 1, "fields": {"temp": 2.0}})),
    )
    .unwrap();
    assert_eq!(status, 409, "{v}");
    // Defaults: a fresh id and the current time.
    let a = request(
        "POST",
        &ingest,
        Some(json!({"doc": "site-a/a", "fields": {"ok": true}})),
    );
    let id = a["id"].as_str().unwrap().to_string();
    assert!(gw.reading_ids("site-a/a").contains(&id));

    // The CLI: a clear message and a non-zero exit when the node is unreachable.
    let out = cli(&["status", "--api", "http://127.0.0.1:9"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the node"));
    cli_ok(&[
        "ingest",
        "--api",
        &api,
        "--doc",
        "site-a/a",
        "--id",
        "cli-1",
        "temp=21.5",
        "ok=true",
        "where=hall",
    ]);
    let v = gw.doc("site-a/a").unwrap();
    assert_eq!(
        v["readings"]["cli-1"]["fields"],
        json!({"temp": 21.5, "ok": true, "where": "hall"})
    );

    // SIGTERM: a clean exit, and the store opens again.
    let st = gw.terminate();
    assert!(st.success(), "exit status {st}: {}", gw.logs());
    gw.spawn();
    assert!(gw.reading_ids("site-a/a").contains("cli-1"));
}

/// The local API refuses what a web page in the user's browser could send it: JSON under a
/// content type a browser sends without asking (415), a Host that is not this API's (DNS
/// rebinding, 421); and with a token file, every request without the token but health and
/// metrics (401). The CLI sends the token.
#[test]
fn the_local_api_refuses_cross_site_requests_and_wants_its_token() {
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet(dir.path(), &[("gw-1", "gateway")]);
    let token_file = dir.path().join("api.token");
    std::fs::write(&token_file, "s3cret-token-0123456789\n").unwrap();
    let extra = format!(
        "api_token_file = \"{}\"\napi_hosts = [\"gw-1.example\"]\n",
        token_file.display()
    );
    let gw = Node::start(
        dir.path(),
        &pki,
        NodeSpec {
            extra: &extra,
            ..NodeSpec::named("gw-1")
        },
    );
    let api = gw.api.clone();
    let ingest = format!("{api}/v1/ingest");
    let body = br#"{"doc":"site-a/a","id":"r-1","ts":1,"fields":{"t":1}}"#.to_vec();
    let auth = ("authorization", "Bearer s3cret-token-0123456789");
    let json_ct = ("content-type", "application/json");
    for (headers, want) in [
        // No token, a wrong one, a token not given as a bearer token.
        (vec![json_ct], 401),
        (
            vec![json_ct, ("authorization", "Bearer wrong-token-0123456789")],
            401,
        ),
        (
            vec![json_ct, ("authorization", "s3cret-token-0123456789")],
            401,
        ),
        // Bodies a page may send cross-site without a preflight.
        (vec![auth, ("content-type", "text/plain")], 415),
        (
            vec![auth, ("content-type", "application/x-www-form-urlencoded")],
            415,
        ),
        (
            vec![auth, ("content-type", "multipart/form-data; boundary=x")],
            415,
        ),
        (vec![auth], 415),
        // A rebound name.
        (vec![auth, json_ct, ("host", "evil.example")], 421),
        (
            vec![auth, json_ct, ("host", "localhost.evil.example:8401")],
            421,
        ),
    ] {
        let (status, v) = raw_with("POST", &ingest, &headers, body.clone());
        assert_eq!(status, want, "{headers:?}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
    assert!(
        gw.reading_ids_with_token("site-a/a").is_empty(),
        "nothing refused was written"
    );
    // Accepted: JSON with a charset, under this API's names.
    for host in ["127.0.0.1", "localhost:1", "GW-1.example:8401"] {
        let (status, v) = raw_with(
            "POST",
            &ingest,
            &[
                auth,
                ("content-type", "application/json; charset=utf-8"),
                ("host", host),
            ],
            body.clone(),
        );
        assert_eq!(status, 200, "{host}: {v}");
    }
    let (status, v) = raw_with(
        "PATCH",
        &format!("{api}/v1/docs/site-a/app"),
        &[auth, ("content-type", "application/merge-patch+json")],
        br#"{"mode":"eco"}"#.to_vec(),
    );
    assert_eq!(status, 200, "{v}");
    // Reads need the token too; health and metrics do not.
    assert_eq!(
        raw_with("GET", &format!("{api}/v1/status"), &[], vec![]).0,
        401
    );
    assert_eq!(
        raw_with("GET", &format!("{api}/v1/docs/site-a/app"), &[auth], vec![]).0,
        200
    );
    assert_eq!(
        raw_with("GET", &format!("{api}/healthz"), &[], vec![]).0,
        200
    );
    let (status, _) = raw_with("GET", &format!("{api}/metrics"), &[], vec![]);
    assert_eq!(status, 200);
    // The CLI: refused without the token, served with it.
    let out = cli(&["status", "--api", &api]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("401"),
        "{out:?}"
    );
    let tf = token_file.to_str().unwrap();
    cli_ok(&["status", "--api", &api, "--token-file", tf]);
    cli_ok(&[
        "ingest",
        "--api",
        &api,
        "--token-file",
        tf,
        "--doc",
        "site-a/a",
        "--id",
        "cli-1",
        "t=2",
    ]);
    assert_eq!(
        gw.reading_ids_with_token("site-a/a"),
        BTreeSet::from(["r-1".to_string(), "cli-1".to_string()])
    );
}

/// `edgesync pki revoke` over real processes: within 10 s the cloud closes the revoked
/// gateway's link and refuses its handshakes, counted by reason, while the other gateway keeps
/// syncing; what the revoked gateway writes afterwards never reaches the cloud. `pki show`
/// reports the revocation.
#[test]
fn a_revoked_gateway_is_refused_while_the_others_keep_syncing() {
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet(
        dir.path(),
        &[("cloud", "cloud"), ("gw-1", "gateway"), ("gw-2", "gateway")],
    );
    let (cloud, quic) = fast_cloud(dir.path(), &pki);
    let gw = |name| fast_gateway(dir.path(), &pki, name, quic);
    let (gw1, gw2) = (gw("gw-1"), gw("gw-2"));
    let doc = "site-a/temp";
    gw1.ingest(doc, "gw1-before", 1, 20.0);
    gw2.ingest(doc, "gw2-before", 2, 20.0);
    wait_for(
        "both gateways' readings on the cloud",
        Duration::from_secs(20),
        || cloud.reading_ids(doc).len() == 2,
    );

    let out = cli_ok(&[
        "pki",
        "revoke",
        "--dir",
        pki.to_str().unwrap(),
        "--name",
        "gw-2",
        "--reason",
        "key-compromise",
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("revoked gw-2"));
    let took = wait_for("the cloud to refuse gw-2", Duration::from_secs(10), || {
        cloud.status()["rejected_connections"]["revoked"]
            .as_u64()
            .is_some_and(|n| n >= 1)
            && !peer_connected(&gw2, "cloud")
    });
    eprintln!("gw-2 refused {} ms after pki revoke", took.as_millis());
    gw2.ingest(doc, "gw2-after", 3, 21.0);
    gw1.ingest(doc, "gw1-after", 4, 21.0);
    wait_for(
        "gw-1's reading on the cloud",
        Duration::from_secs(10),
        || cloud.reading_ids(doc).contains("gw1-after"),
    );
    // gw-2 keeps redialling and is refused each time, backing off as from failed dials (a
    // refusal it learns of after its side of the handshake completed still counts as one).
    let refusals = || {
        cloud.status()["rejected_connections"]["revoked"]
            .as_u64()
            .unwrap_or(0)
    };
    let before = refusals();
    std::thread::sleep(Duration::from_secs(3));
    let during = refusals() - before;
    eprintln!("{during} refused redials in 3 s");
    assert!(during <= 8, "{during} redials in 3 s: no backoff");
    assert!(!cloud.reading_ids(doc).contains("gw2-after"));
    assert!(!peer_connected(&gw2, "cloud"));
    assert!(peer_connected(&gw1, "cloud"));
    let err = gw2.status()["peers"][0]["last_error"].to_string();
    assert!(err.contains("revoked"), "gw-2 is told why: {err}");
    assert!(
        cloud.logs().contains("revoked"),
        "the cloud logs the reason"
    );

    let show = |name: &str| -> Value {
        let cert = pki.join(format!("{name}.crt"));
        serde_json::from_slice(&cli_ok(&["pki", "show", cert.to_str().unwrap()]).stdout).unwrap()
    };
    assert_eq!(show("gw-2")["revoked"]["reason"], "key-compromise");
    assert_eq!(show("gw-1")["revoked"], false);
}

/// Write rules and residency over real processes: a site-b gateway may not write site-a
/// documents (403, nothing written); with a cloud holding both sites, site-a documents never
/// reach the site-b gateway, nor site-b's the site-a one, while each gets its own site's and
/// what the cloud writes for it.
#[test]
fn sites_write_their_own_documents_and_only_theirs_travel_to_them() {
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet_at(
        dir.path(),
        &[
            ("cloud", "cloud", None),
            ("gw-a", "gateway", Some("site-a")),
            ("gw-b", "gateway", Some("site-b")),
        ],
    );
    let (cloud, quic) = fast_cloud(dir.path(), &pki);
    let gw = |name| fast_gateway(dir.path(), &pki, name, quic);
    let (gw_a, gw_b) = (gw("gw-a"), gw("gw-b"));
    gw_a.ingest("site-a/temp", "a-1", 1, 20.0);
    gw_b.ingest("site-b/temp", "b-1", 1, 30.0);
    // A write outside its site: refused with 403 and a JSON error, nothing written.
    let (status, v) = try_request(
        "POST",
        &format!("{}/v1/ingest", gw_b.api),
        Some(json!({"doc": "site-a/temp", "id": "b-2", "ts": 2, "fields": {"t": 1}})),
    )
    .unwrap();
    assert_eq!(status, 403, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("may not write site-a"),
        "{v}"
    );
    let (status, _) = try_request(
        "PATCH",
        &format!("{}/v1/docs/site-a/config", gw_b.api),
        Some(json!({"mode": "x"})),
    )
    .unwrap();
    assert_eq!(status, 403);
    // The cloud writes for site a.
    request(
        "PATCH",
        &format!("{}/v1/docs/site-a/config", cloud.api),
        Some(json!({"mode": "eco"})),
    );
    wait_for(
        "both sites on the cloud, site a's config on gw-a",
        Duration::from_secs(20),
        || {
            cloud.reading_ids("site-a/temp").contains("a-1")
                && cloud.reading_ids("site-b/temp").contains("b-1")
                && gw_a.doc("site-a/config") == Some(json!({"mode": "eco"}))
        },
    );
    // Let the links settle (the cloud has pushed everything it would), then look.
    std::thread::sleep(Duration::from_secs(2));
    let names = |n: &Node| -> Vec<String> {
        request("GET", &format!("{}/v1/docs", n.api), None)["docs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["doc"].as_str().unwrap().to_string())
            .collect()
    };
    let (on_a, on_b, on_cloud) = (names(&gw_a), names(&gw_b), names(&cloud));
    assert!(on_a.iter().all(|d| d.starts_with("site-a/")), "{on_a:?}");
    assert!(on_b.iter().all(|d| d.starts_with("site-b/")), "{on_b:?}");
    assert!(on_cloud.iter().any(|d| d.starts_with("site-a/")));
    assert!(on_cloud.iter().any(|d| d.starts_with("site-b/")));
    assert!(!cloud.reading_ids("site-a/temp").contains("b-2"));
    assert!(
        gw_b.status()["peers"][0]["connected"] == true,
        "residency is not a refusal: the link stays up"
    );
}

/// A configuration with an unknown key, or a second process on the same data directory, is
/// refused with a clear message.
#[test]
fn bad_configs_are_refused_with_clear_messages() {
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet(dir.path(), &[("gw-1", "gateway")]);
    let spec = NodeSpec {
        extra: "colour = \"blue\"\n",
        ..NodeSpec::named("gw-1")
    };
    let path = Node::write_config(dir.path(), &pki, &spec);
    let out = cli(&["run", "--config", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("colour"), "{err}");

    let gw = Node::start(dir.path(), &pki, NodeSpec::named("gw-1"));
    // Same data directory, another API port.
    let path2 = Node::write_config(dir.path(), &pki, &NodeSpec::named("gw-1"));
    let out = cli(&["run", "--config", path2.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another"), "{err}");
    assert_eq!(
        try_request("GET", &format!("{}/healthz", gw.api), None)
            .unwrap()
            .0,
        200
    );
}

/// A panic on any thread ends the process at once with a non-zero code (a supervisor restarts
/// it), instead of leaving it running with a dead thread.
#[test]
fn a_panic_on_any_thread_exits_the_process() {
    let started = Instant::now();
    let out = cli(&["debug-panic"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(70), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "exited at once");
    assert!(err.contains("planted panic"), "{err}");
}

/// A gateway restarted 600 times (SIGTERM, and SIGKILL every 50th time), writing one reading
/// into the same document each time: every write succeeds, and the document's clock holds one
/// actor of the node's besides the genesis (a new actor per start filled its 512 after 511).
#[test]
fn six_hundred_restarts_keep_the_actor() {
    restarts_keep_the_actor("", 600, 50);
}

/// A gateway started `starts` times (`extra` added to its configuration), writing one reading
/// per run, stopped by SIGTERM but every `kill_every`-th run by SIGKILL: every reading is
/// there once and its document holds one actor of the node's.
fn restarts_keep_the_actor(extra: &str, starts: i64, kill_every: i64) {
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet(dir.path(), &[("gw-1", "gateway")]);
    let spec = NodeSpec {
        extra,
        ..NodeSpec::named("gw-1")
    };
    let mut gw = Node::start(dir.path(), &pki, spec);
    let doc = "site-a/t1";
    for i in 0..starts {
        let r = gw.ingest(doc, &format!("r{i}"), 1_700_000_000_000 + i, 20.0);
        assert_eq!(r["duplicate"], false, "start {i}: {r}");
        if i % kill_every == kill_every - 1 {
            gw.kill9();
        } else {
            let st = gw.terminate();
            assert!(st.success(), "start {i}: exit {st}: {}", gw.logs());
        }
        gw.spawn();
    }
    assert_eq!(gw.reading_ids(doc).len(), starts as usize);
    gw.terminate();
    let v = check_data_dir(&dir.path().join("data/gw-1"), "gw-1");
    assert_eq!(v["readings"], starts);
    assert_eq!(
        v["actors_max"], 2,
        "the genesis actor and the node's one: {v}"
    );
}

/// `edgesync check` on a stopped node's data directory, which must pass; its JSON summary.
fn check_data_dir(data: &Path, name: &str) -> Value {
    let out = cli_ok(&[
        "check",
        "--data-dir",
        data.to_str().unwrap(),
        "--name",
        name,
    ]);
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Milliseconds since the Unix epoch, as the nodes' clocks read them.
fn wall_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Every reading of a stream by paging `GET /v1/docs/{stream}?…&after=…`, in order, and the
/// number of pages.
fn page_all(n: &Node, stream: &str, query: &str) -> (Vec<(i64, String)>, usize) {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut url = format!("{}/v1/docs/{stream}?{query}", n.api);
        if let Some(a) = &after {
            url += &format!("&after={a}");
        }
        let v = request("GET", &url, None);
        pages += 1;
        for (id, r) in v["readings"].as_object().unwrap() {
            out.push((r["ts"].as_i64().unwrap(), id.clone()));
        }
        match &v["next"] {
            Value::Null => return (out, pages),
            Value::String(c) => after = Some(c.clone()),
            other => panic!("next is {other}"),
        }
    }
}

// Streams over HTTP: readings of three hours land in three buckets; paging with `after`
// yields every reading once in (ts, id) order, within `from`/`to`; `/latest` reads the newest;
// bad range parameters are 400s; `edgesync get` pages too. A gateway that keeps an hour takes
// only the young bucket from a cloud that keeps everything, refuses old readings with a 422
// that says why, and the cloud counts the old buckets as held by it.
#[test]
fn streams_page_by_time_and_retention_keeps_what_it_should() {
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet(dir.path(), &[("cloud", "cloud"), ("gw-1", "gateway")]);
    let (cloud, quic) = fast_cloud(dir.path(), &pki);
    const HOUR: i64 = 3_600_000;
    let now = wall_now_ms();
    // Three whole hours, the last ending three hours ago, 40 readings each; then 10 readings
    // in the current hour.
    let base = (now / HOUR - 5) * HOUR;
    let stream = "site-a/temp-1";
    let mut want = Vec::new();
    for h in 0..3 {
        for i in 0..40 {
            let ts = base + h * HOUR + (i / 2) * 1000;
            let id = format!("old-{h}-{i:02}");
            cloud.ingest(stream, &id, ts, i as f64);
            want.push((ts, id));
        }
    }
    for i in 0..10 {
        let ts = now - 1000 + i;
        let id = format!("young-{i}");
        cloud.ingest(stream, &id, ts, 1.0);
        want.push((ts, id));
    }
    want.sort();
    let docs = request("GET", &format!("{}/v1/docs", cloud.api), None);
    let buckets = docs["docs"].as_array().unwrap().len();
    assert!(
        (4..=5).contains(&buckets),
        "three old hours and the current one: {docs}"
    );
    let (got, pages) = page_all(&cloud, stream, "limit=7");
    assert_eq!(got, want, "every reading once, in (ts, id) order");
    assert_eq!(pages, want.len().div_ceil(7));
    let (from, to) = (base + HOUR + 5_000, base + 2 * HOUR + 3_000);
    let (got, _) = page_all(&cloud, stream, &format!("from={from}&to={to}&limit=9"));
    let expect: Vec<_> = want
        .iter()
        .filter(|(t, _)| (from..to).contains(t))
        .cloned()
        .collect();
    assert_eq!(got, expect);
    // Without parameters: today's shape, plus `next`.
    let all = cloud.doc(stream).unwrap();
    assert_eq!(all["readings"].as_object().unwrap().len(), want.len());
    assert_eq!(all["next"], Value::Null);
    assert_eq!(all["latest"]["id"], "young-9");
    let latest = request(
        "GET",
        &format!("{}/v1/docs/{stream}/latest", cloud.api),
        None,
    );
    assert_eq!(latest["id"], "young-9");
    assert_eq!(latest["ts"], now - 1000 + 9);
    for bad in ["limit=0", "limit=10001", "after=zz", "from=soon", "limt=3"] {
        let (status, v) = try_request(
            "GET",
            &format!("{}/v1/docs/{stream}?{bad}", cloud.api),
            None,
        )
        .unwrap();
        assert_eq!(status, 400, "{bad}: {v}");
    }
    for missing in ["site-a/none?limit=5", "site-a/none/latest"] {
        let (status, v) =
            try_request("GET", &format!("{}/v1/docs/{missing}", cloud.api), None).unwrap();
        assert_eq!(status, 404, "{missing}: {v}");
    }
    let out = cli_ok(&[
        "get",
        "--api",
        &cloud.api,
        "--doc",
        stream,
        "--from",
        &from.to_string(),
        "--to",
        &to.to_string(),
        "--limit",
        "1000",
    ]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["readings"].as_object().unwrap().len(), expect.len());
    let out = cli_ok(&["get", "--api", &cloud.api, "--doc", stream, "--latest"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["id"], "young-9");

    // A gateway keeping one hour.
    let extra = format!("{FAST}[retention]\nkeep_hours = 1\n");
    let gw = Node::start(
        dir.path(),
        &pki,
        NodeSpec {
            peers: vec![("cloud", quic)],
            extra: &extra,
            ..NodeSpec::named("gw-1")
        },
    );
    wait_for(
        "the young readings on gw-1",
        Duration::from_secs(20),
        || gw.reading_ids(stream).len() == 10,
    );
    wait_for(
        "the cloud to count everything as held",
        Duration::from_secs(20),
        || cloud.status()["peers"][0]["unacked_changes"] == 0,
    );
    let held = request("GET", &format!("{}/v1/docs", gw.api), None);
    assert_eq!(
        held["docs"].as_array().unwrap().len(),
        buckets - 3,
        "no old bucket: {held}"
    );
    let (status, v) = try_request(
        "POST",
        &format!("{}/v1/ingest", gw.api),
        Some(json!({"doc": stream, "id": "late", "ts": base, "fields": {"t": 1}})),
    )
    .unwrap();
    assert_eq!(status, 422, "{v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("older than this node keeps"),
        "{v}"
    );
    // A new reading goes up to the cloud as usual.
    gw.ingest(stream, "from-gw", now, 2.0);
    wait_for(
        "the gateway's reading on the cloud",
        Duration::from_secs(20),
        || cloud.reading_ids(stream).contains("from-gw"),
    );
}

// Actor slots between real processes. A new gateway that cannot reach its peer yet acknowledges
// readings (journaled, durable) and shows them, but patches nothing (503 naming the wait) and
// folds nothing until the cloud tells it which slots its certificate spent; then it takes slot
// 0 and everything syncs. Its data directory wiped under the kept certificate, it asks again,
// takes slot 1 (the cloud holds slot 0's changes) and its new readings reach the cloud beside
// the old ones: no equivocation anywhere. The old directory started again (a second store under
// the certificate) hears of slot 1 under another key and reports it.
#[test]
fn a_new_or_wiped_gateway_learns_its_actor_slot_before_it_authors() {
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet(dir.path(), &[("cloud", "cloud"), ("gw-1", "gateway")]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (cloud, cloud_quic) = fast_cloud(dir.path(), &pki);
    let relay = rt.block_on(UdpRelay::start(cloud_quic)).unwrap();
    relay.cut();
    let spec = || NodeSpec {
        peers: vec![("cloud", relay.addr)],
        extra: FAST,
        ..NodeSpec::named("gw-1")
    };
    let mut gw = Node::start(dir.path(), &pki, spec());
    let slots = |n: &Node| n.status()["actor_slots"].clone();
    assert_eq!(slots(&gw)["settled"], false, "{}", slots(&gw));
    let stream = "site-a/line-1/temp";
    let t0 = 1_700_000_000_000i64;
    gw.ingest(stream, "old-1", t0, 1.0);
    assert!(gw.reading_ids(stream).contains("old-1"), "reads see it");
    let (code, body) = try_request(
        "PATCH",
        &format!("{}/v1/docs/site-a/apps/settings", gw.api),
        Some(json!({"mode": "eco"})),
    )
    .unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("actor slot"),
        "{body}"
    );
    assert_eq!(gw.status()["journal_readings"], 1);
    relay.heal();
    gw.wait_settled();
    assert_eq!(slots(&gw)["slot"], 0, "{}", slots(&gw));
    assert_eq!(slots(&gw)["left"], 31);
    let (code, body) = try_request(
        "PATCH",
        &format!("{}/v1/docs/site-a/apps/settings", gw.api),
        Some(json!({"mode": "eco"})),
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    wait_for("old-1 at the cloud", Duration::from_secs(30), || {
        cloud.reading_ids(stream).contains("old-1")
    });
    // The wipe: same certificate, new data directory (and so a new authoring key). The old
    // directory is kept aside, as a second store under the certificate would be.
    gw.kill9();
    let data = dir.path().join("data").join("gw-1");
    let aside = dir.path().join("gw-1-old");
    std::fs::rename(&data, &aside).unwrap();
    let mut gw = Node::start(dir.path(), &pki, spec());
    gw.wait_settled();
    assert_eq!(slots(&gw)["slot"], 1, "{}", slots(&gw));
    gw.ingest(stream, "new-1", t0 + 1, 2.0);
    wait_for("new-1 at the cloud", Duration::from_secs(30), || {
        cloud.reading_ids(stream).contains("new-1")
    });
    wait_for("old-1 back at the gateway", Duration::from_secs(30), || {
        gw.reading_ids(stream).contains("old-1")
    });
    for n in [&cloud, &gw] {
        let refused = n.status()["refused_sessions"].clone();
        assert!(refused.get("equivocation").is_none(), "{refused}");
    }
    // The old store started again beside it (same certificate, slot 0, the old key): the
    // cloud names slot 1 under another key, and the old store reports the conflict.
    gw.kill9();
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::rename(&aside, &data).unwrap();
    let old = Node::start(dir.path(), &pki, spec());
    wait_for("the conflict reported", Duration::from_secs(30), || {
        slots(&old)["conflicts"].as_u64().unwrap_or(0) >= 1
    });
    assert_eq!(slots(&old)["slot"], 0);
}

// Store-and-forward pruning over real processes: a gateway that prunes after the cloud holds
// closed one-minute buckets while the cloud is cut off (status says for whom), prunes them
// within 30 s of the cloud's acknowledgement once the cut heals, keeps their clocks (the
// directory passes `edgesync check`), and refuses readings into them with a 422 that says why.
#[test]
fn a_gateway_prunes_what_the_cloud_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet(dir.path(), &[("cloud", "cloud"), ("gw-1", "gateway")]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (cloud, cloud_quic) = fast_cloud(dir.path(), &pki);
    let relay = rt.block_on(UdpRelay::start(cloud_quic)).unwrap();
    let extra = format!(
        "{FAST}[streams]\nbucket_minutes = 1\n[retention]\nprune_after_ack = [\"cloud\"]\nprune_grace_minutes = 0\n"
    );
    let mut gw = Node::start(
        dir.path(),
        &pki,
        NodeSpec {
            peers: vec![("cloud", relay.addr)],
            extra: &extra,
            ..NodeSpec::named("gw-1")
        },
    );
    // The new gateway learns its actor slot from the cloud, then loses the link.
    gw.wait_settled();
    relay.cut();
    const MINUTE: i64 = 60_000;
    let now = wall_now_ms();
    let first = (now / MINUTE - 5) * MINUTE;
    let stream = "site-a/temp-1";
    for i in 0..30 {
        gw.ingest(stream, &format!("r{i:02}"), first + i * 6_000, i as f64);
    }
    let pruning = |n: &Node| n.status()["pruning"].clone();
    wait_for(
        "three closed buckets waiting for the cloud",
        Duration::from_secs(30),
        || {
            let p = pruning(&gw);
            p["waiting"] == 3 && p["waiting_for"]["cloud"] == 3 && p["pruned"] == 0
        },
    );
    relay.heal();
    let took = wait_for("the gateway to prune them", Duration::from_secs(40), || {
        let p = pruning(&gw);
        p["pruned"] == 3 && p["waiting"] == 0
    });
    assert_eq!(
        cloud.reading_ids(stream).len(),
        30,
        "the cloud holds everything"
    );
    assert!(
        took < Duration::from_secs(30),
        "pruned {took:?} after the heal"
    );
    let left = gw.doc(stream).unwrap();
    assert_eq!(left["readings"].as_object().unwrap().len(), 0, "{left}");
    let docs = request("GET", &format!("{}/v1/docs", gw.api), None);
    assert_eq!(
        docs["docs"].as_array().unwrap().len(),
        3,
        "the buckets' clocks are kept"
    );
    let (status, v) = try_request(
        "POST",
        &format!("{}/v1/ingest", gw.api),
        Some(json!({"doc": stream, "id": "late", "ts": first + 1, "fields": {"t": 1}})),
    )
    .unwrap();
    assert_eq!(status, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("pruned"), "{v}");
    assert!(gw.terminate().success());
    let v = check_data_dir(&dir.path().join("data/gw-1"), "gw-1");
    assert_eq!((&v["docs"], &v["pruned"]), (&json!(3), &json!(3)), "{v}");
}

/// `name`'s entry in `node`'s peer status.
fn peer_status(node: &Node, name: &str) -> Value {
    node.status()["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name).cloned())
        .unwrap_or(Value::Null)
}

/// Polls `ok` every 20 ms until it holds or `limit` passes; how long it took, or `None`.
fn within(limit: Duration, mut ok: impl FnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if ok() {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// The replicated cloud tier: two cloud nodes meshed, a gateway dialling both, ingest running
/// at the gateway. One cloud node is killed (SIGKILL) and restarted at its address. Its peers'
/// links to the dead process are reset at once (a QUIC stateless reset derived from the key
/// kept in its data directory; the idle timeout here is 30 s, so nothing else would notice in
/// time), the gateway redials it, every acknowledged reading ends on both cloud nodes, and the
/// restarted one holds everything acknowledged before its restart within 5 s.
#[test]
fn a_restarted_cloud_node_is_redialled_at_once_and_catches_up() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet(
        dir.path(),
        &[
            ("cloud-0", "cloud"),
            ("cloud-1", "cloud"),
            ("gw-1", "gateway"),
        ],
    );
    const SLOW_IDLE: &str = "[sync]\nretry_base_ms = 200\nretry_cap_ms = 2000\nkeep_alive_ms = 500\nidle_timeout_ms = 30000\n";
    let c0 = Node::start(
        dir.path(),
        &pki,
        NodeSpec {
            listen: true,
            extra: SLOW_IDLE,
            ..NodeSpec::named("cloud-0")
        },
    );
    let q0 = c0.quic.unwrap();
    let mut c1 = Node::start(
        dir.path(),
        &pki,
        NodeSpec {
            listen: true,
            peers: vec![("cloud-0", q0)],
            extra: SLOW_IDLE,
            ..NodeSpec::named("cloud-1")
        },
    );
    let q1 = c1.quic.unwrap();
    // A restart binds the same address.
    let cfg = std::fs::read_to_string(&c1.config)
        .unwrap()
        .replace("listen = \"127.0.0.1:0\"", &format!("listen = \"{q1}\""));
    std::fs::write(&c1.config, cfg).unwrap();
    let gw = Node::start(
        dir.path(),
        &pki,
        NodeSpec {
            peers: vec![("cloud-0", q0), ("cloud-1", q1)],
            extra: SLOW_IDLE,
            ..NodeSpec::named("gw-1")
        },
    );
    let linked = |n: &str| peer_status(&gw, n)["connected"] == true;
    assert!(
        within(Duration::from_secs(10), || linked("cloud-0")
            && linked("cloud-1"))
        .is_some(),
        "the gateway links to both cloud nodes"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let writer = {
        let (stop, acked) = (stop.clone(), acked.clone());
        let url = format!("{}/v1/ingest", gw.api);
        std::thread::spawn(move || {
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let id = format!("r{i:05}");
                let body = json!({"doc": "site-a/t", "id": id, "ts": i, "fields": {"temp": 20.5}});
                if let Ok((200, _)) = try_request("POST", &url, Some(body)) {
                    acked.lock().unwrap().push(id);
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    std::thread::sleep(Duration::from_secs(1));
    let mut child = c1.child.take().unwrap();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let connects = peer_status(&gw, "cloud-1")["connects"].as_u64().unwrap();
    c1.spawn();
    let before: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    assert!(!before.is_empty());
    let redial = within(Duration::from_secs(10), || {
        peer_status(&gw, "cloud-1")["connects"].as_u64() > Some(connects) && linked("cloud-1")
    });
    let caught_up = within(Duration::from_secs(10), || {
        before.is_subset(&c1.reading_ids("site-a/t"))
    });
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let all: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    let everywhere = within(Duration::from_secs(10), || {
        c0.reading_ids("site-a/t").is_superset(&all) && c1.reading_ids("site-a/t").is_superset(&all)
    });
    eprintln!(
        "redialled after {redial:?}; caught up after {caught_up:?}; {} readings acknowledged",
        all.len()
    );
    let redial = redial.expect("the gateway redials the restarted node before the idle timeout");
    assert!(redial < Duration::from_secs(5), "{redial:?}");
    let caught_up = caught_up.expect("the restarted node catches up");
    assert!(caught_up < Duration::from_secs(5), "{caught_up:?}");
    assert!(
        everywhere.is_some(),
        "every acknowledged reading on both cloud nodes"
    );
}

// A gateway restored from a backup taken before it wrote more: its peers' receipts say it
// holds what it lost, and its next writes would take sequence numbers that already left. The
// backup is marked, so the first start on it takes a new store id (the cloud sends it
// everything it lacks) and a new actor epoch (what it writes next reaches the cloud).
/// A fleet of a cloud and gateway `gw-1` dialling it, with short timeouts: (the PKI directory,
/// the cloud, its QUIC address, the gateway).
fn cloud_and_gateway(dir: &Path) -> (PathBuf, Node, SocketAddr, Node) {
    let pki = fleet(dir, &[("cloud", "cloud"), ("gw-1", "gateway")]);
    let (cloud, quic) = fast_cloud(dir, &pki);
    let gw = fast_gateway(dir, &pki, "gw-1", quic);
    (pki, cloud, quic, gw)
}

/// Copies directory `from` to `to` (a disk image taken while the node was stopped).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// A second gateway started from a plain copy of a gateway's data directory (a cloned disk
/// image, no copy mark) while the gateway runs: the cloud refuses one of the two as a copy
/// (`cloned`), the refused one says so in its status and stops dialling, and only the other's
/// readings reach the cloud.
#[test]
fn a_gateway_run_from_a_cloned_disk_beside_the_original_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, cloud, quic, mut gw) = cloud_and_gateway(dir.path());
    let doc = "site-a/line-1/temp";
    let t0 = 1_700_000_000_000i64;
    for i in 0..5 {
        gw.ingest(doc, &format!("r{i}"), t0 + i, 20.0);
    }
    wait_for("the readings on the cloud", Duration::from_secs(30), || {
        cloud.reading_ids(doc).len() == 5
    });
    assert!(gw.terminate().success());
    let elsewhere = dir.path().join("elsewhere");
    copy_dir(&dir.path().join("data/gw-1"), &elsewhere.join("data/gw-1"));
    gw.spawn();
    let twin = fast_gateway(&elsewhere, &pki, "gw-1", quic);
    let refused = |n: &Node| {
        n.status()["refused_as_copy"]
            .as_object()
            .is_some_and(|m| m.contains_key("cloud"))
    };
    wait_for(
        "the cloud to refuse one of the two",
        Duration::from_secs(30),
        || refused(&gw) || refused(&twin),
    );
    let (kept, copy) = if refused(&twin) {
        (&gw, &twin)
    } else {
        (&twin, &gw)
    };
    eprintln!(
        "the cloud refused the {}",
        if refused(&twin) { "copy" } else { "original" }
    );
    let reason = copy.status()["refused_as_copy"]["cloud"].to_string();
    assert!(reason.contains("copy of this store"), "{reason}");
    assert!(copy.logs().contains("run from a copy"), "{}", copy.logs());
    assert!(cloud.status()["refused_sessions"]["cloned"].as_u64() >= Some(1));
    kept.ingest(doc, "kept", t0 + 10, 21.0);
    copy.ingest(doc, "copied", t0 + 11, 22.0);
    wait_for(
        "the kept node's reading on the cloud",
        Duration::from_secs(30),
        || cloud.reading_ids(doc).contains("kept"),
    );
    // The refused node no longer dials: a few redial periods later nothing of it arrived and
    // the kept node still holds its link.
    std::thread::sleep(Duration::from_secs(3));
    assert!(!cloud.reading_ids(doc).contains("copied"));
    assert!(peer_connected(kept, "cloud"), "{}", kept.logs());
    assert!(!peer_connected(copy, "cloud"));
    assert!(!refused(kept));
}

#[test]
fn a_gateway_restored_from_an_older_backup_gets_everything_back() {
    let dir = tempfile::tempdir().unwrap();
    let (_pki, cloud, _quic, mut gw) = cloud_and_gateway(dir.path());
    let doc = "site-a/line-1/temp";
    let t0 = 1_700_000_000_000i64;
    let mut expected = BTreeSet::new();
    let ingest = |gw: &Node, expected: &mut BTreeSet<String>, id: String, i: i64| {
        assert_eq!(gw.ingest(doc, &id, t0 + i, 20.0)["duplicate"], false);
        expected.insert(id);
    };
    for i in 0..10 {
        ingest(&gw, &mut expected, format!("before-{i}"), i);
    }
    wait_for(
        "the first readings on the cloud",
        Duration::from_secs(30),
        || cloud.reading_ids(doc).len() == 10,
    );
    assert!(gw.terminate().success());
    let data = dir.path().join("data/gw-1");
    let backup = dir.path().join("backup-gw-1");
    let out = cli_ok(&[
        "backup",
        "--data-dir",
        data.to_str().unwrap(),
        "--to",
        backup.to_str().unwrap(),
    ]);
    let made: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(made["key_files"], json!(["author.key", "quic-reset.key"]));
    // A backup is never written over, and a directory that is not one is never restored.
    assert!(!cli(&[
        "backup",
        "--data-dir",
        data.to_str().unwrap(),
        "--to",
        backup.to_str().unwrap()
    ])
    .status
    .success());
    let not_a_backup = cli(&[
        "restore",
        "--from",
        data.to_str().unwrap(),
        "--data-dir",
        dir.path().join("elsewhere").to_str().unwrap(),
    ]);
    assert!(!not_a_backup.status.success());
    assert!(String::from_utf8_lossy(&not_a_backup.stderr).contains("not an edgesync backup"));
    assert!(
        !dir.path().join("elsewhere").exists(),
        "nothing half-restored is left"
    );

    gw.spawn();
    for i in 0..20 {
        ingest(&gw, &mut expected, format!("after-{i}"), 100 + i);
    }
    wait_for(
        "the later readings on the cloud",
        Duration::from_secs(30),
        || cloud.reading_ids(doc).len() == 30,
    );
    assert!(gw.terminate().success());

    // The disk dies; the backup comes back.
    std::fs::remove_dir_all(&data).unwrap();
    cli_ok(&[
        "restore",
        "--from",
        backup.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    gw.spawn();
    let took = wait_for(
        "the restored gateway to hold every reading",
        Duration::from_secs(30),
        || gw.reading_ids(doc) == expected,
    );
    eprintln!(
        "restored gateway caught up {} ms after its start",
        took.as_millis()
    );
    assert!(gw.logs().contains("restored backup"), "{}", gw.logs());
    for i in 0..5 {
        ingest(&gw, &mut expected, format!("restored-{i}"), 200 + i);
    }
    wait_for(
        "the restored gateway's new readings on the cloud",
        Duration::from_secs(30),
        || cloud.reading_ids(doc) == expected,
    );
    assert_eq!(expected.len(), 35);
    assert_eq!(gw.doc(doc), cloud.doc(doc));
    // Started again, it is no longer a copy: same store, same actor.
    assert!(gw.terminate().success());
    let first = check_data_dir(&data, "gw-1");
    gw.spawn();
    ingest(&gw, &mut expected, "again".into(), 300);
    assert!(gw.terminate().success());
    let again = check_data_dir(&data, "gw-1");
    assert_eq!(first["store_id"], again["store_id"], "{first} {again}");
    assert_eq!(
        again["actors_max"], 3,
        "genesis, the first actor and the restored one: {again}"
    );
}

// With `wal` durability a node answers at the write but sends nothing before the fsync, so a
// crash takes back nothing a peer holds and the node keeps its actor across kills.
#[test]
fn wal_nodes_keep_their_actor_across_kills() {
    restarts_keep_the_actor("durability = \"wal\"\n", 20, 1);
}

/// Reads a feed stream in a thread: (id, event, data) of every event, in order.
fn feed_stream(
    url: String,
    last_event_id: Option<String>,
) -> std::sync::mpsc::Receiver<(String, String, Value)> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut req = agent().get(&url);
        if let Some(id) = &last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let r = req.call().unwrap();
        let mut lines = BufReader::new(r.into_body().into_reader()).lines();
        let (mut id, mut event) = (String::new(), String::new());
        while let Some(Ok(line)) = lines.next() {
            if let Some(v) = line.strip_prefix("id:") {
                id = v.trim().to_string();
            } else if let Some(v) = line.strip_prefix("event:") {
                event = v.trim().to_string();
            } else if let Some(data) = line.strip_prefix("data:") {
                let v = serde_json::from_str(data.trim()).unwrap();
                if tx.send((id.clone(), event.clone(), v)).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

// The change feed over real processes: a gateway's readings and a generic change arrive in the
// cloud's feed with their origin, in commit order; a consumer resumes from the last cursor it
// saw and gets every later event once (by page and by server-sent events with Last-Event-ID);
// a filter narrows it to documents; a cursor the feed cannot vouch for is 410 with the oldest.
#[test]
fn the_change_feed_resumes_from_any_cursor_and_misses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet(dir.path(), &[("cloud", "cloud"), ("gw-1", "gateway")]);
    let (cloud, quic) = fast_cloud(dir.path(), &pki);
    let gw = fast_gateway(dir.path(), &pki, "gw-1", quic);
    let t0 = 1_700_000_000_000i64;
    for i in 0..5 {
        gw.ingest(
            "site-a/line-1/temp",
            &format!("t{i}"),
            t0 + i,
            20.0 + i as f64,
        );
    }
    let feed = |q: &str| request("GET", &format!("{}/v1/feed{q}", cloud.api), None);
    wait_for(
        "five events in the cloud's feed",
        Duration::from_secs(30),
        || feed("")["events"].as_array().unwrap().len() == 5,
    );
    let page = feed("?limit=3");
    let events = page["events"].as_array().unwrap();
    assert_eq!(events.len(), 3);
    assert_eq!(events[0]["doc"], "site-a/line-1/temp");
    assert_eq!(events[0]["id"], "t0");
    assert_eq!(events[0]["ts"], t0);
    assert_eq!(events[0]["fields"], json!({"temp": 20.0}));
    assert_eq!(events[0]["origin"], "gw-1");
    let next = page["next"].as_str().unwrap().to_string();
    assert_eq!(next, events[2]["cursor"]);

    // A subscriber resuming from that cursor; then more readings, a duplicate, and a generic
    // change on the gateway.
    let stream = feed_stream(format!("{}/v1/feed/stream", cloud.api), Some(next.clone()));
    for i in 5..8 {
        gw.ingest("site-a/line-1/temp", &format!("t{i}"), t0 + i, 20.0);
    }
    assert_eq!(
        gw.ingest("site-a/line-1/temp", "t1", t0 + 1, 21.0)["duplicate"],
        true
    );
    let (s, v) = try_request(
        "PATCH",
        &format!("{}/v1/docs/site-a/apps/settings", gw.api),
        Some(json!({"mode": "eco"})),
    )
    .unwrap();
    assert_eq!(s, 200, "{v}");
    let mut got = Vec::new();
    while got.len() < 6 {
        let (id, event, v) = stream.recv_timeout(Duration::from_secs(30)).unwrap();
        assert_eq!(id, v["cursor"], "the SSE id is the cursor");
        got.push((
            event,
            v["id"].as_str().unwrap_or("-").to_string(),
            v["doc"].clone(),
        ));
    }
    // The stream's readings in their order; the generic change among them wherever it arrived
    // (the gateway sends a reading once its journal is folded, up to 100 ms after the ingest,
    // and the patch's change at once: events of different documents keep no order).
    let ids: Vec<_> = got
        .iter()
        .filter(|(event, _, _)| event == "reading")
        .map(|(_, id, _)| id.as_str())
        .collect();
    assert_eq!(ids, ["t3", "t4", "t5", "t6", "t7"], "{got:?}");
    let docs: Vec<_> = got.iter().filter(|(event, _, _)| event == "doc").collect();
    assert_eq!(docs.len(), 1, "{got:?}");
    assert_eq!(docs[0].1, "-");
    assert_eq!(docs[0].2, "site-a/apps/settings");

    // By page: resuming from `next` gives the same, once; at the head `next` stays.
    let rest = feed(&format!("?after={next}"));
    let ids: Vec<_> = rest["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap_or("-").to_string())
        .collect();
    let streamed: Vec<_> = got.iter().map(|(_, id, _)| id.clone()).collect();
    assert_eq!(
        ids, streamed,
        "the pages give what the stream gave, in its order"
    );
    let head = rest["next"].as_str().unwrap().to_string();
    let at_head = feed(&format!("?after={head}"));
    assert_eq!(at_head["events"], json!([]));
    assert_eq!(at_head["next"], head);
    // A filter: only the settings document.
    let only = feed("?docs=site-a/apps/*");
    assert_eq!(only["events"].as_array().unwrap().len(), 1);
    assert_eq!(only["events"][0]["kind"], "doc");

    // A cursor of another store's sequence is gone, with the oldest to resume from.
    let feed_status =
        |q: &str| try_request("GET", &format!("{}/v1/feed{q}", cloud.api), None).unwrap();
    let (s, v) = feed_status("?after=ffffffffffffffff.3");
    assert_eq!(s, 410, "{v}");
    let oldest = v["oldest"].as_str().unwrap();
    assert_eq!(
        feed(&format!("?after={oldest}"))["events"]
            .as_array()
            .unwrap()
            .len(),
        9
    );
    // Bad input is a 400 with a reason.
    for q in [
        "?after=nope",
        "?limit=0",
        "?limit=10001",
        "?docs=",
        "?bogus=1",
    ] {
        let (s, v) = feed_status(q);
        assert_eq!(s, 400, "{q}: {v}");
        assert!(v["error"].is_string(), "{q}: {v}");
    }
}

/// One request a test webhook received.
#[derive(Clone, Debug)]
struct Hooked {
    key: String,
    body: Value,
}

/// A webhook target on loopback: answers 503 to its first `fail_first` requests, holds the
/// request numbered `hold` (0-based) without answering until the test says (then drops it),
/// and answers 200 to the rest. Every request it read is recorded.
struct Hook {
    url: String,
    got: std::sync::Arc<std::sync::Mutex<Vec<Hooked>>>,
    held: std::sync::mpsc::Receiver<()>,
    release: std::sync::mpsc::Sender<()>,
}

impl Hook {
    fn start(fail_first: usize, hold: Option<usize>) -> Hook {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (held_tx, held) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let record = got.clone();
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                let Ok(mut conn) = conn else { continue };
                let mut r = BufReader::new(conn.try_clone().unwrap());
                let (mut key, mut len) = (String::new(), 0usize);
                let mut line = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 0 && line.trim_end() != "" {
                    let l = line.to_ascii_lowercase();
                    if let Some(v) = l.strip_prefix("idempotency-key:") {
                        key = v.trim().to_string();
                    } else if let Some(v) = l.strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap_or(0);
                    }
                    line.clear();
                }
                let mut body = vec![0u8; len];
                if r.read_exact(&mut body).is_err() {
                    continue;
                }
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                record.lock().unwrap().push(Hooked { key, body });
                if Some(n) == hold {
                    let _ = held_tx.send(());
                    let _ = release_rx.recv();
                    continue; // dropped without an answer
                }
                let status = if n < fail_first {
                    "503 Service Unavailable"
                } else {
                    "200 OK"
                };
                let _ = write!(
                    conn,
                    "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                );
            }
        });
        Hook {
            url,
            got,
            held,
            release,
        }
    }

    /// Reading ids delivered, counting each batch key once (what an idempotent target keeps).
    fn delivered_ids(&self) -> Vec<String> {
        let got = self.got.lock().unwrap();
        let mut seen = BTreeSet::new();
        let mut ids = Vec::new();
        for h in got.iter() {
            if !seen.insert(h.key.clone()) {
                continue;
            }
            for e in h.body["events"].as_array().into_iter().flatten() {
                ids.push(e["id"].as_str().unwrap_or("-").to_string());
            }
        }
        ids
    }
}

/// A cloud node listening for QUIC with short timeouts and one sink (`sink`: the body of a
/// `[[sinks]]` entry) that retries fast (100 ms doubling to 400 ms, the cap after 2 failures).
fn cloud_with_sink(dir: &Path, pki: &Path, sink: &str) -> Node {
    let extra = format!(
        "{FAST}[sink_retry]\nbase_ms = 100\ncap_ms = 400\nmax_retries = 2\n[[sinks]]\n{sink}"
    );
    Node::start(
        dir,
        pki,
        NodeSpec {
            listen: true,
            extra: &extra,
            ..NodeSpec::named("cloud")
        },
    )
}

// A webhook sink on the cloud: the target is down at first (the sink retries, and says so in
// /v1/status), then the cloud is killed (SIGKILL) while a batch is in flight; after the
// restart the same batch comes again under the same key with the same events, and the target,
// keeping each key once, ends with every reading exactly once, in feed order.
#[test]
fn a_webhook_sink_delivers_every_reading_once_across_outages_and_kills() {
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet(dir.path(), &[("cloud", "cloud"), ("gw-1", "gateway")]);
    // Requests 0-2 fail; request 4 (the second batch that gets through) is held while the
    // cloud is killed. By the first request that gets through (after three failures and their
    // backoff) the gateway's ten readings are all at the cloud: 8 in it, 2 in the held one.
    let hook = Hook::start(3, Some(4));
    let sink = format!(
        "name = \"wh\"\nkind = \"webhook\"\nurl = \"{}\"\nbatch = 8\ndocs = \"site-a/*\"\n",
        hook.url
    );
    let mut cloud = cloud_with_sink(dir.path(), &pki, &sink);
    let gw = fast_gateway(dir.path(), &pki, "gw-1", cloud.quic.unwrap());
    gw.wait_settled();
    let t0 = 1_700_000_000_000i64;
    let mut expected = Vec::new();
    for i in 0..10 {
        gw.ingest("site-a/line-1/temp", &format!("a{i}"), t0 + i, 20.0);
        expected.push(format!("a{i}"));
    }
    // Outside the sink's documents: never delivered.
    cloud.ingest("site-b/t", "b0", t0, 1.0);
    hook.held
        .recv_timeout(Duration::from_secs(60))
        .expect("a batch held");
    let sinks = cloud.status()["sinks"].clone();
    assert_eq!(sinks[0]["name"], "wh");
    assert!(
        sinks[0]["failed_attempts"].as_u64().unwrap() >= 3,
        "{sinks}"
    );
    // More events while the batch is in flight: a batch rebuilt after the restart from the
    // delivered cursor alone would take them too (another key, events delivered twice).
    for i in 10..14 {
        cloud.ingest("site-a/line-1/temp", &format!("a{i}"), t0 + i, 20.0);
        expected.push(format!("a{i}"));
    }
    cloud.kill9();
    hook.release.send(()).unwrap();
    let held = hook.got.lock().unwrap()[4].clone();
    assert!(
        held.body["events"].as_array().unwrap().len() < 8,
        "{:?}",
        held.body
    );
    cloud.spawn();
    // Then volume: 200 readings in all, across two documents.
    for i in 14..200 {
        let doc = if i % 2 == 0 {
            "site-a/line-1/temp"
        } else {
            "site-a/line-2/temp"
        };
        cloud.ingest(doc, &format!("a{i}"), t0 + i, 20.0);
        expected.push(format!("a{i}"));
    }
    wait_for(
        "every reading at the target",
        Duration::from_secs(60),
        || hook.delivered_ids().len() >= expected.len(),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(hook.delivered_ids(), expected, "each once, in feed order");
    let got = hook.got.lock().unwrap().clone();
    // No reading under two different keys: a target keeping each key once counts it once.
    let mut keys_of: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for h in &got {
        for e in h.body["events"].as_array().unwrap() {
            let id = e["id"].as_str().unwrap().to_string();
            keys_of.entry(id).or_default().insert(h.key.clone());
        }
    }
    assert_eq!(keys_of.len(), 200);
    assert!(keys_of.values().all(|k| k.len() == 1), "{keys_of:?}");
    // The held batch came again after the restart: the same key, the same events.
    let again: Vec<&Hooked> = got.iter().filter(|h| h.key == held.key).collect();
    assert!(again.len() >= 2, "{got:?}");
    assert!(again.iter().all(|h| h.body == again[0].body));
    // Every batch's events lie in its (from, to] range, and each carries its cursor.
    for h in &got {
        assert_eq!(h.body["sink"], "wh");
        let to = h.body["to"].as_str().unwrap();
        let last = h.body["events"].as_array().unwrap().last().unwrap()["cursor"].clone();
        assert!(
            last.as_str()
                .unwrap()
                .split('.')
                .nth(1)
                .unwrap()
                .parse::<u64>()
                .unwrap()
                <= to.split('.').nth(1).unwrap().parse::<u64>().unwrap()
        );
    }
    let s = cloud.status()["sinks"][0].clone();
    assert_eq!(s["lag_events"], 0, "{s}");
    assert!(s["last_error"].is_null(), "{s}");
    // The node stayed healthy while its sink failed.
    assert_eq!(
        request("GET", &format!("{}/healthz", cloud.api), None)["healthy"],
        true
    );
}

/// A PostgreSQL server of the machine's (Debian's `postgresql` package; `scripts/setup.sh`
/// installs it) in a temporary directory, on a loopback port, run as the `postgres` user when
/// the tests run as root (the server refuses root).
struct Postgres {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Postgres {
    fn bin(name: &str) -> PathBuf {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is installed (scripts/setup.sh: apt-get install postgresql)")
            .filter_map(|e| Some(e.ok()?.path().join("bin").join(name)))
            .filter(|p| p.exists())
            .collect();
        found.sort();
        found.pop().expect("a PostgreSQL server binary")
    }

    /// `bin args...`, as the `postgres` user when this process is root.
    fn command(bin: &Path) -> Command {
        let root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
        if root {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(bin);
            c
        } else {
            Command::new(bin)
        }
    }

    fn start() -> Postgres {
        let dir = tempfile::tempdir().unwrap();
        let root = Command::new("id").arg("-u").output().unwrap().stdout == b"0\n";
        if root {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .unwrap();
            assert!(ok.success());
        }
        let data = dir.path().join("data");
        let out = Postgres::command(&Postgres::bin("initdb"))
            .args(["-A", "trust", "-U", "edgesync", "--no-sync", "-D"])
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut pg = Postgres {
            dir,
            port,
            child: None,
        };
        pg.spawn();
        pg
    }

    fn spawn(&mut self) {
        let data = self.dir.path().join("data");
        let child = Postgres::command(&Postgres::bin("postgres"))
            .arg("-D")
            .arg(&data)
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .args(["-c", "fsync=off", "-k"])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        wait_for(
            "PostgreSQL to accept connections",
            Duration::from_secs(30),
            || self.psql("SELECT 1").is_ok(),
        );
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // The server runs as another user under runuser: stop it with its own tool.
            let _ = Postgres::command(&Postgres::bin("pg_ctl"))
                .args(["stop", "-m", "fast", "-D"])
                .arg(self.dir.path().join("data"))
                .output();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("postgres://edgesync@127.0.0.1:{}/postgres", self.port)
    }

    /// One query's rows, `|`-separated.
    fn psql(&self, sql: &str) -> Result<Vec<String>, String> {
        let out = Command::new("psql")
            .args([&self.url(), "-At", "-c", sql])
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect())
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

// A PostgreSQL sink on the cloud: readings become rows, the sink's cursor commits with them;
// through an outage of the database and a SIGKILL of the cloud, every reading is in the table
// once and the cursor is the feed's last delivered event.
#[test]
fn a_postgres_sink_keeps_every_reading_once_through_outages_and_kills() {
    let mut pg = Postgres::start();
    let dir = tempfile::tempdir().unwrap();
    let pki = fleet(dir.path(), &[("cloud", "cloud"), ("gw-1", "gateway")]);
    let sink = format!(
        "name = \"pg\"\nkind = \"postgres\"\nurl = \"{}\"\ntable = \"readings\"\nbatch = 3\n",
        pg.url()
    );
    let mut cloud = cloud_with_sink(dir.path(), &pki, &sink);
    let gw = fast_gateway(dir.path(), &pki, "gw-1", cloud.quic.unwrap());
    let t0 = 1_700_000_000_000i64;
    let count = |pg: &Postgres| {
        pg.psql("SELECT count(*) FROM readings")
            .ok()
            .and_then(|r| r.first()?.parse::<usize>().ok())
            .unwrap_or(0)
    };
    let doc = |i: i64| {
        if i % 2 == 0 {
            "site-a/line-1/temp"
        } else {
            "site-a/line-2/temp"
        }
    };
    for i in 0..60 {
        gw.ingest(doc(i), &format!("r{i}"), t0 + i, 20.0 + i as f64);
    }
    wait_for("60 rows", Duration::from_secs(30), || count(&pg) == 60);
    let row = pg
        .psql("SELECT doc, id, ts, fields->>'temp', origin FROM readings WHERE id = 'r3'")
        .unwrap();
    assert_eq!(row, [format!("site-a/line-2/temp|r3|{}|23.0|gw-1", t0 + 3)]);
    // The database goes away halfway; readings keep coming; the sink fails and waits.
    pg.stop();
    for i in 60..100 {
        gw.ingest(doc(i), &format!("r{i}"), t0 + i, 20.0);
    }
    wait_for(
        "the sink to report the outage",
        Duration::from_secs(30),
        || {
            let s = &cloud.status()["sinks"][0];
            s["failed_attempts"].as_u64().unwrap_or(0) > 0
                && s["lag_events"].as_u64().unwrap_or(0) > 0
        },
    );
    assert_eq!(
        request("GET", &format!("{}/healthz", cloud.api), None)["healthy"],
        true
    );
    pg.spawn();
    // Killed once while delivering; after the restart it resumes from the cursor it committed.
    for i in 100..200 {
        cloud.ingest(doc(i), &format!("r{i}"), t0 + i, 20.0);
    }
    cloud.kill9();
    cloud.spawn();
    wait_for("200 rows", Duration::from_secs(60), || count(&pg) == 200);
    let ids = pg.psql("SELECT id FROM readings ORDER BY ts").unwrap();
    let want: Vec<String> = (0..200).map(|i| format!("r{i}")).collect();
    assert_eq!(ids, want, "every reading once");
    let per_doc = pg
        .psql("SELECT doc, count(*) FROM readings GROUP BY doc ORDER BY doc")
        .unwrap();
    assert_eq!(
        per_doc,
        ["site-a/line-1/temp|100", "site-a/line-2/temp|100"]
    );
    let cursor = pg
        .psql("SELECT cursor FROM edgesync_sink_cursors WHERE sink = 'pg'")
        .unwrap();
    wait_for("the sink to catch up", Duration::from_secs(30), || {
        cloud.status()["sinks"][0]["lag_events"] == 0
    });
    assert_eq!(
        json!(cursor[0]),
        cloud.status()["sinks"][0]["delivered"],
        "the cursor committed with the rows is the sink's"
    );
}
