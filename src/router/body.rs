//! Bodies: what a call or a reply sends ([`Body`]: bytes, a reader or a
//! stream of chunks) and what arrives as a stream ([`RecvBody`], with its
//! stall timeout).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

use crate::deadline::Deadline;
use crate::error::{Error, Result};

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

    /// The bytes, if the body is in memory.
    pub(crate) fn bytes(&self) -> Option<&[u8]> {
        match &self.0 {
            BodyKind::Bytes(b) => Some(b),
            BodyKind::Reader(_) | BodyKind::Chunks(_) => None,
        }
    }

    /// Whether the body is known to be empty.
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// Writes `frame` (a header) and then the body, and finishes the
    /// stream: a body in memory goes out with its header in one write (one
    /// pass through the connection's lock, not three). A write that waits
    /// longer than `stall` ends with a timeout (on `deadline`'s timer).
    pub(crate) async fn write_framed(
        self,
        frame: Bytes,
        send: &mut quinn::SendStream,
        stall: std::time::Duration,
        deadline: &mut Deadline,
    ) -> Result<()> {
        match self.0 {
            BodyKind::Bytes(b) => {
                let mut pieces = [frame, b];
                let pieces = if pieces[1].is_empty() {
                    &mut pieces[..1]
                } else {
                    &mut pieces[..]
                };
                match deadline.within(stall, send.write_all_chunks(pieces)).await {
                    Some(r) => r.map_err(write_error)?,
                    None => return Err(Error::Timeout("the peer stopped reading")),
                }
                let _ = send.finish();
                Ok(())
            }
            kind => {
                match deadline.within(stall, send.write_all(&frame)).await {
                    Some(r) => r.map_err(write_error)?,
                    None => return Err(Error::Timeout("the peer stopped reading")),
                }
                // Boxed: a reply in memory, the common case, is not sized
                // for a streamed one.
                Box::pin(Body(kind).write_to(send, stall)).await
            }
        }
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
/// for the node's stall timeout ([`Limits::stall_timeout`](crate::Limits::stall_timeout)) ends it with a
/// timed-out error.
pub struct RecvBody {
    stream: quinn::RecvStream,
    /// Bytes read with the header, handed out before the stream's.
    first: Bytes,
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
            first: Bytes::new(),
            stall: stall.map(|limit| Stall {
                limit,
                last_progress: now,
                timer: None,
            }),
        }
    }

    /// The body whose first bytes (`first`) were read already.
    pub(crate) fn after(mut self, first: Bytes) -> Self {
        self.first = first;
        self
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
        if !this.first.is_empty() {
            let n = this.first.len().min(buf.remaining());
            buf.put_slice(&this.first.split_to(n));
            return Poll::Ready(Ok(()));
        }
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

/// Reads a whole stream of at most `limit` bytes: its chunks as quinn
/// hands them over, in order ([`Pieces`]), then joined once (quinn's own
/// `read_to_end` zeroes a buffer first and copies into it).
pub(crate) async fn read_to_end(
    stream: &mut quinn::RecvStream,
    limit: usize,
    what: &'static str,
) -> Result<Bytes> {
    let mut pieces = Pieces::default();
    while let Some(chunk) = stream
        .read_chunk(usize::MAX, true)
        .await
        .map_err(read_error)?
    {
        if pieces.len() + chunk.bytes.len() > limit {
            return Err(Error::TooLarge {
                what,
                limit: limit as u64,
            });
        }
        pieces.push(chunk.bytes);
    }
    Ok(pieces.join())
}

/// Pieces below this size are copied, not kept.
const SMALL_PIECE: usize = 1024;

/// At most this much is set aside up front for small pieces (before any
/// byte arrived and was counted in a budget: a peer announcing a length it
/// never sends must not make the reader hold much).
const SMALL_CAPACITY: usize = SMALL_PIECE;

/// A message's pieces as they arrive, joined at the end. A piece is a
/// slice of the datagram (or batch of datagrams) it came in, and keeping it
/// keeps that whole allocation: a peer sending a byte per packet would make
/// the reader hold a packet buffer per byte. So pieces of at least
/// [`SMALL_PIECE`] bytes (what full packets carry) are kept as they are,
/// smaller ones copied together.
#[derive(Default)]
pub(crate) struct Pieces {
    kept: Vec<Bytes>,
    small: BytesMut,
    len: usize,
}

impl Pieces {
    /// No pieces yet; small ones will be copied into a buffer of `capacity`
    /// bytes (the message's announced length, when known) before it grows.
    pub(crate) fn with_capacity(capacity: usize) -> Self {
        Pieces {
            small: BytesMut::with_capacity(capacity.min(SMALL_CAPACITY)),
            ..Pieces::default()
        }
    }

    /// Adds the next piece.
    pub(crate) fn push(&mut self, piece: Bytes) {
        self.len += piece.len();
        if piece.len() >= SMALL_PIECE {
            if !self.small.is_empty() {
                self.kept.push(self.small.split().freeze());
            }
            self.kept.push(piece);
        } else {
            self.small.extend_from_slice(&piece);
        }
    }

    /// Bytes so far.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The whole message: one piece as it is, several joined at a
    /// page-aligned address (a file written with `O_DIRECT` takes the bytes
    /// as they are, without a second copy).
    pub(crate) fn join(mut self) -> Bytes {
        if self.kept.is_empty() {
            // Only small pieces (a small message): their buffer as it is.
            return self.small.freeze();
        }
        if !self.small.is_empty() {
            self.kept.push(self.small.split().freeze());
        }
        match self.kept.len() {
            0 => Bytes::new(),
            1 => self.kept.pop().unwrap_or_default(),
            _ => {
                let mut out = Vec::<u8>::with_capacity(self.len + PAGE);
                let at = out.as_ptr().align_offset(PAGE).min(PAGE);
                out.resize(at, 0);
                for piece in self.kept {
                    out.extend_from_slice(&piece);
                }
                Bytes::from(out).slice(at..)
            }
        }
    }
}

/// Alignment of a joined reply.
const PAGE: usize = 4096;

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

#[cfg(test)]
mod tests {
    use super::*;

    /// Small pieces are copied: the buffers they came in are not held (a
    /// byte per packet cannot make the reader keep a packet per byte); large
    /// ones are kept without a copy; the message comes out whole, in order,
    /// page-aligned when joined.
    /// What is set aside before any byte arrived (and was counted in a
    /// budget) is small, whatever length the peer announced.
    #[test]
    fn an_announced_length_reserves_little() {
        let pieces = Pieces::with_capacity(16 * 1024 * 1024);
        assert!(
            pieces.small.capacity() <= SMALL_PIECE,
            "{}",
            pieces.small.capacity()
        );
        let mut small = Pieces::with_capacity(64);
        small.push(Bytes::from_static(&[1; 64]));
        assert_eq!(&small.join()[..], &[1; 64]);
    }

    #[test]
    fn small_pieces_are_copied_and_large_ones_kept() {
        let mut pieces = Pieces::default();
        let mut want = Vec::new();
        let mut packets = Vec::new();
        for i in 0..100u8 {
            let packet = Bytes::from(vec![i; 1400]);
            pieces.push(packet.slice(..1));
            want.push(i);
            packets.push(packet);
        }
        assert!(
            packets.iter_mut().all(|p| p.is_unique()),
            "a packet is still held for the byte taken from it"
        );
        let large = Bytes::from(vec![7u8; 4096]);
        pieces.push(large.clone());
        want.extend_from_slice(&large);
        assert!(!large.clone().is_unique(), "a large piece is kept as it is");
        pieces.push(Bytes::from_static(b"end"));
        want.extend_from_slice(b"end");
        assert_eq!(pieces.len(), want.len());
        let got = pieces.join();
        assert_eq!(&got[..], &want[..]);
        assert_eq!(got.as_ptr().align_offset(PAGE), 0);
    }
}
