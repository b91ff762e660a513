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

/// Every node knows every other (what lookups would do over time, at once).
async fn complete_tables(nodes: &[Node]) {
    for a in nodes {
        for b in nodes {
            if a.id() != b.id() {
                within(10, "known", a.add_known_host(b.addr()))
                    .await
                    .unwrap();
            }
        }
    }
}

/// Bytes that never repeat (identical chunks would be stored once).
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    let mut out = vec![0u8; n];
    blake3::Hasher::new()
        .update(&[seed])
        .finalize_xof()
        .fill(&mut out);
    out
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
        for n in &nodes {
            n.dht().joined().await.unwrap();
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
    within(20, "fresh joins", fresh.dht().joined())
        .await
        .unwrap();
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

/// A file shared from disk is fetched into a file, byte-identical; a fetch
/// interrupted (its only holder went away midway), started again once the
/// holder is back, fetches only the chunks it lacks.
#[tokio::test]
async fn files_round_trip_and_an_interrupted_fetch_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("source.bin");
    let data = pattern(10 << 20, 5); // 40 chunks
    std::fs::write(&src, &data).unwrap();
    let holder_dir = dir.path().join("holder");
    let listen: SocketAddr = "127.0.1.61:47061".parse().unwrap();
    // (Binding again waits until the stopped holder released the port.)
    let holder = |dir: std::path::PathBuf| async move {
        loop {
            match Node::builder()
                .listen(listen)
                .lan_discovery(false)
                .data_dir(dir.clone())
                .spawn()
                .await
            {
                Ok(node) => return node,
                Err(Error::Bind { source, .. })
                    if source.kind() == std::io::ErrorKind::AddrInUse =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("the holder does not start: {e}"),
            }
        }
    };
    let a = holder(holder_dir.clone()).await;
    let key = within(30, "put_file", a.put_file(&src)).await.unwrap();
    // The fetcher is a guest (no replica is pushed to it, it holds only
    // what it fetched) with a store on disk.
    let b = Node::builder()
        .listen(at(62))
        .lan_discovery(false)
        .store_path(dir.path().join("fetcher.redb"))
        .dht(butter::DhtSettings {
            serve: false,
            bootstrap: vec![a.addr()],
            ..Default::default()
        })
        .spawn()
        .await
        .unwrap();
    let out = dir.path().join("fetched.bin");
    // The holder leaves after the fourth chunk arrived.
    let leaving = a.clone();
    let mut gone = false;
    let first = within(
        60,
        "the interrupted fetch",
        b.get_to_file_with(key, &out, move |f| {
            if f.chunks_fetched >= 4 && !gone {
                gone = true;
                let a = leaving.clone();
                tokio::spawn(async move { a.shutdown().await });
            }
        }),
    )
    .await;
    assert!(
        first.is_err(),
        "the fetch survived its only holder: {first:?}"
    );
    assert!(!out.exists(), "a partial file under the final name");
    drop(a);
    // The holder is back (it kept what it stored); the fetch starts again.
    let a = within(10, "the holder restarts", holder(holder_dir)).await;
    let report = within(60, "resumed", b.get_to_file(key, &out))
        .await
        .unwrap();
    println!("resumed fetch: {report:?}");
    assert_eq!(std::fs::read(&out).unwrap(), data);
    assert_eq!(report.size, data.len() as u64);
    assert_eq!(report.name.as_deref(), Some("source.bin"));
    assert_eq!(report.chunks_held + report.chunks_fetched, 40);
    assert!(report.chunks_held >= 4, "{report:?}");
    assert!(
        report.chunks_fetched > 0,
        "nothing was left to resume: {report:?}"
    );
    drop(a);
}

/// Kill r − 1 of a blob's holders: it is still fetched, and the surviving
/// holder pushes it to the new closest nodes, so it is back on r live
/// holders without anyone asking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_whose_holders_die_is_repaired_back_to_r() {
    use butter::peers::table::distance;
    const N: usize = 8;
    let first = node(70, None).await;
    let mut nodes = vec![first.clone()];
    for i in 1..N {
        nodes.push(node(70 + i, Some(&first)).await);
    }
    // Every table complete (what lookups would do over time, at once).
    complete_tables(&nodes).await;
    let sharer = 0;
    let key = within(30, "put", nodes[sharer].put(pattern(100_000, 9)))
        .await
        .unwrap();
    let mut by_distance: Vec<usize> = (0..N).collect();
    by_distance.sort_by_key(|&i| distance(&nodes[i].id(), &key.to_key()));
    let holders: Vec<usize> = by_distance[..3].to_vec();
    for &h in &holders {
        assert!(
            nodes[h].holds(key).await.unwrap(),
            "holder {h} lacks the blob"
        );
    }
    // Two of the three die (not the sharer: it would be one more copy).
    let dying: Vec<usize> = holders
        .iter()
        .copied()
        .filter(|&h| h != sharer)
        .take(2)
        .collect();
    for &d in &dying {
        nodes[d].shutdown().await;
    }
    let live: Vec<usize> = by_distance
        .iter()
        .copied()
        .filter(|i| !dying.contains(i))
        .collect();
    // Still fetched...
    let reader = live[live.len() - 1];
    let got = within(30, "fetch after the deaths", nodes[reader].get(key))
        .await
        .unwrap();
    assert_eq!(got.len(), 100_000);
    // ...and back on the three closest live nodes.
    let new_holders: Vec<usize> = live[..3].to_vec();
    within(30, "repaired to three live holders", async {
        loop {
            let mut all = true;
            for &h in &new_holders {
                all &= nodes[h].holds(key).await.unwrap();
            }
            if all {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let repairs: u64 = live.iter().map(|&i| nodes[i].stats().repairs).sum();
    let bytes: u64 = live.iter().map(|&i| nodes[i].stats().repair_bytes).sum();
    println!("repaired: {repairs} pushes, {bytes} bytes");
    assert!(repairs >= 1);
}

/// A serving node that fetched a whole item announces itself as a provider
/// of it; when every node that held the item's blobs is gone (crashed at
/// once, before anyone repaired), a fresh node still gets it from that
/// provider. Identities are chosen so that the outcome does not depend on
/// chance: the item's two blobs and every other node sit in one half of
/// the key space, the provider in the other (never among the closest).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_fetched_an_item_serves_it_when_every_holder_is_gone() {
    use butter::content::Hash;
    use butter::Identity;
    const N: usize = 16;
    let top = |b: &[u8; 32]| b[0] >> 7;
    // No liveness checks during the test: the holders' deaths go unnoticed
    // (nothing is repaired), so only the provider can serve.
    let quiet = || butter::MembershipSettings {
        neighbours: 0,
        liveness_interval: Duration::from_secs(600),
        ..Default::default()
    };
    let in_half = |half: u8| loop {
        let id = Identity::generate();
        if top(id.id().as_bytes()) == half {
            return id;
        }
    };
    let spawn =
        |i: usize, id: Identity, boot: Option<butter::NodeAddr>, dir: Option<&std::path::Path>| {
            let mut b = Node::builder()
                .listen(at(100 + i))
                .lan_discovery(false)
                .identity(id)
                .membership(quiet());
            if let Some(boot) = boot {
                b = b.bootstrap(boot);
            }
            if let Some(dir) = dir {
                b = b.data_dir(dir);
            }
            b.spawn()
        };
    // One chunk and its manifest, both keys in one half (found by trying
    // contents on a lone node, which only stores them).
    let lone = node(99, None).await;
    let mut found = None;
    for seed in 0u8.. {
        let data = pattern(200_000, seed);
        let key = within(10, "lone put", lone.put(data.clone()))
            .await
            .unwrap();
        let half = top(&key.0);
        if top(&Hash::of(&data).0) == half {
            found = Some((data, key, half));
            break;
        }
    }
    let (data, key, half) = found.unwrap();
    let first = spawn(0, in_half(half), None, None).await.unwrap();
    let mut nodes = vec![first.clone()];
    for i in 1..N {
        nodes.push(
            spawn(i, in_half(half), Some(first.addr()), None)
                .await
                .unwrap(),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let fetcher = spawn(N, in_half(1 - half), Some(first.addr()), Some(dir.path()))
        .await
        .unwrap();
    nodes.push(fetcher.clone());
    complete_tables(&nodes).await;
    assert_eq!(
        within(30, "put", nodes[0].put(data.clone())).await.unwrap(),
        key
    );
    let got = within(60, "fetch", fetcher.get(key)).await.unwrap();
    assert!(got == data);
    // Announced: another node finds the fetcher among the providers.
    within(30, "announced", async {
        loop {
            let found: Vec<_> =
                futures_util::StreamExt::collect::<Vec<_>>(nodes[1].dht().providers(key.to_key()))
                    .await;
            if found.iter().any(|p| p.id == fetcher.id()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    // Every node holding a blob, the sharer first, crashes (nothing leaves
    // its socket); the fetcher and the nodes holding nothing remain.
    let mut crashed = 0;
    let mut live = Vec::new();
    for n in nodes {
        if n.id() != fetcher.id() && n.storage().used > 0 {
            n.crash();
            crashed += 1;
        } else {
            live.push(n);
        }
    }
    assert!((3..=7).contains(&crashed), "{crashed} nodes held blobs");
    let fresh = spawn(N + 1, Identity::generate(), Some(live[0].addr()), None)
        .await
        .unwrap();
    for n in &live {
        within(10, "known", fresh.add_known_host(n.addr()))
            .await
            .unwrap();
    }
    let out = tempfile::tempdir().unwrap();
    let path = out.path().join("item");
    let fetched = within(
        120,
        "fetch with every holder gone",
        fresh.get_to_file(key, &path),
    )
    .await
    .unwrap();
    assert!(std::fs::read(&path).unwrap() == data);
    println!(
        "{crashed} holders crashed; {} chunk fetched; {} blobs from the provider",
        fetched.chunks_fetched, fetched.chunks_from_providers
    );
    assert_eq!(
        fetched.chunks_from_providers, 2,
        "the chunk and its manifest"
    );
}
