//! Named routes: request handlers registered by name, and the server side of a call.
//!
//! Each call arrives as one bidirectional QUIC stream (see [`wire`](crate::wire)).
//! Buffered routes get the whole body in memory (bounded by
//! [`Limits::max_body`]); streaming routes get it as an [`AsyncRead`] and can be
//! sent any size. Both reply with a [`Body`], which is either bytes or a reader.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt, Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::config::Limits;
use crate::error::{Error, Result};
use crate::identity::NodeId;
use crate::stats::Stats;
use crate::wire::{self, RequestHeader, ResponseHeader, Status};

/// Route names with this prefix belong to the platform.
pub const RESERVED_PREFIX: &str = "butter/";

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// A body to send: bytes in memory, or a reader streamed to the peer.
///
/// ```
/// let small = butter::Body::from("hello");
/// let big = butter::Body::from_reader(tokio::io::repeat(7).take_bytes(1 << 30));
/// # trait TakeBytes { fn take_bytes(self, n: u64) -> tokio::io::Take<Self> where Self: Sized; }
/// # impl<R: tokio::io::AsyncRead> TakeBytes for R { fn take_bytes(self, n: u64) -> tokio::io::Take<Self> { tokio::io::AsyncReadExt::take(self, n) } }
/// # let _ = (small, big);
/// ```
pub struct Body(BodyKind);

enum BodyKind {
    Bytes(Bytes),
    Reader(Pin<Box<dyn AsyncRead + Send + 'static>>),
    Chunks(Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send + 'static>>),
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            BodyKind::Bytes(b) => write!(f, "Body({} bytes)", b.len()),
            BodyKind::Reader(_) => f.write_str("Body(reader)"),
            BodyKind::Chunks(_) => f.write_str("Body(chunks)"),
        }
    }
}

impl Body {
    /// No bytes.
    pub fn empty() -> Self {
        Body(BodyKind::Bytes(Bytes::new()))
    }

    /// A body read from `reader` until its end and streamed to the peer as it is
    /// read, so its size is not bounded by memory.
    pub fn from_reader(reader: impl AsyncRead + Send + 'static) -> Self {
        Body(BodyKind::Reader(Box::pin(reader)))
    }

    /// A body made of the chunks a stream yields, each handed to QUIC without
    /// copying: the fastest way to send data that already sits in [`Bytes`].
    ///
    /// ```
    /// use bytes::Bytes;
    /// let chunks = futures_util::stream::iter((0..4).map(|_| Ok(Bytes::from(vec![0u8; 1 << 20]))));
    /// let body = butter::Body::from_stream(chunks);
    /// # let _ = body;
    /// ```
    pub fn from_stream(
        chunks: impl Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    ) -> Self {
        Body(BodyKind::Chunks(Box::pin(chunks)))
    }

    /// The length, if the body is in memory.
    pub fn len(&self) -> Option<usize> {
        match &self.0 {
            BodyKind::Bytes(b) => Some(b.len()),
            BodyKind::Reader(_) | BodyKind::Chunks(_) => None,
        }
    }

    /// Whether the body is known to be empty.
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// Writes the body to a QUIC stream and finishes it. A peer that accepts
    /// nothing for `stall` (it stopped reading, flow control holds the writes)
    /// ends it with a timeout.
    pub(crate) async fn write_to(
        self,
        send: &mut quinn::SendStream,
        stall: std::time::Duration,
    ) -> Result<()> {
        async fn write(
            send: &mut quinn::SendStream,
            chunk: Bytes,
            stall: std::time::Duration,
        ) -> Result<()> {
            match tokio::time::timeout(stall, send.write_chunk(chunk)).await {
                Ok(r) => r.map_err(write_error),
                Err(_) => Err(Error::Timeout("the peer stopped reading")),
            }
        }
        match self.0 {
            BodyKind::Bytes(b) => {
                if !b.is_empty() {
                    write(send, b, stall).await?;
                }
            }
            BodyKind::Chunks(mut chunks) => {
                while let Some(chunk) = chunks.next().await {
                    write(send, chunk?, stall).await?;
                }
            }
            BodyKind::Reader(mut r) => {
                // Filled buffers are handed to quinn without a further copy. Kept
                // under the allocator's mmap threshold so freed chunks are reused
                // rather than faulted in afresh.
                const CHUNK: usize = 64 * 1024;
                let mut buf = BytesMut::with_capacity(CHUNK);
                loop {
                    buf.reserve(CHUNK);
                    if r.read_buf(&mut buf).await? == 0 {
                        break;
                    }
                    write(send, buf.split().freeze(), stall).await?;
                }
            }
        }
        let _ = send.finish();
        Ok(())
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Self {
        Body(BodyKind::Bytes(b))
    }
}
impl From<Vec<u8>> for Body {
    fn from(b: Vec<u8>) -> Self {
        Body(BodyKind::Bytes(b.into()))
    }
}
impl From<&'static [u8]> for Body {
    fn from(b: &'static [u8]) -> Self {
        Body(BodyKind::Bytes(Bytes::from_static(b)))
    }
}
impl<const N: usize> From<&'static [u8; N]> for Body {
    fn from(b: &'static [u8; N]) -> Self {
        Body(BodyKind::Bytes(Bytes::from_static(b)))
    }
}
impl From<&'static str> for Body {
    fn from(s: &'static str) -> Self {
        Body(BodyKind::Bytes(Bytes::from_static(s.as_bytes())))
    }
}
impl From<String> for Body {
    fn from(s: String) -> Self {
        Body(BodyKind::Bytes(s.into()))
    }
}
impl From<()> for Body {
    fn from(_: ()) -> Self {
        Body::empty()
    }
}
impl From<RecvBody> for Body {
    fn from(r: RecvBody) -> Self {
        Body::from_reader(r)
    }
}

/// A body arriving from a peer, read as a stream. A peer that sends nothing
/// for the node's stall timeout ([`Limits::stall_timeout`]) ends it with a
/// timed-out error.
pub struct RecvBody {
    stream: quinn::RecvStream,
    stall: Option<Stall>,
}

struct Stall {
    limit: std::time::Duration,
    last_progress: tokio::time::Instant,
    /// Made the first time the stream has to wait (many never do).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl std::fmt::Debug for RecvBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBody")
            .field("stream", &self.stream.id())
            .finish()
    }
}

impl RecvBody {
    pub(crate) fn new(stream: quinn::RecvStream, stall: Option<std::time::Duration>) -> Self {
        let now = tokio::time::Instant::now();
        RecvBody {
            stream,
            stall: stall.map(|limit| Stall {
                limit,
                last_progress: now,
                timer: None,
            }),
        }
    }

    /// Without the stall timeout: for streams whose silence is legitimate
    /// (a relay tunnel carrying an idle connection's packets).
    pub fn without_stall_timeout(mut self) -> Self {
        self.stall = None;
        self
    }

    /// Reads the whole rest of the body, failing with [`Error::TooLarge`] past
    /// `limit` bytes.
    pub async fn bytes(mut self, limit: usize) -> Result<Bytes> {
        use tokio::io::AsyncReadExt;
        let mut out = Vec::new();
        let n = (&mut self)
            .take(limit as u64 + 1)
            .read_to_end(&mut out)
            .await
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::TimedOut {
                    Error::Timeout("the peer stopped sending")
                } else {
                    Error::Unreachable(e.to_string())
                }
            })?;
        if n > limit {
            return Err(Error::TooLarge {
                what: "body",
                limit: limit as u64,
            });
        }
        Ok(out.into())
    }
}

impl AsyncRead for RecvBody {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if let Some(stall) = &mut this.stall {
                    stall.last_progress = tokio::time::Instant::now();
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let Some(stall) = &mut this.stall else {
                    return Poll::Pending;
                };
                // The timer moves only when the stream waits, not on every read.
                let due = stall.last_progress + stall.limit;
                let timer = stall
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
                if timer.deadline() != due {
                    timer.as_mut().reset(due);
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the peer sent nothing for the stall timeout",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

pub(crate) async fn read_to_end(
    stream: &mut quinn::RecvStream,
    limit: usize,
    what: &'static str,
) -> Result<Bytes> {
    match stream.read_to_end(limit).await {
        Ok(v) => Ok(v.into()),
        Err(quinn::ReadToEndError::TooLong) => Err(Error::TooLarge {
            what,
            limit: limit as u64,
        }),
        Err(quinn::ReadToEndError::Read(e)) => Err(read_error(e)),
    }
}

pub(crate) fn read_error(e: quinn::ReadError) -> Error {
    match e {
        quinn::ReadError::ConnectionLost(c) => crate::endpoint::connection_error(c),
        quinn::ReadError::Reset(code) => {
            Error::Remote(format!("stream reset by peer (code {code})"))
        }
        other => Error::Unreachable(other.to_string()),
    }
}

pub(crate) fn write_error(e: quinn::WriteError) -> Error {
    match e {
        quinn::WriteError::ConnectionLost(c) => crate::endpoint::connection_error(c),
        quinn::WriteError::Stopped(code) => {
            Error::Remote(format!("peer stopped reading (code {code})"))
        }
        other => Error::Unreachable(other.to_string()),
    }
}

/// A request to a buffered route: the whole body is in memory.
#[derive(Debug)]
pub struct Request {
    peer: NodeId,
    remote: std::net::SocketAddr,
    route: String,
    body: Bytes,
}

impl Request {
    /// The authenticated caller.
    pub fn peer(&self) -> NodeId {
        self.peer
    }
    /// The address the caller's connection comes from (as this node sees it:
    /// behind a NAT, the NAT's public side).
    pub fn remote_addr(&self) -> std::net::SocketAddr {
        self.remote
    }
    /// The route it was sent to.
    pub fn route(&self) -> &str {
        &self.route
    }
    /// The request body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }
    /// Takes the body.
    pub fn into_body(self) -> Bytes {
        self.body
    }
    /// Decodes the body as postcard into `T`; a body that does not decode is
    /// answered with a malformed status if the handler returns this error.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        postcard::from_bytes(&self.body).map_err(|e| Error::Malformed(format!("request body: {e}")))
    }
}

/// A request to a streaming route: the body arrives as a stream.
#[derive(Debug)]
pub struct StreamRequest {
    peer: NodeId,
    remote: std::net::SocketAddr,
    route: String,
    /// The request body, read as it arrives.
    pub body: RecvBody,
}

impl StreamRequest {
    /// The authenticated caller.
    pub fn peer(&self) -> NodeId {
        self.peer
    }
    /// The address the caller's connection comes from.
    pub fn remote_addr(&self) -> std::net::SocketAddr {
        self.remote
    }
    /// The route it was sent to.
    pub fn route(&self) -> &str {
        &self.route
    }
}

type BufferedFn = dyn Fn(Request) -> BoxFuture<Result<Body>> + Send + Sync;
type StreamingFn = dyn Fn(StreamRequest) -> BoxFuture<Result<Body>> + Send + Sync;

#[derive(Clone)]
pub(crate) enum Handler {
    Buffered(Arc<BufferedFn>),
    Streaming(Arc<StreamingFn>),
}

impl Handler {
    pub(crate) fn buffered<F, Fut, R>(f: F) -> Self
    where
        F: Fn(Request) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R>> + Send + 'static,
        R: Into<Body>,
    {
        Handler::Buffered(Arc::new(move |req| {
            let fut = f(req);
            Box::pin(async move { fut.await.map(Into::into) })
        }))
    }

    pub(crate) fn streaming<F, Fut, R>(f: F) -> Self
    where
        F: Fn(StreamRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R>> + Send + 'static,
        R: Into<Body>,
    {
        Handler::Streaming(Arc::new(move |req| {
            let fut = f(req);
            Box::pin(async move { fut.await.map(Into::into) })
        }))
    }

    pub(crate) fn typed<F, Fut, Req, Resp>(f: F) -> Self
    where
        F: Fn(NodeId, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp>> + Send + 'static,
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + 'static,
    {
        let f = Arc::new(f);
        Handler::buffered(move |req: Request| {
            let f = f.clone();
            async move {
                let value: Req = req.decode()?;
                let reply = f(req.peer(), value).await?;
                postcard::to_allocvec(&reply)
                    .map_err(|e| Error::handler(format!("cannot encode reply: {e}")))
            }
        })
    }
}

/// A check run on a request once its header is read and before any of its
/// body is: a rate limit, an allow list. An error refuses the request.
pub(crate) type GuardFn = dyn Fn(&NodeId, std::net::SocketAddr) -> Result<()> + Send + Sync;

/// A route: its handler, its own body limit, its guard.
#[derive(Clone)]
pub(crate) struct Route {
    handler: Handler,
    /// Largest buffered body; `None`: the node's [`Limits::max_body`].
    max_body: Option<usize>,
    guard: Option<Arc<GuardFn>>,
}

/// The table of routes of a node.
#[derive(Clone, Default)]
pub(crate) struct Router {
    routes: HashMap<String, Route>,
}

/// What serving a request needs from the node.
pub(crate) struct Serving<'a> {
    pub(crate) limits: &'a Limits,
    pub(crate) stats: &'a Stats,
    pub(crate) budget: &'a Arc<crate::budget::BodyBudget>,
}

impl Router {
    pub(crate) fn insert(&mut self, name: &str, handler: Handler) {
        self.routes.insert(
            name.to_string(),
            Route {
                handler,
                max_body: None,
                guard: None,
            },
        );
    }

    /// Sets a route's own body limit; false if there is no such route.
    pub(crate) fn set_limit(&mut self, name: &str, max_body: usize) -> bool {
        self.routes
            .get_mut(name)
            .map(|r| r.max_body = Some(max_body))
            .is_some()
    }

    /// Sets a route's guard; false if there is no such route.
    pub(crate) fn set_guard(&mut self, name: &str, guard: Arc<GuardFn>) -> bool {
        self.routes
            .get_mut(name)
            .map(|r| r.guard = Some(guard))
            .is_some()
    }

    /// Serves one request stream to its end. Never fails: every problem becomes a
    /// status sent to the caller (when the stream still allows it) and a counter.
    pub(crate) async fn serve(
        &self,
        peer: NodeId,
        remote: std::net::SocketAddr,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        ctx: &Serving<'_>,
    ) {
        let (limits, stats) = (ctx.limits, ctx.stats);
        let header = tokio::time::timeout(
            limits.header_timeout,
            wire::read_frame::<RequestHeader, _>(&mut recv, limits.max_header),
        )
        .await;
        let header = match header {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %peer.short(), error = %e, "bad request header");
                let _ = recv.stop(0u32.into());
                reply_error(&mut send, &e, limits).await;
                return;
            }
            Err(_) => {
                let _ = recv.stop(0u32.into());
                reply_status(&mut send, Status::Timeout, limits).await;
                return;
            }
        };
        let Some(route) = self.routes.get(&header.route) else {
            stats.no_route.fetch_add(1, Ordering::Relaxed);
            let _ = recv.stop(0u32.into());
            reply_status(&mut send, Status::NoSuchRoute, limits).await;
            return;
        };
        if let Some(guard) = &route.guard {
            if let Err(e) = guard(&peer, remote) {
                stats.requests_refused.fetch_add(1, Ordering::Relaxed);
                let _ = recv.stop(0u32.into());
                reply_error(&mut send, &e, limits).await;
                return;
            }
        }
        let name = header.route;
        let outcome = match &route.handler {
            Handler::Buffered(h) => {
                let max_body = route.max_body.unwrap_or(limits.max_body);
                if header.body_len.is_some_and(|n| n > max_body as u64) {
                    stats.too_large.fetch_add(1, Ordering::Relaxed);
                    let _ = recv.stop(0u32.into());
                    reply_status(
                        &mut send,
                        Status::TooLarge {
                            limit: max_body as u64,
                        },
                        limits,
                    )
                    .await;
                    return;
                }
                let deadline = tokio::time::Instant::now() + limits.body_timeout;
                let mut reservation = ctx.budget.reservation(remote.ip());
                let body =
                    match read_buffered(&mut recv, max_body, &mut reservation, deadline).await {
                        Ok(b) => b,
                        Err(e) => {
                            let _ = recv.stop(0u32.into());
                            match e {
                                Error::TooLarge { .. } => {
                                    stats.too_large.fetch_add(1, Ordering::Relaxed)
                                }
                                Error::Busy(_) | Error::Timeout(_) => {
                                    stats.requests_refused.fetch_add(1, Ordering::Relaxed)
                                }
                                _ => 0,
                            };
                            reply_error(&mut send, &e, limits).await;
                            return;
                        }
                    };
                let fut = h(Request {
                    peer,
                    remote,
                    route: name,
                    body,
                });
                let outcome = tokio::time::timeout(
                    limits.handler_timeout,
                    AssertUnwindSafe(fut).catch_unwind(),
                )
                .await;
                drop(reservation);
                match outcome {
                    Ok(outcome) => outcome,
                    Err(_) => {
                        reply_status(&mut send, Status::Timeout, limits).await;
                        return;
                    }
                }
            }
            Handler::Streaming(h) => {
                let fut = h(StreamRequest {
                    peer,
                    remote,
                    route: name,
                    body: RecvBody::new(recv, Some(limits.stall_timeout)),
                });
                AssertUnwindSafe(fut).catch_unwind().await
            }
        };
        match outcome {
            Ok(Ok(body)) => {
                stats.calls_served.fetch_add(1, Ordering::Relaxed);
                if write_status(&mut send, Status::Ok, limits).await.is_ok() {
                    if let Err(e) = body.write_to(&mut send, limits.stall_timeout).await {
                        tracing::debug!(peer = %peer.short(), error = %e, "reply body not delivered");
                        let _ = send.reset(1u32.into());
                    }
                }
            }
            Ok(Err(e)) => {
                stats.handler_errors.fetch_add(1, Ordering::Relaxed);
                reply_error(&mut send, &e, limits).await;
            }
            Err(_panic) => {
                stats.handler_panics.fetch_add(1, Ordering::Relaxed);
                tracing::error!(peer = %peer.short(), "route handler panicked");
                reply_status(
                    &mut send,
                    Status::HandlerError("handler panicked".into()),
                    limits,
                )
                .await;
            }
        }
    }
}

/// Reads a buffered route's body: at most `limit` bytes, each reserved in the
/// node's budget before it is kept, all of it before `deadline`.
async fn read_buffered(
    recv: &mut quinn::RecvStream,
    limit: usize,
    reservation: &mut crate::budget::Reservation,
    deadline: tokio::time::Instant,
) -> Result<Bytes> {
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut len = 0usize;
    loop {
        let chunk = tokio::time::timeout_at(deadline, recv.read_chunk(64 * 1024, true))
            .await
            .map_err(|_| Error::Timeout("request body"))?
            .map_err(read_error)?;
        let Some(chunk) = chunk else { break };
        len += chunk.bytes.len();
        if len > limit {
            return Err(Error::TooLarge {
                what: "request body",
                limit: limit as u64,
            });
        }
        reservation.grow(chunk.bytes.len(), deadline).await?;
        chunks.push(chunk.bytes);
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut all = BytesMut::with_capacity(len);
            for c in chunks {
                all.extend_from_slice(&c);
            }
            all.freeze()
        }
    })
}

fn status_of(e: &Error) -> Status {
    match e {
        Error::TooLarge { limit, .. } => Status::TooLarge { limit: *limit },
        Error::Malformed(m) => Status::Malformed(m.clone()),
        Error::Timeout(_) => Status::Timeout,
        Error::Busy(_) => Status::Busy,
        Error::Handler(m) => Status::HandlerError(m.clone()),
        other => Status::HandlerError(other.to_string()),
    }
}

async fn write_status(send: &mut quinn::SendStream, status: Status, limits: &Limits) -> Result<()> {
    let frame = wire::encode_frame(&ResponseHeader { status }, limits.max_header)?;
    tokio::time::timeout(limits.stall_timeout, send.write_all(&frame))
        .await
        .map_err(|_| Error::Timeout("the peer stopped reading"))?
        .map_err(write_error)
}

async fn reply_status(send: &mut quinn::SendStream, status: Status, limits: &Limits) {
    if write_status(send, status, limits).await.is_ok() {
        let _ = send.finish();
    }
}

async fn reply_error(send: &mut quinn::SendStream, e: &Error, limits: &Limits) {
    reply_status(send, status_of(e), limits).await
}
