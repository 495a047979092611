//! `edgesync demo`: a cloud and two gateways on loopback in one process, with a throwaway fleet
//! CA, a real cut of one gateway's uplink (a UDP relay that stops forwarding), ingest on both
//! sides of the cut, the heal, and a check that every node ends with the same readings, each
//! once.
//!
//! The cut is a [`crate::relay::UdpRelay`], as in the end-to-end tests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use edgesync_proto::stream::Bucket;
use edgesync_proto::{DocId, Reading};
use serde_json::{json, Value};

use super::config::Settings;
use super::local::LocalFleet;
use super::Daemon;
use crate::mesh::RetryPolicy;
use crate::net::pki::Role;
use crate::net::NetOptions;
use crate::node::NodeHandle;
use crate::relay::UdpRelay;

/// Quick to notice the cut and to redial after the heal, so the demo is short.
fn quick(mut s: Settings) -> Settings {
    s.retry = RetryPolicy {
        base_ms: 200,
        cap_ms: 2_000,
        breaker_failures: 5,
    };
    s.net = NetOptions {
        keep_alive: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(5),
        ..NetOptions::default()
    };
    s
}

/// Every stream's (and generic document's) view on one node: a stream is read by its name,
/// whatever buckets hold it.
async fn views(h: &NodeHandle) -> anyhow::Result<BTreeMap<String, Value>> {
    let names: std::collections::BTreeSet<DocId> = h
        .docs_async()
        .await?
        .into_iter()
        .map(|d| Bucket::parse(&d).map_or(d, |b| b.stream))
        .collect();
    let mut out = BTreeMap::new();
    for d in names {
        if let Some(v) = h.json_async(d.clone(), false).await? {
            out.insert(d.to_string(), v);
        }
    }
    Ok(out)
}

fn reading_ids(v: &BTreeMap<String, Value>) -> usize {
    v.values()
        .filter_map(|d| d.get("readings").and_then(Value::as_object))
        .map(|m| m.len())
        .sum()
}

async fn ingest(h: &NodeHandle, doc: &str, id: &str, ts: i64, temp: f64) -> anyhow::Result<()> {
    let r = Reading::from_json(id, ts, &json!({"temp": temp, "source": h.name().as_str()}))?;
    h.ingest_async(DocId::new(doc)?, vec![r]).await?;
    Ok(())
}

async fn wait_converged(
    nodes: &[&NodeHandle],
    expect: usize,
    within: Duration,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        let mut all = Vec::new();
        for n in nodes {
            all.push(views(n).await?);
        }
        if all.windows(2).all(|w| w[0] == w[1]) && reading_ids(&all[0]) == expect {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            let counts: Vec<usize> = all.iter().map(reading_ids).collect();
            anyhow::bail!("not converged after {within:?}: readings per node {counts:?}, expected {expect} everywhere");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the demo; prints what happens; errors if anything fails to converge.
pub async fn run() -> anyhow::Result<()> {
    let tmp = tempfile::tempdir().context("temporary directory")?;
    let dir = tmp.path();
    let nodes = [
        ("cloud", Role::Cloud),
        ("gw-1", Role::Gateway),
        ("gw-2", Role::Gateway),
    ];
    // One site: the gateways write (and every node holds) its documents.
    let fleet = LocalFleet::create(&dir.join("pki"), &nodes, Some("site-a"))?;
    println!(
        "fleet CA and certificates for cloud, gw-1, gw-2 in {}",
        fleet.pki_dir().display()
    );
    let settings = |name: &str, listen: bool, peers: &[(&str, SocketAddr)]| {
        let data = dir.join("data").join(name);
        fleet.settings(name, data, listen, peers).map(quick)
    };
    let cloud = Daemon::start(settings("cloud", true, &[])?).await?;
    let cloud_addr = cloud.quic_addr.context("cloud listens")?;
    let uplink = UdpRelay::start(cloud_addr).await?;
    let gw1 = Daemon::start(settings("gw-1", false, &[("cloud", uplink.addr)])?).await?;
    let gw2 = Daemon::start(settings("gw-2", false, &[("cloud", cloud_addr)])?).await?;
    println!(
        "cloud: QUIC {cloud_addr}, API http://{}; gw-1: API http://{} (uplink through a relay); gw-2: API http://{}",
        cloud.api_addr, gw1.api_addr, gw2.api_addr
    );
    let (c, g1, g2) = (cloud.handle(), gw1.handle(), gw2.handle());
    let t0 = 1_700_000_000_000i64;
    for i in 0..10 {
        for (node, sensor, base) in [(&g1, 1, 20.0), (&g2, 2, 18.0)] {
            let (doc, id) = (format!("site-a/temp-{sensor}"), format!("s{sensor}-{i}"));
            ingest(node, &doc, &id, t0 + i, base + i as f64 / 10.0).await?;
        }
    }
    let took = wait_converged(&[&c, &g1, &g2], 20, Duration::from_secs(30)).await?;
    println!(
        "connected: 20 readings on every node after {} ms",
        took.as_millis()
    );

    uplink.cut();
    println!("cut gw-1's uplink; ingesting on both sides");
    for i in 10..35 {
        ingest(&g1, "site-a/temp-1", &format!("a-{i}"), t0 + i, 21.0).await?;
        ingest(&c, "site-a/temp-1", &format!("c-{i}"), t0 + i, 22.0).await?;
    }
    // One reading arriving at both sides of the cut (say, a sensor heard by two receivers).
    ingest(&g1, "site-a/temp-1", "shared-1", t0 + 100, 23.5).await?;
    ingest(&c, "site-a/temp-1", "shared-1", t0 + 100, 23.5).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (vg1, vc) = (views(&g1).await?, views(&c).await?);
    anyhow::ensure!(
        vg1 != vc,
        "gw-1 and the cloud are partitioned and must differ"
    );
    println!(
        "during the cut: gw-1 holds {} readings, the cloud {}",
        reading_ids(&vg1),
        reading_ids(&vc)
    );

    uplink.heal();
    let healed = Instant::now();
    let expect = 20 + 25 + 25 + 1;
    wait_converged(&[&c, &g1, &g2], expect, Duration::from_secs(30)).await?;
    let took = healed.elapsed();
    let final_view = views(&c).await?;
    let latest = final_view["site-a/temp-1"]["latest"]["id"].clone();
    println!(
        "healed: all three nodes hold the same {expect} readings, each once (the shared one too), {} ms after the heal; latest at site-a/temp-1 is {latest}",
        took.as_millis()
    );
    for d in [gw1, gw2, cloud] {
        d.shutdown().await;
    }
    println!("demo ok");
    Ok(())
}
