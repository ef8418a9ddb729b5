//! The gRPC services of `proto/kv/v1/kv.proto`: requests are checked here, then handed to
//! the node; its answers become responses or status codes (docs/api.md).

use crate::auth::{Authorizer, Permission};
use crate::metrics::{observe, Metrics, OutcomeLabel};
use crate::node::{
    role_name, ConfChangeRefused, NodeHandle, NodeStatus, ReadError, WriteError,
    CLIENT_SESSION_ID_MAX,
};
use bytes::Bytes;
use kv_fsm::WriteResult;
use kv_proto::kv::cluster_server::Cluster;
use kv_proto::kv::command::Op;
use kv_proto::kv::kv_server::Kv;
use kv_proto::kv::{self as api, ReadConsistency, WriteSession};
use raft_core::{ConfChange, NodeId, Role};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// The largest key, in bytes.
pub const KEY_BYTES_MAX: usize = kv_fsm::snapshot::KEY_BYTES_MAX;

/// A member as configured.
#[derive(Clone, Debug)]
pub struct MemberInfo {
    /// Its id.
    pub id: NodeId,
    /// Its name.
    pub name: String,
    /// Its advertised peer address.
    pub peer_address: String,
    /// Its advertised client address, if known here.
    pub client_address: String,
}

/// What both services share.
#[derive(Clone)]
pub struct Service {
    node: NodeHandle,
    members: Arc<Vec<MemberInfo>>,
    value_bytes_max: usize,
    metrics: Arc<Metrics>,
    /// The access policy (`--auth-policy-file`); everything is allowed without one.
    auth: Option<Arc<Authorizer>>,
    /// Permits for backups streamed at once.
    backups: Arc<tokio::sync::Semaphore>,
    /// The planted bug of `--unsafe-local-reads`: every read is served locally.
    unsafe_local_reads: bool,
}

/// The answer to a write whose result is of another kind of write: only a client that sent
/// two different writes under one session and sequence gets it (the first one's result is
/// what the session holds).
fn answered_another_kind(result: WriteResult) -> Status {
    Status::invalid_argument(format!(
        "this session and sequence were first used for another write (its result: \
         {result:?}); a sequence must not be reused for a different write"
    ))
}

impl Service {
    /// Serves `node`, whose members are `members`, counting into `metrics`.
    pub fn new(
        node: NodeHandle,
        members: Vec<MemberInfo>,
        value_bytes_max: usize,
        metrics: Arc<Metrics>,
    ) -> Service {
        let members = Arc::new(members);
        let backups = Arc::new(tokio::sync::Semaphore::new(crate::backup::BACKUPS_MAX));
        Service {
            node,
            members,
            value_bytes_max,
            metrics,
            auth: None,
            backups,
            unsafe_local_reads: false,
        }
    }

    /// Checks every call against `auth` before it reaches the node.
    pub fn with_auth(self, auth: Option<Arc<Authorizer>>) -> Service {
        Service { auth, ..self }
    }

    /// Whether the client of `request` may do what `permission` names (always, without a
    /// policy).
    fn allow<T>(&self, request: &Request<T>, permissions: &[Permission<'_>]) -> Result<(), Status> {
        match &self.auth {
            Some(auth) => auth.check(request, permissions),
            None => Ok(()),
        }
    }

    /// Plants the bug of `--unsafe-local-reads` (for the test harness): linearizable reads
    /// are served from local state, without ReadIndex.
    pub fn with_unsafe_local_reads(self, unsafe_local_reads: bool) -> Service {
        Service { unsafe_local_reads, ..self }
    }

    fn check_key(key: &[u8]) -> Result<(), Status> {
        if key.is_empty() {
            return Err(Status::invalid_argument("the key is empty"));
        }
        if key.len() > KEY_BYTES_MAX {
            return Err(Status::invalid_argument(format!(
                "the key has {} bytes; at most {KEY_BYTES_MAX} are allowed",
                key.len()
            )));
        }
        Ok(())
    }

    fn check_value(&self, value: &[u8]) -> Result<(), Status> {
        if value.len() > self.value_bytes_max {
            return Err(Status::invalid_argument(format!(
                "the value has {} bytes; at most {} are allowed (--value-bytes-max)",
                value.len(),
                self.value_bytes_max
            )));
        }
        Ok(())
    }

    /// Checks a client's write session: a client id and a sequence from 1, and no claim to
    /// hold the answer of this very write.
    fn check_session(session: Option<&WriteSession>) -> Result<(), Status> {
        let Some(session) = session else { return Ok(()) };
        if session.client_id == 0 || session.client_id > CLIENT_SESSION_ID_MAX {
            return Err(Status::invalid_argument(format!(
                "the session's client_id must be from 1 to {CLIENT_SESSION_ID_MAX} (2^63 - 1)"
            )));
        }
        if session.sequence == 0 {
            return Err(Status::invalid_argument("the session's sequence starts at 1, not 0"));
        }
        if session.acked_below > session.sequence {
            return Err(Status::invalid_argument(format!(
                "the session's acked_below ({}) is past its sequence ({})",
                session.acked_below, session.sequence
            )));
        }
        Ok(())
    }

    async fn write(&self, op: Op) -> Result<WriteResult, Status> {
        self.write_in(op, None).await
    }

    /// Replicates `op`, under the client's session if it sent one.
    async fn write_in(&self, op: Op, session: Option<WriteSession>) -> Result<WriteResult, Status> {
        Service::check_session(session.as_ref())?;
        let started = std::time::Instant::now();
        let written = self.node.write(op, session).await;
        observe(&self.metrics.proposal_seconds, started.elapsed());
        let outcome = match &written {
            Ok(_) => "applied",
            Err(WriteError::NoLeader) => "no_leader",
            Err(WriteError::Stopped) => "stopped",
            Err(WriteError::Busy(_)) => "busy",
            Err(WriteError::Timeout) => "timeout",
            Err(WriteError::Forgotten { .. }) => "forgotten",
            Err(WriteError::Superseded) => "superseded",
        };
        self.metrics.proposals.get_or_create(&OutcomeLabel { outcome }).inc();
        written.map_err(|error| match error {
            WriteError::NoLeader | WriteError::Stopped | WriteError::Busy(_) => {
                Status::unavailable(error.to_string())
            }
            WriteError::Timeout => Status::deadline_exceeded(error.to_string()),
            WriteError::Forgotten { .. } => Status::failed_precondition(error.to_string()),
            WriteError::Superseded => Status::aborted(error.to_string()),
        })
    }

    async fn read(&self, consistency: i32) -> Result<kv_fsm::KvState, Status> {
        let linearizable =
            consistency != ReadConsistency::Serializable as i32 && !self.unsafe_local_reads;
        let started = std::time::Instant::now();
        let read = self.node.read(linearizable).await;
        if linearizable {
            observe(&self.metrics.read_index_seconds, started.elapsed());
        }
        read.map_err(|error| match error {
            ReadError::Timeout => Status::deadline_exceeded(error.to_string()),
            ReadError::NoLeader | ReadError::Busy | ReadError::Stopped => {
                Status::unavailable(error.to_string())
            }
        })
    }

    async fn status(&self) -> Result<NodeStatus, Status> {
        self.node.status().await.ok_or_else(|| Status::unavailable("the node is stopping"))
    }

    fn member(&self, id: NodeId) -> Option<&MemberInfo> {
        self.members.iter().find(|m| m.id == id)
    }

    /// Name and addresses of `id`: the replicated member table first, the flags second.
    fn describe(&self, status: &NodeStatus, id: NodeId) -> MemberInfo {
        if let Some(row) = status.members.get(&id.0) {
            return MemberInfo {
                id,
                name: row.name.clone(),
                peer_address: row.peer_address.clone(),
                client_address: row.client_address.clone(),
            };
        }
        self.member(id).cloned().unwrap_or(MemberInfo {
            id,
            name: String::new(),
            peer_address: String::new(),
            client_address: String::new(),
        })
    }

    fn members_of(&self, status: &NodeStatus) -> Vec<api::Member> {
        let ids = status.voters.iter().map(|&id| (id, false));
        let ids = ids.chain(status.learners.iter().map(|&id| (id, true)));
        ids.map(|(id, is_learner)| {
            let known = self.describe(status, id);
            api::Member {
                id: id.0,
                name: known.name,
                peer_address: known.peer_address,
                client_address: known.client_address,
                is_learner,
                is_leader: status.leader == Some(id),
            }
        })
        .collect()
    }
}

/// How long a membership change may take to be proposed and take effect.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(10);

impl Service {
    /// Refuses unless this node leads (the client then tries the next endpoint).
    async fn leader_status(&self) -> Result<NodeStatus, Status> {
        let status = self.status().await?;
        if status.role != Role::Leader {
            let leader = status.leader.map(|id| self.describe(&status, id));
            let hint = leader.map_or("no leader is known".to_string(), |l| {
                format!("the leader is {} at {}", l.name, l.client_address)
            });
            return Err(Status::unavailable(format!(
                "membership changes go to the leader: {hint}"
            )));
        }
        Ok(status)
    }

    /// Proposes `change` until the engine takes it (another change may be finishing), then
    /// waits until it is committed and the configuration is no longer joint: only then is the
    /// change done whatever happens to this leader.
    async fn propose_change(&self, change: ConfChange) -> Result<(), Status> {
        let deadline = tokio::time::Instant::now() + MEMBERSHIP_TIMEOUT;
        loop {
            match self.node.conf_change(change).await {
                Ok(index) => {
                    self.wait_for(|s| s.commit >= index.0 && !s.joint).await?;
                    return Ok(());
                }
                Err(ConfChangeRefused::Busy(_)) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(ConfChangeRefused::Invalid(reason)) => {
                    return Err(Status::invalid_argument(reason))
                }
                Err(error) => return Err(Status::unavailable(error.to_string())),
            }
        }
    }

    /// Waits until `done` holds for the node's status.
    async fn wait_for(&self, done: impl Fn(&NodeStatus) -> bool) -> Result<NodeStatus, Status> {
        let deadline = tokio::time::Instant::now() + MEMBERSHIP_TIMEOUT;
        loop {
            let status = self.status().await?;
            if done(&status) {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::deadline_exceeded(
                    "the membership change did not take effect in time",
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Adds a member: its row in the member table, then a learner. A voter-to-be's row says
    /// so, and whichever node leads promotes it once it has caught up (node/membership.rs).
    async fn join(&self, request: &api::MemberJoinRequest) -> Result<NodeId, Status> {
        check_member_text("name", &request.name)?;
        check_member_text("client_address", &request.client_address)?;
        check_member_text("peer_address", &request.peer_address)?;
        request
            .peer_address
            .parse::<raft_net::PeerAddress>()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let status = self.leader_status().await?;
        let highest = status
            .voters
            .iter()
            .chain(&status.learners)
            .map(|id| id.0)
            .chain(self.members.iter().map(|m| m.id.0))
            .max()
            .unwrap_or(0);
        // The state machine gives the id: fresh (never used), and refused if the name or
        // peer address is taken, however many joins race.
        let row = api::SetMember {
            id: 0,
            name: request.name.clone(),
            peer_address: request.peer_address.clone(),
            client_address: request.client_address.clone(),
            allocate: true,
            min_id: highest.saturating_add(1),
            promote: !request.learner,
        };
        let id = match self.write(Op::SetMember(row)).await? {
            WriteResult::Member { id: 0, .. } => {
                return Err(Status::already_exists(format!(
                    "a member already has the name {:?} or the peer address {}",
                    request.name, request.peer_address
                )));
            }
            WriteResult::Member { id, .. } => NodeId(id),
            other => return Err(Status::internal(format!("a member row answered {other:?}"))),
        };
        self.propose_change(ConfChange::AddLearner(id)).await?;
        tracing::info!("member {} joined as learner {id}", request.name);
        Ok(id)
    }

    /// Removes the member named `name`: from the configuration, then from the member table.
    /// Returns the members left.
    ///
    /// The leader may remove itself (thesis §4.2.2): it goes on leading without counting its
    /// own vote until the configuration without it is committed, then steps down and its node
    /// stops. Its row stays in the member table (nobody is left here to delete it); no
    /// configuration names it, so nobody dials it, and a later `member-leave` of the same name
    /// deletes it.
    async fn leave(&self, name: &str) -> Result<Vec<api::Member>, Status> {
        let status = self.leader_status().await?;
        let id = status
            .members
            .iter()
            .find(|(_, m)| m.name == name)
            .map(|(&id, _)| NodeId(id))
            .or_else(|| self.members.iter().find(|m| m.name == name).map(|m| m.id))
            .ok_or_else(|| Status::not_found(format!("no member named {name:?}")))?;
        // A row no configuration names (a join that failed half-way) only needs deleting.
        let in_config = status.voters.contains(&id) || status.learners.contains(&id);
        if in_config && id == status.id {
            // The node stops as soon as the change commits, possibly before it could answer
            // the wait for it.
            if let Err(error) = self.propose_change(ConfChange::Remove(id)).await {
                if !self.node.was_removed() {
                    return Err(error);
                }
            }
            tracing::info!("this node ({name}, {id}) left the cluster");
            let mut members = self.members_of(&status);
            members.retain(|m| m.id != id.0);
            members.iter_mut().for_each(|m| m.is_leader = false);
            return Ok(members);
        }
        if in_config {
            self.propose_change(ConfChange::Remove(id)).await?;
        }
        tracing::info!("member {name} ({id}) left");
        // The row goes last; if this node was the one removed, the next leader's table keeps
        // a row no configuration names, which member lists ignore.
        let _ = self.write(Op::RemoveMember(api::RemoveMember { id: id.0 })).await;
        Ok(self.members_of(&self.status().await?))
    }
}

/// Names and addresses go into flags (`name@id=host:port,...`) and snapshots: short, and
/// without the separators.
fn check_member_text(field: &str, text: &str) -> Result<(), Status> {
    if text.is_empty() || text.len() > 255 {
        return Err(Status::invalid_argument(format!("{field} must have 1 to 255 bytes")));
    }
    if text.contains([',', '@', '=']) || text.chars().any(char::is_whitespace) {
        return Err(Status::invalid_argument(format!(
            "{field} may not contain ',', '@', '=' or spaces"
        )));
    }
    Ok(())
}

type ListStream = Pin<Box<dyn Stream<Item = Result<api::KeyValue, Status>> + Send>>;

#[tonic::async_trait]
impl Kv for Service {
    async fn get(
        &self,
        request: Request<api::GetRequest>,
    ) -> Result<Response<api::GetResponse>, Status> {
        self.allow(&request, &[Permission::Read(&request.get_ref().key)])?;
        let request = request.into_inner();
        Service::check_key(&request.key)?;
        let state = self.read(request.consistency).await?;
        let response = match state.get(&request.key) {
            Some(stored) => api::GetResponse {
                found: true,
                value: stored.value.clone(),
                mod_revision: stored.mod_revision,
            },
            None => api::GetResponse::default(),
        };
        Ok(Response::new(response))
    }

    async fn set(
        &self,
        request: Request<api::SetRequest>,
    ) -> Result<Response<api::SetResponse>, Status> {
        self.allow(&request, &[Permission::Write(&request.get_ref().key)])?;
        let request = request.into_inner();
        Service::check_key(&request.key)?;
        self.check_value(&request.value)?;
        let op = Op::Put(api::Put { key: request.key, value: request.value });
        match self.write_in(op, request.session).await? {
            WriteResult::Put { revision } => Ok(Response::new(api::SetResponse { revision })),
            other => Err(answered_another_kind(other)),
        }
    }

    async fn delete(
        &self,
        request: Request<api::DeleteRequest>,
    ) -> Result<Response<api::DeleteResponse>, Status> {
        self.allow(&request, &[Permission::Write(&request.get_ref().key)])?;
        let request = request.into_inner();
        Service::check_key(&request.key)?;
        let op = Op::Delete(api::Delete { key: request.key });
        match self.write_in(op, request.session).await? {
            WriteResult::Delete { deleted, revision } => {
                Ok(Response::new(api::DeleteResponse { deleted, revision }))
            }
            other => Err(answered_another_kind(other)),
        }
    }

    async fn compare_and_set(
        &self,
        request: Request<api::CompareAndSetRequest>,
    ) -> Result<Response<api::CompareAndSetResponse>, Status> {
        // A refused compare-and-set answers the current value: it reads too.
        let key = &request.get_ref().key;
        self.allow(&request, &[Permission::Read(key), Permission::Write(key)])?;
        let request = request.into_inner();
        Service::check_key(&request.key)?;
        self.check_value(&request.value)?;
        let op = Op::CompareAndSet(api::CompareAndSet {
            key: request.key,
            expected: request.expected,
            value: request.value,
        });
        match self.write_in(op, request.session).await? {
            WriteResult::CompareAndSet { succeeded, current, revision } => {
                Ok(Response::new(api::CompareAndSetResponse { succeeded, current, revision }))
            }
            other => Err(answered_another_kind(other)),
        }
    }

    type ListStream = ListStream;

    async fn list(
        &self,
        request: Request<api::ListRequest>,
    ) -> Result<Response<ListStream>, Status> {
        self.allow(&request, &[Permission::Read(&request.get_ref().prefix)])?;
        let request = request.into_inner();
        if request.prefix.len() > KEY_BYTES_MAX || request.start_after.len() > KEY_BYTES_MAX {
            return Err(Status::invalid_argument(format!(
                "prefix and start_after are keys: at most {KEY_BYTES_MAX} bytes"
            )));
        }
        let state = self.read(request.consistency).await?;
        // Streamed from the state's clone by a task, so a long list never sits in memory whole.
        let (sender, receiver) = tokio::sync::mpsc::channel(64);
        tokio::spawn(async move {
            let (prefix, start_after): (Bytes, Bytes) = (request.prefix, request.start_after);
            let items = state.list(&prefix, &start_after, request.limit as usize);
            for (key, stored) in items {
                let item = api::KeyValue {
                    key: key.to_bytes(),
                    value: stored.value.clone(),
                    mod_revision: stored.mod_revision,
                };
                if sender.send(Ok(item)).await.is_err() {
                    return; // the client went away
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(receiver))))
    }

    async fn get_servers(
        &self,
        request: Request<api::GetServersRequest>,
    ) -> Result<Response<api::GetServersResponse>, Status> {
        self.allow(&request, &[Permission::Known])?;
        let status = self.status().await?;
        let servers = self
            .members_of(&status)
            .into_iter()
            .map(|m| api::Server {
                id: m.id,
                name: m.name,
                peer_address: m.peer_address,
                client_address: m.client_address,
                is_leader: m.is_leader,
                is_voter: !m.is_learner,
            })
            .collect();
        Ok(Response::new(api::GetServersResponse { servers }))
    }
}

#[tonic::async_trait]
impl Cluster for Service {
    async fn member_list(
        &self,
        request: Request<api::MemberListRequest>,
    ) -> Result<Response<api::MemberListResponse>, Status> {
        self.allow(&request, &[Permission::Known])?;
        let status = self.status().await?;
        Ok(Response::new(api::MemberListResponse { members: self.members_of(&status) }))
    }

    async fn member_join(
        &self,
        request: Request<api::MemberJoinRequest>,
    ) -> Result<Response<api::MemberJoinResponse>, Status> {
        self.allow(&request, &[Permission::Admin])?;
        let request = request.into_inner();
        let id = self.join(&request).await?;
        let status = self.status().await?;
        let members = self.members_of(&status);
        let member = members.iter().find(|m| m.id == id.0).cloned();
        Ok(Response::new(api::MemberJoinResponse { member, members }))
    }

    async fn member_leave(
        &self,
        request: Request<api::MemberLeaveRequest>,
    ) -> Result<Response<api::MemberLeaveResponse>, Status> {
        self.allow(&request, &[Permission::Admin])?;
        let members = self.leave(&request.into_inner().name).await?;
        Ok(Response::new(api::MemberLeaveResponse { members }))
    }

    async fn status(
        &self,
        request: Request<api::StatusRequest>,
    ) -> Result<Response<api::StatusResponse>, Status> {
        self.allow(&request, &[Permission::Known])?;
        let status = Service::status(self).await?;
        let name = |id: NodeId| self.describe(&status, id).name;
        Ok(Response::new(api::StatusResponse {
            name: name(status.id),
            id: status.id.0,
            term: status.term,
            leader_id: status.leader.map_or(0, |l| l.0),
            leader_name: status.leader.map(name).unwrap_or_default(),
            commit_index: status.commit,
            applied_index: status.applied,
            log_first_index: status.first_index,
            log_last_index: status.last_index,
            role: role_name(status.role).into(),
        }))
    }

    type SnapshotSaveStream = crate::backup::SnapshotStream;

    async fn snapshot_save(
        &self,
        request: Request<api::SnapshotSaveRequest>,
    ) -> Result<Response<Self::SnapshotSaveStream>, Status> {
        // A copy of every key: it needs read on all of them.
        self.allow(&request, &[Permission::Read(b"")])?;
        let permit = self.backups.clone().try_acquire_owned().map_err(|_| {
            Status::resource_exhausted(format!(
                "{} backups are being streamed already; try again when one is done",
                crate::backup::BACKUPS_MAX
            ))
        })?;
        let state = self.read(ReadConsistency::Linearizable as i32).await?;
        Ok(Response::new(crate::backup::stream(state, permit)))
    }

    async fn transfer_leadership(
        &self,
        request: Request<api::TransferLeadershipRequest>,
    ) -> Result<Response<api::TransferLeadershipResponse>, Status> {
        self.allow(&request, &[Permission::Admin])?;
        let name = request.into_inner().name;
        let status = Service::status(self).await?;
        let to = if name.is_empty() {
            None
        } else {
            let in_table =
                status.members.iter().find(|(_, m)| m.name == name).map(|(&id, _)| NodeId(id));
            let in_flags = || self.members.iter().find(|m| m.name == name).map(|m| m.id);
            let id = in_table.or_else(in_flags);
            Some(id.ok_or_else(|| Status::not_found(format!("no member named {name:?}")))?)
        };
        let target =
            self.node.transfer_leadership(to).await.map_err(Status::failed_precondition)?;
        let leader_name = self.describe(&status, target).name;
        Ok(Response::new(api::TransferLeadershipResponse { leader_name }))
    }
}
