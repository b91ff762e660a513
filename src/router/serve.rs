//! The server side of a call: one request stream read, checked against the
//! route's guard and limits, handed to its handler, answered.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;

use super::{read_error, write_error, Handler, RecvBody, Request, Router, Serving, StreamRequest};
use crate::config::Limits;
use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::identity::NodeId;
use crate::wire::{self, RequestHeader, ResponseHeader, Status};

impl Router {
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
        // One timer for every step of the stream, made only if a step waits.
        let mut deadline = Deadline::new();
        let header = deadline
            .within(
                limits.header_timeout,
                read_header(&mut recv, limits.max_header),
            )
            .await;
        let (header, first) = match header {
            Some(Ok(h)) => h,
            Some(Err(e)) => {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(peer = %peer.short(), error = %e, "bad request header");
                let _ = recv.stop(0u32.into());
                reply_error(&mut send, &e, limits, &mut deadline).await;
                return;
            }
            None => {
                let _ = recv.stop(0u32.into());
                reply_status(&mut send, Status::Timeout, limits, &mut deadline).await;
                return;
            }
        };
        let Some(route) = self.routes.get(&header.route) else {
            stats.no_route.fetch_add(1, Ordering::Relaxed);
            let _ = recv.stop(0u32.into());
            reply_status(&mut send, Status::NoSuchRoute, limits, &mut deadline).await;
            return;
        };
        if let Some(guard) = &route.guard {
            if let Err(e) = guard(&peer, remote) {
                stats.requests_refused.fetch_add(1, Ordering::Relaxed);
                let _ = recv.stop(0u32.into());
                reply_error(&mut send, &e, limits, &mut deadline).await;
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
                    let too_large = Status::TooLarge {
                        limit: max_body as u64,
                    };
                    reply_status(&mut send, too_large, limits, &mut deadline).await;
                    return;
                }
                let until = tokio::time::Instant::now() + limits.body_timeout;
                let mut reservation = ctx.budget.reservation(remote.ip());
                let read = read_buffered(
                    &mut recv,
                    first,
                    header.body_len,
                    max_body,
                    &mut reservation,
                    until,
                );
                let body = match deadline.until(until, read).await {
                    Some(Ok(b)) => Ok(b),
                    Some(Err(e)) => Err(e),
                    None => Err(Error::Timeout("request body")),
                };
                let body = match body {
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
                        reply_error(&mut send, &e, limits, &mut deadline).await;
                        return;
                    }
                };
                let fut = h(Request {
                    peer,
                    remote,
                    route: name,
                    body,
                });
                let outcome = deadline
                    .within(limits.handler_timeout, AssertUnwindSafe(fut).catch_unwind())
                    .await;
                drop(reservation);
                match outcome {
                    Some(outcome) => outcome,
                    None => {
                        reply_status(&mut send, Status::Timeout, limits, &mut deadline).await;
                        return;
                    }
                }
            }
            Handler::Streaming(h) => {
                let fut = h(StreamRequest {
                    peer,
                    remote,
                    route: name,
                    body: RecvBody::new(recv, Some(limits.stall_timeout)).after(first),
                });
                AssertUnwindSafe(fut).catch_unwind().await
            }
        };
        match outcome {
            Ok(Ok(body)) => {
                stats.calls_served.fetch_add(1, Ordering::Relaxed);
                // The status and a body in memory go out in one write.
                let ok = Bytes::from_static(wire::OK_FRAME);
                if let Err(e) = body
                    .write_framed(ok, &mut send, limits.stall_timeout, &mut deadline)
                    .await
                {
                    tracing::debug!(peer = %peer.short(), error = %e, "reply body not delivered");
                    let _ = send.reset(1u32.into());
                }
            }
            Ok(Err(e)) => {
                stats.handler_errors.fetch_add(1, Ordering::Relaxed);
                reply_error(&mut send, &e, limits, &mut deadline).await;
            }
            Err(_panic) => {
                stats.handler_panics.fetch_add(1, Ordering::Relaxed);
                tracing::error!(peer = %peer.short(), "route handler panicked");
                let status = Status::HandlerError("handler panicked".into());
                reply_status(&mut send, status, limits, &mut deadline).await;
            }
        }
    }
}

/// Reads the request's header frame (at most `max` bytes) by whole chunks
/// (a small request usually arrives in one: header and body read with one
/// pass through the connection's lock). Returns the header and the body
/// bytes that came with it.
async fn read_header(recv: &mut quinn::RecvStream, max: usize) -> Result<(RequestHeader, Bytes)> {
    let max = max.min(wire::MAX_HEADER);
    // The first chunk as it came (zero copy); later ones appended to one
    // growing buffer (a header sent a byte per packet costs linear work,
    // not a join per chunk).
    let mut first = Bytes::new();
    let mut joined: Option<BytesMut> = None;
    loop {
        let have: &[u8] = joined.as_deref().unwrap_or(&first);
        if have.len() >= 4 {
            let len = u32::from_le_bytes([have[0], have[1], have[2], have[3]]) as usize;
            if len > max || have.len() >= 4 + len {
                break;
            }
        }
        let Some(chunk) = recv
            .read_chunk(usize::MAX, true)
            .await
            .map_err(read_error)?
        else {
            break;
        };
        if joined.is_none() && first.is_empty() {
            first = chunk.bytes;
        } else {
            joined
                .get_or_insert_with(|| BytesMut::from(&first[..]))
                .extend_from_slice(&chunk.bytes);
        }
    }
    let got = joined.map_or(first, BytesMut::freeze);
    wire::split_frame(got, max)
}

/// Reads a buffered route's body (`first`, what came with the header, then
/// the rest): at most `limit` bytes, each reserved in the node's budget
/// before it is kept (waiting for the node's total until `until`). The
/// caller bounds the whole read in time.
async fn read_buffered(
    recv: &mut quinn::RecvStream,
    first: Bytes,
    announced: Option<u64>,
    limit: usize,
    reservation: &mut crate::budget::Reservation,
    until: tokio::time::Instant,
) -> Result<Bytes> {
    // The announced length (if any) sizes the buffer small pieces are
    // copied into: one allocation for a small body.
    let hint = announced.map_or(0, |n| n.min(limit as u64) as usize);
    let mut pieces = super::body::Pieces::with_capacity(hint);
    let mut first = Some(first).filter(|f| !f.is_empty());
    loop {
        let chunk = match first.take() {
            Some(f) => f,
            None => {
                let chunk = recv.read_chunk(64 * 1024, true).await.map_err(read_error)?;
                let Some(chunk) = chunk else { break };
                chunk.bytes
            }
        };
        if pieces.len() + chunk.len() > limit {
            return Err(Error::TooLarge {
                what: "request body",
                limit: limit as u64,
            });
        }
        reservation.grow(chunk.len(), until).await?;
        pieces.push(chunk);
    }
    Ok(pieces.join())
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

async fn write_status(
    send: &mut quinn::SendStream,
    status: Status,
    limits: &Limits,
    deadline: &mut Deadline,
) -> Result<()> {
    let frame = wire::encode_frame(&ResponseHeader { status }, limits.max_header)?;
    deadline
        .within(limits.stall_timeout, send.write_all(&frame))
        .await
        .ok_or(Error::Timeout("the peer stopped reading"))?
        .map_err(write_error)
}

/// A reply carrying only a status (an error: rare), boxed so the request's
/// task is not sized for it.
fn reply_status<'a>(
    send: &'a mut quinn::SendStream,
    status: Status,
    limits: &'a Limits,
    deadline: &'a mut Deadline,
) -> futures_util::future::BoxFuture<'a, ()> {
    Box::pin(async move {
        if write_status(send, status, limits, deadline).await.is_ok() {
            let _ = send.finish();
        }
    })
}

fn reply_error<'a>(
    send: &'a mut quinn::SendStream,
    e: &Error,
    limits: &'a Limits,
    deadline: &'a mut Deadline,
) -> futures_util::future::BoxFuture<'a, ()> {
    reply_status(send, status_of(e), limits, deadline)
}
