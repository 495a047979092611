//! TLS for the transport: the node's credentials (reloadable for rotation), and the rustls and
//! quinn configurations built from them. One module decides everything about trust:
//!
//! - TLS 1.3 only, ring provider, ALPN [`ALPN`] required on both sides.
//! - The server requires a client certificate chaining to the fleet CA.
//! - The client verifies the server's certificate against the fleet CA and the peer name it
//!   expects from its configuration (a DNS subject-alternative name), never an IP address.
//! - After the handshake, [`super::pki::identity`] maps the verified certificate to the
//!   [`PeerIdentity`] the rest of the node uses.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use edgesync_proto::NodeName;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;

use rustls::pki_types::CertificateRevocationListDer;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName};
use tokio::sync::watch;

use super::crl::{self, Crl};
use super::pki::{self, PeerIdentity};

/// The application protocol negotiated by every edgesync connection.
pub const ALPN: &[u8] = b"edgesync/1";

/// Where a node's TLS material lives.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The fleet CA certificate (PEM).
    pub ca: PathBuf,
    /// This node's certificate (PEM).
    pub cert: PathBuf,
    /// This node's private key (PEM, PKCS#8).
    pub key: PathBuf,
    /// The fleet's certificate revocation list (PEM, signed by the fleet CA), if any. Reloaded
    /// like the certificate; revoked certificates are refused at the handshake on both sides
    /// and established connections of a newly revoked peer are closed.
    #[serde(default)]
    pub crl: Option<PathBuf>,
}

/// Loading or using TLS material failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A file did not hold what it should.
    #[error("{}: {detail}", path.display())]
    Bad {
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The certificate is not for this node.
    #[error("{}: certificate is for {found:?}, but this node is {expected:?}", path.display())]
    WrongName {
        /// The file.
        path: PathBuf,
        /// The configured name.
        expected: String,
        /// The certificate's name.
        found: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The largest certificate, key or CA file read: a fleet chain is a few kilobytes.
pub const PEM_BYTES_MAX: u64 = 1 << 20;

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    use std::io::Read;
    let io = |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut bytes = Vec::new();
    fs::File::open(path)
        .map_err(io)?
        .take(PEM_BYTES_MAX + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > PEM_BYTES_MAX {
        return Err(bad(path, format!("larger than {PEM_BYTES_MAX} bytes")));
    }
    Ok(bytes)
}

fn bad(path: &Path, detail: impl Into<String>) -> TlsError {
    TlsError::Bad {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// A hash of the certificate and key files' contents (`None` for one that cannot be read), to
/// notice a renewal. Contents, not modification times: a file system with coarse timestamps
/// (one second or two on some SD-card formats) would hide a renewal written within the same
/// tick, and the files are a few kilobytes, read once per check.
type Stamp = Vec<Option<[u8; 32]>>;

fn stamp(files: &TlsFiles) -> Stamp {
    [Some(&files.cert), Some(&files.key), files.crl.as_ref()]
        .iter()
        .flatten()
        .map(|p| read(p).ok().map(|bytes| *blake3::hash(&bytes).as_bytes()))
        .collect()
}

/// The revocation list in force: parsed (for lookups) and as DER (for the verifiers).
#[derive(Debug, Default)]
struct Revocations {
    list: Crl,
    der: Vec<CertificateRevocationListDer<'static>>,
}

fn load_crl(files: &TlsFiles, ca_der: &[u8]) -> Result<Revocations, TlsError> {
    let Some(path) = &files.crl else {
        return Ok(Revocations::default());
    };
    let pem = read(path)?;
    let list = crl::parse(&pem, ca_der, &path.display().to_string())
        .map_err(|e| bad(path, e.to_string()))?;
    let der = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(path, format!("not a PEM revocation list: {e}")))?;
    Ok(Revocations { list, der })
}

/// This node's TLS credentials: the fleet roots and the current certificate and key, which
/// [`Credentials::reload`] replaces for new connections without a restart.
#[derive(Debug)]
pub struct Credentials {
    name: NodeName,
    files: TlsFiles,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    identity: RwLock<PeerIdentity>,
    stamp: Mutex<Stamp>,
    ca_der: Vec<u8>,
    revocations: RwLock<Arc<Revocations>>,
    /// The client-certificate verifier in force, rebuilt when the revocation list changes.
    client_verifier: RwLock<Arc<dyn ClientCertVerifier>>,
    /// Raised whenever the revocation list changes (a connection watcher closes the links of
    /// peers it now names).
    crl_changed: watch::Sender<u64>,
}

impl Credentials {
    /// Loads the CA, certificate and key, and checks that the certificate is this node's
    /// (`name`) and chains to the CA. An expired or not yet valid certificate is accepted with
    /// a warning (the node works offline and picks up a renewal), anything else is an error.
    pub fn load(files: &TlsFiles, name: &NodeName) -> Result<Arc<Credentials>, TlsError> {
        let provider = provider();
        let ca_pem = read(&files.ca)?;
        let mut roots = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&ca_pem) {
            let c = c.map_err(|e| bad(&files.ca, format!("not a PEM certificate: {e}")))?;
            roots
                .add(c)
                .map_err(|e| bad(&files.ca, format!("not a usable CA certificate: {e}")))?;
        }
        if roots.is_empty() {
            return Err(bad(&files.ca, "no certificate in file"));
        }
        let roots = Arc::new(roots);
        let ca_der = CertificateDer::pem_slice_iter(&ca_pem)
            .next()
            .and_then(Result::ok)
            .map(|c| c.to_vec())
            .unwrap_or_default();
        let stamp_now = stamp(files);
        let (key, id) = load_key(files, name, &roots, &provider)?;
        let revocations = Arc::new(load_crl(files, &ca_der)?);
        let client_verifier = client_verifier(&roots, &provider, &revocations)?;
        Ok(Arc::new(Credentials {
            name: name.clone(),
            files: files.clone(),
            roots,
            provider,
            current: RwLock::new(key),
            identity: RwLock::new(id),
            stamp: Mutex::new(stamp_now),
            ca_der,
            revocations: RwLock::new(revocations),
            client_verifier: RwLock::new(client_verifier),
            crl_changed: watch::channel(0).0,
        }))
    }

    fn revocations(&self) -> Arc<Revocations> {
        self.revocations
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The revocation entry of a certificate (by serial number), if the list in force names it.
    pub fn revoked(&self, serial: &[u8]) -> Option<crl::Entry> {
        self.revocations().list.find(serial).cloned()
    }

    /// A receiver that sees a new value whenever the revocation list in force changes.
    pub fn revocation_changes(&self) -> watch::Receiver<u64> {
        self.crl_changed.subscribe()
    }

    /// The node's name.
    pub fn name(&self) -> &NodeName {
        &self.name
    }

    /// The identity in the current certificate.
    pub fn identity(&self) -> PeerIdentity {
        self.identity
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The files it loads.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The fleet CA certificate (DER).
    pub fn ca_der(&self) -> &[u8] {
        &self.ca_der
    }

    /// The current certificate (DER).
    pub fn cert_der(&self) -> Vec<u8> {
        self.current().cert[0].to_vec()
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the certificate and key; new connections use them. On error the current ones
    /// stay in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let s = stamp(&self.files);
        let (key, id) = load_key(&self.files, &self.name, &self.roots, &self.provider)?;
        let revocations = Arc::new(load_crl(&self.files, &self.ca_der)?);
        let verifier = client_verifier(&self.roots, &self.provider, &revocations)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = key;
        *self.identity.write().unwrap_or_else(|p| p.into_inner()) = id;
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = s;
        let changed = self.revocations().list != revocations.list;
        *self
            .client_verifier
            .write()
            .unwrap_or_else(|p| p.into_inner()) = verifier;
        let (number, revoked) = (revocations.list.number, revocations.list.entries.len());
        *self.revocations.write().unwrap_or_else(|p| p.into_inner()) = revocations;
        tracing::info!(cert = %self.files.cert.display(), "certificate reloaded");
        if changed {
            tracing::warn!(number, revoked, "certificate revocation list changed");
            self.crl_changed.send_modify(|n| *n += 1);
        }
        Ok(())
    }

    /// Reloads if the certificate or key file changed since the last load. `Ok(true)` when it
    /// reloaded.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp(&self.files);
        if *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) == now {
            return Ok(false);
        }
        match self.reload() {
            Ok(()) => Ok(true),
            Err(e) => {
                // Do not retry the same broken files in a loop; a further change retries.
                *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = now;
                Err(e)
            }
        }
    }

    /// Spawns a task that reloads on SIGHUP and whenever the files change (checked every
    /// `every`). Errors are logged; the current certificate stays in use.
    pub fn spawn_reloader(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let forced = tokio::select! {
                    _ = tick.tick() => false,
                    Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
                };
                let r = if forced {
                    me.reload().map(|()| true)
                } else {
                    me.reload_if_changed()
                };
                if let Err(e) = r {
                    tracing::error!(error = %e, "certificate reload failed; keeping the current one");
                }
            }
        })
    }

    /// The quinn server configuration (requires client certificates from the fleet).
    pub fn server_config(
        self: &Arc<Self>,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ServerConfig, TlsError> {
        let hints = self
            .client_verifier
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .root_hint_subjects()
            .to_vec();
        let verifier = Arc::new(CurrentClientVerifier {
            creds: self.clone(),
            hints,
        });
        let mut cfg = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(Arc::new(Resolver(self.clone())));
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(cfg)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
        server.transport_config(transport);
        Ok(server)
    }

    /// The quinn client configuration (verifies servers against the fleet CA and the expected
    /// name given to `connect`).
    pub fn client_config(
        self: &Arc<Self>,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<quinn::ClientConfig, TlsError> {
        self.client_config_with_alpn(transport, ALPN)
    }

    /// A client configuration for one dial, and the slot where its server-certificate
    /// verifier records what it refused (if anything): a name mismatch and other bad
    /// certificates end the handshake with the same alert, and the slot tells them apart
    /// without parsing error text.
    pub(crate) fn dialling_config(
        self: &Arc<Self>,
        transport: Arc<quinn::TransportConfig>,
    ) -> Result<(quinn::ClientConfig, RejectedSlot), TlsError> {
        let revocations = self.revocations();
        let mut builder =
            WebPkiServerVerifier::builder_with_provider(self.roots.clone(), self.provider.clone());
        if !revocations.der.is_empty() {
            builder = builder
                .with_crls(revocations.der.iter().cloned())
                .only_check_end_entity_revocation()
                .allow_unknown_revocation_status();
        }
        let inner = builder
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let slot = RejectedSlot::default();
        let verifier = Arc::new(RecordingVerifier {
            inner,
            slot: slot.clone(),
        });
        let mut cfg = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(Arc::new(Resolver(self.clone())));
        cfg.alpn_protocols = vec![ALPN.to_vec()];
        Ok((quic_client(cfg, transport)?, slot))
    }

    /// As [`Credentials::client_config`] with another ALPN (tests of rejection use it).
    #[doc(hidden)]
    pub fn client_config_with_alpn(
        self: &Arc<Self>,
        transport: Arc<quinn::TransportConfig>,
        alpn: &[u8],
    ) -> Result<quinn::ClientConfig, TlsError> {
        let mut cfg = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(self.roots.clone())
            .with_client_cert_resolver(Arc::new(Resolver(self.clone())));
        cfg.alpn_protocols = vec![alpn.to_vec()];
        quic_client(cfg, transport)
    }
}

/// A client-certificate verifier for the fleet CA and the revocation list in force. Expiry of
/// the list is not enforced: a fleet cut off from its operator for longer must keep working.
fn client_verifier(
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
    revocations: &Revocations,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone());
    if !revocations.der.is_empty() {
        builder = builder
            .with_crls(revocations.der.iter().cloned())
            .only_check_end_entity_revocation()
            .allow_unknown_revocation_status();
    }
    builder.build().map_err(|e| TlsError::Config(e.to_string()))
}

/// The server side's client verifier: whatever [`Credentials`] holds now, so a reloaded
/// revocation list applies to the next handshake without rebinding the endpoint.
#[derive(Debug)]
struct CurrentClientVerifier {
    creds: Arc<Credentials>,
    /// The CA subjects (they never change; the list does).
    hints: Vec<DistinguishedName>,
}

impl CurrentClientVerifier {
    fn current(&self) -> Arc<dyn ClientCertVerifier> {
        self.creds
            .client_verifier
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl ClientCertVerifier for CurrentClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.current()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.current().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.current().supported_verify_schemes()
    }
}

fn quic_client(
    cfg: rustls::ClientConfig,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, TlsError> {
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(cfg)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(transport);
    Ok(client)
}

/// What this node's verifier refused in a server's certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rejected {
    /// Valid, but not for the name dialled.
    Name,
    /// Outside its validity.
    Expired,
    /// Not chaining to the fleet CA, or a signature that does not verify.
    Issuer,
    /// On the fleet's revocation list.
    Revoked,
    /// Anything else.
    Other,
}

impl Rejected {
    fn of(e: &rustls::CertificateError) -> Rejected {
        use rustls::CertificateError as E;
        match e {
            E::NotValidForName | E::NotValidForNameContext { .. } => Rejected::Name,
            E::Expired
            | E::ExpiredContext { .. }
            | E::NotValidYet
            | E::NotValidYetContext { .. } => Rejected::Expired,
            E::UnknownIssuer | E::BadSignature => Rejected::Issuer,
            E::Revoked => Rejected::Revoked,
            _ => Rejected::Other,
        }
    }
}

/// Where one dial's verifier records what it refused.
#[derive(Clone, Debug, Default)]
pub(crate) struct RejectedSlot(Arc<Mutex<Option<Rejected>>>);

impl RejectedSlot {
    pub(crate) fn take(&self) -> Option<Rejected> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    fn put(&self, r: Rejected) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    }
}

/// The fleet's server-certificate verifier, recording why it refused a certificate.
#[derive(Debug)]
struct RecordingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    slot: RejectedSlot,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let r = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        );
        if let Err(rustls::Error::InvalidCertificate(e)) = &r {
            self.slot.put(Rejected::of(e));
        }
        r
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn load_key(
    files: &TlsFiles,
    name: &NodeName,
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> Result<(Arc<CertifiedKey>, PeerIdentity), TlsError> {
    let cert_pem = read(&files.cert)?;
    let cert = CertificateDer::pem_slice_iter(&cert_pem)
        .next()
        .ok_or_else(|| bad(&files.cert, "no certificate in file"))?
        .map_err(|e| bad(&files.cert, format!("not a PEM certificate: {e}")))?;
    let key_pem = read(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| bad(&files.key, format!("not a PEM private key: {e}")))?;
    let id = pki::identity(&cert).map_err(|e| bad(&files.cert, e.to_string()))?;
    if &id.name != name {
        return Err(TlsError::WrongName {
            path: files.cert.clone(),
            expected: name.to_string(),
            found: id.name.to_string(),
        });
    }
    // Chains to the fleet CA and is valid for the name (the check a dialler will make).
    let verifier = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone())
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let server_name = ServerName::try_from(name.as_str().to_string())
        .map_err(|e| bad(&files.cert, format!("name is not a DNS name: {e}")))?;
    match verifier.verify_server_cert(&cert, &[], &server_name, &[], UnixTime::now()) {
        Ok(_) => {}
        Err(rustls::Error::InvalidCertificate(
            e @ (rustls::CertificateError::Expired
            | rustls::CertificateError::ExpiredContext { .. }
            | rustls::CertificateError::NotValidYet
            | rustls::CertificateError::NotValidYetContext { .. }),
        )) => {
            tracing::warn!(cert = %files.cert.display(), error = ?e, "this node's certificate is outside its validity; peers will refuse it until it is renewed");
        }
        Err(e) => {
            return Err(bad(
                &files.cert,
                format!(
                    "not accepted by the fleet CA in {}: {e}",
                    files.ca.display()
                ),
            ))
        }
    }
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| bad(&files.key, format!("unusable private key: {e}")))?;
    let ck = CertifiedKey::new(vec![cert], signing);
    ck.keys_match().map_err(|e| {
        bad(
            &files.key,
            format!(
                "does not match the certificate {}: {e}",
                files.cert.display()
            ),
        )
    })?;
    Ok((Arc::new(ck), id))
}

#[derive(Debug)]
struct Resolver(Arc<Credentials>);

impl rustls::server::ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }
}

impl rustls::client::ResolvesClientCert for Resolver {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // A renewal is noticed by content: same length, same modification time, other bytes.
    #[test]
    fn a_renewal_with_the_same_length_and_time_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles {
            ca: dir.path().join("ca.crt"),
            cert: dir.path().join("n.crt"),
            key: dir.path().join("n.key"),
            crl: None,
        };
        fs::write(&files.cert, b"certificate one").unwrap();
        fs::write(&files.key, b"key").unwrap();
        let before = stamp(&files);
        let mtime = fs::metadata(&files.cert).unwrap().modified().unwrap();
        fs::write(&files.cert, b"certificate two").unwrap();
        let f = fs::OpenOptions::new()
            .write(true)
            .open(&files.cert)
            .unwrap();
        f.set_modified(mtime).unwrap();
        assert_ne!(stamp(&files), before);
        assert_eq!(stamp(&files), stamp(&files));
    }

    #[test]
    fn an_oversized_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.crt");
        fs::write(&p, vec![b'a'; PEM_BYTES_MAX as usize + 1]).unwrap();
        assert!(matches!(read(&p), Err(TlsError::Bad { .. })));
        fs::write(&p, vec![b'a'; PEM_BYTES_MAX as usize]).unwrap();
        assert!(read(&p).is_ok());
    }
}
