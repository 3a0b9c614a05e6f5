//! The gRPC listener's accept loop: at most `max_connections` connections
//! at once (past it new ones are closed at once), TLS handshakes in their
//! own tasks under a deadline (a client that stalls its handshake holds
//! only its own slot, for at most that long), and the established streams
//! handed to tonic (`serve_with_incoming`).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tracing::{debug, warn};

/// Bounds of the accept loop.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Connections open at once.
    pub(crate) max_connections: usize,
    /// Bound on one TLS handshake.
    pub(crate) handshake_timeout: Duration,
}

/// A TCP connection holding one of the listener's connection slots until it
/// is dropped.
pub(crate) struct Counted {
    inner: TcpStream,
    _slot: OwnedSemaphorePermit,
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl Connected for Counted {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.inner.connect_info()
    }
}

/// Accepts until the returned stream is dropped; yields connections that
/// hold a slot.
fn accept_loop<T: Send + 'static>(
    listener: TcpListener,
    limits: Limits,
    mut establish: impl FnMut(Counted, mpsc::Sender<io::Result<T>>) + Send + 'static,
) -> ReceiverStream<io::Result<T>> {
    let (tx, rx) = mpsc::channel(64);
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    tokio::spawn(async move {
        let mut full_logged = false;
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                () = tx.closed() => return,
            };
            let (stream, from) = match accepted {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "gRPC accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                if !full_logged {
                    warn!(%from, max = limits.max_connections, "gRPC connection limit reached (grpc.max_connections); closing new connections until some end");
                    full_logged = true;
                }
                continue;
            };
            full_logged = false;
            let _ = stream.set_nodelay(true);
            establish(
                Counted {
                    inner: stream,
                    _slot: slot,
                },
                tx.clone(),
            );
        }
    });
    ReceiverStream::new(rx)
}

/// Plaintext connections (`grpc.insecure = true`).
pub(crate) fn plain(listener: TcpListener, limits: Limits) -> ReceiverStream<io::Result<Counted>> {
    accept_loop(listener, limits, |conn, tx| {
        // The channel is bounded; never block the accept loop on it.
        tokio::spawn(async move {
            let _ = tx.send(Ok(conn)).await;
        });
    })
}

/// Mutual-TLS connections; handshakes that fail or stall are dropped here
/// (logged at debug: anyone who can reach the port can cause them).
pub(crate) fn tls(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    limits: Limits,
) -> ReceiverStream<io::Result<TlsStream<Counted>>> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    accept_loop(listener, limits, move |conn, tx| {
        let acceptor = acceptor.clone();
        let from = conn.inner.peer_addr().ok();
        tokio::spawn(async move {
            match tokio::time::timeout(limits.handshake_timeout, acceptor.accept(conn)).await {
                Ok(Ok(stream)) => {
                    let _ = tx.send(Ok(stream)).await;
                }
                Ok(Err(e)) => {
                    let why = e
                        .get_ref()
                        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                        .map_or_else(|| e.to_string(), super::explain);
                    debug!(?from, error = %why, "gRPC TLS handshake refused");
                }
                Err(_) => {
                    debug!(?from, timeout = ?limits.handshake_timeout, "gRPC TLS handshake timed out")
                }
            }
        });
    })
}
