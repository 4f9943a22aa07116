//! [`MaxConnectionAge`]: moves long-lived connections off old credentials.
//!
//! A rotation changes what new handshakes get; a connection established
//! before it keeps the certificate (and, with mTLS, the trust decision) of
//! its handshake for as long as it lives, which for HTTP/2 or keep-alive
//! clients can be days. This module tells each connection when it has
//! outlived its credentials, so the server can close it gracefully.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::mtls::TrustStore;
use crate::store::CertStore;

/// A maximum age for connections established before a rotation of a
/// [`CertStore`] (or a change of a [`TrustStore`]).
///
/// Call [`connection`](Self::connection) when a connection is accepted; the
/// [`StaleConnection`] it returns completes once a change has happened since
/// **and** the connection is at least `max_age` old (at once, if it already
/// is at the change). Connections established after the last change never
/// complete it. Hand it to hyper's `graceful_shutdown`: HTTP/1 connections
/// then close after their current response, HTTP/2 connections get a
/// `GOAWAY` that lets in-flight requests finish, and clients reconnect to
/// the new certificate without a failed request.
///
/// Any change in the store counts (every slot), as do rollbacks and
/// removals. Connections older than `max_age` at a change are all asked to
/// close at once; clients reconnect at their next request.
///
/// A client should retry a request that a `GOAWAY` refused: the server did
/// not process it (RFC 9113, section 6.8). Browsers, curl, Go and .NET do;
/// hyper's client returns the error instead (hyperium/hyper#2500), so hyper
/// clients need a retry for `GOAWAY` with `NO_ERROR`.
///
/// # Example
///
/// With hyper-util's server, which speaks HTTP/1 and HTTP/2:
///
/// ```no_run
/// use std::time::Duration;
/// use certrotate::serve::MaxConnectionAge;
/// use hyper_util::rt::{TokioExecutor, TokioIo};
/// use hyper_util::server::conn::auto;
///
/// # async fn demo(rotator: certrotate::Rotator, mut listener: certrotate::TlsListener, app: axum::Router) {
/// let max_age = MaxConnectionAge::new(rotator.store(), Duration::from_secs(300));
/// loop {
///     let (tls, _peer) = listener.accept().await;
///     let stale = max_age.connection();
///     let service = hyper_util::service::TowerToHyperService::new(app.clone());
///     tokio::spawn(async move {
///         let http = auto::Builder::new(TokioExecutor::new());
///         let connection = http.serve_connection(TokioIo::new(tls), service);
///         tokio::pin!(connection);
///         tokio::select! {
///             _ = connection.as_mut() => return,
///             () = stale => connection.as_mut().graceful_shutdown(),
///         }
///         let _ = connection.await;
///     });
/// }
/// # }
/// ```
#[derive(Clone)]
pub struct MaxConnectionAge {
    max_age: Duration,
    certificates: watch::Receiver<u64>,
    trust: Option<watch::Receiver<u64>>,
}

impl MaxConnectionAge {
    /// Connections established before a rotation of `store` live at most
    /// `max_age`.
    pub fn new(store: &CertStore, max_age: Duration) -> Self {
        Self {
            max_age,
            certificates: store.changes(),
            trust: None,
        }
    }

    /// Changes of `trust` (the client CAs and CRLs of an mTLS server) count
    /// too: connections accepted under the old trust are moved to the new.
    #[must_use]
    pub fn trust(mut self, trust: &TrustStore) -> Self {
        self.trust = Some(trust.subscribe());
        self
    }

    /// Starts tracking a connection accepted now.
    pub fn connection(&self) -> StaleConnection {
        let established = Instant::now();
        let max_age = self.max_age;
        let mut certificates = self.certificates.clone();
        certificates.mark_unchanged();
        let mut trust = self.trust.clone();
        if let Some(trust) = &mut trust {
            trust.mark_unchanged();
        }
        StaleConnection(Box::pin(async move {
            let trust_changed = async {
                match &mut trust {
                    Some(trust) => trust.changed().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Ok(()) = certificates.changed() => {}
                Ok(()) = trust_changed => {}
                // The stores are gone: nothing can change any more.
                else => std::future::pending().await,
            }
            tokio::time::sleep_until(established + max_age).await;
        }))
    }
}

impl fmt::Debug for MaxConnectionAge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MaxConnectionAge")
            .field("max_age", &self.max_age)
            .field("trust", &self.trust.is_some())
            .finish()
    }
}

/// Completes when its connection should be closed gracefully: see
/// [`MaxConnectionAge`].
#[must_use = "a StaleConnection does nothing unless awaited"]
pub struct StaleConnection(Pin<Box<dyn Future<Output = ()> + Send>>);

impl Future for StaleConnection {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl fmt::Debug for StaleConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaleConnection").finish_non_exhaustive()
    }
}
