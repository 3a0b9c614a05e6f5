//! Helpers shared by the integration tests.
#![allow(dead_code)]

use lockstep::lb::LoadBalancer;
use lockstep::proto;
use lockstep::protocol::LbTarget;
use lockstep_testkit::lab::Lab;
use std::time::{Duration, Instant};

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// Waits until every LB of the lab routes to `target` (read from HAProxy).
pub async fn all_lbs(lab: &Lab, target: LbTarget, timeout: Duration) -> Result<Duration, String> {
    let start = Instant::now();
    loop {
        let mut all = true;
        for lb in &lab.lbs {
            if lb.adapter().observe().await.map(|o| o.target).ok() != Some(target) {
                all = false;
            }
        }
        if all {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            return Err(format!("LBs not all at {target} within {timeout:?}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn status(lab: &Lab) -> proto::StatusReply {
    lab.admin(0)
        .await
        .expect("admin")
        .status(proto::StatusRequest {})
        .await
        .expect("status")
        .into_inner()
}

pub async fn history(lab: &Lab, limit: u32) -> proto::HistoryReply {
    lab.admin(0)
        .await
        .expect("admin")
        .history(proto::HistoryRequest { limit })
        .await
        .expect("history")
        .into_inner()
}
