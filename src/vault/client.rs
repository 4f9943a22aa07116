//! Vault's HTTP API as this crate uses it: one JSON request with a token,
//! within a deadline, its answer bounded in size, its errors typed.

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HyperClient;

use super::error::VaultError;

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
    /// `roots` for its HTTPS, else the platform's roots.
    pub(super) fn new(
        addr: &str,
        roots: Option<rustls::RootCertStore>,
        timeout: Duration,
    ) -> Result<Self, VaultError> {
        let setup = |e: &dyn std::fmt::Display| VaultError::Config(format!("TLS setup: {e}"));
        let builder = rustls::ClientConfig::builder_with_provider(crate::default_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| setup(&e))?;
        let tls = match roots {
            Some(roots) => builder.with_root_certificates(roots).with_no_client_auth(),
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
        let addr = addr.trim_end_matches('/').to_owned();
        if !(addr.starts_with("https://") || addr.starts_with("http://")) {
            return Err(VaultError::Config(format!(
                "the address {addr:?} is not an http:// or https:// URL"
            )));
        }
        Ok(Self {
            http,
            addr,
            timeout,
        })
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
                    .map(|e| e.trim().chars().take(500).collect::<String>())
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
