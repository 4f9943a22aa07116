//! Pacing what many certificates would otherwise do at once: asking the CA
//! for renewal information, and renewing when the CA moves every window
//! into the past (a mass revocation). Shared by the sources built from one
//! builder (on-demand names included), like the account.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::sync::lock;

/// At most `turns` turns in any span of `window`: a turn comes at once
/// unless `turns` came within the window before it, then when the oldest of
/// them leaves the window.
///
/// Turns are planned (reserved, so that waiters are spread in order) and
/// then taken; the rate holds for the turns taken, as the CA sees them,
/// not only as planned: waiters that wake late together (a busy runtime,
/// a retry's backoff) wait again rather than all going at once.
#[derive(Debug)]
pub(super) struct Pace {
    turns: usize,
    window: Duration,
    /// The turns given within a window, and those to come, oldest first.
    given: Mutex<VecDeque<Instant>>,
    /// When the turns of the last window were taken, oldest first.
    taken: Mutex<VecDeque<Instant>>,
}

impl Pace {
    /// `turns` turns per `window` (at least one; a window of at most a
    /// year).
    pub(super) fn new(turns: u32, window: Duration) -> Self {
        let turns = (turns as usize).max(1);
        Self {
            turns,
            window: window.min(Duration::from_secs(365 * 86_400)),
            given: Mutex::new(VecDeque::with_capacity(turns.min(1024))),
            taken: Mutex::new(VecDeque::with_capacity(turns.min(1024))),
        }
    }

    /// Takes a turn now, if fewer than `turns` were taken within the
    /// window; else when one can be.
    pub(super) fn take(&self) -> Result<(), Instant> {
        let now = Instant::now();
        let mut taken = lock(&self.taken);
        while taken
            .front()
            .is_some_and(|&t| t.checked_add(self.window).is_none_or(|end| end <= now))
        {
            taken.pop_front();
        }
        if taken.len() < self.turns {
            taken.push_back(now);
            return Ok(());
        }
        Err(taken[taken.len() - self.turns]
            .checked_add(self.window)
            .unwrap_or(now + FAR))
    }

    /// Reserves the next turn: when it is (now, or later).
    pub(super) fn reserve(&self) -> Instant {
        let now = Instant::now();
        let end = |t: Instant| t.checked_add(self.window).unwrap_or(now + FAR);
        let mut given = lock(&self.given);
        // Turns a window old constrain no turn to come.
        while given.front().is_some_and(|&t| end(t) <= now) {
            given.pop_front();
        }
        let mut at = given.back().map_or(now, |&last| last.max(now));
        if given.len() >= self.turns {
            at = at.max(end(given[given.len() - self.turns]));
        }
        given.push_back(at);
        at
    }

    /// Waits for a turn, if it comes within `limit`; a turn not taken (too
    /// far off, or the wait dropped) is given back.
    pub(super) async fn turn_within(&self, limit: Duration) -> bool {
        let at = self.reserve();
        let mut reserved = Reserved {
            pace: self,
            at,
            taken: false,
        };
        let deadline = Instant::now().checked_add(limit);
        let beyond = |t: Instant| deadline.is_some_and(|d| t > d);
        if beyond(at) {
            return false;
        }
        tokio::time::sleep_until(at).await;
        loop {
            match self.take() {
                Ok(()) => {
                    reserved.taken = true;
                    return true;
                }
                Err(next) if beyond(next) => return false,
                Err(next) => tokio::time::sleep_until(next).await,
            }
        }
    }

    /// Whether a turn reserved for `at` still holds: not older than a
    /// window (a turn kept from long ago does not skip the pace).
    pub(super) fn holds(&self, at: Instant) -> bool {
        at.checked_add(self.window)
            .is_none_or(|end| end > Instant::now())
    }

    /// Gives back the turn reserved for `at`.
    fn give_back(&self, at: Instant) {
        let mut given = lock(&self.given);
        if let Some(position) = given.iter().rposition(|&t| t == at) {
            given.remove(position);
        }
    }
}

/// What is added to a window too long to add to an instant.
const FAR: Duration = Duration::from_secs(86_400);

/// A turn reserved: given back unless taken.
struct Reserved<'a> {
    pace: &'a Pace,
    at: Instant,
    taken: bool,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        if !self.taken {
            self.pace.give_back(self.at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The most turns in any span of `window` among `turns` (sorted).
    fn most_in(turns: &[Instant], window: Duration) -> usize {
        let mut most = 0;
        let mut first = 0;
        for (last, at) in turns.iter().enumerate() {
            while *at - turns[first] >= window {
                first += 1;
            }
            most = most.max(last - first + 1);
        }
        most
    }

    /// When each of `tasks` got its turn, in order.
    async fn finished(tasks: Vec<tokio::task::JoinHandle<Instant>>) -> Vec<Instant> {
        let mut turns = Vec::new();
        for task in tasks {
            turns.push(task.await.unwrap());
        }
        turns.sort();
        turns
    }

    /// 10,000 certificates asking at once get their turns at the rate,
    /// one after another: no span of a second holds more than the rate
    /// allows, and the last comes when the rate says, not later.
    #[tokio::test(start_paused = true)]
    async fn ten_thousand_at_once_are_spread_at_the_rate() {
        let pace = std::sync::Arc::new(Pace::new(50, Duration::from_secs(1)));
        let start = Instant::now();
        let tasks: Vec<_> = (0..10_000)
            .map(|_| {
                let pace = pace.clone();
                tokio::spawn(async move {
                    assert!(pace.turn_within(Duration::MAX).await);
                    Instant::now()
                })
            })
            .collect();
        let turns = finished(tasks).await;
        assert_eq!(most_in(&turns, Duration::from_secs(1)), 50);
        let last = turns[turns.len() - 1] - start;
        assert!(
            last >= Duration::from_secs(198) && last <= Duration::from_secs(200),
            "{last:?}"
        );
    }

    /// Waiters that all wake late (a busy runtime) take their turns at
    /// the rate, not at once: 500 turns planned for the first 10 s but
    /// waited for only after 30 s still go 50 a second.
    #[tokio::test(start_paused = true)]
    async fn turns_taken_late_keep_the_rate() {
        let pace = std::sync::Arc::new(Pace::new(50, Duration::from_secs(1)));
        let planned: Vec<_> = (0..500).map(|_| pace.reserve()).collect();
        tokio::time::sleep(Duration::from_secs(30)).await;
        let tasks: Vec<_> = planned
            .into_iter()
            .map(|at| {
                let pace = pace.clone();
                tokio::spawn(async move {
                    tokio::time::sleep_until(at).await;
                    while let Err(next) = pace.take() {
                        tokio::time::sleep_until(next).await;
                    }
                    Instant::now()
                })
            })
            .collect();
        let turns = finished(tasks).await;
        assert_eq!(most_in(&turns, Duration::from_secs(1)), 50);
    }

    /// A turn too far off, or whose wait is dropped, is given back: the
    /// pace does not fill with turns nobody takes.
    #[tokio::test(start_paused = true)]
    async fn turns_not_taken_are_given_back() {
        let pace = Pace::new(1, Duration::from_secs(10));
        assert!(pace.turn_within(Duration::ZERO).await);
        for _ in 0..1000 {
            assert!(!pace.turn_within(Duration::from_secs(1)).await);
            let dropped =
                tokio::time::timeout(Duration::from_millis(1), pace.turn_within(Duration::MAX));
            assert!(dropped.await.is_err());
        }
        let now = Instant::now();
        assert!(pace.reserve() - now <= Duration::from_secs(10));
        // And a window too long waits (a year at most) instead of panicking.
        let endless = Pace::new(1, Duration::MAX);
        endless.reserve();
        assert!(endless.reserve() > now);
    }

    /// A window's turns come at once, the next when the first leaves the
    /// window; after a quiet spell, a whole window's again, never more.
    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_rate() {
        let pace = Pace::new(3, Duration::from_secs(3));
        let now = Instant::now();
        let first: Vec<_> = (0..5).map(|_| pace.reserve() - now).collect();
        let s = Duration::from_secs;
        assert_eq!(first, [s(0), s(0), s(0), s(3), s(3)]);
        tokio::time::sleep(s(60)).await;
        let now = Instant::now();
        let again: Vec<_> = (0..4).map(|_| pace.reserve() - now).collect();
        assert_eq!(again, [s(0), s(0), s(0), s(3)]);
    }
}
