//! A DNS-01 solver for pebble-challtestsrv, the test DNS server shipped
//! with Pebble: it publishes the TXT records through the server's
//! management API. Shared by the `acme` example and the tests; a real
//! deployment implements [`certrotate::acme::Dns01Solver`] on its DNS provider's
//! API instead.

use std::net::SocketAddr;

/// A DNS-01 solver publishing TXT records in pebble-challtestsrv, whose
/// management API listens at the address held.
pub struct ChallTestSrv(pub SocketAddr);

impl ChallTestSrv {
    async fn post(&self, path: &str, body: String) -> Result<(), certrotate::source::BoxError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(self.0).await?;
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.0,
            body.len()
        );
        tcp.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        tcp.read_to_string(&mut response).await?;
        match response.starts_with("HTTP/1.1 200") {
            true => Ok(()),
            false => Err(format!(
                "challtestsrv said: {}",
                response.lines().next().unwrap_or("")
            )
            .into()),
        }
    }
}

impl certrotate::acme::Dns01Solver for ChallTestSrv {
    fn present<'a>(
        &'a self,
        domain: &'a str,
        value: &'a str,
    ) -> certrotate::acme::BoxFuture<'a, Result<(), certrotate::source::BoxError>> {
        Box::pin(self.post(
            "/set-txt",
            format!(r#"{{"host": "_acme-challenge.{domain}.", "value": "{value}"}}"#),
        ))
    }

    fn cleanup<'a>(
        &'a self,
        domain: &'a str,
        _value: &'a str,
    ) -> certrotate::acme::BoxFuture<'a, Result<(), certrotate::source::BoxError>> {
        Box::pin(self.post(
            "/clear-txt",
            format!(r#"{{"host": "_acme-challenge.{domain}."}}"#),
        ))
    }
}
