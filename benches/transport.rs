//! Transport benchmark: Butter route calls vs raw quinn doing the same work, in one
//! run, over loopback. Prints figures (no assertions):
//!
//! - call latency p50/p99, one request in flight, 64-byte bodies, a new stream per call
//!   (raw quinn and Butter in alternating blocks of 50 calls);
//! - calls/s with 1, 64 and 256 requests in flight;
//! - connect + first reply p50/p99, a fresh client each time (its endpoint
//!   or node made outside the timing), no session resumption (raw quinn and
//!   Butter alternating connect by connect);
//! - bulk MiB/s of a 512 MiB streamed upload.
//!
//! `cargo bench --bench transport` (set `BUTTER_BENCH_BULK_MIB` to change the size,
//! `BUTTER_BENCH_ONLY` to run one workload: `latency`, `calls`, `bulk`, `connect`).

mod raw;

use std::sync::Arc;
use std::time::{Duration, Instant};

use butter::{Body, Node, Request, StreamRequest};
use tokio::io::AsyncReadExt;

const BODY: [u8; 64] = [0x5a; 64];
const LATENCY_CALLS: usize = 5_000;
/// Latency calls in a block of one side, before the other side's block.
const LATENCY_BLOCK: usize = 50;
/// Calls at a time, and calls per round.
const IN_FLIGHT: [(usize, usize); 3] = [(1, 10_000), (64, 50_000), (256, 50_000)];
const CHUNK: usize = 256 * 1024;
const ROUNDS: usize = 5;
const CONNECTS: usize = 40;

fn lo() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// The raw-quinn side: same TLS, same transport parameters, no Butter framing.
struct Raw {
    _server: quinn::Endpoint,
    addr: std::net::SocketAddr,
    id: butter::Identity,
    client: quinn::Endpoint,
    conn: quinn::Connection,
}

async fn raw_pair() -> Raw {
    let (server, server_id) = raw::server(lo());
    let addr = server.local_addr().unwrap();
    let accept = server.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accept.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        // Echo small requests; count and discard bulk ones.
                        let mut total = 0u64;
                        let mut first = Vec::new();
                        while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX, true).await {
                            if total < 1024 {
                                first
                                    .extend_from_slice(&chunk.bytes[..chunk.bytes.len().min(1024)]);
                            }
                            total += chunk.bytes.len() as u64;
                        }
                        let reply = if total <= 1024 {
                            first
                        } else {
                            total.to_le_bytes().to_vec()
                        };
                        let _ = send.write_all(&reply).await;
                        let _ = send.finish();
                    });
                }
            });
        }
    });
    let (client, conn) = raw::connect(lo(), addr, &server_id).await;
    Raw {
        _server: server,
        addr,
        id: server_id,
        client,
        conn,
    }
}

async fn raw_call(conn: &quinn::Connection) {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&BODY).await.unwrap();
    send.finish().unwrap();
    let reply = recv.read_to_end(1024).await.unwrap();
    assert_eq!(reply.len(), BODY.len());
}

async fn raw_bulk(conn: &quinn::Connection, bytes: u64) {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let chunk = bytes::Bytes::from(vec![7u8; CHUNK]);
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        send.write_chunk(chunk.slice(..n)).await.unwrap();
        left -= n as u64;
    }
    send.finish().unwrap();
    let reply = recv.read_to_end(64).await.unwrap();
    assert_eq!(u64::from_le_bytes(reply.try_into().unwrap()), bytes);
}

/// Raw quinn: connect a fresh client endpoint (made outside the timing)
/// and make one call.
async fn raw_connect(addr: std::net::SocketAddr, id: &butter::Identity) -> Duration {
    let client = raw::client(lo());
    let t = Instant::now();
    let conn = raw::dial(&client, addr, id).await;
    raw_call(&conn).await;
    let took = t.elapsed();
    conn.close(0u32.into(), b"done");
    client.wait_idle().await;
    took
}

/// Raw quinn: one client endpoint connecting again and again (each time
/// resuming the TLS session of the last), a call each; p50 and p99.
async fn raw_reconnects(addr: std::net::SocketAddr, id: &butter::Identity) -> (Duration, Duration) {
    let client = raw::client(lo());
    let mut samples = Vec::new();
    for i in 0..=CONNECTS {
        let t = Instant::now();
        let conn = raw::dial(&client, addr, id).await;
        raw_call(&conn).await;
        if i > 0 {
            samples.push(t.elapsed());
        }
        conn.close(0u32.into(), b"done");
    }
    client.wait_idle().await;
    p50_p99(samples)
}

/// A Butter node on loopback, off the LAN: the connect workloads' client.
async fn client_node() -> Node {
    Node::builder()
        .listen(lo())
        .lan_discovery(false)
        .spawn()
        .await
        .unwrap()
}

/// Butter: one node calling `target` again and again, disconnecting after
/// each call (each dial resumes the TLS session of the last); p50 and p99.
async fn butter_reconnects(target: &butter::NodeAddr) -> (Duration, Duration, u64) {
    let client = client_node().await;
    let mut samples = Vec::new();
    for i in 0..=CONNECTS {
        let t = Instant::now();
        let r = client.call(target, "echo", &BODY[..]).await.unwrap();
        if i > 0 {
            samples.push(t.elapsed());
        }
        assert_eq!(r.len(), BODY.len());
        client.disconnect(&target.id);
    }
    let offered = client.stats().resumptions_offered;
    client.shutdown().await;
    let (p50, p99) = p50_p99(samples);
    (p50, p99, offered)
}

/// Butter: a fresh node (spawned outside the timing) calls `target` by
/// address.
async fn butter_connect(target: &butter::NodeAddr) -> Duration {
    let client = client_node().await;
    let t = Instant::now();
    let r = client.call(target, "echo", &BODY[..]).await.unwrap();
    let took = t.elapsed();
    assert_eq!(r.len(), BODY.len());
    client.shutdown().await;
    took
}

/// Fresh connects of raw quinn and of Butter, alternating one by one (and
/// which goes first), as the latency workload does: p50 and p99 of each
/// over [`CONNECTS`].
async fn connects(
    raw_at: Option<(std::net::SocketAddr, &butter::Identity)>,
    target: Option<&butter::NodeAddr>,
) -> (Option<(Duration, Duration)>, Option<(Duration, Duration)>) {
    let (mut q, mut b) = (vec![], vec![]);
    for i in 0..CONNECTS {
        for side in [i % 2, 1 - i % 2] {
            match (side, raw_at, target) {
                (0, Some((addr, id)), _) => q.push(raw_connect(addr, id).await),
                (1, _, Some(target)) => b.push(butter_connect(target).await),
                _ => {}
            }
        }
    }
    let p = |v: Vec<Duration>| (!v.is_empty()).then(|| p50_p99(v));
    (p(q), p(b))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// p50 and p99 of `samples`.
fn p50_p99(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    (percentile(&samples, 0.5), percentile(&samples, 0.99))
}

/// One line comparing raw quinn's and Butter's p50 and p99, each the
/// median over the rounds.
fn print_p50_p99(label: &str, raw: &[(Duration, Duration)], butter: &[(Duration, Duration)]) {
    if raw.is_empty() && butter.is_empty() {
        return;
    }
    let med = |v: &[(Duration, Duration)], p99: bool| {
        median(v.iter().map(|s| us(if p99 { s.1 } else { s.0 })).collect())
    };
    let (q50, q99, b50, b99) = (
        med(raw, false),
        med(raw, true),
        med(butter, false),
        med(butter, true),
    );
    println!("{label:<36} raw quinn p50 {q50:7.1} us p99 {q99:7.1} us | butter p50 {b50:7.1} us p99 {b99:7.1} us | ratio p50 {:.2}x p99 {:.2}x",
        b50 / q50, b99 / q99);
}

/// Latency samples of raw quinn's and Butter's calls, taken in blocks of
/// [`LATENCY_BLOCK`] calls that alternate between the two (and which of them
/// goes first), so that a change in the machine's speed during a round (other
/// work, CPU frequency, the host's neighbours) weighs on both alike. `None`
/// for a side that is not run (`BUTTER_BENCH_SIDE`).
async fn latency<F, FF, G, GF>(
    mut raw: Option<F>,
    mut butter: Option<G>,
) -> (Option<(Duration, Duration)>, Option<(Duration, Duration)>)
where
    F: FnMut() -> FF,
    FF: std::future::Future<Output = ()>,
    G: FnMut() -> GF,
    GF: std::future::Future<Output = ()>,
{
    let (mut q, mut b) = (vec![], vec![]);
    for block in 0..(200 + LATENCY_CALLS) / LATENCY_BLOCK {
        let warm = block * LATENCY_BLOCK < 200;
        for side in [block % 2, 1 - block % 2] {
            for _ in 0..LATENCY_BLOCK {
                let t = Instant::now();
                match (side, &mut raw, &mut butter) {
                    (0, Some(raw), _) => raw().await,
                    (1, _, Some(butter)) => butter().await,
                    _ => break,
                }
                if !warm {
                    [&mut q, &mut b][side].push(t.elapsed());
                }
            }
        }
    }
    let p = |v: Vec<Duration>| (!v.is_empty()).then(|| p50_p99(v));
    (p(q), p(b))
}

/// UDP datagrams this host has sent (all sockets: the benchmark is alone
/// on loopback), from /proc/net/snmp.
fn udp_datagrams() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "OutDatagrams")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// Calls per second with `in_flight` calls at a time (`calls` in all).
async fn throughput<F, Fut>(call: F, in_flight: usize, calls: usize) -> f64
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let call = Arc::new(call);
    let start = Instant::now();
    let per_task = calls / in_flight;
    let tasks: Vec<_> = (0..in_flight)
        .map(|_| {
            let call = call.clone();
            tokio::spawn(async move {
                for _ in 0..per_task {
                    call().await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    (per_task * in_flight) as f64 / start.elapsed().as_secs_f64()
}

/// Streams `body` to the server's sink route and checks the byte count it saw.
async fn upload(client: &Node, to: butter::NodeId, body: Body, bytes: u64) {
    let reply = client
        .call_stream(to, "sink", body)
        .await
        .unwrap()
        .bytes(64)
        .await
        .unwrap();
    assert_eq!(u64::from_le_bytes(reply[..].try_into().unwrap()), bytes);
}

/// Rounds of a workload: [`ROUNDS`], or none when `BUTTER_BENCH_ONLY`
/// names another (`latency`, `calls`, `bulk`, `connect`; for profiling).
fn rounds(workload: &str) -> usize {
    match std::env::var("BUTTER_BENCH_ONLY") {
        Ok(only) if only != workload => 0,
        _ => ROUNDS,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

#[tokio::main]
async fn main() {
    let bulk_mib: u64 = std::env::var("BUTTER_BENCH_BULK_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let server = Node::builder()
        .listen(lo())
        .route("echo", |req: Request| async move { Ok(req.into_body()) })
        .stream_route("sink", |mut req: StreamRequest| async move {
            let mut buf = vec![0u8; CHUNK];
            let mut total = 0u64;
            loop {
                let n = req.body.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                total += n as u64;
            }
            Ok(total.to_le_bytes().to_vec())
        })
        .spawn()
        .await
        .unwrap();
    let client = Arc::new(Node::builder().listen(lo()).spawn().await.unwrap());
    let target = server.addr();
    client.call(&target, "echo", &BODY[..]).await.unwrap();
    let raw = raw_pair().await;

    let butter_call = {
        let client = client.clone();
        let target = target.id;
        move || {
            let client = client.clone();
            async move {
                let r = client.call(target, "echo", &BODY[..]).await.unwrap();
                assert_eq!(r.len(), BODY.len());
            }
        }
    };
    let raw_conn = raw.conn.clone();
    let raw_call_fn = move || {
        let conn = raw_conn.clone();
        async move { raw_call(&conn).await }
    };

    println!(
        "butter transport benchmark (loopback, release build, {} cores; median of {ROUNDS} alternating rounds; load average {})",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        load_average()
    );
    // `BUTTER_BENCH_SIDE=raw` or `butter` runs one side only (for profiles).
    let side = std::env::var("BUTTER_BENCH_SIDE").unwrap_or_default();
    let (mut q, mut b) = (vec![], vec![]);
    for _ in 0..rounds("latency") {
        let (r, o) = latency(
            (side != "butter").then_some(&raw_call_fn),
            (side != "raw").then_some(&butter_call),
        )
        .await;
        q.extend(r);
        b.extend(o);
    }
    print_p50_p99("latency, 1 in flight, 64 B", &q, &b);

    for (in_flight, calls) in IN_FLIGHT {
        let (mut q, mut b, mut qd, mut bd) = (vec![], vec![], vec![], vec![]);
        for _ in 0..rounds("calls") {
            if side != "butter" {
                let d = udp_datagrams();
                q.push(throughput(raw_call_fn.clone(), in_flight, calls).await);
                qd.push((udp_datagrams() - d) as f64 / calls as f64);
            }
            if side != "raw" {
                let d = udp_datagrams();
                b.push(throughput(butter_call.clone(), in_flight, calls).await);
                bd.push((udp_datagrams() - d) as f64 / calls as f64);
            }
        }
        if q.is_empty() && b.is_empty() {
            continue;
        }
        let (q, b) = (median(q), median(b));
        println!(
            "calls/s, {in_flight:3} in flight, 64 B raw quinn {q:9.0}         | butter {b:9.0}         | ratio {:.2}x",
            b / q
        );
        println!(
            "  UDP datagrams per call (both directions): raw quinn {:.2}, butter {:.2}",
            median(qd),
            median(bd)
        );
    }

    let bytes = bulk_mib * 1024 * 1024;
    let chunk = bytes::Bytes::from(vec![7u8; CHUNK]);
    let (mut q, mut b, mut c) = (vec![], vec![], vec![]);
    for _ in 0..rounds("bulk") {
        let t = Instant::now();
        raw_bulk(&raw.conn, bytes).await;
        q.push(bulk_mib as f64 / t.elapsed().as_secs_f64());

        let t = Instant::now();
        let piece = chunk.clone();
        let chunks = futures_util::stream::iter((0..bytes.div_ceil(CHUNK as u64)).map(move |i| {
            let n = (bytes - i * CHUNK as u64).min(CHUNK as u64) as usize;
            Ok(piece.slice(..n))
        }));
        upload(&client, target.id, Body::from_stream(chunks), bytes).await;
        c.push(bulk_mib as f64 / t.elapsed().as_secs_f64());

        let t = Instant::now();
        let reader = tokio_stream_reader(chunk.clone(), bytes);
        upload(&client, target.id, Body::from_reader(reader), bytes).await;
        b.push(bulk_mib as f64 / t.elapsed().as_secs_f64());
    }
    let (q, b, c) = (median(q), median(b), median(c));
    if !q.is_nan() {
        println!("bulk upload {bulk_mib} MiB           raw quinn {q:7.1} MiB/s     | butter {c:7.1} MiB/s     | ratio {:.2}x (Body::from_stream)", c / q);
        println!("                                                        | butter {b:7.1} MiB/s     | ratio {:.2}x (Body::from_reader)", b / q);
    }
    // Last: the long-lived raw connection idles meanwhile.
    let (mut q, mut b) = (vec![], vec![]);
    for _ in 0..rounds("connect") {
        let (r, o) = connects(
            (side != "butter").then_some((raw.addr, &raw.id)),
            (side != "raw").then_some(&target),
        )
        .await;
        q.extend(r);
        b.extend(o);
    }
    print_p50_p99("connect + first reply, fresh client", &q, &b);
    let (mut q, mut b) = (vec![], vec![]);
    let mut offered = 0;
    for _ in 0..rounds("connect") {
        q.push(raw_reconnects(raw.addr, &raw.id).await);
        let (p50, p99, o) = butter_reconnects(&target).await;
        b.push((p50, p99));
        offered += o;
    }
    print_p50_p99("connect + first reply, resumed", &q, &b);
    println!(
        "  butter: {offered} resumptions offered, server resumed {} handshakes",
        server.stats().handshakes_resumed_in
    );

    println!("load average at the end: {}", load_average());
    raw.client.close(0u32.into(), b"done");
}

/// The machine's 1, 5 and 15 minute load averages (other work competing
/// for the 2 cores moves the figures).
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| {
            let parts: Vec<&str> = l.split_whitespace().take(3).collect();
            (parts.len() == 3).then(|| parts.join(" "))
        })
        .unwrap_or_else(|| "unknown".into())
}

/// An AsyncRead of `total` bytes repeating `chunk`, without allocating per read.
fn tokio_stream_reader(
    chunk: bytes::Bytes,
    total: u64,
) -> impl tokio::io::AsyncRead + Send + 'static {
    struct Repeat {
        chunk: bytes::Bytes,
        left: u64,
    }
    impl tokio::io::AsyncRead for Repeat {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            let n = (buf.remaining() as u64)
                .min(self.left)
                .min(self.chunk.len() as u64) as usize;
            buf.put_slice(&self.chunk[..n]);
            self.left -= n as u64;
            std::task::Poll::Ready(Ok(()))
        }
    }
    Repeat { chunk, left: total }
}
