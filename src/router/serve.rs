//! The server side of a call: one request stream read, checked against the
//! route's guard and limits, handed to its handler, answered.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;

use super::{read_error, write_error, Handler, RecvBody, Request, Router, Serving, StreamRequest};
use crate::config::Limits;
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
        let header = tokio::time::timeout(
            limits.header_timeout,
            read_header(&mut recv, limits.max_header),
        )
        .await;
        let (header, first) = match header {
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
                    match read_buffered(&mut recv, first, max_body, &mut reservation, deadline)
                        .await
                    {
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
                    body: RecvBody::new(recv, Some(limits.stall_timeout)).after(first),
                });
                AssertUnwindSafe(fut).catch_unwind().await
            }
        };
        match outcome {
            Ok(Ok(body)) => {
                stats.calls_served.fetch_add(1, Ordering::Relaxed);
                // The status and a body in memory go out in one write.
                let written = match wire::encode_frame(
                    &ResponseHeader { status: Status::Ok },
                    limits.max_header,
                ) {
                    Ok(frame) => {
                        body.write_framed(frame, &mut send, limits.stall_timeout)
                            .await
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = written {
                    tracing::debug!(peer = %peer.short(), error = %e, "reply body not delivered");
                    let _ = send.reset(1u32.into());
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
    wire::split_frame(&got, max)
}

/// Reads a buffered route's body (`first`, what came with the header, then
/// the rest): at most `limit` bytes, each reserved in the node's budget
/// before it is kept, all of it before `deadline`.
async fn read_buffered(
    recv: &mut quinn::RecvStream,
    first: Bytes,
    limit: usize,
    reservation: &mut crate::budget::Reservation,
    deadline: tokio::time::Instant,
) -> Result<Bytes> {
    let mut pieces = super::body::Pieces::default();
    let mut first = Some(first).filter(|f| !f.is_empty());
    loop {
        let chunk = match first.take() {
            Some(f) => f,
            None => {
                let chunk = tokio::time::timeout_at(deadline, recv.read_chunk(64 * 1024, true))
                    .await
                    .map_err(|_| Error::Timeout("request body"))?
                    .map_err(read_error)?;
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
        reservation.grow(chunk.len(), deadline).await?;
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
