//! `kvctl status`: one node's Raft state, or with `--all` every member's, asked of each
//! member at its own client address, in one table.

use crate::client::{CallError, Connection};
use kv_proto::kv::{self as api};
use serde_json::json;

/// One member's answer, or why it gave none.
struct Row {
    name: String,
    status: Result<api::StatusResponse, String>,
}

/// Prints the status of the first endpoint that answers.
pub async fn one(connection: &Connection, json: bool) -> Result<(), CallError> {
    let status = connection
        .send(api::StatusRequest {}, |c, r| async move { Connection::cluster(c).status(r).await })
        .await?;
    print(json, &[Row { name: status.name.clone(), status: Ok(status) }]);
    Ok(())
}

/// Prints every member's status: the member list comes from the first endpoint that
/// answers, then each member is asked at its advertised client address. A member that
/// cannot be reached gets a row saying why.
pub async fn all(connection: &Connection, json: bool) -> Result<(), CallError> {
    let members = connection
        .send(api::MemberListRequest {}, |c, r| async move {
            Connection::cluster(c).member_list(r).await
        })
        .await?
        .members;
    let mut rows = Vec::with_capacity(members.len());
    for member in members {
        let status = ask(connection, &member).await;
        rows.push(Row { name: member.name, status });
    }
    print(json, &rows);
    Ok(())
}

async fn ask(connection: &Connection, member: &api::Member) -> Result<api::StatusResponse, String> {
    if member.client_address.is_empty() {
        return Err("no client address known (it has not registered one yet)".into());
    }
    let channel = connection.channel(&member.client_address).await?;
    let answer = Connection::cluster(channel).status(api::StatusRequest {}).await;
    answer.map(tonic::Response::into_inner).map_err(|status| {
        format!("{}: {:?}: {}", member.client_address, status.code(), status.message())
    })
}

/// How many committed entries `status` has not applied yet, measured against the highest
/// commit index any member reported (the leader's, when it answered).
fn lag(status: &api::StatusResponse, commit: u64) -> u64 {
    commit.saturating_sub(status.applied_index)
}

fn print(json: bool, rows: &[Row]) {
    let commit = rows.iter().filter_map(|r| r.status.as_ref().ok()).map(|s| s.commit_index).max();
    let commit = commit.unwrap_or(0);
    if !json {
        println!("NAME\tID\tROLE\tTERM\tLEADER\tCOMMIT\tAPPLIED\tLAG\tLOG");
    }
    for row in rows {
        match (&row.status, json) {
            (Ok(s), true) => println!(
                "{}",
                json!({ "name": s.name, "id": s.id, "role": s.role, "term": s.term, "leader": s.leader_name,
                        "commit": s.commit_index, "applied": s.applied_index, "lag": lag(s, commit),
                        "log_first": s.log_first_index, "log_last": s.log_last_index })
            ),
            (Ok(s), false) => println!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}..{}",
                s.name,
                s.id,
                s.role,
                s.term,
                s.leader_name,
                s.commit_index,
                s.applied_index,
                lag(s, commit),
                s.log_first_index,
                s.log_last_index
            ),
            (Err(why), true) => println!("{}", json!({ "name": row.name, "error": why })),
            (Err(why), false) => println!("{}\tunreachable: {why}", row.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lag counts committed entries not yet applied, never below zero (a member may report
    /// an applied index past an older commit index another member reported).
    #[test]
    fn lag_is_the_gap_to_the_highest_commit_index() {
        let status = |applied| api::StatusResponse { applied_index: applied, ..Default::default() };
        assert_eq!(lag(&status(90), 100), 10);
        assert_eq!(lag(&status(100), 100), 0);
        assert_eq!(lag(&status(120), 100), 0);
    }
}
