//! Content benchmark: fetching a large file (1 GiB by default) on loopback
//! from 1 and from 3 holders, written to disk and every chunk verified, next
//! to raw quinn downloading the same number of bytes on one stream (same TLS
//! and transport parameters, nothing written, nothing verified) in the same
//! run. Prints figures (no assertions): each the median of several rounds,
//! alternating.
//!
//! `cargo bench --bench content` (`BUTTER_BENCH_FETCH_MIB` sets the size,
//! `BUTTER_BENCH_ROUNDS` the rounds, `BUTTER_BENCH_PARALLEL` the chunks the
//! fetcher has in flight, 16 by default as in `ContentSettings`).

mod raw;

use std::path::Path;
use std::time::{Duration, Instant};

use butter::{ContentSettings, DhtSettings, Node};

const CHUNK: usize = 256 * 1024;

fn lo(i: u8) -> std::net::SocketAddr {
    format!("127.0.4.{i}:0").parse().unwrap()
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Raw quinn: a server that sends as many bytes as asked for on the stream
/// the request came on.
async fn raw_pair() -> (quinn::Endpoint, quinn::Endpoint, quinn::Connection) {
    let (server, server_id) = raw::server(lo(200));
    let addr = server.local_addr().unwrap();
    let accept = server.clone();
    tokio::spawn(async move {
        while let Some(incoming) = accept.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    tokio::spawn(async move {
                        let Ok(ask) = recv.read_to_end(8).await else {
                            return;
                        };
                        let mut left = u64::from_le_bytes(ask.try_into().unwrap_or([0; 8]));
                        let chunk = bytes::Bytes::from(vec![7u8; CHUNK]);
                        while left > 0 {
                            let n = left.min(CHUNK as u64) as usize;
                            if send.write_chunk(chunk.slice(..n)).await.is_err() {
                                return;
                            }
                            left -= n as u64;
                        }
                        let _ = send.finish();
                    });
                }
            });
        }
    });
    let (client, conn) = raw::connect(lo(201), addr, &server_id).await;
    (server, client, conn)
}

async fn raw_download(conn: &quinn::Connection, bytes: u64) -> Duration {
    let t = Instant::now();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&bytes.to_le_bytes()).await.unwrap();
    send.finish().unwrap();
    let mut got = 0u64;
    while let Some(chunk) = recv.read_chunk(usize::MAX, true).await.unwrap() {
        got += chunk.bytes.len() as u64;
    }
    assert_eq!(got, bytes);
    t.elapsed()
}

/// `holders` nodes (each holding the whole file: r = holders) and a guest
/// that fetches (it serves nothing, keeps nothing: every chunk crosses the
/// network each round).
async fn network(
    holders: usize,
    dir: &Path,
    file: &Path,
) -> (Vec<Node>, Node, butter::content::Hash) {
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..holders {
        let mut b = Node::builder()
            .listen(lo(10 * holders as u8 + i as u8))
            .lan_discovery(false)
            .data_dir(dir.join(format!("h{holders}-{i}")))
            .content(ContentSettings {
                replicas: holders,
                storage_bytes: 8 << 30,
                ..Default::default()
            });
        if let Some(first) = nodes.first() {
            b = b.bootstrap(first.addr());
        }
        nodes.push(b.spawn().await.unwrap());
    }
    for a in &nodes {
        for b in &nodes {
            if a.id() != b.id() {
                a.add_known_host(b.addr()).await.unwrap();
            }
        }
    }
    let shared = nodes[0].share_file(file).await.unwrap();
    assert_eq!(shared.short, 0);
    assert_eq!(shared.holders, holders);
    let reader = Node::builder()
        .listen(lo(10 * holders as u8 + 9))
        .lan_discovery(false)
        .content(ContentSettings {
            parallel: env("BUTTER_BENCH_PARALLEL", 16) as usize,
            ..Default::default()
        })
        .dht(DhtSettings {
            serve: false,
            bootstrap: vec![nodes[0].addr()],
            ..Default::default()
        })
        .spawn()
        .await
        .unwrap();
    for n in &nodes {
        reader.add_known_host(n.addr()).await.unwrap();
    }
    (nodes, reader, shared.key)
}

/// The fetch's time and the CPU time it took.
async fn fetch(
    reader: &Node,
    key: butter::content::Hash,
    out: &Path,
    want: &[u8; 32],
) -> (Duration, Duration) {
    let c = cpu();
    let t = Instant::now();
    let fetched = reader.get_to_file(key, out).await.unwrap();
    let took = t.elapsed();
    let used = cpu() - c;
    assert_eq!(fetched.chunks_held, 0);
    // The file on disk is the one shared (hashed outside the timing).
    let got = hash_file(out);
    assert_eq!(&got, want, "the fetched file differs");
    std::fs::remove_file(out).unwrap();
    (took, used)
}

fn hash_file(path: &Path) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(path).unwrap()).unwrap();
    *h.finalize().as_bytes()
}

/// CPU time this process has used (user and system), from /proc.
fn cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the
    // 14th field of the line, stime the 15th.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    Duration::from_millis(ticks * 10)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn mib_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / (1u64 << 20) as f64 / d.as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run());
}

async fn run() {
    let mib = env("BUTTER_BENCH_FETCH_MIB", 1024);
    let rounds = env("BUTTER_BENCH_ROUNDS", 3).max(1) as usize;
    let bytes = mib << 20;
    let dir =
        tempfile::tempdir_in(std::env::var("BUTTER_BENCH_DIR").unwrap_or(".".into())).unwrap();
    let file = dir.path().join("shared.bin");
    {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        let mut xof = blake3::Hasher::new()
            .update(b"content bench")
            .finalize_xof();
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..mib {
            xof.fill(&mut buf);
            out.write_all(&buf).unwrap();
        }
    }
    let want = hash_file(&file);
    println!("content benchmark: {mib} MiB, {rounds} rounds, loopback, release build");
    let t = Instant::now();
    let (one, one_reader, one_key) = network(1, dir.path(), &file).await;
    println!("1 holder ready in {:.1} s", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let (three, three_reader, three_key) = network(3, dir.path(), &file).await;
    println!(
        "3 holders ready in {:.1} s (shared, every blob on 3)",
        t.elapsed().as_secs_f64()
    );
    let (_server, _client, conn) = raw_pair().await;
    let out = dir.path().join("fetched.bin");
    let (mut raw, mut from1, mut from3) = (Vec::new(), Vec::new(), Vec::new());
    // CPU seconds per GiB moved, each kind (the fetches' own hashing of
    // the result, outside their timing, is left out).
    let (mut cpu_raw, mut cpu1, mut cpu3) = (Vec::new(), Vec::new(), Vec::new());
    let per_gib = |d: Duration| d.mul_f64((1u64 << 30) as f64 / bytes as f64);
    for round in 0..rounds {
        let c = cpu();
        raw.push(raw_download(&conn, bytes).await);
        cpu_raw.push(per_gib(cpu() - c));
        let (d, c) = fetch(&one_reader, one_key, &out, &want).await;
        from1.push(d);
        cpu1.push(per_gib(c));
        let (d, c) = fetch(&three_reader, three_key, &out, &want).await;
        from3.push(d);
        cpu3.push(per_gib(c));
        println!(
            "round {}: raw quinn {:.0} MiB/s, 1 holder {:.0} MiB/s, 3 holders {:.0} MiB/s",
            round + 1,
            mib_s(bytes, raw[round]),
            mib_s(bytes, from1[round]),
            mib_s(bytes, from3[round])
        );
    }
    println!(
        "CPU per GiB (median, user + system, whole process): raw quinn {:.2} s, \
         1 holder {:.2} s, 3 holders {:.2} s",
        median(cpu_raw).as_secs_f64(),
        median(cpu1).as_secs_f64(),
        median(cpu3).as_secs_f64()
    );
    // The machine's speed drifts between rounds: each round's own ratio
    // (raw quinn and Butter measured back to back) is steadier.
    let ratio = |of: &[Duration]| {
        let mut r: Vec<f64> = raw
            .iter()
            .zip(of)
            .map(|(raw, d)| raw.as_secs_f64() / d.as_secs_f64())
            .collect();
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    };
    let (ratio1, ratio3) = (ratio(&from1), ratio(&from3));
    let (raw, from1, from3) = (median(raw), median(from1), median(from3));
    println!("| measure | MiB/s | × raw quinn (of medians) | × raw quinn (median of rounds) |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| raw quinn, one stream, {mib} MiB (no disk, no hashing) | {:.0} | 1.00 | 1.00 |",
        mib_s(bytes, raw)
    );
    for (name, d, r) in [("1 holder", from1, ratio1), ("3 holders", from3, ratio3)] {
        println!(
            "| Butter fetch from {name}, {mib} MiB, to disk, verified | {:.0} | {:.2} | {r:.2} |",
            mib_s(bytes, d),
            raw.as_secs_f64() / d.as_secs_f64()
        );
    }
    for n in one
        .into_iter()
        .chain(three)
        .chain([one_reader, three_reader])
    {
        n.shutdown().await;
    }
}
