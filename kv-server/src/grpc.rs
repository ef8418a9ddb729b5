//! Serving the client API: TLS, HTTP/2 (hyper) and a dispatch on the gRPC service name to the
//! services tonic generates, with no router or middleware stack between them.
//!
//! tonic's own server routes each request through axum (path matching, a boxed body and
//! extensions per request) and a stack of optional tower layers (timeouts, concurrency
//! limits, load shedding) that this server does not use. Every request pays for them. Here a
//! connection's requests go from hyper to the service the path names in one step:
//! `/kv.v1.KV/Set` to the KV service, and so on.
//!
//! What tonic's server did that this one keeps doing:
//! - a request carries the connection's facts as extensions (`TcpConnectInfo`, or
//!   `TlsConnectInfo` with the client's certificates), so `Request::peer_certs` and
//!   `Request::remote_addr` work in the services;
//! - a TLS handshake runs in the connection's own task, so a slow client holds up no one
//!   else;
//! - stopping closes the listener, asks every connection to finish (HTTP/2 GOAWAY: calls in
//!   flight complete, new ones are refused), and returns once all have closed;
//! - an unknown service or method gets gRPC's UNIMPLEMENTED;
//! - HTTP/2 only (ALPN `h2` with TLS), no bound on a connection's concurrent calls unless
//!   `--max-concurrent-streams` sets one.
//!
//! What it does differently:
//! - a handshake must end within [`HANDSHAKE_TIMEOUT`], and a stop waits at most
//!   [`Serving::drain`] for a connection's calls (tonic waited without bound);
//! - hyper's default limits on reset streams apply (tonic lifted one of them);
//! - a client's `grpc-timeout` header is not enforced here: the client ends the call at its
//!   deadline (a stream reset, which drops the handler), and the server's own
//!   `--request-timeout-ms` bounds every write and read.

use crate::connections::CountedStream;
use crate::metrics::{CountedAnswer, Metrics};
use crate::service::Service;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use kv_proto::kv::cluster_server::ClusterServer;
use kv_proto::kv::kv_server::KvServer;
use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_stream::{Stream, StreamExt};
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::server::Connected;
use tower::Service as _;

/// How long a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A response on its way, as every tonic-generated service returns it.
type Answer = tonic::codegen::BoxFuture<http::Response<Body>, Infallible>;

/// A gRPC service besides the two of the API (health, reflection), boxed.
pub type OtherService =
    tower::util::BoxCloneSyncService<http::Request<Incoming>, http::Response<Body>, Infallible>;

/// The services a server offers. The API's two are held as they are (the hot path: no box
/// to clone per request); others are boxed.
#[derive(Clone)]
pub struct Services {
    kv: KvServer<Service>,
    cluster: ClusterServer<Service>,
    /// By service name (`grpc.health.v1.Health`).
    others: Vec<(&'static str, OtherService)>,
}

impl Services {
    /// The API's services, served by `service`.
    pub fn new(service: Service) -> Services {
        Services {
            kv: KvServer::new(service.clone()),
            cluster: ClusterServer::new(service),
            others: Vec::new(),
        }
    }

    /// Adds `service`, reached at `/{S::NAME}/{method}`.
    pub fn with<S>(mut self, service: S) -> Services
    where
        S: NamedService
            + tower::Service<
                http::Request<Incoming>,
                Response = http::Response<Body>,
                Error = Infallible,
            > + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.others.push((S::NAME, OtherService::new(service)));
        self
    }

    /// Calls the service `request`'s path (`/package.Service/Method`) names.
    fn call(&self, request: http::Request<Incoming>) -> Answer {
        let path = request.uri().path();
        if under(path, KvServer::<Service>::NAME).is_some() {
            return self.kv.clone().call(request);
        }
        if under(path, ClusterServer::<Service>::NAME).is_some() {
            return self.cluster.clone().call(request);
        }
        match self.others.iter().find(|(name, _)| under(path, name).is_some()) {
            Some((_, service)) => service.clone().call(request),
            None => {
                let status = tonic::Status::unimplemented(format!("no such service: {path}"));
                Box::pin(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

/// The method of `path` if it is `/{service}/{method}`.
fn under<'a>(path: &'a str, service: &str) -> Option<&'a str> {
    path.strip_prefix('/')?.strip_prefix(service)?.strip_prefix('/')
}

/// One connection's view of the services: it answers a request from the service its path
/// names, with the connection's facts added to the request, and counts the answer.
#[derive(Clone)]
struct Dispatch<I> {
    services: Arc<Services>,
    metrics: Arc<Metrics>,
    connect_info: I,
}

impl<I: Clone + Send + Sync + 'static> tower::Service<http::Request<Incoming>> for Dispatch<I> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = CountedAnswer<Answer>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<Incoming>) -> CountedAnswer<Answer> {
        request.extensions_mut().insert(self.connect_info.clone());
        let uri = request.uri().clone(); // shares the request's bytes, no copy
        CountedAnswer::new(self.services.call(request), uri, self.metrics.clone())
    }
}

/// How the server runs: its TLS, its services, how requests are counted, and how long a
/// stop waits for the calls in flight.
pub struct Serving {
    /// The client TLS, if the API is served over TLS.
    pub tls: Option<TlsAcceptor>,
    /// The services.
    pub services: Services,
    /// Where each request is counted.
    pub metrics: Arc<Metrics>,
    /// How long a connection may take, once asked to stop, to finish its calls; it is
    /// closed then. Without a bound, a client that never reads the end of a stream (or
    /// never speaks at all) would keep the node from stopping.
    pub drain: Duration,
    /// The most calls a connection may have open at once; `None`: no bound.
    pub streams_max: Option<u32>,
}

/// Serves on the connections `incoming` yields until `stop` completes. Then it closes the
/// listener (new clients are refused at once and try another node), asks every connection to
/// finish its calls, and returns once all have closed, each within `serving.drain`.
pub async fn serve(
    incoming: impl Stream<Item = std::io::Result<CountedStream>>,
    serving: Serving,
    stop: impl Future<Output = ()>,
) {
    let Serving { tls, services, metrics, drain, streams_max } = serving;
    let services = Arc::new(services);
    // Each connection holds a receiver; a change asks it to stop; all dropped: all closed.
    let (stopping, connections) = watch::channel(());
    {
        let mut incoming = pin!(incoming); // dropped at the end of this block: the listener
        let mut stop = pin!(stop);
        loop {
            let accepted = tokio::select! {
                () = &mut stop => break,
                accepted = incoming.next() => accepted,
            };
            match accepted {
                Some(Ok(stream)) => {
                    let connection = Connection {
                        services: services.clone(),
                        metrics: metrics.clone(),
                        stopping: connections.clone(),
                        drain,
                        streams_max,
                    };
                    tokio::spawn(connection.run(stream, tls.clone()));
                }
                Some(Err(error)) => tokio::select! {
                    () = &mut stop => break,
                    () = refused(&error) => {}
                },
                None => break,
            }
        }
    }
    drop(connections);
    let _ = stopping.send(());
    stopping.closed().await;
}

/// Logs an accept that failed. A client that gave up before it was accepted is routine;
/// anything else (no file descriptors left) is worth a warning, and a pause keeps a lasting
/// error from spinning.
async fn refused(error: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionReset};
    if matches!(error.kind(), ConnectionAborted | ConnectionReset) {
        tracing::debug!("a client left before its connection was accepted: {error}");
    } else {
        tracing::warn!("accepting a client connection: {error}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One client connection's task.
struct Connection {
    services: Arc<Services>,
    metrics: Arc<Metrics>,
    stopping: watch::Receiver<()>,
    drain: Duration,
    streams_max: Option<u32>,
}

impl Connection {
    async fn run(mut self, stream: CountedStream, tls: Option<TlsAcceptor>) {
        let Some(acceptor) = tls else {
            let info = stream.connect_info();
            return self.serve_http2(stream, info).await;
        };
        let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream));
        let stream = tokio::select! {
            _ = self.stopping.changed() => return,
            done = handshake => match done {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!("a client's TLS handshake failed: {error}");
                    return;
                }
                Err(_) => {
                    tracing::debug!("a client's TLS handshake took over {HANDSHAKE_TIMEOUT:?}");
                    return;
                }
            },
        };
        let info = stream.connect_info();
        self.serve_http2(stream, info).await;
    }

    async fn serve_http2<S, I>(mut self, stream: S, connect_info: I)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        I: Clone + Send + Sync + 'static,
    {
        let dispatch = Dispatch {
            services: self.services.clone(),
            metrics: self.metrics.clone(),
            connect_info,
        };
        let service = hyper_util::service::TowerToHyperService::new(dispatch);
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        // By default no bound on a connection's concurrent calls, as with tonic's server and
        // etcd's (hyper's own default is 200): a client multiplexing many callers over one
        // connection, as `kvctl bench` does, is not throttled. hyper's limits on reset
        // streams stay. No `date` header on responses: gRPC has no use for it (grpc-go's
        // server, etcd's, sends none), and each one costs both ends a header to encode and
        // decode.
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(self.streams_max)
            .auto_date_header(false);
        let mut connection = pin!(builder.serve_connection(TokioIo::new(stream), service));
        tokio::select! {
            served = connection.as_mut() => return log_end(served),
            _ = self.stopping.changed() => {}
        }
        connection.as_mut().graceful_shutdown();
        match tokio::time::timeout(self.drain, connection).await {
            Ok(served) => log_end(served),
            Err(_) => tracing::info!(
                "closing a client connection whose calls did not end within {:?} of the stop",
                self.drain
            ),
        }
    }
}

fn log_end(served: Result<(), hyper::Error>) {
    if let Err(error) = served {
        tracing::debug!("a client connection ended: {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::under;

    #[test]
    fn a_path_is_under_a_service_only_with_the_whole_name_and_a_method() {
        assert_eq!(under("/kv.v1.KV/Set", "kv.v1.KV"), Some("Set"));
        assert_eq!(under("/kv.v1.KVX/Set", "kv.v1.KV"), None);
        assert_eq!(under("/kv.v1.Cluster/Status", "kv.v1.KV"), None);
        assert_eq!(under("kv.v1.KV/Set", "kv.v1.KV"), None);
    }
}
