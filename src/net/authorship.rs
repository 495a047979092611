//! Signed authorship with the fleet PKI ([`edgesync_proto::trust`]).
//!
//! Each node keeps an **authoring key** (Ed25519, `author.key` in its data directory, mode
//! 0600, made on first start): it signs the node's changes. An **authorship statement** binds
//! a node actor to that key and to the node's certificate, signed with the certificate's key
//! (ECDSA P-256), and carries the certificate:
//!
//! ```text
//! Statement { version: 1, node_actor: [u8; 16], key: [u8; 32], cert: DER,
//!             sig: ECDSA-P256-SHA256(cert key, "edgesync authorship v1" ‖ node_actor ‖ key ‖ blake3(cert)) }
//! ```
//!
//! A receiver checks that the certificate is a node certificate signed by the fleet CA (its
//! validity period is not checked: who wrote a change outlives the certificate), that the
//! statement's signature is the certificate key's, and whether the fleet's revocation list
//! names the certificate; the identity (name, role, site) is the certificate's. Change
//! signatures are Ed25519 over the change hash with the statement's key.
//!
//! The key survives certificate renewal; a node actor is bound to (key, certificate), so a
//! node that starts with another certificate takes a new actor epoch, and its earlier
//! changes keep their statements.

use std::path::Path;
use std::sync::Arc;

use edgesync_proto::authz::{Identity, Rules};
use edgesync_proto::trust::{
    member_slot, Author, Authority, Signer, Trust, ACTOR_SLOTS, STATEMENT_BYTES_MAX,
};
use edgesync_proto::Actor;
use ring::signature::{self, Ed25519KeyPair, KeyPair};
use serde::{Deserialize, Serialize};

use super::pki;
use super::tls::Credentials;

/// The authoring key's file in a data directory.
pub const AUTHOR_KEY_FILE: &str = "author.key";
const STATEMENT_VERSION: u8 = 1;
const DOMAIN: &[u8] = b"edgesync authorship v1";

#[derive(Serialize, Deserialize)]
struct Statement {
    version: u8,
    node_actor: Actor,
    key: [u8; 32],
    #[serde(with = "serde_bytes")]
    cert: Vec<u8>,
    #[serde(with = "serde_bytes")]
    sig: Vec<u8>,
}

fn signed_bytes(node_actor: &Actor, key: &[u8; 32], cert: &[u8]) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    m.extend_from_slice(&node_actor.0);
    m.extend_from_slice(key);
    m.extend_from_slice(blake3::hash(cert).as_bytes());
    m
}

/// Setting up authorship failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthorshipError {
    /// The authoring key file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A key did not parse.
    #[error("{what}: {detail}")]
    Key {
        /// Which key.
        what: String,
        /// Why.
        detail: String,
    },
}

/// The core's identity of a peer the transport authenticated.
pub fn core_identity(id: &pki::PeerIdentity) -> Identity {
    Identity::new(id.name.clone(), id.role, id.site.as_deref())
}

/// Loads the authoring key of `data_dir`, making one (mode 0600) if there is none.
fn authoring_key(data_dir: &Path) -> Result<Ed25519KeyPair, AuthorshipError> {
    let path = data_dir.join(AUTHOR_KEY_FILE);
    let io = |source| AuthorshipError::Io {
        path: path.clone(),
        source,
    };
    let bad = |detail: String| AuthorshipError::Key {
        what: path.display().to_string(),
        detail,
    };
    match std::fs::read(&path) {
        Ok(der) => Ed25519KeyPair::from_pkcs8(&der).map_err(|e| bad(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(data_dir).map_err(io)?;
            let rng = ring::rand::SystemRandom::new();
            let der = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| bad(e.to_string()))?;
            crate::os::write_atomic(&path, der.as_ref(), 0o600).map_err(io)?;
            Ed25519KeyPair::from_pkcs8(der.as_ref()).map_err(|e| bad(e.to_string()))
        }
        Err(e) => Err(io(e)),
    }
}

/// This node's signer: its authoring key, its certificate and the certificate's key.
struct CertSigner {
    identity: Identity,
    key: Ed25519KeyPair,
    cert: Vec<u8>,
    cert_key: signature::EcdsaKeyPair,
    /// The certificate's slot space, when it carries the actor-slots mark.
    slot_space: Option<[u8; 32]>,
}

impl std::fmt::Debug for CertSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertSigner")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl Signer for CertSigner {
    fn identity(&self) -> &Identity {
        &self.identity
    }

    fn key(&self) -> Vec<u8> {
        self.key.public_key().as_ref().to_vec()
    }

    fn slot_space(&self) -> Option<[u8; 32]> {
        self.slot_space
    }

    fn binding_id(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(self.key.public_key().as_ref());
        h.update(&self.cert);
        *h.finalize().as_bytes()
    }

    fn statement(&self, node_actor: &Actor) -> Vec<u8> {
        let mut key = [0u8; 32];
        key.copy_from_slice(self.key.public_key().as_ref());
        let rng = ring::rand::SystemRandom::new();
        let sig = self
            .cert_key
            .sign(&rng, &signed_bytes(node_actor, &key, &self.cert))
            .map(|s| s.as_ref().to_vec())
            .unwrap_or_default();
        let st = Statement {
            version: STATEMENT_VERSION,
            node_actor: *node_actor,
            key,
            cert: self.cert.clone(),
            sig,
        };
        postcard::to_allocvec(&st).expect("a statement encodes")
    }

    fn sign(&self, hash: &[u8; 32]) -> Vec<u8> {
        self.key.sign(hash).as_ref().to_vec()
    }
}

/// Checks statements against the fleet CA and the revocation list in force.
struct CertAuthority {
    ca_der: Vec<u8>,
    creds: Arc<Credentials>,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority").finish_non_exhaustive()
    }
}

impl Authority for CertAuthority {
    fn verify_statement(&self, statement: &[u8]) -> Result<Author, String> {
        if statement.len() > STATEMENT_BYTES_MAX {
            return Err(format!("statement of {} bytes", statement.len()));
        }
        let (st, rest): (Statement, _) =
            postcard::take_from_bytes(statement).map_err(|e| format!("malformed: {e}"))?;
        if !rest.is_empty() || st.version != STATEMENT_VERSION {
            return Err("malformed: trailing bytes or unknown version".into());
        }
        let (_, cert) = x509_parser::parse_x509_certificate(&st.cert)
            .map_err(|e| format!("certificate: {e}"))?;
        let (_, ca) = x509_parser::parse_x509_certificate(&self.ca_der)
            .map_err(|e| format!("fleet CA: {e}"))?;
        cert.verify_signature(Some(ca.public_key()))
            .map_err(|_| "certificate not issued by the fleet CA".to_string())?;
        let id = pki::identity(&st.cert).map_err(|e| format!("certificate: {e}"))?;
        let spki = cert.public_key().subject_public_key.data.to_vec();
        signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_ASN1, spki)
            .verify(&signed_bytes(&st.node_actor, &st.key, &st.cert), &st.sig)
            .map_err(|_| {
                format!(
                    "statement not signed by the key of {}'s certificate",
                    id.name
                )
            })?;
        let revoked = self.creds.revoked(cert.raw_serial()).is_some();
        // A slot-bound certificate binds its slot actors and no other.
        let slot = match pki::slot_space_of(&cert, &st.cert) {
            None => None,
            Some(space) => Some(member_slot(&space, &id.name, &st.node_actor).ok_or_else(|| {
                format!(
                    "actor {} is not one of the {ACTOR_SLOTS} slot actors of {}'s certificate or name",
                    st.node_actor, id.name
                )
            })?),
        };
        Ok(Author {
            node_actor: st.node_actor,
            identity: core_identity(&id),
            key: st.key.to_vec(),
            revoked,
            slot,
        })
    }

    fn verify_change(&self, author: &Author, hash: &[u8; 32], sig: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(&signature::ED25519, &author.key)
            .verify(hash, sig)
            .is_ok()
    }
}

/// The trust of a node with these credentials, its authoring key in `data_dir`, under `rules`.
/// Statements carry the certificate the node has now.
pub fn trust(
    creds: &Arc<Credentials>,
    data_dir: &Path,
    rules: Rules,
) -> Result<Trust, AuthorshipError> {
    let key = authoring_key(data_dir)?;
    let files = creds.files();
    let pem = std::fs::read(&files.key).map_err(|source| AuthorshipError::Io {
        path: files.key.clone(),
        source,
    })?;
    let cert_key = {
        use rustls::pki_types::pem::PemObject;
        let der = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(&pem).map_err(|e| {
            AuthorshipError::Key {
                what: files.key.display().to_string(),
                detail: format!("not a PKCS#8 PEM key: {e}"),
            }
        })?;
        signature::EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            der.secret_pkcs8_der(),
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|e| AuthorshipError::Key {
            what: files.key.display().to_string(),
            detail: format!("not an ECDSA P-256 key: {e}"),
        })?
    };
    let identity = core_identity(&creds.identity());
    let cert = creds.cert_der();
    Ok(Trust {
        signer: Some(Arc::new(CertSigner {
            identity,
            key,
            slot_space: pki::slot_space(&cert),
            cert,
            cert_key,
        })),
        authority: Some(Arc::new(CertAuthority {
            ca_der: creds.ca_der().to_vec(),
            creds: creds.clone(),
        })),
        rules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::pki::{NodeSpec, Role};
    use crate::net::TlsFiles;
    use edgesync_proto::NodeName;

    fn node(dir: &Path, name: &str, role: Role, site: Option<&str>) -> Arc<Credentials> {
        let n = NodeName::new(name).unwrap();
        pki::issue(
            dir,
            &NodeSpec::new(n.clone(), role, site.map(String::from), 30).unwrap(),
        )
        .unwrap();
        let files = TlsFiles {
            ca: dir.join("ca.crt"),
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
            crl: Some(dir.join("crl.pem")),
        };
        Credentials::load(&files, &n).unwrap()
    }

    // A statement proves its node's identity and key to any member; a change signature is the
    // authoring key's; a tampered statement, a certificate of another fleet, or a statement
    // signed by another node's certificate key prove nothing; revocation is reported.
    #[test]
    fn statements_and_signatures() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        pki::init(d, 30).unwrap();
        let gw = node(d, "gw-1", Role::Gateway, Some("site-a"));
        let cloud = node(d, "cloud", Role::Cloud, None);
        let t_gw = trust(&gw, &d.join("data-gw"), Rules::default()).unwrap();
        let t_cloud = trust(&cloud, &d.join("data-cloud"), Rules::default()).unwrap();
        let signer = t_gw.signer.clone().unwrap();
        let authority = t_cloud.authority.clone().unwrap();
        let space = signer
            .slot_space()
            .expect("issued certificates are slot-bound");
        let na = edgesync_proto::trust::slot_actor(&space, 3);
        let st = signer.statement(&na);
        let author = authority.verify_statement(&st).unwrap();
        assert_eq!(author.node_actor, na);
        assert_eq!(author.slot.map(|s| (s.space, s.index)), Some((space, 3)));
        // Any other actor: the certificate binds only its slot actors.
        for other in [
            Actor([7; 16]),
            edgesync_proto::trust::slot_actor(&space, ACTOR_SLOTS),
            edgesync_proto::trust::slot_actor(&[1; 32], 0),
        ] {
            let e = authority
                .verify_statement(&signer.statement(&other))
                .unwrap_err();
            assert!(e.contains("slot actors"), "{e}");
        }
        assert_eq!(author.identity.name.as_str(), "gw-1");
        assert_eq!(author.identity.role, Role::Gateway);
        assert_eq!(author.identity.site.as_deref(), Some("site-a"));
        assert!(!author.revoked);
        let sig = signer.sign(&[3; 32]);
        assert!(authority.verify_change(&author, &[3; 32], &sig));
        assert!(!authority.verify_change(&author, &[4; 32], &sig));
        // The key is kept: a second start signs with the same one.
        let again = trust(&gw, &d.join("data-gw"), Rules::default()).unwrap();
        assert_eq!(again.signer.unwrap().key(), signer.key());
        // Tampering with any part.
        for at in [2, 20, st.len() - 3] {
            let mut bad = st.clone();
            bad[at] ^= 1;
            assert!(authority.verify_statement(&bad).is_err(), "byte {at}");
        }
        // Another fleet's certificate.
        let other = tempfile::tempdir().unwrap();
        pki::init(other.path(), 30).unwrap();
        let rogue = node(other.path(), "gw-1", Role::Gateway, Some("site-a"));
        let t_rogue = trust(&rogue, &other.path().join("data"), Rules::default()).unwrap();
        let e = authority
            .verify_statement(&t_rogue.signer.unwrap().statement(&na))
            .unwrap_err();
        assert!(e.contains("fleet CA"), "{e}");
        // Revoked, once the list in force names the certificate.
        crate::net::crl::revoke(
            d,
            &NodeName::new("gw-1").unwrap(),
            crate::net::crl::Reason::KeyCompromise,
        )
        .unwrap();
        cloud.reload().unwrap();
        assert!(authority.verify_statement(&st).unwrap().revoked);
    }

    // A certificate issued before actor slots (no mark) binds any actor, unbounded, until it
    // is renewed: its statements verify with no slot.
    #[test]
    fn certificates_from_before_slots_bind_any_actor() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        pki::init(d, 30).unwrap();
        let cloud = node(d, "cloud", Role::Cloud, None);
        let n = NodeName::new("gw-old").unwrap();
        let spec = NodeSpec::new(n.clone(), Role::Gateway, None, 30).unwrap();
        let pem = pki::make_legacy_node(&pki::load_ca(d).unwrap(), &spec).unwrap();
        let (cert, key) = pki::node_paths(d, &n);
        std::fs::write(&cert, &pem.cert).unwrap();
        std::fs::write(&key, &pem.key).unwrap();
        let files = TlsFiles {
            ca: d.join("ca.crt"),
            cert,
            key,
            crl: None,
        };
        let old = Credentials::load(&files, &n).unwrap();
        let t_old = trust(&old, &d.join("data-old"), Rules::default()).unwrap();
        let signer = t_old.signer.unwrap();
        assert_eq!(signer.slot_space(), None);
        let t_cloud = trust(&cloud, &d.join("data-cloud"), Rules::default()).unwrap();
        let authority = t_cloud.authority.unwrap();
        for na in [Actor([7; 16]), Actor([8; 16])] {
            let author = authority.verify_statement(&signer.statement(&na)).unwrap();
            assert_eq!((author.node_actor, author.slot), (na, None));
        }
    }
}
