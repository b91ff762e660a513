//! Similarity search on a real network on loopback: documents indexed from
//! many nodes are found by near-duplicates and by a few of their words,
//! not by unrelated queries; index entries survive a holder's death and
//! expire when nobody renews them.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use butter::content::Hash;
use butter::{Document, Node, SearchSettings};
use common::within;
use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

fn at(i: usize) -> SocketAddr {
    format!("127.0.3.{}:0", i + 1).parse().unwrap()
}

async fn node(i: usize, bootstrap: Option<&Node>, search: SearchSettings) -> Node {
    let mut b = Node::builder()
        .listen(at(i))
        .lan_discovery(false)
        .search(search);
    if let Some(boot) = bootstrap {
        b = b.bootstrap(boot.addr());
    }
    b.spawn().await.expect("node starts")
}

async fn network(n: usize, search: SearchSettings) -> Vec<Node> {
    let first = node(0, None, search.clone()).await;
    let mut nodes = vec![first.clone()];
    for i in 1..n {
        nodes.push(node(i, Some(&first), search.clone()).await);
    }
    // Every node knows every other (what lookups would do over time).
    for a in &nodes {
        for b in &nodes {
            if a.id() != b.id() {
                within(10, "known", a.add_known_host(b.addr()))
                    .await
                    .unwrap();
            }
        }
    }
    nodes
}

/// A generated vocabulary: pronounceable made-up words.
fn vocabulary(rng: &mut StdRng, n: usize) -> Vec<String> {
    const C: &[u8] = b"bcdfghjklmnprstvz";
    const V: &[u8] = b"aeiou";
    let mut out = std::collections::BTreeSet::new();
    while out.len() < n {
        let syllables = rng.random_range(2..4);
        let mut w = String::new();
        for _ in 0..syllables {
            w.push(C[rng.random_range(0..C.len())] as char);
            w.push(V[rng.random_range(0..V.len())] as char);
        }
        out.insert(w);
    }
    out.into_iter().collect()
}

/// A document: 50 to 80 common words (skewed: some far more frequent)
/// and three words of its own, each three times (among its most frequent,
/// so among the words it is published under).
fn document(rng: &mut StdRng, common: &[String], own: &[String]) -> String {
    let mut words: Vec<String> = (0..rng.random_range(50..80))
        .map(|_| {
            // Squaring skews the draw towards the start of the list.
            let x: f64 = rng.random();
            common[(x * x * common.len() as f64) as usize].clone()
        })
        .collect();
    for w in own {
        for _ in 0..3 {
            let at = rng.random_range(0..=words.len());
            words.insert(at, w.clone());
        }
    }
    words.join(" ")
}

fn key_of(text: &str) -> Hash {
    Hash(*blake3::hash(text.as_bytes()).as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_are_found_by_near_duplicates_and_by_their_words() {
    const N: usize = 30;
    const DOCS: usize = 1000;
    let nodes = network(N, SearchSettings::default()).await;
    let mut rng = StdRng::seed_from_u64(19);
    let vocab = vocabulary(&mut rng, 2000 + 3 * DOCS);
    let (common, rare) = vocab.split_at(2000);
    let docs: Vec<(String, Vec<String>)> = (0..DOCS)
        .map(|i| {
            let own = rare[3 * i..3 * i + 3].to_vec();
            (document(&mut rng, common, &own), own)
        })
        .collect();
    // Indexed from random nodes, many at once.
    let started = std::time::Instant::now();
    let jobs: Vec<_> = docs
        .iter()
        .enumerate()
        .map(|(i, (text, _))| {
            let node = nodes[rng.random_range(0..N)].clone();
            let text = text.clone();
            async move {
                let doc = Document::text(text.clone()).named(format!("doc-{i}.txt"));
                node.index(key_of(&text), text.len() as u64, &doc).await
            }
        })
        .collect();
    let indexed: Vec<_> = within(
        600,
        "indexing",
        futures_util::stream::iter(jobs)
            .buffer_unordered(32)
            .collect::<Vec<_>>(),
    )
    .await;
    let mut full = 0;
    for i in indexed {
        let i = i.expect("indexed");
        assert_eq!(i.bands_placed, i.bands, "{i:?}");
        // Up to the settings' number of terms; common words (full keys)
        // give way to the next.
        let most = SearchSettings::default().terms_per_doc;
        assert!(i.terms_placed >= 1 && i.terms_placed <= most, "{i:?}");
        full += i.terms_full;
    }
    eprintln!(
        "{DOCS} documents indexed in {:.1} s ({full} common words passed over)",
        started.elapsed().as_secs_f64()
    );

    let mut messages = Vec::new();
    // Near-duplicates: three words of each changed; the original is in
    // the top 3.
    for d in (0..DOCS).step_by(50) {
        let (text, _) = &docs[d];
        let mut words: Vec<&str> = text.split(' ').collect();
        for _ in 0..3 {
            let at = rng.random_range(0..words.len());
            words[at] = &common[rng.random_range(0..common.len())];
        }
        let query = words.join(" ");
        let asker = &nodes[rng.random_range(0..N)];
        let found = within(30, "search", asker.search(query.as_str(), 10))
            .await
            .unwrap();
        messages.push(found.report.messages);
        let place = found.hits.iter().position(|h| h.key == key_of(text));
        assert!(
            place.is_some_and(|p| p < 3),
            "doc {d}: near-duplicate placed the original at {place:?}; hits {:?}",
            found
                .hits
                .iter()
                .map(|h| (h.name.as_str(), h.distance))
                .collect::<Vec<_>>()
        );
        assert_eq!(found.report.refused, 0);
    }
    // A few distinctive words: the document that has them comes first.
    for d in (7..DOCS).step_by(50) {
        let (text, own) = &docs[d];
        let query = own.join(" ");
        let asker = &nodes[rng.random_range(0..N)];
        let found = within(30, "search", asker.search(query.as_str(), 10))
            .await
            .unwrap();
        messages.push(found.report.messages);
        assert_eq!(
            found.hits.first().map(|h| h.key),
            Some(key_of(text)),
            "doc {d}: words {query:?}"
        );
        assert_eq!(found.hits[0].name, format!("doc-{d}.txt"));
    }
    // Unrelated words: none of the documents above in the top 10.
    let unrelated = "quantum marmalade telescope harbour";
    let found = within(30, "search", nodes[3].search(unrelated, 10))
        .await
        .unwrap();
    for d in (0..DOCS).step_by(50).chain((7..DOCS).step_by(50)) {
        assert!(
            !found.hits.iter().any(|h| h.key == key_of(&docs[d].0)),
            "an unrelated query returned doc {d}"
        );
    }
    messages.sort();
    eprintln!(
        "messages per query: median {}, max {}",
        messages[messages.len() / 2],
        messages[messages.len() - 1]
    );
    assert!(messages[messages.len() - 1] <= 200, "{messages:?}");
    for n in nodes {
        n.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_survive_a_holder_and_expire_unless_renewed() {
    // Entries live 10 s; nodes 0..11 renew theirs only hourly, node 11
    // every second.
    let short = SearchSettings {
        entry_ttl: Duration::from_secs(10),
        republish_interval: Duration::from_secs(3600),
        ..Default::default()
    };
    let mut nodes = network(11, short.clone()).await;
    let renewing = node(
        11,
        Some(&nodes[0]),
        SearchSettings {
            republish_interval: Duration::from_secs(1),
            ..short
        },
    )
    .await;
    for n in &nodes {
        within(10, "known", n.add_known_host(renewing.addr()))
            .await
            .unwrap();
        within(10, "known", renewing.add_known_host(n.addr()))
            .await
            .unwrap();
    }
    let text = "a small library for parsing command line arguments with subcommands, \
                defaults read from the environment and generated help text";
    let key = key_of(text);
    let doc = Document::text(text).keywords(["clapper"]);
    within(30, "index", nodes[0].index(key, 1, &doc))
        .await
        .unwrap();
    let kept = "an image viewer with thumbnails, slideshows and lossless rotation";
    within(
        30,
        "index",
        renewing.index(key_of(kept), 1, &Document::text(kept)),
    )
    .await
    .unwrap();
    let found = within(30, "search", nodes[5].search("clapper", 5))
        .await
        .unwrap();
    assert_eq!(found.hits.first().map(|h| h.key), Some(key));
    assert_eq!(found.hits[0].holders[0].id, nodes[0].id());

    // Two of the three holders of the keyword's key crash (not the
    // publisher): the survivor puts the entry back on three live nodes.
    let term = butter::search::term_key("clapper");
    let holders: Vec<usize> = (1..nodes.len())
        .filter(|i| nodes[*i].holds_index_key(&term))
        .collect();
    assert!(holders.len() >= 2, "holders {holders:?}");
    for i in holders.iter().rev().take(2) {
        nodes.remove(*i).crash();
    }
    common::eventually(30, "the keyword's entries back on 3 live nodes", || {
        nodes
            .iter()
            .chain([&renewing])
            .filter(|n| n.holds_index_key(&term))
            .count()
            >= 3
    })
    .await;
    let found = within(30, "search", nodes[2].search("clapper", 5))
        .await
        .unwrap();
    assert_eq!(found.hits.first().map(|h| h.key), Some(key));

    // Nobody renews the first entry: gone once its lifetime is up; the
    // renewed one stays.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let found = within(30, "search", nodes[3].search("clapper", 5))
        .await
        .unwrap();
    assert!(
        !found.hits.iter().any(|h| h.key == key),
        "an entry nobody renewed is still found"
    );
    let found = within(30, "search", nodes[3].search(kept, 5))
        .await
        .unwrap();
    assert_eq!(found.hits.first().map(|h| h.key), Some(key_of(kept)));
    for n in nodes.into_iter().chain([renewing]) {
        n.shutdown().await;
    }
}

/// Index reads answered with garbage: entries whose proofs do not verify
/// (a name changed, another publisher's id), an expired one, bytes that
/// are no message at all.
struct Garbage {
    honest: butter::search::Entry,
    reads: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl butter::Service for Garbage {
    fn name(&self) -> &'static str {
        "garbage index"
    }

    fn routes(&self, routes: &mut butter::node::Routes<'_>) {
        let honest = self.honest.clone();
        let reads = self.reads.clone();
        routes.buffered(
            butter::search::messages::GET_ROUTE,
            64,
            move |_req: butter::Request| {
                let honest = honest.clone();
                let n = reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async move {
                    // Bytes that decode to nothing; an empty answer naming
                    // more "closer" nodes than an answer may (made up).
                    if n % 3 == 1 {
                        return Ok(vec![0xff; 300]);
                    }
                    if n % 3 == 2 {
                        let made_up = butter::NodeAddr::new(
                            butter::Identity::generate().id(),
                            ["192.0.2.1:9".parse().unwrap()],
                        );
                        let found = butter::search::messages::IndexFound {
                            entries: Vec::new(),
                            full: false,
                            closer: vec![made_up; butter::search::messages::MAX_CLOSER + 1],
                        };
                        return Ok(postcard::to_stdvec(&found).unwrap());
                    }
                    let mut renamed = honest.clone();
                    renamed.name = "buy now".into();
                    let mut stolen = honest.clone();
                    stolen.publisher = butter::Identity::generate().id();
                    let mut closer = honest.clone();
                    closer.signature = butter::search::Signature(!honest.signature.0);
                    let found = butter::search::messages::IndexFound {
                        entries: vec![renamed, stolen, closer],
                        full: true,
                        closer: Vec::new(),
                    };
                    Ok(postcard::to_stdvec(&found).unwrap())
                }
            },
        );
        routes.typed(
            butter::search::messages::PUT_ROUTE,
            8192,
            |_, _, _put: butter::search::messages::IndexPut| async move {
                Ok(butter::search::messages::PutReply::Stored)
            },
        );
    }
}

/// Index holders that answer garbage cannot make a query fail: what does
/// not verify is dropped and counted, the honest holders' entries rank as
/// they should; a malformed or oversized put gets a clear error and the
/// holder keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_index_holders_is_dropped_and_refused() {
    let mut nodes = network(8, SearchSettings::default()).await;
    let text = "a terminal multiplexer: several shells in one terminal, detached and \
                reattached later, with panes, windows and a scriptable status line";
    let key = key_of(text);
    // An entry the garbage holders mangle (signed by a node of the test).
    let me = butter::Identity::generate();
    let sketch = Document::text(text).sketch().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let honest = butter::search::Entry::sign(
        &me,
        butter::search::Fields::new(
            butter::search::Subject::Item {
                key: [3; 32],
                size: 1,
            },
            sketch.signature,
            now + 3600,
        ),
    )
    .unwrap();
    let reads = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    // Four hostile nodes: serving the DHT, but their index routes answer
    // garbage.
    for i in 0..4 {
        let hostile = Node::builder()
            .listen(at(40 + i))
            .lan_discovery(false)
            .search(SearchSettings {
                serve: false,
                ..Default::default()
            })
            .service(Garbage {
                honest: honest.clone(),
                reads: reads.clone(),
            })
            .spawn()
            .await
            .unwrap();
        for n in &nodes {
            within(10, "known", n.add_known_host(hostile.addr()))
                .await
                .unwrap();
            within(10, "known", hostile.add_known_host(n.addr()))
                .await
                .unwrap();
        }
        nodes.push(hostile);
    }
    within(30, "index", nodes[0].index(key, 1, &Document::text(text)))
        .await
        .unwrap();
    let mut refused = 0;
    for asker in &nodes[1..8] {
        let found = within(30, "search", asker.search(text, 10)).await.unwrap();
        assert_eq!(found.hits.first().map(|h| h.key), Some(key));
        assert!(
            !found.hits.iter().any(|h| h.name == "buy now"),
            "a forged entry was returned"
        );
        assert!(found.hits.iter().all(|h| h.key != Hash([3; 32])));
        refused += found.report.refused;
    }
    let reads = reads.load(std::sync::atomic::Ordering::Relaxed);
    assert!(reads > 0, "no query read from a garbage holder");
    assert!(refused > 0, "{reads} garbage reads, nothing refused");

    // Puts that are not entries, or too large, or forged: typed errors.
    let holder = &nodes[1];
    let client = &nodes[2];
    let garbage = client
        .call(
            holder.addr(),
            butter::search::messages::PUT_ROUTE,
            vec![7u8; 100],
        )
        .await;
    assert!(
        matches!(
            garbage,
            Err(butter::Error::Remote(_)) | Err(butter::Error::Malformed(_))
        ),
        "{garbage:?}"
    );
    let huge = client
        .call(
            holder.addr(),
            butter::search::messages::PUT_ROUTE,
            vec![0u8; 64 << 10],
        )
        .await;
    assert!(
        matches!(huge, Err(butter::Error::TooLarge { .. })),
        "{huge:?}"
    );
    let mut forged = honest.clone();
    forged.name = "changed".into();
    let put = butter::search::messages::IndexPut {
        key: butter::search::Bands::DEFAULT.keys(forged.signature)[0],
        entry: forged,
    };
    let refused = client
        .call_typed::<_, butter::search::messages::PutReply>(
            holder.addr(),
            butter::search::messages::PUT_ROUTE,
            &put,
        )
        .await;
    let e = refused.expect_err("a forged entry is refused").to_string();
    assert!(e.contains("signature"), "{e}");
    // The holder still serves.
    let found = within(30, "search", client.search(text, 10)).await.unwrap();
    assert_eq!(found.hits.first().map(|h| h.key), Some(key));
    for n in nodes {
        n.shutdown().await;
    }
}

/// Who knows what: two nodes index documents on two topics; a query on
/// one topic finds the node that holds it first, through the profile each
/// node publishes of what it indexed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn similar_peers_are_those_holding_similar_things() {
    let nodes = network(10, SearchSettings::default()).await;
    let mut rng = StdRng::seed_from_u64(5);
    let vocab = vocabulary(&mut rng, 200);
    let topics = [&vocab[..100], &vocab[100..]];
    let text = |rng: &mut StdRng, topic: &[String], n: usize| -> String {
        (0..n)
            .map(|_| topic[rng.random_range(0..topic.len())].as_str())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (a, b) = (&nodes[1], &nodes[2]);
    for (node, topic) in [(a, topics[0]), (b, topics[1])] {
        for _ in 0..20 {
            let t = text(&mut rng, topic, 150);
            within(
                30,
                "index",
                node.index(key_of(&t), 1, &Document::text(t.clone())),
            )
            .await
            .unwrap();
        }
    }
    for (owner, topic) in [(a, topics[0]), (b, topics[1])] {
        let query = text(&mut rng, topic, 300);
        within(30, "the owner's profile is found first", async {
            loop {
                let peers = nodes[7].similar_peers(query.as_str(), 5).await.unwrap();
                if peers.first().map(|p| p.peer.id) == Some(owner.id()) {
                    break;
                }
                eprintln!(
                    "owner {}: {:?}",
                    owner.id().short(),
                    peers
                        .iter()
                        .map(|p| (p.peer.id.short(), p.distance))
                        .collect::<Vec<_>>()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
        .await;
    }
    for n in nodes {
        n.shutdown().await;
    }
}

/// A restarted node holds the index entries it held for others, and
/// still knows what it indexed itself (renewed from then on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_entries_survive_a_restart() {
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let start = |i: usize| {
        let dir = dirs[i].path().to_path_buf();
        async move {
            Node::builder()
                .listen(at(60 + i))
                .lan_discovery(false)
                .data_dir(dir)
                .spawn()
                .await
                .unwrap()
        }
    };
    let mut nodes = Vec::new();
    for i in 0..4 {
        nodes.push(start(i).await);
    }
    for a in &nodes {
        for b in &nodes {
            if a.id() != b.id() {
                within(10, "known", a.add_known_host(b.addr()))
                    .await
                    .unwrap();
            }
        }
    }
    let text = "a tool to convert audio files between formats, keeping tags";
    let key = key_of(text);
    within(
        30,
        "index",
        nodes[0].index(key, 1, &Document::text(text).keywords(["transcoder"])),
    )
    .await
    .unwrap();
    let term = butter::search::term_key("transcoder");
    let holder = (1..4)
        .find(|i| nodes[*i].holds_index_key(&term))
        .expect("a holder besides the publisher");
    // Both stop (the snapshot is written on shutdown) and start again.
    for i in [0, holder] {
        let old = nodes.remove(i);
        let id = old.id();
        old.shutdown().await;
        drop(old);
        nodes.insert(i, start(i).await);
        assert_eq!(nodes[i].id(), id);
    }
    assert!(
        nodes[holder].holds_index_key(&term),
        "the entries held for others are back"
    );
    assert!(
        nodes[0].unindex(key),
        "the publisher still knows what it indexed"
    );
    for n in nodes {
        n.shutdown().await;
    }
}

/// A reader whose table knows a single node reaches a key's holders
/// through the closer nodes that node names in its answer (as Kademlia's
/// `FIND_VALUE` does): at most two messages per key, where a lookup
/// before each read would cost several.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_goes_on_to_the_closer_nodes_an_answer_names() {
    let nodes = network(16, SearchSettings::default()).await;
    let text = "a lightweight window manager with tiling layouts, keyboard driven, \
                configured in a small text file and extended with scripts";
    let key = key_of(text);
    within(30, "index", nodes[0].index(key, 1, &Document::text(text)))
        .await
        .unwrap();
    let guest = Node::builder()
        .listen(at(60))
        .lan_discovery(false)
        .dht(butter::DhtSettings {
            serve: false,
            bootstrap: vec![nodes[5].addr()],
            ..Default::default()
        })
        .search(SearchSettings {
            serve: false,
            ..Default::default()
        })
        .spawn()
        .await
        .unwrap();
    within(10, "known", guest.add_known_host(nodes[5].addr()))
        .await
        .unwrap();
    let found = within(30, "search", guest.search(text, 10)).await.unwrap();
    assert_eq!(found.hits.first().map(|h| h.key), Some(key));
    let report = found.report;
    println!("{report:?}");
    assert!(
        report.entries >= butter::search::Bands::DEFAULT.count as usize,
        "every band key's entry read: {report:?}"
    );
    assert!(
        report.messages <= 2 * report.keys,
        "{} messages for {} keys",
        report.messages,
        report.keys
    );
    guest.shutdown().await;
    for n in nodes {
        n.shutdown().await;
    }
}
