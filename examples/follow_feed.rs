//! Following a node's change feed from Rust: a consumer that keeps its cursor and resumes from
//! it, so it sees every reading once across its own restarts.
//!
//! A node ingests readings into two streams while the consumer follows the feed of one of
//! them; the consumer stops halfway, keeps its last cursor, and starts again from it.
//!
//! Run: `cargo run --example follow_feed`

use std::time::Duration;

use edgesync::node::{DocPattern, FeedError, NodeHandle, NodeOptions};
use edgesync::proto::{Config, Cursor, DocId, NodeName, Reading};
use serde_json::json;

/// Follows the feed of `docs` from `after` until it has seen `want` events; returns the
/// events' reading ids and the cursor to resume from.
async fn follow(
    node: &NodeHandle,
    mut after: Option<Cursor>,
    docs: &DocPattern,
    want: usize,
) -> anyhow::Result<(Vec<String>, Option<Cursor>)> {
    let mut head = node.feed_head();
    let mut ids = Vec::new();
    while ids.len() < want {
        // Whatever is durable from here on is read below, or wakes the wait.
        head.borrow_and_update();
        match node.feed(after, 1000, Some(docs.clone())).await {
            Ok(page) => {
                for (_cursor, event) in &page.events {
                    if let Some((id, _body)) = &event.reading {
                        ids.push(id.clone());
                    }
                }
                after = Some(page.next);
                if page.events.is_empty() {
                    tokio::time::timeout(Duration::from_secs(10), head.changed()).await??;
                }
            }
            // The feed dropped what follows `after` (trimmed, or the node was restored):
            // resume from the oldest event it holds.
            Err(FeedError::Gone { oldest }) => after = Some(oldest),
            Err(e) => return Err(e.into()),
        }
    }
    Ok((ids, after))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = Config::new(NodeName::new("feed-demo")?);
    let node = edgesync::node::DurableNode::start(NodeOptions::new(cfg, dir.path()))?;
    let h = node.handle();
    let docs = DocPattern::new("site-a/*").map_err(anyhow::Error::msg)?;
    let (a, b) = (DocId::new("site-a/temp")?, DocId::new("site-b/temp")?);
    let now = 1_700_000_000_000;
    let writer = {
        let h = h.clone();
        let (a, b) = (a.clone(), b.clone());
        tokio::spawn(async move {
            for i in 0..40i64 {
                let r = |p: &str| Reading::from_json(format!("{p}{i}"), now + i, &json!({"v": i}));
                h.ingest_async(a.clone(), vec![r("a")?]).await?;
                h.ingest_async(b.clone(), vec![r("b")?]).await?;
            }
            anyhow::Ok(())
        })
    };
    // The consumer reads half, "stops", and resumes from the cursor it kept.
    let (first, kept) = follow(&h, None, &docs, 20).await?;
    let (rest, _) = follow(&h, kept, &docs, 40 - first.len()).await?;
    writer.await??;
    let all: Vec<String> = first.into_iter().chain(rest).collect();
    let want: Vec<String> = (0..40).map(|i| format!("a{i}")).collect();
    anyhow::ensure!(
        all == want,
        "every reading of site-a once, in order: {all:?}"
    );
    println!(
        "followed {} readings of site-a/* across a resume, each once",
        all.len()
    );
    node.shutdown();
    Ok(())
}
