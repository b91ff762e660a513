//! Hostile peers with free identities, against a node in a process of its own
//! (so that its memory and file descriptors can be measured apart from the
//! attacker's): unfinished bodies, connection floods. Under each attack the
//! node keeps serving a legitimate peer from another network, and its memory
//! stays bounded; the figures are printed and kept in
//! `target/tmp/figures/hostile.md`.
//!
//! The attackers speak from 127.0.0.1 (one address, one /24); the legitimate
//! peer from 127.0.1.1 (another /24: the whole of 127/8 is loopback on Linux).

mod common;

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use butter::unstable::tls;
use butter::unstable::wire::{self, RequestHeader, ResponseHeader, Status, MAX_HEADER};
use butter::{Identity, Node, NodeAddr};
use common::within;

const VICTIM_ENV: &str = "BUTTER_HOSTILE_VICTIM";

/// The victim: a node with default limits serving a buffered route `sink`
/// (replies with the body's length). Runs only in the child process.
#[tokio::test]
#[ignore = "the victim side of tests/hostile.rs; runs in a child process"]
async fn victim() {
    if std::env::var_os(VICTIM_ENV).is_none() {
        return;
    }
    let node = Node::builder()
        .listen("127.0.0.1:0".parse().unwrap())
        .lan_discovery(false)
        .route("sink", |req: butter::Request| async move {
            Ok((req.body().len() as u64).to_le_bytes().to_vec())
        })
        .spawn()
        .await
        .unwrap();
    println!("VICTIM {}", node.addr());
    // Serves until the parent closes our stdin.
    let mut line = String::new();
    let _ = tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await;
}

struct Victim {
    child: Child,
    addr: NodeAddr,
}

impl Victim {
    fn start() -> Victim {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "victim",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(VICTIM_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("the victim exited before printing its address")
                .unwrap();
            // libtest may print "test victim ... " on the same line first.
            if let Some((_, a)) = line.split_once("VICTIM ") {
                break a.trim().parse().unwrap();
            }
        };
        Victim { child, addr }
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc status"))
    }

    fn rss_mib(&self) -> u64 {
        self.status_kib("VmRSS:") / 1024
    }

    fn peak_rss_mib(&self) -> u64 {
        self.status_kib("VmHWM:") / 1024
    }

    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }

    fn socket(&self) -> SocketAddr {
        self.addr.addrs[0]
    }
}

impl Drop for Victim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A legitimate peer on another network than the attackers.
async fn legit() -> Node {
    Node::builder()
        .listen("127.0.1.1:0".parse().unwrap())
        .lan_discovery(false)
        .call_timeout(Duration::from_secs(20))
        .spawn()
        .await
        .unwrap()
}

/// A raw QUIC client with a fresh identity, on the attackers' address.
async fn attacker_connection(victim: &Victim) -> Result<quinn::Connection, quinn::ConnectionError> {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let crypto = tls::client_crypto(&Identity::generate()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(crypto));
    ep.connect(victim.socket(), &tls::server_name(&victim.addr.id))
        .unwrap()
        .await
}

fn keep_figures(text: &str) {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("figures");
    let _ = std::fs::create_dir_all(&dir);
    use std::io::Write;
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("hostile.md"))
    {
        let _ = writeln!(f, "{text}");
    }
    println!("{text}");
}

/// One buffered request of `declared` bytes that sends all but the last byte
/// and never finishes; returns the status the victim answers, if any.
async fn unfinished_body(conn: quinn::Connection, declared: usize) -> Option<Status> {
    let (mut send, mut recv) = conn.open_bi().await.ok()?;
    let header = RequestHeader {
        route: "sink".into(),
        flags: 0,
        body_len: Some(declared as u64),
    };
    send.write_all(&wire::encode_frame(&header, MAX_HEADER).unwrap())
        .await
        .ok()?;
    let writing = async {
        let chunk = bytes::Bytes::from(vec![0u8; 64 * 1024]);
        let mut left = declared - 1;
        while left > 0 {
            let n = left.min(chunk.len());
            if send.write_chunk(chunk.slice(..n)).await.is_err() {
                break;
            }
            left -= n;
        }
        // Holds the stream open, unfinished.
        std::future::pending::<()>().await
    };
    tokio::select! {
        () = writing => None,
        status = wire::read_frame::<ResponseHeader, _>(&mut recv, MAX_HEADER) => {
            status.ok().map(|h| h.status)
        }
    }
}

#[tokio::test]
async fn unfinished_bodies_from_many_identities_stay_within_the_budget() {
    let victim = Victim::start();
    let peer = legit().await;
    within(10, "first call", peer.ping(victim.addr.clone()))
        .await
        .unwrap();
    let base = victim.rss_mib();
    let fds = victim.fds();
    // 4 fresh identities, 16 streams each, 15 MiB declared per stream: 960 MiB
    // of bodies if the node buffered them.
    const BODY: usize = 15 * 1024 * 1024;
    let mut conns = Vec::new();
    for _ in 0..4 {
        conns.push(
            within(10, "attacker connects", attacker_connection(&victim))
                .await
                .unwrap(),
        );
    }
    let mut streams = tokio::task::JoinSet::new();
    for conn in &conns {
        for _ in 0..16 {
            streams.spawn(unfinished_body(conn.clone(), BODY));
        }
    }
    // While the attack holds: the legitimate peer (another network) is served,
    // with a body of its own, and so are pings.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let big = vec![7u8; 4 * 1024 * 1024];
    let reply = within(
        20,
        "legitimate call under attack",
        peer.call(victim.addr.clone(), "sink", big),
    )
    .await
    .unwrap();
    assert_eq!(
        u64::from_le_bytes(reply[..8].try_into().unwrap()),
        4 * 1024 * 1024
    );
    within(10, "ping under attack", peer.ping(victim.addr.clone()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let peak = victim.peak_rss_mib();
    let during = victim.rss_mib();
    // The attacker's streams beyond its share were refused as busy.
    let mut busy = 0;
    while let Some(Ok(Some(status))) =
        tokio::time::timeout(Duration::from_millis(100), streams.join_next())
            .await
            .ok()
            .flatten()
    {
        if status == Status::Busy {
            busy += 1;
        }
    }
    streams.abort_all();
    drop(conns);
    keep_figures(&format!(
        "unfinished bodies (4 identities x 16 streams x 15 MiB declared, one address): \
         victim RSS {base} MiB before, {during} MiB during, peak {peak} MiB; {busy} of 64 streams refused busy at once"
    ));
    assert!(peak < 256, "peak RSS {peak} MiB");
    assert!(busy > 0, "no stream was refused");
    // Nothing leaks: the attacker's connections go, the descriptors stay.
    assert!(victim.fds() <= fds + 2, "fds {} -> {}", fds, victim.fds());
}

#[tokio::test]
async fn a_connection_flood_from_one_address_is_capped() {
    let victim = Victim::start();
    let peer = legit().await;
    within(10, "first call", peer.ping(victim.addr.clone()))
        .await
        .unwrap();
    let fds = victim.fds();
    // 40 fresh identities from one address; each connection is kept open.
    let mut held = Vec::new();
    let mut refused = 0;
    for _ in 0..40 {
        match within(10, "attacker connects", attacker_connection(&victim)).await {
            Ok(conn) => held.push(conn),
            Err(_) => refused += 1,
        }
    }
    let limit = butter::Limits::default().max_connections_per_addr;
    assert!(held.len() <= limit, "{} connections held", held.len());
    assert_eq!(refused, 40 - held.len());
    // The legitimate peer still gets in (a fresh node, a fresh connection).
    let other = legit().await;
    within(
        10,
        "legitimate peer during the flood",
        other.ping(victim.addr.clone()),
    )
    .await
    .unwrap();
    let stats = within(10, "stats", peer.stats_of(victim.addr.clone()))
        .await
        .unwrap();
    keep_figures(&format!(
        "connection flood (40 identities, one address): {} held, {} refused \
         (victim counts {} refused, {} incoming open), fds {} -> {}",
        held.len(),
        refused,
        stats.connections_refused,
        stats.connections_in,
        fds,
        victim.fds()
    ));
    assert!(
        stats.connections_refused >= (40 - limit) as u64,
        "{stats:?}"
    );
    // Once the attacker lets go, its address is welcome again.
    for c in &held {
        c.close(0u32.into(), b"bye");
    }
    drop(held);
    let again = within(10, "after the flood", async {
        loop {
            if let Ok(c) = attacker_connection(&victim).await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    drop(again);
}
