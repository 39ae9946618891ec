//! A TCP proxy in front of a real service, which a test can cut and restore
//! to play an outage of PostgreSQL, Redis or RabbitMQ for its own app only,
//! without disturbing the shared server other tests are using.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::copy_bidirectional;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The proxy; dropped, it stops accepting and closes its connections.
pub struct TcpProxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    cuts: watch::Sender<u64>,
    stalls: watch::Sender<u64>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let addr = listener.local_addr().expect("proxy addr");
        let up = Arc::new(AtomicBool::new(true));
        let (cuts, _) = watch::channel(0u64);
        let (stalls, _) = watch::channel(0u64);
        let accept = {
            let up = up.clone();
            let cuts = cuts.clone();
            let stalls = stalls.clone();
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !up.load(Ordering::SeqCst) {
                        drop(inbound); // refused, as far as the client can tell
                        continue;
                    }
                    let mut cut = cuts.subscribe();
                    let mut stall = stalls.subscribe();
                    tokio::spawn(async move {
                        let Ok(mut outbound) = TcpStream::connect(target).await else {
                            return;
                        };
                        let stalled = tokio::select! {
                            _ = copy_bidirectional(&mut inbound, &mut outbound) => false,
                            _ = cut.changed() => false,
                            _ = stall.changed() => true,
                        };
                        if stalled {
                            // Both sockets stay open and silent until the cut.
                            let _ = cut.changed().await;
                        }
                    });
                }
            })
        };
        TcpProxy {
            addr,
            up,
            cuts,
            stalls,
            accept,
        }
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The outage: open connections are closed, new ones are dropped at once.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    /// A service that stops reading and answering (RabbitMQ under a memory or
    /// disk alarm): open connections stay open but nothing is forwarded any
    /// more, until [`TcpProxy::cut`] closes them.
    pub fn stall(&self) {
        self.stalls.send_modify(|n| *n += 1);
    }

    /// The service is back.
    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
