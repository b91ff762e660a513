//! Hostile peers speaking raw QUIC to a node: bad frames, forged certificates.
//! The node must answer with a clear status (or refuse the handshake) and keep
//! serving good calls.

mod common;

use std::sync::Arc;
use std::time::Duration;

use butter::unstable::tls;
use butter::unstable::wire::{self, RequestHeader, ResponseHeader, Status, MAX_HEADER};
use butter::{Error, Identity, Node};
use common::{eventually, loopback, reverse_node, within};

fn raw_endpoint(crypto: Arc<quinn::crypto::rustls::QuicClientConfig>) -> quinn::Endpoint {
    let mut ep = quinn::Endpoint::client(loopback()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(crypto));
    ep
}

async fn raw_connect(
    server: &Node,
    crypto: Arc<quinn::crypto::rustls::QuicClientConfig>,
) -> Result<quinn::Connection, quinn::ConnectionError> {
    let ep = raw_endpoint(crypto);
    let addr = server.addr().addrs[0];
    ep.connect(addr, &tls::server_name(&server.id()))
        .unwrap()
        .await
}

/// A raw connection from a fresh identity.
async fn fresh_connection(server: &Node) -> quinn::Connection {
    within(
        10,
        "connect",
        raw_connect(server, tls::client_crypto(&Identity::generate()).unwrap()),
    )
    .await
    .unwrap()
}

/// Sends raw bytes as a request stream and returns the status the node answers.
async fn send_raw(conn: &quinn::Connection, bytes: &[u8], finish: bool) -> Status {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    if finish {
        send.finish().unwrap();
    }
    let header: ResponseHeader = within(10, "status", wire::read_frame(&mut recv, MAX_HEADER))
        .await
        .unwrap();
    header.status
}

#[tokio::test]
async fn malformed_oversized_and_unknown_requests_get_clear_statuses() {
    let server = Node::builder()
        .listen(loopback())
        .limits(butter::Limits {
            header_timeout: Duration::from_millis(300),
            ..Default::default()
        })
        .route("reverse", |req: butter::Request| async move {
            Ok(req.body().iter().rev().copied().collect::<Vec<u8>>())
        })
        .spawn()
        .await
        .unwrap();
    let me = Identity::generate();
    let conn = within(
        10,
        "connect",
        raw_connect(&server, tls::client_crypto(&me).unwrap()),
    )
    .await
    .unwrap();

    // Bytes that do not decode as a header.
    let status = send_raw(&conn, &[3, 0, 0, 0, 0xff, 0xff, 0xff], true).await;
    assert!(matches!(status, Status::Malformed(_)), "{status:?}");
    // A stream that ends inside the header.
    let status = send_raw(&conn, &[10, 0, 0, 0, 1, 2], true).await;
    assert!(matches!(status, Status::Malformed(_)), "{status:?}");
    // A header frame over the limit: refused before its payload is read.
    let mut big = (MAX_HEADER as u32 + 1).to_le_bytes().to_vec();
    big.extend_from_slice(&[0u8; 1024]);
    let status = send_raw(&conn, &big, false).await;
    assert_eq!(
        status,
        Status::TooLarge {
            limit: MAX_HEADER as u64
        }
    );
    // A caller that starts a header and then goes silent (a stream the peer has
    // sent nothing on does not exist for it yet, so one byte is sent).
    let status = send_raw(&conn, &[5], false).await;
    assert_eq!(status, Status::Timeout);
    // An unknown route.
    let header = RequestHeader {
        route: "no/such/route".into(),
        flags: 0,
        body_len: Some(0),
    };
    let status = send_raw(
        &conn,
        &wire::encode_frame(&header, MAX_HEADER).unwrap(),
        true,
    )
    .await;
    assert_eq!(status, Status::NoSuchRoute);
    // A stream reset half-way through its header.
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(&[200, 0]).await.unwrap();
    send.reset(7u32.into()).unwrap();

    // The same connection still carries a good call...
    let header = RequestHeader {
        route: "reverse".into(),
        flags: 0,
        body_len: Some(5),
    };
    let mut good = wire::encode_frame(&header, MAX_HEADER).unwrap();
    good.extend_from_slice(b"hello");
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&good).await.unwrap();
    send.finish().unwrap();
    let header: ResponseHeader = within(10, "good status", wire::read_frame(&mut recv, MAX_HEADER))
        .await
        .unwrap();
    assert_eq!(header.status, Status::Ok);
    let body = within(10, "good body", recv.read_to_end(1024))
        .await
        .unwrap();
    assert_eq!(body, b"olleh");
    // ...and so does a fresh node.
    let client = reverse_node().await;
    let reply = within(
        10,
        "node call",
        client.call(server.addr(), "reverse", "abc"),
    )
    .await
    .unwrap();
    assert_eq!(&reply[..], b"cba");
    assert!(server.stats().malformed >= 3, "{:?}", server.stats());
    assert_eq!(server.stats().no_route, 1);
}

/// Certificate of the victim, CertificateVerify signed by the attacker's key.
#[tokio::test]
async fn a_client_presenting_someone_elses_certificate_is_refused() {
    let server = reverse_node().await;
    let victim = Identity::generate();
    let attacker = Identity::generate();
    let forged = rustls::sign::CertifiedKey::new(
        vec![tls::self_signed_cert(&victim).unwrap()],
        tls::signing_key(&attacker).unwrap(),
    );
    assert_refused(&server, Arc::new(forged)).await;
    assert!(server.stats().handshakes_failed >= 1);
    // The node keeps serving honest peers.
    let honest = reverse_node().await;
    within(
        10,
        "honest call",
        honest.call(server.addr(), "reverse", "ok"),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_client_with_a_non_ed25519_certificate_is_refused() {
    let server = reverse_node().await;
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let cert = rcgen::CertificateParams::new(vec!["x.butter".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let certified = rustls::sign::CertifiedKey::from_der(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        &rustls::crypto::ring::default_provider(),
    )
    .unwrap();
    assert_refused(&server, Arc::new(certified)).await;
}

/// Connects with the given client certificate and key; the node must refuse it
/// with an identity error and count no accepted connection.
async fn assert_refused(server: &Node, key: Arc<rustls::sign::CertifiedKey>) {
    let crypto = tls::client_crypto_with(key).unwrap();
    let result = within(10, "refused handshake", async {
        let conn = raw_connect(server, crypto).await?;
        // TLS 1.3: the client may finish before the server has checked its
        // certificate; the refusal then closes the connection.
        Err::<(), _>(conn.closed().await)
    })
    .await;
    let err = Error::from(result.unwrap_err());
    assert!(matches!(err, Error::IdentityMismatch(_)), "{err}");
    assert_eq!(server.stats().handshakes_in, 0);
}

/// A caller that sends a buffered route's header and then too little body (or
/// none) is answered with a timeout once the body deadline passes: nothing it
/// opened is held for ever.
#[tokio::test]
async fn a_body_that_never_arrives_times_out() {
    let server = Node::builder()
        .listen(loopback())
        .limits(butter::Limits {
            body_timeout: Duration::from_millis(300),
            ..Default::default()
        })
        .route("sink", |req: butter::Request| async move {
            Ok(req.body().len().to_string())
        })
        .spawn()
        .await
        .unwrap();
    let conn = fresh_connection(&server).await;
    for sent in [0usize, 100] {
        let header = RequestHeader {
            route: "sink".into(),
            flags: 0,
            body_len: Some(1000),
        };
        let mut bytes = wire::encode_frame(&header, MAX_HEADER).unwrap();
        bytes.extend(std::iter::repeat_n(1u8, sent));
        let status = send_raw(&conn, &bytes, false).await;
        assert_eq!(status, Status::Timeout, "after {sent} body bytes");
    }
    assert!(server.stats().requests_refused >= 2, "{:?}", server.stats());
}

/// A caller that never reads its reply does not hold the server's reply (and
/// the handler's buffer) for ever: after the stall timeout the stream is reset.
#[tokio::test]
async fn a_reply_nobody_reads_is_given_up() {
    let server = Node::builder()
        .listen(loopback())
        .limits(butter::Limits {
            stall_timeout: Duration::from_millis(300),
            ..Default::default()
        })
        .route("big", |_req: butter::Request| async move {
            Ok(vec![9u8; 8 * 1024 * 1024])
        })
        .spawn()
        .await
        .unwrap();
    let conn = fresh_connection(&server).await;
    let header = RequestHeader {
        route: "big".into(),
        flags: 0,
        body_len: Some(0),
    };
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&wire::encode_frame(&header, MAX_HEADER).unwrap())
        .await
        .unwrap();
    send.finish().unwrap();
    // Not reading: the server's writes stall on flow control.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let read = within(
        10,
        "read after the stall",
        recv.read_to_end(16 * 1024 * 1024),
    )
    .await;
    assert!(
        matches!(
            read,
            Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(_)))
        ),
        "the stalled reply was not reset: {:?}",
        read.map(|v| v.len())
    );
}

/// A hostile host answers peer exchange with a thousand forged candidates (at
/// a silent address, as if to make the node flood a third party with
/// handshakes): the node takes only what it asked for and verifies a few at
/// a time; the rest are dropped and counted.
#[tokio::test]
async fn a_forged_peer_exchange_answer_is_bounded() {
    use butter::peers::{PeerRecord, PeersRequest};
    use butter::{NodeAddr, PingReply, Quality};
    // The hostile host: raw QUIC speaking the wire protocol itself.
    let me = Identity::generate();
    let id = me.id();
    let mut server = quinn::ServerConfig::with_crypto(tls::server_crypto(&me).unwrap());
    server.transport_config(Arc::new(quinn::TransportConfig::default()));
    let ep = quinn::Endpoint::server(server, loopback()).unwrap();
    let hostile = NodeAddr::new(id, [ep.local_addr().unwrap()]);
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let forged: Vec<PeerRecord> = (0..1000)
        .map(|_| PeerRecord {
            addr: NodeAddr::new(Identity::generate().id(), [silent.local_addr().unwrap()]),
            quality: Quality::default(),
        })
        .collect();
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let Ok(conn) = incoming.await else { continue };
            let forged = forged.clone();
            tokio::spawn(async move {
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let forged = forged.clone();
                    tokio::spawn(async move {
                        let header: RequestHeader =
                            wire::read_frame(&mut recv, MAX_HEADER).await.unwrap();
                        let body = recv.read_to_end(1024).await.unwrap();
                        let reply = match header.route.as_str() {
                            "butter/ping" => postcard::to_allocvec(&PingReply {
                                id,
                                version: "0.1.0".into(),
                                uptime_ms: 1,
                                known_hosts: 1,
                                known_by: 1,
                                storage_bytes: 0,
                                introducer: false,
                            })
                            .unwrap(),
                            "butter/peers" => {
                                let _asked: PeersRequest = postcard::from_bytes(&body).unwrap();
                                postcard::to_allocvec(&forged).unwrap()
                            }
                            // A DHT node too (an empty answer), so its
                            // lookups do not fail it out of the table.
                            "butter/dht/find_node" => {
                                postcard::to_allocvec(&butter::dht::messages::Closer {
                                    contacts: vec![],
                                })
                                .unwrap()
                            }
                            _ => Vec::new(),
                        };
                        let status = ResponseHeader { status: Status::Ok };
                        send.write_all(&wire::encode_frame(&status, MAX_HEADER).unwrap())
                            .await
                            .unwrap();
                        send.write_all(&reply).await.unwrap();
                        let _ = send.finish();
                    });
                }
            });
        }
    });
    let victim = Node::builder()
        .listen(loopback())
        .want_hosts(50)
        .liveness_interval(Duration::from_secs(60))
        .spawn()
        .await
        .unwrap();
    within(10, "bootstrap", victim.add_known_host(hostile))
        .await
        .unwrap();
    // The first peer-exchange round comes ~200 ms after start.
    eventually(10, "the forged answer is handled", || {
        victim.stats().candidates_queued > 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let s = victim.stats();
    println!(
        "forged PEX answer of 1000: {} waiting for a slot, {} dropped, the rest verifying",
        s.candidates_queued, s.candidates_dropped
    );
    // 16 asked for: 8 verified at once, the other 8 wait for a slot (all
    // at one loopback address, exempt from the per-prefix share of the
    // queue as a LAN is); none of the other 984 considered.
    assert_eq!(s.candidates_queued, 8, "{s:?}");
    assert_eq!(s.candidates_dropped, 0, "{s:?}");
    // Their silent address fails every verification: the waiting ones get
    // the slots the first eight free, then they fail too.
    eventually(30, "all sixteen verified and failed", || {
        victim.stats().candidates_unreachable == 16
    })
    .await;
    assert_eq!(victim.stats().candidates_unreachable, 16);
    assert!(victim.known_hosts().len() <= 1);
}

/// A caller that stops sending a streamed body in the middle does not hold a
/// streaming handler for ever: its reads fail after the stall timeout.
#[tokio::test]
async fn a_streamed_body_that_stalls_ends_the_handlers_read() {
    use tokio::io::AsyncReadExt;
    let server = Node::builder()
        .listen(loopback())
        .limits(butter::Limits {
            stall_timeout: Duration::from_millis(300),
            ..Default::default()
        })
        .stream_route("drain", |req: butter::StreamRequest| async move {
            let mut body = req.body;
            let mut all = Vec::new();
            body.read_to_end(&mut all)
                .await
                .map_err(|e| Error::handler(format!("read: {e}")))?;
            Ok(all.len().to_string())
        })
        .spawn()
        .await
        .unwrap();
    let conn = fresh_connection(&server).await;
    let header = RequestHeader {
        route: "drain".into(),
        flags: wire::FLAG_STREAMED,
        body_len: None,
    };
    let mut bytes = wire::encode_frame(&header, MAX_HEADER).unwrap();
    bytes.extend_from_slice(&[1u8; 10]);
    let status = send_raw(&conn, &bytes, false).await;
    assert!(
        matches!(&status, Status::HandlerError(m) if m.contains("stall")),
        "{status:?}"
    );
}

/// A hostile DHT node answers lookups with contacts it made up: first an
/// oversize answer (1,000 contacts), then 20 fabricated ids at a silent
/// address. The victim's lookups count the first as a failed answer, ask
/// the made-up contacts within the lookup's bounds, end with a clear "not
/// found", and none of the made-up contacts enters its table.
#[tokio::test]
async fn a_dht_node_answering_with_made_up_contacts_misleads_no_table() {
    use butter::dht::messages::{Closer, FIND_NODE_ROUTE};
    use butter::{NodeAddr, NodeId, PingReply};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let me = Identity::generate();
    let id = me.id();
    let mut server = quinn::ServerConfig::with_crypto(tls::server_crypto(&me).unwrap());
    server.transport_config(Arc::new(quinn::TransportConfig::default()));
    let ep = quinn::Endpoint::server(server, loopback()).unwrap();
    let hostile = NodeAddr::new(id, [ep.local_addr().unwrap()]);
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let answers = Arc::new(AtomicUsize::new(0));
    let seen = answers.clone();
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let Ok(conn) = incoming.await else { continue };
            let answers = answers.clone();
            tokio::spawn(async move {
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let answers = answers.clone();
                    tokio::spawn(async move {
                        let header: RequestHeader =
                            wire::read_frame(&mut recv, MAX_HEADER).await.unwrap();
                        let _ = recv.read_to_end(1024).await;
                        let reply = match header.route.as_str() {
                            "butter/ping" => postcard::to_allocvec(&PingReply {
                                id,
                                version: "0.1.0".into(),
                                uptime_ms: u64::MAX,
                                known_hosts: 1_000_000,
                                known_by: 1_000_000,
                                storage_bytes: u64::MAX,
                                introducer: false,
                            })
                            .unwrap(),
                            r if r == FIND_NODE_ROUTE => {
                                let n = if answers.fetch_add(1, Ordering::SeqCst) == 0 {
                                    1000
                                } else {
                                    20
                                };
                                let contacts = (0..n)
                                    .map(|_| {
                                        NodeAddr::new(Identity::generate().id(), [silent_addr])
                                    })
                                    .collect();
                                postcard::to_allocvec(&Closer { contacts }).unwrap()
                            }
                            _ => Vec::new(),
                        };
                        let status = ResponseHeader { status: Status::Ok };
                        let _ = send
                            .write_all(&wire::encode_frame(&status, MAX_HEADER).unwrap())
                            .await;
                        let _ = send.write_all(&reply).await;
                        let _ = send.finish();
                    });
                }
            });
        }
    });
    let victim = Node::builder()
        .listen(loopback())
        .lan_discovery(false)
        .dht(butter::DhtSettings {
            bootstrap: vec![hostile.clone()],
            query_timeout: Duration::from_millis(500),
            ..Default::default()
        })
        .spawn()
        .await
        .unwrap();
    for _ in 0..2 {
        let target = NodeId::from_bytes(rand_bytes());
        let found = within(20, "a misled lookup ends", victim.dht().find_node(target)).await;
        assert!(matches!(found, Err(Error::NotFound(_))), "{found:?}");
    }
    assert!(seen.load(Ordering::SeqCst) >= 2);
    // Only the hostile node itself (it did answer) may be known; none of
    // what it made up.
    let known: Vec<_> = victim
        .known_hosts()
        .into_iter()
        .map(|h| h.addr.id)
        .collect();
    assert!(known.iter().all(|k| *k == id), "{known:?}");
}

fn rand_bytes() -> [u8; 32] {
    *Identity::generate().id().as_bytes()
}

/// A raw QUIC node (identity `me`) answering every route with what
/// `answer(route, body)` returns.
fn hostile_server(
    me: &Identity,
    answer: impl Fn(&str, &[u8]) -> Vec<u8> + Send + Sync + 'static,
) -> butter::NodeAddr {
    let mut server = quinn::ServerConfig::with_crypto(tls::server_crypto(me).unwrap());
    server.transport_config(Arc::new(quinn::TransportConfig::default()));
    let ep = quinn::Endpoint::server(server, loopback()).unwrap();
    let addr = butter::NodeAddr::new(me.id(), [ep.local_addr().unwrap()]);
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let Ok(conn) = incoming.await else { continue };
            let answer = answer.clone();
            tokio::spawn(async move {
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let answer = answer.clone();
                    tokio::spawn(async move {
                        let header: RequestHeader =
                            match wire::read_frame(&mut recv, MAX_HEADER).await {
                                Ok(h) => h,
                                Err(_) => return,
                            };
                        let body = recv.read_to_end(1 << 21).await.unwrap_or_default();
                        let reply = answer(&header.route, &body);
                        let status = ResponseHeader { status: Status::Ok };
                        let _ = send
                            .write_all(&wire::encode_frame(&status, MAX_HEADER).unwrap())
                            .await;
                        let _ = send.write_all(&reply).await;
                        let _ = send.finish();
                    });
                }
            });
        }
    });
    addr
}

/// A holder that serves wrong bytes for a chunk (and is the closest to it):
/// the fetch still succeeds from an honest holder; the bad one is counted,
/// and the failure counts against it in the table (3 in a row: out).
#[tokio::test]
async fn a_holder_serving_wrong_bytes_is_passed_over_and_reported() {
    use butter::dht::messages::Closer;
    use butter::peers::table::distance;
    use butter::PingReply;
    let me = Identity::generate();
    let hostile_id = me.id();
    let hostile = hostile_server(&me, move |route, _| match route {
        "butter/ping" => postcard::to_allocvec(&PingReply {
            id: hostile_id,
            version: "0.1.0".into(),
            uptime_ms: 1,
            known_hosts: 1,
            known_by: 1,
            storage_bytes: 1 << 40,
            introducer: false,
        })
        .unwrap(),
        "butter/dht/find_node" => postcard::to_allocvec(&Closer { contacts: vec![] }).unwrap(),
        // Any blob asked for: 1 KiB of garbage.
        "butter/content/get" => vec![0xee; 1024],
        _ => Vec::new(),
    });
    let honest = Node::builder()
        .listen(loopback())
        .lan_discovery(false)
        .spawn()
        .await
        .unwrap();
    let victim = Node::builder()
        .listen(loopback())
        .lan_discovery(false)
        .spawn()
        .await
        .unwrap();
    // Content whose key lies closer to the hostile node than to the honest.
    let data = (0u32..)
        .map(|i| format!("content {i}").into_bytes())
        .find(|d| {
            let key = butter::content::tree::build(&d[..], 1 << 18, None)
                .unwrap()
                .root;
            distance(&hostile_id, &key.to_key()) < distance(&honest.id(), &key.to_key())
        })
        .unwrap();
    let key = honest.put(data.clone()).await.unwrap();
    within(10, "victim knows both", async {
        victim.add_known_host(hostile.clone()).await.unwrap();
        victim.add_known_host(honest.addr()).await.unwrap();
    })
    .await;
    let got = within(20, "fetch past the bad holder", victim.get(key))
        .await
        .unwrap();
    assert_eq!(&got[..], &data[..]);
    assert!(victim.stats().blobs_bad >= 1, "{:?}", victim.stats());
}

/// A request whose header and body arrive in many small pieces (each
/// written and sent on its own) is read whole and answered: the header is
/// gathered across chunks, and the body bytes that came with its last
/// piece reach the handler.
#[tokio::test]
async fn a_request_in_many_small_pieces_is_read_whole() {
    let server = reverse_node().await;
    let conn = fresh_connection(&server).await;
    let body = b"abcdefghij";
    let mut request = wire::encode_frame(
        &RequestHeader {
            route: "reverse".into(),
            flags: 0,
            body_len: Some(body.len() as u64),
        },
        MAX_HEADER,
    )
    .unwrap();
    request.extend_from_slice(body);
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // Pieces of 1, 2 and 3 bytes, each sent before the next is written
    // (the pause lets the connection put each in a packet of its own).
    let mut at = 0;
    let mut size = 1;
    while at < request.len() {
        let end = (at + size).min(request.len());
        send.write_all(&request[at..end]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2)).await;
        at = end;
        size = size % 3 + 1;
    }
    send.finish().unwrap();
    let header: ResponseHeader = within(10, "status", wire::read_frame(&mut recv, MAX_HEADER))
        .await
        .unwrap();
    assert_eq!(header.status, Status::Ok);
    let reply = within(10, "reply", recv.read_to_end(1024)).await.unwrap();
    assert_eq!(&reply[..], b"jihgfedcba");
    server.shutdown().await;
}
