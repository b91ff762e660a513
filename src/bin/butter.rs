//! `butter`: run a peer, inspect identities, ping and call peers.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use butter::{Identity, Node, NodeAddr};
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

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Id { data_dir } => {
            let dir = data_dir.unwrap_or_else(default_data_dir);
            println!("{}", Identity::load_or_generate(&dir)?.id());
        }
        Command::Node { listen, data_dir } => {
            let dir = data_dir.unwrap_or_else(default_data_dir);
            let node = Node::builder().listen(listen).data_dir(dir).spawn().await?;
            println!("{}", node.addr());
            std::io::stdout().flush()?;
            tokio::signal::ctrl_c().await?;
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
