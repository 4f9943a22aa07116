//! The HTTP client instant-acme talks to the CA through.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::failure::{Context, Failure};
use super::BoxFuture;
use crate::clock::Clock;
use crate::sync::lock;

tokio::task_local! {
    /// Where the source whose step is running notes a `Retry-After`: the
    /// account and its client are shared by the sources of one builder
    /// (on-demand names), and one name's wait is not another's.
    static NOTES: Arc<Mutex<Option<Duration>>>;
}

/// Runs `step`, noting any `Retry-After` its requests get in `notes`.
pub(super) async fn noting<F: std::future::Future>(
    notes: Arc<Mutex<Option<Duration>>>,
    step: F,
) -> F::Output {
    NOTES.scope(notes, step).await
}

/// instant-acme's HTTP client (hyper + rustls, the platform's roots or the
/// configured one), noting the `Retry-After` of error responses, which
/// instant-acme's errors do not carry, so that the rotator can honour it.
#[derive(Clone)]
pub(super) struct NotingClient {
    inner: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        instant_acme::BodyWrapper<bytes::Bytes>,
    >,
    retry_after: Arc<Mutex<Option<Duration>>>,
    clock: Arc<dyn Clock>,
}

impl NotingClient {
    /// A client trusting the CA certificates of the PEM file `root` (read
    /// off the runtime), else the platform's.
    pub(super) async fn new(
        root: Option<&std::path::Path>,
        retry_after: Arc<Mutex<Option<Duration>>>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, Failure> {
        const WHAT: &str = "setting up the connection to the CA";
        let builder = rustls::ClientConfig::builder_with_provider(crate::default_provider())
            .with_safe_default_protocol_versions()
            .context(WHAT)?;
        let tls = match root {
            Some(path) => {
                let what = format!("reading the CA's root certificates {}", path.display());
                let path = path.to_owned();
                let pem = crate::sync::blocking(move || crate::read::small(&path))
                    .await
                    .and_then(|read| read)
                    .context(what.clone())?;
                let roots = crate::mtls::root_store_from_pem(&pem).context(what)?;
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            None => rustls_platform_verifier::BuilderVerifierExt::with_platform_verifier(builder)
                .context(WHAT)?
                .with_no_client_auth(),
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .build();
        let inner =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build(https);
        Ok(Self {
            inner,
            retry_after,
            clock,
        })
    }
}

impl NotingClient {
    /// Where a `Retry-After` is noted: the running step's source's, else
    /// the one the client was made for.
    fn notes(&self) -> Arc<Mutex<Option<Duration>>> {
        NOTES
            .try_with(Arc::clone)
            .unwrap_or_else(|_| self.retry_after.clone())
    }
}

impl instant_acme::HttpClient for NotingClient {
    fn request(
        &self,
        request: http::Request<instant_acme::BodyWrapper<bytes::Bytes>>,
    ) -> BoxFuture<'static, Result<instant_acme::BytesResponse, instant_acme::Error>> {
        let response = instant_acme::HttpClient::request(&self.inner, request);
        let noted = self.notes();
        let now = self.clock.now();
        Box::pin(async move {
            let response = response.await?;
            if response.parts.status.is_client_error() || response.parts.status.is_server_error() {
                if let Some(wait) = retry_after(&response.parts.headers, now) {
                    *lock(&noted) = Some(wait);
                }
            }
            Ok(response)
        })
    }
}

/// A `Retry-After` header's wait: seconds, or an HTTP date.
pub(super) fn retry_after(headers: &http::HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `Retry-After` goes to the source whose step asked, not to the
    /// source that made the shared account's client.
    #[tokio::test]
    async fn a_wait_is_noted_for_the_step_that_met_it() {
        let maker = Arc::new(Mutex::new(None));
        let client = NotingClient::new(None, maker.clone(), Arc::new(crate::clock::SystemClock))
            .await
            .unwrap();
        let asker = Arc::new(Mutex::new(None));
        let inside = noting(asker.clone(), async { client.notes() }).await;
        assert!(Arc::ptr_eq(&inside, &asker));
        assert!(Arc::ptr_eq(&client.notes(), &maker));
    }
}
