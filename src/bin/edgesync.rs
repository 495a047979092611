//! The `edgesync` command line.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edgesync::daemon::config::LogFormat;
use edgesync::daemon::Settings;
use edgesync::net::crl;
use edgesync::net::pki::{self, Role};
use edgesync::node::{DurableNode, NodeOptions};
use edgesync::store::{Durability, RocksStore};
use edgesync_proto::{Boot, Config, DocId, Node, NodeName, Reading};

#[derive(Parser)]
#[command(name = "edgesync", version, about = "State sync for edge fleets")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node until SIGTERM or SIGINT.
    Run {
        /// The node's TOML configuration; without one every required setting comes from the
        /// environment (EDGESYNC_NAME, EDGESYNC_DATA_DIR, EDGESYNC_TLS_CA, ..._CERT, ..._KEY).
        #[arg(long, env = "EDGESYNC_CONFIG")]
        config: Option<PathBuf>,
    },
    /// The configuration: check it without starting a node.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// A cloud and two gateways on loopback in this process: ingest, cut a gateway's uplink,
    /// ingest on both sides, heal, and show convergence.
    Demo,
    /// Ingest one reading through a node's HTTP API.
    Ingest {
        /// The node's API, e.g. http://127.0.0.1:8401.
        #[arg(long, default_value = "http://127.0.0.1:8401")]
        api: String,
        #[command(flatten)]
        token: TokenArg,
        /// Document id.
        #[arg(long)]
        doc: String,
        /// Reading id (default: a fresh unique one).
        #[arg(long)]
        id: Option<String>,
        /// Timestamp, ms since the Unix epoch (default: now).
        #[arg(long)]
        ts: Option<i64>,
        /// Fields as NAME=VALUE: numbers, true/false, anything else a string.
        #[arg(required = true)]
        fields: Vec<String>,
    },
    /// Print a document through a node's HTTP API.
    Get {
        /// The node's API.
        #[arg(long, default_value = "http://127.0.0.1:8401")]
        api: String,
        #[command(flatten)]
        token: TokenArg,
        /// Document or stream id.
        #[arg(long)]
        doc: String,
        /// Show concurrent values (generic documents).
        #[arg(long)]
        conflicts: bool,
        /// Of a stream, readings from this time on (ms since the Unix epoch, inclusive).
        #[arg(long)]
        from: Option<i64>,
        /// Of a stream, readings before this time (ms, exclusive).
        #[arg(long)]
        to: Option<i64>,
        /// Of a stream, at most this many readings (1 to 10000; default 1000).
        #[arg(long)]
        limit: Option<usize>,
        /// Of a stream, the page after this cursor (`next` of the previous page).
        #[arg(long)]
        after: Option<String>,
        /// Of a stream, only its latest reading.
        #[arg(long, conflicts_with_all = ["from", "to", "limit", "after", "conflicts"])]
        latest: bool,
    },
    /// Print a node's status through its HTTP API.
    Status {
        /// The node's API.
        #[arg(long, default_value = "http://127.0.0.1:8401")]
        api: String,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Exit 0 if the node's `/healthz` answers healthy, 1 otherwise (a container health check;
    /// no token needed).
    Health {
        /// The node's API.
        #[arg(
            long,
            default_value = "http://127.0.0.1:8401",
            env = "EDGESYNC_HEALTH_URL"
        )]
        api: String,
    },
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
    /// Back up a stopped node's data directory into a new directory: a consistent copy of the
    /// store with the node's key files, marked so that a node started on it (or on any copy
    /// of it) takes a new store id and actor epoch and gets from its peers everything it
    /// lacks. Prints what it wrote as JSON.
    Backup {
        /// The node's data directory (the node must be stopped).
        #[arg(long)]
        data_dir: PathBuf,
        /// The backup's directory; must not exist (on the same filesystem, table files are
        /// hard links).
        #[arg(long)]
        to: PathBuf,
    },
    /// Restore a backup made by `edgesync backup` into a new data directory.
    Restore {
        /// The backup's directory.
        #[arg(long)]
        from: PathBuf,
        /// The data directory to create; must not exist or be empty.
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// The fleet PKI: a fleet CA and node certificates.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
    /// Test support: panic on a thread other than main, with the daemon's panic policy.
    #[command(hide = true)]
    DebugPanic,
    /// Test support: ingest readings forever, printing each reading id once it is durable.
    #[command(hide = true)]
    DebugIngestLoop {
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long, default_value = "fsync")]
        durability: Durability,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a configuration with the environment's overrides applied, and print the
    /// effective settings as JSON; exit 1 with the reason if they are invalid.
    Check {
        /// The TOML configuration; without one, the environment alone.
        #[arg(long, env = "EDGESYNC_CONFIG")]
        config: Option<PathBuf>,
    },
}

/// Settings from `config` (if any) and the process environment.
fn settings(config: Option<&std::path::Path>) -> anyhow::Result<Settings> {
    let env = |k: &str| std::env::var(k).ok();
    Ok(match config {
        Some(path) => Settings::load(path, &env)?,
        None => Settings::from_env(&env).map_err(|e| {
            anyhow::Error::new(e).context("no --config given; settings from the environment")
        })?,
    })
}

/// The API token, for a node whose API requires one.
#[derive(clap::Args)]
struct TokenArg {
    /// A file holding the node's API token (its `api_token_file`); default: the file named by
    /// EDGESYNC_API_TOKEN_FILE, if set.
    #[arg(long = "token-file")]
    token_file: Option<PathBuf>,
}

impl TokenArg {
    fn read(&self) -> anyhow::Result<Option<String>> {
        let path = match &self.token_file {
            Some(p) => Some(p.clone()),
            None => std::env::var_os("EDGESYNC_API_TOKEN_FILE")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
        };
        Ok(path
            .map(|p| edgesync::daemon::guard::read_token(&p))
            .transpose()?)
    }
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create a fleet CA: DIR/ca.crt, DIR/ca.key (mode 0600) and an empty revocation list
    /// DIR/crl.pem. Refuses to overwrite one.
    Init {
        /// Directory for the CA.
        #[arg(long)]
        dir: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = pki::CA_VALID_DAYS)]
        valid_days: u32,
    },
    /// Issue (or renew) a node certificate: DIR/NAME.crt and DIR/NAME.key, signed by DIR/ca.*.
    Issue {
        /// Directory holding the CA.
        #[arg(long)]
        dir: PathBuf,
        /// Node name (subject CN and DNS name; the name peers dial and configs use).
        #[arg(long)]
        name: String,
        /// Role in the fleet.
        #[arg(long)]
        role: Role,
        /// Site, if any.
        #[arg(long)]
        site: Option<String>,
        /// Validity in days.
        #[arg(long, default_value_t = pki::NODE_VALID_DAYS)]
        valid_days: u32,
    },
    /// Add a node's current certificate to the fleet's revocation list DIR/crl.pem (signed by
    /// DIR/ca.*). Nodes that name the list in `[tls] crl` pick it up within 5 s (or on SIGHUP):
    /// they refuse the certificate at the handshake and close its established links.
    Revoke {
        /// Directory holding the CA and the node's certificate.
        #[arg(long)]
        dir: PathBuf,
        /// Node name: its current certificate DIR/NAME.crt is revoked.
        #[arg(long)]
        name: String,
        /// Why.
        #[arg(long, value_enum, default_value = "unspecified")]
        reason: edgesync::net::crl::Reason,
    },
    /// Print a certificate's name, role, site, issuer, validity, serial number and revocation
    /// as JSON.
    Show {
        /// A PEM certificate file.
        file: PathBuf,
        /// The revocation list to look it up in (default: crl.pem beside the certificate, if
        /// there is one), checked against --ca.
        #[arg(long)]
        crl: Option<PathBuf>,
        /// The fleet CA certificate that signed the list (default: ca.crt beside the list).
        #[arg(long)]
        ca: Option<PathBuf>,
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

/// Exit code of a process that stopped on a panic (EX_SOFTWARE).
const PANIC_EXIT_CODE: i32 = 70;

/// A panic on any thread (the core, a link task, the API) ends the process at once with
/// [`PANIC_EXIT_CODE`], after the usual report: a node must not run on with a dead thread.
/// Everything acknowledged is durable, so the supervisor's restart loses nothing. The one
/// panic that unwinds instead is Automerge's loader's on a peer's snapshot, which the core
/// contains and refuses (`edgesync_proto::snapshot::loading`): a peer must not be able to
/// restart its peers.
fn exit_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if edgesync_proto::snapshot::loading() {
            tracing::warn!(panic = %info, "a peer's snapshot panicked Automerge's loader; refused");
            return;
        }
        report(info);
        tracing::error!(panic = %info, "panic; exiting");
        std::process::exit(PANIC_EXIT_CODE);
    }));
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn init_logs(format: LogFormat, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("LOG_LEVEL")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new(default_level));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Human => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        b.json().try_init()
    } else {
        b.try_init()
    };
}

fn field_value(v: &str) -> serde_json::Value {
    if v == "true" || v == "false" {
        return serde_json::Value::Bool(v == "true");
    }
    match v.parse::<f64>() {
        Ok(n) if n.is_finite() => serde_json::json!(n),
        _ => serde_json::Value::String(v.to_string()),
    }
}

fn http(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<serde_json::Value>,
) -> anyhow::Result<serde_json::Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(30)))
        .http_status_as_error(false)
        .build()
        .into();
    let auth = token.map(|t| format!("Bearer {t}"));
    let resp = match (method, body) {
        ("POST", Some(b)) => {
            let mut r = agent.post(url);
            if let Some(a) = &auth {
                r = r.header("authorization", a);
            }
            r.send_json(b)
        }
        _ => {
            let mut r = agent.get(url);
            if let Some(a) = &auth {
                r = r.header("authorization", a);
            }
            r.call()
        }
    }
    .map_err(|e| anyhow::anyhow!("cannot reach the node at {url}: {e}"))?;
    let status = resp.status();
    let text = resp
        .into_body()
        .read_to_string()
        .map_err(|e| anyhow::anyhow!("reading the answer from {url}: {e}"))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|_| anyhow::anyhow!("{url} answered {status} with non-JSON: {text}"))?;
    if !status.is_success() {
        let msg = v.get("error").and_then(|e| e.as_str()).unwrap_or(&text);
        anyhow::bail!("{url}: {status}: {msg}");
    }
    Ok(v)
}

/// `path` on the node's API at `api`.
fn endpoint(api: &str, path: &str) -> String {
    format!("{}{path}", api.trim_end_matches('/'))
}

/// GETs `url` and prints the JSON answer.
fn print_get(url: &str, token: &TokenArg) -> anyhow::Result<()> {
    let v = http("GET", url, token.read()?.as_deref(), None)?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run { config } => {
            let settings = settings(config.as_deref())?;
            init_logs(settings.log_format, "info");
            exit_on_panic();
            runtime()?.block_on(edgesync::daemon::run(settings))
        }
        Command::Demo => {
            // The demo tells its own story on stdout; logs only for problems unless asked.
            init_logs(LogFormat::Auto, "warn");
            exit_on_panic();
            runtime()?.block_on(edgesync::daemon::demo::run())
        }
        Command::Ingest {
            api,
            token,
            doc,
            id,
            ts,
            fields,
        } => {
            let mut f = serde_json::Map::new();
            for kv in fields {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| anyhow::anyhow!("field {kv:?} is not NAME=VALUE"))?;
                f.insert(k.to_string(), field_value(v));
            }
            let body = serde_json::json!({"doc": doc, "id": id, "ts": ts, "fields": f});
            let token = token.read()?;
            let v = http(
                "POST",
                &endpoint(&api, "/v1/ingest"),
                token.as_deref(),
                Some(body),
            )?;
            println!("{v}");
            Ok(())
        }
        Command::Get {
            api,
            token,
            doc,
            conflicts,
            from,
            to,
            limit,
            after,
            latest,
        } => {
            if latest {
                return print_get(&endpoint(&api, &format!("/v1/docs/{doc}/latest")), &token);
            }
            let mut q: Vec<String> = Vec::new();
            if conflicts {
                q.push("conflicts=true".into());
            }
            q.extend(from.map(|v| format!("from={v}")));
            q.extend(to.map(|v| format!("to={v}")));
            q.extend(limit.map(|v| format!("limit={v}")));
            // Cursors are digits, a dot and hex: nothing to escape.
            q.extend(after.map(|v| format!("after={v}")));
            let q = if q.is_empty() {
                String::new()
            } else {
                format!("?{}", q.join("&"))
            };
            print_get(&endpoint(&api, &format!("/v1/docs/{doc}{q}")), &token)
        }
        Command::Status { api, token } => print_get(&endpoint(&api, "/v1/status"), &token),
        Command::Check { data_dir, name } => check(data_dir, &name),
        Command::Backup { data_dir, to } => {
            let b = edgesync::backup::backup(&data_dir, &to)?;
            println!("{}", serde_json::to_string_pretty(&b)?);
            Ok(())
        }
        Command::Restore { from, data_dir } => {
            let at = edgesync::backup::restore(&from, &data_dir)?;
            println!(
                "restored the backup of {at} (ms since the Unix epoch) into {}; the node's next start takes a new store id and actor epoch",
                data_dir.display()
            );
            Ok(())
        }
        Command::Pki { command } => pki_command(command),
        Command::Health { api } => {
            let v = http("GET", &endpoint(&api, "/healthz"), None, None)?;
            println!("{v}");
            Ok(())
        }
        Command::Config {
            command: ConfigCommand::Check { config },
        } => {
            let s = settings(config.as_deref())?;
            println!("{}", serde_json::to_string_pretty(&s.to_json())?);
            Ok(())
        }
        Command::DebugPanic => {
            exit_on_panic();
            let _ = std::thread::spawn(|| panic!("planted panic"));
            // Without the policy the process would run on (and exit 0 after this).
            std::thread::sleep(std::time::Duration::from_secs(10));
            Ok(())
        }
        Command::DebugIngestLoop {
            data_dir,
            durability,
        } => ingest_loop(data_dir, durability),
    }
}

fn pki_command(cmd: PkiCommand) -> anyhow::Result<()> {
    match cmd {
        PkiCommand::Init { dir, valid_days } => {
            let (crt, key) = pki::init(&dir, valid_days)?;
            println!(
                "created {}, {} and an empty revocation list {}",
                crt.display(),
                key.display(),
                crl::crl_path(&dir).display()
            );
        }
        PkiCommand::Issue {
            dir,
            name,
            role,
            site,
            valid_days,
        } => {
            let name = NodeName::new(name).context("invalid node name")?;
            if role != Role::Cloud && site.is_none() {
                eprintln!(
                    "note: a {} without a site may write nothing under the default rules (they let gateways and edge nodes write their site's documents); give --site",
                    role.as_str()
                );
            }
            let spec = pki::NodeSpec::new(name, role, site, valid_days)?;
            let (crt, key) = pki::issue(&dir, &spec)?;
            println!("issued {} and {}", crt.display(), key.display());
        }
        PkiCommand::Revoke { dir, name, reason } => {
            let name = NodeName::new(name).context("invalid node name")?;
            let r = crl::revoke(&dir, &name, reason)?;
            if r.added {
                println!(
                    "revoked {name} (serial {}, {}) in {}",
                    r.serial,
                    reason.as_str(),
                    r.path.display()
                );
            } else {
                println!(
                    "{name}'s certificate (serial {}) was already revoked in {}",
                    r.serial,
                    r.path.display()
                );
            }
        }
        PkiCommand::Show {
            file,
            crl: list,
            ca,
        } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let der = pki::pem_to_der(&text, &file.display().to_string())?;
            let info = pki::cert_info(&der).with_context(|| file.display().to_string())?;
            let serial = crl::serial_of(&der)?;
            let mut v = serde_json::to_value(&info)?;
            v["serial"] = serde_json::json!(crl::hex(&serial));
            let beside = file
                .parent()
                .map(|d| d.join(crl::CRL_FILE))
                .filter(|p| p.exists());
            v["revoked"] = match list.or(beside) {
                None => serde_json::Value::Null,
                Some(path) => {
                    let ca = ca.unwrap_or_else(|| {
                        path.parent()
                            .unwrap_or(std::path::Path::new("."))
                            .join("ca.crt")
                    });
                    let list = crl::load_file(&path, &ca)?;
                    match list.find(&serial) {
                        None => serde_json::json!(false),
                        Some(e) => serde_json::json!({
                            "at": e.revoked_at
                                .format(&time::format_description::well_known::Rfc3339)
                                .unwrap_or_default(),
                            "reason": e.reason.map(|r| r.as_str()),
                            "list": path.display().to_string(),
                        }),
                    }
                }
            };
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
    }
    Ok(())
}

fn check(data_dir: PathBuf, name: &str) -> anyhow::Result<()> {
    let name = NodeName::new(name).context("invalid node name")?;
    let store = RocksStore::open(&data_dir, Durability::Fsync)?;
    let copy_of = store.copy_mark().context("reading the copy mark")?;
    // Random like every open's: an open that takes a new actor epoch (a store from before
    // epochs) takes this nonce with it, and a fixed one would give every such check one actor.
    let random =
        || edgesync::os::random_bytes::<16>().map_err(|e| anyhow::anyhow!("no randomness: {e}"));
    let boot = Boot {
        nonce: random()?,
        new_store_id: random()?,
    };
    let mut node = Node::open(store, Config::new(name), boot).context("opening the node")?;
    // Readings acknowledged into the ingest journal and not yet folded are folded first, as
    // the next start would: then every reading is in a document the checks below read.
    let folded = node.fold_journal().context("folding the ingest journal")?;
    let docs: Vec<DocId> = node.docs().map(|(d, _)| d.clone()).collect();
    let mut readings = 0usize;
    // The most actors in any one document's clock.
    let mut actors_max = 0usize;
    for doc in &docs {
        node.verify_clock(doc)
            .with_context(|| format!("verifying {doc}"))?;
        actors_max = actors_max.max(node.clock(doc).map_or(0, |c| c.len()));
        if let Ok(Some(view)) = node.sensor_view(doc) {
            anyhow::ensure!(
                view.invalid.is_empty(),
                "{doc}: unparseable readings {:?}",
                view.invalid
            );
            readings += view.readings.len();
        }
    }
    // Checking authors nothing else: record a clean stop only if the last run had one, so that an
    // unclean stop before the check is still seen by the next run.
    if node.last_stop_was_clean() {
        let seq = node.record_clean_stop().context("recording a clean stop")?;
        let durable = node.store().syncer().sync().context("syncing the store")?;
        anyhow::ensure!(durable >= seq, "the clean stop was not made durable");
    }
    let meta = node.meta();
    let store_id: String = meta.store_id.iter().map(|b| format!("{b:02x}")).collect();
    println!(
        "{}",
        serde_json::json!({
            "ok": true,
            "docs": docs.len(),
            "pruned": node.prune_status().pruned,
            "readings": readings,
            "journal_folded": folded.readings,
            "actors_max": actors_max,
            "store_id": store_id,
            "actor_epoch": meta.actor_epoch,
            // The actor slot (null for a certificate from before slots), and whether the store
            // knows it (a new or restored store folds its journal once a peer told it).
            "actor_slot": node.actor_slots_left().map(|_| meta.actor_slot),
            "actor_slot_settled": meta.settled,
            "journal_readings": node.journal_len(),
            // A backup not started on yet: the time it was taken.
            "backup_ms": copy_of,
        })
    );
    Ok(())
}

fn ingest_loop(data_dir: PathBuf, durability: Durability) -> anyhow::Result<()> {
    let mut cfg = Config::new(NodeName::new("crash-test")?);
    cfg.snapshot_changes_min = 64;
    let mut opts = NodeOptions::new(cfg, data_dir);
    opts.durability = durability;
    let node = DurableNode::start(opts)?;
    let run =
        edgesync::os::random_bytes::<8>().map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
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
