//! Where index entries live: a 64-bit signature is cut into `count` bands
//! of `bits` bits, and an entry is published under one DHT key per band,
//! `BLAKE3("butter/sim/v1" ‖ count ‖ bits ‖ band ‖ band value)`. Two
//! signatures within Hamming distance `count − 1` share at least one band
//! exactly (pigeonhole), so `count` lookups find every entry within that
//! radius. Probing widens it at a known cost: each probe is the key of one
//! band with a few bits flipped, chosen where the query's own votes were
//! closest to a tie (the bits a similar input most likely has the other
//! way), best first across all bands.
//!
//! Why not the signature itself as the key: XOR distance orders by the
//! highest differing bit, so two signatures one bit apart (bit 63) would be
//! as far apart in the DHT as any two keys.
//!
//! ```
//! use butter::search::bands::Bands;
//! use butter::search::signature::Signature;
//!
//! let bands = Bands::DEFAULT;
//! let a = Signature(0x0123_4567_89ab_cdef);
//! let b = Signature(a.0 ^ 0b1001_0001); // 3 bits apart, all in band 0
//! let shared = bands.keys(a).iter().filter(|k| bands.keys(b).contains(k)).count();
//! assert_eq!(shared, bands.count as usize - 1);
//! ```

use crate::identity::NodeId;

use super::signature::{Signature, Sketch};

/// A band scheme. `count × bits` is 64.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bands {
    /// Bands per signature (lookups per query without probes).
    pub count: u8,
    /// Bits per band.
    pub bits: u8,
}

/// One probe: a band and the value looked up for it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Probe {
    /// Which band.
    pub band: u8,
    /// The band's value (the query's, or with bits flipped).
    pub value: u64,
    /// Bits flipped from the query's band.
    pub flipped: u32,
    /// How unlikely the probe is: the margins of the flipped bits summed
    /// (0 for the query's own bands).
    pub cost: f32,
}

impl Bands {
    /// 8 bands of 8 bits: every entry within 7 bits is found with 8
    /// lookups; a band value is shared by 1/256 of the signatures.
    pub const DEFAULT: Bands = Bands { count: 8, bits: 8 };

    /// A scheme, if `count × bits` is 64.
    pub fn new(count: u8, bits: u8) -> Option<Bands> {
        (count as u32 * bits as u32 == 64 && count > 0).then_some(Bands { count, bits })
    }

    /// Hamming distance within which every entry is found by the
    /// `count` exact band lookups.
    pub fn radius(&self) -> u32 {
        self.count as u32 - 1
    }

    /// The value of `band` in `sig`.
    pub fn value(&self, sig: Signature, band: u8) -> u64 {
        let mask = if self.bits >= 64 {
            u64::MAX
        } else {
            (1u64 << self.bits) - 1
        };
        (sig.0 >> (band as u32 * self.bits as u32)) & mask
    }

    /// The DHT key of `value` in `band`.
    pub fn key(&self, band: u8, value: u64) -> NodeId {
        let mut h = blake3::Hasher::new();
        h.update(b"butter/sim/v1");
        h.update(&[self.count, self.bits, band]);
        h.update(&value.to_le_bytes());
        NodeId::from_bytes(*h.finalize().as_bytes())
    }

    /// The keys an entry with signature `sig` is published under, one per
    /// band.
    pub fn keys(&self, sig: Signature) -> Vec<NodeId> {
        (0..self.count)
            .map(|b| self.key(b, self.value(sig, b)))
            .collect()
    }

    /// What a query looks up: its own `count` bands, then up to `extra`
    /// probes, least costly first (flips of one bit, and of two bits where
    /// both were near a tie).
    pub fn probes(&self, sketch: &Sketch, extra: usize) -> Vec<Probe> {
        let sig = sketch.signature;
        let mut out: Vec<Probe> = (0..self.count)
            .map(|band| Probe {
                band,
                value: self.value(sig, band),
                flipped: 0,
                cost: 0.0,
            })
            .collect();
        if extra == 0 {
            return out;
        }
        let mut more = Vec::new();
        for band in 0..self.count {
            let base = self.value(sig, band);
            let first = band as usize * self.bits as usize;
            // The band's bits, least sure first.
            let mut bits: Vec<usize> = (0..self.bits as usize).collect();
            bits.sort_by(|a, b| sketch.margins[first + a].total_cmp(&sketch.margins[first + b]));
            for (n, &i) in bits.iter().enumerate() {
                let m = sketch.margins[first + i];
                more.push(Probe {
                    band,
                    value: base ^ (1 << i),
                    flipped: 1,
                    cost: m,
                });
                // Pairs among the four least sure bits.
                if n < 4 {
                    for &j in bits.iter().take(n) {
                        more.push(Probe {
                            band,
                            value: base ^ (1 << i) ^ (1 << j),
                            flipped: 2,
                            cost: m + sketch.margins[first + j],
                        });
                    }
                }
            }
        }
        more.sort_by(|a, b| a.cost.total_cmp(&b.cost));
        out.extend(more.into_iter().take(extra));
        out
    }
}

/// The DHT key of a normalised word (a term entries are also published
/// under, for queries of a few words).
pub fn term_key(term: &str) -> NodeId {
    let mut h = blake3::Hasher::new();
    h.update(b"butter/sim/term/v1");
    h.update(term.as_bytes());
    NodeId::from_bytes(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    #[test]
    fn only_whole_schemes() {
        assert!(Bands::new(8, 8).is_some());
        assert!(Bands::new(4, 16).is_some());
        assert!(Bands::new(64, 1).is_some());
        assert!(Bands::new(5, 13).is_none());
        assert!(Bands::new(0, 64).is_none());
        assert_eq!(Bands::DEFAULT.radius(), 7);
    }

    /// The guarantee, on generated signatures: everything within the
    /// radius shares a band key (recall 1.0 there), for several schemes.
    #[test]
    fn everything_within_the_radius_shares_a_key() {
        let mut rng = StdRng::seed_from_u64(7);
        for bands in [
            Bands::DEFAULT,
            Bands::new(4, 16).unwrap(),
            Bands::new(16, 4).unwrap(),
        ] {
            for _ in 0..2000 {
                let a = Signature(rng.random());
                let d = rng.random_range(0..=bands.radius());
                let mut b = a.0;
                let mut flipped = 0;
                while flipped < d {
                    let bit = 1u64 << rng.random_range(0..64);
                    if (a.0 ^ b) & bit == 0 {
                        b ^= bit;
                        flipped += 1;
                    }
                }
                let b = Signature(b);
                assert_eq!(a.hamming(b), d);
                let ka = bands.keys(a);
                assert!(
                    bands.keys(b).iter().any(|k| ka.contains(k)),
                    "{bands:?}: distance {d} shares no band"
                );
            }
        }
    }

    #[test]
    fn keys_differ_by_band_and_scheme() {
        let b = Bands::DEFAULT;
        assert_ne!(b.key(0, 5), b.key(1, 5));
        assert_ne!(b.key(0, 5), Bands::new(4, 16).unwrap().key(0, 5));
        assert_eq!(b.value(Signature(0xff00), 1), 0xff);
    }

    /// Probes start with the query's own bands, then flip the least sure
    /// bits first; a neighbour that differs only in near-tie bits is
    /// found by a probe even beyond the radius.
    #[test]
    fn probes_flip_the_least_sure_bits_first() {
        let mut margins = [10.0f32; 64];
        // Band 2's bits 3 and 5 are near ties.
        margins[16 + 3] = 0.1;
        margins[16 + 5] = 0.2;
        let sketch = Sketch {
            signature: Signature(0),
            margins,
        };
        let b = Bands::DEFAULT;
        let probes = b.probes(&sketch, 3);
        assert_eq!(probes.len(), 8 + 3);
        assert!(probes[..8].iter().all(|p| p.flipped == 0));
        assert_eq!((probes[8].band, probes[8].value), (2, 1 << 3));
        assert_eq!((probes[9].band, probes[9].value), (2, 1 << 5));
        assert_eq!(
            (probes[10].band, probes[10].value),
            (2, (1 << 3) | (1 << 5))
        );
        // A neighbour 9 bits away (beyond the radius 7): the two near ties
        // of band 2 and one bit in every other band.
        let mut other = (1u64 << (16 + 3)) | (1 << (16 + 5));
        for band in [0, 1, 3, 4, 5, 6, 7] {
            other |= 1 << (band * 8);
        }
        let other = Signature(other);
        assert_eq!(sketch.signature.hamming(other), 9);
        let keys = b.keys(other);
        assert!(b.keys(sketch.signature).iter().all(|k| !keys.contains(k)));
        assert!(probes
            .iter()
            .any(|p| keys.contains(&b.key(p.band, p.value))));
    }
}
