//! The transport: QUIC (quinn) with mutual TLS between fleet nodes, carrying the wire protocol's
//! frames on one bidirectional stream per connection.
//!
//! - [`pki`]: the fleet CA, node certificates, and the identity read back from a certificate.
//! - [`tls`]: credentials (reloadable) and the rustls/quinn configurations: all trust decisions.
//! - [`Endpoint`]: one UDP socket that accepts (if listening) and dials; every connection that
//!   completes the handshake becomes a [`Link`] with a verified [`PeerIdentity`].
//!
//! A connection's dialler opens the stream and speaks first (the protocol's Hello). Frames are
//! read with the length checked against the limit before anything is allocated, and handed on
//! undecoded: the core decodes each frame once, and ends the session on a malformed one
//! (the mesh then closes the connection with [`close::MALFORMED`]). QUIC flow control provides
//! backpressure in both directions, so no buffer here grows without bound.

pub mod authorship;
pub mod crl;
pub mod pki;
pub mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgesync_proto::wire::{truncate_utf8, FRAME_HEADER_BYTES};
use edgesync_proto::{Config as CoreConfig, NodeName};

pub use pki::{PeerIdentity, Role};
use tls::Rejected;
pub use tls::{Credentials, TlsError, TlsFiles, ALPN};

/// Transport settings. The frame limit and handshake timeout are the core's
/// ([`NetOptions::for_core`]): one value each, whoever enforces it.
#[derive(Clone, Debug)]
pub struct NetOptions {
    /// QUIC keep-alive interval: keeps NAT bindings and idle links alive, and probes the
    /// peer. Default 2 s.
    pub keep_alive: Duration,
    /// A connection with nothing received for this long is dead. Default 10 s: a dead peer is
    /// noticed within it (a restarted one at once, by a stateless reset: `reset_key`), and an
    /// uplink's drops shorter than it pass unnoticed.
    pub idle_timeout: Duration,
    /// The secret QUIC stateless resets are derived from. Kept across restarts (the daemon
    /// keeps it in `RESET_KEY_FILE` of its data directory), a restarted node answers its
    /// peers' packets on their old connections with resets they accept, so they drop those
    /// connections and redial at once instead of waiting for the idle timeout. `None`: a
    /// random secret for this process.
    pub reset_key: Option<[u8; 32]>,
    /// Longest wait for the TLS handshake and the peer's stream: the core's
    /// `handshake_timeout_ms`.
    pub handshake_timeout: Duration,
    /// Largest frame payload accepted, bytes: the core's `frame_bytes_max`.
    pub frame_bytes_max: u32,
}

/// Random 8-byte QUIC connection ids that any process of this node accepts as its own, so that
/// it answers a packet of a connection it does not know (its predecessor's) with a stateless
/// reset. The reset's token is keyed with [`NetOptions::reset_key`], so only that connection's
/// peer takes it.
struct RandomCids;

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        // The operating system's randomness (it never fails on Linux once booted); zeros
        // otherwise: a connection id needs to be unique, not secret.
        quinn::ConnectionId::new(&crate::os::random_bytes::<8>().unwrap_or_default())
    }

    fn cid_len(&self) -> usize {
        8
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

/// The file in a data directory holding the QUIC stateless-reset secret ([`NetOptions::reset_key`]).
pub const RESET_KEY_FILE: &str = "quic-reset.key";

/// The stateless-reset secret kept in `data_dir`, made (32 random bytes, mode 0600) if there is
/// none or it is not 32 bytes.
pub fn reset_key(data_dir: &std::path::Path) -> std::io::Result<[u8; 32]> {
    let path = data_dir.join(RESET_KEY_FILE);
    if let Ok(bytes) = std::fs::read(&path) {
        if let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice()) {
            return Ok(key);
        }
    }
    std::fs::create_dir_all(data_dir)?;
    let key = crate::os::random_bytes::<32>().map_err(|e| std::io::Error::other(e.to_string()))?;
    crate::os::write_atomic(&path, &key, 0o600)?;
    Ok(key)
}

impl NetOptions {
    /// Default keep-alive and idle timeout, with the frame limit and handshake timeout of the
    /// core configuration `core`.
    pub fn for_core(core: &CoreConfig) -> NetOptions {
        NetOptions {
            keep_alive: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_millis(core.handshake_timeout_ms),
            frame_bytes_max: core.frame_bytes_max,
            reset_key: None,
        }
    }

    /// These options with the frame limit and handshake timeout of `core`.
    pub fn with_core(self, core: &CoreConfig) -> NetOptions {
        NetOptions {
            handshake_timeout: Duration::from_millis(core.handshake_timeout_ms),
            frame_bytes_max: core.frame_bytes_max,
            ..self
        }
    }
}

impl Default for NetOptions {
    /// [`NetOptions::for_core`] of the core's default configuration.
    fn default() -> NetOptions {
        NetOptions::for_core(&CoreConfig::new(
            NodeName::new("default").expect("a valid name"),
        ))
    }
}

/// Longest reason sent with a QUIC connection close: it must fit one packet with the frame's
/// other fields.
pub const QUIC_CLOSE_REASON_BYTES_MAX: usize = 200;

/// QUIC application close codes used by edgesync.
pub mod close {
    use edgesync_proto::CloseCode;

    /// Orderly shutdown.
    pub const SHUTDOWN: u32 = 0;
    /// A frame above the limit.
    pub const FRAME_TOO_LARGE: u32 = 1;
    /// Bytes that are not a protocol message.
    pub const MALFORMED: u32 = 2;
    /// The certificate is not a usable node identity (or is this node's own).
    pub const BAD_IDENTITY: u32 = 3;
    /// The peer did not open its stream in time.
    pub const TIMEOUT: u32 = 4;
    /// The protocol session ended.
    pub const SESSION_CLOSED: u32 = 5;

    /// The connection close code for a session the core ended with `code` (`None`: the
    /// transport went first): malformed input and identity problems keep their own codes, so
    /// the peer's log names them; everything else is an ended session.
    pub fn for_session(code: Option<CloseCode>) -> u32 {
        match code {
            Some(CloseCode::Malformed) => MALFORMED,
            Some(CloseCode::FrameTooLarge) => FRAME_TOO_LARGE,
            Some(CloseCode::IdentityMismatch) => BAD_IDENTITY,
            Some(CloseCode::Shutdown) => SHUTDOWN,
            Some(
                CloseCode::VersionMismatch
                | CloseCode::Unexpected
                | CloseCode::InvalidChange
                | CloseCode::Equivocation
                | CloseCode::Timeout
                | CloseCode::StoreFailed
                | CloseCode::LimitsIncompatible
                | CloseCode::Overloaded
                | CloseCode::Unauthorized
                | CloseCode::Forbidden
                | CloseCode::Cloned,
            )
            | None => SESSION_CLOSED,
        }
    }
}

/// A TLS alert that ended a handshake, sent or received, with the transport's description.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("TLS alert {alert}: {reason}")]
pub struct TlsAlert {
    /// The alert number (RFC 8446 section 6).
    pub alert: u8,
    /// The transport's text for it.
    pub reason: String,
}

/// Why a TLS handshake failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// The client presented no certificate.
    NoClientCertificate,
    /// The certificate does not chain to the fleet CA (self-signed, another CA, a signature
    /// that does not verify).
    UnknownIssuer,
    /// The certificate is expired or not yet valid.
    Expired,
    /// The certificate is on the fleet's revocation list.
    Revoked,
    /// The server's certificate is not valid for the peer name dialled.
    NameMismatch,
    /// Another certificate problem.
    BadCertificate,
    /// No common application protocol.
    Alpn,
    /// Anything else.
    Other,
}

impl TlsFailure {
    /// The stable short name ([`LinkError::kind`]).
    pub fn kind(self) -> &'static str {
        match self {
            TlsFailure::NoClientCertificate => "no-client-cert",
            TlsFailure::UnknownIssuer => "unknown-issuer",
            TlsFailure::Expired => "expired",
            TlsFailure::Revoked => "revoked",
            TlsFailure::NameMismatch => "name-mismatch",
            TlsFailure::BadCertificate => "bad-cert",
            TlsFailure::Alpn => "alpn",
            TlsFailure::Other => "tls",
        }
    }

    /// Classifies an alert number, with what this node's own verifier refused if it did.
    fn classify(alert: u8, rejected: Option<Rejected>) -> TlsFailure {
        match (alert, rejected) {
            (_, Some(Rejected::Name)) => TlsFailure::NameMismatch,
            (_, Some(Rejected::Expired)) | (45, _) => TlsFailure::Expired,
            (_, Some(Rejected::Revoked)) | (44, _) => TlsFailure::Revoked,
            (_, Some(Rejected::Issuer)) | (48 | 51, _) => TlsFailure::UnknownIssuer,
            (116, _) => TlsFailure::NoClientCertificate,
            (42..=46, _) => TlsFailure::BadCertificate,
            (120, _) => TlsFailure::Alpn,
            _ => TlsFailure::Other,
        }
    }
}

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsFailure::NoClientCertificate => "peer presented no client certificate",
            TlsFailure::UnknownIssuer => "certificate not issued by the fleet CA",
            TlsFailure::Expired => "certificate expired or not yet valid",
            TlsFailure::Revoked => "certificate revoked by the fleet",
            TlsFailure::NameMismatch => "server certificate not valid for the name dialled",
            TlsFailure::BadCertificate => "certificate refused",
            TlsFailure::Alpn => "no common application protocol (edgesync/1)",
            TlsFailure::Other => "handshake error",
        })
    }
}

/// Why a verified certificate is not a usable peer identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnusableIdentity {
    /// The handshake completed without a peer certificate.
    #[error("no peer certificate after the handshake")]
    NoCertificate,
    /// The certificate is not a node certificate.
    #[error("not a node certificate")]
    NotANode(#[source] pki::IdentityError),
    /// The peer presented this node's own name.
    #[error("peer presented this node's own name {0}")]
    OwnName(NodeName),
    /// The peer refused this node's identity.
    #[error("peer refused this node's identity: {reason}")]
    RefusedByPeer {
        /// The peer's reason.
        reason: String,
    },
}

/// What timed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    /// The TLS handshake.
    Handshake,
    /// The peer did not open its stream after the handshake.
    PeerStream,
    /// Nothing was received for the idle timeout.
    Idle,
    /// The peer closed the connection because this node was too slow.
    ByPeer,
}

impl std::fmt::Display for TimeoutKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TimeoutKind::Handshake => "handshake",
            TimeoutKind::PeerStream => "peer's stream",
            TimeoutKind::Idle => "idle timeout",
            TimeoutKind::ByPeer => "peer's handshake",
        })
    }
}

/// Why a connection failed or ended. [`LinkError::kind`] is a stable short name for logs and
/// metrics.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    /// The TLS handshake failed; `failure` says why, from the alert that ended it.
    #[error("TLS handshake failed: {failure}")]
    Handshake {
        /// The classification.
        failure: TlsFailure,
        /// The alert.
        #[source]
        alert: TlsAlert,
    },
    /// The server's certificate is a valid node certificate, but for another node.
    #[error("dialled {expected}, certificate names {found}")]
    WrongPeer {
        /// The name dialled.
        expected: NodeName,
        /// The name in the certificate.
        found: NodeName,
    },
    /// A verified certificate that is not a usable node identity.
    #[error("unusable peer identity")]
    BadIdentity(#[source] UnusableIdentity),
    /// A frame above the limit (`len` 0: the peer reported it).
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Announced length.
        len: u32,
        /// Limit.
        max: u32,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// The peer closed the connection because this node sent something malformed.
    #[error("peer refused a malformed message: {reason}")]
    MalformedByPeer {
        /// The peer's reason.
        reason: String,
    },
    /// Something took too long.
    #[error("timed out: {0}")]
    Timeout(TimeoutKind),
    /// The connection was closed or lost.
    #[error("connection closed")]
    Closed(#[source] ClosedError),
    /// The peer's address did not resolve.
    #[error("cannot resolve {addr}")]
    Resolve {
        /// `host:port` as configured.
        addr: String,
        /// Why.
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The peer's address resolved to nothing.
    #[error("{addr} resolves to no address")]
    NoAddress {
        /// `host:port` as configured.
        addr: String,
    },
    /// Dialling could not start.
    #[error("cannot dial")]
    Connect(#[source] quinn::ConnectError),
    /// The client configuration could not be built.
    #[error("cannot configure TLS for dialling")]
    Config(#[source] Arc<TlsError>),
}

/// How a connection ended, when it simply ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClosedError {
    /// The peer closed it with an application code.
    #[error("closed by peer (code {code}): {reason}")]
    ByPeer {
        /// Its code (see [`close`]).
        code: u64,
        /// Its reason.
        reason: String,
    },
    /// The connection was lost or closed by the transport.
    #[error(transparent)]
    Connection(#[from] quinn::ConnectionError),
    /// The stream was stopped or reset.
    #[error("stream ended: {0}")]
    Stream(String),
}

impl LinkError {
    /// A stable short name: `no-client-cert`, `unknown-issuer`, `expired`, `name-mismatch`,
    /// `revoked`, `bad-cert`, `alpn`, `tls`, `bad-identity`, `frame-too-large`, `malformed`, `timeout`,
    /// `closed`, `dial`.
    pub fn kind(&self) -> &'static str {
        match self {
            LinkError::Handshake { failure, .. } => failure.kind(),
            LinkError::WrongPeer { .. } => "name-mismatch",
            LinkError::BadIdentity(_) => "bad-identity",
            LinkError::FrameTooLarge { .. } => "frame-too-large",
            LinkError::Truncated | LinkError::MalformedByPeer { .. } => "malformed",
            LinkError::Timeout(_) => "timeout",
            LinkError::Closed(_) => "closed",
            LinkError::Resolve { .. }
            | LinkError::NoAddress { .. }
            | LinkError::Connect(_)
            | LinkError::Config(_) => "dial",
        }
    }

    /// The QUIC application close code to send for this error on an established link.
    pub fn close_code(&self) -> u32 {
        match self {
            LinkError::FrameTooLarge { .. } => close::FRAME_TOO_LARGE,
            LinkError::Truncated | LinkError::MalformedByPeer { .. } => close::MALFORMED,
            LinkError::BadIdentity(_) | LinkError::WrongPeer { .. } => close::BAD_IDENTITY,
            LinkError::Timeout(_) => close::TIMEOUT,
            _ => close::SESSION_CLOSED,
        }
    }

    /// Maps a quinn connection error: an application close by its code, a TLS failure by the
    /// alert number it carries (the same alert classifies the error on the side that sent it
    /// and on the side that received it). `rejected` is what this node's own certificate
    /// verifier refused during the handshake, if anything: it tells a name mismatch from other
    /// bad certificates, which share one alert.
    fn from_connection(e: quinn::ConnectionError, rejected: Option<Rejected>) -> LinkError {
        use quinn::ConnectionError as C;
        let (code, reason) = match &e {
            C::TransportError(t) => (u64::from(t.code), t.reason.clone()),
            C::ConnectionClosed(c) => (
                u64::from(c.error_code),
                String::from_utf8_lossy(&c.reason).into_owned(),
            ),
            C::ApplicationClosed(a) => return LinkError::from_application_close(a),
            C::TimedOut => return LinkError::Timeout(TimeoutKind::Idle),
            _ => return LinkError::Closed(ClosedError::Connection(e)),
        };
        let Some(alert) = code.checked_sub(0x100).and_then(|a| u8::try_from(a).ok()) else {
            return LinkError::Closed(ClosedError::Connection(e));
        };
        let failure = TlsFailure::classify(alert, rejected);
        let alert = TlsAlert { alert, reason };
        LinkError::Handshake { failure, alert }
    }

    fn from_application_close(a: &quinn::ApplicationClose) -> LinkError {
        let reason = String::from_utf8_lossy(&a.reason).into_owned();
        let code = a.error_code.into_inner();
        match u32::try_from(code) {
            Ok(close::FRAME_TOO_LARGE) => LinkError::FrameTooLarge { len: 0, max: 0 },
            Ok(close::MALFORMED) => LinkError::MalformedByPeer { reason },
            Ok(close::BAD_IDENTITY) => {
                LinkError::BadIdentity(UnusableIdentity::RefusedByPeer { reason })
            }
            Ok(close::TIMEOUT) => LinkError::Timeout(TimeoutKind::ByPeer),
            _ => LinkError::Closed(ClosedError::ByPeer { code, reason }),
        }
    }
}

impl From<quinn::ConnectionError> for LinkError {
    fn from(e: quinn::ConnectionError) -> LinkError {
        LinkError::from_connection(e, None)
    }
}

/// Setting up an endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// TLS material.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The socket could not be bound.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The idle timeout is out of QUIC's range.
    #[error("idle timeout {0:?} is out of range")]
    IdleTimeout(Duration),
}

/// A QUIC endpoint of this node.
pub struct Endpoint {
    ep: quinn::Endpoint,
    creds: Arc<Credentials>,
    opts: NetOptions,
    transport: Arc<quinn::TransportConfig>,
    rejected: Mutex<BTreeMap<&'static str, u64>>,
}

/// A connection to a verified peer, with its one stream.
pub struct Link {
    /// Who the peer is (from its verified certificate).
    pub peer: PeerIdentity,
    /// The serial number of the peer's certificate (to close the link if it is revoked).
    pub serial: Vec<u8>,
    /// The peer's address.
    pub remote: SocketAddr,
    /// True when this node dialled.
    pub dialled: bool,
    /// The QUIC connection.
    pub conn: quinn::Connection,
    /// Frames to the peer.
    pub tx: FrameSink,
    /// Frames from the peer.
    pub rx: FrameSource,
}

/// Closes `conn` with an application code and a reason cut to
/// [`QUIC_CLOSE_REASON_BYTES_MAX`] on a character boundary.
pub fn close_connection(conn: &quinn::Connection, code: u32, reason: &str) {
    let reason = truncate_utf8(reason, QUIC_CLOSE_REASON_BYTES_MAX);
    conn.close(code.into(), reason.as_bytes());
}

impl Link {
    /// Closes the connection with an application code and reason (see [`close_connection`]).
    pub fn close(&self, code: u32, reason: &str) {
        close_connection(&self.conn, code, reason);
    }

    /// Ends the link because of `e`: logs it with its kind and closes the connection with the
    /// matching code. Nothing else is affected.
    pub fn fail(&self, e: &LinkError) {
        tracing::warn!(peer = %self.peer.name, remote = %self.remote, reason = e.kind(), error = %e, "link failed");
        self.close(e.close_code(), &e.to_string());
    }
}

/// The sending half of a link's stream.
pub struct FrameSink {
    send: quinn::SendStream,
}

impl FrameSink {
    /// Sends one encoded frame; waits while QUIC flow control says the peer is behind.
    pub async fn send(&mut self, frame: &[u8]) -> Result<(), LinkError> {
        self.send.write_all(frame).await.map_err(|e| match e {
            quinn::WriteError::ConnectionLost(c) => LinkError::from(c),
            other => LinkError::Closed(ClosedError::Stream(other.to_string())),
        })
    }

    /// Ends the stream after everything sent.
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }

    /// Waits until the peer has read the stream to its end (or stopped reading it).
    pub async fn delivered(&mut self) {
        let _ = self.send.stopped().await;
    }
}

/// The receiving half of a link's stream.
pub struct FrameSource {
    recv: quinn::RecvStream,
    max: u32,
}

impl FrameSource {
    /// The next frame (header and payload), `None` when the peer finished the stream cleanly
    /// between frames. The length is checked before the payload is allocated; the payload is
    /// not decoded here (the core does, once).
    pub async fn next_frame(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        match self.recv.read_exact(&mut header).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
            Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(LinkError::Truncated),
            Err(quinn::ReadExactError::ReadError(e)) => return Err(read_error(e)),
        }
        let len = u32::from_be_bytes(header);
        if len > self.max {
            return Err(LinkError::FrameTooLarge { len, max: self.max });
        }
        let mut frame = vec![0u8; FRAME_HEADER_BYTES + len as usize];
        frame[..FRAME_HEADER_BYTES].copy_from_slice(&header);
        match self.recv.read_exact(&mut frame[FRAME_HEADER_BYTES..]).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(_)) => return Err(LinkError::Truncated),
            Err(quinn::ReadExactError::ReadError(e)) => return Err(read_error(e)),
        }
        Ok(Some(frame))
    }
}

fn read_error(e: quinn::ReadError) -> LinkError {
    match e {
        quinn::ReadError::ConnectionLost(c) => LinkError::from(c),
        other => LinkError::Closed(ClosedError::Stream(other.to_string())),
    }
}

impl Endpoint {
    /// Binds a UDP socket on `addr`. With `listen`, peers may connect to it; either way it can
    /// dial.
    pub fn bind(
        addr: SocketAddr,
        listen: bool,
        creds: Arc<Credentials>,
        opts: NetOptions,
    ) -> Result<Endpoint, EndpointError> {
        let mut t = quinn::TransportConfig::default();
        t.keep_alive_interval(Some(opts.keep_alive));
        t.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(opts.idle_timeout)
                .map_err(|_| EndpointError::IdleTimeout(opts.idle_timeout))?,
        ));
        t.max_concurrent_bidi_streams(1u32.into());
        t.max_concurrent_uni_streams(0u32.into());
        let transport = Arc::new(t);
        let bind = |source| EndpointError::Bind { addr, source };
        let config = match &opts.reset_key {
            Some(key) => {
                let mut c = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
                    ring::hmac::HMAC_SHA256,
                    key,
                )));
                // quinn's default connection ids carry a signature keyed per process, so a
                // restarted process would take its predecessor's ids for forgeries and drop
                // their packets instead of resetting them.
                c.cid_generator(|| Box::new(RandomCids));
                c
            }
            None => quinn::EndpointConfig::default(),
        };
        let server = if listen {
            Some(creds.server_config(transport.clone())?)
        } else {
            None
        };
        let socket = std::net::UdpSocket::bind(addr).map_err(bind)?;
        let mut ep = quinn::Endpoint::new(config, server, socket, Arc::new(quinn::TokioRuntime))
            .map_err(bind)?;
        ep.set_default_client_config(creds.client_config(transport.clone())?);
        Ok(Endpoint {
            ep,
            creds,
            opts,
            transport,
            rejected: Mutex::new(BTreeMap::new()),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.ep.local_addr()
    }

    /// This node's credentials.
    pub fn credentials(&self) -> &Arc<Credentials> {
        &self.creds
    }

    /// The transport configuration (keep-alive, idle timeout, streams).
    pub fn transport_config(&self) -> Arc<quinn::TransportConfig> {
        self.transport.clone()
    }

    /// Dials `peer` at `addr`, verifying that its certificate names `peer`.
    pub async fn dial(&self, addr: SocketAddr, peer: &NodeName) -> Result<Link, LinkError> {
        let (cfg, rejected) = self
            .creds
            .dialling_config(self.transport.clone())
            .map_err(|e| LinkError::Config(Arc::new(e)))?;
        self.dial_inner(cfg, addr, peer, Some(&rejected)).await
    }

    /// As [`Endpoint::dial`] with a given client configuration.
    #[doc(hidden)]
    pub async fn dial_with(
        &self,
        cfg: quinn::ClientConfig,
        addr: SocketAddr,
        peer: &NodeName,
    ) -> Result<Link, LinkError> {
        self.dial_inner(cfg, addr, peer, None).await
    }

    async fn dial_inner(
        &self,
        cfg: quinn::ClientConfig,
        addr: SocketAddr,
        peer: &NodeName,
        rejected: Option<&tls::RejectedSlot>,
    ) -> Result<Link, LinkError> {
        let connecting = self
            .ep
            .connect_with(cfg, addr, peer.as_str())
            .map_err(LinkError::Connect)?;
        let conn = match tokio::time::timeout(self.opts.handshake_timeout, connecting).await {
            Err(_) => return Err(LinkError::Timeout(TimeoutKind::Handshake)),
            Ok(Err(e)) => {
                let why = rejected.and_then(tls::RejectedSlot::take);
                return Err(LinkError::from_connection(e, why));
            }
            Ok(Ok(c)) => c,
        };
        let (id, serial) = self.identify(&conn)?;
        if &id.name != peer {
            conn.close(close::BAD_IDENTITY.into(), b"unexpected name");
            return Err(LinkError::WrongPeer {
                expected: peer.clone(),
                found: id.name,
            });
        }
        let (send, recv) = conn.open_bi().await?;
        Ok(self.link(conn, (id, serial), true, send, recv))
    }

    /// Waits for the next incoming connection; `None` once the endpoint is closed.
    pub async fn accept(&self) -> Option<quinn::Incoming> {
        self.ep.accept().await
    }

    /// Completes an incoming connection: handshake, identity, the peer's stream. A failure is
    /// logged and counted (see [`Endpoint::rejections`]) and affects this connection only.
    pub async fn establish(&self, incoming: quinn::Incoming) -> Result<Link, LinkError> {
        let remote = incoming.remote_address();
        let r = self.establish_inner(incoming).await;
        if let Err(e) = &r {
            self.count_rejection(e.kind());
            tracing::warn!(%remote, reason = e.kind(), error = %e, "inbound connection rejected");
        }
        r
    }

    async fn establish_inner(&self, incoming: quinn::Incoming) -> Result<Link, LinkError> {
        let wait = self.opts.handshake_timeout;
        let conn = tokio::time::timeout(wait, async { incoming.accept()?.await })
            .await
            .map_err(|_| LinkError::Timeout(TimeoutKind::Handshake))??;
        let (id, serial) = self.identify(&conn)?;
        if &id.name == self.creds.name() {
            conn.close(
                close::BAD_IDENTITY.into(),
                b"peer uses this node's own name",
            );
            return Err(LinkError::BadIdentity(UnusableIdentity::OwnName(id.name)));
        }
        let (send, recv) = match tokio::time::timeout(wait, conn.accept_bi()).await {
            Ok(r) => r?,
            Err(_) => {
                conn.close(close::TIMEOUT.into(), b"no stream opened");
                return Err(LinkError::Timeout(TimeoutKind::PeerStream));
            }
        };
        Ok(self.link(conn, (id, serial), false, send, recv))
    }

    fn identify(&self, conn: &quinn::Connection) -> Result<(PeerIdentity, Vec<u8>), LinkError> {
        let certs = conn
            .peer_identity()
            .and_then(|i| {
                i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .ok_or(LinkError::BadIdentity(UnusableIdentity::NoCertificate))?;
        let leaf = certs
            .first()
            .ok_or(LinkError::BadIdentity(UnusableIdentity::NoCertificate))?;
        let id = pki::identity(leaf).map_err(|e| {
            conn.close(close::BAD_IDENTITY.into(), b"not a node certificate");
            LinkError::BadIdentity(UnusableIdentity::NotANode(e))
        })?;
        // The certificate parsed just above, so its serial number does too.
        let serial = crl::serial_of(leaf).unwrap_or_default();
        Ok((id, serial))
    }

    /// Counts an inbound connection refused, or an established one closed, for `kind`.
    pub fn count_rejection(&self, kind: &'static str) {
        *self
            .rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(kind)
            .or_default() += 1;
    }

    fn link(
        &self,
        conn: quinn::Connection,
        (peer, serial): (PeerIdentity, Vec<u8>),
        dialled: bool,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> Link {
        Link {
            peer,
            serial,
            remote: conn.remote_address(),
            dialled,
            conn,
            tx: FrameSink { send },
            rx: FrameSource {
                recv,
                max: self.opts.frame_bytes_max,
            },
        }
    }

    /// Inbound connections rejected since start, by [`LinkError::kind`].
    pub fn rejections(&self) -> BTreeMap<&'static str, u64> {
        self.rejected
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Closes every connection and stops accepting.
    pub fn close(&self) {
        self.ep.close(close::SHUTDOWN.into(), b"shutdown");
    }

    /// Waits until every connection's close has been sent (after [`Endpoint::close`]).
    pub async fn wait_idle(&self) {
        self.ep.wait_idle().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    // The stateless-reset secret is made once, private, and the same on every later start.
    #[test]
    fn the_reset_key_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let k1 = reset_key(&data).unwrap();
        let mode = std::fs::metadata(data.join(RESET_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(reset_key(&data).unwrap(), k1);
        assert_ne!(k1, [0; 32]);
        // A damaged file is replaced.
        std::fs::write(data.join(RESET_KEY_FILE), b"short").unwrap();
        let k2 = reset_key(&data).unwrap();
        assert_ne!(k2, k1);
        assert_eq!(reset_key(&data).unwrap(), k2);
    }
}
