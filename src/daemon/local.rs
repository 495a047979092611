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

    /// A fleet whose CA and certificates are already in `pki_dir` (made by `edgesync pki`).
    pub fn existing(pki_dir: &Path) -> LocalFleet {
        LocalFleet {
            pki_dir: pki_dir.to_path_buf(),
        }
    }

    /// The text of a configuration file (`edgesync run --config`) for node `name`: data in
    /// `data_dir`, the API on `api`, QUIC on `listen` if any, dialling `peers`; `extra` (say, a
    /// `[sync]` table) goes before the `[tls]` table.
    pub fn config_toml(
        &self,
        name: &str,
        data_dir: &Path,
        api: SocketAddr,
        listen: Option<SocketAddr>,
        peers: &[(&str, SocketAddr)],
        extra: &str,
    ) -> String {
        let data = data_dir.display();
        let mut cfg = format!("name = \"{name}\"\ndata_dir = \"{data}\"\napi = \"{api}\"\n");
        if let Some(l) = listen {
            cfg += &format!("listen = \"{l}\"\n");
        }
        cfg += extra;
        let tls = self.tls(name);
        cfg += &format!(
            "[tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
            tls.ca.display(),
            tls.cert.display(),
            tls.key.display()
        );
        if let Some(crl) = &tls.crl {
            cfg += &format!("crl = \"{}\"\n", crl.display());
        }
        for (n, a) in peers {
            cfg += &format!("[[peers]]\nname = \"{n}\"\naddr = \"{a}\"\n");
        }
        cfg
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
            crl: Some(self.pki_dir.join(crate::net::crl::CRL_FILE)).filter(|p| p.exists()),
        }
    }

    /// The core's trust for node `name` whose data is in `data_dir` (its certificate, and the
    /// authoring key there), under the default rules: for a node run without the daemon that
    /// must sync what it writes later.
    pub fn core_trust(&self, name: &str, data_dir: &Path) -> anyhow::Result<edgesync_proto::Trust> {
        let creds = crate::net::Credentials::load(&self.tls(name), &NodeName::new(name)?)?;
        Ok(crate::net::authorship::trust(
            &creds,
            data_dir,
            edgesync_proto::Rules::default(),
        )?)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::config::Settings;

    // A generated configuration file loads into the settings it describes.
    #[test]
    fn generated_config_loads() {
        let dir = tempfile::tempdir().unwrap();
        let fleet = LocalFleet::existing(&dir.path().join("pki"));
        let api: SocketAddr = "127.0.0.1:8500".parse().unwrap();
        let quic: SocketAddr = "127.0.0.1:7500".parse().unwrap();
        let peer: SocketAddr = "127.0.0.1:7501".parse().unwrap();
        let text = fleet.config_toml(
            "gw-1",
            &dir.path().join("data"),
            api,
            Some(quic),
            &[("cloud", peer)],
            "[sync]\nretry_cap_ms = 2000\n",
        );
        let path = dir.path().join("gw-1.toml");
        std::fs::write(&path, text).unwrap();
        let s = Settings::load(&path, &|_| None).unwrap();
        assert_eq!(
            (s.name.as_str(), s.api, s.listen),
            ("gw-1", api, Some(quic))
        );
        assert_eq!(s.peers[0].addr, peer.to_string());
        assert_eq!(s.retry.cap_ms, 2000);
        assert_eq!(s.tls, fleet.tls("gw-1"));
    }
}
