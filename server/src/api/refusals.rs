//! Which refused calls go on the record, and what they named
//! (docs/audit-format.md, "Refused calls").
//!
//! Recorded: a call an authenticated caller may not make at all (its role:
//! `permission_denied`, from `auth::layer`), whatever the method; and a
//! state-changing call ([`WRITES`]) the handler or the ledger refused
//! before it changed anything (bad input, an unknown or closed task or
//! grant, a quota), seen here by [`RefusalLayer`]. Not recorded here: policy
//! denials and Check decisions, which the ledger records itself; reads that
//! find nothing; unauthenticated connections (counted in the metrics and
//! logged); answers that are not refusals (`not_leader`, `unavailable`).
//!
//! A refusal is recorded where it was decided: on the node that served the
//! call, the leader for a forwarded one. A follower's RefusalLayer sits
//! inside its ForwardLayer and sees only its own answers.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use grant_proto::v1 as pb;
use grant_proto::ERROR_CODE_KEY;
use http_body_util::{BodyExt, Full, Limited};
use prost::Message;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::Status;

use crate::audit::refusals::{Refusals, Target};
use crate::auth::layer::Caller;
use crate::limits;

/// The state-changing methods: refusing one of them for any reason is on
/// the record.
pub const WRITES: &[&str] = &[
    "/grantledger.v1.Grants/Issue",
    "/grantledger.v1.Grants/Revoke",
    "/grantledger.v1.Grants/Delegate",
    "/grantledger.v1.Grants/Renew",
    "/grantledger.v1.Grants/BeginTask",
    "/grantledger.v1.Grants/CompleteTask",
    "/grantledger.v1.Grants/AbortTask",
    "/grantledger.v1.Policy/Apply",
    "/grantledger.v1.Cluster/Initialize",
    "/grantledger.v1.Cluster/AddLearner",
    "/grantledger.v1.Cluster/ChangeMembership",
    "/grantledger.v1.Cluster/Promote",
    "/grantledger.v1.Cluster/Remove",
    "/grantledger.v1.Cluster/TransferLeader",
    "/grantledger.v1.Cluster/SetRoles",
    "/grantledger.v1.Cluster/PruneAudit",
    "/grantledger.v1.Audit/RotateKey",
];

/// `x-grant-error` codes that mean "refused, nothing changed".
const REFUSED: &[&str] = &[
    "invalid_argument",
    "not_found",
    "already_exists",
    "failed_precondition",
    "resource_exhausted",
    "permission_denied",
];

/// Whether a call to `method` answered with `code` goes on the record.
pub fn recorded(method: &str, code: &str) -> bool {
    code == "permission_denied" || (WRITES.contains(&method) && REFUSED.contains(&code))
}

fn resources(scopes: &[pb::Scope]) -> String {
    scopes
        .iter()
        .map(|s| s.resource.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// What the request in `body` (one gRPC message frame) named. A body that
/// does not decode names nothing.
pub fn target_of(method: &str, body: &[u8]) -> Target {
    // A frame: compressed flag (1), length (4, big-endian), the message.
    let msg = match body {
        [0, a, b, c, d, rest @ ..] => {
            let n = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
            rest.get(..n).unwrap_or(rest)
        }
        _ => return Target::default(),
    };
    let t = |subject: &str, task_id: &str, grant_id: &str, resource: String| Target {
        subject: subject.into(),
        task_id: task_id.into(),
        grant_id: grant_id.into(),
        resource,
    };
    let method = method.rsplit_once('/');
    let decoded = match method {
        Some(("/grantledger.v1.Grants", "Issue")) => pb::IssueRequest::decode(msg)
            .map(|r| t(&r.subject, &r.task_id, "", resources(&r.scopes))),
        Some(("/grantledger.v1.Grants", "Delegate")) => {
            pb::DelegateRequest::decode(msg).map(|r| t(&r.subject, "", "", resources(&r.scopes)))
        }
        Some(("/grantledger.v1.Grants", "Check")) => {
            pb::CheckRequest::decode(msg).map(|r| t(&r.identity, "", "", r.resource))
        }
        Some(("/grantledger.v1.Grants", "Revoke")) => {
            pb::RevokeRequest::decode(msg).map(|r| t("", "", &r.grant_id, String::new()))
        }
        Some(("/grantledger.v1.Grants", "Renew")) => {
            pb::RenewRequest::decode(msg).map(|r| t("", "", &r.grant_id, String::new()))
        }
        Some(("/grantledger.v1.Grants", "Get")) => {
            pb::GetRequest::decode(msg).map(|r| t("", "", &r.grant_id, String::new()))
        }
        Some(("/grantledger.v1.Grants", "BeginTask")) => pb::BeginTaskRequest::decode(msg)
            .map(|r| t("", &r.task_id, "", r.declared_tools.join(","))),
        Some(("/grantledger.v1.Grants", "CompleteTask")) => {
            pb::CompleteTaskRequest::decode(msg).map(|r| t("", &r.task_id, "", String::new()))
        }
        Some(("/grantledger.v1.Grants", "AbortTask")) => {
            pb::AbortTaskRequest::decode(msg).map(|r| t("", &r.task_id, "", String::new()))
        }
        Some(("/grantledger.v1.Grants", "GetTask")) => {
            pb::GetTaskRequest::decode(msg).map(|r| t("", &r.task_id, "", String::new()))
        }
        Some(("/grantledger.v1.Policy", "Apply")) => Ok(t("", "", "", "policy".into())),
        Some(("/grantledger.v1.Cluster", "SetRoles")) => Ok(t("", "", "", "roles".into())),
        Some(("/grantledger.v1.Cluster", _)) => Ok(t("", "", "", "cluster".into())),
        Some(("/grantledger.v1.Audit", _)) => Ok(t("", "", "", "audit".into())),
        _ => Ok(Target::default()),
    };
    decoded.unwrap_or_default()
}

/// Read a refused request's body (bounded in size and time) and record the
/// refusal with what it named.
pub async fn record_with_body(
    refusals: &Refusals,
    caller: &str,
    method: &str,
    body: Body,
    code: &str,
    message: &str,
) {
    let wait = std::time::Duration::from_millis(limits::REFUSAL_BODY_WAIT_MS);
    let read = Limited::new(body, limits::MESSAGE_BYTES_MAX + 5).collect();
    let bytes = match tokio::time::timeout(wait, read).await {
        Ok(Ok(b)) => b.to_bytes(),
        _ => Bytes::new(),
    };
    refusals.record(caller, method, target_of(method, &bytes), code, message);
}

/// The tower layer recording the refusals of state-changing calls that
/// reached a handler (inside ForwardLayer: this node's own answers).
#[derive(Clone)]
pub struct RefusalLayer {
    pub refusals: Arc<Refusals>,
}

impl<S> tower::Layer<S> for RefusalLayer {
    type Service = RefusalService<S>;
    fn layer(&self, inner: S) -> RefusalService<S> {
        RefusalService {
            inner,
            refusals: self.refusals.clone(),
        }
    }
}

#[derive(Clone)]
pub struct RefusalService<S> {
    inner: S,
    refusals: Arc<Refusals>,
}

impl<S> tower::Service<http::Request<Body>> for RefusalService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if !WRITES.contains(&req.uri().path()) {
            return Box::pin(inner.call(req));
        }
        let method = req.uri().path().to_string();
        let refusals = self.refusals.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let caller = parts
                .extensions
                .get::<Caller>()
                .cloned()
                .unwrap_or(Caller::Anonymous);
            // A write is one small message: kept, to read its target should
            // it be refused.
            let (bytes, resp) = match super::forward::read_whole(body).await {
                Ok(bytes) => {
                    let req = http::Request::from_parts(parts, Body::new(Full::new(bytes.clone())));
                    (bytes, inner.call(req).await?)
                }
                Err(err) => (Bytes::new(), Status::from(err).into_http()),
            };
            if let Some(status) = resp.extensions().get::<Status>() {
                let code = status
                    .metadata()
                    .get(ERROR_CODE_KEY)
                    .and_then(|c| c.to_str().ok())
                    .unwrap_or("");
                if recorded(&method, code) && caller != Caller::Anonymous {
                    refusals.record(
                        caller.id(),
                        &method,
                        target_of(&method, &bytes),
                        code,
                        status.message(),
                    );
                }
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(m: &impl Message) -> Vec<u8> {
        let body = m.encode_to_vec();
        let mut f = vec![0];
        f.extend_from_slice(&(body.len() as u32).to_be_bytes());
        f.extend_from_slice(&body);
        f
    }

    #[test]
    fn targets_are_read_from_the_request_and_garbage_names_nothing() {
        let issue = pb::IssueRequest {
            subject: "spiffe://other.org/agent".into(),
            task_id: "t1".into(),
            scopes: vec![
                pb::Scope {
                    resource: "github".into(),
                    actions: vec!["admin".into()],
                },
                pb::Scope {
                    resource: "jira".into(),
                    actions: vec![],
                },
            ],
            ..Default::default()
        };
        let t = target_of("/grantledger.v1.Grants/Issue", &frame(&issue));
        assert_eq!(
            (t.subject.as_str(), t.task_id.as_str(), t.resource.as_str()),
            ("spiffe://other.org/agent", "t1", "github,jira")
        );
        let revoke = pb::RevokeRequest {
            grant_id: "abc".into(),
            ..Default::default()
        };
        assert_eq!(
            target_of("/grantledger.v1.Grants/Revoke", &frame(&revoke)).grant_id,
            "abc"
        );
        assert_eq!(
            target_of(
                "/grantledger.v1.Grants/Revoke",
                b"\x00\x00\x00\x00\x09garbage!!"
            ),
            Target::default()
        );
        assert_eq!(
            target_of("/grantledger.v1.Grants/Issue", b""),
            Target::default()
        );
    }

    #[test]
    fn what_is_recorded() {
        assert!(recorded(
            "/grantledger.v1.Audit/Export",
            "permission_denied"
        ));
        assert!(recorded("/grantledger.v1.Grants/Issue", "invalid_argument"));
        assert!(recorded("/grantledger.v1.Grants/Revoke", "not_found"));
        assert!(!recorded("/grantledger.v1.Grants/Get", "not_found"));
        assert!(!recorded("/grantledger.v1.Grants/Issue", "policy_denied"));
        assert!(!recorded("/grantledger.v1.Grants/Issue", "not_leader"));
        assert!(!recorded("/grantledger.v1.Grants/Issue", "unauthenticated"));
    }

    /// Every method the API serves is either a write or not, knowingly: a
    /// new write method must be added to WRITES (or here, as a read).
    #[test]
    fn every_method_is_classified() {
        use prost::Message as _;
        let set = prost_types::FileDescriptorSet::decode(grant_proto::FILE_DESCRIPTOR_SET).unwrap();
        let reads = [
            "Grants/Check",
            "Grants/GetTask",
            "Grants/Get",
            "Grants/List",
            "Grants/Jwks",
            "Grants/Watch",
            "Policy/Get",
            "Policy/Validate",
            "Cluster/Status",
            "Cluster/Backup",
            "Cluster/GetRoles",
            "Audit/LatestCheckpoint",
            "Audit/GetEntries",
            "Audit/InclusionProof",
            "Audit/ConsistencyProof",
            "Audit/Export",
            "Audit/Roster",
        ];
        let mut seen = 0;
        for f in &set.file {
            for s in &f.service {
                for m in &s.method {
                    let short = format!("{}/{}", s.name(), m.name());
                    let path = format!("/{}.{}", f.package(), short);
                    assert!(
                        WRITES.contains(&path.as_str()) || reads.contains(&short.as_str()),
                        "{path} is neither in WRITES nor a known read"
                    );
                    seen += 1;
                }
            }
        }
        assert_eq!(seen, WRITES.len() + reads.len());
    }
}
