//! The fleet PKI: a fleet CA, node certificates and reading a node's identity back out of a
//! verified certificate.
//!
//! A node certificate carries:
//!
//! - subject `CN` = the node name, also the only DNS subject-alternative name (a dialler verifies
//!   the server against it, never against an IP address);
//! - subject `OU` = the role (`cloud`, `gateway` or `edge`);
//! - subject `L` = the site, when there is one;
//! - subject `O` = `edgesync fleet`;
//! - key usage digital signature, extended key usage server and client authentication (every
//!   node both dials and accepts).
//!
//! The fleet CA is self-signed, may sign only end-entity certificates (path length 0), and its
//! key never leaves the machine `pki init` ran on. Keys are ECDSA P-256.

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use edgesync_proto::NodeName;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// `O` of every fleet certificate.
pub const FLEET_ORG: &str = "edgesync fleet";
/// Default validity of the fleet CA, days.
pub const CA_VALID_DAYS: u32 = 3650;
/// Default validity of a node certificate, days.
pub const NODE_VALID_DAYS: u32 = 365;
/// A new certificate is valid from this long before it is made, for nodes whose clocks lag.
pub const BACKDATE: Duration = Duration::hours(1);
/// Longest site name, bytes.
pub const SITE_BYTES_MAX: usize = 64;

/// What a node is in the fleet (the core's role: rules are written in it).
pub use edgesync_proto::authz::Role;

/// Who a peer is, as read from its verified certificate. The rest of the node knows a peer
/// only by this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerIdentity {
    /// The node name (subject CN, equal to the DNS subject-alternative name).
    pub name: NodeName,
    /// The role.
    pub role: Role,
    /// The site, if any.
    pub site: Option<String>,
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}", self.name, self.role)?;
        if let Some(s) = &self.site {
            write!(f, ", site {s}")?;
        }
        f.write_str(")")
    }
}

/// What `pki show` prints.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CertInfo {
    /// Subject common name.
    pub name: String,
    /// Role, for a node certificate.
    pub role: Option<String>,
    /// Site, for a node certificate that has one.
    pub site: Option<String>,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Subject distinguished name.
    pub subject: String,
    /// Whether this is a CA certificate.
    pub is_ca: bool,
    /// Start of validity, RFC 3339.
    pub not_before: String,
    /// End of validity, RFC 3339.
    pub not_after: String,
    /// blake3 of the DER encoding, hex.
    pub fingerprint: String,
    /// Whether it carries the actor-slots mark ([`ACTOR_SLOTS_URI`]): its node authors under
    /// at most 32 actors.
    pub actor_slots: bool,
}

/// A PKI operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// `pki init` found a CA already there.
    #[error("{} already exists; refusing to overwrite a fleet CA (remove it yourself if you mean it)", .0.display())]
    Exists(PathBuf),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A certificate or key did not parse.
    #[error("{what}: {detail}")]
    Parse {
        /// Which input.
        what: String,
        /// Why.
        detail: String,
    },
    /// Bad arguments (name, site, validity).
    #[error("{0}")]
    Invalid(String),
    /// Certificate generation failed.
    #[error("generating the certificate failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A certificate's identity could not be read.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    /// Not a parsable X.509 certificate.
    #[error("not an X.509 certificate: {0}")]
    Parse(String),
    /// Not an edgesync node certificate (missing or bad CN/OU, or a CA).
    #[error("not an edgesync node certificate: {0}")]
    NotNode(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn validity(days: u32, now: OffsetDateTime) -> Result<(OffsetDateTime, OffsetDateTime), PkiError> {
    if days == 0 || days > 36_500 {
        return Err(PkiError::Invalid(format!(
            "validity of {days} days is out of range (1 to 36500)"
        )));
    }
    Ok((now - BACKDATE, now + Duration::days(i64::from(days))))
}

/// Checks a site name: like a node name, at most [`SITE_BYTES_MAX`] bytes.
pub fn validate_site(site: &str) -> Result<(), PkiError> {
    if site.is_empty() || site.len() > SITE_BYTES_MAX {
        return Err(PkiError::Invalid(format!(
            "site must be 1 to {SITE_BYTES_MAX} bytes"
        )));
    }
    if let Some(c) = site
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(PkiError::Invalid(format!(
            "site {site:?} contains {c:?}; allowed are A-Z a-z 0-9 . _ -"
        )));
    }
    Ok(())
}

/// A CA or node certificate with its private key, PEM-encoded.
#[derive(Clone)]
pub struct Pem {
    /// The certificate.
    pub cert: String,
    /// The private key (PKCS#8).
    pub key: String,
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pem").field("key", &"<redacted>").finish()
    }
}

/// Makes a fleet CA valid from `not_before` to `not_after`.
pub fn make_ca(not_before: OffsetDateTime, not_after: OffsetDateTime) -> Result<Pem, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    // A random fleet id in the name keeps two fleets' CAs apart even by name.
    let key = KeyPair::generate()?;
    let id = blake3::hash(key.public_key_raw()).to_hex();
    dn.push(
        DnType::CommonName,
        format!("edgesync fleet CA {}", &id[..12]),
    );
    dn.push(DnType::OrganizationName, FLEET_ORG);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = not_before;
    params.not_after = not_after;
    let cert = params.self_signed(&key)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// What to put in a node certificate.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    /// Node name.
    pub name: NodeName,
    /// Role.
    pub role: Role,
    /// Site.
    pub site: Option<String>,
    /// Start of validity.
    pub not_before: OffsetDateTime,
    /// End of validity.
    pub not_after: OffsetDateTime,
}

impl NodeSpec {
    /// Valid from an hour ago for `days` days.
    pub fn new(
        name: NodeName,
        role: Role,
        site: Option<String>,
        days: u32,
    ) -> Result<NodeSpec, PkiError> {
        let (not_before, not_after) = validity(days, OffsetDateTime::now_utc())?;
        Ok(NodeSpec {
            name,
            role,
            site,
            not_before,
            not_after,
        })
    }
}

/// The mark of a slot-bound node certificate: a URI subject-alternative name. A certificate
/// with it binds only its [`edgesync_proto::trust::ACTOR_SLOTS`] slot actors
/// ([`slot_space`]); certificates issued before it bind any actor.
pub const ACTOR_SLOTS_URI: &str = "urn:edgesync:actor-slots:32";

/// The slot space of a node certificate (DER) that carries the actor-slots mark; `None` for a
/// certificate without it (or one that does not parse).
pub fn slot_space(der: &[u8]) -> Option<[u8; 32]> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    slot_space_of(&cert, der)
}

/// [`slot_space`] of a certificate already parsed from `der`.
pub fn slot_space_of(
    cert: &x509_parser::certificate::X509Certificate<'_>,
    der: &[u8],
) -> Option<[u8; 32]> {
    let marked = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .is_some_and(|san| {
            san.value.general_names.iter().any(|g| {
                matches!(g, x509_parser::extensions::GeneralName::URI(u) if *u == ACTOR_SLOTS_URI)
            })
        });
    marked.then(|| blake3::derive_key("edgesync certificate slot space v1", der))
}

/// Issues a node certificate signed by the CA given as PEM (slot-bound: it carries
/// [`ACTOR_SLOTS_URI`]).
pub fn make_node(ca: &Pem, spec: &NodeSpec) -> Result<Pem, PkiError> {
    make_node_marked(ca, spec, true)
}

/// A node certificate as versions before actor slots issued it (no mark): for tests of what
/// such certificates may do.
#[cfg(test)]
pub(crate) fn make_legacy_node(ca: &Pem, spec: &NodeSpec) -> Result<Pem, PkiError> {
    make_node_marked(ca, spec, false)
}

fn make_node_marked(ca: &Pem, spec: &NodeSpec, mark: bool) -> Result<Pem, PkiError> {
    if let Some(site) = &spec.site {
        validate_site(site)?;
    }
    let ca_key = KeyPair::from_pem(&ca.key).map_err(|e| PkiError::Parse {
        what: "CA key".into(),
        detail: e.to_string(),
    })?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key).map_err(|e| PkiError::Parse {
        what: "CA certificate".into(),
        detail: e.to_string(),
    })?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, spec.name.as_str());
    dn.push(DnType::OrganizationName, FLEET_ORG);
    dn.push(DnType::OrganizationalUnitName, spec.role.as_str());
    if let Some(site) = &spec.site {
        dn.push(DnType::LocalityName, site.as_str());
    }
    params.distinguished_name = dn;
    let dns = spec
        .name
        .as_str()
        .to_string()
        .try_into()
        .map_err(|e: rcgen::Error| PkiError::Invalid(format!("name as DNS name: {e}")))?;
    params.subject_alt_names = vec![SanType::DnsName(dns)];
    if mark {
        let slots = ACTOR_SLOTS_URI
            .to_string()
            .try_into()
            .map_err(|e: rcgen::Error| PkiError::Invalid(format!("actor slots mark: {e}")))?;
        params.subject_alt_names.push(SanType::URI(slots));
    }
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = spec.not_before;
    params.not_after = spec.not_after;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// Paths of the fleet CA in `dir`.
pub fn ca_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("ca.crt"), dir.join("ca.key"))
}

/// Paths of a node's certificate and key in `dir`.
pub fn node_paths(dir: &Path, name: &NodeName) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    )
}

/// Writes `bytes` to `path` atomically with `mode` ([`crate::os::write_atomic`]), so that a
/// node watching the file never reads half of it.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    crate::os::write_atomic(path, bytes, mode).map_err(io(path))
}

/// `pki init`: creates `ca.crt`, `ca.key` (mode 0600) and an empty revocation list `crl.pem`
/// signed by the new CA in `dir`; refuses if the CA or a list exists.
pub fn init(dir: &Path, valid_days: u32) -> Result<(PathBuf, PathBuf), PkiError> {
    let (crt, key) = ca_paths(dir);
    for p in [&crt, &key, &super::crl::crl_path(dir)] {
        if p.exists() {
            return Err(PkiError::Exists(p.clone()));
        }
    }
    fs::create_dir_all(dir).map_err(io(dir))?;
    let (nb, na) = validity(valid_days, OffsetDateTime::now_utc())?;
    let ca = make_ca(nb, na)?;
    write_atomic(&key, ca.key.as_bytes(), 0o600)?;
    write_atomic(&crt, ca.cert.as_bytes(), 0o644)?;
    super::crl::store(
        dir,
        &super::crl::Crl {
            number: 1,
            entries: Vec::new(),
        },
    )?;
    Ok((crt, key))
}

/// Reads the fleet CA from `dir`.
pub fn load_ca(dir: &Path) -> Result<Pem, PkiError> {
    let (crt, key) = ca_paths(dir);
    Ok(Pem {
        cert: fs::read_to_string(&crt).map_err(io(&crt))?,
        key: fs::read_to_string(&key).map_err(io(&key))?,
    })
}

/// `pki issue`: writes `NAME.crt` and `NAME.key` (mode 0600) in `dir`, signed by the CA there.
/// An existing pair is replaced atomically: that is how a certificate is renewed.
pub fn issue(dir: &Path, spec: &NodeSpec) -> Result<(PathBuf, PathBuf), PkiError> {
    let ca = load_ca(dir)?;
    let pem = make_node(&ca, spec)?;
    let (crt, key) = node_paths(dir, &spec.name);
    write_atomic(&key, pem.key.as_bytes(), 0o600)?;
    write_atomic(&crt, pem.cert.as_bytes(), 0o644)?;
    Ok((crt, key))
}

/// The first certificate in a PEM text, as DER.
pub fn pem_to_der(pem: &str, what: &str) -> Result<Vec<u8>, PkiError> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.to_vec())
        .map_err(|e| PkiError::Parse {
            what: what.to_string(),
            detail: format!("no PEM certificate: {e}"),
        })
}

fn rfc3339(t: x509_parser::time::ASN1Time) -> String {
    t.to_datetime()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// Describes a certificate (`pki show`).
pub fn cert_info(der: &[u8]) -> Result<CertInfo, IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::Parse(e.to_string()))?;
    let subject = cert.subject();
    let first = |a: Option<&x509_parser::x509::AttributeTypeAndValue>| {
        a.and_then(|a| a.as_str().ok()).map(str::to_string)
    };
    let name = first(subject.iter_common_name().next()).unwrap_or_default();
    let role = first(subject.iter_organizational_unit().next());
    let site = first(subject.iter_locality().next());
    let info = CertInfo {
        name,
        role,
        site,
        issuer: cert.issuer().to_string(),
        subject: subject.to_string(),
        is_ca: cert.is_ca(),
        not_before: rfc3339(cert.validity().not_before),
        not_after: rfc3339(cert.validity().not_after),
        fingerprint: blake3::hash(der).to_hex().to_string(),
        actor_slots: slot_space(der).is_some(),
    };
    Ok(info)
}

/// The one value of a subject attribute, if present; more than one is an error.
fn single<'a, 'b: 'a>(
    mut it: impl Iterator<Item = &'a x509_parser::x509::AttributeTypeAndValue<'b>>,
    what: &str,
) -> Result<Option<String>, IdentityError> {
    let v = match it.next() {
        None => return Ok(None),
        Some(a) => a
            .as_str()
            .map_err(|_| IdentityError::NotNode(format!("{what} is not a string")))?
            .to_string(),
    };
    if it.next().is_some() {
        return Err(IdentityError::NotNode(format!("more than one {what}")));
    }
    Ok(Some(v))
}

/// Reads the peer identity from a certificate that TLS has already verified against the fleet
/// CA. The name must be a valid node name and equal to a DNS subject-alternative name; the
/// role must be known.
pub fn identity(der: &[u8]) -> Result<PeerIdentity, IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| IdentityError::Parse(e.to_string()))?;
    if cert.is_ca() {
        return Err(IdentityError::NotNode("a CA certificate".into()));
    }
    let subject = cert.subject();
    let cn = single(subject.iter_common_name(), "CN")?
        .ok_or_else(|| IdentityError::NotNode("no CN".into()))?;
    let name =
        NodeName::new(cn.clone()).map_err(|e| IdentityError::NotNode(format!("CN {cn:?}: {e}")))?;
    let role = single(subject.iter_organizational_unit(), "OU")?
        .ok_or_else(|| IdentityError::NotNode("no OU (role)".into()))?
        .parse::<Role>()
        .map_err(IdentityError::NotNode)?;
    let site = single(subject.iter_locality(), "L")?;
    if let Some(s) = &site {
        validate_site(s).map_err(|e| IdentityError::NotNode(e.to_string()))?;
    }
    let san_matches = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .is_some_and(|san| {
            san.value.general_names.iter().any(|g| {
                matches!(g, x509_parser::extensions::GeneralName::DNSName(d)
                    if d.eq_ignore_ascii_case(name.as_str()))
            })
        });
    if !san_matches {
        return Err(IdentityError::NotNode(format!(
            "no DNS subject-alternative name equal to CN {name}"
        )));
    }
    Ok(PeerIdentity { name, role, site })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> NodeName {
        NodeName::new(s).unwrap()
    }

    #[test]
    fn node_certificate_round_trips_identity() {
        let now = OffsetDateTime::now_utc();
        let ca = make_ca(now - BACKDATE, now + Duration::days(10)).unwrap();
        let spec = NodeSpec::new(name("gw-1"), Role::Gateway, Some("site-a".into()), 30).unwrap();
        let pem = make_node(&ca, &spec).unwrap();
        let der = pem_to_der(&pem.cert, "node").unwrap();
        let id = identity(&der).unwrap();
        assert_eq!(id.name, name("gw-1"));
        assert_eq!(id.role, Role::Gateway);
        assert_eq!(id.site.as_deref(), Some("site-a"));
        let info = cert_info(&der).unwrap();
        assert!(info.issuer.contains("edgesync fleet CA"), "{}", info.issuer);
        assert!(!info.is_ca);
        assert!(info.actor_slots, "issued node certificates are slot-bound");
        let space = slot_space(&der).unwrap();
        let legacy = pem_to_der(&make_legacy_node(&ca, &spec).unwrap().cert, "node").unwrap();
        assert_eq!(slot_space(&legacy), None);
        assert_eq!(
            identity(&legacy).unwrap(),
            id,
            "the mark changes no identity"
        );
        // Each certificate is its own slot space: a renewal starts a new one.
        let renewed = pem_to_der(&make_node(&ca, &spec).unwrap().cert, "node").unwrap();
        assert_ne!(slot_space(&renewed), Some(space));
        let ca_der = pem_to_der(&ca.cert, "ca").unwrap();
        assert!(cert_info(&ca_der).unwrap().is_ca);
        assert!(matches!(identity(&ca_der), Err(IdentityError::NotNode(_))));
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(validate_site("a/b").is_err());
        assert!(validate_site("").is_err());
        assert!(validate_site(&"s".repeat(SITE_BYTES_MAX + 1)).is_err());
        assert!(NodeSpec::new(name("a"), Role::Edge, None, 0).is_err());
        assert!("router".parse::<Role>().is_err());
        assert!(identity(b"garbage").is_err());
    }

    #[test]
    fn init_refuses_to_overwrite_and_keys_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (crt, key) = init(dir.path(), 10).unwrap();
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let before = fs::read(&crt).unwrap();
        assert!(matches!(init(dir.path(), 10), Err(PkiError::Exists(_))));
        assert_eq!(fs::read(&crt).unwrap(), before, "the CA is untouched");
        let spec = NodeSpec::new(name("cloud"), Role::Cloud, None, 10).unwrap();
        let (ncrt, nkey) = issue(dir.path(), &spec).unwrap();
        assert_eq!(
            fs::metadata(&nkey).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let id = identity(&pem_to_der(&fs::read_to_string(ncrt).unwrap(), "c").unwrap()).unwrap();
        assert_eq!((id.role, id.site), (Role::Cloud, None));
    }
}
