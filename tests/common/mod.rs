//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use butter::{Node, Request};

/// Every await in a test is bounded: a hang fails the test instead.
pub async fn within<T>(secs: u64, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs}s: {what}"))
}

pub fn loopback() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// A node on loopback serving `reverse`.
pub async fn reverse_node() -> Node {
    Node::builder()
        .listen(loopback())
        .route("reverse", |req: Request| async move {
            Ok(req.body().iter().rev().copied().collect::<Vec<u8>>())
        })
        .spawn()
        .await
        .expect("node starts")
}

/// Waits for a condition that some background event makes true, polling it.
pub async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    within(secs, what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}
