//! The transport: QUIC (quinn) with mutual TLS between fleet nodes, carrying the wire protocol's
//! frames on one bidirectional stream per connection.
//!
//! - [`pki`]: the fleet CA, node certificates, and the identity read back from a certificate.
//! - [`tls`]: credentials (reloadable) and the rustls/quinn configurations: all trust decisions.
//! - [`Endpoint`]: one UDP socket that accepts (if listening) and dials; every connection that
//!   completes the handshake becomes a [`Link`] with a verified [`PeerIdentity`].
//!
//! A connection's dialler opens the stream and speaks first (the protocol's Hello). Frames are
//! read with the length checked against the limit before anything is allocated, and each
//! payload is decoded as a protocol message before it is handed on; QUIC flow control provides
//! backpressure in both directions, so no buffer here grows without bound.

pub mod pki;
pub mod tls;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgesync_proto::wire::{Message, FRAME_HEADER_BYTES};
use edgesync_proto::NodeName;

pub use pki::{PeerIdentity, Role};
pub use tls::{Credentials, TlsError, TlsFiles, ALPN};

/// Transport settings.
#[derive(Clone, Debug)]
pub struct NetOptions {
    /// QUIC keep-alive interval: keeps NAT bindings and idle links alive. Default 5 s.
    pub keep_alive: Duration,
    /// A connection with nothing received for this long is dead. Default 30 s: long enough to
    /// ride out a flaky uplink's short drops, short enough to notice a cut and redial.
    pub idle_timeout: Duration,
    /// Longest wait for the TLS handshake and the peer's stream. Default 10 s.
    pub handshake_timeout: Duration,
    /// Largest frame payload accepted, bytes. Default 4 MiB (the protocol's default).
    pub frame_bytes_max: u32,
}

impl Default for NetOptions {
    fn default() -> NetOptions {
        NetOptions {
            keep_alive: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(10),
            frame_bytes_max: 4 << 20,
        }
    }
}

/// QUIC application close codes used by edgesync.
pub mod close {
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
}

/// Why a connection failed or ended. [`LinkError::kind`] is a stable short name for logs and
/// metrics.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LinkError {
    /// The client presented no certificate.
    #[error("peer presented no client certificate: {0}")]
    NoClientCertificate(String),
    /// The certificate does not chain to the fleet CA (self-signed, another CA).
    #[error("certificate not issued by the fleet CA: {0}")]
    UnknownIssuer(String),
    /// The certificate is expired or not yet valid.
    #[error("certificate expired or not yet valid: {0}")]
    Expired(String),
    /// The server's certificate is not for the peer name we dialled.
    #[error("server certificate does not match the expected peer name: {0}")]
    NameMismatch(String),
    /// Another certificate problem.
    #[error("certificate refused: {0}")]
    BadCertificate(String),
    /// No common application protocol.
    #[error("no common application protocol (edgesync/1): {0}")]
    Alpn(String),
    /// Another TLS failure.
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    /// A verified certificate that is not a usable node identity, or this node's own name.
    #[error("unusable peer identity: {0}")]
    BadIdentity(String),
    /// A frame above the limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Announced length.
        len: u32,
        /// Limit.
        max: u32,
    },
    /// Bytes that are not a protocol message.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// Something took too long.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The connection was closed or lost.
    #[error("connection closed: {0}")]
    Closed(String),
    /// Dialling could not start (bad address or name).
    #[error("cannot dial: {0}")]
    Dial(String),
}

impl LinkError {
    /// A stable short name: `no-client-cert`, `unknown-issuer`, `expired`, `name-mismatch`,
    /// `bad-cert`, `alpn`, `tls`, `bad-identity`, `frame-too-large`, `malformed`, `timeout`,
    /// `closed`, `dial`.
    pub fn kind(&self) -> &'static str {
        match self {
            LinkError::NoClientCertificate(_) => "no-client-cert",
            LinkError::UnknownIssuer(_) => "unknown-issuer",
            LinkError::Expired(_) => "expired",
            LinkError::NameMismatch(_) => "name-mismatch",
            LinkError::BadCertificate(_) => "bad-cert",
            LinkError::Alpn(_) => "alpn",
            LinkError::Tls(_) => "tls",
            LinkError::BadIdentity(_) => "bad-identity",
            LinkError::FrameTooLarge { .. } => "frame-too-large",
            LinkError::Malformed(_) => "malformed",
            LinkError::Timeout(_) => "timeout",
            LinkError::Closed(_) => "closed",
            LinkError::Dial(_) => "dial",
        }
    }

    /// The QUIC application close code to send for this error on an established link.
    pub fn close_code(&self) -> u32 {
        match self {
            LinkError::FrameTooLarge { .. } => close::FRAME_TOO_LARGE,
            LinkError::Malformed(_) => close::MALFORMED,
            LinkError::BadIdentity(_) => close::BAD_IDENTITY,
            LinkError::Timeout(_) => close::TIMEOUT,
            _ => close::SESSION_CLOSED,
        }
    }

    /// Maps a quinn connection error, by the TLS alert it carries where there is one (the same
    /// alert classifies the error on the side that sent it and the side that received it).
    pub fn from_connection(e: &quinn::ConnectionError) -> LinkError {
        use quinn::ConnectionError as C;
        let (code, reason) = match e {
            C::TransportError(t) => (u64::from(t.code), t.reason.clone()),
            C::ConnectionClosed(c) => (
                u64::from(c.error_code),
                String::from_utf8_lossy(&c.reason).into_owned(),
            ),
            C::ApplicationClosed(a) => {
                let reason = String::from_utf8_lossy(&a.reason).into_owned();
                return match u32::try_from(a.error_code.into_inner()) {
                    Ok(close::FRAME_TOO_LARGE) => LinkError::FrameTooLarge { len: 0, max: 0 },
                    Ok(close::MALFORMED) => LinkError::Malformed(reason),
                    Ok(close::BAD_IDENTITY) => LinkError::BadIdentity(reason),
                    Ok(close::TIMEOUT) => LinkError::Timeout("peer's handshake"),
                    _ => LinkError::Closed(format!("closed by peer: {reason}")),
                };
            }
            C::TimedOut => return LinkError::Timeout("idle timeout"),
            other => return LinkError::Closed(other.to_string()),
        };
        if !(0x100..0x200).contains(&code) {
            return LinkError::Closed(format!("transport error {code:#x}: {reason}"));
        }
        let detail = format!("{reason} (TLS alert {})", code - 0x100);
        match code - 0x100 {
            116 => LinkError::NoClientCertificate(detail),
            48 => LinkError::UnknownIssuer(detail),
            // A signature that does not verify under the named issuer: a CA with the fleet
            // CA's name but another key.
            51 if reason.contains("certificate") => LinkError::UnknownIssuer(detail),
            45 => LinkError::Expired(detail),
            42 if reason.contains("Name") || reason.contains("name") => {
                LinkError::NameMismatch(detail)
            }
            42 | 43 | 44 | 46 => LinkError::BadCertificate(detail),
            120 => LinkError::Alpn(detail),
            _ => LinkError::Tls(detail),
        }
    }
}

impl From<quinn::ConnectionError> for LinkError {
    fn from(e: quinn::ConnectionError) -> LinkError {
        LinkError::from_connection(&e)
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
    /// A bad option.
    #[error("{0}")]
    Options(String),
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

impl Link {
    /// Closes the connection with an application code and reason.
    pub fn close(&self, code: u32, reason: &str) {
        self.conn.close(code.into(), reason.as_bytes());
    }

    /// Ends the link because of `e`: logs it with its kind and closes the connection with the
    /// matching code. Nothing else is affected.
    pub fn fail(&self, e: &LinkError) {
        tracing::warn!(peer = %self.peer.name, remote = %self.remote, reason = e.kind(), error = %e, "link failed");
        let mut reason = e.to_string();
        reason.truncate(200);
        self.close(e.close_code(), &reason);
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
            other => LinkError::Closed(other.to_string()),
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
    /// between frames. The length is checked before the payload is allocated, and the payload
    /// must decode as a protocol message.
    pub async fn next_frame(&mut self) -> Result<Option<Vec<u8>>, LinkError> {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        match self.recv.read_exact(&mut header).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
            Err(quinn::ReadExactError::FinishedEarly(_)) => {
                return Err(LinkError::Malformed(
                    "stream ended inside a frame header".into(),
                ))
            }
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
            Err(quinn::ReadExactError::FinishedEarly(_)) => {
                return Err(LinkError::Malformed("stream ended inside a frame".into()))
            }
            Err(quinn::ReadExactError::ReadError(e)) => return Err(read_error(e)),
        }
        Message::from_payload(&frame[FRAME_HEADER_BYTES..])
            .map_err(|e| LinkError::Malformed(e.to_string()))?;
        Ok(Some(frame))
    }
}

fn read_error(e: quinn::ReadError) -> LinkError {
    match e {
        quinn::ReadError::ConnectionLost(c) => LinkError::from(c),
        other => LinkError::Closed(other.to_string()),
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
                .map_err(|e| EndpointError::Options(format!("idle timeout: {e}")))?,
        ));
        t.max_concurrent_bidi_streams(1u32.into());
        t.max_concurrent_uni_streams(0u32.into());
        let transport = Arc::new(t);
        let bind = |source| EndpointError::Bind { addr, source };
        let mut ep = if listen {
            quinn::Endpoint::server(creds.server_config(transport.clone())?, addr).map_err(bind)?
        } else {
            quinn::Endpoint::client(addr).map_err(bind)?
        };
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
        let cfg = self
            .creds
            .client_config(self.transport.clone())
            .map_err(|e| LinkError::Dial(e.to_string()))?;
        self.dial_with(cfg, addr, peer).await
    }

    /// As [`Endpoint::dial`] with a given client configuration.
    #[doc(hidden)]
    pub async fn dial_with(
        &self,
        cfg: quinn::ClientConfig,
        addr: SocketAddr,
        peer: &NodeName,
    ) -> Result<Link, LinkError> {
        let connecting = self
            .ep
            .connect_with(cfg, addr, peer.as_str())
            .map_err(|e| LinkError::Dial(e.to_string()))?;
        let conn = tokio::time::timeout(self.opts.handshake_timeout, connecting)
            .await
            .map_err(|_| LinkError::Timeout("handshake"))??;
        let id = self.identify(&conn)?;
        if &id.name != peer {
            conn.close(close::BAD_IDENTITY.into(), b"unexpected name");
            return Err(LinkError::NameMismatch(format!(
                "dialled {peer}, certificate names {}",
                id.name
            )));
        }
        let (send, recv) = conn.open_bi().await?;
        Ok(self.link(conn, id, true, send, recv))
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
            *self
                .rejected
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(e.kind())
                .or_default() += 1;
            tracing::warn!(%remote, reason = e.kind(), error = %e, "inbound connection rejected");
        }
        r
    }

    async fn establish_inner(&self, incoming: quinn::Incoming) -> Result<Link, LinkError> {
        let wait = self.opts.handshake_timeout;
        let conn = tokio::time::timeout(wait, async { incoming.accept()?.await })
            .await
            .map_err(|_| LinkError::Timeout("handshake"))??;
        let id = self.identify(&conn)?;
        if &id.name == self.creds.name() {
            conn.close(
                close::BAD_IDENTITY.into(),
                b"peer uses this node's own name",
            );
            return Err(LinkError::BadIdentity(format!(
                "peer presented this node's own name {}",
                id.name
            )));
        }
        let (send, recv) = match tokio::time::timeout(wait, conn.accept_bi()).await {
            Ok(r) => r?,
            Err(_) => {
                conn.close(close::TIMEOUT.into(), b"no stream opened");
                return Err(LinkError::Timeout("peer's stream"));
            }
        };
        Ok(self.link(conn, id, false, send, recv))
    }

    fn identify(&self, conn: &quinn::Connection) -> Result<PeerIdentity, LinkError> {
        let certs = conn
            .peer_identity()
            .and_then(|i| {
                i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                    .ok()
            })
            .ok_or_else(|| LinkError::BadIdentity("no peer certificate after handshake".into()))?;
        let leaf = certs
            .first()
            .ok_or_else(|| LinkError::BadIdentity("empty certificate chain".into()))?;
        pki::identity(leaf).map_err(|e| {
            conn.close(close::BAD_IDENTITY.into(), b"not a node certificate");
            LinkError::BadIdentity(e.to_string())
        })
    }

    fn link(
        &self,
        conn: quinn::Connection,
        peer: PeerIdentity,
        dialled: bool,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> Link {
        Link {
            peer,
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
