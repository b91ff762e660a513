//! Admission of incoming connections: how many a node holds (handshakes in
//! progress included) in all, per source address and per source prefix, and how
//! many handshakes run at once. Plain data behind a lock; the accept loop asks
//! it about every `Incoming` before any cryptography is spent on it.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::config::Limits;
use crate::source::SourceCounts;

/// What to do with an incoming connection attempt.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Go ahead; the slot is held until dropped (keep it with the connection).
    Accept(Slot),
    /// Too many handshakes at once and the client's address is not validated:
    /// answer with a stateless QUIC Retry (it costs us nothing to remember).
    Retry,
    /// Over a limit: refuse.
    Refuse,
}

#[derive(Debug)]
struct State {
    conns: SourceCounts,
    handshakes: usize,
}

/// The counts and their limits.
#[derive(Debug)]
pub(crate) struct Admission {
    state: Mutex<State>,
    max_total: usize,
    max_handshakes: usize,
}

impl Admission {
    pub(crate) fn new(limits: &Limits) -> Arc<Self> {
        Arc::new(Admission {
            state: Mutex::new(State {
                conns: SourceCounts::new(
                    limits.max_connections_per_addr as u64,
                    limits.max_connections_per_prefix as u64,
                    limits.max_connections.max(1),
                )
                .lan_exempt(limits.lan_prefix_exempt),
                handshakes: 0,
            }),
            max_total: limits.max_connections,
            max_handshakes: limits.max_handshakes,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decides on an attempt from `ip`; `validated`: the client already proved
    /// its address (it answered a Retry).
    pub(crate) fn consider(self: &Arc<Self>, ip: IpAddr, validated: bool) -> Verdict {
        let mut state = self.lock();
        if state.handshakes >= self.max_handshakes {
            return if validated {
                Verdict::Refuse
            } else {
                Verdict::Retry
            };
        }
        if state.conns.total() >= self.max_total as u64 || !state.conns.try_add(ip, 1) {
            return Verdict::Refuse;
        }
        state.handshakes += 1;
        Verdict::Accept(Slot {
            admission: self.clone(),
            ip,
            handshaking: true,
        })
    }

    /// Connections (and handshakes) held now.
    #[cfg(test)]
    pub(crate) fn connections(&self) -> u64 {
        self.lock().conns.total()
    }
}

/// One incoming connection's place; given back on drop.
#[derive(Debug)]
pub(crate) struct Slot {
    admission: Arc<Admission>,
    ip: IpAddr,
    handshaking: bool,
}

impl PartialEq for Slot {
    fn eq(&self, other: &Self) -> bool {
        self.ip == other.ip && Arc::ptr_eq(&self.admission, &other.admission)
    }
}
impl Eq for Slot {}

impl Slot {
    /// The handshake is over (either way): it no longer counts as one in progress.
    pub(crate) fn handshake_done(&mut self) {
        if std::mem::take(&mut self.handshaking) {
            self.admission.lock().handshakes -= 1;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.handshake_done();
        self.admission.lock().conns.remove(self.ip, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_connections: 6,
            max_connections_per_addr: 2,
            max_connections_per_prefix: 3,
            max_handshakes: 4,
            ..Limits::default()
        }
    }

    fn accept(a: &Arc<Admission>, ip: &str) -> Slot {
        match a.consider(ip.parse().unwrap(), false) {
            Verdict::Accept(s) => s,
            other => panic!("{ip}: {other:?}"),
        }
    }

    #[test]
    fn per_address_and_prefix_limits_hold_and_free_up() {
        let a = Admission::new(&limits());
        let mut held = vec![accept(&a, "198.51.100.1"), accept(&a, "198.51.100.1")];
        for s in &mut held {
            s.handshake_done();
        }
        assert_eq!(
            a.consider("198.51.100.1".parse().unwrap(), false),
            Verdict::Refuse
        );
        let mut third = accept(&a, "198.51.100.2");
        third.handshake_done();
        assert_eq!(
            a.consider("198.51.100.3".parse().unwrap(), false),
            Verdict::Refuse,
            "/24 full"
        );
        let mut other = accept(&a, "198.51.101.1");
        other.handshake_done();
        held.pop();
        let _again = accept(&a, "198.51.100.1");
        assert_eq!(a.connections(), 4);
    }

    #[test]
    fn a_lan_prefix_is_bounded_per_address_and_in_all_only() {
        let a = Admission::new(&limits());
        // Five addresses of one private /24 (over the prefix cap of 3), one
        // of them twice: six, the total.
        let done = |ip: &str| {
            let mut s = accept(&a, ip);
            s.handshake_done();
            s
        };
        let mut held: Vec<Slot> = (1..=5)
            .map(|i| done(&format!("10.0.0.{i}")))
            .chain([done("10.0.0.1")])
            .collect();
        assert_eq!(a.connections(), 6);
        // The total holds.
        assert_eq!(
            a.consider("10.0.0.9".parse().unwrap(), true),
            Verdict::Refuse
        );
        // And so does the per-address cap (two).
        drop(held.remove(4));
        assert_eq!(
            a.consider("10.0.0.1".parse().unwrap(), true),
            Verdict::Refuse
        );
        let _ninth = accept(&a, "10.0.0.9");
        // Without the exemption the /24 is full after three.
        let strict = Admission::new(&Limits {
            lan_prefix_exempt: false,
            ..limits()
        });
        let _three: Vec<Slot> = (1..=3)
            .map(|i| accept(&strict, &format!("10.0.0.{i}")))
            .collect();
        assert_eq!(
            strict.consider("10.0.0.4".parse().unwrap(), false),
            Verdict::Refuse
        );
    }

    #[test]
    fn many_handshakes_at_once_are_asked_to_retry_then_refused() {
        let a = Admission::new(&limits());
        let _hs: Vec<Slot> = (1..=4)
            .map(|i| accept(&a, &format!("10.0.{i}.1")))
            .collect();
        assert_eq!(
            a.consider("10.0.9.1".parse().unwrap(), false),
            Verdict::Retry
        );
        assert_eq!(
            a.consider("10.0.9.1".parse().unwrap(), true),
            Verdict::Refuse
        );
    }

    #[test]
    fn the_total_holds_across_networks() {
        let a = Admission::new(&limits());
        let all: Vec<Slot> = (1..=6)
            .map(|i| {
                let mut s = accept(&a, &format!("10.{i}.0.1"));
                s.handshake_done();
                s
            })
            .collect();
        assert_eq!(
            a.consider("10.99.0.1".parse().unwrap(), true),
            Verdict::Refuse
        );
        drop(all);
        assert_eq!(a.connections(), 0);
    }
}
