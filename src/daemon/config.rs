//! The daemon's TOML configuration and its environment overrides. Unknown keys are refused;
//! relative paths are relative to the configuration file's directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgesync_proto::{NameError, NodeName};
use serde::Deserialize;

use crate::mesh::{PeerConfig, RetryPolicy};
use crate::net::{NetOptions, TlsFiles};
use crate::store::{Durability, UnknownDurability};

/// Largest configuration file read, bytes.
pub const CONFIG_BYTES_MAX: u64 = 1 << 20;

fn default_api() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8401))
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human format on a terminal, JSON otherwise.
    #[default]
    Auto,
    /// Human-readable.
    Human,
    /// One JSON object per line.
    Json,
}

/// A `[[peers]]` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerEntry {
    /// The name the peer's certificate must carry.
    pub name: String,
    /// `host:port` of its QUIC listener.
    pub addr: String,
}

/// The `[sync]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncSection {
    /// First reconnection delay bound, ms (full jitter, doubling). Default 500.
    pub retry_base_ms: u64,
    /// Largest reconnection delay, ms. Default 10000.
    pub retry_cap_ms: u64,
    /// Consecutive failed dials that open a peer's circuit breaker. Default 5.
    pub breaker_failures: u32,
    /// QUIC keep-alive interval, ms. Default 2000.
    pub keep_alive_ms: u64,
    /// QUIC idle timeout, ms. Default 10000: a dead peer is noticed within it.
    pub idle_timeout_ms: u64,
}

impl Default for SyncSection {
    fn default() -> SyncSection {
        let retry = RetryPolicy::default();
        SyncSection {
            retry_base_ms: retry.base_ms,
            retry_cap_ms: retry.cap_ms,
            breaker_failures: retry.breaker_failures,
            keep_alive_ms: 2_000,
            idle_timeout_ms: 10_000,
        }
    }
}

impl SyncSection {
    fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            base_ms: self.retry_base_ms,
            cap_ms: self.retry_cap_ms,
            breaker_failures: self.breaker_failures,
        }
    }

    fn net(&self) -> NetOptions {
        NetOptions {
            keep_alive: Duration::from_millis(self.keep_alive_ms),
            idle_timeout: Duration::from_millis(self.idle_timeout_ms),
            ..NetOptions::default()
        }
    }
}

/// Read or read and write, in a `[[rules]]` entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleAccess {
    /// Receive and hold the documents.
    Read,
    /// Also author changes to them.
    ReadWrite,
}

/// A `[[rules]]` entry: nodes of `role` (any when absent) at `site` (any when absent) may read,
/// or read and write, the documents `docs` matches.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleEntry {
    /// `cloud`, `gateway` or `edge`; absent: every role.
    #[serde(default)]
    pub role: Option<String>,
    /// A site; absent: every site (and nodes without one).
    #[serde(default)]
    pub site: Option<String>,
    /// A document-id pattern: segments, `*` (one segment), `{site}`, `{name}`, and a last
    /// `**` (one or more segments).
    pub docs: String,
    /// `read` or `read-write`.
    pub access: RuleAccess,
}

/// One `[[sinks]]` entry: where the change feed is delivered ([`crate::sinks`]).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SinkEntry {
    /// Its name: letters, digits, `-` and `_`, 1 to 64 of them; unique.
    pub name: String,
    /// `webhook` or `postgres`.
    pub kind: String,
    /// Where: an `http://` or `https://` URL (webhook) or `postgres://user@host:port/database`.
    pub url: String,
    /// `postgres`: the table (a lower-case SQL identifier). Default `edgesync_readings`.
    #[serde(default)]
    pub table: Option<String>,
    /// Which documents (streams, for readings): `*` matches any run of characters; absent:
    /// all.
    #[serde(default)]
    pub docs: Option<String>,
    /// Events per batch, 1 to 10,000. Default 500.
    #[serde(default = "default_sink_batch")]
    pub batch: usize,
}

fn default_sink_batch() -> usize {
    500
}

/// The `[sink_retry]` section: how every sink retries a target that fails.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SinkRetrySection {
    /// The first delay, ms. Default 1,000.
    pub base_ms: u64,
    /// The longest delay, ms. Default 10,000.
    pub cap_ms: u64,
    /// Failures in a row after which the delay is the cap. Default 3.
    pub max_retries: u32,
}

impl Default for SinkRetrySection {
    fn default() -> SinkRetrySection {
        let d = crate::sinks::SinkRetry::default();
        SinkRetrySection {
            base_ms: d.base_ms,
            cap_ms: d.cap_ms,
            max_retries: d.max_retries,
        }
    }
}

/// The name of the sink `CLOUD_ENDPOINT` configures.
pub const CLOUD_ENDPOINT_SINK: &str = "cloud-endpoint";

/// The `[streams]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamsSection {
    /// Width of a stream's buckets in minutes of reading time; must divide a day. Default 60.
    pub bucket_minutes: u64,
}

impl Default for StreamsSection {
    fn default() -> StreamsSection {
        StreamsSection { bucket_minutes: 60 }
    }
}

/// The `[retention]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionSection {
    /// Buckets that ended more than this many hours ago are dropped and not taken again, and
    /// older readings are refused. Default: none (everything is kept).
    pub keep_hours: Option<u64>,
    /// Peers that must all have acknowledged a closed bucket before its content is dropped
    /// here (store-and-forward). Default: none (no pruning).
    pub prune_after_ack: Vec<String>,
    /// Minutes after its span's end that a bucket counts as closed. Default 10.
    pub prune_grace_minutes: u64,
    /// Events the change feed keeps at most (`GET /v1/feed`); 0 keeps no feed. Default
    /// 1,000,000.
    pub feed_events: u64,
}

impl Default for RetentionSection {
    fn default() -> RetentionSection {
        RetentionSection {
            keep_hours: None,
            prune_after_ack: Vec::new(),
            prune_grace_minutes: 10,
            feed_events: 1_000_000,
        }
    }
}

fn default_durability() -> String {
    "fsync".into()
}

/// The configuration file. `name`, `data_dir` and `[tls]` are required, in the file or from
/// the environment ([`ENV_VARS`]); with all of them in the environment no file is needed.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The node's name; must equal the name in its certificate.
    #[serde(default)]
    pub name: String,
    /// Data directory (RocksDB).
    #[serde(default)]
    pub data_dir: PathBuf,
    /// QUIC listen address; absent for a node that only dials out.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// Local HTTP API address. Default `127.0.0.1:8401`.
    #[serde(default = "default_api")]
    pub api: SocketAddr,
    /// A separate listener serving only `/metrics` (the API serves it too).
    #[serde(default)]
    pub metrics: Option<SocketAddr>,
    /// A file holding the bearer token every API route but `/healthz` and `/metrics` requires.
    /// Default: none (no token; fine on a loopback `api`).
    #[serde(default)]
    pub api_token_file: Option<PathBuf>,
    /// Host names the API answers to besides IP addresses and `localhost` (requests naming any
    /// other host get 421: DNS rebinding). Default: none.
    #[serde(default)]
    pub api_hosts: Vec<String>,
    /// `fsync` (default) or `wal`.
    #[serde(default = "default_durability")]
    pub durability: String,
    /// `auto` (default), `human` or `json`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// TLS material.
    #[serde(default)]
    pub tls: TlsFiles,
    /// Peers to dial.
    #[serde(default)]
    pub peers: Vec<PeerEntry>,
    /// Reconnection and transport timing.
    #[serde(default)]
    pub sync: SyncSection,
    /// Sensor streams.
    #[serde(default)]
    pub streams: StreamsSection,
    /// How long readings are kept.
    #[serde(default)]
    pub retention: RetentionSection,
    /// Who may write and read which documents; absent: the defaults (cloud nodes everything,
    /// gateways and edge nodes their site's documents). The same on every node of a fleet.
    #[serde(default)]
    pub rules: Vec<RuleEntry>,
    /// Where the change feed is delivered.
    #[serde(default)]
    pub sinks: Vec<SinkEntry>,
    /// How sinks retry.
    #[serde(default)]
    pub sink_retry: SinkRetrySection,
}

impl Default for Config {
    /// The configuration of an empty file (which lacks the required settings).
    fn default() -> Config {
        Config {
            name: String::new(),
            data_dir: PathBuf::new(),
            listen: None,
            api: default_api(),
            metrics: None,
            api_token_file: None,
            api_hosts: Vec::new(),
            durability: default_durability(),
            log_format: LogFormat::Auto,
            tls: TlsFiles::default(),
            peers: Vec::new(),
            sync: SyncSection::default(),
            streams: StreamsSection::default(),
            retention: RetentionSection::default(),
            rules: Vec::new(),
            sinks: Vec::new(),
            sink_retry: SinkRetrySection::default(),
        }
    }
}

/// The configuration, checked and with environment overrides applied.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Node name.
    pub name: NodeName,
    /// Data directory.
    pub data_dir: PathBuf,
    /// QUIC listen address.
    pub listen: Option<SocketAddr>,
    /// HTTP API address.
    pub api: SocketAddr,
    /// Metrics-only listener.
    pub metrics: Option<SocketAddr>,
    /// The API's token file, if any.
    pub api_token_file: Option<PathBuf>,
    /// Extra host names the API answers to.
    pub api_hosts: Vec<String>,
    /// Durability.
    pub durability: Durability,
    /// Log format.
    pub log_format: LogFormat,
    /// TLS files.
    pub tls: TlsFiles,
    /// Peers.
    pub peers: Vec<PeerConfig>,
    /// Reconnection policy.
    pub retry: RetryPolicy,
    /// Transport options.
    pub net: NetOptions,
    /// Bucket width of the streams this node writes, ms.
    pub bucket_ms: u64,
    /// Retention, ms; `None` keeps everything.
    pub keep_ms: Option<u64>,
    /// Peers whose acknowledgement lets a closed bucket be pruned; empty: no pruning.
    pub prune_after_ack: Vec<NodeName>,
    /// How long after its end a bucket is closed, ms.
    pub prune_grace_ms: u64,
    /// Events the change feed keeps at most; 0: no feed.
    pub feed_events: u64,
    /// The fleet's rules.
    pub rules: edgesync_proto::Rules,
    /// Sinks of the change feed.
    pub sinks: Vec<crate::sinks::SinkConfig>,
    /// How sinks retry.
    pub sink_retry: crate::sinks::SinkRetry,
}

/// A configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{}: cannot read", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is larger than [`CONFIG_BYTES_MAX`].
    #[error("{}: larger than {CONFIG_BYTES_MAX} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file is not valid TOML for this configuration (unknown keys included).
    #[error("{}: invalid configuration", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: toml::de::Error,
    },
    /// The values do not make sense together, or an override is bad.
    #[error("{}: invalid settings", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: SettingsError,
    },
}

/// A parsed configuration (with its environment overrides) that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// An environment override does not parse.
    #[error("{var}={value:?} is not {expected}")]
    Env {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
    /// The node's name is not a valid node name.
    #[error("name")]
    Name(#[source] NameError),
    /// `durability` is neither `fsync` nor `wal`.
    #[error("durability")]
    Durability(#[source] UnknownDurability),
    /// A `[sync]` value is out of range.
    #[error("sync.{key} {rule}")]
    Sync {
        /// The key.
        key: &'static str,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// A `[streams]` value is out of range.
    #[error("streams.{key} {rule}")]
    Streams {
        /// The key.
        key: &'static str,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// A `[retention]` value is out of range.
    #[error("retention.{key} {rule}")]
    Retention {
        /// The key.
        key: &'static str,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// A name in `retention.prune_after_ack` is not a valid node name.
    #[error("retention.prune_after_ack")]
    PruneName(#[source] NameError),
    /// A peer's name is not a valid node name.
    #[error("peers")]
    PeerName(#[source] NameError),
    /// A `[[rules]]` entry does not parse.
    #[error("rules[{index}]: {why}")]
    Rule {
        /// Its position (0-based).
        index: usize,
        /// Why.
        why: String,
    },
    /// A `[[sinks]]` entry is invalid.
    #[error("sinks[{index}]: {why}")]
    Sink {
        /// Its position (0-based).
        index: usize,
        /// Why.
        why: String,
    },
    /// A `[sink_retry]` value is out of range.
    #[error("sink_retry.{key} {rule}")]
    SinkRetry {
        /// The key.
        key: &'static str,
        /// The rule it breaks.
        rule: &'static str,
    },
    /// A name in `api_hosts` is not a host name.
    #[error("api_hosts: {0:?} is not a host name (letters, digits, '-' and '.', no port)")]
    ApiHost(String),
    /// A peer is this node.
    #[error("peers: {0} is this node")]
    PeerIsSelf(NodeName),
    /// A peer is listed twice.
    #[error("peers: {0} listed twice")]
    PeerTwice(NodeName),
    /// A required setting is in neither the file nor the environment.
    #[error("{key} is required (in the configuration file, or {var})")]
    Missing {
        /// The key.
        key: &'static str,
        /// Its environment variable.
        var: &'static str,
    },
    /// A peer's address lacks a port.
    #[error("peers: {peer}: address {addr:?} needs host:port")]
    PeerAddress {
        /// The peer.
        peer: NodeName,
        /// The address given.
        addr: String,
    },
}

/// The environment variables read, for overrides (name, value).
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Every environment override: (variable, the configuration key it sets, its format). An
/// override replaces the file's value; an empty variable is ignored (but for the lists, where
/// it empties the list). The README's table lists the same (a test checks).
pub const ENV_VARS: &[(&str, &str, &str)] = &[
    ("EDGESYNC_NAME", "name", "a node name"),
    ("EDGESYNC_DATA_DIR", "data_dir", "a path"),
    (
        "EDGE_STORAGE_DIR",
        "data_dir",
        "a path (the seed's name; EDGESYNC_DATA_DIR wins)",
    ),
    ("EDGESYNC_LISTEN", "listen", "host:port, or `none`"),
    ("EDGESYNC_API", "api", "host:port"),
    ("EDGESYNC_METRICS", "metrics", "host:port, or `none`"),
    (
        "METRICS_PORT",
        "metrics",
        "a port, on the API's host (the seed's name)",
    ),
    ("EDGESYNC_API_TOKEN_FILE", "api_token_file", "a path"),
    (
        "EDGESYNC_API_HOSTS",
        "api_hosts",
        "host names, comma-separated",
    ),
    ("EDGESYNC_DURABILITY", "durability", "`fsync` or `wal`"),
    (
        "EDGESYNC_LOG_FORMAT",
        "log_format",
        "`auto`, `human` or `json`",
    ),
    ("EDGESYNC_TLS_CA", "tls.ca", "a path"),
    ("EDGESYNC_TLS_CERT", "tls.cert", "a path"),
    ("EDGESYNC_TLS_KEY", "tls.key", "a path"),
    ("EDGESYNC_TLS_CRL", "tls.crl", "a path, or `none`"),
    (
        "EDGESYNC_PEERS",
        "peers",
        "`name=host:port`, comma-separated (this node's own entry is skipped)",
    ),
    ("EDGESYNC_RETRY_BASE_MS", "sync.retry_base_ms", "ms"),
    ("EDGESYNC_RETRY_CAP_MS", "sync.retry_cap_ms", "ms"),
    (
        "EDGESYNC_BREAKER_FAILURES",
        "sync.breaker_failures",
        "a count",
    ),
    ("EDGESYNC_KEEP_ALIVE_MS", "sync.keep_alive_ms", "ms"),
    ("EDGESYNC_IDLE_TIMEOUT_MS", "sync.idle_timeout_ms", "ms"),
    (
        "EDGESYNC_BUCKET_MINUTES",
        "streams.bucket_minutes",
        "minutes",
    ),
    (
        "EDGESYNC_KEEP_HOURS",
        "retention.keep_hours",
        "hours, or `none`",
    ),
    (
        "EDGESYNC_PRUNE_AFTER_ACK",
        "retention.prune_after_ack",
        "node names, comma-separated",
    ),
    (
        "EDGESYNC_PRUNE_GRACE_MINUTES",
        "retention.prune_grace_minutes",
        "minutes",
    ),
    (
        "EDGESYNC_FEED_EVENTS",
        "retention.feed_events",
        "a number of events (0: no feed)",
    ),
    (
        "CLOUD_ENDPOINT",
        "sinks",
        "a URL: a webhook sink named `cloud-endpoint` delivering every event (the seed's name)",
    ),
    (
        "EDGESYNC_SINKS",
        "sinks",
        "a JSON array of sink objects (`name`, `kind`, `url`, `docs`, `batch`)",
    ),
    (
        "SYNC_RETRY_BASE_MS",
        "sink_retry.base_ms",
        "ms (the seed's name)",
    ),
    ("EDGESYNC_SINK_RETRY_CAP_MS", "sink_retry.cap_ms", "ms"),
    (
        "SYNC_MAX_RETRIES",
        "sink_retry.max_retries",
        "a number of failures (the seed's name)",
    ),
    (
        "EDGESYNC_RULES",
        "rules",
        "a JSON array of rule objects (`role`, `site`, `docs`, `access`)",
    ),
];

impl Settings {
    /// Settings for embedding: the configuration file's defaults (API on `127.0.0.1:8401`, no
    /// QUIC listener, no peers, `fsync`, `[sync]` defaults) for node `name`.
    pub fn new(name: NodeName, data_dir: impl Into<PathBuf>, tls: TlsFiles) -> Settings {
        let s = SyncSection::default();
        Settings {
            name,
            data_dir: data_dir.into(),
            listen: None,
            api: default_api(),
            metrics: None,
            api_token_file: None,
            api_hosts: Vec::new(),
            durability: Durability::Fsync,
            log_format: LogFormat::Auto,
            tls,
            peers: Vec::new(),
            retry: s.retry(),
            net: s.net(),
            bucket_ms: 3_600_000,
            keep_ms: None,
            prune_after_ack: Vec::new(),
            prune_grace_ms: 600_000,
            feed_events: 1_000_000,
            rules: edgesync_proto::Rules::default(),
            sinks: Vec::new(),
            sink_retry: crate::sinks::SinkRetry::default(),
        }
    }

    /// The core's configuration for these settings: defaults, with this node's name, bucket
    /// width and retention.
    pub fn core_config(&self) -> edgesync_proto::Config {
        let mut c = edgesync_proto::Config::new(self.name.clone());
        c.bucket_ms = self.bucket_ms;
        c.keep_ms = self.keep_ms;
        c.prune_after_ack = self.prune_after_ack.clone();
        c.prune_grace_ms = self.prune_grace_ms;
        c.feed_events_max = self.feed_events;
        c.trust.rules = self.rules.clone();
        // A node that dials peers asks the first one it reaches which actor slots its
        // certificate spent before it authors from a new or restored store; a node that dials
        // none (a hub peers dial) takes what its store names.
        c.settle_from_peers = !self.peers.is_empty();
        c
    }

    /// Reads and checks `path`, then applies the overrides of [`ENV_VARS`] from `env`.
    /// `LOG_LEVEL` is read by the logger.
    pub fn load(path: &Path, env: Env<'_>) -> Result<Settings, ConfigError> {
        let path_buf = || path.to_path_buf();
        let read = |source| ConfigError::Read {
            path: path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        if meta.len() > CONFIG_BYTES_MAX {
            return Err(ConfigError::TooLarge { path: path_buf() });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        let cfg: Config = toml::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Settings::from_config(cfg, base, env).map_err(|source| ConfigError::Invalid {
            path: path_buf(),
            source,
        })
    }

    /// Settings from the environment alone ([`ENV_VARS`]; a container without a configuration
    /// file): the defaults of an empty file with the overrides applied; relative paths are
    /// relative to the working directory.
    pub fn from_env(env: Env<'_>) -> Result<Settings, SettingsError> {
        Settings::from_config(Config::default(), Path::new("."), env)
    }

    /// The effective settings as JSON (what `edgesync config check` prints).
    pub fn to_json(&self) -> serde_json::Value {
        let path = |p: &Path| p.display().to_string();
        serde_json::json!({
            "name": self.name.as_str(),
            "data_dir": path(&self.data_dir),
            "listen": self.listen.map(|a| a.to_string()),
            "api": self.api.to_string(),
            "metrics": self.metrics.map(|a| a.to_string()),
            "api_token_file": self.api_token_file.as_deref().map(path),
            "api_hosts": self.api_hosts,
            "durability": match self.durability {
                Durability::Fsync => "fsync",
                Durability::Wal => "wal",
            },
            "log_format": match self.log_format {
                LogFormat::Auto => "auto",
                LogFormat::Human => "human",
                LogFormat::Json => "json",
            },
            "tls": {
                "ca": path(&self.tls.ca),
                "cert": path(&self.tls.cert),
                "key": path(&self.tls.key),
                "crl": self.tls.crl.as_deref().map(path),
            },
            "peers": self.peers.iter().map(|p| serde_json::json!({"name": p.name.as_str(), "addr": p.addr})).collect::<Vec<_>>(),
            "sync": {
                "retry_base_ms": self.retry.base_ms,
                "retry_cap_ms": self.retry.cap_ms,
                "breaker_failures": self.retry.breaker_failures,
                "keep_alive_ms": self.net.keep_alive.as_millis() as u64,
                "idle_timeout_ms": self.net.idle_timeout.as_millis() as u64,
            },
            "streams": {"bucket_minutes": self.bucket_ms / 60_000},
            "retention": {
                "keep_hours": self.keep_ms.map(|ms| ms / 3_600_000),
                "prune_after_ack": self.prune_after_ack.iter().map(NodeName::as_str).collect::<Vec<_>>(),
                "prune_grace_minutes": self.prune_grace_ms / 60_000,
                "feed_events": self.feed_events,
            },
            "sinks": self.sinks.iter().map(|s| serde_json::json!({
                "name": s.name,
                "kind": s.kind.name(),
                "url": crate::sinks::redact(s.kind.url()),
                "table": match &s.kind {
                    crate::sinks::SinkKind::Postgres { table, .. } => Some(table),
                    crate::sinks::SinkKind::Webhook { .. } => None,
                },
                "docs": s.docs.as_ref().map(|d| d.as_str()),
                "batch": s.batch,
            })).collect::<Vec<_>>(),
            "sink_retry": {
                "base_ms": self.sink_retry.base_ms,
                "cap_ms": self.sink_retry.cap_ms,
                "max_retries": self.sink_retry.max_retries,
            },
            "rules": self.rules.0.iter().map(|r| serde_json::json!({
                "role": r.role.map(|x| x.to_string()),
                "site": r.site,
                "docs": r.docs.to_string(),
                "access": if r.write { "read-write" } else { "read" },
            })).collect::<Vec<_>>(),
        })
    }

    /// Checks a parsed configuration; relative paths are joined to `base`.
    pub fn from_config(
        mut cfg: Config,
        base: &Path,
        env: Env<'_>,
    ) -> Result<Settings, SettingsError> {
        apply_env(&mut cfg, env)?;
        let required = [
            (cfg.name.is_empty(), "name", "EDGESYNC_NAME"),
            (
                cfg.data_dir.as_os_str().is_empty(),
                "data_dir",
                "EDGESYNC_DATA_DIR",
            ),
            (
                cfg.tls.ca.as_os_str().is_empty(),
                "tls.ca",
                "EDGESYNC_TLS_CA",
            ),
            (
                cfg.tls.cert.as_os_str().is_empty(),
                "tls.cert",
                "EDGESYNC_TLS_CERT",
            ),
            (
                cfg.tls.key.as_os_str().is_empty(),
                "tls.key",
                "EDGESYNC_TLS_KEY",
            ),
        ];
        if let Some((_, key, var)) = required.into_iter().find(|r| r.0) {
            return Err(SettingsError::Missing { key, var });
        }
        let name = NodeName::new(cfg.name.clone()).map_err(SettingsError::Name)?;
        let durability: Durability = cfg.durability.parse().map_err(SettingsError::Durability)?;
        let s = &cfg.sync;
        check_sync(s)?;
        let peers = check_peers(&cfg.peers, &name)?;
        let b = cfg.streams.bucket_minutes;
        if b == 0 || 1440 % b != 0 {
            return Err(SettingsError::Streams {
                key: "bucket_minutes",
                rule: "must divide a day (1440 minutes): 1, 2, 5, 10, 15, 30, 60, 120, ...",
            });
        }
        let keep_ms = match cfg.retention.keep_hours {
            Some(0) => {
                return Err(SettingsError::Retention {
                    key: "keep_hours",
                    rule: "must be at least 1 (leave it out to keep everything)",
                })
            }
            Some(h) if h > 24 * 365 * 100 => {
                return Err(SettingsError::Retention {
                    key: "keep_hours",
                    rule: "must be at most 876000 (100 years)",
                })
            }
            Some(h) => Some(h * 3_600_000),
            None => None,
        };
        let mut prune_after_ack: Vec<NodeName> = Vec::new();
        for p in &cfg.retention.prune_after_ack {
            let p = NodeName::new(p.clone()).map_err(SettingsError::PruneName)?;
            if p == name {
                return Err(SettingsError::Retention {
                    key: "prune_after_ack",
                    rule: "must not name this node",
                });
            }
            if !prune_after_ack.contains(&p) {
                prune_after_ack.push(p);
            }
        }
        if cfg.retention.prune_grace_minutes > 7 * 24 * 60 {
            return Err(SettingsError::Retention {
                key: "prune_grace_minutes",
                rule: "must be at most 10080 (a week)",
            });
        }
        let api_hosts = check_api_hosts(&cfg.api_hosts)?;
        let rules = check_rules(&cfg.rules)?;
        let join = |p: &Path| {
            if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            }
        };
        Ok(Settings {
            name,
            data_dir: join(&cfg.data_dir),
            listen: cfg.listen,
            api: cfg.api,
            metrics: cfg.metrics,
            api_token_file: cfg.api_token_file.as_deref().map(join),
            api_hosts,
            durability,
            log_format: cfg.log_format,
            tls: TlsFiles {
                ca: join(&cfg.tls.ca),
                cert: join(&cfg.tls.cert),
                key: join(&cfg.tls.key),
                crl: cfg.tls.crl.as_deref().map(join),
            },
            peers,
            retry: s.retry(),
            net: s.net(),
            bucket_ms: b * 60_000,
            keep_ms,
            prune_after_ack,
            prune_grace_ms: cfg.retention.prune_grace_minutes * 60_000,
            feed_events: cfg.retention.feed_events,
            rules,
            sinks: {
                let sinks = check_sinks(&cfg.sinks)?;
                if !sinks.is_empty() && cfg.retention.feed_events == 0 {
                    return Err(SettingsError::Sink {
                        index: 0,
                        why: "sinks deliver the change feed: retention.feed_events must not be 0"
                            .into(),
                    });
                }
                sinks
            },
            sink_retry: check_sink_retry(&cfg.sink_retry)?,
        })
    }
}

/// Applies the environment overrides ([`ENV_VARS`]) to `cfg`.
fn apply_env(cfg: &mut Config, env: Env<'_>) -> Result<(), SettingsError> {
    let bad = |var, value: String, expected| SettingsError::Env {
        var,
        value,
        expected,
    };
    // A set, non-empty variable.
    let get = |var: &str| {
        env(var)
            .filter(|v| !v.trim().is_empty())
            .map(|v| v.trim().to_string())
    };
    let list = |v: String| -> Vec<String> {
        v.split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(String::from)
            .collect()
    };
    fn num<T: std::str::FromStr>(
        get: &dyn Fn(&str) -> Option<String>,
        var: &'static str,
        expected: &'static str,
    ) -> Result<Option<T>, SettingsError> {
        get(var)
            .map(|v| {
                v.parse().map_err(|_| SettingsError::Env {
                    var,
                    value: v,
                    expected,
                })
            })
            .transpose()
    }
    let addr = |var: &'static str| -> Result<Option<Option<SocketAddr>>, SettingsError> {
        get(var)
            .map(|v| {
                if v == "none" {
                    Ok(None)
                } else {
                    v.parse()
                        .map(Some)
                        .map_err(|_| bad(var, v, "host:port (an IP address and a port) or none"))
                }
            })
            .transpose()
    };
    if let Some(v) = get("EDGESYNC_NAME") {
        cfg.name = v;
    }
    if let Some(d) = get("EDGESYNC_DATA_DIR").or_else(|| get("EDGE_STORAGE_DIR")) {
        cfg.data_dir = PathBuf::from(d);
    }
    if let Some(a) = addr("EDGESYNC_LISTEN")? {
        cfg.listen = a;
    }
    if let Some(a) = addr("EDGESYNC_API")? {
        cfg.api = a.ok_or_else(|| bad("EDGESYNC_API", "none".into(), "host:port"))?;
    }
    if let Some(a) = addr("EDGESYNC_METRICS")? {
        cfg.metrics = a;
    } else if let Some(port) = num::<u16>(&get, "METRICS_PORT", "a port")? {
        cfg.metrics = Some(SocketAddr::new(cfg.api.ip(), port));
    }
    if let Some(v) = get("EDGESYNC_API_TOKEN_FILE") {
        cfg.api_token_file = Some(PathBuf::from(v));
    }
    if let Some(v) = env("EDGESYNC_API_HOSTS") {
        cfg.api_hosts = list(v);
    }
    if let Some(v) = get("EDGESYNC_DURABILITY") {
        cfg.durability = v;
    }
    if let Some(v) = get("EDGESYNC_LOG_FORMAT") {
        cfg.log_format = match v.as_str() {
            "auto" => LogFormat::Auto,
            "human" => LogFormat::Human,
            "json" => LogFormat::Json,
            _ => return Err(bad("EDGESYNC_LOG_FORMAT", v, "auto, human or json")),
        };
    }
    if let Some(v) = get("EDGESYNC_TLS_CA") {
        cfg.tls.ca = PathBuf::from(v);
    }
    if let Some(v) = get("EDGESYNC_TLS_CERT") {
        cfg.tls.cert = PathBuf::from(v);
    }
    if let Some(v) = get("EDGESYNC_TLS_KEY") {
        cfg.tls.key = PathBuf::from(v);
    }
    if let Some(v) = get("EDGESYNC_TLS_CRL") {
        cfg.tls.crl = (v != "none").then(|| PathBuf::from(v));
    }
    if let Some(v) = env("EDGESYNC_PEERS") {
        let mut peers = Vec::new();
        for entry in list(v) {
            let Some((name, addr)) = entry.split_once('=') else {
                return Err(bad(
                    "EDGESYNC_PEERS",
                    entry,
                    "name=host:port entries, comma-separated",
                ));
            };
            // One list serves every replica of a StatefulSet: each skips its own entry.
            if name.trim() == cfg.name {
                continue;
            }
            peers.push(PeerEntry {
                name: name.trim().to_string(),
                addr: addr.trim().to_string(),
            });
        }
        cfg.peers = peers;
    }
    if let Some(v) = num(&get, "EDGESYNC_RETRY_BASE_MS", "a number of ms")? {
        cfg.sync.retry_base_ms = v;
    } else if let Some(v) = num(&get, "SYNC_RETRY_BASE_MS", "a number of ms")? {
        cfg.sync.retry_base_ms = v;
    }
    if let Some(v) = num(&get, "EDGESYNC_RETRY_CAP_MS", "a number of ms")? {
        cfg.sync.retry_cap_ms = v;
    }
    if let Some(v) = num(&get, "EDGESYNC_BREAKER_FAILURES", "a count")? {
        cfg.sync.breaker_failures = v;
    }
    if let Some(v) = num(&get, "EDGESYNC_KEEP_ALIVE_MS", "a number of ms")? {
        cfg.sync.keep_alive_ms = v;
    }
    if let Some(v) = num(&get, "EDGESYNC_IDLE_TIMEOUT_MS", "a number of ms")? {
        cfg.sync.idle_timeout_ms = v;
    }
    if let Some(v) = num(&get, "EDGESYNC_BUCKET_MINUTES", "a number of minutes")? {
        cfg.streams.bucket_minutes = v;
    }
    if let Some(v) = get("EDGESYNC_KEEP_HOURS") {
        cfg.retention.keep_hours = if v == "none" {
            None
        } else {
            Some(
                v.parse()
                    .map_err(|_| bad("EDGESYNC_KEEP_HOURS", v, "a number of hours or none"))?,
            )
        };
    }
    if let Some(v) = env("EDGESYNC_PRUNE_AFTER_ACK") {
        cfg.retention.prune_after_ack = list(v);
    }
    if let Some(v) = num(&get, "EDGESYNC_PRUNE_GRACE_MINUTES", "a number of minutes")? {
        cfg.retention.prune_grace_minutes = v;
    }
    if let Some(v) = num(&get, "EDGESYNC_FEED_EVENTS", "a number of events")? {
        cfg.retention.feed_events = v;
    }
    if let Some(v) = get("EDGESYNC_RULES") {
        cfg.rules = serde_json::from_str(&v).map_err(|_| {
            bad(
                "EDGESYNC_RULES",
                v,
                "a JSON array of {\"role\", \"site\", \"docs\", \"access\"} objects",
            )
        })?;
    }
    if let Some(v) = get("EDGESYNC_SINKS") {
        cfg.sinks = serde_json::from_str(&v).map_err(|_| {
            bad(
                "EDGESYNC_SINKS",
                v,
                "a JSON array of {\"name\", \"kind\", \"url\", \"docs\", \"batch\"} objects",
            )
        })?;
    }
    if let Some(url) = get("CLOUD_ENDPOINT") {
        cfg.sinks.retain(|s| s.name != CLOUD_ENDPOINT_SINK);
        cfg.sinks.push(SinkEntry {
            name: CLOUD_ENDPOINT_SINK.into(),
            kind: "webhook".into(),
            url,
            table: None,
            docs: None,
            batch: default_sink_batch(),
        });
    }
    if let Some(v) = num(&get, "SYNC_RETRY_BASE_MS", "a number of ms")? {
        cfg.sink_retry.base_ms = v;
    }
    if let Some(v) = num(&get, "EDGESYNC_SINK_RETRY_CAP_MS", "a number of ms")? {
        cfg.sink_retry.cap_ms = v;
    }
    if let Some(v) = num(&get, "SYNC_MAX_RETRIES", "a number of failures")? {
        cfg.sink_retry.max_retries = v;
    }
    Ok(())
}

/// The sinks, checked: unique names of letters, digits, `-` and `_`; a known kind; an HTTP(S)
/// URL; a valid pattern and batch size.
fn check_sinks(entries: &[SinkEntry]) -> Result<Vec<crate::sinks::SinkConfig>, SettingsError> {
    let mut out: Vec<crate::sinks::SinkConfig> = Vec::new();
    for (index, e) in entries.iter().enumerate() {
        let err = |why: String| SettingsError::Sink { index, why };
        let name_ok = (1..=64).contains(&e.name.len())
            && e.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(err(format!(
                "name {:?}: 1 to 64 letters, digits, '-' or '_'",
                e.name
            )));
        }
        if out.iter().any(|s| s.name == e.name) {
            return Err(err(format!("name {:?} is used twice", e.name)));
        }
        let plain = e.url.len() <= 2048 && !e.url.chars().any(char::is_whitespace);
        let kind = match e.kind.as_str() {
            "webhook" => {
                if !(plain && (e.url.starts_with("http://") || e.url.starts_with("https://"))) {
                    return Err(err(format!(
                        "url {:?} is not an http:// or https:// URL",
                        crate::sinks::redact(&e.url)
                    )));
                }
                if e.table.is_some() {
                    return Err(err("table is for postgres sinks".into()));
                }
                crate::sinks::SinkKind::Webhook { url: e.url.clone() }
            }
            "postgres" => {
                let scheme = e.url.starts_with("postgres://") || e.url.starts_with("postgresql://");
                if !(plain && scheme && e.url.parse::<tokio_postgres::Config>().is_ok()) {
                    return Err(err(format!(
                        "url {:?} is not a postgres:// connection URL",
                        crate::sinks::redact(&e.url)
                    )));
                }
                let table = e
                    .table
                    .clone()
                    .unwrap_or_else(|| "edgesync_readings".into());
                if !crate::sinks::is_table_name(&table) || table == crate::sinks::PG_CURSOR_TABLE {
                    return Err(err(format!(
                        "table {table:?}: a lower-case SQL identifier ([a-z_][a-z0-9_]*, at most 63 bytes), not {}",
                        crate::sinks::PG_CURSOR_TABLE
                    )));
                }
                crate::sinks::SinkKind::Postgres {
                    url: e.url.clone(),
                    table,
                }
            }
            other => return Err(err(format!("kind {other:?}: expected webhook or postgres"))),
        };
        let docs = e
            .docs
            .as_deref()
            .map(crate::node::DocPattern::new)
            .transpose()
            .map_err(|w| err(format!("docs: {w}")))?;
        let batch = crate::sinks::check_batch(e.batch).map_err(|w| err(format!("batch {w}")))?;
        out.push(crate::sinks::SinkConfig {
            name: e.name.clone(),
            kind,
            docs,
            batch,
        });
    }
    Ok(out)
}

fn check_sink_retry(r: &SinkRetrySection) -> Result<crate::sinks::SinkRetry, SettingsError> {
    let bad = |key, rule| Err(SettingsError::SinkRetry { key, rule });
    if r.base_ms == 0 || r.base_ms > 3_600_000 {
        return bad("base_ms", "must be 1 to 3600000");
    }
    if r.cap_ms < r.base_ms || r.cap_ms > 3_600_000 {
        return bad("cap_ms", "must be at least base_ms and at most 3600000");
    }
    if r.max_retries > 1_000 {
        return bad("max_retries", "must be at most 1000");
    }
    Ok(crate::sinks::SinkRetry {
        base_ms: r.base_ms,
        cap_ms: r.cap_ms,
        max_retries: r.max_retries,
    })
}

fn check_rules(entries: &[RuleEntry]) -> Result<edgesync_proto::Rules, SettingsError> {
    use edgesync_proto::authz::{Pattern, Rule};
    if entries.is_empty() {
        return Ok(edgesync_proto::Rules::default());
    }
    let mut rules = Vec::new();
    for (index, e) in entries.iter().enumerate() {
        let bad = |why: String| SettingsError::Rule { index, why };
        let role = e
            .role
            .as_deref()
            .map(|r| {
                edgesync_proto::Role::parse(r)
                    .ok_or_else(|| bad(format!("role {r:?} is not cloud, gateway or edge")))
            })
            .transpose()?;
        if let Some(site) = &e.site {
            crate::net::pki::validate_site(site).map_err(|err| bad(err.to_string()))?;
        }
        let docs = Pattern::parse(&e.docs).map_err(|err| bad(err.to_string()))?;
        rules.push(Rule {
            role,
            site: e.site.clone(),
            docs,
            read: true,
            write: e.access == RuleAccess::ReadWrite,
        });
    }
    Ok(edgesync_proto::Rules(rules))
}

fn check_api_hosts(hosts: &[String]) -> Result<Vec<String>, SettingsError> {
    for h in hosts {
        let ok = !h.is_empty()
            && h.len() <= 253
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !ok {
            return Err(SettingsError::ApiHost(h.clone()));
        }
    }
    Ok(hosts.iter().map(|h| h.to_ascii_lowercase()).collect())
}

fn check_sync(s: &SyncSection) -> Result<(), SettingsError> {
    let sync = |key, rule| Err(SettingsError::Sync { key, rule });
    if s.retry_base_ms == 0 || s.retry_base_ms > s.retry_cap_ms {
        return sync(
            "retry_base_ms",
            "must be at least 1 and at most sync.retry_cap_ms",
        );
    }
    if s.retry_cap_ms > 600_000 {
        return sync("retry_cap_ms", "must be at most 600000 (10 minutes)");
    }
    if s.breaker_failures == 0 {
        return sync("breaker_failures", "must be at least 1");
    }
    if s.keep_alive_ms == 0 || s.keep_alive_ms >= s.idle_timeout_ms {
        return sync(
            "keep_alive_ms",
            "must be at least 1 and below sync.idle_timeout_ms",
        );
    }
    if s.idle_timeout_ms > 600_000 {
        return sync("idle_timeout_ms", "must be at most 600000");
    }
    Ok(())
}

fn check_peers(entries: &[PeerEntry], me: &NodeName) -> Result<Vec<PeerConfig>, SettingsError> {
    let mut peers: Vec<PeerConfig> = Vec::new();
    for p in entries {
        let pname = NodeName::new(p.name.clone()).map_err(SettingsError::PeerName)?;
        if &pname == me {
            return Err(SettingsError::PeerIsSelf(pname));
        }
        if peers.iter().any(|q| q.name == pname) {
            return Err(SettingsError::PeerTwice(pname));
        }
        if !p.addr.contains(':') {
            let addr = p.addr.clone();
            return Err(SettingsError::PeerAddress { peer: pname, addr });
        }
        peers.push(PeerConfig {
            name: pname,
            addr: p.addr.clone(),
        });
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "gw-1"
data_dir = "data/gw-1"
listen = "127.0.0.1:7401"
[tls]
ca = "pki/ca.crt"
cert = "pki/gw-1.crt"
key = "pki/gw-1.key"
[[peers]]
name = "cloud"
addr = "127.0.0.1:7400"
"#;

    fn parse(text: &str, env: Env<'_>) -> Result<Settings, String> {
        let cfg: Config = toml::from_str(text).map_err(|e| e.to_string())?;
        Settings::from_config(cfg, Path::new("/etc/edgesync"), env)
            .map_err(|e| crate::error_chain(&e))
    }

    #[test]
    fn defaults_paths_and_overrides() {
        let s = parse(GOOD, &|_| None).unwrap();
        assert_eq!(s.api, default_api());
        assert_eq!(s.data_dir, PathBuf::from("/etc/edgesync/data/gw-1"));
        assert_eq!(s.durability, Durability::Fsync);
        assert_eq!(s.retry.cap_ms, 10_000);
        assert_eq!(s.peers[0].name.as_str(), "cloud");
        assert_eq!((s.bucket_ms, s.keep_ms), (3_600_000, None));
        let env = |k: &str| match k {
            "EDGE_STORAGE_DIR" => Some("/var/lib/x".to_string()),
            "METRICS_PORT" => Some("9100".to_string()),
            "SYNC_RETRY_BASE_MS" => Some("250".to_string()),
            "EDGESYNC_BUCKET_MINUTES" => Some("15".to_string()),
            "EDGESYNC_KEEP_HOURS" => Some("168".to_string()),
            _ => None,
        };
        let s = parse(GOOD, &env).unwrap();
        assert_eq!(s.data_dir, PathBuf::from("/var/lib/x"));
        assert_eq!(s.metrics, Some("127.0.0.1:9100".parse().unwrap()));
        assert_eq!(s.sink_retry.base_ms, 250);
        assert_eq!((s.bucket_ms, s.keep_ms), (900_000, Some(168 * 3_600_000)));
        let core = s.core_config();
        assert_eq!(
            (core.bucket_ms, core.keep_ms),
            (900_000, Some(168 * 3_600_000))
        );
        core.validate().unwrap();
        let file = parse(
            &format!("{GOOD}\n[streams]\nbucket_minutes = 1440\n[retention]\nkeep_hours = 24\n"),
            &|_| None,
        )
        .unwrap();
        assert_eq!(
            (file.bucket_ms, file.keep_ms),
            (86_400_000, Some(86_400_000))
        );
        let pruning = parse(
            &format!("{GOOD}\n[retention]\nprune_after_ack = [\"cloud\", \"cloud-2\"]\nprune_grace_minutes = 5\n"),
            &|_| None,
        )
        .unwrap();
        let core = pruning.core_config();
        let names: Vec<&str> = core.prune_after_ack.iter().map(|n| n.as_str()).collect();
        assert_eq!(
            (names, core.prune_grace_ms),
            (vec!["cloud", "cloud-2"], 300_000)
        );
        let env = |k: &str| (k == "EDGESYNC_PRUNE_AFTER_ACK").then(|| "a, b".to_string());
        let s = parse(GOOD, &env).unwrap();
        assert_eq!(s.prune_after_ack.len(), 2);
        assert_eq!(s.prune_grace_ms, 600_000);
    }

    // The API's token file is a path like the others; its host names are checked.
    #[test]
    fn api_token_and_hosts() {
        let s = parse(
            &format!("api_token_file = \"api.token\"\napi_hosts = [\"GW-1.example\"]\n{GOOD}"),
            &|_| None,
        )
        .unwrap();
        assert_eq!(
            s.api_token_file,
            Some(PathBuf::from("/etc/edgesync/api.token"))
        );
        assert_eq!(s.api_hosts, vec!["gw-1.example".to_string()]);
        let env = |k: &str| match k {
            "EDGESYNC_API_TOKEN_FILE" => Some("/run/secrets/token".to_string()),
            "EDGESYNC_API_HOSTS" => Some("a.example, b.example".to_string()),
            _ => None,
        };
        let s = parse(GOOD, &env).unwrap();
        assert_eq!(s.api_token_file, Some(PathBuf::from("/run/secrets/token")));
        assert_eq!(s.api_hosts.len(), 2);
        let err = parse(&format!("api_hosts = [\"a.example:80\"]\n{GOOD}"), &|_| {
            None
        })
        .unwrap_err();
        assert!(err.contains("api_hosts"), "{err}");
    }

    #[test]
    fn the_example_mesh_configs_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/mesh");
        for n in ["cloud", "gw-1", "gw-2", "edge-1"] {
            let s = Settings::load(&dir.join(format!("{n}.toml")), &|_| None).unwrap();
            assert_eq!(s.name.as_str(), n);
            assert_eq!(s.tls.cert, dir.join(format!("pki/{n}.crt")));
        }
    }

    #[test]
    fn embedding_defaults_match_the_file_defaults() {
        let file = parse(GOOD, &|_| None).unwrap();
        let lib = Settings::new(file.name.clone(), file.data_dir.clone(), file.tls.clone());
        assert_eq!(format!("{:?}", lib.retry), format!("{:?}", file.retry));
        assert_eq!(format!("{:?}", lib.net), format!("{:?}", file.net));
        assert_eq!(
            (lib.api, lib.durability, lib.log_format),
            (file.api, file.durability, file.log_format)
        );
        assert_eq!((lib.bucket_ms, lib.keep_ms), (file.bucket_ms, file.keep_ms));
        assert_eq!(
            lib.bucket_ms,
            edgesync_proto::Config::new(lib.name.clone()).bucket_ms
        );
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        let cases = [
            (format!("{GOOD}\nbogus = 1"), "unknown field"),
            (GOOD.replace("gw-1\"\n", "gw 1\"\n"), "name"),
            (GOOD.replace("\"cloud\"", "\"gw-1\""), "this node"),
            (GOOD.replace("127.0.0.1:7400", "cloudhost"), "host:port"),
            (
                format!("{GOOD}\n[sync]\nretry_cap_ms = 100\n"),
                "retry_base_ms",
            ),
            (
                GOOD.replace("data_dir", "durability = \"sometimes\"\ndata_dir"),
                "durability",
            ),
            (
                format!("{GOOD}\n[streams]\nbucket_minutes = 7\n"),
                "streams.bucket_minutes must divide a day",
            ),
            (
                format!("{GOOD}\n[streams]\nbucket_minutes = 0\n"),
                "streams.bucket_minutes",
            ),
            (
                format!("{GOOD}\n[retention]\nkeep_hours = 0\n"),
                "retention.keep_hours must be at least 1",
            ),
            (
                format!("{GOOD}\n[retention]\nkeep_days = 1\n"),
                "unknown field",
            ),
            (
                format!("{GOOD}\n[retention]\nprune_after_ack = [\"gw-1\"]\n"),
                "retention.prune_after_ack must not name this node",
            ),
            (
                format!("{GOOD}\n[retention]\nprune_after_ack = [\"no one\"]\n"),
                "retention.prune_after_ack",
            ),
        ];
        for (text, expect) in cases {
            let e = parse(&text, &|_| None).unwrap_err();
            assert!(e.contains(expect), "{expect}: {e}");
        }
        let e = parse(GOOD, &|k| (k == "METRICS_PORT").then(|| "x".into())).unwrap_err();
        assert!(e.contains("METRICS_PORT"), "{e}");
        let e = parse(GOOD, &|k| {
            (k == "EDGESYNC_KEEP_HOURS").then(|| "a week".into())
        })
        .unwrap_err();
        assert!(e.contains("EDGESYNC_KEEP_HOURS"), "{e}");
    }

    // Sinks are checked before the node starts, each refusal naming the entry and the rule.
    #[test]
    fn sinks_are_checked() {
        let with = |sinks: &str| parse(&format!("{GOOD}{sinks}"), &|_| None);
        let ok = with(
            "[[sinks]]\nname = \"wh\"\nkind = \"webhook\"\nurl = \"https://h/x\"\ndocs = \"site-a/*\"\n\
             [[sinks]]\nname = \"pg\"\nkind = \"postgres\"\nurl = \"postgres://u:secret@db:5432/x\"\n",
        )
        .unwrap();
        assert_eq!(ok.sinks.len(), 2);
        assert_eq!(ok.sinks[0].batch, 500);
        let shown = ok.to_json().to_string();
        assert!(shown.contains("edgesync_readings"), "{shown}");
        assert!(
            !shown.contains("secret"),
            "a password is never shown: {shown}"
        );
        for (sink, why) in [
            (
                "name = \"a b\"\nkind = \"webhook\"\nurl = \"http://h\"",
                "name",
            ),
            ("name = \"a\"\nkind = \"ftp\"\nurl = \"http://h\"", "kind"),
            (
                "name = \"a\"\nkind = \"webhook\"\nurl = \"file:///etc\"",
                "url",
            ),
            (
                "name = \"a\"\nkind = \"postgres\"\nurl = \"http://h\"",
                "url",
            ),
            (
                "name = \"a\"\nkind = \"postgres\"\nurl = \"postgres://h/x\"\ntable = \"x; drop\"",
                "table",
            ),
            (
                "name = \"a\"\nkind = \"webhook\"\nurl = \"http://h\"\nbatch = 0",
                "batch",
            ),
            (
                "name = \"a\"\nkind = \"webhook\"\nurl = \"http://h\"\ndocs = \"\"",
                "docs",
            ),
        ] {
            let e = with(&format!("[[sinks]]\n{sink}\n")).unwrap_err();
            assert!(e.contains("sinks[0]") && e.contains(why), "{sink}: {e}");
        }
        let twice = "[[sinks]]\nname = \"a\"\nkind = \"webhook\"\nurl = \"http://h\"\n";
        let e = with(&format!("{twice}{twice}")).unwrap_err();
        assert!(e.contains("sinks[1]") && e.contains("twice"), "{e}");
        let e = with(&format!("{twice}[retention]\nfeed_events = 0\n")).unwrap_err();
        assert!(e.contains("feed_events"), "{e}");
        let e = with("[sink_retry]\ncap_ms = 10\n").unwrap_err();
        assert!(e.contains("sink_retry.cap_ms"), "{e}");
        // CLOUD_ENDPOINT adds the seed's sink; SYNC_* set how it retries.
        let env = |k: &str| match k {
            "CLOUD_ENDPOINT" => Some("http://127.0.0.1:9/in".to_string()),
            "SYNC_MAX_RETRIES" => Some("5".to_string()),
            "SYNC_RETRY_BASE_MS" => Some("2000".to_string()),
            _ => None,
        };
        let s = parse(GOOD, &env).unwrap();
        assert_eq!(s.sinks[0].name, CLOUD_ENDPOINT_SINK);
        assert_eq!((s.sink_retry.base_ms, s.sink_retry.max_retries), (2_000, 5));
    }

    // The README's table of overrides is ENV_VARS, row for row.
    #[test]
    fn the_readme_lists_every_override() {
        let readme = include_str!("../../README.md");
        let rows: Vec<(String, String)> = readme
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let var = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
                let key = cells.get(2)?.strip_prefix('`')?.strip_suffix('`')?;
                (var.chars().all(|c| c.is_ascii_uppercase() || c == '_') && var.contains('_'))
                    .then(|| (var.to_string(), key.to_string()))
            })
            .collect();
        let want: Vec<(String, String)> = ENV_VARS
            .iter()
            .map(|(v, k, _)| (v.to_string(), k.to_string()))
            .collect();
        assert_eq!(rows, want);
    }

    // Every override changes the settings (each set alone to a value unlike the default), and
    // every configuration key has one.
    #[test]
    fn every_override_applies() {
        let value = |var: &str| -> &str {
            match var {
                "EDGESYNC_NAME" => "gw-9",
                "EDGESYNC_DATA_DIR" | "EDGE_STORAGE_DIR" => "/srv/data",
                "EDGESYNC_LISTEN" => "127.0.0.1:7999",
                "EDGESYNC_API" => "127.0.0.1:8999",
                "EDGESYNC_METRICS" => "127.0.0.1:9999",
                "METRICS_PORT" => "9100",
                "EDGESYNC_API_TOKEN_FILE" => "/run/token",
                "EDGESYNC_API_HOSTS" => "a.example,b.example",
                "EDGESYNC_DURABILITY" => "wal",
                "EDGESYNC_LOG_FORMAT" => "json",
                "EDGESYNC_TLS_CA" | "EDGESYNC_TLS_CERT" | "EDGESYNC_TLS_KEY" => "/tls/x.pem",
                "EDGESYNC_TLS_CRL" => "none",
                "EDGESYNC_PEERS" => "cloud=10.0.0.1:7400,cloud-2=10.0.0.2:7400",
                "EDGESYNC_RETRY_BASE_MS" | "SYNC_RETRY_BASE_MS" => "250",
                "EDGESYNC_RETRY_CAP_MS" => "4000",
                "EDGESYNC_BREAKER_FAILURES" => "9",
                "EDGESYNC_KEEP_ALIVE_MS" => "1500",
                "EDGESYNC_IDLE_TIMEOUT_MS" => "9000",
                "EDGESYNC_BUCKET_MINUTES" => "15",
                "EDGESYNC_KEEP_HOURS" => "48",
                "EDGESYNC_PRUNE_AFTER_ACK" => "cloud",
                "EDGESYNC_PRUNE_GRACE_MINUTES" => "30",
                "EDGESYNC_FEED_EVENTS" => "5000",
                "CLOUD_ENDPOINT" => "http://127.0.0.1:9000/ingest",
                "EDGESYNC_SINKS" => r#"[{"name": "wh", "kind": "webhook", "url": "http://h/x"}]"#,
                "SYNC_MAX_RETRIES" => "7",
                "EDGESYNC_SINK_RETRY_CAP_MS" => "20000",
                "EDGESYNC_RULES" => {
                    r#"[{"role": "gateway", "docs": "shared/**", "access": "read"}]"#
                }
                v => panic!("no test value for {v}"),
            }
        };
        // The example with a revocation list, so that `none` changes something.
        let file = GOOD.replace(
            "key = \"pki/gw-1.key\"\n",
            "key = \"pki/gw-1.key\"\ncrl = \"pki/crl.pem\"\n",
        );
        let base = parse(&file, &|_| None).unwrap().to_json();
        let mut keys_seen = std::collections::BTreeSet::new();
        for (var, key, _) in ENV_VARS {
            let env = |k: &str| (k == *var).then(|| value(var).to_string());
            let got = parse(&file, &env)
                .unwrap_or_else(|e| panic!("{var}: {e}"))
                .to_json();
            assert_ne!(got, base, "{var} changed nothing");
            keys_seen.insert(key.split('.').next().unwrap().to_string());
        }
        // Every top-level key of the configuration is reachable from the environment.
        let top: std::collections::BTreeSet<String> =
            base.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys_seen, top);
    }

    // A container may have no file: the environment alone, with the required settings named.
    #[test]
    fn settings_from_the_environment_alone() {
        let vars = [
            ("EDGESYNC_NAME", "gw-1"),
            ("EDGESYNC_DATA_DIR", "/data"),
            ("EDGESYNC_TLS_CA", "/tls/ca.crt"),
            ("EDGESYNC_TLS_CERT", "/tls/node.crt"),
            ("EDGESYNC_TLS_KEY", "/tls/node.key"),
            (
                "EDGESYNC_PEERS",
                "gw-1=gw-1.site:7400, cloud-0=cloud-0.cloud:7400, cloud-1=cloud-1.cloud:7400",
            ),
        ];
        let env = |k: &str| {
            vars.iter()
                .find(|(v, _)| *v == k)
                .map(|(_, x)| x.to_string())
        };
        let s = Settings::from_env(&env).unwrap();
        assert_eq!(s.name.as_str(), "gw-1");
        assert_eq!(s.peers.len(), 2);
        assert_eq!(s.peers[1].addr, "cloud-1.cloud:7400");
        for (missing, key) in [
            ("EDGESYNC_NAME", "name"),
            ("EDGESYNC_DATA_DIR", "data_dir"),
            ("EDGESYNC_TLS_KEY", "tls.key"),
        ] {
            let env = |k: &str| if k == missing { None } else { env(k) };
            let e = Settings::from_env(&env).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(missing), "{e}");
        }
        let env2 = |k: &str| {
            if k == "EDGESYNC_PEERS" {
                Some("cloud-0".to_string())
            } else {
                env(k)
            }
        };
        let e = Settings::from_env(&env2).unwrap_err().to_string();
        assert!(e.contains("EDGESYNC_PEERS"), "{e}");
    }
}
