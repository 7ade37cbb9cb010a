//! Standard gRPC health and reflection: a node that has lost its quorum
//! reports NOT_SERVING for "" and every API service (a single voter never
//! does), and grpcurl-style clients can list the services, by reflection
//! v1 or v1alpha.

use futures_util::StreamExt;
use grant_tests::*;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

/// What the API port serves that depends on the cluster.
const API_SERVICES: &[&str] = &[
    "grantledger.v1.Grants",
    "grantledger.v1.Cluster",
    "grantledger.v1.Policy",
    "grantledger.v1.Audit",
];
/// Tooling that serves whatever the cluster's state.
const TOOL_SERVICES: &[&str] = &[
    "grpc.health.v1.Health",
    "grpc.reflection.v1.ServerReflection",
    "grpc.reflection.v1alpha.ServerReflection",
];

async fn health(c: &Cluster, addr: &str, service: &str) -> Option<ServingStatus> {
    let mut c = HealthClient::new(c.channel(addr)?);
    let r = c
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .ok()?;
    ServingStatus::try_from(r.into_inner().status).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_follows_quorum() {
    let mut c = Cluster::start(3).await;
    for n in &c.nodes {
        let addr = n.api_addr.clone();
        wait_for("every node serving", || {
            let (addr, c) = (addr.clone(), &c);
            async move { health(c, &addr, "").await == Some(ServingStatus::Serving) }
        })
        .await;
        for s in API_SERVICES.iter().chain(TOOL_SERVICES) {
            assert_eq!(
                health(&c, &n.api_addr, s).await,
                Some(ServingStatus::Serving),
                "{s}"
            );
        }
        // A name not served is NOT_FOUND, not a status.
        assert_eq!(
            health(&c, &n.api_addr, "grantledger.v1.raft.RaftPeer").await,
            None
        );
    }
    // Two of three gone: the survivor has no quorum and says so.
    let (_, survivor) = c.leader_and_follower().await;
    let others: Vec<u64> = c
        .nodes
        .iter()
        .map(|n| n.id)
        .filter(|&id| id != survivor)
        .collect();
    for id in &others {
        c.kill(*id);
    }
    let addr = c.node(survivor).api_addr.clone();
    wait_for("the survivor to report not serving", || {
        let (addr, c) = (addr.clone(), &c);
        async move { health(c, &addr, "").await == Some(ServingStatus::NotServing) }
    })
    .await;
    for s in API_SERVICES {
        assert_eq!(
            health(&c, &addr, s).await,
            Some(ServingStatus::NotServing),
            "{s}"
        );
    }
    for s in TOOL_SERVICES {
        assert_eq!(
            health(&c, &addr, s).await,
            Some(ServingStatus::Serving),
            "{s}"
        );
    }
    // Quorum back: serving again.
    c.spawn(others[0]);
    wait_for("the survivor to serve again", || {
        let (addr, c) = (addr.clone(), &c);
        async move { health(c, &addr, "").await == Some(ServingStatus::Serving) }
    })
    .await;
}

/// A single voter is its own quorum: no peer acknowledges it, and it keeps
/// serving reads, writes and health past the leader lease (600 ms here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_voter_is_its_own_quorum_past_the_lease() {
    let c = Cluster::start(1).await;
    let client = c.client();
    let addr = c.nodes[0].api_addr.clone();
    wait_for("the single voter serving", || {
        let (addr, c) = (addr.clone(), &c);
        async move { health(c, &addr, "").await == Some(ServingStatus::Serving) }
    })
    .await;
    let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
    let mut i = 0;
    while std::time::Instant::now() < until || i < 3 {
        i += 1;
        client
            .begin_task(begin_req(&format!("alone-{i}")))
            .await
            .unwrap_or_else(|e| panic!("write {i}: {e}"));
        client
            .get_task(grant_client::v1::GetTaskRequest {
                task_id: format!("alone-{i}"),
                allow_stale: false,
            })
            .await
            .unwrap_or_else(|e| panic!("read {i}: {e}"));
        assert_eq!(health(&c, &addr, "").await, Some(ServingStatus::Serving));
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_the_public_services_in_v1_and_v1alpha() {
    let c = Cluster::start(1).await;
    let channel = c.channel(&c.nodes[0].api_addr).unwrap();
    let mut v1 = ServerReflectionClient::new(channel.clone());
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut resp = v1
        .server_reflection_info(futures_util::stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let msg = resp.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = msg.message_response else {
        panic!("{msg:?}")
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    let mut want: Vec<String> = API_SERVICES
        .iter()
        .chain(TOOL_SERVICES)
        .map(|s| s.to_string())
        .collect();
    want.sort();
    // Exactly what the port serves: not the peer service, which is not.
    assert_eq!(names, want);

    use tonic_reflection::pb::v1alpha as alpha;
    let mut old = alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let req = alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            alpha::server_reflection_request::MessageRequest::FileContainingSymbol(
                "grantledger.v1.Grants".into(),
            ),
        ),
    };
    let mut resp = old
        .server_reflection_info(futures_util::stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    let msg = resp.next().await.unwrap().unwrap();
    let Some(alpha::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        msg.message_response
    else {
        panic!("{msg:?}")
    };
    assert!(!files.file_descriptor_proto.is_empty());
}
