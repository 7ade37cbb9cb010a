"""A grant-ledger client in Python, with grpcio and standard mTLS.

An orchestrator begins a task and issues a grant to an agent; a tool server
checks the agent's token; the orchestrator revokes the grant, the tool
server sees the revocation, and the task is completed. Each step prints one
JSON line; the exit status is 0 only if every step answered as expected.

It uses nothing but the protos and docs/api.md:
- the node certificates name localhost and the loopback addresses, so the
  standard host-name check passes (no target-name override);
- any node serves every call (a follower forwards to its leader);
- should a node answer UNAVAILABLE with x-grant-error "not_leader" and an
  x-grant-leader-addr, the call goes there; "outcome_unknown" is retried
  with the same request id, which is safe.

    run.sh --endpoint localhost:7101 --certs certs
"""

import argparse
import json
import sys
import time
import uuid

import grpc

from grantledger.v1 import grants_pb2 as pb
from grantledger.v1 import grants_pb2_grpc as rpc

# How often one call is tried before the client gives up.
ATTEMPTS_MAX = 10
# Seconds each attempt may take.
DEADLINE_S = 10


def read(path):
    with open(path, "rb") as f:
        return f.read()


class Caller:
    """One workload's identity (its certificate) and its channels to the
    cluster, following the leader when a node says where it is."""

    def __init__(self, endpoints, ca, cert, key):
        self.endpoints = list(endpoints)
        self.creds = grpc.ssl_channel_credentials(
            root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert)
        )
        self.target = self.endpoints[0]
        self.channel = grpc.secure_channel(self.target, self.creds)

    def connect(self, target):
        if target != self.target:
            self.channel.close()
            self.target = target
            self.channel = grpc.secure_channel(target, self.creds)

    def call(self, method, request):
        """Call Grants.<method>, following leader hints and retrying what is
        safe to retry: every request here carries its idempotency key."""
        for attempt in range(ATTEMPTS_MAX):
            stub = rpc.GrantsStub(self.channel)
            try:
                return getattr(stub, method)(request, timeout=DEADLINE_S)
            except grpc.RpcError as e:
                md = dict(e.trailing_metadata() or ())
                code = md.get("x-grant-error", "")
                if e.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                leader = md.get("x-grant-leader-addr")
                if code == "not_leader" and leader:
                    self.connect(leader)
                elif code not in ("outcome_unknown", "not_leader", "unavailable", ""):
                    raise
                else:
                    # No leader known here: try the next node, after a pause.
                    i = self.endpoints.index(self.target) if self.target in self.endpoints else -1
                    self.connect(self.endpoints[(i + 1) % len(self.endpoints)])
                    time.sleep(min(0.1 * 2**attempt, 2.0))
        raise RuntimeError(f"{method}: no node answered after {ATTEMPTS_MAX} attempts")


def step(name, ok, **fields):
    print(json.dumps({"step": name, "ok": ok, **fields}), flush=True)
    if not ok:
        sys.exit(1)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--endpoint", action="append", required=True,
                   help="a node's API address, host:port (repeat for several)")
    p.add_argument("--certs", required=True,
                   help="directory with ca.pem and the workloads' NAME.pem and NAME.key")
    p.add_argument("--orchestrator", default="orchestrator",
                   help="file stem of the orchestrator's certificate and key")
    p.add_argument("--tool", default="tool", help="file stem of the tool server's certificate and key")
    p.add_argument("--agent", default="spiffe://example.org/agent/planner",
                   help="SPIFFE ID of the agent the grant is for")
    a = p.parse_args()

    def caller(stem):
        return Caller(a.endpoint, f"{a.certs}/ca.pem", f"{a.certs}/{stem}.pem", f"{a.certs}/{stem}.key")

    orchestrator = caller(a.orchestrator)
    tool = caller(a.tool)
    task = f"py-{uuid.uuid4().hex[:12]}"

    r = orchestrator.call("BeginTask", pb.BeginTaskRequest(
        task_id=task, intent="triage issue 42", declared_tools=["github"], deadline_seconds=600))
    step("begin", r.task.task_id == task, task=task, audit_seq=r.receipt.audit_seq)

    issued = orchestrator.call("Issue", pb.IssueRequest(
        request_id=uuid.uuid4().hex, subject=a.agent, task_id=task,
        scopes=[pb.Scope(resource="github", actions=["read"])],
        intent="read the issue thread", ttl_seconds=300))
    grant_id = issued.grant.grant_id
    step("issue", len(grant_id) == 32 and issued.token != "", grant_id=grant_id)

    def check():
        return tool.call("Check", pb.CheckRequest(
            token=issued.token, identity=a.agent, resource="github", action="read",
            attributes={"environment": "dev"}))

    c = check()
    step("check", c.decision == pb.DECISION_ALLOW and c.reason == pb.REASON_ALLOWED,
         reason=pb.Reason.Name(c.reason), audit_seq=c.receipt.audit_seq)

    r = orchestrator.call("Revoke", pb.RevokeRequest(
        request_id=uuid.uuid4().hex, grant_id=grant_id, reason="done reading"))
    step("revoke", r.grant.state == pb.GRANT_STATE_REVOKED, already_inactive=r.already_inactive)

    c = check()
    step("check-after-revoke", c.decision != pb.DECISION_ALLOW and c.reason == pb.REASON_REVOKED,
         reason=pb.Reason.Name(c.reason))

    r = orchestrator.call("CompleteTask", pb.CompleteTaskRequest(
        request_id=uuid.uuid4().hex, task_id=task, reason="triaged"))
    step("complete", r.task.state == pb.TASK_STATE_COMPLETED, already_closed=r.already_closed)


if __name__ == "__main__":
    main()
