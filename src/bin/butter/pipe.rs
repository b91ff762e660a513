//! `butter pipe`: raw bytes between two processes on different machines,
//! like dumbpipe, but both ends authenticated by NodeId. `listen` serves the
//! route `pipe`; `connect` calls it with its stdin as the request body and
//! writes the reply to its stdout (full duplex). With `--tcp` /
//! `--tcp-connect` each TCP connection is one such call (a local port
//! tunnelled to a TCP service behind the listener).
//!
//! Ends (stdio): the listener's reply ends only after it has received the
//! connecting side's whole input (so `connect`, having read to the end,
//! knows the other side got everything), and the listener exits once its
//! peer has gone. Over TCP the two directions end apart, as TCP's do.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use butter::{Body, Node, NodeId, StreamRequest, Target};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{oneshot, Mutex};

/// The route a listener serves.
pub const ROUTE: &str = "pipe";

/// How often the ends send keep-alives: an idle pipe keeps its connection
/// (and NAT mappings).
pub const KEEP_ALIVE: Duration = Duration::from_secs(5);

/// A reader that hands out `inner`'s bytes and, at its end, waits for
/// `done` before it says EOF: the reply of a pipe ends only once the
/// request has been received whole.
fn then_wait(
    mut inner: impl AsyncRead + Send + Unpin + 'static,
    done: oneshot::Receiver<()>,
) -> impl AsyncRead + Send + 'static {
    let (reader, mut writer) = tokio::io::duplex(256 * 1024);
    tokio::spawn(async move {
        if tokio::io::copy(&mut inner, &mut writer).await.is_ok() {
            let _ = done.await;
            let _ = writer.shutdown().await;
        }
    });
    reader
}

/// Copies the request body to `out` (then shuts it down) and tells `done`.
fn drain_to(
    req: StreamRequest,
    mut out: impl AsyncWrite + Send + Unpin + 'static,
    done: oneshot::Sender<()>,
) {
    let mut body = req.body.without_stall_timeout();
    tokio::spawn(async move {
        if let Err(e) = tokio::io::copy(&mut body, &mut out).await {
            tracing::warn!(error = %e, "pipe: the incoming bytes were cut short");
        }
        let _ = out.flush().await;
        let _ = out.shutdown().await;
        let _ = done.send(());
    });
}

/// What a listener does with each accepted pipe.
#[derive(Clone)]
pub enum Serve {
    /// The first accepted peer gets stdin and stdout; then the process
    /// exits.
    Stdio,
    /// Each pipe is a new TCP connection to this address.
    Tcp(String),
}

/// Runs `butter pipe listen`.
pub async fn listen(
    node_builder: butter::NodeBuilder,
    allow: Vec<NodeId>,
    serve: Serve,
) -> Result<()> {
    // Stdio mode: one session; its end is told here.
    let (ended_tx, ended_rx) = oneshot::channel::<NodeId>();
    let ended = Arc::new(Mutex::new(Some(ended_tx)));
    let taken = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let handler = {
        let serve = serve.clone();
        move |req: StreamRequest| {
            let (allow, serve, ended, taken) =
                (allow.clone(), serve.clone(), ended.clone(), taken.clone());
            async move {
                let peer = req.peer();
                if !allow.is_empty() && !allow.contains(&peer) {
                    tracing::warn!(%peer, "pipe: refused a peer not allowed (--allow)");
                    return Err(butter::Error::Refused(format!(
                        "{} may not connect",
                        peer.short()
                    )));
                }
                let (done_tx, done_rx) = oneshot::channel();
                match serve {
                    Serve::Stdio => {
                        if taken.swap(true, std::sync::atomic::Ordering::AcqRel) {
                            return Err(butter::Error::Busy("this pipe has its peer"));
                        }
                        eprintln!("connected: {peer}");
                        drain_to(req, tokio::io::stdout(), done_tx);
                        let (tell_tx, tell_rx) = oneshot::channel();
                        let ended = ended.clone();
                        tokio::spawn(async move {
                            let _ = tell_rx.await;
                            if let Some(tx) = ended.lock().await.take() {
                                let _ = tx.send(peer);
                            }
                        });
                        // The reply: stdin, ending once the request is whole.
                        let reply = then_wait(tokio::io::stdin(), done_rx);
                        Ok(Body::from_reader(OnEof::new(reply, tell_tx)))
                    }
                    Serve::Tcp(target) => {
                        let stream =
                            tokio::net::TcpStream::connect(&target).await.map_err(|e| {
                                butter::Error::Handler(format!("cannot connect to {target}: {e}"))
                            })?;
                        let _ = stream.set_nodelay(true);
                        // TCP's two directions end apart (an HTTP client
                        // waits for the answer with its side open).
                        let (read, write) = stream.into_split();
                        drain_to(req, write, done_tx);
                        drop(done_rx);
                        Ok(Body::from_reader(read))
                    }
                }
            }
        }
    };
    let node = node_builder
        .keep_alive(KEEP_ALIVE)
        .stream_route(ROUTE, handler)
        .spawn()
        .await?;
    // The address first, on stderr: stdout carries the pipe.
    eprintln!("{}", node.addr());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    match serve {
        Serve::Stdio => {
            let peer = tokio::select! {
                p = ended_rx => p.ok(),
                _ = tokio::signal::ctrl_c() => None,
                _ = term.recv() => None,
            };
            if let Some(peer) = peer {
                // The peer leaves once it has read everything: wait for it
                // (bounded), so our last bytes are not cut off.
                let _ = tokio::time::timeout(Duration::from_secs(10), async {
                    while node.connection_info(&peer).is_some() {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
                .await;
            }
        }
        Serve::Tcp(_) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
    }
    node.shutdown().await;
    Ok(())
}

/// A reader that tells `tell` when it reached its end.
struct OnEof<R> {
    inner: R,
    tell: Option<oneshot::Sender<()>>,
}

impl<R> OnEof<R> {
    fn new(inner: R, tell: oneshot::Sender<()>) -> Self {
        OnEof {
            inner,
            tell: Some(tell),
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for OnEof<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = &polled {
            if buf.filled().len() == before {
                if let Some(tell) = self.tell.take() {
                    let _ = tell.send(());
                }
            }
        }
        polled
    }
}

/// One pipe over `node` to `target`: `input` goes out, the reply into
/// `output` (shut down at its end).
async fn one(
    node: &Node,
    target: Target,
    input: impl AsyncRead + Send + 'static,
    mut output: impl AsyncWrite + Send + Unpin,
) -> Result<u64> {
    let reply = node
        .call_stream(target, ROUTE, Body::from_reader(input))
        .await
        .context("the pipe was not accepted")?;
    let mut reply = reply.without_stall_timeout();
    let n = tokio::io::copy(&mut reply, &mut output)
        .await
        .context("the pipe broke")?;
    output.flush().await?;
    let _ = output.shutdown().await;
    Ok(n)
}

/// Runs `butter pipe connect`: stdio, or a local TCP port (`tcp`).
pub async fn connect(node: Node, target: Target, tcp: Option<SocketAddr>) -> Result<()> {
    match tcp {
        None => {
            let result = one(
                &node,
                target.clone(),
                tokio::io::stdin(),
                tokio::io::stdout(),
            )
            .await;
            node.shutdown().await;
            result.map(|_| ())
        }
        Some(listen) => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            eprintln!(
                "forwarding {} to {} over Butter",
                listener.local_addr()?,
                target.id()
            );
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            loop {
                let accepted = tokio::select! {
                    a = listener.accept() => a,
                    _ = tokio::signal::ctrl_c() => break,
                    _ = term.recv() => break,
                };
                let (stream, from) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "pipe: accept failed");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let (node, target) = (node.clone(), target.clone());
                tokio::spawn(async move {
                    let (read, write) = stream.into_split();
                    if let Err(e) = one(&node, target, read, write).await {
                        tracing::warn!(%from, "pipe: {e:#}");
                    }
                });
            }
            node.shutdown().await;
            Ok(())
        }
    }
}

/// The ids an `--allow` list names.
pub fn parse_allow(s: &str) -> Result<NodeId, String> {
    s.parse::<NodeId>().map_err(|e| e.to_string())
}
