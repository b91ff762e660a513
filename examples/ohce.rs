//! ohce: the reverse-echo service. Serves the route `reverse` and prints its
//! address (`NODEID@IP:PORT`) as the first line, like `butter node`.
//!
//! ```text
//! cargo run --release --example ohce -- --listen 127.0.0.1:7401
//! butter call <printed address> reverse hello      # prints olleh
//! ```

use std::io::Write;
use std::net::SocketAddr;

use anyhow::Result;
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// UDP address to listen on.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Keep the identity here (default: a new identity each run).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .init();
    let args = Args::parse();
    let mut builder = butter::Node::builder()
        .listen(args.listen)
        .route("reverse", |req: butter::Request| async move {
            Ok(req.body().iter().rev().copied().collect::<Vec<u8>>())
        });
    if let Some(dir) = args.data_dir {
        builder = builder.data_dir(dir);
    }
    let node = builder.spawn().await?;
    let addr = node.addr();
    println!("{addr}");
    std::io::stdout().flush()?;
    eprintln!(
        "ohce is serving `reverse`; try:\n  cargo run --release -- call {addr} reverse hello"
    );
    tokio::signal::ctrl_c().await?;
    node.shutdown().await;
    Ok(())
}
