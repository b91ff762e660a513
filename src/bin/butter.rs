//! `butter`: run a peer, inspect identities, ping and call peers.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[path = "butter/pipe.rs"]
mod pipe;

use anyhow::{Context, Result};
use butter::{Identity, Node, NodeAddr, PeerEvent, Target};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "butter",
    version,
    about = "Butter peer-to-peer node and tools",
    after_help = "Logs go to stderr: warnings by default; -v for what a node does (info), \
                  -vv to debug, -q for errors only. RUST_LOG (e.g. RUST_LOG=butter=debug) \
                  overrides both."
)]
struct Cli {
    /// More log lines on stderr (-v: info, -vv: debug, -vvv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Errors only on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print this node's id (creating the identity if missing).
    Id {
        #[arg(long, env = "BUTTER_DATA_DIR", value_parser = parse_dir)]
        data_dir: Option<PathBuf>,
    },
    /// Run a node. Prints `NODEID@IP:PORT[,...]` as the first line on stdout.
    Node {
        /// UDP address to listen on.
        #[arg(long, default_value = "0.0.0.0:7400")]
        listen: SocketAddr,
        #[arg(long, env = "BUTTER_DATA_DIR", value_parser = parse_dir)]
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
        /// Storage this node gives the network: its store's byte budget
        /// (K, M, G suffixes), in the data dir.
        #[arg(long, default_value = "4G", value_parser = parse_size)]
        storage: u64,
        /// Hosts to look for actively.
        #[arg(long, default_value_t = 4)]
        want: usize,
        /// Base interval of liveness checks, in milliseconds.
        #[arg(long, default_value_t = 5000)]
        liveness_ms: u64,
        /// Print known-host changes on stdout (`+ ID ADDR`, `- ID REASON`;
        /// hosts known already when the node is up as `+` lines first),
        /// `dht joined` once the node has joined the DHT (findable from
        /// any node), and UPnP changes (`upnp STATUS`).
        #[arg(long)]
        events: bool,
        /// Introducer to register with (NODEID@IP:PORT); repeatable.
        #[arg(long = "introducer", value_parser = parse_node_addr)]
        introducers: Vec<NodeAddr>,
        /// Node to join the DHT through (NODEID@IP:PORT); repeatable.
        #[arg(long = "bootstrap", value_parser = parse_node_addr)]
        bootstrap: Vec<NodeAddr>,
        /// How often to refresh introducer registrations, in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        register_ms: u64,
        /// Also serve the `bench/sink` route that `butter bench` sends to.
        #[arg(long)]
        bench: bool,
        /// Serve route NAME by running COMMAND (with `sh -c`) for each
        /// request: the body on its stdin, its stdout the reply, the caller's
        /// id in `BUTTER_PEER`; a non-zero exit is an error reply with its
        /// stderr. Repeatable.
        #[arg(long = "route", value_name = "NAME=COMMAND", value_parser = parse_route)]
        routes: Vec<(String, String)>,
        /// Commands of `--route` running at once, at most (more requests are
        /// answered "busy").
        #[arg(long, default_value_t = 8)]
        route_concurrency: usize,
        /// Longest a `--route` command may run, in seconds.
        #[arg(long, default_value_t = 60)]
        route_timeout_secs: u64,
        /// Do not ask the LAN's gateway for a port mapping (UPnP).
        #[arg(long)]
        no_upnp: bool,
        /// Send the UPnP search to this gateway (IP:1900) instead of the
        /// multicast group.
        #[arg(long)]
        upnp_gateway: Option<SocketAddr>,
        /// UPnP lease to ask for, in seconds (renewed at half).
        #[arg(long, default_value_t = 3600)]
        upnp_lease_secs: u64,
    },
    /// Print the known hosts of a node.
    Peers {
        /// NODEID@HOST:PORT[,HOST:PORT...], NODEID alone with --introducer, or
        /// `local` (the node running from this data dir, `BUTTER_DATA_DIR`)
        #[arg(value_parser = parse_target)]
        addr: Target,
        /// Introducer to reach the node through (NODEID@IP:PORT); repeatable.
        #[arg(long = "introducer", value_parser = parse_node_addr)]
        introducers: Vec<NodeAddr>,
    },
    /// Print the counters of a node.
    Stats {
        /// NODEID@HOST:PORT[,HOST:PORT...], NODEID alone with --introducer, or
        /// `local` (the node running from this data dir, `BUTTER_DATA_DIR`)
        #[arg(value_parser = parse_target)]
        addr: Target,
        /// Introducer to reach the node through (NODEID@IP:PORT); repeatable.
        #[arg(long = "introducer", value_parser = parse_node_addr)]
        introducers: Vec<NodeAddr>,
    },
    /// Ping a node: checks its identity and prints the round trip and path.
    Ping {
        /// NODEID@HOST:PORT[,HOST:PORT...], NODEID alone with --introducer, or
        /// `local` (the node running from this data dir, `BUTTER_DATA_DIR`)
        #[arg(value_parser = parse_target)]
        addr: Target,
        /// Introducer to reach the node through (NODEID@IP:PORT); repeatable.
        #[arg(long = "introducer", value_parser = parse_node_addr)]
        introducers: Vec<NodeAddr>,
        /// Number of pings.
        #[arg(long, short = 'c', default_value_t = 1)]
        count: u32,
        /// Identity to call with (default: a throwaway one).
        #[arg(long, value_parser = parse_dir)]
        data_dir: Option<PathBuf>,
    },
    /// Raw bytes between two machines, both ends authenticated by NodeId
    /// (like dumbpipe): `listen` on one, `connect` from the other.
    Pipe {
        #[command(subcommand)]
        command: PipeCommand,
    },
    /// Secure messages between nodes: sealed to the recipient, kept in its
    /// mailbox on the network while it is offline.
    Msg {
        #[command(subcommand)]
        command: MsgCommand,
    },
    /// Call a route and write the reply body as it is (no newline added) to
    /// stdout or a file. The request body streams from stdin when BODY is
    /// omitted (any size).
    Call {
        /// NODEID@HOST:PORT[,HOST:PORT...], NODEID alone with --introducer, or
        /// `local` (the node running from this data dir, `BUTTER_DATA_DIR`)
        #[arg(value_parser = parse_target)]
        addr: Target,
        /// Introducer to reach the node through (NODEID@IP:PORT); repeatable.
        #[arg(long = "introducer", value_parser = parse_node_addr)]
        introducers: Vec<NodeAddr>,
        /// Route name, e.g. `reverse`.
        route: String,
        /// Request body (streamed from stdin if omitted).
        body: Option<String>,
        /// Write the reply to this file instead of stdout.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
        /// Identity to call with (default: a throwaway one).
        #[arg(long, value_parser = parse_dir)]
        data_dir: Option<PathBuf>,
    },
    /// List the routes a node serves, one per line.
    Routes {
        /// NODEID@HOST:PORT[,HOST:PORT...], NODEID alone with --introducer, or
        /// `local` (the node running from this data dir, `BUTTER_DATA_DIR`)
        #[arg(value_parser = parse_target)]
        addr: Target,
        /// Introducer to reach the node through (NODEID@IP:PORT); repeatable.
        #[arg(long = "introducer", value_parser = parse_node_addr)]
        introducers: Vec<NodeAddr>,
    },
    /// DHT lookups as a guest (this process never enters anyone's table):
    /// the result alone on stdout, hops and messages on stderr.
    Dht {
        #[command(subcommand)]
        command: DhtCommand,
        /// Node to start the lookup from (NODEID@IP:PORT); repeatable.
        #[arg(long = "bootstrap", global = true, value_parser = parse_node_addr)]
        bootstrap: Vec<NodeAddr>,
        /// Introducer to find nodes through (NODEID@IP:PORT); repeatable.
        #[arg(long = "introducer", global = true, value_parser = parse_node_addr)]
        introducers: Vec<NodeAddr>,
        /// Identity to publish and look up with (default: a throwaway one).
        #[arg(long, global = true, value_parser = parse_dir)]
        data_dir: Option<PathBuf>,
    },
    /// A whole network in one process: a dozen nodes on loopback join, one
    /// shares a file, leaves, and another fetches the file, verified.
    Demo {
        /// Nodes to start.
        #[arg(long, default_value_t = 12)]
        nodes: usize,
        /// File to share (default: 32 MiB of noise).
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Share a file: store it on the nodes closest to each of its chunks,
    /// print its key (alone, on the first line of stdout), exit once every
    /// chunk is on its holders.
    Share {
        /// The file.
        file: PathBuf,
        /// Node to join through (NODEID@IP:PORT); repeatable.
        #[arg(long = "bootstrap", value_parser = parse_node_addr)]
        bootstrap: Vec<NodeAddr>,
        /// Introducer to find nodes through (NODEID@IP:PORT); repeatable.
        #[arg(long = "introducer", value_parser = parse_node_addr)]
        introducers: Vec<NodeAddr>,
        /// Identity (and, with --serve, the store) to use.
        #[arg(long, value_parser = parse_dir)]
        data_dir: Option<PathBuf>,
        /// Keep serving as a node afterwards (until Ctrl-C).
        #[arg(long)]
        serve: bool,
        /// UDP address to listen on.
        #[arg(long, default_value = "0.0.0.0:0")]
        listen: SocketAddr,
        /// Keywords for the search index (comma-separated or repeated).
        #[arg(long, value_delimiter = ',')]
        keywords: Vec<String>,
        /// Do not index the file for `butter search`.
        #[arg(long)]
        no_index: bool,
    },
    /// Search the index for content similar to some words (or a whole
    /// text): one hit per line, best first: key, score, name, holders.
    Search {
        /// What to look for.
        query: String,
        /// Hits at most.
        #[arg(long, default_value_t = 10)]
        limit: usize,
        /// List peers whose profiles (what they hold) are similar instead.
        #[arg(long)]
        peers: bool,
        /// Node to start from (NODEID@IP:PORT); repeatable.
        #[arg(long = "bootstrap", value_parser = parse_node_addr)]
        bootstrap: Vec<NodeAddr>,
        /// Introducer to find nodes through (NODEID@IP:PORT); repeatable.
        #[arg(long = "introducer", value_parser = parse_node_addr)]
        introducers: Vec<NodeAddr>,
        /// Identity to search with.
        #[arg(long, value_parser = parse_dir)]
        data_dir: Option<PathBuf>,
    },
    /// Fetch what a key stands for into a file, verified (a progress bar on
    /// stderr).
    Fetch {
        /// The key `butter share` printed.
        key: butter::content::Hash,
        /// Where to write it.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        /// Node to start from (NODEID@IP:PORT); repeatable.
        #[arg(long = "bootstrap", value_parser = parse_node_addr)]
        bootstrap: Vec<NodeAddr>,
        /// Introducer to find nodes through (NODEID@IP:PORT); repeatable.
        #[arg(long = "introducer", value_parser = parse_node_addr)]
        introducers: Vec<NodeAddr>,
        /// Identity to fetch with.
        #[arg(long, value_parser = parse_dir)]
        data_dir: Option<PathBuf>,
    },
    /// Stream bytes to a node's `bench/sink` route (`butter node --bench`), check
    /// they arrived intact (BLAKE3) and print the throughput and path.
    Bench {
        /// NODEID@HOST:PORT[,HOST:PORT...], NODEID alone with --introducer, or
        /// `local` (the node running from this data dir, `BUTTER_DATA_DIR`)
        #[arg(value_parser = parse_target)]
        addr: Target,
        /// Bytes to send (K, M, G suffixes).
        #[arg(long, default_value = "64M", value_parser = parse_size)]
        bytes: u64,
        /// Introducer to reach the node through (NODEID@IP:PORT); repeatable.
        #[arg(long = "introducer", value_parser = parse_node_addr)]
        introducers: Vec<NodeAddr>,
    },
}

#[derive(Subcommand)]
enum DhtCommand {
    /// Find a node by id: prints `NODEID@IP:PORT`.
    FindNode {
        /// The node's id (64 hex digits).
        id: butter::NodeId,
    },
    /// Sign VALUE under the name KEY with this identity and store it on the
    /// closest nodes: prints the record's key (what `get` takes).
    Put {
        /// The record's name.
        key: String,
        /// The value (at most 16 KiB).
        value: String,
    },
    /// Read a record by its key: prints the value.
    Get {
        /// The record's key (64 hex digits, as `put` printed it).
        key: butter::NodeId,
    },
    /// Who holds the content of KEY: one `NODEID@IP:PORT` per line.
    Providers {
        /// The content's key (64 hex digits).
        key: butter::NodeId,
    },
}

#[derive(Subcommand)]
enum PipeCommand {
    /// Wait for a peer: prints this end's address (NODEID@IP:PORT,...) as
    /// the first line on stderr, then copies stdin to the first peer that
    /// connects and what it sends to stdout; exits when both directions
    /// ended. With --tcp-connect, each connecting pipe is instead a new TCP
    /// connection to TARGET (runs until stopped).
    Listen {
        /// UDP address to listen on.
        #[arg(long, default_value = "0.0.0.0:0")]
        listen: SocketAddr,
        /// Identity (default: a new one each run).
        #[arg(long, value_parser = parse_dir)]
        data_dir: Option<PathBuf>,
        /// Accept only this peer; repeatable (default: anyone).
        #[arg(long = "allow", value_parser = pipe::parse_allow)]
        allow: Vec<butter::NodeId>,
        /// Introducer to register with, so that peers behind NATs can reach
        /// this end by id (NODEID@IP:PORT); repeatable.
        #[arg(long = "introducer", value_parser = parse_node_addr)]
        introducers: Vec<NodeAddr>,
        /// Forward each pipe to this TCP address (HOST:PORT).
        #[arg(long)]
        tcp_connect: Option<String>,
    },
    /// Connect to a listening end: stdin goes to it, what it sends to
    /// stdout. With --tcp, a local TCP port instead: each connection to it
    /// is a pipe.
    Connect {
        /// NODEID@HOST:PORT[,HOST:PORT...], or NODEID alone with --introducer.
        #[arg(value_parser = parse_target)]
        addr: Target,
        /// Introducer to reach the other end through (NODEID@IP:PORT); repeatable.
        #[arg(long = "introducer", value_parser = parse_node_addr)]
        introducers: Vec<NodeAddr>,
        /// Identity to connect with (default: a throwaway one).
        #[arg(long, value_parser = parse_dir)]
        data_dir: Option<PathBuf>,
        /// Listen on this local TCP address and forward each connection.
        #[arg(long)]
        tcp: Option<SocketAddr>,
    },
}

#[derive(Subcommand)]
enum MsgCommand {
    /// Send TEXT to node ID from this data dir's identity: delivered directly
    /// when ID is reachable, else stored in its mailbox (its closest nodes
    /// keep it until it comes online). Exits once it is one or the other;
    /// prints the message id on stdout.
    Send {
        /// The recipient's id (64 hex digits).
        to: butter::NodeId,
        /// The message (read from stdin if omitted).
        text: Option<String>,
        /// Topic to send on.
        #[arg(long, default_value = "chat")]
        topic: String,
        /// Wait for the recipient's acknowledgement, not only for a mailbox
        /// holder to take it.
        #[arg(long)]
        wait: bool,
        /// How long to try, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
        #[arg(long, env = "BUTTER_DATA_DIR", value_parser = parse_dir)]
        data_dir: Option<PathBuf>,
        /// Node to join the network through (NODEID@IP:PORT); repeatable.
        #[arg(long = "bootstrap", value_parser = parse_node_addr)]
        bootstrap: Vec<NodeAddr>,
        /// Introducer to reach the recipient through (NODEID@IP:PORT); repeatable.
        #[arg(long = "introducer", value_parser = parse_node_addr)]
        introducers: Vec<NodeAddr>,
    },
    /// Run a node with this data dir's identity and print each message as
    /// one line, `FROM_ID TEXT` (line breaks in TEXT as `\n`), on stdout;
    /// its address goes to stderr. Drains its mailbox as it starts.
    Listen {
        /// Topic to listen on.
        #[arg(long, default_value = "chat")]
        topic: String,
        /// UDP address to listen on.
        #[arg(long, default_value = "0.0.0.0:7400")]
        listen: SocketAddr,
        #[arg(long, env = "BUTTER_DATA_DIR", value_parser = parse_dir)]
        data_dir: Option<PathBuf>,
        /// Node to join the network through (NODEID@IP:PORT); repeatable.
        #[arg(long = "bootstrap", value_parser = parse_node_addr)]
        bootstrap: Vec<NodeAddr>,
        /// Introducer to register with (NODEID@IP:PORT); repeatable.
        #[arg(long = "introducer", value_parser = parse_node_addr)]
        introducers: Vec<NodeAddr>,
        /// Do not discover peers by LAN multicast.
        #[arg(long)]
        no_discovery: bool,
    },
}

/// The route `butter node --bench` serves: consumes a stream, returns its length
/// and BLAKE3 hash.
const SINK_ROUTE: &str = "bench/sink";

fn parse_target(s: &str) -> Result<Target, String> {
    if s.contains('@') || s == LOCAL {
        parse_node_addr(s).map(Target::Addr)
    } else {
        s.parse::<butter::NodeId>().map(Target::Id).map_err(|e| {
            format!("expected NODEID@IP:PORT[,IP:PORT...], or a NODEID with --introducer ({e})")
        })
    }
}

/// `NAME=COMMAND` of `butter node --route`.
fn parse_route(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((name, command)) if !name.is_empty() && !command.trim().is_empty() => {
            Ok((name.to_string(), command.to_string()))
        }
        _ => Err(format!("expected NAME=COMMAND, got {s:?}")),
    }
}

/// One request to a `--route` route: `command` runs with the request body
/// streaming into its stdin and its stdout streaming back as the reply (any
/// size both ways). A command that fails before writing anything is an
/// error reply with the first line of its stderr; one that fails later
/// cuts the reply short (the caller sees an error, not a short body). The
/// slot is held until the command has exited.
async fn run_route(
    command: String,
    running: std::sync::Arc<tokio::sync::Semaphore>,
    limit: Duration,
    mut req: butter::StreamRequest,
) -> butter::Result<butter::Body> {
    use futures_util::StreamExt;
    use tokio::io::AsyncReadExt;
    let slot = running
        .try_acquire_owned()
        .map_err(|_| butter::Error::Busy("every --route command slot"))?;
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", &command])
        .env("BUTTER_PEER", req.peer().to_string())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| butter::Error::handler(format!("cannot run `{command}`: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut req.body, &mut stdin).await;
    });
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<bytes::Bytes>>(4);
    let (first_tx, first_rx) = tokio::sync::oneshot::channel::<Option<String>>();
    tokio::spawn(async move {
        let _slot = slot;
        let run = async {
            let mut first = Some(first_tx);
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match stdout.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        if let Some(f) = first.take() {
                            let _ = f.send(None);
                        }
                        if tx
                            .send(Ok(bytes::Bytes::copy_from_slice(&buf[..n])))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                        return;
                    }
                }
            }
            let mut err = Vec::new();
            let _ = (&mut stderr).take(4096).read_to_end(&mut err).await;
            let failed = match child.wait().await {
                Ok(status) if status.success() => None,
                Ok(status) => {
                    let why = String::from_utf8_lossy(&err);
                    let why = why.lines().next().unwrap_or("").trim().to_string();
                    Some(format!(
                        "`{command}` failed ({status}){}",
                        if why.is_empty() {
                            String::new()
                        } else {
                            format!(": {why}")
                        }
                    ))
                }
                Err(e) => Some(format!("`{command}`: {e}")),
            };
            match (first.take(), failed) {
                (Some(f), failed) => {
                    let _ = f.send(failed);
                }
                (None, Some(why)) => {
                    let _ = tx.send(Err(std::io::Error::other(why))).await;
                }
                (None, None) => {}
            }
        };
        if tokio::time::timeout(limit, run).await.is_err() {
            let _ = tx
                .send(Err(std::io::Error::other(format!(
                    "`{command}` ran longer than {limit:?}"
                ))))
                .await;
        }
    });
    // An error before any output is a proper error reply.
    if let Ok(Some(why)) = first_rx.await {
        return Err(butter::Error::handler(why));
    }
    let chunks =
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
            .boxed();
    Ok(butter::Body::from_reader(ChunkReader::new(chunks)))
}

/// An `AsyncRead` over a stream of byte chunks (or an error).
struct ChunkReader {
    chunks: futures_util::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>,
    current: bytes::Bytes,
}

impl ChunkReader {
    fn new(
        chunks: futures_util::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>,
    ) -> Self {
        ChunkReader {
            chunks,
            current: bytes::Bytes::new(),
        }
    }
}

impl tokio::io::AsyncRead for ChunkReader {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use futures_util::StreamExt;
        use std::task::Poll;
        while self.current.is_empty() {
            match self.chunks.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(b))) => self.current = b,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = self.current.len().min(buf.remaining());
        buf.put_slice(&self.current.split_to(n));
        Poll::Ready(Ok(()))
    }
}

/// The sink: reads the body to its end, hashing as it goes.
async fn sink(mut req: butter::StreamRequest) -> butter::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    loop {
        let n = req.body.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
        hasher.update(&buf[..n]);
    }
    postcard::to_allocvec(&(total, *hasher.finalize().as_bytes()))
        .map_err(|e| butter::Error::Malformed(e.to_string()))
}

/// Describes the path to a peer the way `butter ping` prints it.
fn path_of(node: &Node, peer: &butter::NodeId) -> String {
    match node.connection_info(peer) {
        Some(info) if info.path == butter::PathKind::Relayed => "via relay".into(),
        Some(info) => format!("via {} {}", info.path, info.remote),
        None => "via (closed)".into(),
    }
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

/// The address that stands for the node running from this machine's data
/// dir (`BUTTER_DATA_DIR`, or the default): what it wrote in
/// [`ADDR_FILE`] when it started, reached on loopback first.
const LOCAL: &str = "local";

/// Where `butter node` writes its address (`NODEID@IP:PORT[,...]`).
const ADDR_FILE: &str = "node.addr";

/// `NODEID@HOST:PORT[,HOST:PORT...]`, where a host may be a name (resolved
/// here, e.g. a container's service name), or [`LOCAL`].
fn parse_node_addr(s: &str) -> Result<NodeAddr, String> {
    if s == LOCAL {
        return local_addr();
    }
    if let Ok(addr) = s.parse::<NodeAddr>() {
        return Ok(addr);
    }
    let (id, hosts) = s
        .trim()
        .split_once('@')
        .ok_or_else(|| format!("expected NODEID@HOST:PORT[,HOST:PORT...], got {s:?}"))?;
    let id: butter::NodeId = id.parse().map_err(|e| format!("{e}"))?;
    let mut addrs = Vec::new();
    for host in hosts.split(',') {
        use std::net::ToSocketAddrs;
        if host.trim().is_empty() {
            return Err(format!("an empty address in the list {s:?}"));
        }
        let found = host
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host:?}: {e}"))?;
        // IPv4 first (what a LAN or a container network mostly has).
        let mut found: Vec<SocketAddr> = found.collect();
        found.sort_by_key(|a| a.is_ipv6());
        addrs.extend(found);
    }
    if addrs.is_empty() {
        return Err(format!("no address in {s:?}"));
    }
    Ok(NodeAddr { id, addrs })
}

/// The local node's address (see [`LOCAL`]).
fn local_addr() -> Result<NodeAddr, String> {
    let dir = std::env::var_os("BUTTER_DATA_DIR")
        .map(|d| expand_dir(&d.to_string_lossy()))
        .unwrap_or_else(default_data_dir);
    let file = dir.join(ADDR_FILE);
    let text = std::fs::read_to_string(&file).map_err(|e| {
        format!(
            "no local node: cannot read {} ({e}); is `butter node` running with this data dir?",
            file.display()
        )
    })?;
    let mut addr: NodeAddr = text
        .trim()
        .parse()
        .map_err(|e| format!("{}: {e}", file.display()))?;
    // Loopback first: the node listens on every interface or on one of
    // those listed.
    if let Some(port) = addr.addrs.first().map(|a| a.port()) {
        addr.addrs
            .insert(0, SocketAddr::from(([127, 0, 0, 1], port)));
    }
    Ok(addr)
}

/// A data dir, with `{host}` replaced by this machine's host name: one
/// volume serves every replica of a scaled container, each in a directory
/// of its own that outlives a restart.
fn expand_dir(s: &str) -> PathBuf {
    if !s.contains("{host}") {
        return PathBuf::from(s);
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".into());
    PathBuf::from(s.replace("{host}", &host))
}

fn parse_dir(s: &str) -> Result<PathBuf, String> {
    Ok(expand_dir(s))
}

fn default_data_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".butter")
}

/// A client node for one-shot commands: persistent identity only if asked for.
async fn client(
    target: &Target,
    data_dir: Option<PathBuf>,
    introducers: Vec<NodeAddr>,
) -> Result<Node> {
    // It calls one peer: no need to wait for hosts.
    let v6 = guest_needs_v6(target);
    spawn_guest(data_dir, introducers, Vec::new(), |b| {
        if v6 {
            b.listen(std::net::SocketAddr::from((
                std::net::Ipv6Addr::UNSPECIFIED,
                0,
            )))
        } else {
            b
        }
    })
    .await
}

/// A peer given only IPv6 addresses is called from an IPv6 socket
/// (dual-stack where the system allows): the default one is IPv4.
fn guest_needs_v6(target: &Target) -> bool {
    matches!(target, Target::Addr(a) if !a.addrs.is_empty() && a.addrs.iter().all(|x| x.is_ipv6()))
}

/// A target given by id alone needs an introducer to be found through.
fn check_reachable(target: &Target, introducers: &[NodeAddr]) -> Result<()> {
    if let Target::Id(id) = target {
        if introducers.is_empty() {
            anyhow::bail!(
                "invalid argument: {id} alone cannot be reached: give its address \
                 ({id}@IP:PORT) or an --introducer to find it through"
            );
        }
    }
    Ok(())
}

fn upnp_settings(off: bool, gateway: Option<SocketAddr>, lease_secs: u64) -> butter::UpnpSettings {
    let mut upnp = butter::UpnpSettings {
        enabled: !off,
        lease: Duration::from_secs(lease_secs),
        ..Default::default()
    };
    if let Some(gateway) = gateway {
        upnp.search_addr = gateway;
    }
    upnp
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
        Command::Msg { command } => msg(command).await?,
        Command::Pipe { command } => match command {
            PipeCommand::Listen {
                listen,
                data_dir,
                allow,
                introducers,
                tcp_connect,
            } => {
                let mut builder = Node::builder()
                    .listen(listen)
                    .lan_discovery(false)
                    .dht(butter::DhtSettings {
                        serve: false,
                        ..Default::default()
                    })
                    .nat(butter::NatSettings {
                        introducers,
                        ..Default::default()
                    });
                if let Some(dir) = data_dir {
                    builder = builder.data_dir(dir);
                }
                let serve = match tcp_connect {
                    Some(target) => pipe::Serve::Tcp(target),
                    None => pipe::Serve::Stdio,
                };
                pipe::listen(builder, allow, serve).await?;
            }
            PipeCommand::Connect {
                addr,
                introducers,
                data_dir,
                tcp,
            } => {
                check_reachable(&addr, &introducers)?;
                let v6 = guest_needs_v6(&addr);
                let node = spawn_guest(data_dir, introducers, Vec::new(), |b| {
                    let b = b.keep_alive(pipe::KEEP_ALIVE);
                    if v6 {
                        b.listen(SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)))
                    } else {
                        b
                    }
                })
                .await?;
                pipe::connect(node, addr, tcp).await?;
            }
        },
        Command::Node {
            listen,
            data_dir,
            no_discovery,
            interfaces,
            group,
            memory,
            storage,
            want,
            liveness_ms,
            events,
            introducers,
            bootstrap,
            register_ms,
            bench,
            routes,
            route_concurrency,
            route_timeout_secs,
            no_upnp,
            upnp_gateway,
            upnp_lease_secs,
        } => {
            let dir = data_dir.unwrap_or_else(default_data_dir);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let mut builder = Node::builder();
            for b in bootstrap {
                builder = builder.bootstrap(b);
            }
            if bench {
                builder = builder.stream_route(SINK_ROUTE, sink);
            }
            let running =
                std::sync::Arc::new(tokio::sync::Semaphore::new(route_concurrency.max(1)));
            for (name, command) in routes {
                let running = running.clone();
                let limit = Duration::from_secs(route_timeout_secs.max(1));
                builder = builder.stream_route(&name, move |req: butter::StreamRequest| {
                    run_route(command.clone(), running.clone(), limit, req)
                });
            }
            let node = builder
                .nat(butter::NatSettings {
                    introducers,
                    register_interval: Duration::from_millis(register_ms.max(100)),
                    upnp: upnp_settings(no_upnp, upnp_gateway, upnp_lease_secs),
                    ..Default::default()
                })
                .listen(listen)
                .data_dir(dir.clone())
                .memory(memory)
                .storage(storage)
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
            let mut upnp = node.upnp_changes();
            println!("{}", node.addr());
            if events {
                // Hosts taken in before the subscription above (the
                // bootstrap runs from the spawn on): printed once here,
                // later changes as events (one may show twice).
                for host in node.known_hosts() {
                    println!("+ {} {}", host.addr.id, host.addr);
                }
            }
            std::io::stdout().flush()?;
            // For `butter ... local` (and container health checks).
            let addr_file = dir.join(ADDR_FILE);
            let tmp = dir.join(format!("{ADDR_FILE}.tmp"));
            std::fs::write(&tmp, format!("{}\n", node.addr()))
                .and_then(|()| std::fs::rename(&tmp, &addr_file))
                .with_context(|| format!("cannot write {}", addr_file.display()))?;
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            // Said once, when the node's lookup for its own id is answered
            // (from then on any node finds it).
            let joined = node.dht().joined();
            tokio::pin!(joined);
            let mut joined_said = !events;
            loop {
                tokio::select! {
                    signal = tokio::signal::ctrl_c() => { signal?; break; }
                    _ = term.recv() => break,
                    result = &mut joined, if !joined_said => {
                        joined_said = true;
                        if result.is_ok() {
                            println!("dht joined");
                            std::io::stdout().flush()?;
                        }
                    }
                    Ok(()) = upnp.changed() => {
                        let status = upnp.borrow_and_update().clone();
                        if events && status != butter::UpnpStatus::Searching {
                            println!("upnp {status}");
                            std::io::stdout().flush()?;
                        }
                    }
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
            if events && node.upnp_status() == butter::UpnpStatus::Released {
                println!("upnp released");
            }
        }
        Command::Peers { addr, introducers } => {
            check_reachable(&addr, &introducers)?;
            let node = client(&addr, None, introducers).await?;
            let peers = node.peers_of(addr.clone(), 64).await?;
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
        Command::Stats { addr, introducers } => {
            check_reachable(&addr, &introducers)?;
            let node = client(&addr, None, introducers).await?;
            let stats = node.stats_of(addr.clone()).await?;
            for (name, value) in stats.fields() {
                println!("{name} {value}");
            }
            // Introducers also answer with their service figures.
            let figures: butter::Result<butter::unstable::protocol::IntroducerStats> = node
                .call_typed(addr, butter::unstable::protocol::INTRO_STATS_ROUTE, &())
                .await;
            if let Ok(f) = figures {
                for (name, value) in [
                    ("intro.registrations", f.registrations),
                    ("intro.registers_total", f.registers_total),
                    ("intro.introductions", f.introductions),
                    ("intro.punches_tried", f.punches_tried),
                    ("intro.punches_succeeded", f.punches_succeeded),
                    ("intro.relays_opened", f.relays_opened),
                    ("intro.relays_active", f.relays_active),
                    ("intro.relayed_bytes", f.relayed_bytes),
                    ("intro.rejected", f.rejected),
                ] {
                    println!("{name} {value}");
                }
            }
            node.shutdown().await;
        }
        Command::Dht {
            command,
            bootstrap,
            introducers,
            data_dir,
        } => dht(command, bootstrap, introducers, data_dir).await?,
        Command::Demo { nodes, file } => demo(nodes, file).await?,
        Command::Share {
            file,
            bootstrap,
            introducers,
            data_dir,
            serve,
            listen,
            keywords,
            no_index,
        } => {
            let index = (!no_index).then_some(keywords);
            share(file, bootstrap, introducers, data_dir, serve, listen, index).await?
        }
        Command::Search {
            query,
            limit,
            peers,
            bootstrap,
            introducers,
            data_dir,
        } => search(query, limit, peers, bootstrap, introducers, data_dir).await?,
        Command::Fetch {
            key,
            output,
            bootstrap,
            introducers,
            data_dir,
        } => fetch(key, output, bootstrap, introducers, data_dir).await?,
        Command::Ping {
            addr,
            introducers,
            count,
            data_dir,
        } => {
            check_reachable(&addr, &introducers)?;
            let node = client(&addr, data_dir, introducers).await?;
            for i in 0..count {
                if i > 0 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                let start = std::time::Instant::now();
                let ping = node.ping(addr.clone()).await?;
                // The first ping includes finding a path (dial, punch or relay).
                let first = if i == 0 {
                    let s = node.stats();
                    format!(
                        ", first reply after {:.1} ms; attempts: {} punch, {} relay",
                        start.elapsed().as_secs_f64() * 1e3,
                        s.punches_tried,
                        s.relayed_dials,
                    )
                } else {
                    String::new()
                };
                println!(
                    "reply from {} in {:.2} ms {} (version {}, up {}s{first})",
                    ping.reply.id,
                    ping.rtt.as_secs_f64() * 1e3,
                    path_of(&node, &ping.reply.id),
                    ping.reply.version,
                    ping.reply.uptime_ms / 1000
                );
            }
            node.shutdown().await;
        }
        Command::Call {
            addr,
            introducers,
            route,
            body,
            output,
            data_dir,
        } => {
            use tokio::io::AsyncWriteExt;
            check_reachable(&addr, &introducers)?;
            let body = match body {
                Some(b) => butter::Body::from(b.into_bytes()),
                None => butter::Body::from_reader(tokio::io::stdin()),
            };
            let node = client(&addr, data_dir, introducers).await?;
            let mut reply = node.call_stream(addr, &route, body).await?;
            match output {
                Some(path) => {
                    let mut file = tokio::fs::File::create(&path)
                        .await
                        .with_context(|| format!("cannot create {}", path.display()))?;
                    tokio::io::copy(&mut reply, &mut file)
                        .await
                        .context("receiving the reply")?;
                    file.flush().await?;
                }
                None => {
                    let mut out = tokio::io::stdout();
                    tokio::io::copy(&mut reply, &mut out)
                        .await
                        .context("receiving the reply")?;
                    out.flush().await?;
                }
            }
            node.shutdown().await;
        }
        Command::Routes { addr, introducers } => {
            check_reachable(&addr, &introducers)?;
            let node = client(&addr, None, introducers).await?;
            for name in node.routes_of(addr).await? {
                println!("{name}");
            }
            node.shutdown().await;
        }
        Command::Bench {
            addr,
            bytes,
            introducers,
        } => {
            check_reachable(&addr, &introducers)?;
            let node = client(&addr, None, introducers).await?;
            let id = addr.id();
            // Connect first so the figure is the transfer, not the handshake.
            let ping = node.ping(addr.clone()).await?;
            // Pseudo-random, incompressible data: BLAKE3's output stream.
            let mut xof = blake3::Hasher::new().update(b"butter bench").finalize_xof();
            let mut hasher = blake3::Hasher::new();
            let mut left = bytes;
            let mut chunks = Vec::new();
            while left > 0 {
                let n = left.min(1 << 20) as usize;
                let mut chunk = vec![0u8; n];
                xof.fill(&mut chunk);
                hasher.update(&chunk);
                chunks.push(Ok(bytes::Bytes::from(chunk)));
                left -= n as u64;
            }
            let expected = *hasher.finalize().as_bytes();
            let start = std::time::Instant::now();
            let body = butter::Body::from_stream(futures_util::stream::iter(chunks));
            let reply = match node.call_stream(addr, SINK_ROUTE, body).await {
                Err(butter::Error::NoSuchRoute(_)) => anyhow::bail!(
                    "the node does not serve `{SINK_ROUTE}`: start it with `butter node --bench`"
                ),
                other => other?,
            };
            let reply = reply.bytes(1024).await?;
            let secs = start.elapsed().as_secs_f64();
            let (got, hash): (u64, [u8; 32]) =
                postcard::from_bytes(&reply).context("sink reply")?;
            anyhow::ensure!(
                got == bytes && hash == expected,
                "transfer corrupted: sent {bytes} bytes, sink got {got} (hash match: {})",
                hash == expected
            );
            println!(
                "sent {bytes} bytes to {} in {secs:.2} s ({:.1} MiB/s) {}, rtt {:.2} ms, hash ok",
                id,
                bytes as f64 / (1u64 << 20) as f64 / secs,
                path_of(&node, &id),
                ping.rtt.as_secs_f64() * 1e3
            );
            node.shutdown().await;
        }
    }
    Ok(())
}

async fn demo(count: usize, file: Option<PathBuf>) -> Result<()> {
    let count = count.clamp(4, 200);
    let scratch = std::env::temp_dir().join(format!("butter-demo-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let file = match file {
        Some(f) => f,
        None => {
            let path = scratch.join("demo.bin");
            let mut data = vec![0u8; 32 << 20];
            let mut xof = blake3::Hasher::new().update(b"butter demo").finalize_xof();
            xof.fill(&mut data);
            std::fs::write(&path, &data)?;
            path
        }
    };
    let started = std::time::Instant::now();
    // The introducer: rendezvous, STUN, punching and relay for the others
    // (on loopback nobody needs the last three; it still holds no data).
    let rendezvous = butter::introducer::Introducer::new(Default::default());
    let intro = butter::introducer::builder("127.0.3.254:0".parse()?)
        .service(rendezvous.clone())
        .spawn()
        .await?;
    println!("introducer at {}", intro.addr());
    println!("starting {count} nodes on loopback (127.0.3.x), each registering with the introducer and joining the DHT through the first");
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..count {
        let listen: SocketAddr = format!("127.0.3.{}:0", i + 1).parse()?;
        let mut b = Node::builder()
            .listen(listen)
            .lan_discovery(false)
            .nat(butter::NatSettings {
                introducers: vec![intro.addr()],
                upnp: upnp_settings(true, None, 0),
                ..Default::default()
            })
            .data_dir(scratch.join(format!("node{i}")));
        if let Some(first) = nodes.first() {
            b = b.bootstrap(first.addr());
        }
        nodes.push(b.spawn().await?);
    }
    // Formed: every node's lookup for its own id was answered (each is
    // findable from any other from then on).
    let joined = futures_util::future::join_all(nodes.iter().map(|n| n.dht().joined()));
    let _ = tokio::time::timeout(Duration::from_secs(20), joined).await;
    let sizes: Vec<usize> = nodes.iter().map(|n| n.known_hosts().len()).collect();
    println!(
        "network formed in {:.1} s: each node knows {}..{} others (its Kademlia table); {} registered with the introducer",
        started.elapsed().as_secs_f64(),
        sizes.iter().min().unwrap_or(&0),
        sizes.iter().max().unwrap_or(&0),
        rendezvous.stats().registrations
    );
    let sharer = 1.min(count - 1);
    let t = std::time::Instant::now();
    let shared = nodes[sharer].share_file(&file).await?;
    println!(
        "node {sharer} shares {} ({}): {} blobs (chunks and manifests), each on at least {} nodes, in {:.2} s",
        file.display(),
        human(shared.size),
        shared.blobs,
        shared.holders,
        t.elapsed().as_secs_f64()
    );
    println!("key: {}", shared.key);
    let mut held = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        held.push((i, n.storage().used));
    }
    println!(
        "stored: {}",
        held.iter()
            .map(|(i, b)| format!("node {i} {}", human(*b)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let leaving = nodes.remove(sharer);
    leaving.shutdown().await;
    println!("node {sharer} (the sharer) has left the network");
    let reader = nodes.len() - 1;
    let out = scratch.join("fetched.bin");
    let t = std::time::Instant::now();
    let fetched = nodes[reader].get_to_file(shared.key, &out).await?;
    let secs = t.elapsed().as_secs_f64();
    let same = std::fs::read(&out)? == std::fs::read(&file)?;
    // The paths the reader's connections took (all direct on loopback;
    // across NATs: punched, predicted or relayed).
    let mut paths: std::collections::BTreeMap<String, usize> = Default::default();
    for h in nodes[reader].known_hosts() {
        if let Some(info) = nodes[reader].connection_info(&h.addr.id) {
            *paths.entry(info.path.to_string()).or_default() += 1;
        }
    }
    println!(
        "the last node fetches it: {} in {:.2} s ({:.0} MiB/s), every chunk verified, {} from the network, {} it held; identical: {same}",
        human(fetched.size),
        secs,
        fetched.size as f64 / (1u64 << 20) as f64 / secs.max(1e-9),
        fetched.chunks_fetched,
        fetched.chunks_held
    );
    println!(
        "the reader's connections: {}",
        paths
            .iter()
            .map(|(p, n)| format!("{n} {p}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for n in &nodes {
        n.shutdown().await;
    }
    intro.shutdown().await;
    drop(nodes);
    let _ = std::fs::remove_dir_all(&scratch);
    anyhow::ensure!(same, "the fetched file differs");
    Ok(())
}

/// `index`: the keywords to index the file with (`None`: not indexed).
async fn share(
    file: PathBuf,
    bootstrap: Vec<NodeAddr>,
    introducers: Vec<NodeAddr>,
    data_dir: Option<PathBuf>,
    serve: bool,
    listen: SocketAddr,
    index: Option<Vec<String>>,
) -> Result<()> {
    if bootstrap.is_empty() && introducers.is_empty() {
        anyhow::bail!(
            "sharing needs a network: --bootstrap NODEID@IP:PORT or --introducer NODEID@IP:PORT"
        );
    }
    let len = std::fs::metadata(&file)
        .with_context(|| format!("cannot read {}", file.display()))?
        .len();
    let introduced = !introducers.is_empty();
    // A one-shot sharer stores the file in a scratch store on disk (never
    // whole in memory), removed when it exits.
    let scratch = std::env::temp_dir().join(format!("butter-share-{}", std::process::id()));
    let mut builder = Node::builder()
        .listen(listen)
        .nat(butter::NatSettings {
            introducers,
            upnp: upnp_settings(!serve, None, 3600),
            ..Default::default()
        })
        .storage(len.saturating_mul(2).max(64 << 20))
        .dht(butter::DhtSettings {
            serve,
            bootstrap,
            ..Default::default()
        })
        .search(butter::SearchSettings {
            index_shared: index.is_some(),
            ..Default::default()
        });
    if !serve {
        builder = builder
            .lan_discovery(false)
            .store_path(scratch.join("store.redb"));
    }
    if let Some(dir) = data_dir {
        builder = builder.data_dir(dir);
    }
    let node = builder.spawn().await?;
    first_host(&node, introduced).await;
    let outcome = share_on(&node, &file, serve, index.unwrap_or_default()).await;
    if !serve {
        node.shutdown().await;
        drop(node);
        let _ = std::fs::remove_dir_all(&scratch);
    }
    outcome
}

async fn share_on(
    node: &Node,
    file: &std::path::Path,
    serve: bool,
    keywords: Vec<String>,
) -> Result<()> {
    let started = std::time::Instant::now();
    let shared = node.share_file_with(file, keywords).await?;
    println!("{}", shared.key);
    std::io::stdout().flush()?;
    eprintln!(
        "shared {} in {:.1} s: {} blobs, each on at least {} holders",
        human(shared.size),
        started.elapsed().as_secs_f64(),
        shared.blobs,
        shared.holders
    );
    if shared.holders == 0 && !serve {
        anyhow::bail!("no node took the file (is the network reachable?)");
    }
    if shared.short > 0 && !serve {
        anyhow::bail!(
            "{} of {} blobs did not reach all their holders",
            shared.short,
            shared.blobs
        );
    }
    if serve {
        eprintln!("serving {} (Ctrl-C to stop)", node.addr());
        tokio::signal::ctrl_c().await?;
        node.shutdown().await;
    }
    Ok(())
}

async fn search(
    query: String,
    limit: usize,
    peers: bool,
    bootstrap: Vec<NodeAddr>,
    introducers: Vec<NodeAddr>,
    data_dir: Option<PathBuf>,
) -> Result<()> {
    if bootstrap.is_empty() && introducers.is_empty() {
        anyhow::bail!(
            "searching needs a network: --bootstrap NODEID@IP:PORT or --introducer NODEID@IP:PORT"
        );
    }
    let node = guest_with(data_dir, introducers, bootstrap, |b| b).await?;
    let found = node.search(query.as_str(), limit).await;
    node.shutdown().await;
    let found = found?;
    let mut out = std::io::stdout().lock();
    if peers {
        for p in &found.peers {
            writeln!(out, "{}\t{:.3}\t{}", p.peer.id, p.score, p.peer)?;
        }
    } else {
        for h in &found.hits {
            let holders: Vec<String> = h.holders.iter().map(|a| a.id.to_string()).collect();
            writeln!(
                out,
                "{}\t{:.3}\t{}\t{}",
                h.key,
                h.score,
                if h.name.is_empty() { "-" } else { &h.name },
                holders.join(",")
            )?;
        }
    }
    out.flush()?;
    eprintln!(
        "{} hits, {} peers; {} keys looked up, {} messages, {:.0} ms",
        found.hits.len(),
        found.peers.len(),
        found.report.keys,
        found.report.messages,
        found.report.elapsed.as_secs_f64() * 1000.0
    );
    Ok(())
}

async fn fetch(
    key: butter::content::Hash,
    output: PathBuf,
    bootstrap: Vec<NodeAddr>,
    introducers: Vec<NodeAddr>,
    data_dir: Option<PathBuf>,
) -> Result<()> {
    use std::io::IsTerminal;
    if bootstrap.is_empty() && introducers.is_empty() {
        anyhow::bail!(
            "fetching needs a network: --bootstrap NODEID@IP:PORT or --introducer NODEID@IP:PORT"
        );
    }
    // Chunks fetched wait in a scratch store beside the output until the
    // file is whole: a fetch started again (same output) fetches only what
    // it lacks; memory stays small whatever the size.
    let mut scratch = output.clone().into_os_string();
    scratch.push(".chunks");
    let scratch = PathBuf::from(scratch);
    let node = guest_with(data_dir, introducers, bootstrap, |b| {
        b.store_path(&scratch).storage(1 << 40)
    })
    .await?;
    let started = std::time::Instant::now();
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        Some(bar)
    } else {
        None
    };
    let mut next_line = 0u64;
    let result = node
        .get_to_file_with(key, &output, |f| {
            if let Some(bar) = &bar {
                bar.set_length(f.size);
                bar.set_position(f.bytes);
            } else if f.bytes >= next_line || f.bytes == f.size {
                // Plain lines, every tenth, when stderr is not a terminal.
                eprintln!("fetched {} of {}", human(f.bytes), human(f.size));
                next_line = f.bytes + (f.size / 10).max(1);
            }
        })
        .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    node.shutdown().await;
    drop(node);
    let f = result?;
    let _ = std::fs::remove_file(&scratch);
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "fetched {} in {:.1} s ({:.1} MiB/s), verified; {} chunks fetched, {} held already{}",
        human(f.size),
        secs,
        f.size as f64 / (1u64 << 20) as f64 / secs.max(1e-9),
        f.chunks_fetched,
        f.chunks_held,
        match f.chunks_from_providers {
            0 => String::new(),
            n => format!(" ({n} blobs from nodes that fetched it before)"),
        }
    );
    Ok(())
}

/// How a lookup went, on stderr.
fn report(what: &str, r: &butter::LookupReport) {
    eprintln!(
        "{what}: {} hops, {} messages ({} answered, {} failed), {:.1} ms",
        r.hops,
        r.queries,
        r.responses,
        r.failures,
        r.elapsed.as_secs_f64() * 1e3
    );
}

async fn dht(
    command: DhtCommand,
    bootstrap: Vec<NodeAddr>,
    introducers: Vec<NodeAddr>,
    data_dir: Option<PathBuf>,
) -> Result<()> {
    use futures_util::StreamExt;
    if bootstrap.is_empty() && introducers.is_empty() {
        anyhow::bail!("a lookup needs somewhere to start: --bootstrap NODEID@IP:PORT or --introducer NODEID@IP:PORT");
    }
    let node = guest(data_dir, introducers, bootstrap).await?;
    let dht = node.dht();
    let outcome = match command {
        DhtCommand::FindNode { id } => dht.find_node(id).await.map(|found| {
            report("find-node", &found.report);
            println!("{}", found.addr);
        }),
        DhtCommand::Put { key, value } => dht
            .put_record(key.as_bytes(), value.into_bytes())
            .await
            .and_then(|put| {
                report("put", &put.report);
                eprintln!("stored on {} nodes", put.stored);
                if put.stored == 0 {
                    return Err(butter::Error::NotFound("no node took the record".into()));
                }
                println!("{}", put.key);
                Ok(())
            }),
        DhtCommand::Get { key } => dht.get_record(key).await.map(|found| {
            report("get", &found.report);
            let mut out = std::io::stdout();
            let _ = out.write_all(&found.record.value);
            let _ = out.write_all(b"\n");
        }),
        DhtCommand::Providers { key } => {
            let found: Vec<NodeAddr> = dht.providers(key).collect().await;
            for p in &found {
                println!("{p}");
            }
            if found.is_empty() {
                Err(butter::Error::NotFound(format!("no provider of {key}")))
            } else {
                eprintln!("providers: {} found", found.len());
                Ok(())
            }
        }
    };
    node.shutdown().await;
    Ok(outcome?)
}

/// `butter msg send` and `butter msg listen`.
async fn msg(command: MsgCommand) -> Result<()> {
    match command {
        MsgCommand::Send {
            to,
            text,
            topic,
            wait,
            timeout_secs,
            data_dir,
            bootstrap,
            introducers,
        } => {
            let text = match text {
                Some(t) => t,
                None => {
                    let mut t = String::new();
                    std::io::stdin().read_to_string(&mut t)?;
                    t
                }
            };
            let dir = data_dir.unwrap_or_else(default_data_dir);
            let node = guest(Some(dir), introducers, bootstrap).await?;
            let id = node.send_message(to, &topic, text.into_bytes())?;
            let limit = Duration::from_secs(timeout_secs);
            let outcome = if wait {
                tokio::time::timeout(limit, node.delivered(id)).await
            } else {
                tokio::time::timeout(limit, node.sent(id)).await
            };
            let delivered = node.message_status(id) == butter::MessageStatus::Delivered;
            node.shutdown().await;
            match outcome {
                Ok(Ok(())) => {
                    eprintln!(
                        "{}",
                        if delivered {
                            "delivered"
                        } else {
                            "stored in the recipient's mailbox"
                        }
                    );
                    println!("{id}");
                    Ok(())
                }
                Ok(Err(e)) => Err(e).context("message not sent"),
                Err(_) => anyhow::bail!(
                    "message not sent within {timeout_secs} s: the recipient is unreachable \
                     and no mailbox holder took it (give --bootstrap or --introducer)"
                ),
            }
        }
        MsgCommand::Listen {
            topic,
            listen,
            data_dir,
            bootstrap,
            introducers,
            no_discovery,
        } => {
            let dir = data_dir.unwrap_or_else(default_data_dir);
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let mut builder = Node::builder()
                .listen(listen)
                .data_dir(dir)
                .lan_discovery(!no_discovery)
                .nat(butter::NatSettings {
                    introducers,
                    ..Default::default()
                });
            for b in bootstrap {
                builder = builder.bootstrap(b);
            }
            let node = builder.spawn().await?;
            let mut inbox = node.messages(&topic);
            eprintln!("{}", node.addr());
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            let mut out = std::io::stdout();
            loop {
                tokio::select! {
                    signal = tokio::signal::ctrl_c() => { signal?; break; }
                    _ = term.recv() => break,
                    msg = inbox.next() => {
                        let Some(msg) = msg else { break };
                        let text = String::from_utf8_lossy(&msg.body)
                            .replace('\\', "\\\\")
                            .replace('\n', "\\n")
                            .replace('\r', "\\r");
                        writeln!(out, "{} {text}", msg.from)?;
                        out.flush()?;
                    }
                }
            }
            node.shutdown().await;
            Ok(())
        }
    }
}

/// A node for one-shot commands: it looks things up but serves no DHT route
/// and says so in its requests, so nobody takes it into a table; it has
/// nothing to offer inbound (no LAN beacons, no port mapping).
async fn guest(
    data_dir: Option<PathBuf>,
    introducers: Vec<NodeAddr>,
    bootstrap: Vec<NodeAddr>,
) -> Result<Node> {
    guest_with(data_dir, introducers, bootstrap, |b| b).await
}

/// [`guest`], with more settings on the builder.
async fn guest_with(
    data_dir: Option<PathBuf>,
    introducers: Vec<NodeAddr>,
    bootstrap: Vec<NodeAddr>,
    more: impl FnOnce(butter::NodeBuilder) -> butter::NodeBuilder,
) -> Result<Node> {
    let introduced = !introducers.is_empty();
    let node = spawn_guest(data_dir, introducers, bootstrap, more).await?;
    first_host(&node, introduced).await;
    Ok(node)
}

/// The guest node itself: it does not register with the introducers (it only
/// asks them for introductions, punches and relays), so nobody keeps trying
/// to reach it once it has gone.
async fn spawn_guest(
    data_dir: Option<PathBuf>,
    introducers: Vec<NodeAddr>,
    bootstrap: Vec<NodeAddr>,
    more: impl FnOnce(butter::NodeBuilder) -> butter::NodeBuilder,
) -> Result<Node> {
    let mut builder = more(Node::builder())
        .lan_discovery(false)
        .dht(butter::DhtSettings {
            serve: false,
            bootstrap,
            ..Default::default()
        })
        .nat(butter::NatSettings {
            introducers,
            register: false,
            upnp: upnp_settings(true, None, 0),
            ..Default::default()
        });
    if let Some(dir) = data_dir {
        builder = builder.data_dir(dir);
    }
    Ok(builder.spawn().await?)
}

/// Introductions arrive in the background: a node that has only introducers
/// to start from waits (briefly) for a first host before it looks anything up.
async fn first_host(node: &Node, introduced: bool) {
    use tokio::sync::broadcast::error::RecvError;
    if !introduced {
        return;
    }
    let mut events = node.events();
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while node.known_hosts().is_empty() {
            if let Err(RecvError::Closed) = events.recv().await {
                return;
            }
        }
    })
    .await;
}

#[tokio::main]
async fn main() {
    use std::io::IsTerminal;
    let cli = Cli::parse();
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        _ => "trace",
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in a file or a pipe.
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .init();
    if let Err(e) = run(cli).await {
        eprintln!("butter: {e:#}");
        std::process::exit(1);
    }
}
