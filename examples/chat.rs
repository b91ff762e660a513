//! Secure two-party chat over Butter.
//!
//! ```text
//! cargo run --example chat                    # prints its address, waits
//! cargo run --example chat -- NODEID@IP:PORT  # joins; lines typed on either side
//!                                             # appear on the other
//! ```
//! Both sides are authenticated by their keys: a message printed as coming from
//! a peer id was sent by the holder of that key, end-to-end encrypted by QUIC/TLS.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use butter::{Node, NodeAddr, NodeId, Request};
use clap::Parser;
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Parser)]
struct Args {
    /// The other side's address; omit it to wait for someone to join.
    peer: Option<NodeAddr>,
    /// UDP address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let peer: Arc<Mutex<Option<NodeId>>> = Arc::new(Mutex::new(args.peer.as_ref().map(|a| a.id)));
    let route_peer = peer.clone();
    let node = Node::builder()
        .listen(args.listen)
        // Keep the connection (and any NAT mapping) open while idle.
        .keep_alive(Duration::from_secs(5))
        .route("chat/msg", move |req: Request| {
            let peer = route_peer.clone();
            async move {
                let mut current = peer.lock().unwrap_or_else(|p| p.into_inner());
                match *current {
                    None => {
                        *current = Some(req.peer());
                        eprintln!("* {} joined", req.peer().short());
                    }
                    Some(p) if p != req.peer() => {
                        return Err(butter::Error::handler("busy: already chatting"))
                    }
                    Some(_) => {}
                }
                if !req.body().is_empty() {
                    let mut out = std::io::stdout().lock();
                    out.write_all(req.body())?;
                    out.write_all(b"\n")?;
                    out.flush()?;
                }
                Ok(())
            }
        })
        .spawn()
        .await?;
    println!("{}", node.addr());
    std::io::stdout().flush()?;
    if let Some(addr) = &args.peer {
        // An empty message says hello, so the other side knows whom to answer.
        node.call(addr, "chat/msg", "").await?;
        eprintln!("* connected to {}", addr.id.short());
    } else {
        eprintln!(
            "* waiting for a peer: cargo run --example chat -- {}",
            node.addr()
        );
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let to = *peer.lock().unwrap_or_else(|p| p.into_inner());
        match to {
            Some(id) => {
                if let Err(e) = node.call(id, "chat/msg", line).await {
                    eprintln!("* not delivered: {e}");
                }
            }
            None => eprintln!("* nobody has joined yet"),
        }
    }
    node.shutdown().await;
    if peer.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
        bail!("nobody joined");
    }
    Ok(())
}
