//! The transport on loopback with real certificates: a working handshake and frame exchange,
//! each kind of rejection with its distinct logged reason (while the accepting node keeps
//! serving others), and certificate rotation without a restart.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use edgesync::net::pki::{self, NodeSpec, Pem, Role};
use edgesync::net::{close, Credentials, Endpoint, LinkError, NetOptions, TlsFiles, ALPN};
use edgesync_proto::wire::{Close, Message};
use edgesync_proto::{CloseCode, NodeName};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration as TimeDuration, OffsetDateTime};
use tokio::sync::mpsc;

fn name(s: &str) -> NodeName {
    NodeName::new(s).unwrap()
}

/// A fleet CA in a temporary directory, issuing node certificates into it.
struct Fleet {
    dir: tempfile::TempDir,
}

impl Fleet {
    fn new() -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        pki::init(dir.path(), 30).unwrap();
        Fleet { dir }
    }

    fn ca(&self) -> Pem {
        pki::load_ca(self.dir.path()).unwrap()
    }

    fn files(&self, n: &str) -> TlsFiles {
        TlsFiles {
            ca: self.dir.path().join("ca.crt"),
            cert: self.dir.path().join(format!("{n}.crt")),
            key: self.dir.path().join(format!("{n}.key")),
            crl: Some(self.dir.path().join("crl.pem")),
        }
    }

    fn issue(&self, n: &str, role: Role) -> TlsFiles {
        let spec = NodeSpec::new(name(n), role, Some("site-a".into()), 10).unwrap();
        pki::issue(self.dir.path(), &spec).unwrap();
        self.files(n)
    }

    fn creds(&self, n: &str, role: Role) -> Arc<Credentials> {
        Credentials::load(&self.issue(n, role), &name(n)).unwrap()
    }
}

fn opts() -> NetOptions {
    NetOptions {
        handshake_timeout: Duration::from_secs(5),
        frame_bytes_max: 64 * 1024,
        ..NetOptions::default()
    }
}

/// A dialling endpoint for gateway gw-1 of `fleet`.
fn gateway(fleet: &Fleet) -> Endpoint {
    Endpoint::bind(
        loopback(),
        false,
        fleet.creds("gw-1", Role::Gateway),
        opts(),
    )
    .unwrap()
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// An accepting node that echoes every frame; reports each failure kind on `errors`.
fn echo_server(ep: Arc<Endpoint>, errors: mpsc::UnboundedSender<&'static str>) {
    tokio::spawn(async move {
        while let Some(inc) = ep.accept().await {
            let (ep, errors) = (ep.clone(), errors.clone());
            tokio::spawn(async move {
                let mut link = match ep.establish(inc).await {
                    Ok(l) => l,
                    Err(e) => {
                        let _ = errors.send(e.kind());
                        return;
                    }
                };
                loop {
                    match link.rx.next_frame().await {
                        Ok(Some(f)) => {
                            if link.tx.send(&f).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) | Err(LinkError::Closed(_)) => return,
                        Err(e) => {
                            link.fail(&e);
                            let _ = errors.send(e.kind());
                            return;
                        }
                    }
                }
            });
        }
    });
}

fn ping(text: &str) -> Vec<u8> {
    Message::Close(Close {
        code: CloseCode::Shutdown,
        reason: text.into(),
    })
    .to_frame()
}

/// Dials as `client`, sends one frame and expects it back.
async fn round_trip(client: &Endpoint, server: SocketAddr, expect: &str) -> Vec<u8> {
    let mut link = client.dial(server, &name(expect)).await.expect("dial");
    assert_eq!(link.peer.name, name(expect));
    let f = ping("hello");
    link.tx.send(&f).await.unwrap();
    let back = link.rx.next_frame().await.unwrap().expect("a frame");
    assert_eq!(back, f);
    let cert = link
        .conn
        .peer_identity()
        .unwrap()
        .downcast::<Vec<CertificateDer<'static>>>()
        .unwrap()[0]
        .to_vec();
    link.close(close::SHUTDOWN, "done");
    cert
}

/// A quinn client configuration built by hand, to present what a real node never would.
fn raw_client(roots_pem: &str, cert: Option<&Pem>, alpn: &[u8]) -> quinn::ClientConfig {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots);
    let mut cfg = match cert {
        None => b.with_no_client_auth(),
        Some(p) => b
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(p.cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(p.key.as_bytes()).unwrap(),
            )
            .unwrap(),
    };
    cfg.alpn_protocols = vec![alpn.to_vec()];
    quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(cfg).unwrap(),
    ))
}

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

async fn next_error(errors: &mut mpsc::UnboundedReceiver<&'static str>) -> &'static str {
    tokio::time::timeout(Duration::from_secs(10), errors.recv())
        .await
        .expect("the server reports the failure")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_frames_and_every_rejection() {
    let logs = Captured::default();
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_writer(logs.clone())
            .with_ansi(false)
            .finish(),
    )
    .expect("the only test here that installs a subscriber");
    let fleet = Fleet::new();
    let server = Arc::new(
        Endpoint::bind(loopback(), true, fleet.creds("cloud", Role::Cloud), opts()).unwrap(),
    );
    let addr = server.local_addr().unwrap();
    let (etx, mut errors) = mpsc::unbounded_channel();
    echo_server(server.clone(), etx);
    let good = gateway(&fleet);

    // A working handshake and frame exchange; the identity comes from the certificate.
    round_trip(&good, addr, "cloud").await;
    let mut link = good.dial(addr, &name("cloud")).await.unwrap();
    assert_eq!(link.peer.role, Role::Cloud);
    assert_eq!(link.peer.site.as_deref(), Some("site-a"));
    link.tx.send(&ping("x")).await.unwrap();
    assert!(link.rx.next_frame().await.unwrap().is_some());

    let ca = fleet.ca();
    let rogue = Fleet::new();
    let now = OffsetDateTime::now_utc();
    let expired = pki::make_node(
        &ca,
        &NodeSpec {
            name: name("gw-old"),
            role: Role::Gateway,
            site: None,
            not_before: now - TimeDuration::days(30),
            not_after: now - TimeDuration::days(1),
        },
    )
    .unwrap();
    let rogue_node = pki::make_node(
        &rogue.ca(),
        &NodeSpec::new(name("gw-1"), Role::Gateway, None, 10).unwrap(),
    )
    .unwrap();
    let self_signed = {
        let c = rcgen::generate_simple_self_signed(vec!["gw-1".to_string()]).unwrap();
        Pem {
            cert: c.cert.pem(),
            key: c.signing_key.serialize_pem(),
        }
    };
    let cases: Vec<(&str, quinn::ClientConfig, &str)> = vec![
        (
            "no client certificate",
            raw_client(&ca.cert, None, ALPN),
            "no-client-cert",
        ),
        (
            "rogue fleet CA",
            raw_client(&ca.cert, Some(&rogue_node), ALPN),
            "unknown-issuer",
        ),
        (
            "self-signed",
            raw_client(&ca.cert, Some(&self_signed), ALPN),
            "unknown-issuer",
        ),
        (
            "expired",
            raw_client(&ca.cert, Some(&expired), ALPN),
            "expired",
        ),
        (
            "wrong ALPN",
            good.credentials()
                .client_config_with_alpn(good.transport_config(), b"h3")
                .unwrap(),
            "alpn",
        ),
    ];
    for (what, cfg, kind) in cases {
        let r = good.dial_with(cfg, addr, &name("cloud")).await;
        let e = match r {
            Ok(mut l) => {
                // TLS 1.3 clients learn of a refused certificate only on first use.
                let _ = l.tx.send(&ping("x")).await;
                l.rx.next_frame().await.expect_err(what)
            }
            Err(e) => e,
        };
        assert_eq!(e.kind(), kind, "{what}: client sees {e}");
        assert_eq!(
            next_error(&mut errors).await,
            kind,
            "{what}: server reason; logs: {}",
            String::from_utf8_lossy(&logs.0.lock().unwrap())
        );
        round_trip(&good, addr, "cloud").await;
    }
    let rej = server.rejections();
    assert_eq!(rej.get("unknown-issuer"), Some(&2), "{rej:?}");
    for kind in ["no-client-cert", "expired", "alpn"] {
        assert_eq!(rej.get(kind), Some(&1), "{kind}: {rej:?}");
    }

    // A server whose certificate does not carry the name the dialler expects.
    let other = Arc::new(
        Endpoint::bind(loopback(), true, fleet.creds("gw-2", Role::Gateway), opts()).unwrap(),
    );
    let (otx, _orx) = mpsc::unbounded_channel();
    echo_server(other.clone(), otx);
    let e = good
        .dial(other.local_addr().unwrap(), &name("cloud"))
        .await
        .err()
        .expect("refused");
    assert_eq!(e.kind(), "name-mismatch", "{e}");
    round_trip(&good, other.local_addr().unwrap(), "gw-2").await;

    // An oversized frame is refused from its header, before the payload is allocated.
    let mut link = good.dial(addr, &name("cloud")).await.unwrap();
    link.tx
        .send(&(64u32 * 1024 + 1).to_be_bytes())
        .await
        .unwrap();
    assert_eq!(next_error(&mut errors).await, "frame-too-large");
    let e = link.rx.next_frame().await.expect_err("closed");
    assert_eq!(e.kind(), "frame-too-large", "{e}");
    round_trip(&good, addr, "cloud").await;

    // A stream that ends inside a frame. (Payloads are not decoded by the transport: the core
    // decodes each frame once; see `a_real_node_survives_hostile_frames_and_close_reasons`.)
    let mut link = good.dial(addr, &name("cloud")).await.unwrap();
    let mut partial = 12u32.to_be_bytes().to_vec();
    partial.extend([0xff; 5]);
    link.tx.send(&partial).await.unwrap();
    link.tx.finish();
    assert_eq!(next_error(&mut errors).await, "malformed");
    assert_eq!(
        link.rx.next_frame().await.expect_err("closed").kind(),
        "malformed"
    );
    round_trip(&good, addr, "cloud").await;

    // Every rejection was logged with its reason.
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    for kind in [
        "no-client-cert",
        "unknown-issuer",
        "expired",
        "alpn",
        "frame-too-large",
        "malformed",
    ] {
        assert!(
            text.contains(&format!("reason=\"{kind}\"")),
            "{kind} not logged in:\n{text}"
        );
    }
}

fn reissue(fleet: &Fleet, n: &str) {
    let spec = NodeSpec::new(name(n), Role::Cloud, None, 20).unwrap();
    pki::issue(fleet.dir.path(), &spec).unwrap();
}

fn copy_over(from: &Path, to: &Path) {
    std::fs::write(to, std::fs::read(from).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_without_restart() {
    let fleet = Fleet::new();
    let creds = fleet.creds("cloud", Role::Cloud);
    let server = Arc::new(Endpoint::bind(loopback(), true, creds.clone(), opts()).unwrap());
    let addr = server.local_addr().unwrap();
    let (etx, _errors) = mpsc::unbounded_channel();
    echo_server(server.clone(), etx);
    let client = gateway(&fleet);
    let first = round_trip(&client, addr, "cloud").await;
    assert!(!creds.reload_if_changed().unwrap(), "nothing changed yet");

    // Renewed on disk: picked up for new connections by the file watcher, even when the
    // renewal keeps the files' modification times (a file system with coarse timestamps).
    let reloader = creds.spawn_reloader(Duration::from_millis(50));
    let files = fleet.files("cloud");
    let mtimes: Vec<_> = [&files.cert, &files.key]
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().modified().unwrap())
        .collect();
    reissue(&fleet, "cloud");
    for (p, t) in [&files.cert, &files.key].iter().zip(mtimes) {
        let f = std::fs::OpenOptions::new().write(true).open(p).unwrap();
        f.set_modified(t).unwrap();
    }
    let mut second = first.clone();
    for _ in 0..100 {
        second = round_trip(&client, addr, "cloud").await;
        if second != first {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_ne!(second, first, "the renewed certificate is served");
    assert_eq!(second, creds.cert_der());
    reloader.abort();

    // A replacement for another node, or from another CA, is refused; the current one stays.
    let files = fleet.files("cloud");
    let other = fleet.issue("gw-9", Role::Gateway);
    copy_over(&other.cert, &files.cert);
    copy_over(&other.key, &files.key);
    let e = creds.reload().unwrap_err();
    assert!(e.to_string().contains("gw-9"), "{e}");
    let rogue = Fleet::new();
    let r = rogue.issue("cloud", Role::Cloud);
    copy_over(&r.cert, &files.cert);
    copy_over(&r.key, &files.key);
    let e = creds.reload().unwrap_err();
    assert!(e.to_string().contains("fleet CA"), "{e}");
    assert_eq!(round_trip(&client, addr, "cloud").await, second);
}

/// Revocation, on both sides of the handshake, without a restart: once the list names a
/// certificate and the credentials reload it, an accepting node refuses that client, a dialling
/// node refuses that server, each with the reason `revoked`, and others are not affected. A
/// list the fleet CA did not sign is refused and the one in force stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_certificates_are_refused_on_both_sides() {
    let fleet = Fleet::new();
    let cloud_creds = fleet.creds("cloud", Role::Cloud);
    let server = Arc::new(Endpoint::bind(loopback(), true, cloud_creds.clone(), opts()).unwrap());
    let addr = server.local_addr().unwrap();
    let (etx, mut errors) = mpsc::unbounded_channel();
    echo_server(server.clone(), etx);
    let gw1 = gateway(&fleet);
    let gw2_creds = fleet.creds("gw-2", Role::Gateway);
    let gw2 = Endpoint::bind(loopback(), false, gw2_creds.clone(), opts()).unwrap();
    round_trip(&gw1, addr, "cloud").await;
    round_trip(&gw2, addr, "cloud").await;
    let changes = cloud_creds.revocation_changes();

    // The accepting side: gw-2 revoked, gw-1 still served.
    edgesync::net::crl::revoke(
        fleet.dir.path(),
        &name("gw-2"),
        edgesync::net::crl::Reason::KeyCompromise,
    )
    .unwrap();
    assert!(
        cloud_creds.reload_if_changed().unwrap(),
        "the list changed on disk"
    );
    assert!(changes.has_changed().unwrap(), "watchers are told");
    let e = match gw2.dial(addr, &name("cloud")).await {
        Ok(mut l) => {
            // TLS 1.3 clients learn of a refused certificate only on first use.
            let _ = l.tx.send(&ping("x")).await;
            l.rx.next_frame().await.expect_err("refused")
        }
        Err(e) => e,
    };
    assert_eq!(e.kind(), "revoked", "{e}");
    assert_eq!(next_error(&mut errors).await, "revoked");
    assert_eq!(server.rejections().get("revoked"), Some(&1));
    round_trip(&gw1, addr, "cloud").await;

    // The dialling side: the cloud's certificate revoked, gw-1 refuses it once it reloads.
    edgesync::net::crl::revoke(
        fleet.dir.path(),
        &name("cloud"),
        edgesync::net::crl::Reason::Superseded,
    )
    .unwrap();
    round_trip(&gw1, addr, "cloud").await;
    gw1.credentials().reload().unwrap();
    let e = gw1.dial(addr, &name("cloud")).await.err().expect("refused");
    assert_eq!(e.kind(), "revoked", "{e}");

    // A list signed by another CA does not replace the one in force.
    let rogue = Fleet::new();
    let crl = fleet.dir.path().join("crl.pem");
    copy_over(&rogue.dir.path().join("crl.pem"), &crl);
    let e = gw1.credentials().reload().unwrap_err();
    assert!(e.to_string().contains("not signed by the fleet CA"), "{e}");
    let e = gw1
        .dial(addr, &name("cloud"))
        .await
        .err()
        .expect("still refused");
    assert_eq!(e.kind(), "revoked", "{e}");
}

#[test]
fn credentials_refuse_a_certificate_for_another_name() {
    let fleet = Fleet::new();
    let files = fleet.issue("gw-1", Role::Gateway);
    let e = Credentials::load(&files, &name("gw-2")).unwrap_err();
    assert!(e.to_string().contains("gw-1"), "{e}");
    let mut broken = files.clone();
    broken.key = files.cert.clone();
    assert!(Credentials::load(&broken, &name("gw-1")).is_err());
}

/// Panics on any thread of this process since `watch_panics` was called.
static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn watch_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        previous(info);
    }));
}

fn hello_from(node: &str) -> Vec<u8> {
    use edgesync_proto::wire::{Hello, MAGIC, PROTOCOL_VERSION};
    Message::Hello(Hello {
        magic: MAGIC,
        version_min: PROTOCOL_VERSION,
        version_max: PROTOCOL_VERSION,
        node: name(node),
        store_id: [9; 16],
        capabilities: 0,
        frame_bytes_max: 4 << 20,
    })
    .to_frame()
}

/// Closes the test's link, then stops the mesh and the node.
async fn stop(
    link: edgesync::net::Link,
    mesh: edgesync::mesh::Mesh,
    node: edgesync::node::DurableNode,
) {
    link.close(close::SHUTDOWN, "done");
    mesh.shutdown().await;
    tokio::task::spawn_blocking(move || node.shutdown())
        .await
        .unwrap();
}

/// Dials the node as gw-1 and gets its Hello: the node still serves.
async fn still_serves(peer: &Endpoint, addr: SocketAddr) -> edgesync::net::Link {
    let mut link = peer.dial(addr, &name("cloud")).await.unwrap();
    link.tx.send(&hello_from("gw-1")).await.unwrap();
    let first = link.rx.next_frame().await.unwrap().expect("a frame");
    let hello = Message::from_payload(&first[4..]);
    assert!(matches!(hello, Ok(Message::Hello(_))), "{hello:?}");
    link
}

/// A real node "cloud" (RocksDB in `data`, options tweaked by `tweak`) accepting links on
/// loopback: the node, its mesh and its QUIC address.
async fn real_cloud(
    fleet: &Fleet,
    data: &Path,
    tweak: impl FnOnce(&mut edgesync::node::NodeOptions),
) -> (
    edgesync::node::DurableNode,
    edgesync::mesh::Mesh,
    SocketAddr,
) {
    use edgesync::mesh::{Mesh, RetryPolicy};
    use edgesync::node::{DurableNode, NodeOptions};
    let creds = fleet.creds("cloud", Role::Cloud);
    let mut cfg = edgesync_proto::Config::new(name("cloud"));
    cfg.trust =
        edgesync::net::authorship::trust(&creds, data, edgesync_proto::Rules::default()).unwrap();
    let mut node_opts = NodeOptions::new(cfg, data);
    tweak(&mut node_opts);
    let node = tokio::task::spawn_blocking(move || DurableNode::start(node_opts))
        .await
        .unwrap()
        .unwrap();
    let server = Arc::new(Endpoint::bind(loopback(), true, creds, opts()).unwrap());
    let addr = server.local_addr().unwrap();
    let mesh = Mesh::start(node.handle(), server, vec![], RetryPolicy::default());
    (node, mesh, addr)
}

/// Waits until the mesh has seen `links` links from `peer` come up, and the last one be up
/// (`up`) or end.
async fn link_state(mesh: &edgesync::mesh::Mesh, peer: &str, links: u64, up: bool) {
    // Generous: under a loaded CI machine a flooded node takes a while to get there.
    for _ in 0..2400 {
        let done = mesh
            .status()
            .iter()
            .any(|p| p.name == peer && p.connects >= links && p.connected == up);
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("link {links} from {peer} did not reach connected = {up}");
}

async fn link_down(mesh: &edgesync::mesh::Mesh, peer: &str, links: u64) {
    link_state(mesh, peer, links, false).await
}

// A peer that ends its session with a close reason of multi-byte characters (255 bytes in a
// Close frame, 300 bytes in a QUIC close), or sends garbage after its Hello, only ends its own
// link: no task of the real node panics, garbage is refused with the malformed close code, and
// the node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_node_survives_hostile_frames_and_close_reasons() {
    watch_panics();
    let fleet = Fleet::new();
    let data = tempfile::tempdir().unwrap();
    let (node, mesh, addr) = real_cloud(&fleet, data.path(), |_| {}).await;
    let peer = gateway(&fleet);

    // A Close frame whose reason cuts at the QUIC reason limit inside a character.
    let euros = "€".repeat(85);
    let mut link = peer.dial(addr, &name("cloud")).await.unwrap();
    link.tx.send(&hello_from("gw-1")).await.unwrap();
    let close = Message::Close(Close {
        code: CloseCode::Shutdown,
        reason: euros.clone(),
    });
    link.tx.send(&close.to_frame()).await.unwrap();
    link_down(&mesh, "gw-1", 1).await;

    // A QUIC close with a 300-byte reason of multi-byte characters, after a refused frame.
    let mut link = peer.dial(addr, &name("cloud")).await.unwrap();
    link.tx.send(&hello_from("gw-1")).await.unwrap();
    link_state(&mesh, "gw-1", 2, true).await;
    link.close(close::MALFORMED, &"€".repeat(100));
    link_down(&mesh, "gw-1", 2).await;

    // Garbage after the Hello: the core refuses it and the connection closes as malformed.
    let mut link = peer.dial(addr, &name("cloud")).await.unwrap();
    link.tx.send(&hello_from("gw-1")).await.unwrap();
    let mut garbage = 12u32.to_be_bytes().to_vec();
    garbage.extend([0xff; 12]);
    link.tx.send(&garbage).await.unwrap();
    let code = loop {
        let frame = link.rx.next_frame().await.unwrap().expect("a Close frame");
        if let Ok(Message::Close(c)) = Message::from_payload(&frame[4..]) {
            break c.code;
        }
    };
    assert_eq!(code, CloseCode::Malformed);
    match link.conn.closed().await {
        quinn::ConnectionError::ApplicationClosed(a) => {
            assert_eq!(a.error_code, close::MALFORMED.into(), "{a:?}")
        }
        other => panic!("expected an application close, got {other:?}"),
    }
    link_down(&mesh, "gw-1", 3).await;
    // Counted by close code (what `/v1/status` and the metric show).
    let status = node.handle().status_async(vec![]).await.unwrap();
    assert_eq!(
        status.refused_sessions.get("malformed"),
        Some(&1),
        "{status:?}"
    );

    // The node still serves: a new session gets its Hello.
    let link = still_serves(&peer, addr).await;
    assert_eq!(
        PANICS.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "a task panicked"
    );
    stop(link, mesh, node).await;
}

// A peer that keeps sending batches but never reads what the node answers (an Ack per batch)
// is disconnected once the link's outbound queue reaches its byte bound, instead of growing
// the node's memory; the node keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_reads_is_disconnected_at_the_outbound_bound() {
    use edgesync_proto::wire::{Changes, DocChanges, Summary};
    let fleet = Fleet::new();
    let data = tempfile::tempdir().unwrap();
    let bound = |o: &mut edgesync::node::NodeOptions| o.link_outbound_bytes_max = 64 * 1024;
    let (node, mesh, addr) = real_cloud(&fleet, data.path(), bound).await;
    let peer = gateway(&fleet);
    let mut link = peer.dial(addr, &name("cloud")).await.unwrap();
    link.tx.send(&hello_from("gw-1")).await.unwrap();
    let summary = Message::Summary(Summary {
        entries: vec![],
        last: true,
    });
    link.tx.send(&summary.to_frame()).await.unwrap();
    // Each batch carries one change of each of 100 documents (duplicates after the first),
    // each signed by gw-1 as its author: its Ack lists 100 clocks, a few KB.
    let keys = tempfile::tempdir().unwrap();
    let signer = edgesync::net::authorship::trust(
        &fleet.creds("gw-1", Role::Gateway),
        keys.path(),
        edgesync_proto::Rules::default(),
    )
    .unwrap()
    .signer
    .unwrap();
    let na = edgesync_proto::Actor([0x5a; 16]);
    let statement = Message::Author(edgesync_proto::wire::AuthorStatement(signer.statement(&na)));
    link.tx.send(&statement.to_frame()).await.unwrap();
    let docs: Vec<DocChanges> = (0..100)
        .map(|i| {
            use automerge::transaction::Transactable;
            let doc = edgesync_proto::DocId::new(format!("site-a/flood/doc-{i:03}")).unwrap();
            let actor = edgesync_proto::id::doc_actor(na, &doc).to_automerge();
            let mut am = automerge::Automerge::new().with_actor(actor);
            let mut tx = am.transaction();
            tx.put(automerge::ROOT, "k", i as i64).unwrap();
            tx.commit();
            let change = am.get_last_local_change().unwrap();
            DocChanges {
                doc,
                signed: vec![edgesync_proto::wire::Signed {
                    change: 0,
                    author: 0,
                    sig: signer.sign(&change.hash().0),
                }],
                changes: vec![edgesync_proto::wire::ChangeBytes(
                    change.raw_bytes().to_vec(),
                )],
            }
        })
        .collect();
    // QUIC's stream window (about 1.25 MB) holds the first Acks; the bound the rest.
    for batch in 0..2000u64 {
        let frame = Message::Changes(Changes {
            batch,
            docs: docs.clone(),
        })
        .to_frame();
        if link.tx.send(&frame).await.is_err() {
            break; // the node closed the connection
        }
        let down = mesh
            .status()
            .iter()
            .any(|p| p.name == "gw-1" && p.connects == 1 && !p.connected);
        if down {
            break;
        }
    }
    link_down(&mesh, "gw-1", 1).await;
    let status = node.handle().status_async(vec![]).await.unwrap();
    assert!(status.sessions.is_empty(), "{:?}", status.sessions);
    // The node still serves: a new session gets its Hello.
    let link = still_serves(&peer, addr).await;
    stop(link, mesh, node).await;
}

// While the core thread is busy, a peer sending as fast as it can is held back by QUIC flow
// control: what the node holds of its frames stays within the link's inbound allowance instead
// of growing with what the peer sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_sender_is_held_back_while_the_core_is_busy() {
    use edgesync_proto::wire::{DocClock, Summary};
    use edgesync_proto::{DocId, Reading, VectorClock};
    let fleet = Fleet::new();
    let data = tempfile::tempdir().unwrap();
    let allowance = 256 * 1024;
    let set = |o: &mut edgesync::node::NodeOptions| o.link_inbound_bytes_max = allowance;
    let (node, mesh, addr) = real_cloud(&fleet, data.path(), set).await;
    let peer = gateway(&fleet);
    let mut link = peer.dial(addr, &name("cloud")).await.unwrap();
    link.tx.send(&hello_from("gw-1")).await.unwrap();
    // Summary frames naming 1,000 documents the node does not hold: cheap for the core.
    let entries: Vec<DocClock> = (0..1000)
        .map(|i| DocClock {
            doc: DocId::new(format!("flood/doc-{i:04}")).unwrap(),
            clock: VectorClock::new(),
        })
        .collect();
    let frame = Message::Summary(Summary {
        entries,
        last: false,
    })
    .to_frame();
    // One large ingest keeps the core thread busy meanwhile.
    let h = node.handle();
    let busy = tokio::task::spawn_blocking(move || {
        let readings: Vec<Reading> = (0..100_000)
            .map(|i| Reading::from_json(format!("r-{i}"), i, &serde_json::json!({"v": i})))
            .collect::<Result<_, _>>()
            .unwrap();
        h.ingest(DocId::new("site-a/busy").unwrap(), readings)
            .unwrap();
    });
    let sender = tokio::spawn(async move {
        for _ in 0..1000 {
            if link.tx.send(&frame).await.is_err() {
                break;
            }
        }
        link
    });
    let mut most = 0;
    while !busy.is_finished() {
        let held = mesh.status().iter().map(|p| p.inbound_queued_bytes).max();
        most = most.max(held.unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    busy.await.unwrap();
    assert!(most > 0, "frames waited for the busy core");
    assert!(
        most <= allowance,
        "{most} bytes held, allowance {allowance}"
    );
    let link = sender.await.unwrap();
    stop(link, mesh, node).await;
}
