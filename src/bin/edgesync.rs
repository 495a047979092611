//! The `edgesync` command line.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edgesync::node::{DurableNode, NodeOptions};
use edgesync::store::{Durability, RocksStore};
use edgesync_proto::{Boot, Config, DocId, Node, NodeName, Reading, VectorClock};

#[derive(Parser)]
#[command(name = "edgesync", version, about = "State sync for edge fleets")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Verify a data directory: every value's checksum, every document loads, and every
    /// document's vector clock matches the changes it holds. Prints a summary as JSON.
    Check {
        /// The node's data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The node's name (as in its certificate).
        #[arg(long)]
        name: String,
    },
    /// Test support: ingest readings forever, printing each reading id once it is durable.
    #[command(hide = true)]
    DebugIngestLoop {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value = "fsync")]
        durability: Durability,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("edgesync: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Check { data_dir, name } => check(data_dir, &name),
        Command::DebugIngestLoop {
            data_dir,
            durability,
        } => ingest_loop(data_dir, durability),
    }
}

fn check(data_dir: PathBuf, name: &str) -> anyhow::Result<()> {
    let name = NodeName::new(name).context("invalid node name")?;
    let store = RocksStore::open(&data_dir, Durability::Fsync)?;
    let boot = Boot {
        nonce: [0; 16],
        new_store_id: [0; 16],
    };
    let mut node = Node::open(store, Config::new(name), boot).context("opening the node")?;
    let docs: Vec<DocId> = node.docs().map(|(d, _)| d.clone()).collect();
    let mut readings = 0usize;
    for doc in &docs {
        let held: VectorClock = node
            .with_doc(doc, |am| {
                am.get_changes(&[])
                    .iter()
                    .filter_map(|c| {
                        edgesync_proto::Actor::from_automerge(c.actor_id()).map(|a| (a, c.seq()))
                    })
                    .collect()
            })
            .with_context(|| format!("loading {doc}"))?
            .unwrap_or_default();
        let clock = node.clock(doc).cloned().unwrap_or_default();
        anyhow::ensure!(
            held == clock,
            "{doc}: clock {clock:?} but the document holds {held:?}"
        );
        if let Ok(Some(view)) = node.sensor_view(doc) {
            anyhow::ensure!(
                view.invalid.is_empty(),
                "{doc}: unparseable readings {:?}",
                view.invalid
            );
            readings += view.readings.len();
        }
    }
    println!(
        "{}",
        serde_json::json!({"ok": true, "docs": docs.len(), "readings": readings})
    );
    Ok(())
}

fn ingest_loop(data_dir: PathBuf, durability: Durability) -> anyhow::Result<()> {
    let mut cfg = Config::new(NodeName::new("crash-test")?);
    cfg.snapshot_changes_min = 64;
    let mut opts = NodeOptions::new(cfg, data_dir);
    opts.durability = durability;
    let node = DurableNode::start(opts)?;
    let mut run = [0u8; 8];
    getrandom::fill(&mut run).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let run: String = run.iter().map(|b| format!("{b:02x}")).collect();
    // Four writers so that batches hold several readings and several documents.
    let threads: Vec<_> = (0..4)
        .map(|w| {
            let h = node.handle();
            let run = run.clone();
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut out = std::io::stdout();
                for i in 0u64.. {
                    let doc = DocId::new(format!("crash/doc-{}", (i + w) % 3))?;
                    let id = format!("{run}-{w}-{i}");
                    let r =
                        Reading::from_json(&id, i as i64, &serde_json::json!({"w": w, "i": i}))?;
                    h.ingest(doc.clone(), vec![r])?;
                    writeln!(out, "{doc} {id}")?;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("writer panicked"))??;
    }
    Ok(())
}
