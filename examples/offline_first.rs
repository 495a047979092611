//! Offline-first state for an app, with edgesync as a library.
//!
//! 1. A node writes while it has no peer: readings and a settings document, each durable in
//!    RocksDB before the call returns; an event subscription sees every change.
//! 2. It stops and starts again: everything is still there.
//! 3. It starts once more as a full node (QUIC with mutual TLS, HTTP API) with a peer, and the
//!    peer ends up with the same state, while both keep writing.
//!
//! Run: `cargo run --example offline_first`

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use edgesync::daemon::{Daemon, Settings};
use edgesync::mesh::PeerConfig;
use edgesync::net::pki::{self, NodeSpec, Role};
use edgesync::net::TlsFiles;
use edgesync::node::{DurableNode, NodeHandle, NodeOptions};
use edgesync::proto::{Config, DocId, NodeName, Reading};
use serde_json::json;

fn tls(pki: &std::path::Path, name: &str) -> TlsFiles {
    TlsFiles {
        ca: pki.join("ca.crt"),
        cert: pki.join(format!("{name}.crt")),
        key: pki.join(format!("{name}.key")),
        crl: Some(pki.join("crl.pem")),
    }
}

async fn wait_same(a: &NodeHandle, b: &NodeHandle, doc: &DocId) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let (x, y) = (
            a.json_async(doc.clone(), false).await?,
            b.json_async(doc.clone(), false).await?,
        );
        if x.is_some() && x == y {
            return Ok(start.elapsed());
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "{doc} did not converge"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    // Under the site its certificate will name: the fleet's rules let it write there.
    let readings = DocId::new("shop-1/kiosk-7/door")?;
    let settings = DocId::new("shop-1/kiosk-7/settings")?;

    // 1. Offline: just the durable node.
    let name = NodeName::new("kiosk-7")?;
    let node = DurableNode::start(NodeOptions::new(
        Config::new(name.clone()),
        data.join("kiosk-7"),
    ))?;
    let h = node.handle();
    let mut events = h.subscribe();
    for i in 0..3 {
        let r = Reading::from_json(
            format!("open-{i}"),
            1_700_000_000_000 + i * 60_000,
            &json!({"open": true, "who": "badge-42"}),
        )?;
        h.ingest(readings.clone(), vec![r])?; // returns once durable
    }
    h.patch(settings.clone(), json!({"unlock_ms": 3000, "chime": true}))?;
    h.patch(settings.clone(), json!({"chime": null}))?; // RFC 7386: null removes
    let mut seen = 0;
    while let Ok(ev) = events.try_recv() {
        seen += 1;
        println!("event: {} changed ({})", ev.doc, ev.origin);
    }
    println!("offline: {seen} changes committed");
    node.shutdown();

    // 2. Restart: the same state.
    let node = DurableNode::start(NodeOptions::new(
        Config::new(name.clone()),
        data.join("kiosk-7"),
    ))?;
    let view = node
        .handle()
        .json(readings.clone(), false)?
        .expect("stored");
    println!(
        "after restart: {} readings, latest {}",
        view["readings"].as_object().map_or(0, |m| m.len()),
        view["latest"]["id"]
    );
    node.shutdown();

    // 3. Online: a fleet CA, certificates, and two full nodes over QUIC.
    let pki_dir = dir.path().join("pki");
    pki::init(&pki_dir, 1)?;
    // The kiosk a gateway of its shop, the office a cloud node (it holds every shop's data).
    // The kiosk's first start with its certificate adopts what it wrote before: its own
    // changes, signed from now on.
    let nodes = [
        ("kiosk-7", Role::Gateway, Some("shop-1")),
        ("office", Role::Cloud, None),
    ];
    for (n, role, site) in nodes {
        pki::issue(
            &pki_dir,
            &NodeSpec::new(NodeName::new(n)?, role, site.map(String::from), 1)?,
        )?;
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let office_name = NodeName::new("office")?;
        let mut s = Settings::new(
            office_name.clone(),
            data.join("office"),
            tls(&pki_dir, "office"),
        );
        s.listen = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        s.api = SocketAddr::from(([127, 0, 0, 1], 0));
        let office = Daemon::start(s).await?;
        let mut s = Settings::new(name, data.join("kiosk-7"), tls(&pki_dir, "kiosk-7"));
        s.api = SocketAddr::from(([127, 0, 0, 1], 0));
        s.peers.push(PeerConfig {
            name: office_name,
            addr: office.quic_addr.expect("listens").to_string(),
        });
        let kiosk = Daemon::start(s).await?;
        println!("kiosk-7 API: http://{}", kiosk.api_addr);
        let (k, o) = (kiosk.handle(), office.handle());
        let took = wait_same(&k, &o, &readings).await?;
        wait_same(&k, &o, &settings).await?;
        println!(
            "online: office has kiosk-7's offline writes after {} ms",
            took.as_millis()
        );
        // Both write at once; both see both.
        o.patch_async(settings.clone(), json!({"unlock_ms": 5000}))
            .await?;
        k.patch_async(settings.clone(), json!({"language": "de"}))
            .await?;
        wait_same(&k, &o, &settings).await?;
        println!(
            "settings on both: {}",
            o.json_async(settings.clone(), false)
                .await?
                .expect("stored")
        );
        kiosk.shutdown().await;
        office.shutdown().await;
        anyhow::Ok(())
    })?;
    Ok(())
}
