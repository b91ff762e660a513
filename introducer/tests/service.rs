//! The introducer binary on loopback: registration, introductions, STUN interop
//! with coturn's client, garbage and a registration flood while a legitimate
//! node keeps being served.

use std::net::{SocketAddr, UdpSocket};
use std::process::Stdio;
use std::time::Duration;

use butter::unstable::protocol::*;
use butter::{Node, NodeAddr};
use tokio::io::{AsyncBufReadExt, BufReader};

struct Intro {
    child: tokio::process::Child,
    addr: NodeAddr,
    _dir: tempfile::TempDir,
}

impl Intro {
    fn udp(&self) -> SocketAddr {
        self.addr.addrs[0]
    }
    fn rss_kib(&self) -> u64 {
        let pid = self.child.id().expect("running");
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0)
    }
}

async fn introducer(extra: &[&str]) -> Intro {
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_butter-introducer"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start butter-introducer");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
        .await
        .expect("introducer prints its address in time")
        .unwrap()
        .expect("a first line");
    Intro {
        child,
        addr: first.parse().expect("NODEID@IP:PORT"),
        _dir: dir,
    }
}

async fn node_at(ip: &str) -> Node {
    Node::builder()
        .listen(format!("{ip}:0").parse().unwrap())
        .spawn()
        .await
        .unwrap()
}

async fn figures(node: &Node, intro: &Intro) -> IntroducerStats {
    node.call_typed(intro.addr.clone(), INTRO_STATS_ROUTE, &())
        .await
        .unwrap()
}

async fn within<T>(secs: u64, what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

#[tokio::test]
async fn nodes_register_and_are_introduced() {
    let intro = introducer(&[]).await;
    let a = node_at("127.0.0.1").await;
    let b = node_at("127.0.0.1").await;
    for n in [&a, &b] {
        let reg: Registered = within(
            10,
            "register",
            n.call_typed(
                intro.addr.clone(),
                REGISTER_ROUTE,
                &Register {
                    addrs: n.addr().addrs,
                },
            ),
        )
        .await
        .unwrap();
        assert_eq!(
            reg.observed,
            n.local_addr(),
            "the introducer reports what it sees"
        );
    }
    let peers: Vec<NodeAddr> = a
        .call_typed(intro.addr.clone(), INTRODUCE_ROUTE, &Introduce { max: 8 })
        .await
        .unwrap();
    assert_eq!(peers.len(), 1, "only b: never the asker itself");
    assert_eq!(peers[0].id, b.id());
    assert_eq!(peers[0].addrs[0], b.local_addr());
    let f = figures(&a, &intro).await;
    assert_eq!((f.registrations, f.introductions), (2, 1));
    // A registration is tied to the authenticated connection: nobody can
    // register for another id, and an unknown target cannot be punched to.
    let err = a
        .call_typed::<_, Rendezvous>(
            intro.addr.clone(),
            CONNECT_ROUTE,
            &Connect {
                target: butter::Identity::generate().id(),
                addrs: vec![],
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not registered"), "{err}");
}

#[tokio::test]
async fn a_node_with_an_introducer_reaches_a_peer_by_id_alone() {
    let intro = introducer(&[]).await;
    let b = Node::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .route("reverse", |req: butter::Request| async move {
            Ok(req.body().iter().rev().copied().collect::<Vec<u8>>())
        })
        .introducer(intro.addr.clone())
        .spawn()
        .await
        .unwrap();
    let a = Node::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .introducer(intro.addr.clone())
        .spawn()
        .await
        .unwrap();
    // Wait for b's registration (an event: its counter), bounded.
    within(10, "b registers", async {
        while b.stats().introducer_registrations == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let reply = within(20, "call by id", a.call(b.id(), "reverse", "hello"))
        .await
        .unwrap();
    assert_eq!(&reply[..], b"olleh");
    let info = a.connection_info(&b.id()).expect("connected");
    // On loopback the observed address is b's own: a plain direct path.
    assert_ne!(info.path, butter::PathKind::Relayed);
    assert_eq!(a.reflexive_addrs(), vec![a.local_addr()]);
}

#[tokio::test]
async fn coturn_stun_client_gets_its_mapped_address_from_the_introducer() {
    if std::process::Command::new("turnutils_stunclient")
        .arg("-h")
        .output()
        .is_err()
    {
        if std::env::var("BUTTER_NETLAB_REQUIRED").is_ok_and(|v| v == "1") {
            panic!("coturn's turnutils_stunclient is not installed");
        }
        eprintln!("SKIPPED: coturn is not installed (apt-get install coturn)");
        return;
    }
    let intro = introducer(&[]).await;
    let port = intro.udp().port().to_string();
    let out = tokio::process::Command::new("timeout")
        .args(["10", "turnutils_stunclient", "-p", &port, "127.0.0.1"])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mapped: SocketAddr = text
        .lines()
        .find_map(|l| l.split("UDP reflexive addr: ").nth(1))
        .and_then(|a| a.trim().parse().ok())
        .unwrap_or_else(|| panic!("no reflexive address reported:\n{text}"));
    assert_eq!(mapped.ip(), std::net::IpAddr::from([127, 0, 0, 1]));
    assert_ne!(mapped.port(), intro.udp().port());
}

#[tokio::test]
async fn garbage_and_a_registration_flood_do_not_stop_the_service() {
    let intro = introducer(&["--max-per-source", "16", "--rate", "50", "--burst", "50"]).await;
    let port = intro.udp();
    // Garbage on the UDP port: random bytes, truncated STUN, bad FINGERPRINT.
    let junk = UdpSocket::bind("127.0.0.3:0").unwrap();
    let (_, request) = butter::unstable::stun::binding_request().unwrap();
    let mut bad_fp = request.clone();
    *bad_fp.last_mut().unwrap() ^= 0xff;
    junk.send_to(&request[..request.len() - 5], port).unwrap();
    junk.send_to(&bad_fp, port).unwrap();
    let mut seed = 0x9e37_79b9_u32;
    for _ in 0..3000 {
        let mut d = [0u8; 64];
        for b in d.iter_mut() {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            *b = seed as u8;
        }
        let _ = junk.send_to(&d[..(seed as usize % 64) + 1], port);
    }
    // A flood of registrations from one source: many identities, and many
    // requests on one connection.
    let before = intro.rss_kib();
    let mut flood = Vec::new();
    for _ in 0..40 {
        let n = node_at("127.0.0.1").await;
        let addr = intro.addr.clone();
        flood.push(tokio::spawn(async move {
            let mut refused = 0;
            for _ in 0..25 {
                let r: butter::Result<Registered> = n
                    .call_typed(
                        addr.clone(),
                        REGISTER_ROUTE,
                        &Register {
                            addrs: n.addr().addrs,
                        },
                    )
                    .await;
                refused += r.is_err() as u32;
            }
            refused
        }));
    }
    // Meanwhile a legitimate node from another address is served.
    let legit = node_at("127.0.0.2").await;
    let reg: Registered = within(
        10,
        "legit registers during the flood",
        legit.call_typed(
            intro.addr.clone(),
            REGISTER_ROUTE,
            &Register {
                addrs: legit.addr().addrs,
            },
        ),
    )
    .await
    .expect("the legitimate node is served during the flood");
    assert_eq!(reg.observed, legit.local_addr());
    let mapped = within(10, "stun during the flood", legit.stun(port))
        .await
        .unwrap();
    assert_eq!(mapped, legit.local_addr());
    let mut refused = 0;
    for f in flood {
        refused += within(60, "flood ends", f).await.unwrap();
    }
    let f = figures(&legit, &intro).await;
    assert!(refused > 0, "the flood was not limited");
    assert!(f.rejected >= refused as u64);
    assert!(
        f.registrations <= 16 + 1,
        "one source holds at most its share: {} registrations",
        f.registrations
    );
    assert!(f.udp_garbage >= 2, "garbage counted: {f:?}");
    assert!(f.stun_answered >= 1);
    let after = intro.rss_kib();
    println!("introducer RSS {before} KiB before the flood, {after} KiB after; {f:?}");
    assert!(after < 200 * 1024, "introducer RSS grew to {after} KiB");
}

/// Opens a relay tunnel to `target` through the introducer and holds it open
/// (the upload never ends); `Ok` once the introducer connected it.
async fn hold_tunnel(
    node: &Node,
    intro: &Intro,
    target: butter::NodeId,
) -> butter::Result<butter::RecvBody> {
    let open = butter::unstable::wire::encode_frame(
        &RelayOpen { target },
        butter::unstable::wire::MAX_HEADER,
    )?;
    use futures_util::StreamExt as _;
    let upload = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(open))])
        .chain(futures_util::stream::pending());
    node.call_stream(
        intro.addr.clone(),
        RELAY_ROUTE,
        butter::Body::from_stream(upload),
    )
    .await
}

/// Identities are free: dozens of them from one address (paced under the
/// rate limit, here lifted) hold only that address's share of the relay, and a
/// peer from elsewhere still gets a tunnel.
#[tokio::test]
async fn relay_slots_are_shared_per_source_address() {
    let intro = introducer(&["--rate", "10000", "--burst", "10000"]).await;
    let target = Node::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .introducer(intro.addr.clone())
        .spawn()
        .await
        .unwrap();
    within(10, "target registers", async {
        while target.reflexive_addrs().is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let mut held = Vec::new();
    let mut refused = 0;
    let mut attackers = Vec::new();
    for _ in 0..40 {
        let n = node_at("127.0.0.1").await;
        for _ in 0..8 {
            match within(10, "tunnel", hold_tunnel(&n, &intro, target.id())).await {
                Ok(t) => held.push(t),
                Err(_) => refused += 1,
            }
        }
        attackers.push(n);
    }
    let f = figures(&attackers[0], &intro).await;
    println!(
        "relay: 40 identities from one address held {} tunnels, {} refused; {} active in all",
        held.len(),
        refused,
        f.relays_active
    );
    assert!(held.len() <= 32, "one address holds {} tunnels", held.len());
    assert_eq!(held.len() + refused, 320);
    // Another address (its own share) still gets one.
    let newcomer = node_at("127.0.0.2").await;
    let tunnel = within(
        10,
        "newcomer's tunnel",
        hold_tunnel(&newcomer, &intro, target.id()),
    )
    .await
    .expect("a peer from another address gets a tunnel");
    drop((tunnel, held));
}
