//! The fleet's certificate revocation list: `crl.pem` beside the fleet CA, signed by it.
//!
//! `edgesync pki init` writes an empty one; `edgesync pki revoke` adds a node's current
//! certificate (by serial number) and signs the list again with a higher CRL number. Nodes
//! that name it in `[tls] crl` refuse revoked certificates at the handshake, on both sides, and
//! close established connections of a peer whose certificate the list comes to name
//! ([`super::tls::Credentials`]). Only end-entity certificates are ever listed: the fleet CA
//! itself cannot be revoked by its own list (re-key the fleet instead).

use std::fs;
use std::path::{Path, PathBuf};

use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevocationReason,
    RevokedCertParams, SerialNumber,
};
use time::{Duration, OffsetDateTime};

use super::pki::{self, PkiError};

/// File name of the list in a PKI directory.
pub const CRL_FILE: &str = "crl.pem";
/// How long a list says it is current. Nodes do not enforce it (a fleet offline for longer must
/// keep working); it is there because the format requires one.
const NEXT_UPDATE: Duration = Duration::days(3650);

/// Why a certificate was revoked (RFC 5280 reason codes edgesync offers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Reason {
    /// No reason given.
    Unspecified,
    /// The node's key was stolen or leaked.
    KeyCompromise,
    /// The node changed site or role.
    AffiliationChanged,
    /// A newer certificate replaces it.
    Superseded,
    /// The node was taken out of service.
    CessationOfOperation,
}

impl Reason {
    fn code(self) -> RevocationReason {
        match self {
            Reason::Unspecified => RevocationReason::Unspecified,
            Reason::KeyCompromise => RevocationReason::KeyCompromise,
            Reason::AffiliationChanged => RevocationReason::AffiliationChanged,
            Reason::Superseded => RevocationReason::Superseded,
            Reason::CessationOfOperation => RevocationReason::CessationOfOperation,
        }
    }

    fn from_code(code: u8) -> Option<Reason> {
        Some(match code {
            0 => Reason::Unspecified,
            1 => Reason::KeyCompromise,
            3 => Reason::AffiliationChanged,
            4 => Reason::Superseded,
            5 => Reason::CessationOfOperation,
            _ => return None,
        })
    }

    /// The reason's name, as the CLI takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unspecified => "unspecified",
            Reason::KeyCompromise => "key-compromise",
            Reason::AffiliationChanged => "affiliation-changed",
            Reason::Superseded => "superseded",
            Reason::CessationOfOperation => "cessation-of-operation",
        }
    }
}

/// One revoked certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The certificate's serial number (DER content bytes).
    pub serial: Vec<u8>,
    /// When it was revoked (second precision).
    pub revoked_at: OffsetDateTime,
    /// Why, if the list says (a code edgesync does not offer reads as `None`).
    pub reason: Option<Reason>,
}

/// A parsed, signature-checked list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Crl {
    /// Its CRL number (raised by every `pki revoke`).
    pub number: u64,
    /// The revoked certificates.
    pub entries: Vec<Entry>,
}

impl Crl {
    /// The entry for a certificate's serial number, if it is revoked.
    pub fn find(&self, serial: &[u8]) -> Option<&Entry> {
        self.entries.iter().find(|e| e.serial == serial)
    }
}

/// Where the list lives in a PKI directory.
pub fn crl_path(dir: &Path) -> PathBuf {
    dir.join(CRL_FILE)
}

fn parse_err(what: &str, detail: impl std::fmt::Display) -> PkiError {
    PkiError::Parse {
        what: what.to_string(),
        detail: detail.to_string(),
    }
}

/// The list signed by the CA given as PEM.
pub fn make(ca: &pki::Pem, crl: &Crl) -> Result<String, PkiError> {
    let key = KeyPair::from_pem(&ca.key).map_err(|e| parse_err("CA key", e))?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca.cert, key).map_err(|e| parse_err("CA certificate", e))?;
    let now = OffsetDateTime::now_utc();
    let params = CertificateRevocationListParams {
        this_update: now,
        next_update: now + NEXT_UPDATE,
        crl_number: SerialNumber::from(crl.number),
        issuing_distribution_point: None,
        revoked_certs: crl
            .entries
            .iter()
            .map(|e| RevokedCertParams {
                serial_number: SerialNumber::from_slice(&e.serial),
                revocation_time: e.revoked_at,
                reason_code: e.reason.map(Reason::code),
                invalidity_date: None,
            })
            .collect(),
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let list = params
        .signed_by(&issuer)
        .map_err(|e| PkiError::Invalid(format!("signing the revocation list: {e}")))?;
    list.pem()
        .map_err(|e| PkiError::Invalid(format!("encoding the revocation list: {e}")))
}

/// Parses a PEM list and checks that the fleet CA (`ca_der`) signed it.
pub fn parse(pem: &[u8], ca_der: &[u8], what: &str) -> Result<Crl, PkiError> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateRevocationListDer::from_pem_slice(pem)
        .map_err(|e| parse_err(what, format!("no PEM revocation list: {e}")))?;
    let (rest, list) = x509_parser::parse_x509_crl(der.as_ref()).map_err(|e| parse_err(what, e))?;
    if !rest.is_empty() {
        return Err(parse_err(what, "bytes after the revocation list"));
    }
    let (_, ca) =
        x509_parser::parse_x509_certificate(ca_der).map_err(|e| parse_err("CA certificate", e))?;
    list.verify_signature(ca.public_key())
        .map_err(|e| parse_err(what, format!("not signed by the fleet CA: {e}")))?;
    let number = list
        .crl_number()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0);
    let entries = list
        .iter_revoked_certificates()
        .map(|r| Entry {
            serial: r.raw_serial().to_vec(),
            revoked_at: r.revocation_date.to_datetime(),
            reason: r.reason_code().and_then(|(_, c)| Reason::from_code(c.0)),
        })
        .collect();
    Ok(Crl { number, entries })
}

/// The serial number of a certificate (DER content bytes).
pub fn serial_of(cert_der: &[u8]) -> Result<Vec<u8>, PkiError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(cert_der).map_err(|e| parse_err("certificate", e))?;
    Ok(cert.raw_serial().to_vec())
}

/// Reads the list in `dir`, checked against the CA there; an absent file is an empty list.
pub fn load(dir: &Path) -> Result<Crl, PkiError> {
    let path = crl_path(dir);
    let pem = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Crl::default()),
        Err(source) => return Err(PkiError::Io { path, source }),
    };
    let ca = pki::load_ca(dir)?;
    let ca_der = pki::pem_to_der(&ca.cert, "CA certificate")?;
    parse(&pem, &ca_der, &path.display().to_string())
}

/// Reads the list at `path`, checked against the CA certificate at `ca`.
pub fn load_file(path: &Path, ca: &Path) -> Result<Crl, PkiError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |source| PkiError::Io { path: p, source }
    };
    let pem = fs::read(path).map_err(io(path))?;
    let ca_pem = fs::read_to_string(ca).map_err(io(ca))?;
    let ca_der = pki::pem_to_der(&ca_pem, &ca.display().to_string())?;
    parse(&pem, &ca_der, &path.display().to_string())
}

/// Writes `crl` to `dir`, signed by the CA there.
pub fn store(dir: &Path, crl: &Crl) -> Result<PathBuf, PkiError> {
    let ca = pki::load_ca(dir)?;
    let pem = make(&ca, crl)?;
    let path = crl_path(dir);
    pki::write_atomic(&path, pem.as_bytes(), 0o644)?;
    Ok(path)
}

/// What `pki revoke` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revoked {
    /// The list written.
    pub path: PathBuf,
    /// The certificate's serial number, hex.
    pub serial: String,
    /// False when the certificate was already on the list (nothing changed).
    pub added: bool,
}

/// `pki revoke`: adds the current certificate of node `name` in `dir` to the list there.
pub fn revoke(
    dir: &Path,
    name: &edgesync_proto::NodeName,
    reason: Reason,
) -> Result<Revoked, PkiError> {
    let (crt, _) = pki::node_paths(dir, name);
    let text = fs::read_to_string(&crt).map_err(|source| PkiError::Io {
        path: crt.clone(),
        source,
    })?;
    let serial = serial_of(&pki::pem_to_der(&text, &crt.display().to_string())?)?;
    let mut crl = load(dir)?;
    let hex = hex(&serial);
    if crl.find(&serial).is_some() {
        return Ok(Revoked {
            path: crl_path(dir),
            serial: hex,
            added: false,
        });
    }
    crl.entries.push(Entry {
        serial,
        revoked_at: OffsetDateTime::now_utc()
            .replace_nanosecond(0)
            .expect("0 ns"),
        reason: Some(reason),
    });
    crl.number += 1;
    let path = store(dir, &crl)?;
    Ok(Revoked {
        path,
        serial: hex,
        added: true,
    })
}

/// Bytes as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::pki::{NodeSpec, Role};
    use edgesync_proto::NodeName;

    fn node(dir: &Path, name: &str) -> NodeName {
        let n = NodeName::new(name).unwrap();
        let spec = NodeSpec::new(n.clone(), Role::Gateway, Some("site-a".into()), 30).unwrap();
        pki::issue(dir, &spec).unwrap();
        n
    }

    // init writes an empty list; revoke adds the current certificate once, raising the number;
    // a renewed certificate is not revoked; the list is refused under another fleet's CA.
    #[test]
    fn init_revoke_renew() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        pki::init(d, 30).unwrap();
        assert_eq!(
            load(d).unwrap(),
            Crl {
                number: 1,
                entries: vec![]
            }
        );
        let gw = node(d, "gw-1");
        let other = node(d, "gw-2");
        let serial = |n: &NodeName| {
            let (crt, _) = pki::node_paths(d, n);
            serial_of(&pki::pem_to_der(&fs::read_to_string(crt).unwrap(), "c").unwrap()).unwrap()
        };
        let r = revoke(d, &gw, Reason::KeyCompromise).unwrap();
        assert!(r.added);
        let crl = load(d).unwrap();
        assert_eq!(crl.number, 2);
        let e = crl.find(&serial(&gw)).expect("revoked");
        assert_eq!(e.reason, Some(Reason::KeyCompromise));
        assert!(crl.find(&serial(&other)).is_none());
        assert!(!revoke(d, &gw, Reason::Unspecified).unwrap().added);
        assert_eq!(load(d).unwrap().number, 2, "nothing changed");
        // A renewal has a new serial number: not on the list.
        node(d, "gw-1");
        assert!(load(d).unwrap().find(&serial(&gw)).is_none());
        // Another fleet's CA did not sign this list.
        let other_fleet = tempfile::tempdir().unwrap();
        pki::init(other_fleet.path(), 30).unwrap();
        let ca = pki::load_ca(other_fleet.path()).unwrap();
        let ca_der = pki::pem_to_der(&ca.cert, "ca").unwrap();
        let pem = fs::read(crl_path(d)).unwrap();
        assert!(parse(&pem, &ca_der, "crl").is_err());
        assert!(parse(b"not a list", &ca_der, "crl").is_err());
    }
}
