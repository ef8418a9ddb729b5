//! The client listener, counting open connections into `kv_grpc_client_connections`: each
//! accepted TCP stream carries a guard that counts it until the stream is dropped (closed by
//! either side, or at shutdown).

use crate::metrics::Metrics;
use prometheus_client::metrics::gauge::Gauge;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

/// A client connection, counted while it lives.
pub struct CountedStream {
    stream: TcpStream,
    open: Gauge,
}

impl CountedStream {
    pub(crate) fn new(stream: TcpStream, open: Gauge) -> CountedStream {
        open.inc();
        CountedStream { stream, open }
    }
}

impl Drop for CountedStream {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Binds `address` for clients (no Nagle delay: answers are small and latency matters);
/// each accepted connection is counted in `metrics`.
pub fn incoming(
    address: SocketAddr,
    metrics: &Arc<Metrics>,
) -> io::Result<impl Stream<Item = io::Result<CountedStream>>> {
    let open = metrics.client_connections.clone();
    let accepted = TcpIncoming::bind(address)?.with_nodelay(Some(true));
    Ok(accepted.map(move |stream| stream.map(|stream| CountedStream::new(stream, open.clone()))))
}

impl Connected for CountedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for CountedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(context, buffer)
    }
}

impl AsyncWrite for CountedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(context, bytes)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffers: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(context, buffers)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each accepted connection counts once while it lives, and no longer once dropped.
    #[tokio::test]
    async fn a_connection_counts_while_it_lives() {
        let metrics = Arc::new(Metrics::new());
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = probe.local_addr().unwrap();
        drop(probe);
        let mut accepted = Box::pin(incoming(address, &metrics).unwrap());
        let mut clients = Vec::new();
        let mut streams = Vec::new();
        for open in 1..=3 {
            clients.push(TcpStream::connect(address).await.unwrap());
            streams.push(accepted.next().await.unwrap().unwrap());
            assert_eq!(metrics.client_connections.get(), open);
        }
        streams.remove(0);
        assert_eq!(metrics.client_connections.get(), 2);
        streams.clear();
        assert_eq!(metrics.client_connections.get(), 0);
    }
}
