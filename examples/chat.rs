//! Secure two-party chat over Butter's messages.
//!
//! ```text
//! cargo run --release --example chat                    # prints its address, waits
//! cargo run --release --example chat -- NODEID@IP:PORT  # joins; lines typed on
//!                                                       # either side appear on the other
//! ```
//! Each line is a message ([`Node::send_message`]): acknowledged by the other
//! side, retried until it is, handed over once and in order. Both sides are
//! authenticated by their keys: a line printed as coming from a peer id was
//! sent by the holder of that key, end-to-end encrypted.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Result};
use butter::{Node, NodeAddr, NodeId};
use clap::Parser;
use tokio::io::{AsyncBufReadExt, BufReader};

/// The topic chat lines are sent on.
const TOPIC: &str = "chat";

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
    let node = Node::builder()
        .listen(args.listen)
        .lan_discovery(false)
        // Keep the connection (and any NAT mapping) open while idle.
        .keep_alive(Duration::from_secs(5))
        .spawn()
        .await?;
    let mut incoming = node.messages(TOPIC);
    println!("{}", node.addr());
    std::io::stdout().flush()?;
    if let Some(addr) = &args.peer {
        node.add_peer_addr(addr);
        // An empty message says hello, so the other side knows whom to answer.
        let hello = node.send_message(addr.id, TOPIC, "")?;
        tokio::time::timeout(Duration::from_secs(10), node.delivered(hello)).await??;
        eprintln!("* connected to {}", addr.id.short());
    } else {
        eprintln!(
            "* waiting for a peer: cargo run --release --example chat -- {}",
            node.addr()
        );
    }
    let shown = peer.clone();
    tokio::spawn(async move {
        while let Some(msg) = incoming.next().await {
            {
                let mut current = shown.lock().unwrap_or_else(|p| p.into_inner());
                match *current {
                    None => {
                        *current = Some(msg.from);
                        eprintln!("* {} joined", msg.from.short());
                    }
                    Some(p) if p != msg.from => {
                        eprintln!("* ignored a message from {}", msg.from.short());
                        continue;
                    }
                    Some(_) => {}
                }
            }
            if !msg.body.is_empty() {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&msg.body);
                let _ = out.write_all(b"\n");
                let _ = out.flush();
            }
        }
    });
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let to = *peer.lock().unwrap_or_else(|p| p.into_inner());
        let Some(id) = to else {
            eprintln!("* nobody has joined yet");
            continue;
        };
        let sent = node.send_message(id, TOPIC, line)?;
        let node = node.clone();
        tokio::spawn(async move {
            if tokio::time::timeout(Duration::from_secs(5), node.delivered(sent))
                .await
                .is_err()
            {
                eprintln!("* not delivered yet (retrying)");
            }
        });
    }
    node.shutdown().await;
    if peer.lock().unwrap_or_else(|p| p.into_inner()).is_none() {
        bail!("nobody joined");
    }
    Ok(())
}
