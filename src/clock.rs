//! Time, read through one handle. Production code uses the system clock; tests use an
//! adjustable one and move it forward instead of sleeping while time is the subject (key
//! staleness, sync lag, token expiry, refetch intervals).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The system clock, optionally pushed forward by a skew that only grows (so `now` stays
/// monotonic). Cheap to clone; clones share the skew.
#[derive(Clone, Default, Debug)]
pub struct Clock {
    skew_ms: Option<Arc<AtomicU64>>,
}

impl Clock {
    /// Real time.
    pub fn system() -> Clock {
        Clock::default()
    }

    /// Real time plus whatever [`advance`](Self::advance) added: for tests.
    pub fn adjustable() -> Clock {
        Clock {
            skew_ms: Some(Arc::default()),
        }
    }

    /// Move an adjustable clock forward; a system clock cannot be moved.
    pub fn advance(&self, by: Duration) {
        if let Some(skew) = &self.skew_ms {
            let ms = u64::try_from(by.as_millis()).unwrap_or(u64::MAX);
            skew.fetch_add(ms, Ordering::AcqRel);
        }
    }

    fn skew(&self) -> Duration {
        self.skew_ms.as_ref().map_or(Duration::ZERO, |s| {
            Duration::from_millis(s.load(Ordering::Acquire))
        })
    }

    /// Monotonic time, for intervals.
    pub fn now(&self) -> Instant {
        Instant::now() + self.skew()
    }

    /// Time elapsed since `earlier` (a value of [`now`](Self::now)).
    pub fn since(&self, earlier: Instant) -> Duration {
        self.now().saturating_duration_since(earlier)
    }

    /// Wall-clock Unix milliseconds.
    pub fn unix_ms(&self) -> u64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            + self.skew();
        u64::try_from(wall.as_millis()).unwrap_or(u64::MAX)
    }

    /// Wall-clock Unix seconds (JWT NumericDate).
    pub fn unix(&self) -> u64 {
        self.unix_ms() / 1000
    }
}

/// A deadline that moves forward whenever there is activity: `poll_expired` reports when
/// `idle` has passed, counted from the first wait after the last [`reset`](Self::reset).
/// For body idle timeouts, polled from inside `poll_frame`. Lazy: a body whose frames are
/// all ready when asked for (the usual response, read whole with its head) never reads the
/// clock nor arms a timer; activity only marks the deadline, which moves when a wait starts.
#[derive(Debug)]
pub struct IdleDeadline {
    idle: Duration,
    /// Armed at the first wait.
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// Activity since the sleep was last set.
    moved: bool,
}

impl IdleDeadline {
    pub fn new(idle: Duration) -> IdleDeadline {
        IdleDeadline {
            idle,
            sleep: None,
            moved: false,
        }
    }

    /// Activity: the next wait counts `idle` from its own start.
    pub fn reset(&mut self) {
        self.moved = true;
    }

    /// Whether `idle` passed since the wait began (or, after activity, since this wait
    /// began); registers the waker otherwise.
    pub fn poll_expired(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        let idle = self.idle;
        let moved = std::mem::take(&mut self.moved);
        let fresh = self.sleep.is_none();
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        if moved && !fresh {
            sleep.as_mut().reset(tokio::time::Instant::now() + idle);
        }
        sleep.as_mut().poll(cx).is_ready()
    }
}

/// Wall-clock Unix seconds of the system clock.
pub fn now_unix() -> u64 {
    Clock::system().unix()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An adjustable clock moves both its wall and monotonic time; clones share it.
    #[test]
    fn advance_moves_both_clocks() {
        let c = Clock::adjustable();
        let (t0, u0) = (c.now(), c.unix());
        c.clone().advance(Duration::from_secs(90));
        assert!(c.since(t0) >= Duration::from_secs(90));
        assert!(c.unix() >= u0 + 90);
        let s = Clock::system();
        s.advance(Duration::from_secs(90));
        assert!(s.unix() < u0 + 60, "the system clock does not move");
    }
}
