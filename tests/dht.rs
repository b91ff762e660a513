//! The DHT on a real network: 50 nodes on loopback (each at its own
//! 127.0.0.x, so per-address limits hold as they would between hosts),
//! bootstrapped from one; lookups, records and provider records across it;
//! hostile messages refused while the node keeps serving.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use butter::dht::messages::{Closer, FindNode, Store, FIND_NODE_ROUTE, STORE_ROUTE};
use butter::dht::record::Record;
use butter::{Error, Identity, Node, NodeId};
use common::within;
use futures_util::StreamExt;

fn at(i: usize) -> SocketAddr {
    format!("127.0.0.{}:0", i + 1).parse().unwrap()
}

async fn node(i: usize, bootstrap: Option<&Node>) -> Node {
    let mut b = Node::builder().listen(at(i)).lan_discovery(false);
    if let Some(boot) = bootstrap {
        b = b.bootstrap(boot.addr());
    }
    b.spawn().await.expect("node starts")
}

/// Nodes fewer than `min` other nodes hold in their tables yet (a
/// newcomer is verified by those it asked before they keep it).
fn kept_by_fewer_than(nodes: &[Node], min: usize) -> Vec<usize> {
    let mut held: std::collections::HashMap<NodeId, usize> = Default::default();
    for n in nodes {
        for h in n.known_hosts() {
            *held.entry(h.addr.id).or_default() += 1;
        }
    }
    (0..nodes.len())
        .filter(|i| held.get(&nodes[*i].id()).copied().unwrap_or(0) < min)
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_nodes_bootstrapped_from_one_find_each_other_and_share_records() {
    const N: usize = 50;
    let first = node(0, None).await;
    let mut nodes = vec![first.clone()];
    for i in 1..N {
        nodes.push(node(i, Some(&first)).await);
    }
    // Joined: each node's lookup for its own id was answered, so the
    // nodes closest to it hold it (they take in whoever asks them). No
    // waiting for tables to settle: lookups must find a node from then on.
    within(60, "every node joins", async {
        for n in &nodes {
            n.dht().joined().await.unwrap();
        }
    })
    .await;
    let sizes: Vec<usize> = nodes.iter().map(|n| n.known_hosts().len()).collect();
    println!("table sizes after joining: {sizes:?}");

    // Every node finds every other id.
    let mut latencies = Vec::new();
    let mut hops = Vec::new();
    let mut messages = Vec::new();
    let pairs: Vec<(usize, usize)> = (0..N)
        .flat_map(|a| (0..N).filter(move |b| *b != a).map(move |b| (a, b)))
        .collect();
    let ids: Vec<NodeId> = nodes.iter().map(|n| n.id()).collect();
    let results = within(
        600,
        "every node looks up every other",
        futures_util::stream::iter(pairs.iter().map(|&(a, b)| {
            let (node, id) = (nodes[a].clone(), ids[b]);
            async move {
                let t = Instant::now();
                (a, b, node.dht().find_node(id).await, t.elapsed())
            }
        }))
        .buffer_unordered(16)
        .collect::<Vec<_>>(),
    )
    .await;
    let mut failed = Vec::new();
    for (a, b, result, took) in results {
        match result {
            Ok(found) => {
                assert_eq!(found.addr.id, ids[b]);
                latencies.push(took);
                hops.push(found.report.hops);
                messages.push(found.report.queries);
            }
            Err(e) => failed.push(format!("{a}->{b}: {e}")),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} find_node lookups failed: {:?}; nodes kept by fewer than 3 others now: {:?}",
        failed.len(),
        pairs.len(),
        &failed[..failed.len().min(10)],
        kept_by_fewer_than(&nodes, 3)
    );
    latencies.sort();
    hops.sort();
    messages.sort();
    println!(
        "find_node on {N} nodes: {} lookups, latency median {:?} p99 {:?}; hops median {} p99 {}; messages median {} p99 {}",
        latencies.len(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        hops[hops.len() / 2],
        hops[(hops.len() - 1) * 99 / 100],
        messages[messages.len() / 2],
        messages[(messages.len() - 1) * 99 / 100],
    );

    // A newcomer is found from every node as soon as it has joined (no
    // settling): its self-lookup reached the nodes closest to it, which
    // took it in when it asked.
    for (round, boot) in [(0usize, 0usize), (1, 17)] {
        let newcomer = node(N + round, Some(&nodes[boot])).await;
        within(30, "the newcomer joins", newcomer.dht().joined())
            .await
            .unwrap();
        let found = within(
            60,
            "every node looks the newcomer up",
            futures_util::stream::iter(nodes.iter().map(|n| {
                let n = n.clone();
                let id = newcomer.id();
                async move { n.dht().find_node(id).await }
            }))
            .buffer_unordered(16)
            .collect::<Vec<_>>(),
        )
        .await;
        let missed: Vec<String> = found
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.as_ref().err().map(|e| format!("{i}: {e}")))
            .collect();
        assert!(
            missed.is_empty(),
            "newcomer {round} (bootstrapped from node {boot}) missed by {} of {N} right after joining: {missed:?}",
            missed.len()
        );
    }

    // A record put on one node is read on every other.
    let put = within(
        30,
        "put a record",
        nodes[7]
            .dht()
            .put_record(b"greeting", b"hello, network".to_vec()),
    )
    .await
    .unwrap();
    assert!(
        put.stored >= 10,
        "only {} nodes took the record",
        put.stored
    );
    for (i, n) in nodes.iter().enumerate() {
        let got = within(30, "get the record", n.dht().get_record(put.key))
            .await
            .unwrap_or_else(|e| panic!("node {i} cannot read the record: {e}"));
        assert_eq!(got.record.value, b"hello, network");
        assert_eq!(got.record.publisher, nodes[7].id());
    }

    // A provider record is found from anywhere.
    let content = NodeId::from_bytes(*blake3::hash(b"some content").as_bytes());
    let provided = within(30, "provide", nodes[13].dht().provide(content))
        .await
        .unwrap();
    assert!(provided.stored >= 10, "{}", provided.stored);
    for n in nodes.iter().step_by(7) {
        let found: Vec<_> = within(30, "providers", n.dht().providers(content).collect()).await;
        assert!(
            found.iter().any(|p| p.id == nodes[13].id()),
            "the provider was not found: {found:?}"
        );
    }
    // Nothing provides what nobody announced.
    let none = NodeId::from_bytes([0x42; 32]);
    let found: Vec<_> = within(30, "no providers", nodes[3].dht().providers(none).collect()).await;
    assert!(found.is_empty());
    assert!(matches!(
        within(30, "missing record", nodes[3].dht().get_record(none)).await,
        Err(Error::NotFound(_))
    ));
}

#[tokio::test]
async fn records_signed_by_another_key_or_older_are_refused() {
    let a = node(60, None).await;
    let b = node(61, Some(&a)).await;
    b.add_known_host(a.addr()).await.unwrap();
    let put = within(10, "put", b.dht().put_record(b"name", b"v2".to_vec()))
        .await
        .unwrap();
    assert!(put.stored >= 1);
    let held = within(10, "get", a.dht().get_record(put.key))
        .await
        .unwrap()
        .record;
    // An older sequence number, properly signed by b's key, is refused.
    let older = Record::sign(
        b.identity(),
        b"name",
        b"v1".to_vec(),
        held.seq - 1,
        held.expires,
    )
    .unwrap();
    let refused = b
        .call_typed::<_, butter::dht::messages::Stored>(
            a.addr(),
            STORE_ROUTE,
            &Store { record: older },
        )
        .await;
    assert!(
        matches!(refused, Err(Error::Remote(ref m)) if m.contains("refused")),
        "{refused:?}"
    );
    // A record claiming b as publisher but signed by another key is refused.
    let mallory = Identity::generate();
    let mut forged = Record::sign(
        &mallory,
        b"name",
        b"evil".to_vec(),
        held.seq + 1,
        held.expires,
    )
    .unwrap();
    forged.publisher = b.id();
    let refused = b
        .call_typed::<_, butter::dht::messages::Stored>(
            a.addr(),
            STORE_ROUTE,
            &Store { record: forged },
        )
        .await;
    assert!(matches!(refused, Err(Error::Remote(_))), "{refused:?}");
    // The held record is untouched.
    let still = within(10, "get", a.dht().get_record(put.key))
        .await
        .unwrap()
        .record;
    assert_eq!(still.value, b"v2");
    assert_eq!(still.seq, held.seq);
}

#[tokio::test]
async fn oversize_or_malformed_dht_messages_get_typed_errors_and_the_node_serves_on() {
    let a = node(62, None).await;
    let b = node(63, None).await;
    // Not a FindNode at all.
    let bad = b.call(a.addr(), FIND_NODE_ROUTE, vec![0xff; 40]).await;
    assert!(
        matches!(bad, Err(Error::Malformed(_)) | Err(Error::Remote(_))),
        "{bad:?}"
    );
    // Over the route's body limit: refused before it is read.
    let big = b.call(a.addr(), FIND_NODE_ROUTE, vec![0u8; 100_000]).await;
    assert!(matches!(big, Err(Error::TooLarge { .. })), "{big:?}");
    let big = b.call(a.addr(), STORE_ROUTE, vec![0u8; 1 << 20]).await;
    assert!(matches!(big, Err(Error::TooLarge { .. })), "{big:?}");
    // And it still answers a proper request.
    let ok: butter::dht::messages::Closer = within(
        10,
        "find_node",
        b.call_typed(
            a.addr(),
            FIND_NODE_ROUTE,
            &FindNode {
                target: b.id(),
                serving: false,
            },
        ),
    )
    .await
    .unwrap();
    assert!(ok.contacts.is_empty());
    // A guest never enters the table of the node it asks.
    assert!(!a.known_hosts().iter().any(|h| h.addr.id == b.id()));
}

/// Identities are free: a flood of records, each from a fresh identity but
/// all from one address, is cut at the per-source bound with a typed
/// refusal; another address still stores, and the node keeps answering.
#[tokio::test]
async fn a_flood_of_records_from_one_address_is_bounded_and_the_node_serves_on() {
    use butter::dht::messages::Stored;
    let a = node(64, None).await;
    let b = node(65, None).await;
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let per_source = butter::dht::store::StoreLimits::default().per_source;
    let (mut stored, mut refused) = (0, 0);
    for _ in 0..per_source + 40 {
        let record = Record::sign(&Identity::generate(), b"x", vec![7; 16], 1, expires).unwrap();
        match within(
            10,
            "store",
            b.call_typed::<_, Stored>(a.addr(), STORE_ROUTE, &Store { record }),
        )
        .await
        {
            Ok(_) => stored += 1,
            Err(Error::Remote(m)) if m.contains("refused") => refused += 1,
            Err(e) => panic!("not a refusal: {e}"),
        }
    }
    assert_eq!(stored, per_source);
    assert_eq!(refused, 40);
    // Another address (same /24: its share is twice one address's) stores.
    let c = node(66, None).await;
    let record = Record::sign(&Identity::generate(), b"x", vec![7; 16], 1, expires).unwrap();
    within(
        10,
        "store from elsewhere",
        c.call_typed::<_, Stored>(a.addr(), STORE_ROUTE, &Store { record }),
    )
    .await
    .unwrap();
    let _: butter::dht::messages::Closer = within(
        10,
        "still serving",
        b.call_typed(
            a.addr(),
            FIND_NODE_ROUTE,
            &FindNode {
                target: a.id(),
                serving: false,
            },
        ),
    )
    .await
    .unwrap();
}

/// A publisher that stays up keeps its record alive past the record's own
/// lifetime: it signs it again (higher sequence number, new expiry) and
/// stores it again every republish interval.
#[tokio::test]
async fn records_are_republished_before_they_expire() {
    let a = node(67, None).await;
    let b = Node::builder()
        .listen(at(68))
        .lan_discovery(false)
        .dht(butter::DhtSettings {
            bootstrap: vec![a.addr()],
            record_ttl: Duration::from_secs(2),
            republish_interval: Duration::from_millis(600),
            ..Default::default()
        })
        .spawn()
        .await
        .unwrap();
    b.add_known_host(a.addr()).await.unwrap();
    let put = within(10, "put", b.dht().put_record(b"alive", b"yes".to_vec()))
        .await
        .unwrap();
    let first = within(10, "get", a.dht().get_record(put.key))
        .await
        .unwrap()
        .record;
    // Well past the first copy's expiry, a holds a newer one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = within(10, "get again", a.dht().get_record(put.key))
        .await
        .expect("the record was republished");
    // Held by a itself (no lookup needed), newer than the first.
    assert_eq!(got.report.queries, 0);
    let later = got.record;
    assert!(later.seq > first.seq, "{} <= {}", later.seq, first.seq);
    assert_eq!(later.value, b"yes");
}

/// A node restarted on its data dir still holds the records and provider
/// records it held for others (kept as a snapshot in its store), and serves
/// them with their publisher gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_still_holds_records_and_providers() {
    let dir = tempfile::tempdir().unwrap();
    let holder = || {
        Node::builder()
            .listen(at(200))
            .lan_discovery(false)
            .data_dir(dir.path())
            .spawn()
    };
    let a = holder().await.unwrap();
    let b = node(201, Some(&a)).await;
    within(10, "b knows a", b.add_known_host(a.addr()))
        .await
        .unwrap();
    within(10, "a knows b", a.add_known_host(b.addr()))
        .await
        .unwrap();
    let put = within(
        30,
        "put",
        b.dht().put_record(b"kept", b"across restarts".to_vec()),
    )
    .await
    .unwrap();
    assert!(put.stored >= 1);
    let content = NodeId::from_bytes(*blake3::hash(b"kept content").as_bytes());
    let provided = within(30, "provide", b.dht().provide(content))
        .await
        .unwrap();
    assert!(provided.stored >= 1);
    let b_id = b.id();
    within(10, "b leaves", b.shutdown()).await;
    within(10, "a stops", a.shutdown()).await;
    drop(a);

    let a = holder().await.unwrap();
    // Held here: answered without asking anyone (no host is known yet).
    assert!(a.known_hosts().is_empty());
    let got = within(10, "get", a.dht().get_record(put.key))
        .await
        .unwrap();
    assert_eq!(got.record.value, b"across restarts");
    assert_eq!(got.record.publisher, b_id);
    let providers: Vec<_> = within(10, "providers", a.dht().providers(content).collect()).await;
    assert!(
        providers.iter().any(|p| p.id == b_id),
        "the provider record is gone: {providers:?}"
    );
    // And served to others.
    let c = node(202, Some(&a)).await;
    within(10, "c knows a", c.add_known_host(a.addr()))
        .await
        .unwrap();
    let got = within(30, "get from c", c.dht().get_record(put.key))
        .await
        .unwrap();
    assert_eq!(got.record.value, b"across restarts");
}

/// `who` asks `at` for the nodes closest to its own id, as a joining
/// node's self-lookup does (`serving`: whether it says it serves the DHT).
async fn ask_for_itself(who: &Node, at: &Node, serving: bool) -> butter::Result<Closer> {
    let find = FindNode {
        target: who.id(),
        serving,
    };
    who.call_typed(at.addr(), FIND_NODE_ROUTE, &find).await
}

#[tokio::test]
async fn a_node_holds_a_serving_asker_by_the_time_it_answers_and_a_guest_never() {
    let a = node(70, None).await;
    let asker = node(71, None).await;
    let guest = node(72, None).await;
    assert!(!asker.dht().is_joined(), "alone, nothing to join");
    within(10, "the guest asks", ask_for_itself(&guest, &a, false))
        .await
        .unwrap();
    within(10, "the asker asks", ask_for_itself(&asker, &a, true))
        .await
        .unwrap();
    // No wait: a newcomer's self-lookup ends with these answers, and a
    // lookup for it may start right then.
    let held: Vec<NodeId> = a.known_hosts().iter().map(|h| h.addr.id).collect();
    assert!(held.contains(&asker.id()), "the serving asker is held");
    assert!(!held.contains(&guest.id()), "a guest is never taken in");
    let entry = a
        .known_hosts()
        .into_iter()
        .find(|h| h.addr.id == asker.id())
        .unwrap();
    assert_eq!(
        entry.addr.addrs,
        vec![asker.local_addr()],
        "at its proven address"
    );
}

#[tokio::test]
async fn a_node_has_joined_once_its_self_lookup_is_answered_and_is_found_then() {
    let a = node(73, None).await;
    let b = node(74, Some(&a)).await;
    within(10, "b joins", b.dht().joined()).await.unwrap();
    assert!(b.dht().is_joined());
    // a learned b from b's self-lookup: it has joined too, once its own
    // self-lookup (started by b's arrival) is answered.
    within(10, "a joins", a.dht().joined()).await.unwrap();
    let c = node(75, Some(&b)).await;
    within(10, "c joins", c.dht().joined()).await.unwrap();
    for n in [&a, &b] {
        let found = within(10, "find c", n.dht().find_node(c.id()))
            .await
            .unwrap();
        assert_eq!(found.addr.id, c.id());
    }
    // A guest (not serving the DHT) is never held by anyone: it never joins.
    let guest = Node::builder()
        .listen(at(77))
        .lan_discovery(false)
        .bootstrap(a.addr())
        .dht(butter::DhtSettings {
            serve: false,
            ..Default::default()
        })
        .spawn()
        .await
        .unwrap();
    assert!(matches!(
        within(10, "a guest's join", guest.dht().joined()).await,
        Err(Error::Config(_))
    ));
    // Shut down, a node stops waiting.
    let d = node(76, None).await;
    let waiting = tokio::spawn({
        let d = d.clone();
        async move { d.dht().joined().await }
    });
    d.shutdown().await;
    assert!(matches!(
        within(10, "the wait ends", waiting).await.unwrap(),
        Err(Error::Shutdown)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn askers_from_one_network_take_at_most_its_share_of_the_table() {
    // Without the LAN exemption, loopback counts as one /24 like any
    // public network: many identities from it asking at once (taken in
    // without a verification queue) still stop at the table's share per
    // network.
    let settings = butter::MembershipSettings {
        lan_exempt: false,
        ..Default::default()
    };
    let limit = settings.per_table_site;
    let a = Node::builder()
        .listen(at(80))
        .lan_discovery(false)
        .membership(settings)
        .spawn()
        .await
        .unwrap();
    // More than the share, fewer than the connections one address may hold.
    let askers: Vec<Node> =
        futures_util::future::join_all((0..limit + 5).map(|_| node(81, None))).await;
    within(
        30,
        "every identity asks",
        futures_util::future::join_all(askers.iter().map(|n| ask_for_itself(n, &a, true))),
    )
    .await
    .into_iter()
    .for_each(|r| {
        r.unwrap();
    });
    let held = a.known_hosts().len();
    assert!(
        held > 0 && held <= limit,
        "{held} of one network held, share {limit}"
    );
}
