//! Content on a real network on loopback: put on one node, fetched intact
//! from every other; a holder serving wrong bytes is passed over and
//! reported; a restarted node serves what it stored.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use butter::{Error, Node};
use common::within;

fn at(i: usize) -> SocketAddr {
    format!("127.0.1.{}:0", i + 1).parse().unwrap()
}

async fn node(i: usize, bootstrap: Option<&Node>) -> Node {
    let mut b = Node::builder().listen(at(i)).lan_discovery(false);
    if let Some(boot) = bootstrap {
        b = b.bootstrap(boot.addr());
    }
    b.spawn().await.expect("node starts")
}

/// Bytes that do not repeat chunk to chunk (identical chunks are stored once).
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n as u64)
        .map(|i| ((i.wrapping_mul(2_654_435_761) >> 11) as u8) ^ seed)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_put_on_one_node_is_fetched_intact_from_every_other() {
    const N: usize = 30;
    let first = node(0, None).await;
    let mut nodes = vec![first.clone()];
    for i in 1..N {
        nodes.push(node(i, Some(&first)).await);
    }
    within(60, "every node joins", async {
        while nodes.iter().any(|n| n.known_hosts().len() < 3) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    // 2.5 MiB: ten chunks of 256 KiB and a manifest.
    let data = pattern(2_500_000, 7);
    let key = within(60, "put", nodes[5].put(data.clone())).await.unwrap();
    for (i, n) in nodes.iter().enumerate() {
        let got = within(60, "get", n.get(key))
            .await
            .unwrap_or_else(|e| panic!("node {i} cannot fetch: {e}"));
        assert!(got == data, "node {i} got other bytes");
    }
    // The blobs live on their closest nodes, not only on the sharer: with
    // the sharer gone, a node that never fetched still gets everything.
    let fresh = node(40, Some(&nodes[1])).await;
    within(20, "fresh joins", async {
        while fresh.known_hosts().len() < 3 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    nodes[5].shutdown().await;
    let got = within(60, "get without the sharer", fresh.get(key))
        .await
        .unwrap();
    assert!(got == data);
    // A key nobody stored: a clear error.
    let missing = butter::content::Hash([9; 32]);
    let err = within(60, "missing", fresh.get(missing)).await.unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
}

#[tokio::test]
async fn a_restarted_node_serves_what_it_stored() {
    let dir = tempfile::tempdir().unwrap();
    let data = pattern(700_000, 3);
    let key = {
        let a = Node::builder()
            .listen(at(50))
            .lan_discovery(false)
            .data_dir(dir.path())
            .spawn()
            .await
            .unwrap();
        let key = within(20, "put", a.put(data.clone())).await.unwrap();
        a.shutdown().await;
        key
    };
    let a = Node::builder()
        .listen(at(50))
        .lan_discovery(false)
        .data_dir(dir.path())
        .spawn()
        .await
        .unwrap();
    assert!(a.storage().used >= 700_000);
    let b = node(51, Some(&a)).await;
    b.add_known_host(a.addr()).await.unwrap();
    let got = within(20, "get after a restart", b.get(key)).await.unwrap();
    assert!(got == data);
}

#[tokio::test]
async fn a_store_over_budget_refuses_with_a_clear_error_and_keeps_nothing() {
    let a = Node::builder()
        .listen(at(52))
        .lan_discovery(false)
        .storage(1_000_000)
        .spawn()
        .await
        .unwrap();
    let err = a.put(pattern(2_000_000, 1)).await.unwrap_err();
    assert!(matches!(err, Error::StorageFull { .. }), "{err}");
    assert_eq!(a.storage().used, 0);
    a.put(pattern(500_000, 2)).await.unwrap();
    assert!(a.storage().used >= 500_000);
}
