//! A fleet on loopback in one directory: a throwaway fleet CA, node certificates, and
//! [`Settings`] for nodes whose API and QUIC listener take free ports on 127.0.0.1. `edgesync
//! demo` and the benchmarks build their fleets with it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use edgesync_proto::NodeName;

use super::config::Settings;
use crate::mesh::PeerConfig;
use crate::net::pki::{self, NodeSpec, Role};
use crate::net::TlsFiles;

/// Validity of a local fleet's CA and certificates, days.
const VALID_DAYS: u32 = 30;

/// A fleet CA and node certificates in one directory.
#[derive(Clone, Debug)]
pub struct LocalFleet {
    pki_dir: PathBuf,
}

impl LocalFleet {
    /// Creates a fleet CA in `pki_dir` and a certificate for each `(name, role)`, at `site`.
    pub fn create(
        pki_dir: &Path,
        nodes: &[(&str, Role)],
        site: Option<&str>,
    ) -> anyhow::Result<LocalFleet> {
        pki::init(pki_dir, VALID_DAYS).context("creating the fleet CA")?;
        for (name, role) in nodes {
            let name = NodeName::new(*name)?;
            let spec = NodeSpec::new(name, *role, site.map(str::to_string), VALID_DAYS)?;
            pki::issue(pki_dir, &spec).with_context(|| format!("issuing {}", spec.name))?;
        }
        Ok(LocalFleet {
            pki_dir: pki_dir.to_path_buf(),
        })
    }

    /// Where the CA and the certificates are.
    pub fn pki_dir(&self) -> &Path {
        &self.pki_dir
    }

    /// The TLS files of node `name`.
    pub fn tls(&self, name: &str) -> TlsFiles {
        TlsFiles {
            ca: self.pki_dir.join("ca.crt"),
            cert: self.pki_dir.join(format!("{name}.crt")),
            key: self.pki_dir.join(format!("{name}.key")),
        }
    }

    /// Defaults for node `name` with its data in `data_dir`: the API on a free loopback port,
    /// QUIC listening on one too if `listen`, dialling `peers`.
    pub fn settings(
        &self,
        name: &str,
        data_dir: impl Into<PathBuf>,
        listen: bool,
        peers: &[(&str, SocketAddr)],
    ) -> anyhow::Result<Settings> {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut s = Settings::new(NodeName::new(name)?, data_dir, self.tls(name));
        s.api = loopback;
        s.listen = listen.then_some(loopback);
        for (peer, addr) in peers {
            s.peers.push(PeerConfig {
                name: NodeName::new(*peer)?,
                addr: addr.to_string(),
            });
        }
        Ok(s)
    }
}
