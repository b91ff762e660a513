//! The caller's side of a call, on a stream pair a connection opened: the
//! request header and body out, the status and reply in. Opening the streams
//! (which connection, which path) is the node's business.

use bytes::Bytes;

use super::{read_to_end, write_error, Body, RecvBody};
use crate::config::Limits;
use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::tasks::Tasks;
use crate::wire::{self, ResponseHeader, FLAG_STREAMED, MAX_HEADER};

/// A stream pair opened for one call.
pub(crate) type Streams = (quinn::SendStream, quinn::RecvStream);

/// A sent request: where its reply arrives, and the task still uploading a
/// streamed body.
pub(crate) struct Sent {
    pub(crate) recv: quinn::RecvStream,
    pub(crate) upload: Option<tokio::task::JoinHandle<Option<Result<()>>>>,
}

/// Sends the header and, for a body in memory, the body. A streamed body
/// uploads on its own task (owned by `tasks`) while the caller reads the
/// reply. Writes that wait are bounded by the stall timeout, except a body
/// in memory when `bounded` (the caller bounds the whole call in time).
pub(crate) async fn send(
    (mut send, recv): Streams,
    route: &str,
    body: Body,
    limits: &Limits,
    tasks: &Tasks,
    bounded: bool,
) -> Result<Sent> {
    let flags = if body.len().is_none() {
        FLAG_STREAMED
    } else {
        0
    };
    let (frame, inlined) = wire::request_frame(route, flags, body.bytes(), limits.max_header)?;
    if body.len().is_some() {
        // Header and body in one write. A refusal (the callee stopped
        // reading) is reported by the reply status.
        let written = if inlined && bounded {
            let written = send.write_chunk(frame.into()).await.map_err(write_error);
            let _ = send.finish();
            written
        } else {
            let body = if inlined { Body::empty() } else { body };
            body.write_framed(
                frame.into(),
                &mut send,
                limits.stall_timeout,
                &mut Deadline::new(),
            )
            .await
        };
        match written {
            Ok(()) | Err(Error::Remote(_)) => Ok(Sent { recv, upload: None }),
            Err(e) => Err(e),
        }
    } else {
        send.write_all(&frame).await.map_err(write_error)?;
        let stall = limits.stall_timeout;
        let upload = tasks.spawn(async move { body.write_to(&mut send, stall).await });
        Ok(Sent {
            recv,
            upload: Some(upload),
        })
    }
}

/// Reads the reply's status: `Ok` or the callee's error.
pub(crate) async fn read_status(recv: &mut quinn::RecvStream, route: &str) -> Result<()> {
    let header: ResponseHeader = wire::read_frame(recv, MAX_HEADER).await?;
    match header.status.into_error(route) {
        None => Ok(()),
        Some(e) => Err(e),
    }
}

/// A whole call with a body in memory and a reply read into memory (bounded
/// by [`Limits::max_body`]). The caller bounds its time.
pub(crate) async fn buffered(
    streams: Streams,
    route: &str,
    body: Bytes,
    limits: &Limits,
    tasks: &Tasks,
) -> Result<Bytes> {
    let mut sent = send(streams, route, body.into(), limits, tasks, true).await?;
    // The status and the body read in one loop, then split.
    let all = read_to_end(
        &mut sent.recv,
        4 + MAX_HEADER.min(limits.max_header) + limits.max_body,
        "reply body",
    )
    .await
    .map_err(|e| match e {
        Error::TooLarge { what, .. } => Error::TooLarge {
            what,
            limit: limits.max_body as u64,
        },
        e => e,
    })?;
    let (header, body): (ResponseHeader, Bytes) = wire::split_frame(all, MAX_HEADER)?;
    if let Some(e) = header.status.into_error(route) {
        return Err(e);
    }
    if body.len() > limits.max_body {
        return Err(Error::TooLarge {
            what: "reply body",
            limit: limits.max_body as u64,
        });
    }
    Ok(body)
}

/// A call whose reply arrives as a stream. The upload may legitimately take
/// long (the handler may answer only once it read everything): a callee that
/// stops reading it is caught by the stall timeout, one that never answers by
/// the call timeout on the status.
pub(crate) async fn streaming(
    streams: Streams,
    route: &str,
    body: Body,
    limits: &Limits,
    tasks: &Tasks,
) -> Result<RecvBody> {
    let Sent { mut recv, upload } = send(streams, route, body, limits, tasks, false).await?;
    let status = tokio::time::timeout(limits.call_timeout, read_status(&mut recv, route))
        .await
        .unwrap_or(Err(Error::Timeout("reply header")));
    match status {
        Ok(()) => Ok(RecvBody::new(recv, Some(limits.stall_timeout))),
        Err(e) => {
            if let Some(upload) = upload {
                upload.abort();
            }
            Err(e)
        }
    }
}
