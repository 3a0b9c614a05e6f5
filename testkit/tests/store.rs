//! The store against a real 3-node etcd.

use lockstep::store::Store;
use lockstep_core::policy::{Request, RequestKind};
use lockstep_core::Setup;
use lockstep_testkit::lab::etcd::EtcdCluster;
use std::time::Duration;

/// etcd-client's balancer keeps picking an endpoint it cannot connect to;
/// with one node of three dead (quorum intact) a request must still go
/// through, not fail with "tcp connect error" (seen in the chaos suite:
/// most switchovers failed while one etcd node was down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_go_through_while_one_etcd_node_is_dead() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = EtcdCluster::start(3, dir.path()).expect("etcd cluster starts");
    cluster
        .wait_healthy(Duration::from_secs(20))
        .await
        .expect("etcd healthy");
    let store = Store::connect(
        &cluster.endpoints(),
        "/lockstep-test",
        "link-a",
        Duration::from_secs(2),
        Duration::from_secs(2),
    )
    .await
    .expect("store connects");
    for _ in 0..10 {
        store.read_route().await.expect("reads with every node up");
    }

    // A follower, so that the cluster keeps its leader and no request has
    // to wait out an election.
    let leader = cluster
        .leader(Duration::from_secs(10))
        .await
        .expect("etcd leader");
    let dead = (leader + 1) % 3;
    cluster.nodes[dead].guard.kill();

    let mut failures = Vec::new();
    for i in 0..100 {
        if let Err(e) = store.read_route().await {
            failures.push(format!("read {i}: {e}"));
        }
        let request = Request {
            id: format!("req-{i}"),
            kind: RequestKind::Switchover,
            to: Setup::Warm,
            force: false,
            reason: "test".into(),
            requested_by: "test".into(),
            by_note: String::new(),
            at: String::new(),
            deadline_ms: None,
            not_before_ms: None,
            grace_ms: None,
        };
        match store.put_request(&request).await {
            Ok(Ok(rev)) => match store.withdraw_request(rev).await {
                Ok(true) => {}
                other => failures.push(format!("withdraw {i}: {other:?}")),
            },
            other => failures.push(format!("put {i}: {other:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 300 requests failed with node {dead} of 3 dead, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
}
