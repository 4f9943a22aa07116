//! Proving control of the names: TLS-ALPN-01 answered by the rotator's own
//! resolver, HTTP-01 through [`Http01Responder`], DNS-01 through a
//! [`Dns01Solver`]; and taking every answer down however an attempt ends.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::{ready, Ready};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;

use instant_acme::{AuthorizationStatus, ChallengeStatus, ChallengeType, Identifier};

use super::failure::{Context, Failure, Unexpected};
use super::{AcmeSource, BoxFuture, Challenge};
use crate::source::BoxError;
use crate::store::CertStore;
use crate::sync::lock;

/// Publishes DNS-01 challenge records with your DNS provider. With the
/// `rfc2136` feature, [`Rfc2136Solver`](crate::acme::rfc2136::Rfc2136Solver)
/// is one for any server that takes RFC 2136 updates.
///
/// `present` must return once the TXT record `_acme-challenge.<domain>` with
/// `value` is visible to the CA (wait for propagation there); `cleanup`
/// removes it. An apex and its wildcard put two values at one name: add and
/// remove the one record, not the whole set.
///
/// `cleanup` is called for every `present` that was started, also one that
/// failed, timed out or was cancelled part way (it may have written the
/// record): removing a record that is not there must succeed.
pub trait Dns01Solver: Send + Sync + 'static {
    /// Publishes the TXT record.
    fn present<'a>(
        &'a self,
        domain: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<(), BoxError>>;
    /// Removes it.
    fn cleanup<'a>(
        &'a self,
        domain: &'a str,
        value: &'a str,
    ) -> BoxFuture<'a, Result<(), BoxError>>;
    /// How long `present` may take, if longer than the ACME step timeout
    /// ([`AcmeBuilder::timeout`](crate::acme::AcmeBuilder::timeout)): a
    /// solver that waits for slow secondaries says how long it waits.
    /// `None` (the default) keeps the step timeout.
    fn present_timeout(&self) -> Option<std::time::Duration> {
        None
    }
}

/// Where HTTP-01 answers are asked for (RFC 8555 §8.3).
const CHALLENGE_PATH: &str = "/.well-known/acme-challenge/";
#[cfg(feature = "axum")]
const CHALLENGE_PATH_ROUTE: &str = "/.well-known/acme-challenge/{token}";

/// Answers HTTP-01 challenges on port 80: `GET
/// /.well-known/acme-challenge/{token}` gets the key authorization, anything
/// else a 404. It is a tower `Service` over `http` requests, for any server
/// (hyper, tonic, axum...); with the `axum` feature,
/// [`router`](Self::router) gives it as an axum `Router` to merge.
///
/// ```no_run
/// # async fn demo(http01: certrotate::acme::Http01Responder) -> std::io::Result<()> {
/// let tcp = tokio::net::TcpListener::bind("0.0.0.0:80").await?;
/// axum::serve(tcp, http01.router()).await
/// # }
/// ```
#[derive(Debug, Clone, Default)]
pub struct Http01Responder {
    tokens: Arc<Mutex<HashMap<String, String>>>,
}

impl Http01Responder {
    /// A responder with no challenge pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// An axum router answering `GET /.well-known/acme-challenge/{token}`
    /// (404 for unknown tokens). Merge it into your HTTP app.
    #[cfg(feature = "axum")]
    pub fn router<S: Clone + Send + Sync + 'static>(&self) -> axum::Router<S> {
        axum::Router::new().route_service(CHALLENGE_PATH_ROUTE, self.clone())
    }

    /// The answer to a request for `path` with `method`.
    fn respond(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        let token = path
            .strip_prefix(CHALLENGE_PATH)
            .filter(|token| !token.is_empty() && !token.contains('/'));
        let answer = token.and_then(|token| lock(&self.tokens).get(token).cloned());
        let mut response = match (method, answer) {
            (&Method::GET | &Method::HEAD, Some(answer)) => Response::new(Full::from(answer)),
            _ => {
                let mut response = Response::new(Full::default());
                *response.status_mut() = StatusCode::NOT_FOUND;
                response
            }
        };
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/plain"),
        );
        response
    }

    fn insert(&self, token: &str, key_authorization: &str) {
        lock(&self.tokens).insert(token.to_owned(), key_authorization.to_owned());
    }

    fn remove(&self, token: &str) {
        lock(&self.tokens).remove(token);
    }
}

impl<B> tower_service::Service<Request<B>> for Http01Responder {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        ready(Ok(self.respond(request.method(), request.uri().path())))
    }
}

impl AcmeSource {
    /// Answers the challenge of every authorization still pending, and
    /// tells the CA to validate those it has not started on. An answer is
    /// installed again on a resumed order (the attempt before took its own
    /// down), but the CA is not asked twice.
    pub(super) async fn answer_challenges(
        &self,
        order: &mut instant_acme::Order,
        cleanup: &mut Cleanup,
    ) -> Result<(), Failure> {
        let mut refused = 0;
        // Fetching an authorization the CA refuses for its nonce starts the
        // walk over (those fetched already are not fetched again).
        'walk: loop {
            let mut authorizations = order.authorizations();
            loop {
                let next = self
                    .step("fetching an authorization", async {
                        authorizations.next().await.transpose()
                    })
                    .await;
                let mut authorization = match next {
                    Ok(Some(authorization)) => authorization,
                    Ok(None) => return Ok(()),
                    Err(failure) if failure.bad_nonce() && refused < super::BAD_NONCE_RETRIES => {
                        refused += 1;
                        continue 'walk;
                    }
                    Err(failure) => return Err(failure),
                };
                match authorization.status {
                    AuthorizationStatus::Valid => continue,
                    AuthorizationStatus::Pending => {}
                    other => {
                        let why = Unexpected::Authorization(other);
                        return Err(Failure::new("validating the names", why));
                    }
                }
                let kind = match &self.inner.config.challenge {
                    Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
                    Challenge::Http01(_) => ChallengeType::Http01,
                    Challenge::Dns01(_) => ChallengeType::Dns01,
                };
                let mut challenge = authorization.challenge(kind.clone()).ok_or_else(|| {
                    Failure::new(
                        "validating the names",
                        Unexpected::NoChallenge(kind.clone()),
                    )
                })?;
                let domain = match challenge.identifier().identifier {
                    Identifier::Dns(name) => name.clone(),
                    other => {
                        let why = Unexpected::Identifier(other.clone());
                        return Err(Failure::new("validating the names", why));
                    }
                };
                if cleanup.answered(&challenge.url) {
                    continue;
                }
                let key_authorization = challenge.key_authorization();
                match &self.inner.config.challenge {
                    Challenge::TlsAlpn01 => {
                        let store = lock(&self.inner.attached).clone().ok_or_else(|| {
                            Failure::new("answering TLS-ALPN-01", Unexpected::NotAttached)
                        })?;
                        let key = alpn_certificate(&domain, key_authorization.digest().as_ref())?;
                        store.set_challenge(&domain, key);
                        cleanup.push(&challenge.url, Undo::TlsAlpn01(store.clone(), domain));
                    }
                    Challenge::Http01(responder) => {
                        responder.insert(&challenge.token, key_authorization.as_str());
                        let undo = Undo::Http01(responder.clone(), challenge.token.clone());
                        cleanup.push(&challenge.url, undo);
                    }
                    Challenge::Dns01(solver) => {
                        let value = key_authorization.dns_value();
                        // Taken down however `present` ends: it may have
                        // written the record before failing or being dropped.
                        let undo = Undo::Dns01(solver.clone(), domain.clone(), value.clone());
                        cleanup.push(&challenge.url, undo);
                        let what = "publishing the DNS-01 record";
                        let publish = solver.present(&domain, &value);
                        match solver.present_timeout() {
                            Some(timeout) => self.step_within(what, timeout, publish).await?,
                            None => self.step(what, publish).await?,
                        }
                    }
                }
                if challenge.status == ChallengeStatus::Pending {
                    step!(self, "answering the challenge", challenge.set_ready())?;
                }
            }
        }
    }
}

/// What an attempt must take down when it ends: the answers it installed,
/// by challenge URL. Dropped without [`run`](Self::run) (the rotator's fetch
/// timeout dropped the attempt), it takes them down in a task of its own.
#[derive(Default)]
pub(super) struct Cleanup {
    pub(super) undos: Vec<(String, Undo)>,
}

impl Cleanup {
    pub(super) fn push(&mut self, challenge: &str, undo: Undo) {
        self.undos.push((challenge.to_owned(), undo));
    }

    /// Whether this attempt answered the challenge at `url` already.
    pub(super) fn answered(&self, url: &str) -> bool {
        self.undos.iter().any(|(answered, _)| answered == url)
    }

    /// Takes the answers down one by one: dropped part way (the attempt
    /// was cancelled while cleaning up), those left are taken down by
    /// `drop`.
    pub(super) async fn run(mut self) {
        while !self.undos.is_empty() {
            let (_, undo) = self.undos.remove(0);
            undo.run().await;
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let undos = std::mem::take(&mut self.undos);
        if undos.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime left: nothing can serve the answers either.
            return;
        };
        tracing::debug!(target: "certrotate", "an ACME attempt was dropped mid-order; taking its challenge answers down");
        runtime.spawn(async move {
            for (_, undo) in undos {
                undo.run().await;
            }
        });
    }
}

pub(super) enum Undo {
    TlsAlpn01(CertStore, String),
    Http01(Http01Responder, String),
    Dns01(Arc<dyn Dns01Solver>, String, String),
}

impl Undo {
    pub(super) async fn run(self) {
        match self {
            Self::TlsAlpn01(store, domain) => store.remove_challenge(&domain),
            Self::Http01(responder, token) => responder.remove(&token),
            Self::Dns01(solver, domain, value) => {
                if let Err(e) = solver.cleanup(&domain, &value).await {
                    tracing::warn!(target: "certrotate", %domain, "DNS-01 cleanup failed: {e}");
                }
            }
        }
    }
}

/// The self-signed certificate that answers a TLS-ALPN-01 challenge: the
/// name being validated, and the key authorization's digest in the
/// `acmeIdentifier` extension (RFC 8737).
pub(super) fn alpn_certificate(
    domain: &str,
    digest: &[u8],
) -> Result<Arc<rustls::sign::CertifiedKey>, Failure> {
    const WHAT: &str = "making the TLS-ALPN-01 certificate";
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()]).context(WHAT)?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().context(WHAT)?;
    let cert = params.self_signed(&key).context(WHAT)?;
    let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| Failure::new(WHAT, BoxError::from(e)))?;
    let signing = crate::default_provider()
        .key_provider
        .load_private_key(der)
        .context(WHAT)?;
    Ok(Arc::new(rustls::sign::CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use tower_service::Service;

    use super::*;

    async fn get(responder: &mut Http01Responder, method: Method, path: &str) -> (u16, String) {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .body(())
            .unwrap();
        let response = responder.call(request).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    /// A tower service over `http`, without axum: the token's answer, and
    /// 404 for anything else.
    #[tokio::test]
    async fn the_responder_answers_its_tokens_only() {
        let mut responder = Http01Responder::new();
        responder.insert("tok3n", "tok3n.thumbprint");
        let path = "/.well-known/acme-challenge/tok3n";
        let answer = get(&mut responder, Method::GET, path).await;
        assert_eq!(answer, (200, "tok3n.thumbprint".to_owned()));
        for (method, path) in [
            (Method::GET, "/.well-known/acme-challenge/other"),
            (Method::GET, "/.well-known/acme-challenge/"),
            (Method::GET, "/.well-known/acme-challenge/tok3n/more"),
            (Method::GET, "/tok3n"),
            (Method::POST, path),
        ] {
            let (status, _) = get(&mut responder, method.clone(), path).await;
            assert_eq!(status, 404, "{method} {path}");
        }
        responder.remove("tok3n");
        assert_eq!(get(&mut responder, Method::GET, path).await.0, 404);
    }
}
