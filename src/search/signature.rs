//! Locality-sensitive signatures: 64 bits such that similar inputs differ
//! in few bits. For text, SimHash over weighted word shingles (Charikar):
//! each feature's hash votes its weight for or against each bit; the
//! Hamming distance of two signatures estimates the angle between the two
//! feature vectors (`h / 64 ≈ θ / π`). For a caller's own embedding
//! vector, random-hyperplane LSH with the same property: bit `i` is the
//! side of plane `i` the vector lies on; the planes are derived from a
//! fixed, versioned seed (`butter/sim/planes/v1` and the dimension), so
//! every node computes the same ones.
//!
//! Each bit comes with its margin (how far its vote was from a tie): the
//! bits most likely to differ in a similar input are those with the
//! smallest margins, which is what query-directed probing flips first
//! ([`Bands::probes`](super::bands::Bands::probes)).
//!
//! ```
//! use butter::search::signature::{Signature, Sketch};
//!
//! let a = Sketch::of_text("fresh butter from the farm, salted and churned by hand");
//! let b = Sketch::of_text("fresh butter from a farm, salted and churned by hand");
//! let c = Sketch::of_text("kernel driver for usb network adapters");
//! assert!(a.signature.hamming(b.signature) < a.signature.hamming(c.signature));
//! ```

use serde::{Deserialize, Serialize};

use super::text::{features, Feature};

/// Dimensions of an embedding at most.
pub const MAX_DIMS: usize = 4096;

/// A 64-bit signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Signature(pub u64);

impl Signature {
    /// Bits that differ.
    pub fn hamming(self, other: Signature) -> u32 {
        (self.0 ^ other.0).count_ones()
    }

    /// `1 − hamming / 64`: 1.0 for the same signature, about 0.5 for
    /// unrelated inputs. The similarity measure search ranks by.
    pub fn similarity(self, other: Signature) -> f32 {
        1.0 - self.hamming(other) as f32 / 64.0
    }
}

impl std::fmt::Display for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A signature and the margin of each of its bits.
#[derive(Debug, Clone, PartialEq)]
pub struct Sketch {
    /// The signature.
    pub signature: Signature,
    /// `|vote|` of bit `i` (0 = a tie: the bit is a coin flip).
    pub margins: [f32; 64],
}

impl Sketch {
    /// SimHash of weighted features.
    pub fn of_features(features: &[Feature]) -> Sketch {
        let mut votes = [0f32; 64];
        for (hash, weight) in features {
            for (i, v) in votes.iter_mut().enumerate() {
                if hash >> i & 1 == 1 {
                    *v += weight;
                } else {
                    *v -= weight;
                }
            }
        }
        Self::of_votes(&votes)
    }

    /// SimHash of a text ([`features`]).
    pub fn of_text(text: &str) -> Sketch {
        Self::of_features(&features(text))
    }

    /// Random-hyperplane LSH of an embedding (1 to [`MAX_DIMS`] finite
    /// components, not all zero).
    pub fn of_embedding(v: &[f32]) -> Result<Sketch, SignatureError> {
        if v.is_empty() || v.len() > MAX_DIMS {
            return Err(SignatureError::Dimensions(v.len()));
        }
        if v.iter().any(|x| !x.is_finite()) {
            return Err(SignatureError::NotFinite);
        }
        if v.iter().all(|x| *x == 0.0) {
            return Err(SignatureError::Zero);
        }
        let planes = planes(v.len());
        let mut votes = [0f32; 64];
        for (j, x) in v.iter().enumerate() {
            for (i, vote) in votes.iter_mut().enumerate() {
                *vote += x * planes[j * 64 + i];
            }
        }
        Ok(Self::of_votes(&votes))
    }

    /// The sketch of summed votes: bit `i` set where vote `i` is
    /// positive, its margin the vote's size (what a profile of many
    /// documents' votes is).
    pub fn of_votes(votes: &[f32; 64]) -> Sketch {
        let mut bits = 0u64;
        let mut margins = [0f32; 64];
        for (i, v) in votes.iter().enumerate() {
            if *v > 0.0 {
                bits |= 1 << i;
            }
            margins[i] = v.abs();
        }
        Sketch {
            signature: Signature(bits),
            margins,
        }
    }
}

/// Why an embedding has no signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Empty, or more than [`MAX_DIMS`] components.
    #[error("an embedding needs 1 to {MAX_DIMS} dimensions, not {0}")]
    Dimensions(usize),
    /// A component is NaN or infinite.
    #[error("an embedding component is not a finite number")]
    NotFinite,
    /// All components are zero: no direction.
    #[error("an all-zero embedding has no direction")]
    Zero,
}

/// The 64 hyperplanes for `dims` dimensions, dimension-major
/// (`planes[j * 64 + i]` is component `j` of plane `i`): standard normal
/// components from BLAKE3's output stream (Box–Muller), the same on every
/// node and platform. The last dimension's set is kept.
fn planes(dims: usize) -> std::sync::Arc<Vec<f32>> {
    use std::sync::{Arc, Mutex, OnceLock};
    /// The planes of the dimension asked for last.
    type Cached = Option<(usize, Arc<Vec<f32>>)>;
    static LAST: OnceLock<Mutex<Cached>> = OnceLock::new();
    let cache = LAST.get_or_init(Default::default);
    if let Some((d, p)) = cache.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
        if *d == dims {
            return p.clone();
        }
    }
    let mut xof = blake3::Hasher::new()
        .update(b"butter/sim/planes/v1")
        .update(&(dims as u32).to_le_bytes())
        .finalize_xof();
    let mut out = Vec::with_capacity(dims * 64);
    let mut buf = [0u8; 8];
    while out.len() < dims * 64 {
        xof.fill(&mut buf);
        // Two uniforms in (0, 1], two normals.
        let u1 = (u32::from_le_bytes(buf[..4].try_into().expect("4")) as f64 + 1.0) / 4294967296.0;
        let u2 = u32::from_le_bytes(buf[4..].try_into().expect("4")) as f64 / 4294967296.0;
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        out.push((r * t.cos()) as f32);
        if out.len() < dims * 64 {
            out.push((r * t.sin()) as f32);
        }
    }
    let planes = Arc::new(out);
    *cache.lock().unwrap_or_else(|e| e.into_inner()) = Some((dims, planes.clone()));
    planes
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    #[test]
    fn near_texts_are_near_and_unrelated_ones_are_not() {
        // A description of the length of a package's, three words changed.
        let base = "a command line tool to synchronise files and directories between \
                    computers over ssh or its own protocol, keeping permissions, owners, \
                    symbolic links and modification times, and sending only the parts of \
                    each file that changed since the last run, which makes mirrors and \
                    backups of large trees fast even over slow network links";
        let near = base
            .replace("computers", "machines")
            .replace("times", "dates")
            .replace("fast", "quick");
        let far = "a font family with wide coverage of the latin, greek and cyrillic \
                   scripts, designed for reading long texts on screens of low resolution, \
                   with hinting for small sizes, several weights and true italics";
        let (a, b, c) = (
            Sketch::of_text(base).signature,
            Sketch::of_text(&near).signature,
            Sketch::of_text(far).signature,
        );
        assert!(a.hamming(b) <= 14, "near: {}", a.hamming(b));
        assert!(a.hamming(c) >= 20, "far: {}", a.hamming(c));
        assert!(a.similarity(b) > a.similarity(c));
        assert_eq!(a.similarity(a), 1.0);
    }

    #[test]
    fn hyperplanes_estimate_the_angle() {
        // Pairs of vectors at a known angle: the fraction of differing bits
        // estimates angle / π (64 bits: within a few bits on average).
        let mut rng = StdRng::seed_from_u64(3);
        let dims = 96;
        for angle in [0.1f32, 0.5, 1.0, 1.5] {
            let mut total = 0u32;
            let rounds = 40;
            for _ in 0..rounds {
                let x: Vec<f32> = (0..dims).map(|_| rng.random_range(-1.0..1.0)).collect();
                let y0: Vec<f32> = (0..dims).map(|_| rng.random_range(-1.0..1.0)).collect();
                // y orthogonal to x, then rotated towards it by `angle`.
                let dot: f32 = x.iter().zip(&y0).map(|(a, b)| a * b).sum();
                let xx: f32 = x.iter().map(|a| a * a).sum();
                let y: Vec<f32> = y0.iter().zip(&x).map(|(b, a)| b - dot / xx * a).collect();
                let (nx, ny) = (xx.sqrt(), y.iter().map(|a| a * a).sum::<f32>().sqrt());
                let v: Vec<f32> = x
                    .iter()
                    .zip(&y)
                    .map(|(a, b)| angle.cos() * a / nx + angle.sin() * b / ny)
                    .collect();
                let (sx, sv) = (
                    Sketch::of_embedding(&x).unwrap().signature,
                    Sketch::of_embedding(&v).unwrap().signature,
                );
                total += sx.hamming(sv);
            }
            let mean = total as f32 / rounds as f32;
            let expect = 64.0 * angle / std::f32::consts::PI;
            assert!(
                (mean - expect).abs() < 4.0,
                "angle {angle}: {mean} bits, expected {expect}"
            );
        }
    }

    #[test]
    fn embeddings_are_checked_and_scale_does_not_matter() {
        assert_eq!(
            Sketch::of_embedding(&[]),
            Err(SignatureError::Dimensions(0))
        );
        assert_eq!(
            Sketch::of_embedding(&vec![1.0; MAX_DIMS + 1]),
            Err(SignatureError::Dimensions(MAX_DIMS + 1))
        );
        assert_eq!(
            Sketch::of_embedding(&[1.0, f32::NAN]),
            Err(SignatureError::NotFinite)
        );
        assert_eq!(Sketch::of_embedding(&[0.0, 0.0]), Err(SignatureError::Zero));
        let v = [0.3, -1.2, 4.0, 0.01];
        let w: Vec<f32> = v.iter().map(|x| x * 10.0).collect();
        assert_eq!(
            Sketch::of_embedding(&v).unwrap().signature,
            Sketch::of_embedding(&w).unwrap().signature
        );
        // Stable across dimension changes of the cache.
        let a = Sketch::of_embedding(&v).unwrap();
        Sketch::of_embedding(&[1.0; 7]).unwrap();
        assert_eq!(Sketch::of_embedding(&v).unwrap(), a);
    }

    #[test]
    fn the_planes_are_fixed_forever() {
        // The version pins them: a change here breaks every index entry
        // published with v1 (bump the version instead).
        let s = Sketch::of_embedding(&[1.0, 2.0, 3.0]).unwrap().signature;
        assert_eq!(s, Sketch::of_embedding(&[1.0, 2.0, 3.0]).unwrap().signature);
        let t = Sketch::of_text("butter").signature;
        assert_eq!(t, Sketch::of_text("BUTTER!").signature);
    }
}
