//! The settle engine shared by [`FileSource`](crate::FileSource) and
//! [`TrustFile`](crate::source::TrustFile): wait for the files to change (events or
//! polls), let writes settle, read them off the runtime, and take up a
//! reading that is whole and new.

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use sha2::{Digest, Sha256};

use super::notice::{Hub, Subscription};
use super::{FileOptions, Fingerprint, READ_TIMEOUT};
use crate::read::OneAtATime;
use crate::source::SourceError;

/// How many settle windows in a row may see events before the files are
/// looked at anyway.
pub(crate) const MAX_BUSY_WINDOWS: u32 = 4;

/// Files a settle task watches: how to read them, how to tell readings
/// apart, and what to do with a settled one. [`FileSource`] and
/// [`TrustFile`] are the two kinds.
pub(crate) trait Watched: Send + Sync + 'static {
    /// One reading of the files.
    type Reading: Send + 'static;

    fn options(&self) -> &FileOptions;
    /// Where its blocking reads take their turn.
    fn reads(&self) -> &OneAtATime;
    fn paths(&self) -> Vec<&Path>;
    fn describe(&self) -> String;
    /// Reads the files as they are now (blocking).
    fn read(&self) -> Self::Reading;
    fn fingerprint(reading: &Self::Reading) -> Fingerprint;
    /// Whether a reading looks complete rather than caught between writes.
    fn whole(reading: &Self::Reading) -> bool;
    /// Whether a reading with this fingerprint was taken up already.
    fn seen(&self, fingerprint: &Fingerprint) -> bool;
    /// Takes up a settled reading that was not seen before.
    fn settled(&self, reading: Self::Reading);
}

/// Identifies what a read found: its contents as `feed` hashes them, or
/// the failure (so a changed error is a change too).
pub(crate) fn fingerprint<T>(
    read: &Result<T, SourceError>,
    feed: impl FnOnce(&T, &mut Sha256),
) -> Fingerprint {
    let mut hash = Sha256::new();
    match read {
        Ok(contents) => feed(contents, &mut hash),
        Err(error) => hash.update(format!("error {error}")),
    }
    hash.finalize().into()
}

/// Starts the settle task of `watched`, which ends when `gone` closes.
pub(crate) fn spawn_settle<W: Watched>(watched: &Arc<W>, gone: watch::Receiver<()>) {
    let wakeups = Wakeups::new(watched.options(), gone, || watched.describe());
    tokio::spawn(settle_loop(Arc::downgrade(watched), wakeups));
}

/// Why a [`Wakeups`] woke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// A file-system event.
    Event,
    /// The poll interval passed.
    Poll,
}

/// Where a settle task learns that something may have changed.
pub(crate) struct Wakeups {
    events: Option<(Arc<Subscription>, watch::Receiver<u64>)>,
    poll: Option<Duration>,
    /// Closes when the owner is dropped.
    gone: watch::Receiver<()>,
}

impl Wakeups {
    /// Events from the process's watcher and/or polling, as `options` say.
    /// A platform that refuses a watcher gets polling instead.
    pub(crate) fn new(
        options: &FileOptions,
        gone: watch::Receiver<()>,
        describe: impl FnOnce() -> String,
    ) -> Self {
        let mut poll = options.watch.poll();
        let mut events = None;
        if options.watch.events() {
            match Hub::shared() {
                Ok(hub) => {
                    let (subscription, ticks) = hub.subscribe();
                    events = Some((Arc::new(subscription), ticks));
                }
                Err(error) => {
                    let every = poll.unwrap_or(Duration::from_secs(5));
                    tracing::warn!(target: "certrotate", source = %describe(), %error,
                        "cannot watch for file changes; polling every {every:?} instead");
                    poll = Some(every);
                }
            }
        }
        Self { events, poll, gone }
    }

    /// Waits for an event or the next poll. `false` once the owner is gone.
    pub(crate) async fn next(&mut self) -> bool {
        self.next_wake().await.is_some()
    }

    /// Waits for an event or the next poll, and says which; `None` once the
    /// owner is gone.
    pub(crate) async fn next_wake(&mut self) -> Option<Wake> {
        let poll = async {
            match self.poll {
                Some(every) => tokio::time::sleep(every).await,
                None => std::future::pending().await,
            }
        };
        let event = async {
            if let Some((_, ticks)) = &mut self.events {
                if ticks.changed().await.is_ok() {
                    return;
                }
            }
            std::future::pending().await
        };
        tokio::select! {
            _ = self.gone.changed() => None,
            () = event => Some(Wake::Event),
            () = poll => Some(Wake::Poll),
        }
    }

    /// Waits until `deadline` or the next event, whichever is first.
    pub(crate) async fn until(&mut self, deadline: Instant) {
        if let Some((_, ticks)) = &mut self.events {
            let _ = tokio::time::timeout_at(deadline, ticks.changed()).await;
        } else {
            tokio::time::sleep_until(deadline).await;
        }
    }

    /// Whether an event arrived within `window`.
    pub(crate) async fn event_within(&mut self, window: Duration) -> bool {
        match &mut self.events {
            Some((_, ticks)) => {
                ticks.borrow_and_update();
                matches!(
                    tokio::time::timeout(window, ticks.changed()).await,
                    Ok(Ok(()))
                )
            }
            None => {
                tokio::time::sleep(window).await;
                false
            }
        }
    }

    /// Re-aims the watches at the directories the files now live in (a
    /// symlink may point elsewhere since the last look), then reads them.
    /// Both block (a hung NFS mount), so they run on a blocking thread, one
    /// at a time, and a look that does not finish in time is given up.
    async fn look<W: Watched>(&self, watched: &Weak<W>) -> Look<W::Reading> {
        let Some(watched) = watched.upgrade() else {
            return Look::Gone;
        };
        let subscription = self.subscription();
        let reader = watched.clone();
        let looked = watched.reads().run(READ_TIMEOUT, move || {
            if let Some(subscription) = subscription {
                subscription.follow(&reader.paths());
            }
            reader.read()
        });
        match looked.await {
            Ok(reading) => Look::Read(reading),
            Err(stuck) => {
                tracing::warn!(target: "certrotate", source = %watched.describe(),
                    "reading the files took over {}; looking again at the next change",
                    crate::clock::human(stuck.waited));
                Look::Stuck
            }
        }
    }

    /// The subscription events come through, if any.
    pub(crate) fn subscription(&self) -> Option<Arc<Subscription>> {
        self.events.as_ref().map(|(s, _)| s.clone())
    }
}

/// What a look at the files found.
enum Look<R> {
    Read(R),
    /// The read did not finish in time (a hung file system).
    Stuck,
    /// The files' owner is gone: the task ends.
    Gone,
}

/// The watch-and-settle task of one watched set of files. It holds them
/// weakly and ends when their owner is dropped.
async fn settle_loop<W: Watched>(watched: Weak<W>, mut wakeups: Wakeups) {
    let (settle, grace) = match watched.upgrade() {
        Some(w) => (w.options().settle, w.options().grace),
        None => return,
    };
    let seen = |reading: &W::Reading| {
        watched
            .upgrade()
            .is_none_or(|w| w.seen(&W::fingerprint(reading)))
    };
    // Whatever changed between the first read and now is looked at at once.
    let mut woken = true;
    'wake: loop {
        if !woken && !wakeups.next().await {
            return;
        }
        woken = false;
        let mut reading = match wakeups.look(&watched).await {
            Look::Read(reading) => reading,
            Look::Stuck => continue 'wake,
            Look::Gone => return,
        };
        if seen(&reading) {
            continue;
        }
        let deadline = crate::clock::instant_in(grace);
        loop {
            // Settle: a whole window without an event, or the same content
            // on both sides of a window. Events restart the window, but a
            // directory that is never quiet (a log file beside the
            // certificate) is looked at every few windows anyway.
            let mut busy = 0;
            loop {
                let event = wakeups.event_within(settle).await;
                if event && busy < MAX_BUSY_WINDOWS {
                    busy += 1;
                    continue;
                }
                busy = 0;
                let after = match wakeups.look(&watched).await {
                    Look::Read(reading) => reading,
                    Look::Stuck => continue 'wake,
                    Look::Gone => return,
                };
                let quiet = wakeups.events.is_some() && !event;
                let stable = quiet || W::fingerprint(&after) == W::fingerprint(&reading);
                reading = after;
                if stable {
                    break;
                }
            }
            if W::whole(&reading) || Instant::now() >= deadline {
                break;
            }
            if let Some(w) = watched.upgrade() {
                tracing::debug!(target: "certrotate", source = %w.describe(), "files are not whole yet; waiting for the rest");
            }
            wakeups
                .until(deadline.min(crate::clock::instant_in(settle)))
                .await;
            reading = match wakeups.look(&watched).await {
                Look::Read(reading) => reading,
                Look::Stuck => continue 'wake,
                Look::Gone => return,
            };
        }
        match watched.upgrade() {
            Some(w) if !w.seen(&W::fingerprint(&reading)) => w.settled(reading),
            Some(_) => {}
            None => return,
        }
    }
}
