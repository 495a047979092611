//! A cuttable UDP relay: the network partition of `edgesync demo` and of the end-to-end
//! tests. It forwards datagrams between one client and one upstream address on loopback;
//! [`UdpRelay::cut`] drops everything both ways until [`UdpRelay::heal`]. To the nodes this is a
//! real partition: their processes and sockets are untouched.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::net::UdpSocket;

/// A UDP relay on loopback between one client and one upstream address; [`UdpRelay::cut`]
/// drops every datagram both ways until [`UdpRelay::heal`]. To the nodes this is a real network
/// partition: their processes and sockets are untouched.
pub struct UdpRelay {
    /// Where the client should send.
    pub addr: SocketAddr,
    cut: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl UdpRelay {
    /// Starts relaying to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<UdpRelay> {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let back = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        back.connect(upstream).await?;
        let addr = front.local_addr()?;
        let cut = Arc::new(AtomicBool::new(false));
        let c = cut.clone();
        let task = tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let (mut a, mut b) = (vec![0u8; 65_536], vec![0u8; 65_536]);
            loop {
                tokio::select! {
                    r = front.recv_from(&mut a) => if let Ok((n, from)) = r {
                        client = Some(from);
                        if !c.load(Ordering::SeqCst) {
                            let _ = back.send(&a[..n]).await;
                        }
                    },
                    r = back.recv(&mut b) => if let Ok(n) = r {
                        if let (Some(to), false) = (client, c.load(Ordering::SeqCst)) {
                            let _ = front.send_to(&b[..n], to).await;
                        }
                    },
                }
            }
        });
        Ok(UdpRelay { addr, cut, task })
    }

    /// Drops everything from now on.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Forwards again.
    pub fn heal(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for UdpRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}
