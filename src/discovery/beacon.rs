//! The multicast beacon: what a node says about itself on the LAN.
//!
//! `[magic "BTRB"][version 1][postcard Beacon]`, at most [`MAX_BEACON`] bytes.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::identity::NodeId;

const MAGIC: &[u8; 4] = b"BTRB";
const VERSION: u8 = 1;
/// Largest beacon accepted or sent.
pub const MAX_BEACON: usize = 1024;
/// Addresses a beacon may carry.
pub const MAX_ADDRS: usize = 8;

/// Ping asks "who is there?"; everyone who hears it answers with a Pong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// Sent while the node wants hosts.
    Ping,
    /// The answer.
    Pong,
}

/// One beacon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Beacon {
    /// Ping or pong.
    pub kind: Kind,
    /// The claimed sender (unverified until a handshake).
    pub id: NodeId,
    /// Its QUIC port (the source address of the datagram gives the IP).
    pub port: u16,
    /// Further addresses it claims.
    pub addrs: Vec<SocketAddr>,
    /// Hosts it knows.
    pub known: u32,
    /// Hosts that know it (0: nobody does yet; it should be taken in).
    pub known_by: u32,
}

impl Beacon {
    /// Encodes the beacon.
    pub fn encode(&self) -> Result<Vec<u8>, Error> {
        let mut out = MAGIC.to_vec();
        out.push(VERSION);
        let mut b = self.clone();
        b.addrs.truncate(MAX_ADDRS);
        let out =
            postcard::to_extend(&b, out).map_err(|e| Error::Malformed(format!("beacon: {e}")))?;
        if out.len() > MAX_BEACON {
            return Err(Error::TooLarge {
                what: "beacon",
                limit: MAX_BEACON as u64,
            });
        }
        Ok(out)
    }

    /// Decodes a datagram; anything that is not a well-formed beacon is an error.
    pub fn decode(bytes: &[u8]) -> Result<Beacon, Error> {
        if bytes.len() > MAX_BEACON {
            return Err(Error::TooLarge {
                what: "beacon",
                limit: MAX_BEACON as u64,
            });
        }
        if bytes.len() < 5 || &bytes[..4] != MAGIC {
            return Err(Error::Malformed("not a butter beacon".into()));
        }
        if bytes[4] != VERSION {
            return Err(Error::Malformed(format!("beacon version {}", bytes[4])));
        }
        let (beacon, rest): (Beacon, _) = postcard::take_from_bytes(&bytes[5..])
            .map_err(|e| Error::Malformed(format!("beacon: {e}")))?;
        if !rest.is_empty() || beacon.addrs.len() > MAX_ADDRS || beacon.port == 0 {
            return Err(Error::Malformed(
                "beacon has trailing bytes or bad fields".into(),
            ));
        }
        Ok(beacon)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beacon() -> Beacon {
        Beacon {
            kind: Kind::Ping,
            id: NodeId::from_bytes([7; 32]),
            port: 7400,
            addrs: vec!["10.0.0.1:7400".parse().unwrap()],
            known: 3,
            known_by: 0,
        }
    }

    #[test]
    fn round_trip() {
        assert_eq!(
            Beacon::decode(&beacon().encode().unwrap()).unwrap(),
            beacon()
        );
    }

    #[test]
    fn truncations_and_garbage_are_errors() {
        let bytes = beacon().encode().unwrap();
        for cut in 0..bytes.len() {
            assert!(Beacon::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut extra = bytes.clone();
        extra.push(0);
        assert!(Beacon::decode(&extra).is_err());
        assert!(Beacon::decode(&[0xff; 2000]).is_err());
        // Any other input: the fuzz target (fuzz/beacon) checks it never panics.
    }
}
