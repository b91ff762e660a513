//! The caller's side of the node: a stream opened on the right connection
//! (cached, dialed, punched or relayed), then the wire protocol's caller half
//! (`router::call`) on it, bounded in time.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::Node;
use crate::addr::Target;
use crate::endpoint::connection_error;
use crate::error::{Error, Result};
use crate::router::{self, Body, RecvBody};

impl Node {
    /// Opens a request stream on the (cached or new) connection to `target`, retrying
    /// once on a fresh connection if the cached one turns out to be dead.
    async fn open(&self, target: &Target) -> Result<(quinn::SendStream, quinn::RecvStream)> {
        let endpoint = &self.shared().endpoint;
        if self.shared().shut.load(Ordering::SeqCst) {
            return Err(Error::Shutdown);
        }
        // The cached connection first, without a liveness check, a
        // notification or a boxed future: most calls go to a peer connected
        // already. A closed one fails here and is forgotten.
        if let Some(conn) = endpoint.cached_unchecked(&target.id()) {
            if let Ok(streams) = conn.open_bi().await {
                self.shared()
                    .stats
                    .calls_made
                    .fetch_add(1, Ordering::Relaxed);
                return Ok(streams);
            }
            endpoint.invalidate(&target.id(), &conn);
        }
        for attempt in 0..2 {
            let conn = self.connection(target).await;
            let conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    // Failures seen by any call count for liveness too.
                    if matches!(e, Error::Unreachable(_) | Error::IdentityMismatch(_)) {
                        self.shared()
                            .members
                            .remove(&target.id(), "a call to it failed");
                    }
                    return Err(e);
                }
            };
            match conn.open_bi().await {
                Ok(streams) => {
                    self.shared()
                        .stats
                        .calls_made
                        .fetch_add(1, Ordering::Relaxed);
                    return Ok(streams);
                }
                Err(e) => {
                    endpoint.invalidate(&target.id(), &conn);
                    let err = connection_error(e);
                    if attempt == 1 || matches!(err, Error::IdentityMismatch(_)) {
                        return Err(err);
                    }
                }
            }
        }
        unreachable!("the loop returns on its second attempt")
    }

    /// Calls `route` on a peer with an in-memory body and returns the reply.
    ///
    /// Bodies and replies are bounded by [`Limits::max_body`](crate::Limits::max_body) (use
    /// [`Node::call_stream`] for larger ones); the whole call by
    /// [`Limits::call_timeout`](crate::Limits::call_timeout).
    ///
    /// ```
    /// # async fn run() -> butter::Result<()> {
    /// let server = butter::Node::builder()
    ///     .listen("127.0.0.1:0".parse().unwrap())
    ///     .route("reverse", |req: butter::Request| async move {
    ///         Ok(req.body().iter().rev().copied().collect::<Vec<u8>>())
    ///     })
    ///     .spawn().await?;
    /// let client = butter::Node::builder().listen("127.0.0.1:0".parse().unwrap()).spawn().await?;
    /// let reply = client.call(server.addr(), "reverse", "hello").await?;
    /// assert_eq!(&reply[..], b"olleh");
    /// # Ok(()) }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(run()).unwrap();
    /// ```
    pub async fn call(
        &self,
        target: impl Into<Target>,
        route: &str,
        body: impl Into<Bytes>,
    ) -> Result<Bytes> {
        let target = target.into();
        let body: Bytes = body.into();
        let limits = &self.shared().limits;
        if body.len() > limits.max_body {
            return Err(Error::TooLarge {
                what: "request body (use call_stream)",
                limit: limits.max_body as u64,
            });
        }
        let call = async {
            let streams = self.open(&target).await?;
            router::call::buffered(streams, route, body, limits, &self.shared().tasks).await
        };
        tokio::time::timeout(limits.call_timeout, call)
            .await
            .map_err(|_| Error::Timeout("call"))?
    }

    /// Calls `route` with a body of any size ([`Body::from_reader`] streams it) and
    /// returns the reply as a stream. No overall time limit applies once the reply
    /// has started; a dead peer ends the stream with an error after the idle timeout.
    pub async fn call_stream(
        &self,
        target: impl Into<Target>,
        route: &str,
        body: impl Into<Body>,
    ) -> Result<RecvBody> {
        let target = target.into();
        let limits = &self.shared().limits;
        let streams = self.open(&target).await?;
        router::call::streaming(streams, route, body.into(), limits, &self.shared().tasks).await
    }

    /// Calls a typed route (see [`NodeBuilder::typed_route`](super::NodeBuilder::typed_route)): `req` is sent as
    /// postcard, the reply decoded into `Resp`.
    pub async fn call_typed<Req, Resp>(
        &self,
        target: impl Into<Target>,
        route: &str,
        req: &Req,
    ) -> Result<Resp>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let body =
            postcard::to_allocvec(req).map_err(|e| Error::Malformed(format!("encode: {e}")))?;
        let reply = self.call(target, route, body).await?;
        postcard::from_bytes(&reply).map_err(|e| Error::Malformed(format!("reply of {route}: {e}")))
    }
}
