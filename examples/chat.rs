//! A chat room over Butter's messages.
//!
//! ```text
//! cargo run --release --example chat -- --name ann                  # opens a room, prints its address
//! cargo run --release --example chat -- --name bob NODEID@IP:PORT   # joins it
//! cargo run --release --example chat -- --name cy NODEID --introducer NODEID@IP:PORT
//!                                                                   # by id, through an introducer
//! ```
//! Lines typed go to everyone in the room, shown as `name: text`; `* name
//! joined` and `* name left` (within a second of its leaving) on stderr.
//! Each line is a message ([`butter::Node::send_message`]): acknowledged,
//! retried until it is, handed over once and in order; everyone is
//! authenticated by their key, end-to-end encrypted. A newcomer learns the
//! room's members from the one it joined through and says hello to each.

use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use butter::{Node, NodeAddr, NodeId, Target};
use clap::Parser;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};

/// Lines.
const SAY: &str = "chat/say";
/// Who is who: hello, the member list, goodbye.
const ROOM: &str = "chat/room";

#[derive(Parser)]
struct Args {
    /// Someone in the room: NODEID@IP:PORT, or NODEID with --introducer.
    /// Omit it to open a room.
    peer: Option<String>,
    /// The name shown beside your lines (default: your id's first digits).
    #[arg(long)]
    name: Option<String>,
    /// UDP address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Introducer to register with and reach others through (NODEID@IP:PORT).
    #[arg(long)]
    introducer: Option<NodeAddr>,
}

/// What members tell each other on the `chat/room` topic.
#[derive(Serialize, Deserialize)]
enum Room {
    /// "I am here, and this is my name" (and my addresses).
    Hello {
        name: String,
        addrs: Vec<SocketAddr>,
    },
    /// The members the sender knows (to a newcomer).
    Members(Vec<NodeAddr>),
    /// "I am leaving."
    Bye,
}

type Members = Arc<Mutex<HashMap<NodeId, String>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn tell(node: &Node, to: NodeId, what: &Room) {
    if let Ok(body) = postcard::to_allocvec(what) {
        let _ = node.send_message(to, ROOM, body);
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut builder = Node::builder()
        .listen(args.listen)
        .lan_discovery(false)
        // Keep connections (and NAT mappings) open while idle.
        .keep_alive(Duration::from_secs(1))
        // A member that vanished (no goodbye) is gone within 3 s.
        .idle_timeout(Duration::from_secs(3));
    if let Some(intro) = &args.introducer {
        builder = builder.nat(butter::NatSettings {
            introducers: vec![intro.clone()],
            ..Default::default()
        });
    }
    let node = builder.spawn().await?;
    let me = args.name.clone().unwrap_or_else(|| node.id().short());
    let hello = Room::Hello {
        name: me.clone(),
        addrs: node.addr().addrs,
    };
    let members: Members = Arc::default();
    let mut room = node.messages(ROOM);
    let mut said = node.messages(SAY);
    println!("{}", node.addr());
    std::io::stdout().flush()?;
    match &args.peer {
        Some(peer) => {
            let target: Target = if peer.contains('@') {
                let addr: NodeAddr = peer.parse()?;
                node.add_peer_addr(&addr);
                Target::Addr(addr)
            } else {
                Target::Id(peer.parse()?)
            };
            tell(&node, target.id(), &hello);
        }
        None => eprintln!(
            "* room open: cargo run --release --example chat -- {}",
            node.addr()
        ),
    }
    // Who is in the room, and who joins or leaves.
    {
        let (node, members, hello) = (node.clone(), members.clone(), hello);
        tokio::spawn(async move {
            while let Some(msg) = room.next().await {
                let Ok(what) = postcard::from_bytes::<Room>(&msg.body) else {
                    continue;
                };
                match what {
                    Room::Hello { name, addrs } => {
                        node.add_peer_addr(&NodeAddr::new(msg.from, addrs));
                        let others: Vec<NodeAddr> = lock(&members)
                            .keys()
                            .filter(|id| **id != msg.from)
                            .map(|id| NodeAddr::new(*id, Vec::<SocketAddr>::new()))
                            .collect();
                        let new = lock(&members).insert(msg.from, name.clone()).is_none();
                        if new {
                            eprintln!("* {name} joined");
                            // Say hello back, and tell it who else is here.
                            tell(&node, msg.from, &hello);
                            let known: Vec<NodeAddr> = others
                                .into_iter()
                                .filter_map(|a| {
                                    node.connection_info(&a.id)
                                        .map(|c| NodeAddr::new(a.id, [c.remote]))
                                })
                                .collect();
                            if !known.is_empty() {
                                tell(&node, msg.from, &Room::Members(known));
                            }
                        }
                    }
                    Room::Members(list) => {
                        for addr in list {
                            if addr.id != node.id() && !lock(&members).contains_key(&addr.id) {
                                node.add_peer_addr(&addr);
                                tell(&node, addr.id, &hello);
                            }
                        }
                    }
                    Room::Bye => {
                        if let Some(name) = lock(&members).remove(&msg.from) {
                            eprintln!("* {name} left");
                        }
                    }
                }
            }
        });
    }
    // Lines, labelled.
    {
        let members = members.clone();
        tokio::spawn(async move {
            while let Some(msg) = said.next().await {
                let name = lock(&members)
                    .get(&msg.from)
                    .cloned()
                    .unwrap_or_else(|| msg.from.short());
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{name}: {}", String::from_utf8_lossy(&msg.body));
                let _ = out.flush();
            }
        });
    }
    // A member whose connection closed has left (it said bye, or it
    // vanished): noticed within a second.
    {
        let (node, members) = (node.clone(), members.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let gone: Vec<(NodeId, String)> = lock(&members)
                    .iter()
                    .filter(|(id, _)| node.connection_info(id).is_none())
                    .map(|(id, n)| (*id, n.clone()))
                    .collect();
                for (id, name) in gone {
                    if lock(&members).remove(&id).is_some() {
                        eprintln!("* {name} left");
                    }
                }
            }
        });
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let line = tokio::select! {
            l = lines.next_line() => l?,
            _ = tokio::signal::ctrl_c() => None,
            _ = term.recv() => None,
        };
        let Some(line) = line else { break };
        let to: Vec<NodeId> = lock(&members).keys().copied().collect();
        if to.is_empty() {
            eprintln!("* nobody else is here yet");
        }
        for id in to {
            node.send_message(id, SAY, line.clone())?;
        }
    }
    // Goodbye to everyone (delivered before the connections close).
    let to: Vec<NodeId> = lock(&members).keys().copied().collect();
    let byes: Vec<_> = to
        .iter()
        .filter_map(|id| {
            postcard::to_allocvec(&Room::Bye)
                .ok()
                .and_then(|b| node.send_message(*id, ROOM, b).ok())
        })
        .collect();
    for id in byes {
        let _ = tokio::time::timeout(Duration::from_secs(2), node.delivered(id)).await;
    }
    node.shutdown().await;
    Ok(())
}
