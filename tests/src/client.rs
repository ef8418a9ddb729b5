//! The clients: each is a process of the history, bound to one node, running one operation
//! at a time through the public gRPC API and recording an invoke before each call and its
//! completion after. An answer that does not say whether the write happened (a timeout, a
//! lost connection, a node stopping mid-call) is recorded as `info`, and the client goes on
//! under a new process id, as Jepsen's clients do: the old operation stays open forever.

use crate::history::{write_event, Event, EventType, Function};
use kv_proto::kv::kv_client::KvClient;
use kv_proto::kv::{
    CompareAndSetRequest, DeleteRequest, GetRequest, ListRequest, ReadConsistency, SetRequest,
};
use serde_json::{json, Value};
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Status};

/// Writes the history file, one event per line, in the order events happen.
#[derive(Clone)]
pub struct Recorder {
    out: Arc<Mutex<BufWriter<File>>>,
    start: Instant,
}

impl Recorder {
    /// Records into a new file at `path`; times count from now.
    pub fn create(path: &Path) -> Result<Recorder, String> {
        let file = File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Recorder { out: Arc::new(Mutex::new(BufWriter::new(file))), start: Instant::now() })
    }

    /// Nanoseconds since the recording started.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    /// Records one event, stamped now. The time is taken under the lock, so the file's
    /// order is the events' order.
    pub fn record(&self, process: u64, kind: EventType, f: Function, key: &str, value: Value) {
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        let event = Event { process, kind, f, key: key.to_string(), value, time: self.now() };
        if let Err(error) = write_event(&mut *out, &event) {
            panic!("the history file cannot be written: {error}");
        }
    }

    /// Flushes the file.
    pub fn flush(&self) -> Result<(), String> {
        use std::io::Write;
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        out.flush().map_err(|e| format!("the history file: {e}"))
    }
}

/// An operation to run. Every `value` written is used by no other write.
#[allow(missing_docs)] // the fields are the request's
#[derive(Clone, Debug)]
pub enum Op {
    /// A linearizable read.
    Get { key: String },
    /// A write.
    Set { key: String, value: String },
    /// A compare-and-set (`expected` `None`: only if absent).
    Cas { key: String, expected: Option<String>, value: String },
    /// A delete.
    Delete { key: String },
    /// A linearizable list of a prefix.
    List { prefix: String },
}

/// How an operation came out.
#[derive(Clone, Debug, PartialEq)]
pub enum Completion {
    /// It happened, with this result (the history's `value`).
    Ok(Value),
    /// It surely did not happen.
    Fail,
    /// Unknown.
    Info,
}

/// A channel to `address` with the harness's client certificate (made lazily: a node that is
/// down fails the calls, not the client).
pub fn channel(address: std::net::SocketAddr, certs: &Path) -> Result<Channel, String> {
    let read = |file: &str| {
        std::fs::read(certs.join(file)).map_err(|e| format!("{}: {e}", certs.join(file).display()))
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")?))
        .identity(Identity::from_pem(read("client-jepsen.pem")?, read("client-jepsen-key.pem")?))
        .domain_name("localhost");
    let endpoint = Endpoint::from_shared(format!("https://{address}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(1));
    Ok(endpoint.connect_lazy())
}

/// How long one call may take before its outcome is recorded as unknown.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// Runs `op` through `client`, recording it as `process`; returns how it came out.
pub async fn run(
    client: &mut KvClient<Channel>,
    recorder: &Recorder,
    process: u64,
    op: &Op,
) -> Completion {
    let (f, key, args) = describe(op);
    recorder.record(process, EventType::Invoke, f, &key, args.clone());
    let completion = match tokio::time::timeout(CALL_TIMEOUT, call(client, op)).await {
        Ok(Ok(completion)) => completion,
        Ok(Err(status)) => judge(f, &status),
        Err(_) => Completion::Info,
    };
    let (kind, value) = match &completion {
        Completion::Ok(value) => (EventType::Ok, value.clone()),
        Completion::Fail => (EventType::Fail, args),
        Completion::Info => (EventType::Info, args),
    };
    recorder.record(process, kind, f, &key, value);
    completion
}

/// The history's function, key and invoke value of `op`.
fn describe(op: &Op) -> (Function, String, Value) {
    match op {
        Op::Get { key } => (Function::Get, key.clone(), Value::Null),
        Op::Set { key, value } => (Function::Set, key.clone(), json!(value)),
        Op::Cas { key, expected, value } => (Function::Cas, key.clone(), json!([expected, value])),
        Op::Delete { key } => (Function::Delete, key.clone(), Value::Null),
        Op::List { prefix } => (Function::List, prefix.clone(), Value::Null),
    }
}

/// What an error status says about the operation. Reads change nothing, so a read that
/// failed in any way is a `fail`. A write is a `fail` only when it never reached a node, or
/// the node said it never proposed it (no leader known, overloaded) or refused it as bad
/// input; anything else (a timeout, a connection lost mid-call, a stopping node) may have
/// let it happen.
fn judge(f: Function, status: &Status) -> Completion {
    if matches!(f, Function::Get | Function::List) {
        return Completion::Fail;
    }
    let message = status.message();
    let never_proposed = status.code() == Code::Unavailable
        && (message.contains("no leader is known")
            || message.contains("overloaded")
            // The connection was never made, so the request was never sent.
            || message.contains("error trying to connect")
            || message.contains("tcp connect error"));
    if never_proposed || status.code() == Code::InvalidArgument {
        Completion::Fail
    } else {
        Completion::Info
    }
}

fn text(bytes: &[u8]) -> Value {
    json!(String::from_utf8_lossy(bytes))
}

async fn call(client: &mut KvClient<Channel>, op: &Op) -> Result<Completion, Status> {
    let linearizable = ReadConsistency::Linearizable as i32;
    Ok(match op {
        Op::Get { key } => {
            let request = GetRequest { key: key.clone().into(), consistency: linearizable };
            let got = client.get(request).await?.into_inner();
            Completion::Ok(if got.found { text(&got.value) } else { Value::Null })
        }
        Op::Set { key, value } => {
            let request =
                SetRequest { key: key.clone().into(), value: value.clone().into(), session: None };
            client.set(request).await?;
            Completion::Ok(json!(value))
        }
        Op::Cas { key, expected, value } => {
            let request = CompareAndSetRequest {
                key: key.clone().into(),
                expected: expected.clone().map(Into::into),
                value: value.clone().into(),
                session: None,
            };
            let answer = client.compare_and_set(request).await?.into_inner();
            match answer.succeeded {
                true => Completion::Ok(json!([expected, value])),
                false => Completion::Fail,
            }
        }
        Op::Delete { key } => {
            let request = DeleteRequest { key: key.clone().into(), session: None };
            Completion::Ok(json!(client.delete(request).await?.into_inner().deleted))
        }
        Op::List { prefix } => {
            let request = ListRequest {
                prefix: prefix.clone().into(),
                limit: 0,
                start_after: Default::default(),
                consistency: linearizable,
            };
            let mut stream = client.list(request).await?.into_inner();
            let mut keys = Vec::new();
            while let Some(item) = stream.message().await? {
                keys.push(text(&item.key));
            }
            Completion::Ok(Value::Array(keys))
        }
    })
}
