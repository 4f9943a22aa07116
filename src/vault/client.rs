//! Vault's HTTP API as this crate uses it: one JSON request with a token,
//! within a deadline, its answer bounded in size, its errors typed.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;

use super::error::VaultError;

/// How long one request to Vault may take, by default.
pub(super) const TIMEOUT: Duration = Duration::from_secs(10);

/// The largest answer read (a certificate chain is a few KiB).
const MAX_ANSWER: usize = 1024 * 1024;

/// A client of one Vault (or OpenBao) server.
#[derive(Clone)]
pub(super) struct Client {
    http: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
    addr: String,
    timeout: Duration,
}

impl Client {
    /// A client of the server at `addr` (`https://vault:8200`), trusting
    /// the CA certificates of `ca_pem` for its HTTPS, else the platform's
    /// roots. An `http://` address only with `plain_http` (the token
    /// would cross the network in clear).
    pub(super) fn new(
        addr: &str,
        ca_pem: Option<&[u8]>,
        plain_http: bool,
        timeout: Duration,
    ) -> Result<Self, VaultError> {
        let addr = addr.trim_end_matches('/').to_owned();
        match (addr.split_once("://").map(|(scheme, _)| scheme), plain_http) {
            (Some("https"), _) => {}
            (Some("http"), true) => {
                tracing::warn!(target: "certrotate", %addr, "talking to Vault over plain HTTP: its token and answers cross the network in clear");
            }
            (Some("http"), false) => {
                return Err(VaultError::Config(format!(
                    "{addr} is plain HTTP: the token would cross the network in clear (use https://, or dangerous().allow_plain_http() for a Vault on this host)"
                )))
            }
            _ => {
                return Err(VaultError::Config(format!(
                    "the address {addr:?} is not an https:// URL"
                )))
            }
        }
        let setup = |e: &dyn std::fmt::Display| VaultError::Config(format!("TLS setup: {e}"));
        let builder = rustls::ClientConfig::builder_with_provider(crate::default_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| setup(&e))?;
        let tls = match ca_pem {
            Some(pem) => {
                let roots = crate::mtls::root_store_from_pem(pem)
                    .map_err(|e| VaultError::Config(format!("the CA PEM: {e}")))?;
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            None => rustls_platform_verifier::BuilderVerifierExt::with_platform_verifier(builder)
                .map_err(|e| setup(&e))?
                .with_no_client_auth(),
        };
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        let http = HyperClient::builder(hyper_util::rt::TokioExecutor::new()).build(https);
        Ok(Self {
            http,
            addr,
            timeout,
        })
    }

    /// How long one request may take.
    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The server's address, as configured.
    pub(super) fn addr(&self) -> &str {
        &self.addr
    }

    /// `method /v1/<path>` with `token` and a JSON `body`: the answer's
    /// JSON, or a typed error. 204 answers give `null`.
    pub(super) async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, VaultError> {
        let uri = format!("{}/v1/{}", self.addr, path.trim_start_matches('/'));
        let mut request = Request::builder().method(method).uri(&uri);
        if let Some(token) = token {
            request = request.header("X-Vault-Token", token);
        }
        let body = match body {
            Some(body) => Full::from(body.to_string()),
            None => Full::default(),
        };
        let request = request
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .map_err(|e| VaultError::Config(format!("{uri}: {e}")))?;
        let exchange = async {
            let response =
                self.http
                    .request(request)
                    .await
                    .map_err(|e| VaultError::Unreachable {
                        addr: self.addr.clone(),
                        reason: error_chain(&e),
                    })?;
            let status = response.status();
            let bytes = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| VaultError::BadAnswer {
                    path: path.to_owned(),
                    reason: format!("reading the answer: {e}"),
                })?
                .to_bytes();
            Ok::<_, VaultError>((status, bytes))
        };
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| VaultError::Timeout {
                addr: self.addr.clone(),
                waited: self.timeout,
            })??;
        if status == StatusCode::NO_CONTENT {
            return Ok(serde_json::Value::Null);
        }
        let json: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| VaultError::BadAnswer {
                path: path.to_owned(),
                reason: format!("not JSON ({status}): {e}"),
            })?;
        if status.is_success() {
            return Ok(json);
        }
        let errors = json["errors"]
            .as_array()
            .map(|errors| {
                errors
                    .iter()
                    .filter_map(|e| e.as_str())
                    .map(flatten)
                    .take(8)
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default();
        Err(VaultError::Refused {
            path: path.to_owned(),
            status: status.as_u16(),
            errors,
        })
    }
}

/// An error and its causes, in one line (hyper's own message says little).
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        text.push_str(": ");
        text.push_str(&next.to_string());
        cause = next.source();
    }
    text
}

/// One of Vault's error strings on one line (it nests them as `1 error
/// occurred:\n\t* permission denied\n\n`), at most 500 characters.
fn flatten(error: &str) -> String {
    let words: Vec<&str> = error.split_whitespace().collect();
    let mut text = words.join(" ");
    if let Some((_, rest)) = text.split_once("error occurred: * ") {
        text = rest.to_owned();
    } else if let Some((_, rest)) = text.split_once("errors occurred: * ") {
        text = rest.replace(" * ", "; ");
    }
    text.chars().take(500).collect()
}
