//! Wire format of a route call.
//!
//! One call is one bidirectional QUIC stream:
//!
//! ```text
//! caller → callee:  [u32 LE len][postcard RequestHeader]  body bytes … FIN
//! callee → caller:  [u32 LE len][postcard ResponseHeader] body bytes … FIN
//! ```
//!
//! Header frames are bounded ([`MAX_HEADER`](crate::wire::MAX_HEADER) at most); bodies are raw bytes up to the
//! end of the stream, so they can be streamed without any framing cost. The protocol
//! version lives in the ALPN (`butter/1`). Serialization is postcard (bincode is
//! unmaintained: its last release is a `compile_error!` tombstone).

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::error::Error;

/// Hard upper bound of any header frame, whatever the configuration says.
pub const MAX_HEADER: usize = 64 * 1024;

/// Request header flag: the body is streamed (its length is unknown up front).
pub const FLAG_STREAMED: u8 = 0b0000_0001;

/// First frame of every call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestHeader {
    /// Route name, e.g. `reverse` or `butter/ping`.
    pub route: String,
    /// Bit flags ([`FLAG_STREAMED`]); unknown bits are ignored.
    pub flags: u8,
    /// Body length when known, so an oversized body is refused before it is read.
    pub body_len: Option<u64>,
}

/// Outcome of a call, first frame of every reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// The body that follows is the handler's reply.
    Ok,
    /// No handler is registered under that name.
    NoSuchRoute,
    /// The header or body exceeded the callee's limit.
    TooLarge {
        /// The limit that was exceeded.
        limit: u64,
    },
    /// The request did not decode.
    Malformed(String),
    /// The handler returned an error or panicked.
    HandlerError(String),
    /// The callee gave up waiting (for the header, or for the handler).
    Timeout,
    /// The callee is at capacity (its budget of buffered bodies is in use);
    /// retrying later may succeed.
    Busy,
}

/// First frame of every reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseHeader {
    /// The outcome.
    pub status: Status,
}

impl Status {
    /// The caller-side error for a non-OK status.
    pub fn into_error(self, route: &str) -> Option<Error> {
        Some(match self {
            Status::Ok => return None,
            Status::NoSuchRoute => Error::NoSuchRoute(route.to_string()),
            Status::TooLarge { limit } => Error::TooLarge {
                what: "request (remote limit)",
                limit,
            },
            Status::Malformed(m) => Error::Malformed(format!("remote says: {m}")),
            Status::HandlerError(m) => Error::Remote(m),
            Status::Timeout => Error::Timeout("remote handler"),
            Status::Busy => Error::Busy("the peer is at capacity"),
        })
    }
}

/// Encodes `value` as one length-prefixed frame.
pub fn encode_frame<T: Serialize>(value: &T, max: usize) -> Result<Vec<u8>, Error> {
    encode_frame_into(value, max, Vec::with_capacity(64))
}

/// Appends `value` as one length-prefixed frame to `out` (which may have
/// room set aside for what follows the frame).
fn encode_frame_into<T: Serialize>(
    value: &T,
    max: usize,
    mut out: Vec<u8>,
) -> Result<Vec<u8>, Error> {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    let mut out =
        postcard::to_extend(value, out).map_err(|e| Error::Malformed(format!("encode: {e}")))?;
    let len = out.len() - at - 4;
    if len > max.min(MAX_HEADER) {
        return Err(Error::TooLarge {
            what: "header frame",
            limit: max.min(MAX_HEADER) as u64,
        });
    }
    out[at..at + 4].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(out)
}

/// The frame of an `Ok` reply's header (what [`encode_frame`] makes of
/// `ResponseHeader { status: Status::Ok }`), sent as it is.
pub const OK_FRAME: &[u8] = &[1, 0, 0, 0, 0];

/// A request header borrowing its route name: encodes exactly as
/// [`RequestHeader`] does, without copying the name.
#[derive(Serialize)]
struct RequestHeaderRef<'a> {
    route: &'a str,
    flags: u8,
    body_len: Option<u64>,
}

/// Bytes of `n` as a postcard varint.
fn varint_len(n: u64) -> usize {
    (64 - n.leading_zeros() as usize).max(1).div_ceil(7)
}

/// Bodies up to this size are sent in the same buffer as their header.
const INLINE_BODY: usize = 1024;

/// A request's first bytes: its header frame and, when it is small, the
/// body in memory (one buffer: one write). Returns the frame and whether
/// `body` went in it.
pub(crate) fn request_frame(
    route: &str,
    flags: u8,
    body: Option<&[u8]>,
    max: usize,
) -> Result<(Vec<u8>, bool), Error> {
    let header = RequestHeaderRef {
        route,
        flags,
        body_len: body.map(|b| b.len() as u64),
    };
    let inline = body.filter(|b| b.len() <= INLINE_BODY);
    // The exact size (postcard: varint lengths, a tag for the option), so
    // the buffer becomes `Bytes` without another allocation.
    let header_len = varint_len(route.len() as u64)
        + route.len()
        + 1
        + header.body_len.map_or(1, |n| 1 + varint_len(n));
    let room = 4 + header_len + inline.map_or(0, <[u8]>::len);
    let mut frame = encode_frame_into(&header, max, Vec::with_capacity(room))?;
    if let Some(body) = inline {
        frame.extend_from_slice(body);
    }
    Ok((frame, inline.is_some()))
}

/// Reads one length-prefixed frame of at most `max` bytes and decodes it.
///
/// A stream that ends early or holds bytes that do not decode gives
/// [`Error::Malformed`]; a length over `max` gives [`Error::TooLarge`] without
/// reading the payload.
pub async fn read_frame<T, R>(reader: &mut R, max: usize) -> Result<T, Error>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    let max = max.min(MAX_HEADER);
    let mut len = [0u8; 4];
    reader
        .read_exact(&mut len)
        .await
        .map_err(|e| read_error(e, "frame length"))?;
    let len = u32::from_le_bytes(len) as usize;
    if len > max {
        return Err(Error::TooLarge {
            what: "header frame",
            limit: max as u64,
        });
    }
    let mut buf = vec![0u8; len];
    reader
        .read_exact(&mut buf)
        .await
        .map_err(|e| read_error(e, "frame payload"))?;
    postcard::from_bytes(&buf).map_err(|e| Error::Malformed(format!("header does not decode: {e}")))
}

/// Splits a length-prefixed frame of at most `max` bytes off the front of
/// `bytes` (a whole message read at once), decoded, and what follows it —
/// with the errors [`read_frame`] gives for the same bytes.
pub fn split_frame<T: DeserializeOwned>(
    mut bytes: bytes::Bytes,
    max: usize,
) -> Result<(T, bytes::Bytes), Error> {
    let max = max.min(MAX_HEADER);
    let Some(len) = bytes.get(..4) else {
        return Err(Error::Malformed(
            "stream ended inside the frame length".into(),
        ));
    };
    let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len > max {
        return Err(Error::TooLarge {
            what: "header frame",
            limit: max as u64,
        });
    }
    let Some(payload) = bytes.get(4..4 + len) else {
        return Err(Error::Malformed(
            "stream ended inside the frame payload".into(),
        ));
    };
    let value = postcard::from_bytes(payload)
        .map_err(|e| Error::Malformed(format!("header does not decode: {e}")))?;
    // Advanced, not sliced: a slice of a buffer made from a `Vec` would
    // make it shared (an allocation).
    bytes::Buf::advance(&mut bytes, 4 + len);
    Ok((value, bytes))
}

fn read_error(e: std::io::Error, what: &str) -> Error {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        Error::Malformed(format!("stream ended inside the {what}"))
    } else {
        Error::Unreachable(format!("reading {what}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> RequestHeader {
        RequestHeader {
            route: "reverse".into(),
            flags: FLAG_STREAMED,
            body_len: Some(5),
        }
    }

    #[tokio::test]
    async fn frame_round_trip() {
        let bytes = encode_frame(&header(), MAX_HEADER).unwrap();
        let got: RequestHeader = read_frame(&mut bytes.as_slice(), MAX_HEADER).await.unwrap();
        assert_eq!(got, header());
    }

    #[tokio::test]
    async fn truncated_frames_are_malformed() {
        let bytes = encode_frame(&header(), MAX_HEADER).unwrap();
        for cut in 0..bytes.len() {
            let err = read_frame::<RequestHeader, _>(&mut &bytes[..cut], MAX_HEADER)
                .await
                .unwrap_err();
            assert!(matches!(err, Error::Malformed(_)), "cut {cut}: {err}");
            let whole = bytes::Bytes::copy_from_slice(&bytes[..cut]);
            let err = split_frame::<RequestHeader>(whole, MAX_HEADER).unwrap_err();
            assert!(
                matches!(err, Error::Malformed(_)),
                "split, cut {cut}: {err}"
            );
        }
    }

    #[test]
    fn a_split_frame_leaves_what_follows() {
        let mut bytes = encode_frame(&header(), MAX_HEADER).unwrap();
        bytes.extend_from_slice(b"body");
        let (h, rest) =
            split_frame::<RequestHeader>(bytes::Bytes::from(bytes), MAX_HEADER).unwrap();
        assert_eq!(h, header());
        assert_eq!(&rest[..], b"body");
        let big = bytes::Bytes::from((70_000u32).to_le_bytes().to_vec());
        assert!(matches!(
            split_frame::<RequestHeader>(big, MAX_HEADER),
            Err(Error::TooLarge { .. })
        ));
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_before_reading() {
        let mut bytes = (70_000u32).to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0; 16]);
        let err = read_frame::<RequestHeader, _>(&mut bytes.as_slice(), MAX_HEADER)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }));
        // The configured limit can only lower the hard bound.
        let small = encode_frame(&header(), MAX_HEADER).unwrap();
        let err = read_frame::<RequestHeader, _>(&mut small.as_slice(), 4)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }));
    }

    #[test]
    fn shortcuts_encode_as_the_headers_do() {
        let ok = encode_frame(&ResponseHeader { status: Status::Ok }, MAX_HEADER).unwrap();
        assert_eq!(ok, OK_FRAME);
        for (body, inline) in [(vec![1u8; 5], true), (vec![2u8; 5000], false)] {
            let (frame, inlined) =
                request_frame("reverse", FLAG_STREAMED, Some(&body), MAX_HEADER).unwrap();
            assert_eq!(inlined, inline);
            let want = RequestHeader {
                route: "reverse".into(),
                flags: FLAG_STREAMED,
                body_len: Some(body.len() as u64),
            };
            let (got, rest) =
                split_frame::<RequestHeader>(bytes::Bytes::from(frame.clone()), MAX_HEADER)
                    .unwrap();
            assert_eq!(got, want);
            let mut whole = encode_frame(&want, MAX_HEADER).unwrap();
            if inline {
                assert_eq!(&rest[..], &body[..]);
                whole.extend_from_slice(&body);
            }
            assert_eq!(frame.len(), frame.capacity(), "sized exactly");
            assert_eq!(frame, whole);
        }
        for n in [0u64, 1, 127, 128, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            let mut out = [0u8; 10];
            let used = postcard::to_slice(&n, &mut out).unwrap().len();
            assert_eq!(varint_len(n), used, "{n}");
        }
        let (streamed, inlined) = request_frame("x", 1, None, MAX_HEADER).unwrap();
        assert!(!inlined);
        let (h, _) = split_frame::<RequestHeader>(streamed.into(), MAX_HEADER).unwrap();
        assert_eq!(h.body_len, None);
        assert!(request_frame(&"r".repeat(100), 0, None, 50).is_err());
    }

    #[tokio::test]
    async fn garbage_is_malformed() {
        // "Never a panic" on any input is the fuzz target's job (fuzz/wire_frames).
        let bytes = [3, 0, 0, 0, 0xff, 0xff, 0xff];
        let err = read_frame::<RequestHeader, _>(&mut bytes.as_slice(), MAX_HEADER)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Malformed(_)));
    }
}
