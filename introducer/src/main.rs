//! `butter-introducer`: the public rendezvous service of a Butter network
//! (registration, introductions, STUN, hole-punch coordination, relay).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;

use butter::introducer::{self, Introducer};
use butter::NodeAddr;

/// Butter introducer: rendezvous, STUN, hole punching and relay for Butter peers.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// UDP address to serve QUIC and STUN on.
    #[arg(long, env = "BUTTER_INTRODUCER_LISTEN", default_value = "0.0.0.0:7401")]
    listen: SocketAddr,
    /// Where the introducer keeps its identity key.
    #[arg(
        long,
        env = "BUTTER_INTRODUCER_DATA_DIR",
        default_value = "butter-introducer-data"
    )]
    data_dir: PathBuf,
    /// Identity key file to use (PEM, read only; e.g. a key shipped with a
    /// deployment so that peers can be configured with the introducer's id
    /// in advance) instead of the one kept in the data dir.
    #[arg(long, env = "BUTTER_INTRODUCER_KEY")]
    key: Option<PathBuf>,
    /// The address nodes should use (printed instead of the interface addresses),
    /// e.g. the public IP of a server behind a cloud's 1:1 NAT.
    #[arg(long, env = "BUTTER_INTRODUCER_PUBLIC_ADDR")]
    public_addr: Option<SocketAddr>,
    /// Most registrations held.
    #[arg(
        long,
        env = "BUTTER_INTRODUCER_MAX_REGISTRATIONS",
        default_value_t = 100_000
    )]
    max_registrations: usize,
    /// Most registrations from one source IP.
    #[arg(long, env = "BUTTER_INTRODUCER_MAX_PER_SOURCE", default_value_t = 64)]
    max_per_source: usize,
    /// Seconds a registration lives without a refresh.
    #[arg(long, env = "BUTTER_INTRODUCER_TTL_SECS", default_value_t = 60)]
    ttl_secs: u64,
    /// Requests per second allowed per source IP.
    #[arg(long, env = "BUTTER_INTRODUCER_RATE", default_value_t = 20.0)]
    rate: f64,
    /// Requests allowed at once per source IP.
    #[arg(long, env = "BUTTER_INTRODUCER_BURST", default_value_t = 40.0)]
    burst: f64,
    /// Relay tunnels open at once, in all.
    #[arg(long, env = "BUTTER_INTRODUCER_RELAY_MAX", default_value_t = 256)]
    relay_max: usize,
    /// Relay tunnels open at once per peer.
    #[arg(long, env = "BUTTER_INTRODUCER_RELAY_PER_PEER", default_value_t = 8)]
    relay_per_peer: usize,
    /// Relay tunnels open at once per source address (twice that per /24 or /64).
    #[arg(long, env = "BUTTER_INTRODUCER_RELAY_PER_SOURCE", default_value_t = 32)]
    relay_per_source: usize,
    /// Seconds a tunnel direction may carry nothing before the tunnel ends.
    #[arg(long, env = "BUTTER_INTRODUCER_RELAY_IDLE_SECS", default_value_t = 60)]
    relay_idle_secs: u64,
    /// Seconds a tunnel lives at most.
    #[arg(
        long,
        env = "BUTTER_INTRODUCER_RELAY_LIFETIME_SECS",
        default_value_t = 3600
    )]
    relay_lifetime_secs: u64,
    /// Incoming connections at once, in all.
    #[arg(
        long,
        env = "BUTTER_INTRODUCER_MAX_CONNECTIONS",
        default_value_t = 16384
    )]
    max_connections: usize,
    /// Incoming connections at once from one address (many nodes may share
    /// one behind a carrier-grade NAT); four times that per /24 or /64.
    #[arg(
        long,
        env = "BUTTER_INTRODUCER_MAX_CONNECTIONS_PER_ADDR",
        default_value_t = 64
    )]
    max_connections_per_addr: usize,
    /// Relay bandwidth per tunnel and direction, KiB/s.
    #[arg(long, env = "BUTTER_INTRODUCER_RELAY_KIB_S", default_value_t = 32 * 1024)]
    relay_kib_s: u64,
    /// Seconds between figures in the log.
    #[arg(long, env = "BUTTER_INTRODUCER_STATS_SECS", default_value_t = 60)]
    stats_secs: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let service = Introducer::new(introducer::Config {
        max_registrations: args.max_registrations,
        max_per_source: args.max_per_source,
        ttl: Duration::from_secs(args.ttl_secs.max(1)),
        rate: args.rate,
        burst: args.burst,
        relay_max: args.relay_max,
        relay_per_peer: args.relay_per_peer,
        relay_rate: args.relay_kib_s.saturating_mul(1024),
        relay_per_source: args.relay_per_source,
        relay_idle: Duration::from_secs(args.relay_idle_secs.max(1)),
        relay_lifetime: Duration::from_secs(args.relay_lifetime_secs.max(1)),
    });
    let limits = introducer::limits(butter::Limits {
        max_connections: args.max_connections,
        max_connections_per_addr: args.max_connections_per_addr,
        max_connections_per_prefix: args.max_connections_per_addr.saturating_mul(4),
        ..Default::default()
    });
    let mut builder = introducer::builder(args.listen)
        .data_dir(&args.data_dir)
        .limits(limits);
    if let Some(file) = &args.key {
        let pem = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the key file {}", file.display()))?;
        let identity = butter::Identity::from_pem(&pem)
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        builder = builder.identity(identity);
    }
    let node = builder
        .service(service.clone())
        .spawn()
        .await
        .with_context(|| format!("cannot start the introducer on {}", args.listen))?;
    let addr = match args.public_addr {
        Some(public) => NodeAddr::new(node.id(), [public]),
        None => node.addr(),
    };
    // First line on stdout: the address nodes pass to --introducer.
    println!("{addr}");
    tracing::info!(%addr, "introducer started");
    let every = Duration::from_secs(args.stats_secs.max(1));
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = shutdown_signal() => break,
            _ = ticker.tick() => {
                service.expire();
                let s = service.stats();
                tracing::info!(
                    registrations = s.registrations,
                    introductions = s.introductions,
                    punches_tried = s.punches_tried,
                    punches_succeeded = s.punches_succeeded,
                    relays_active = s.relays_active,
                    relayed_bytes = s.relayed_bytes,
                    rejected = s.rejected,
                    stun_answered = s.stun_answered,
                    udp_garbage = s.udp_garbage,
                    "figures"
                );
            }
        }
    }
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
