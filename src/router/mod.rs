//! Named routes: request handlers registered by name, the server side of a call
//! (`serve`) and the caller's side (`call`).
//!
//! Each call arrives as one bidirectional QUIC stream (see [`wire`](crate::wire)).
//! Buffered routes get the whole body in memory (bounded by
//! [`Limits::max_body`]); streaming routes get it as an
//! [`AsyncRead`](tokio::io::AsyncRead) and can be
//! sent any size. Both reply with a [`Body`], which is either bytes or a reader.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::Limits;
use crate::error::{Error, Result};
use crate::identity::NodeId;
use crate::stats::Stats;

/// Route names with this prefix belong to the platform.
pub const RESERVED_PREFIX: &str = "butter/";

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

mod body;
pub(crate) mod call;
mod serve;

pub(crate) use body::{read_error, read_to_end, write_error};
pub use body::{Body, RecvBody};

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

    /// Inserts a route unless the name is taken; false if it was.
    pub(crate) fn insert_new(&mut self, name: &str, handler: Handler) -> bool {
        if self.routes.contains_key(name) {
            return false;
        }
        self.insert(name, handler);
        true
    }

    /// Sets a route's own body limit; false if there is no such route.
    pub(crate) fn set_limit(&mut self, name: &str, max_body: usize) -> bool {
        self.routes
            .get_mut(name)
            .map(|r| r.max_body = Some(max_body))
            .is_some()
    }

    /// Every route's name, sorted.
    pub(crate) fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.routes.keys().cloned().collect();
        names.sort();
        names
    }

    /// Sets a route's guard; false if there is no such route.
    pub(crate) fn set_guard(&mut self, name: &str, guard: Arc<GuardFn>) -> bool {
        self.routes
            .get_mut(name)
            .map(|r| r.guard = Some(guard))
            .is_some()
    }
}
