//! STUN (RFC 8489) binding requests and responses, built with `stun-rs`.
//!
//! Every node answers binding requests on its one UDP port (introducers are the
//! ones others are configured to ask) and can ask any STUN server for its
//! reflexive address: the source address a server on the other side of the NATs
//! saw, which is what peers must dial.

use std::net::SocketAddr;

use stun_rs::attributes::stun::{Fingerprint, Software, XorMappedAddress};
use stun_rs::methods::BINDING;
use stun_rs::{
    DecoderContextBuilder, MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunMessage,
    StunMessageBuilder, TransactionId,
};

use crate::error::Error;

/// SOFTWARE attribute value.
pub const SOFTWARE: &str = concat!("butter ", env!("CARGO_PKG_VERSION"));
/// Largest STUN message handled.
pub const MAX_STUN: usize = 1024;

/// Whether a datagram looks like STUN: two zero bits, then the magic cookie.
pub fn looks_like_stun(bytes: &[u8]) -> bool {
    bytes.len() >= 20 && bytes[0] & 0xc0 == 0 && bytes[4..8] == [0x21, 0x12, 0xa4, 0x42]
}

fn decode(bytes: &[u8]) -> Result<StunMessage, Error> {
    if bytes.len() > MAX_STUN {
        return Err(Error::TooLarge {
            what: "STUN message",
            limit: MAX_STUN as u64,
        });
    }
    // Validation checks FINGERPRINT when present.
    let ctx = DecoderContextBuilder::default().with_validation().build();
    let decoder = MessageDecoderBuilder::default().with_context(ctx).build();
    let (msg, _) = decoder
        .decode(bytes)
        .map_err(|e| Error::Malformed(format!("STUN: {e:?}")))?;
    Ok(msg)
}

fn encode(msg: &StunMessage) -> Result<Vec<u8>, Error> {
    let encoder = MessageEncoderBuilder::default().build();
    let mut buf = vec![0u8; MAX_STUN];
    let n = encoder
        .encode(&mut buf, msg)
        .map_err(|e| Error::Malformed(format!("STUN encode: {e:?}")))?;
    buf.truncate(n);
    Ok(buf)
}

/// A binding request with a fresh transaction id, SOFTWARE and FINGERPRINT.
pub fn binding_request() -> Result<([u8; 12], Vec<u8>), Error> {
    let tid = TransactionId::default();
    let msg = StunMessageBuilder::new(BINDING, MessageClass::Request)
        .with_transaction_id(tid)
        .with_attribute(Software::new(SOFTWARE).map_err(|e| Error::Config(format!("{e:?}")))?)
        .with_attribute(Fingerprint::default())
        .build();
    Ok((*tid.as_bytes(), encode(&msg)?))
}

/// What an incoming STUN datagram is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A binding request; the bytes are the response to send back.
    Request(Vec<u8>),
    /// A binding success response for transaction `tid` with the mapped address.
    Response {
        /// Transaction id.
        tid: [u8; 12],
        /// XOR-MAPPED-ADDRESS: how the server saw us.
        mapped: SocketAddr,
    },
}

/// Reads a STUN datagram from `from`: answers binding requests, extracts the
/// mapped address of binding responses. Anything else is a typed error.
pub fn handle(bytes: &[u8], from: SocketAddr) -> Result<Incoming, Error> {
    let msg = decode(bytes)?;
    if msg.method() != BINDING {
        return Err(Error::Malformed("STUN method is not BINDING".into()));
    }
    match msg.class() {
        MessageClass::Request => {
            let reply = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
                .with_transaction_id(*msg.transaction_id())
                .with_attribute(XorMappedAddress::from(from))
                .with_attribute(
                    Software::new(SOFTWARE).map_err(|e| Error::Config(format!("{e:?}")))?,
                )
                .with_attribute(Fingerprint::default())
                .build();
            Ok(Incoming::Request(encode(&reply)?))
        }
        MessageClass::SuccessResponse => {
            let mapped = msg
                .get::<XorMappedAddress>()
                .and_then(|a| a.as_xor_mapped_address().ok())
                .map(|a| *a.socket_address())
                .ok_or_else(|| {
                    Error::Malformed("STUN response without XOR-MAPPED-ADDRESS".into())
                })?;
            Ok(Incoming::Response {
                tid: *msg.transaction_id().as_bytes(),
                mapped,
            })
        }
        other => Err(Error::Malformed(format!("unexpected STUN class {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_response_round_trip() {
        let (tid, req) = binding_request().unwrap();
        assert!(looks_like_stun(&req));
        let client: SocketAddr = "203.0.113.7:40000".parse().unwrap();
        let Incoming::Request(resp) = handle(&req, client).unwrap() else {
            panic!("not answered as a request")
        };
        let got = handle(&resp, "198.51.100.1:3478".parse().unwrap()).unwrap();
        assert_eq!(
            got,
            Incoming::Response {
                tid,
                mapped: client
            }
        );
    }

    #[test]
    fn garbage_truncation_and_bad_fingerprint_are_errors() {
        let (_, req) = binding_request().unwrap();
        for cut in 0..req.len() {
            assert!(
                handle(&req[..cut], "127.0.0.1:1".parse().unwrap()).is_err(),
                "cut {cut}"
            );
        }
        let mut bad = req.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        assert!(handle(&bad, "127.0.0.1:1".parse().unwrap()).is_err());
        assert!(handle(&[0u8; 64], "127.0.0.1:1".parse().unwrap()).is_err());
        // Any other input: the fuzz target (fuzz/stun) checks it never panics.
    }
}
