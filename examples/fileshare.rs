//! fileshare: the library side of `butter share` / `butter fetch`, in one
//! process. Starts a few nodes on loopback, shares a file from one, stops
//! it, and fetches the file on another, verified.
//!
//! ```text
//! cargo run --release --example fileshare -- [FILE]
//! ```

use std::time::Instant;

use anyhow::{Context, Result};
use butter::Node;

#[tokio::main]
async fn main() -> Result<()> {
    let file = match std::env::args().nth(1) {
        Some(path) => std::path::PathBuf::from(path),
        None => {
            // No file given: 20 MiB of noise in a temporary file.
            let path = std::env::temp_dir().join("butter-fileshare-demo.bin");
            let mut data = vec![0u8; 20 << 20];
            blake3::Hasher::new()
                .update(b"demo")
                .finalize_xof()
                .fill(&mut data);
            std::fs::write(&path, &data)?;
            path
        }
    };
    let local = "127.0.0.1:0".parse()?;
    // A small network: one seed, five nodes joining through it.
    let seed = Node::builder()
        .listen(local)
        .lan_discovery(false)
        .spawn()
        .await?;
    let mut nodes = vec![seed.clone()];
    for _ in 0..5 {
        let node = Node::builder()
            .listen(local)
            .lan_discovery(false)
            .bootstrap(seed.addr())
            .spawn()
            .await?;
        nodes.push(node);
    }
    while nodes.iter().any(|n| n.known_hosts().len() < 3) {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Share from one node: chunks, manifests, each on its 3 closest nodes.
    let sharer = nodes.remove(1);
    let started = Instant::now();
    let shared = sharer.share_file(&file).await?;
    println!(
        "shared {} ({} bytes, {} blobs, each on at least {} nodes) in {:.2} s",
        shared.key,
        shared.size,
        shared.blobs,
        shared.holders,
        started.elapsed().as_secs_f64()
    );
    // The sharer leaves; another node still gets the file.
    sharer.shutdown().await;
    let out = std::env::temp_dir().join("butter-fileshare-fetched.bin");
    let started = Instant::now();
    let fetched = nodes[3].get_to_file(shared.key, &out).await?;
    let secs = started.elapsed().as_secs_f64();
    let same = std::fs::read(&out)? == std::fs::read(&file).context("reading the original")?;
    println!(
        "fetched {:?} ({} bytes) in {:.2} s ({:.0} MiB/s), {} chunks from the network; identical: {same}",
        fetched.name.unwrap_or_default(),
        fetched.size,
        secs,
        fetched.size as f64 / (1u64 << 20) as f64 / secs.max(1e-9),
        fetched.chunks_fetched
    );
    anyhow::ensure!(same, "the fetched file differs");
    Ok(())
}
