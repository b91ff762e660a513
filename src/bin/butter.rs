//! `butter`: run a peer, inspect identities, ping and call peers.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use butter::{Identity, Node, NodeAddr, PeerEvent};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "butter", version, about = "Butter peer-to-peer node and tools")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print this node's id (creating the identity if missing).
    Id {
        #[arg(long, env = "BUTTER_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Run a node. Prints `NODEID@IP:PORT[,...]` as the first line on stdout.
    Node {
        /// UDP address to listen on.
        #[arg(long, default_value = "0.0.0.0:7400")]
        listen: SocketAddr,
        #[arg(long, env = "BUTTER_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// Do not discover peers by LAN multicast.
        #[arg(long)]
        no_discovery: bool,
        /// Interface (by IPv4 address) for LAN discovery; repeatable. Default: all.
        #[arg(long = "interface")]
        interfaces: Vec<std::net::Ipv4Addr>,
        /// Multicast group for LAN discovery.
        #[arg(long, default_value_t = butter::discovery::DEFAULT_GROUP)]
        group: std::net::SocketAddrV4,
        /// Memory for known hosts (bytes; K, M, G suffixes), which sets the table size.
        #[arg(long, default_value = "1M", value_parser = parse_size)]
        memory: u64,
        /// Hosts to look for actively.
        #[arg(long, default_value_t = 4)]
        want: usize,
        /// Base interval of liveness checks, in milliseconds.
        #[arg(long, default_value_t = 5000)]
        liveness_ms: u64,
        /// Print known-host changes on stdout (`+ ID ADDR`, `- ID REASON`).
        #[arg(long)]
        events: bool,
    },
    /// Print the known hosts of a node.
    Peers {
        /// NODEID@IP:PORT[,IP:PORT...]
        addr: NodeAddr,
    },
    /// Print the counters of a node.
    Stats {
        /// NODEID@IP:PORT[,IP:PORT...]
        addr: NodeAddr,
    },
    /// Ping a node: checks its identity and prints the round trip.
    Ping {
        /// NODEID@IP:PORT[,IP:PORT...]
        addr: NodeAddr,
        /// Number of pings.
        #[arg(long, short = 'c', default_value_t = 1)]
        count: u32,
        /// Identity to call with (default: a throwaway one).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Call a route and print the reply body.
    Call {
        /// NODEID@IP:PORT[,IP:PORT...]
        addr: NodeAddr,
        /// Route name, e.g. `reverse`.
        route: String,
        /// Request body (read from stdin if omitted).
        body: Option<String>,
        /// Identity to call with (default: a throwaway one).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (digits, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => s.split_at(i),
        None => (s, ""),
    };
    let n: u64 = digits.parse().map_err(|_| format!("not a size: {s:?}"))?;
    let mult = match unit.to_ascii_uppercase().trim_end_matches(['B', 'I']) {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return Err(format!("unknown unit in {s:?} (K, M or G)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("too large: {s:?}"))
}

fn default_data_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".butter")
}

/// A client node for one-shot commands: persistent identity only if asked for.
async fn client(data_dir: Option<PathBuf>) -> Result<Node> {
    let mut builder = Node::builder().lan_discovery(false);
    if let Some(dir) = data_dir {
        builder = builder.data_dir(dir);
    }
    Ok(builder.spawn().await?)
}

fn human(bytes: u64) -> String {
    match bytes {
        0 => "0".into(),
        b if b >= 1 << 30 => format!("{:.1}G", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1}M", b as f64 / (1u64 << 20) as f64),
        b => format!("{:.1}K", b as f64 / 1024.0),
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Id { data_dir } => {
            let dir = data_dir.unwrap_or_else(default_data_dir);
            println!("{}", Identity::load_or_generate(&dir)?.id());
        }
        Command::Node {
            listen,
            data_dir,
            no_discovery,
            interfaces,
            group,
            memory,
            want,
            liveness_ms,
            events,
        } => {
            let dir = data_dir.unwrap_or_else(default_data_dir);
            let node = Node::builder()
                .listen(listen)
                .data_dir(dir)
                .memory(memory)
                .want_hosts(want)
                .liveness_interval(Duration::from_millis(liveness_ms))
                .discovery(butter::DiscoverySettings {
                    enabled: !no_discovery,
                    group,
                    interfaces,
                    ..Default::default()
                })
                .spawn()
                .await?;
            let mut changes = node.events();
            println!("{}", node.addr());
            std::io::stdout().flush()?;
            loop {
                tokio::select! {
                    signal = tokio::signal::ctrl_c() => { signal?; break; }
                    change = changes.recv() => match change {
                        Ok(change) if events => {
                            match change {
                                PeerEvent::Added(addr) => println!("+ {} {addr}", addr.id),
                                PeerEvent::Removed { id, reason } => println!("- {id} {reason}"),
                            }
                            std::io::stdout().flush()?;
                        }
                        Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
            node.shutdown().await;
        }
        Command::Peers { addr } => {
            let node = client(None).await?;
            let peers = node.peers_of(&addr, 64).await?;
            println!(
                "{:<64}  {:<22}  {:<9}  {:>9}  {:>10}",
                "ID", "ADDRESS", "UPTIME", "RTT", "STORAGE"
            );
            for p in &peers {
                let class = p.quality.class();
                println!(
                    "{:<64}  {:<22}  {:<9}  {:>7.2}ms  {:>10}",
                    p.addr.id,
                    p.addr
                        .addrs
                        .first()
                        .map(|a| a.to_string())
                        .unwrap_or_default(),
                    format!("{:?}", class.uptime).to_lowercase(),
                    p.quality.rtt_us as f64 / 1e3,
                    human(p.quality.storage_bytes)
                );
            }
            eprintln!("{} known hosts", peers.len());
            node.shutdown().await;
        }
        Command::Stats { addr } => {
            let node = client(None).await?;
            let stats = node.stats_of(&addr).await?;
            for (name, value) in stats.fields() {
                println!("{name} {value}");
            }
            node.shutdown().await;
        }
        Command::Ping {
            addr,
            count,
            data_dir,
        } => {
            let node = client(data_dir).await?;
            for i in 0..count {
                if i > 0 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                let ping = node.ping(&addr).await?;
                println!(
                    "reply from {} in {:.2} ms via direct {} (version {}, up {}s)",
                    ping.reply.id,
                    ping.rtt.as_secs_f64() * 1e3,
                    ping.remote,
                    ping.reply.version,
                    ping.reply.uptime_ms / 1000
                );
            }
            node.shutdown().await;
        }
        Command::Call {
            addr,
            route,
            body,
            data_dir,
        } => {
            let body = match body {
                Some(b) => b.into_bytes(),
                None => {
                    let mut buf = Vec::new();
                    std::io::stdin()
                        .read_to_end(&mut buf)
                        .context("reading the body from stdin")?;
                    buf
                }
            };
            let node = client(data_dir).await?;
            let reply = node.call(&addr, &route, body).await?;
            let mut out = std::io::stdout();
            out.write_all(&reply)?;
            if !reply.ends_with(b"\n") {
                out.write_all(b"\n")?;
            }
            node.shutdown().await;
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    if let Err(e) = run(Cli::parse()).await {
        eprintln!("butter: {e:#}");
        std::process::exit(1);
    }
}
