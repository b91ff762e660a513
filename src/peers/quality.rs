//! What a host reports about itself in its ping reply (uptime, storage,
//! degree), with the round trip we measured, and the classes those fall in:
//! shown to users (`butter peers`), never weighed by the table, since anyone
//! can claim anything.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Quality of a known host, as last reported by its `butter/ping` reply and
/// measured by us (round trip).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quality {
    /// How long the host has been running, in milliseconds.
    pub uptime_ms: u64,
    /// Storage the host offers to the network, in bytes.
    pub storage_bytes: u64,
    /// How many hosts it knows (its table size).
    pub degree: u32,
    /// How many hosts currently keep it in their tables (0: nobody knows it).
    pub known_by: u32,
    /// Our last measured round trip to it, in microseconds.
    pub rtt_us: u32,
    /// Whether it is an introducer.
    pub introducer: bool,
}

/// Uptime bracket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UptimeClass {
    /// Up for under 10 minutes.
    Flaky,
    /// Up for 10 minutes to 6 hours.
    Sometimes,
    /// Up for 6 hours or more.
    Always,
}

/// Storage bracket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StorageClass {
    /// Offers nothing.
    None,
    /// Under 16 GiB.
    Some,
    /// 16 GiB or more.
    Lots,
}

/// Degree bracket (how many hosts the host knows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DegreeClass {
    /// Fewer than 4.
    Few,
    /// 4 to 15.
    Some,
    /// 16 or more.
    Many,
}

/// The class of a host: one cell of the grid the diversity policy balances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Class {
    /// Uptime bracket.
    pub uptime: UptimeClass,
    /// Storage bracket.
    pub storage: StorageClass,
    /// Degree bracket.
    pub degree: DegreeClass,
}

impl Quality {
    /// The host's class.
    pub fn class(&self) -> Class {
        let up = Duration::from_millis(self.uptime_ms);
        Class {
            uptime: if up >= Duration::from_secs(6 * 3600) {
                UptimeClass::Always
            } else if up >= Duration::from_secs(600) {
                UptimeClass::Sometimes
            } else {
                UptimeClass::Flaky
            },
            storage: match self.storage_bytes {
                0 => StorageClass::None,
                n if n < 16 << 30 => StorageClass::Some,
                _ => StorageClass::Lots,
            },
            degree: match self.degree {
                0..=3 => DegreeClass::Few,
                4..=15 => DegreeClass::Some,
                _ => DegreeClass::Many,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brackets() {
        let q = Quality {
            uptime_ms: 7 * 3600 * 1000,
            storage_bytes: 1 << 40,
            degree: 2,
            ..Default::default()
        };
        assert_eq!(
            q.class(),
            Class {
                uptime: UptimeClass::Always,
                storage: StorageClass::Lots,
                degree: DegreeClass::Few
            }
        );
        assert_eq!(Quality::default().class().uptime, UptimeClass::Flaky);
    }
}
