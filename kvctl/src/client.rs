//! Reaching the cluster: the endpoints are tried in order until one answers; a node that is
//! down, or answers UNAVAILABLE, makes the call go to the next one.

use kv_proto::kv::cluster_client::ClusterClient;
use kv_proto::kv::kv_client::KvClient;
use std::path::PathBuf;
use std::time::Duration;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

/// How to reach the cluster.
#[derive(Clone, Debug)]
pub struct Connection {
    /// host:port of nodes, tried in order.
    pub endpoints: Vec<String>,
    /// The CA that signed the servers' certificates: TLS when set.
    pub cacert: Option<PathBuf>,
    /// This client's certificate and key, for servers that require one.
    pub cert: Option<PathBuf>,
    /// The key of `cert`.
    pub key: Option<PathBuf>,
    /// How long one call may take.
    pub timeout: Duration,
}

/// Why a call failed: the last status, or why no endpoint could be reached.
#[derive(Debug)]
pub enum CallError {
    /// The server answered with this status.
    Status(Status),
    /// No endpoint could be reached.
    Unreachable(String),
    /// A local problem (files, settings).
    Local(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Status(status) => write!(f, "{:?}: {}", status.code(), status.message()),
            CallError::Unreachable(reason) => write!(f, "no endpoint reachable: {reason}"),
            CallError::Local(reason) => f.write_str(reason),
        }
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, CallError> {
    std::fs::read(path).map_err(|e| CallError::Local(format!("{}: {e}", path.display())))
}

impl Connection {
    fn tls(&self) -> Result<Option<ClientTlsConfig>, CallError> {
        let Some(ca) = &self.cacert else {
            if self.cert.is_some() {
                return Err(CallError::Local("--cert needs --cacert (TLS)".into()));
            }
            return Ok(None);
        };
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?))
            }
            (None, None) => {}
            _ => return Err(CallError::Local("--cert and --key go together".into())),
        }
        Ok(Some(tls))
    }

    /// A connection to `endpoint`.
    pub async fn channel(&self, endpoint: &str) -> Result<Channel, String> {
        let tls = self.tls().map_err(|e| e.to_string())?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut builder = Endpoint::from_shared(format!("{scheme}://{endpoint}"))
            .map_err(|e| format!("{endpoint}: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(self.timeout);
        if let Some(tls) = tls {
            let host = endpoint.rsplit_once(':').map_or(endpoint, |(host, _)| host);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            builder = builder
                .tls_config(tls.domain_name(host))
                .map_err(|e| format!("{endpoint}: {e}"))?;
        }
        builder.connect().await.map_err(|e| format!("{endpoint}: {e}"))
    }

    /// Runs `call` against each endpoint in turn until one gives an answer other than
    /// UNAVAILABLE (or a connection failure).
    pub async fn call<T, F, Fut>(&self, mut call: F) -> Result<T, CallError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, Status>>,
    {
        self.tls()?; // file problems are reported as such, not as unreachable endpoints
        let mut last = CallError::Unreachable("no endpoint given".into());
        for endpoint in &self.endpoints {
            let channel = match self.channel(endpoint).await {
                Ok(channel) => channel,
                Err(reason) => {
                    last = CallError::Unreachable(reason);
                    continue;
                }
            };
            match call(channel).await {
                Ok(answer) => return Ok(answer),
                Err(status) if status.code() == Code::Unavailable => {
                    last = CallError::Status(status)
                }
                Err(status)
                    if matches!(status.code(), Code::Cancelled | Code::Unknown)
                        && self.cert.is_none()
                        && self.cacert.is_some() =>
                {
                    // A TLS 1.3 server that wants a client certificate refuses after the
                    // handshake, which reaches the client as a cancelled call.
                    let hint = "the connection was closed: the cluster may require a client \
                                certificate (--cert and --key)";
                    return Err(CallError::Local(format!("{endpoint}: {hint}")));
                }
                Err(status) => return Err(CallError::Status(status)),
            }
        }
        Err(last)
    }

    /// Sends `request` through `call` to each endpoint in turn, as [`Connection::call`] does,
    /// and gives the response's message.
    pub async fn send<Q, T, F, Fut>(&self, request: Q, call: F) -> Result<T, CallError>
    where
        Q: Clone,
        F: Fn(Channel, Q) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.call(|channel| {
            let response = call(channel, request.clone());
            async move { response.await.map(tonic::Response::into_inner) }
        })
        .await
    }

    /// A KV client on `channel`.
    pub fn kv(channel: Channel) -> KvClient<Channel> {
        KvClient::new(channel)
    }

    /// A Cluster client on `channel`.
    pub fn cluster(channel: Channel) -> ClusterClient<Channel> {
        ClusterClient::new(channel)
    }
}

/// The session of a one-off write (kvctl makes one per run): a random client id and
/// sequence 1. Sent again to the next endpoint after a failure, the write still applies at
/// most once, and the answer is the first copy's result.
pub fn one_write_session() -> kv_proto::kv::WriteSession {
    kv_proto::kv::WriteSession {
        client_id: fastrand::u64(1..=kv_server::node::CLIENT_SESSION_ID_MAX),
        sequence: 1,
        acked_below: 1,
        opening: true,
    }
}

#[cfg(test)]
mod tests {
    /// Client ids above the maximum are the nodes' own, and refused from clients.
    #[test]
    fn one_write_sessions_use_client_ids_a_server_accepts() {
        for _ in 0..10_000 {
            let session = super::one_write_session();
            assert!((1..=kv_server::node::CLIENT_SESSION_ID_MAX).contains(&session.client_id));
            assert_eq!((session.sequence, session.acked_below, session.opening), (1, 1, true));
        }
    }
}
