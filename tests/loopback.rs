//! Real QUIC nodes on 127.0.0.1: calls, connection reuse, limits, failures.

mod common;

use std::sync::Arc;
use std::time::Duration;

use butter::{Body, Error, Identity, Node, NodeAddr, Request, StreamRequest};
use common::{eventually, loopback, reverse_node, within};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

#[tokio::test]
async fn two_nodes_call_each_other_in_both_directions() {
    let a = reverse_node().await;
    let b = reverse_node().await;
    let r = within(10, "a→b", a.call(b.addr(), "reverse", "abc"))
        .await
        .unwrap();
    assert_eq!(&r[..], b"cba");
    let r = within(10, "b→a", b.call(a.addr(), "reverse", "xyz"))
        .await
        .unwrap();
    assert_eq!(&r[..], b"zyx");
    // By id alone, over what each learned from the other.
    let r = within(10, "b→a by id", b.call(a.id(), "reverse", "12"))
        .await
        .unwrap();
    assert_eq!(&r[..], b"21");
    let ping = within(10, "ping", a.ping(b.id())).await.unwrap();
    assert_eq!(ping.reply.id, b.id());
    assert_eq!(ping.reply.version, env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn a_peer_that_called_us_can_be_called_back_on_the_same_connection() {
    let a = reverse_node().await;
    let b = reverse_node().await;
    within(10, "a→b", a.call(b.addr(), "reverse", "x"))
        .await
        .unwrap();
    within(10, "b→a", b.call(a.id(), "reverse", "y"))
        .await
        .unwrap();
    assert_eq!(a.stats().handshakes_out, 1);
    assert_eq!(b.stats().handshakes_out, 0, "b reused a's connection");
}

#[tokio::test]
async fn thousand_concurrent_calls_share_one_connection() {
    let server = reverse_node().await;
    let client = Arc::new(reverse_node().await);
    let addr = server.addr();
    let calls = (0..1000u32).map(|i| {
        let client = client.clone();
        let addr = addr.clone();
        tokio::spawn(async move {
            let body = i.to_be_bytes().to_vec();
            let reply = client.call(addr, "reverse", body.clone()).await?;
            let mut expected = body;
            expected.reverse();
            assert_eq!(&reply[..], &expected[..]);
            Ok::<_, Error>(())
        })
    });
    let results = within(60, "1000 calls", futures_join_all(calls.collect())).await;
    let failures: Vec<_> = results
        .into_iter()
        .filter(|r| !matches!(r, Ok(Ok(()))))
        .collect();
    assert!(
        failures.is_empty(),
        "{} calls failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    assert_eq!(
        client.stats().handshakes_out,
        1,
        "one handshake for 1000 calls"
    );
    assert_eq!(server.stats().handshakes_in, 1);
    assert_eq!(server.stats().calls_served, 1000);
    // The next call reuses it too.
    within(10, "one more", client.call(server.id(), "reverse", "z"))
        .await
        .unwrap();
    assert_eq!(client.stats().handshakes_out, 1);
}

async fn futures_join_all<T>(
    handles: Vec<tokio::task::JoinHandle<T>>,
) -> Vec<Result<T, tokio::task::JoinError>> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await);
    }
    out
}

#[tokio::test]
async fn dialing_races_addresses_and_keeps_the_one_that_answers() {
    let server = reverse_node().await;
    let client = reverse_node().await;
    // A bound but silent UDP socket: packets vanish there, like a dead address.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut addrs = vec![silent.local_addr().unwrap()];
    addrs.extend(server.addr().addrs);
    let target = NodeAddr::new(server.id(), addrs);
    let reply = within(
        10,
        "multi-address dial",
        client.call(target, "reverse", "ab"),
    )
    .await
    .unwrap();
    assert_eq!(&reply[..], b"ba");
    let ping = within(10, "ping", client.ping(server.id())).await.unwrap();
    assert_eq!(ping.remote, server.addr().addrs[0]);
}

#[tokio::test]
async fn dialing_the_wrong_node_id_is_an_identity_mismatch() {
    let server = reverse_node().await;
    let client = reverse_node().await;
    let impostor_claim = NodeAddr::new(Identity::generate().id(), server.addr().addrs);
    let err = within(10, "wrong id", client.call(impostor_claim, "reverse", "x"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::IdentityMismatch(_)), "{err}");
    // The error names the node that answered.
    assert!(err.to_string().contains(&server.id().to_string()), "{err}");
    // The server is unharmed and the right id still works.
    within(10, "right id", client.call(server.addr(), "reverse", "x"))
        .await
        .unwrap();
}

#[tokio::test]
async fn idle_connections_are_dropped_and_redialed_transparently() {
    let server = Node::builder()
        .listen(loopback())
        .idle_timeout(Duration::from_millis(300))
        .route("reverse", |req: Request| async move { Ok(req.into_body()) })
        .spawn()
        .await
        .unwrap();
    let client = Node::builder()
        .listen(loopback())
        .idle_timeout(Duration::from_millis(300))
        .spawn()
        .await
        .unwrap();
    within(10, "first", client.call(server.addr(), "reverse", "1"))
        .await
        .unwrap();
    assert_eq!(client.connection_count(), 1);
    eventually(10, "idle connection dropped", || {
        client.connection_count() == 0
    })
    .await;
    within(10, "second", client.call(server.id(), "reverse", "2"))
        .await
        .unwrap();
    assert_eq!(client.stats().handshakes_out, 2);
}

#[tokio::test]
async fn keep_alive_holds_an_idle_connection_open() {
    let server = reverse_node().await;
    let client = Node::builder()
        .listen(loopback())
        .idle_timeout(Duration::from_millis(400))
        .keep_alive(Duration::from_millis(100))
        .spawn()
        .await
        .unwrap();
    within(10, "first", client.call(server.addr(), "reverse", "1"))
        .await
        .unwrap();
    // Three idle timeouts pass (this sleep is the subject of the test, not a sync).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    within(10, "second", client.call(server.id(), "reverse", "2"))
        .await
        .unwrap();
    assert_eq!(client.stats().handshakes_out, 1);
}

#[tokio::test]
async fn handler_errors_and_panics_become_error_replies() {
    let server = Node::builder()
        .listen(loopback())
        .route("fail", |_req: Request| async move {
            Err::<(), _>(Error::handler("no such user"))
        })
        .route("panic", |req: Request| async move {
            if !req.body().is_empty() {
                panic!("handler bug");
            }
            Ok(())
        })
        .route("ok", |_req: Request| async move { Ok("fine") })
        .spawn()
        .await
        .unwrap();
    let client = reverse_node().await;
    let err = within(10, "fail", client.call(server.addr(), "fail", ""))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Remote(m) if m == "no such user"),
        "{err}"
    );
    let err = within(10, "panic", client.call(server.addr(), "panic", "x"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Remote(m) if m.contains("panicked")),
        "{err}"
    );
    let err = within(10, "no route", client.call(server.addr(), "missing", ""))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::NoSuchRoute(r) if r == "missing"),
        "{err}"
    );
    let ok = within(10, "ok", client.call(server.addr(), "ok", ""))
        .await
        .unwrap();
    assert_eq!(&ok[..], b"fine");
    let s = server.stats();
    assert_eq!(
        (
            s.handler_errors,
            s.handler_panics,
            s.no_route,
            s.calls_served
        ),
        (1, 1, 1, 1)
    );
}

#[tokio::test]
async fn slow_handlers_time_out_on_both_sides() {
    let server = Node::builder()
        .listen(loopback())
        .limits(butter::Limits {
            handler_timeout: Duration::from_millis(200),
            ..Default::default()
        })
        .route("slow", |_req: Request| async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(())
        })
        .spawn()
        .await
        .unwrap();
    let client = Node::builder().listen(loopback()).spawn().await.unwrap();
    let err = within(10, "remote timeout", client.call(server.addr(), "slow", ""))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err}");
    let impatient = Node::builder()
        .listen(loopback())
        .call_timeout(Duration::from_millis(100))
        .spawn()
        .await
        .unwrap();
    let err = within(
        10,
        "local timeout",
        impatient.call(server.addr(), "slow", ""),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Timeout("call")), "{err}");
}

#[tokio::test]
async fn reserved_route_names_are_refused() {
    let err = Node::builder()
        .route("butter/ping", |_req: Request| async move { Ok(()) })
        .spawn()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::ReservedRoute(_)), "{err}");
}

#[tokio::test]
async fn typed_routes_round_trip_and_reject_bad_bodies() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Greeting {
        name: String,
        times: u8,
    }
    let server = Node::builder()
        .listen(loopback())
        .typed_route("greet", |_peer, g: Greeting| async move {
            Ok(g.name.repeat(g.times as usize))
        })
        .spawn()
        .await
        .unwrap();
    let client = Node::builder().listen(loopback()).spawn().await.unwrap();
    let reply: String = within(
        10,
        "typed",
        client.call_typed(
            server.addr(),
            "greet",
            &Greeting {
                name: "ab".into(),
                times: 3,
            },
        ),
    )
    .await
    .unwrap();
    assert_eq!(reply, "ababab");
    let err = within(
        10,
        "bad body",
        client.call(server.addr(), "greet", vec![0xff; 3]),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Malformed(_)), "{err}");
}

/// Deterministic pseudo-random bytes, hashed as they are produced.
struct Generator {
    left: u64,
    state: u64,
    hasher: Arc<std::sync::Mutex<blake3::Hasher>>,
}

impl AsyncRead for Generator {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64).min(self.left).min(1 << 20) as usize;
        let mut chunk = vec![0u8; n];
        for word in chunk.chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            let bytes = self.state.to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
        self.hasher.lock().unwrap().update(&chunk);
        buf.put_slice(&chunk);
        self.left -= n as u64;
        std::task::Poll::Ready(Ok(()))
    }
}

#[tokio::test]
async fn bodies_over_the_memory_limit_need_the_streaming_api() {
    const MIB: usize = 1024 * 1024;
    let server = Node::builder()
        .listen(loopback())
        .max_body(MIB)
        .route("buffered", |req: Request| async move {
            Ok(req.body().len().to_string())
        })
        .stream_route("hash", |mut req: StreamRequest| async move {
            let mut hasher = blake3::Hasher::new();
            let mut buf = vec![0u8; 256 * 1024];
            loop {
                let n = req.body.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            Ok(hasher.finalize().as_bytes().to_vec())
        })
        .stream_route("echo", |req: StreamRequest| async move {
            Ok(Body::from(req.body))
        })
        .spawn()
        .await
        .unwrap();
    let client = Node::builder()
        .listen(loopback())
        .max_body(MIB)
        .spawn()
        .await
        .unwrap();

    // Refused locally by the in-memory API...
    let big = vec![7u8; 2 * MIB];
    let err = within(
        10,
        "local",
        client.call(server.addr(), "buffered", big.clone()),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    // ...and by the peer when streamed to a buffered route (length unknown up front).
    let err = within(
        10,
        "remote",
        client.call_stream(
            server.addr(),
            "buffered",
            Body::from_reader(std::io::Cursor::new(big)),
        ),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    assert_eq!(server.stats().too_large, 1);

    // 256 MiB through a streaming route arrives intact.
    let sent_hash = Arc::new(std::sync::Mutex::new(blake3::Hasher::new()));
    let body = Generator {
        left: 256 * MIB as u64,
        state: 0x9e3779b97f4a7c15,
        hasher: sent_hash.clone(),
    };
    let reply = within(300, "256 MiB upload", async {
        client
            .call_stream(server.addr(), "hash", Body::from_reader(body))
            .await?
            .bytes(64)
            .await
    })
    .await
    .unwrap();
    assert_eq!(&reply[..], sent_hash.lock().unwrap().finalize().as_bytes());

    // And streamed both ways: 32 MiB echoed back, compared by hash.
    let sent_hash = Arc::new(std::sync::Mutex::new(blake3::Hasher::new()));
    let body = Generator {
        left: 32 * MIB as u64,
        state: 42,
        hasher: sent_hash.clone(),
    };
    let got = within(120, "echo", async {
        let mut reply = client
            .call_stream(server.addr(), "echo", Body::from_reader(body))
            .await?;
        let mut hasher = blake3::Hasher::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0;
        loop {
            let n = reply.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            total += n;
            hasher.update(&buf[..n]);
        }
        Ok::<_, Error>((total, hasher.finalize()))
    })
    .await
    .unwrap();
    assert_eq!(got.0, 32 * MIB);
    assert_eq!(got.1, sent_hash.lock().unwrap().finalize());
}

#[tokio::test]
async fn identity_persists_across_restarts_and_corruption_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let first = Node::builder()
        .listen(loopback())
        .data_dir(dir.path())
        .spawn()
        .await
        .unwrap();
    let id = first.id();
    first.shutdown().await;
    drop(first);
    let second = Node::builder()
        .listen(loopback())
        .data_dir(dir.path())
        .spawn()
        .await
        .unwrap();
    assert_eq!(second.id(), id);
    drop(second);
    std::fs::write(dir.path().join("node.key"), b"not a key").unwrap();
    let err = Node::builder()
        .listen(loopback())
        .data_dir(dir.path())
        .spawn()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::KeyFile { .. }), "{err}");
    assert!(err.to_string().contains("node.key"), "{err}");
}

/// A node that shuts down tells its known hosts, which drop it at once rather
/// than after a failed liveness check (here a minute away); calls after the
/// shutdown are a typed error.
#[tokio::test]
async fn a_departing_node_says_goodbye_to_its_known_hosts() {
    let slow_liveness = |n: butter::NodeBuilder| {
        n.listen("127.0.0.1:0".parse().unwrap())
            .liveness_interval(Duration::from_secs(60))
    };
    let a = slow_liveness(Node::builder()).spawn().await.unwrap();
    let b = slow_liveness(Node::builder()).spawn().await.unwrap();
    within(10, "a knows b", a.add_known_host(b.addr()))
        .await
        .unwrap();
    within(10, "b knows a", b.add_known_host(a.addr()))
        .await
        .unwrap();
    assert!(b.known_hosts().iter().any(|h| h.addr.id == a.id()));
    let mut events = b.events();
    let started = std::time::Instant::now();
    within(10, "shutdown", a.shutdown()).await;
    let gone = within(5, "b hears the goodbye", async {
        loop {
            if let Ok(butter::PeerEvent::Removed { id, reason }) = events.recv().await {
                if id == a.id() {
                    return reason;
                }
            }
        }
    })
    .await;
    assert_eq!(gone, "said goodbye");
    println!("goodbye heard {:?} after shutdown began", started.elapsed());
    assert!(!b.known_hosts().iter().any(|h| h.addr.id == a.id()));
    let after = a.ping(b.addr()).await;
    assert!(matches!(after, Err(butter::Error::Shutdown)), "{after:?}");
}

/// A node dropped without `shutdown()` still closes its connections as a
/// node that stops ("shutdown"): its known hosts drop it at once, without
/// waiting for a liveness check (a minute away here). A crash (nothing
/// leaves, not even a close) is left to the liveness checks.
#[tokio::test]
async fn a_node_dropped_without_shutdown_leaves_its_hosts_tables_at_once() {
    let slow_liveness = |n: butter::NodeBuilder| {
        n.listen("127.0.0.1:0".parse().unwrap())
            .lan_discovery(false)
            .liveness_interval(Duration::from_secs(60))
    };
    let b = slow_liveness(Node::builder()).spawn().await.unwrap();
    for crash in [false, true] {
        let a = slow_liveness(Node::builder()).spawn().await.unwrap();
        let a_id = a.id();
        within(10, "b knows a", b.add_known_host(a.addr()))
            .await
            .unwrap();
        within(10, "a knows b", a.add_known_host(b.addr()))
            .await
            .unwrap();
        if crash {
            a.crash();
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert!(
                b.known_hosts().iter().any(|h| h.addr.id == a_id),
                "a silent crash is not a goodbye"
            );
        } else {
            drop(a);
            within(5, "b drops a at once", async {
                while b.known_hosts().iter().any(|h| h.addr.id == a_id) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await;
        }
    }
}

#[tokio::test]
async fn a_taken_address_is_an_error_naming_it() {
    let first = reverse_node().await;
    let taken = first.local_addr();
    let err = Node::builder()
        .listen(taken)
        .lan_discovery(false)
        .spawn()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Bind { addr, .. } if addr == taken),
        "{err}"
    );
    assert!(err.to_string().contains(&taken.to_string()), "{err}");
    first.shutdown().await;
}
