//! The traversal's decisions as plain values driven by `now` and an rng (no
//! socket, no timer): when a punch is retried and when the relay starts
//! ([`Timeline`]), when punch packets go out ([`SprayPlan`]), and which ports
//! a port prediction probes when ([`ProbePlan`]). The async code in `node` only sleeps and sends as told.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use butter::nat::schedule::{Next, Timeline};
//!
//! let t0 = Instant::now();
//! let mut plan = Timeline::new(t0, Duration::from_secs(5));
//! // A punch that fails early is tried once more; the relay keeps its time.
//! assert_eq!(plan.punch_failed(t0 + Duration::from_millis(800)), Next::Punch);
//! assert_eq!(plan.punch_failed(t0 + Duration::from_secs(2)), Next::AwaitRelay);
//! assert_eq!(plan.relay_at(), t0 + Duration::from_secs(5));
//! ```

use std::time::{Duration, Instant};

use rand::Rng;

use super::PredictSettings;

/// What follows a failed punch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Punch (and predict, where it applies) again now.
    Punch,
    /// Leave it to the relay (already running, or due at [`Timeline::relay_at`]).
    AwaitRelay,
}

/// One introducer's part of reaching a peer: a punch at once, the relay
/// after its head start, whichever connects first wins. A punch (or a
/// prediction: it is probabilistic) that fails while the relay is still far
/// off gets one more try.
#[derive(Debug, Clone)]
pub struct Timeline {
    relay_at: Instant,
    retries_left: u8,
}

impl Timeline {
    /// A retry needs at least this much time before the relay starts.
    pub const RETRY_MARGIN: Duration = Duration::from_secs(1);

    /// Retries of the punch per introducer.
    pub const RETRIES: u8 = 1;

    /// Starts at `now`: the punch now, the relay after `relay_after`.
    pub fn new(now: Instant, relay_after: Duration) -> Self {
        Timeline {
            relay_at: now + relay_after,
            retries_left: Self::RETRIES,
        }
    }

    /// When the relay starts.
    pub fn relay_at(&self) -> Instant {
        self.relay_at
    }

    /// When the relay is due while a port prediction runs until
    /// `predicting_until` (if one does): not before it ended. A prediction
    /// takes up to its whole window (2 s by default) and the relay's head
    /// start is shorter (1 s): without this, a relay started while the
    /// prediction was still about to succeed and won the first reply in
    /// about one run in ten.
    pub fn relay_due(&self, predicting_until: Option<Instant>) -> Instant {
        match predicting_until {
            Some(until) => self.relay_at.max(until),
            None => self.relay_at,
        }
    }

    /// A punch failed at `now`.
    pub fn punch_failed(&mut self, now: Instant) -> Next {
        let time_left = self.relay_at.saturating_duration_since(now);
        if self.retries_left > 0 && time_left > Self::RETRY_MARGIN {
            self.retries_left -= 1;
            Next::Punch
        } else {
            Next::AwaitRelay
        }
    }
}

/// A punch spray: a round of packets to every target each `interval`, for
/// `duration` at most (and no more than `duration / interval` rounds, however
/// late the timer fires).
#[derive(Debug, Clone)]
pub struct SprayPlan {
    interval: Duration,
    end: Instant,
    rounds_left: u32,
}

impl SprayPlan {
    /// A spray starting at `now`.
    pub fn new(now: Instant, interval: Duration, duration: Duration) -> Self {
        let interval = interval.max(Duration::from_millis(1));
        let rounds = (duration.as_nanos() / interval.as_nanos()).clamp(1, u32::MAX as u128) as u32;
        SprayPlan {
            interval,
            end: now + duration,
            rounds_left: rounds,
        }
    }

    /// A round is due at `now`: returns when the next one is (the caller
    /// sends, then sleeps until then); `None` once the spray is over.
    pub fn round(&mut self, now: Instant) -> Option<Instant> {
        if now >= self.end || self.rounds_left == 0 {
            return None;
        }
        self.rounds_left -= 1;
        Some(now + self.interval)
    }
}

/// The moderate side's probes in a port prediction: distinct random ports
/// (1024 and up), at most `settings.probes`, sent in batches every
/// [`ProbePlan::TICK`] so they spread evenly over `settings.duration`.
#[derive(Debug, Clone)]
pub struct ProbePlan {
    ports: Vec<u16>,
    batches: usize,
    next: usize,
}

impl ProbePlan {
    /// Batches go out this often (one timer per batch, not per probe).
    pub const TICK: Duration = Duration::from_millis(10);

    /// Ports a probe may go to.
    pub const PORTS: std::ops::RangeInclusive<u16> = 1024..=u16::MAX;

    /// A plan for one attempt.
    pub fn new<R: Rng + ?Sized>(settings: &PredictSettings, rng: &mut R) -> Self {
        let span = Self::PORTS.len();
        let n = settings.probes.min(span);
        let ports: Vec<u16> = rand::seq::index::sample(rng, span, n)
            .into_iter()
            .map(|i| *Self::PORTS.start() + i as u16)
            .collect();
        let batches = (settings.duration.as_millis() / Self::TICK.as_millis()).max(1) as usize;
        ProbePlan {
            // Fewer probes than ticks: one per batch, and done sooner.
            batches: batches.min(ports.len()).max(1),
            ports,
            next: 0,
        }
    }

    /// Where batch `b` starts: the probes are split evenly, so the last
    /// batch goes out one tick before the duration ends.
    fn start_of(&self, b: usize) -> usize {
        b * self.ports.len() / self.batches
    }

    /// The next batch, `None` once all were sent.
    pub fn next_batch(&mut self) -> Option<&[u16]> {
        if self.next >= self.batches {
            return None;
        }
        let (start, end) = (self.start_of(self.next), self.start_of(self.next + 1));
        self.next += 1;
        Some(&self.ports[start..end])
    }

    /// Probes in the plan.
    pub fn len(&self) -> usize {
        self.ports.len()
    }

    /// Whether the plan has no probes.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }

    /// When (after the first batch) the probe to each port goes out.
    pub fn times(&self) -> impl Iterator<Item = (u16, Duration)> + '_ {
        (0..self.batches).flat_map(move |b| {
            self.ports[self.start_of(b)..self.start_of(b + 1)]
                .iter()
                .map(move |p| (*p, Self::TICK * b as u32))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{RngExt, SeedableRng};
    use std::collections::HashSet;

    fn rng(seed: u64) -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(seed)
    }

    #[test]
    fn a_late_failure_waits_for_the_relay_and_retries_are_bounded() {
        let t0 = Instant::now();
        let mut plan = Timeline::new(t0, Duration::from_secs(5));
        assert_eq!(
            plan.punch_failed(t0 + Duration::from_secs(4)),
            Next::AwaitRelay
        );
        // The retry is not spent by a failure that could not use it.
        assert_eq!(plan.punch_failed(t0 + Duration::from_secs(1)), Next::Punch);
        assert_eq!(
            plan.punch_failed(t0 + Duration::from_secs(1)),
            Next::AwaitRelay
        );
        // A short head start leaves no room for a retry at all.
        let mut short = Timeline::new(t0, Duration::from_millis(900));
        assert_eq!(short.punch_failed(t0), Next::AwaitRelay);
    }

    #[test]
    fn the_relay_waits_for_a_running_prediction() {
        let t0 = Instant::now();
        let plan = Timeline::new(t0, Duration::from_secs(1));
        assert_eq!(plan.relay_due(None), t0 + Duration::from_secs(1));
        let until = t0 + Duration::from_millis(2600);
        assert_eq!(plan.relay_due(Some(until)), until);
        // A prediction that ends before the head start changes nothing.
        assert_eq!(plan.relay_due(Some(t0)), t0 + Duration::from_secs(1));
    }

    #[test]
    fn a_spray_is_paced_and_bounded_in_rounds_and_time() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut plan = SprayPlan::new(t0, ms(100), ms(1000));
        let mut now = t0;
        let mut rounds = 0;
        while let Some(next) = plan.round(now) {
            rounds += 1;
            assert_eq!(next, now + ms(100));
            now = next;
        }
        assert_eq!(rounds, 10);
        // A timer that fires early cannot buy more rounds...
        let mut eager = SprayPlan::new(t0, ms(100), ms(1000));
        assert_eq!((0..50).filter(|_| eager.round(t0).is_some()).count(), 10);
        // ...nor a late one more time.
        let mut late = SprayPlan::new(t0, ms(100), ms(1000));
        assert!(late.round(t0 + ms(1000)).is_none());
        // A duration shorter than the interval still sends once.
        assert!(SprayPlan::new(t0, ms(100), ms(10)).round(t0).is_some());
    }

    #[test]
    fn probes_are_distinct_in_range_and_paced_over_the_duration() {
        let settings = PredictSettings::default();
        let mut plan = ProbePlan::new(&settings, &mut rng(1));
        assert_eq!(plan.len(), settings.probes);
        let times: Vec<(u16, Duration)> = plan.times().collect();
        let last = times.iter().map(|(_, t)| *t).max().unwrap();
        assert!(
            last < settings.duration && last >= settings.duration * 9 / 10,
            "{last:?}"
        );
        let mut seen = HashSet::new();
        let mut batches = 0;
        while let Some(batch) = plan.next_batch() {
            batches += 1;
            for p in batch {
                assert!(*p >= 1024);
                assert!(seen.insert(*p), "port {p} twice");
            }
        }
        assert_eq!(seen.len(), settings.probes);
        assert_eq!(batches, 200, "one batch per 10 ms over 2 s");
    }

    #[test]
    fn more_probes_than_ports_probe_every_port_once() {
        let settings = PredictSettings {
            probes: 100_000,
            ..Default::default()
        };
        let plan = ProbePlan::new(&settings, &mut rng(2));
        assert_eq!(plan.len(), ProbePlan::PORTS.len());
    }

    /// One simulated prediction: the strict side's NAT gives each of its
    /// `sockets` a random port once the socket has sent (from `strict_start`
    /// on, all within 50 ms); a probe hits if it reaches a port that is
    /// mapped by then. Probes that arrive before the mappings exist are lost.
    fn hits(settings: &PredictSettings, strict_start: Duration, r: &mut impl Rng) -> usize {
        let span = ProbePlan::PORTS.len();
        let mapped: std::collections::HashMap<u16, Duration> = (0..settings.sockets)
            .map(|_| {
                let port = *ProbePlan::PORTS.start() + r.random_range(0..span) as u16;
                let at = strict_start + Duration::from_millis(r.random_range(0..50));
                (port, at)
            })
            .collect();
        let plan = ProbePlan::new(settings, r);
        plan.times()
            .filter(|(port, at)| mapped.get(port).is_some_and(|m| m <= at))
            .count()
    }

    fn success_rate(strict_start: Duration) -> f64 {
        let settings = PredictSettings::default();
        let mut r = rng(3);
        let runs = 2000;
        let ok = (0..runs)
            .filter(|_| hits(&settings, strict_start, &mut r) > 0)
            .count();
        ok as f64 / runs as f64
    }

    #[test]
    fn the_birthday_schedule_succeeds_as_the_arithmetic_says() {
        // 256 mappings, 1,024 probes over 64,512 ports: 1 - e^-4.06 ≈ 98 %.
        let together = success_rate(Duration::ZERO);
        assert!((0.96..=0.995).contains(&together), "{together}");
    }

    #[test]
    fn a_strict_side_that_starts_late_wastes_the_early_probes() {
        // The moderate side probing a second before the strict side's
        // mappings exist wastes half its probes: 1 - e^-2 ≈ 86 %. The two
        // sides must start together (what the introducer's start delay is for).
        let late = success_rate(Duration::from_secs(1));
        assert!((0.82..=0.90).contains(&late), "{late}");
        let too_late = success_rate(Duration::from_millis(1900));
        assert!(too_late < 0.3, "{too_late}");
    }
}
