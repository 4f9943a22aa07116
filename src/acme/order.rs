//! Ordering: taking turns through the storage, placing (or resuming) an
//! order, answering its challenges, finalizing and downloading.

use std::future::Future;

use instant_acme::{
    Account, CertificateIdentifier, Identifier, NewOrder, OrderStatus, RetryPolicy,
};

use super::challenge::Cleanup;
use super::failure::{rate_limit_wait, Cause, Context, Failure, Step, Unexpected};
use super::storage::{Holding, Renewal, Trouble};
use super::AcmeSource;
use crate::bundle::CertBundle;
use crate::source::{CertSource, SourceError};
use crate::sync::lock;

/// An order placed with the CA and not finished yet: the next attempt
/// resumes it from its URL instead of starting over, so that the
/// authorizations it won are not validated again (nor the CA's rate limits
/// spent) after a transient error.
pub(super) struct PendingOrder {
    /// The number of the CA it was placed with.
    pub(super) ca: usize,
    /// The order's URL, as the CA gave it.
    pub(super) url: String,
    /// The key of the certificate request, once the order was finalized.
    pub(super) key_pem: Option<zeroize::Zeroizing<String>>,
}

impl AcmeSource {
    /// Runs one step of talking to the CA under the timeout, and remembers
    /// a rate limit's wait for the rotator.
    pub(super) async fn step<T, E: Into<Cause>>(
        &self,
        what: impl Into<Step>,
        future: impl Future<Output = Result<T, E>>,
    ) -> Result<T, Failure> {
        self.step_within(what, self.inner.config.timeout, future)
            .await
    }

    /// [`step`](Self::step) with a timeout of its own, when it is longer
    /// than the step timeout (a DNS-01 solver that waits for propagation).
    pub(super) async fn step_within<T, E: Into<Cause>>(
        &self,
        what: impl Into<Step>,
        timeout: std::time::Duration,
        future: impl Future<Output = Result<T, E>>,
    ) -> Result<T, Failure> {
        let what = what.into();
        let timeout = timeout.max(self.inner.config.timeout);
        let noting = super::http::noting(self.inner.rate_limited.clone(), future);
        match tokio::time::timeout(timeout, noting).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                let failure = Failure::new(what, e);
                if let Some(wait) = rate_limit_wait(&failure, self.now()) {
                    *lock(&self.inner.rate_limited) = Some(wait);
                }
                Err(failure)
            }
            Err(_) => Err(Failure::new(what, Cause::Timeout(timeout))),
        }
    }

    /// The stored certificate if it is not due; otherwise the renewal lock,
    /// and an order (or the certificate of the instance that held the lock).
    pub(super) async fn obtain(&self) -> Result<CertBundle, Trouble> {
        let stored = self.stored().await.map_err(Trouble::StorageDown)?;
        if let Some(bundle) = &stored {
            let advised = self.advised(bundle.info());
            // The CA's advice can only matter now if the certificate looks
            // due without it; otherwise it is asked for in the background,
            // so that a restart serves the stored certificate at once even
            // when the CA is slow or down.
            let due = self.due(bundle.info(), self.now());
            if !advised && due {
                self.advise(bundle).await;
            } else if !advised {
                let (source, bundle) = (self.clone(), bundle.clone());
                tokio::spawn(async move { source.advise(&bundle).await });
            }
            if !self.due(bundle.info(), self.now()) {
                return Ok(bundle.clone());
            }
        }
        // What this instance serves is not due: nothing to order, whatever
        // the storage holds (a value planted to make the fleet order, and
        // spend the CA's rate limits, is replaced at the next renewal).
        let provided = lock(&self.inner.provided).clone();
        let replacing = stored.is_some() || provided.is_some();
        if let Some(provided) = provided.filter(|p| !self.due(p.info(), self.now())) {
            return Ok(provided);
        }
        if replacing {
            if let Err(wait) = self.renewal_turn() {
                // Nothing served yet (a restart in a mass renewal): the
                // stored certificate serves while the turn comes.
                return match stored {
                    Some(stored) if self.serves_meanwhile(&stored) => Ok(stored),
                    _ => Err(Trouble::Failed(wait)),
                };
            }
        }
        // One instance of a fleet orders; the others wait for its result.
        let lease = match self.renewal_lock().await? {
            Renewal::Done(bundle) => return Ok(bundle),
            Renewal::Ours(lease) => lease,
        };
        // Guarded from here on: an attempt dropped at any await point (the
        // rotator's fetch timeout) lets go of the lease.
        let holding = Holding::new(self, lease);
        // Another instance may have finished just before the lock was ours.
        let stored = match self.stored().await {
            Ok(Some(bundle)) if !self.due(bundle.info(), self.now()) => {
                holding.release().await;
                return Ok(bundle);
            }
            Ok(newer) => newer.or(stored),
            Err(_) => stored,
        };
        let ordered = self.ordered(stored.as_ref()).await;
        holding.release().await;
        match (ordered, stored) {
            (Ok(bundle), _) => Ok(bundle),
            // Nothing served yet (a restart, an on-demand name loaded back)
            // and the renewal failed: the stored certificate still serves
            // better than none; the rotator retries the renewal, due as it is.
            (Err(error), Some(stored)) if self.serves_meanwhile(&stored) => {
                tracing::warn!(target: "certrotate", serial = %stored.info().serial, "renewal failed; serving the stored certificate meanwhile: {error}");
                Ok(stored)
            }
            (Err(error), _) => Err(Trouble::Failed(error)),
        }
    }

    /// Takes this source's turn to renew among the sources of its builder
    /// ([`AcmeBuilder::renewals_per_window`](super::AcmeBuilder::renewals_per_window)):
    /// a turn still to come is kept, and the rotator is told to come back
    /// then, as for a rate limit.
    fn renewal_turn(&self) -> Result<(), SourceError> {
        let pace = &self.inner.config.renewal_pace;
        let mut turn = lock(&self.inner.renewal_turn);
        // A turn planned long ago and never come to does not skip the
        // queue; one that came and found the rate used up stays first in
        // line (not sent behind the whole queue again).
        if turn.is_some_and(|(at, came)| !came && !pace.holds(at)) {
            *turn = None;
        }
        let (at, _) = *turn.get_or_insert_with(|| (pace.reserve(), false));
        let now = tokio::time::Instant::now();
        // Its planned time come, taken if the rate allows now (a rotator
        // back later than its turn would otherwise order with the next).
        let at = match at <= now {
            true => match pace.take() {
                Ok(()) => {
                    *turn = None;
                    return Ok(());
                }
                Err(next) => turn.insert((next, true)).0,
            },
            false => at,
        };
        let wait = at.saturating_duration_since(now);
        tracing::debug!(target: "certrotate", wait = %crate::clock::human(wait), "renewal paced: waiting for its turn");
        let reason = format!(
            "renewals are paced (AcmeBuilder::renewals_per_window): this one's turn comes in {}",
            crate::clock::human(wait)
        );
        Err(SourceError::rate_limited(self.describe(), reason, wait))
    }

    /// Whether the stored certificate, due for renewal, is served until it
    /// is renewed: when nothing was served yet (a restart, an on-demand
    /// name loaded back) and it is still valid.
    fn serves_meanwhile(&self, stored: &CertBundle) -> bool {
        // A last-resort certificate is no reason to hold back a stored one
        // that is still valid.
        let provided = lock(&self.inner.provided)
            .as_ref()
            .is_some_and(|p| !self.is_last_resort(p.info()));
        !provided && stored.info().not_after > self.now()
    }

    /// Whether the storage being down lets this instance order on its own
    /// ([`AcmeBuilder::order_alone_when_storage_is_down`]).
    pub(super) fn may_order_alone(&self) -> bool {
        let Some(window) = self.inner.config.order_alone_within else {
            return false;
        };
        lock(&self.inner.provided)
            .as_ref()
            .is_none_or(|b| b.info().not_after < crate::clock::saturating_add(self.now(), window))
    }

    /// Orders, validates, finalizes and downloads a new certificate from
    /// CA number `ca`.
    pub(super) async fn order(
        &self,
        ca: usize,
        replacing: Option<&CertBundle>,
    ) -> Result<CertBundle, Failure> {
        let account = self.account(ca, false).await?;
        match self.order_with(ca, &account, replacing).await {
            // The CA forgot the account (a reset CA, a deactivated account):
            // make a new one and try once more.
            Err(failure) if failure.forgotten_account() => {
                tracing::warn!(target: "certrotate", reason = %failure, "the ACME CA no longer knows the account; creating a new one");
                let account = self.account(ca, true).await?;
                self.order_with(ca, &account, None).await
            }
            other => other,
        }
    }

    pub(super) async fn order_with(
        &self,
        ca: usize,
        account: &Account,
        replacing: Option<&CertBundle>,
    ) -> Result<CertBundle, Failure> {
        let mut order = match self.resume(ca, account).await {
            Some(order) => order,
            None => self.new_order(ca, account, replacing).await?,
        };
        // Whatever ends this attempt (an answer, an error, or the rotator's
        // fetch timeout dropping it), the challenge answers are taken down.
        let mut cleanup = Cleanup::default();
        let result = match self.answer_challenges(&mut order, &mut cleanup).await {
            Ok(()) => self.finish(ca, &mut order).await,
            Err(e) => Err(e),
        };
        cleanup.run().await;
        match &result {
            Ok(_) => *lock(&self.inner.pending) = None,
            Err(reason) => {
                tracing::info!(target: "certrotate", order = %order.url(), %reason, "the ACME order did not finish; the next attempt resumes it");
            }
        }
        result
    }

    /// The order an earlier attempt left unfinished with CA number `ca`,
    /// as the CA has it now, if it can still be finished: not invalid, and
    /// if it was finalized already, the key of its certificate request is
    /// known.
    pub(super) async fn resume(&self, ca: usize, account: &Account) -> Option<instant_acme::Order> {
        let url = lock(&self.inner.pending)
            .as_ref()
            .filter(|p| p.ca == ca)?
            .url
            .clone();
        let resumed = step!(self, "resuming the order", account.order(url.clone()));
        let finalized = lock(&self.inner.pending)
            .as_ref()
            .is_some_and(|p| p.key_pem.is_some());
        match resumed {
            Ok(mut order) => {
                let status = order.state().status;
                let usable = match status {
                    OrderStatus::Pending | OrderStatus::Ready => true,
                    OrderStatus::Processing | OrderStatus::Valid => finalized,
                    _ => false,
                };
                if usable {
                    tracing::info!(target: "certrotate", order = %url, ?status, "resuming the ACME order");
                    return Some(order);
                }
                tracing::info!(target: "certrotate", order = %url, ?status, "the unfinished ACME order cannot be finished; placing a new one");
            }
            Err(reason) => {
                tracing::info!(target: "certrotate", order = %url, %reason, "the unfinished ACME order cannot be resumed; placing a new one");
            }
        }
        *lock(&self.inner.pending) = None;
        None
    }

    /// Places a new order, and remembers it for the attempts after this one.
    pub(super) async fn new_order(
        &self,
        ca: usize,
        account: &Account,
        replacing: Option<&CertBundle>,
    ) -> Result<instant_acme::Order, Failure> {
        let identifiers: Vec<Identifier> = self
            .inner
            .config
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let replaces = replacing.and_then(|b| CertificateIdentifier::try_from(&b.chain()[0]).ok());
        let new_order = |replacing: bool| {
            let mut new = NewOrder::new(&identifiers);
            if let Some(profile) = &self.inner.config.cas[ca].profile {
                new = new.profile(profile);
            }
            match (&replaces, replacing) {
                (Some(id), true) => new.replaces(id.clone()),
                _ => new,
            }
        };
        // `replaces` only where this CA gave renewal advice (it has ARI)
        // for the certificate replaced.
        let ari = lock(&self.inner.advice)
            .as_ref()
            .zip(replacing)
            .is_some_and(|(advice, r)| advice.fingerprint == r.info().fingerprint_sha256);
        let order = match step!(
            self,
            Step::CreatingOrder,
            account.new_order(&new_order(ari))
        ) {
            // The old certificate was replaced already (by another replica,
            // or an order lost in a crash): order without `replaces`.
            Err(failure) if failure.already_replaced() => step!(
                self,
                Step::CreatingOrder,
                account.new_order(&new_order(false))
            )?,
            other => other?,
        };
        *lock(&self.inner.pending) = Some(PendingOrder {
            ca,
            url: order.url().to_owned(),
            key_pem: None,
        });
        Ok(order)
    }

    /// Why the CA turned the order down: the order's error, or else the
    /// first challenge error of its authorizations (fetched again, within
    /// the step timeout).
    async fn rejection(&self, order: &mut instant_acme::Order) -> Option<instant_acme::Problem> {
        if let Some(problem) = order.state().error.clone() {
            return Some(problem);
        }
        let look = async {
            let mut authorizations = order.authorizations();
            while let Some(Ok(mut authorization)) = authorizations.next().await {
                let Ok(state) = authorization.refresh().await else {
                    continue;
                };
                let error = state.challenges.iter().find_map(|c| c.error.clone());
                if error.is_some() {
                    return error;
                }
            }
            None
        };
        tokio::time::timeout(self.inner.config.timeout, look)
            .await
            .ok()
            .flatten()
    }

    /// Waits for the CA to validate, finalizes (unless a resumed order was
    /// finalized already), and downloads the certificate.
    pub(super) async fn finish(
        &self,
        ca: usize,
        order: &mut instant_acme::Order,
    ) -> Result<CertBundle, Failure> {
        let retries = RetryPolicy::default().timeout(self.inner.config.timeout);
        let known_key = lock(&self.inner.pending)
            .as_ref()
            .and_then(|p| p.key_pem.clone());
        let key_pem = match (order.state().status, known_key) {
            (OrderStatus::Processing | OrderStatus::Valid, Some(key_pem)) => key_pem,
            _ => {
                let status = step!(
                    self,
                    "validating the challenges",
                    order.poll_ready(&retries)
                )?;
                if status != OrderStatus::Ready {
                    *lock(&self.inner.pending) = None;
                    // The CA's own reason, typed, when it gives one.
                    if let Some(problem) = self.rejection(order).await {
                        let error = instant_acme::Error::Api(problem);
                        return Err(Failure::new("validating the challenges", error));
                    }
                    let why = Unexpected::Order(status);
                    return Err(Failure::new("validating the challenges", why));
                }
                let key_pem =
                    zeroize::Zeroizing::new(step!(self, "finalizing the order", order.finalize())?);
                if let Some(pending) = lock(&self.inner.pending).as_mut() {
                    pending.key_pem = Some(key_pem.clone());
                }
                key_pem
            }
        };
        let chain_pem = step!(
            self,
            "downloading the certificate",
            order.poll_certificate(&retries)
        )?;
        let combined = zeroize::Zeroizing::new(format!("{chain_pem}{}", *key_pem));
        let bundle = CertBundle::from_combined_pem(combined.as_bytes())
            .context("reading the certificate the CA issued")?;
        let stored = self.stored_form(ca, &combined);
        self.save(&self.inner.cert_key, stored.as_bytes(), "ACME certificate")
            .await;
        let directory = &self.inner.config.cas[ca].directory;
        tracing::info!(target: "certrotate", serial = %bundle.info().serial, ca = %directory, "ACME certificate issued");
        Ok(bundle.with_origin(self.origin(directory)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::AcmeSource;

    /// A renewal whose turn came and found the rate used up (something
    /// else took it first) stays first in line: back later than a window
    /// after that, it renews at once, not behind every turn reserved since.
    #[tokio::test(start_paused = true)]
    async fn a_turn_that_came_and_found_the_rate_used_up_stays_first_in_line() {
        let s = Duration::from_secs;
        let builder = AcmeSource::builder("https://acme.invalid/directory", ["a.example"])
            .renewals_per_window(1, s(10));
        let ours = builder.clone().build();
        let others: Vec<_> = (0..6)
            .map(|i| builder.build_for(&format!("n{i}.example")))
            .collect();
        let pace = ours.inner.config.renewal_pace.clone();
        // One renews now; ours is next, in 10 s; five more queue behind it.
        assert!(others[0].renewal_turn().is_ok());
        let waits = |source: &AcmeSource| source.renewal_turn().unwrap_err().retry_after();
        assert_eq!(waits(&ours), Some(s(10)));
        for other in &others[1..] {
            assert!(waits(other) > Some(s(10)));
        }
        // Its time comes, but something took the rate just before.
        tokio::time::advance(s(10)).await;
        assert!(pace.take().is_ok());
        assert_eq!(waits(&ours), Some(s(10)));
        // Back long after (a retry's backoff): its turn at once.
        tokio::time::advance(s(25)).await;
        assert!(ours.renewal_turn().is_ok());
    }
}
