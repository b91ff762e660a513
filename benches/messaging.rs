//! Messaging benchmark, over loopback, next to a plain `call` in the same
//! run. Prints figures (no assertions):
//!
//! - one message at a time: latency from `send_message` to the recipient's
//!   stream, p50/p99 (a `call` with the same 100-byte body beside it);
//! - messages/s, 20,000 sent at once, until the last is received (beside
//!   calls/s with 64 in flight);
//! - an offline recipient: 100 messages in its mailbox on 5 holders; time
//!   from its start to all 100 received; loopback bytes per stored message
//!   (sealing and placing on 3 holders) and the holders' bytes per message.
//!
//! `cargo bench --bench messaging`.

use std::time::{Duration, Instant};

use butter::{MessagingSettings, Node, Request};

const ROUNDS: usize = 5;
const LATENCY_MSGS: usize = 1_000;
const THROUGHPUT_MSGS: usize = 20_000;
const CALLS: usize = 20_000;
const IN_FLIGHT: usize = 64;
const BODY: [u8; 100] = [0x61; 100];

fn lo() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

async fn node(dir: Option<&std::path::Path>) -> Node {
    let mut b = Node::builder()
        .listen(lo())
        .lan_discovery(false)
        .messaging(MessagingSettings {
            outbox: butter::messaging::outbox::OutboxLimits {
                retry_max: Duration::from_millis(500),
                ..Default::default()
            },
            ..Default::default()
        })
        .route("echo", |req: Request| async move { Ok(req.body().clone()) });
    if let Some(d) = dir {
        b = b.data_dir(d);
    }
    b.spawn().await.unwrap()
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn p50_p99(mut v: Vec<Duration>) -> (f64, f64) {
    v.sort();
    let at = |p: f64| us(v[((v.len() as f64 - 1.0) * p).round() as usize]);
    (at(0.5), at(0.99))
}

/// Bytes sent on loopback (all sockets: the benchmark is alone on it).
fn lo_bytes() -> u64 {
    let dev = std::fs::read_to_string("/proc/net/dev").unwrap_or_default();
    dev.lines()
        .find(|l| l.trim_start().starts_with("lo:"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|rest| rest.split_whitespace().nth(8))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let a = node(None).await;
    let b = node(None).await;
    a.add_peer_addr(&b.addr());
    let mut inbox = b.messages("bench");
    let (mut msg_lat, mut call_lat, mut msg_rate, mut call_rate) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        // One at a time.
        let mut samples = Vec::with_capacity(LATENCY_MSGS);
        for _ in 0..LATENCY_MSGS {
            let t = Instant::now();
            a.send_message(b.id(), "bench", &BODY[..]).unwrap();
            inbox.next().await.unwrap();
            samples.push(t.elapsed());
        }
        msg_lat.push(p50_p99(samples));
        let mut samples = Vec::with_capacity(LATENCY_MSGS);
        for _ in 0..LATENCY_MSGS {
            let t = Instant::now();
            a.call(b.addr(), "echo", &BODY[..]).await.unwrap();
            samples.push(t.elapsed());
        }
        call_lat.push(p50_p99(samples));
        // Many at once.
        let reader = tokio::spawn(async move {
            for _ in 0..THROUGHPUT_MSGS {
                inbox.next().await.unwrap();
            }
            inbox
        });
        let t = Instant::now();
        for _ in 0..THROUGHPUT_MSGS {
            a.send_message(b.id(), "bench", &BODY[..]).unwrap();
        }
        inbox = reader.await.unwrap();
        msg_rate.push(THROUGHPUT_MSGS as f64 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..CALLS {
            let permit = sem.clone().acquire_owned().await.unwrap();
            let (a, to) = (a.clone(), b.addr());
            calls.spawn(async move {
                a.call(to, "echo", &BODY[..]).await.unwrap();
                drop(permit);
            });
        }
        while calls.join_next().await.is_some() {}
        call_rate.push(CALLS as f64 / t.elapsed().as_secs_f64());
    }
    let med = |v: &[(f64, f64)], i: usize| {
        median(v.iter().map(|s| if i == 0 { s.0 } else { s.1 }).collect())
    };
    println!(
        "one at a time, 100 B   message p50 {:7.1} us p99 {:7.1} us | call p50 {:7.1} us p99 {:7.1} us",
        med(&msg_lat, 0),
        med(&msg_lat, 1),
        med(&call_lat, 0),
        med(&call_lat, 1)
    );
    let (m, c) = (median(msg_rate), median(call_rate));
    println!(
        "many at once, 100 B    messages/s {m:9.0} ({THROUGHPUT_MSGS} queued) | calls/s {c:9.0} ({IN_FLIGHT} in flight) | ratio {:.2}x",
        m / c
    );
    a.shutdown().await;
    b.shutdown().await;

    // Offline recipient.
    let mut drains = Vec::new();
    let mut per_msg = Vec::new();
    let mut held_per_msg = Vec::new();
    for _ in 0..3 {
        let mut holders = Vec::new();
        for _ in 0..5 {
            holders.push(node(None).await);
        }
        for x in &holders {
            for y in &holders {
                if x.id() != y.id() {
                    x.add_known_host(y.addr()).await.unwrap();
                }
            }
        }
        let a = node(None).await;
        a.add_known_host(holders[0].addr()).await.unwrap();
        holders[0].add_known_host(a.addr()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let to = butter::Identity::load_or_generate(dir.path()).unwrap().id();
        let before = lo_bytes();
        let ids: Vec<_> = (0..100)
            .map(|_| a.send_message(to, "bench", &BODY[..]).unwrap())
            .collect();
        for id in &ids {
            a.sent(*id).await.unwrap();
        }
        // The sender's first direct attempt and lookup are in the figure.
        per_msg.push((lo_bytes() - before) as f64 / 100.0);
        let held: usize = holders.iter().map(|h| h.held_messages()).sum();
        let bytes: usize = holders.iter().map(|h| h.held_message_bytes()).sum();
        held_per_msg.push(bytes as f64 / held.max(1) as f64);
        let t = Instant::now();
        let b = node(Some(dir.path())).await;
        let mut inbox = b.messages("bench");
        b.add_known_host(holders[1].addr()).await.unwrap();
        for _ in 0..100 {
            inbox.next().await.unwrap();
        }
        drains.push(t.elapsed().as_secs_f64() * 1e3);
        for n in holders.into_iter().chain([a, b]) {
            n.shutdown().await;
        }
    }
    println!(
        "offline recipient      100 messages drained in {:.0} ms from its start (median of 3) | {:.0} loopback bytes per stored message (3 holders) | {:.0} bytes held per copy (100 B body)",
        median(drains),
        median(per_msg),
        median(held_per_msg)
    );
}
