//! The last check: a real TLS handshake in memory between a rustls client
//! and a server built from the candidate, for every configured name.

use std::sync::Arc;
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{
    ClientConfig, ClientConnection, Connection, DigitallySignedStruct, RootCertStore, ServerConfig,
    ServerConnection, SignatureScheme,
};

use super::{unix_time, Policy};
use crate::bundle::CertBundle;

impl Policy {
    /// An in-memory TLS handshake between a rustls client and a server that
    /// serves `key`, as a real client would see it.
    pub(super) fn probe(
        &self,
        candidate: &CertBundle,
        key: &Arc<CertifiedKey>,
        name: ServerName<'static>,
        now: SystemTime,
    ) -> Result<(), String> {
        let provider = self.provider.clone();
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(key.clone())));
        let client = ClientConfig::builder_with_details(provider.clone(), Arc::new(FixedTime(now)))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let chain = candidate.chain();
        let top = chain.last().expect("parsed chain is not empty");
        let client = match (&self.roots, chain.len() > 1) {
            (Some(roots), _) => client.with_root_certificates(roots.clone()),
            (None, true) => {
                let mut roots = RootCertStore::empty();
                roots.add(top.clone()).map_err(|e| {
                    format!("the chain's top certificate cannot serve as a trust anchor: {e}")
                })?;
                client.with_root_certificates(roots)
            }
            // A lone leaf (self-signed or from an issuer we were not given):
            // trust exactly that leaf, and still verify the handshake
            // signature made with its key.
            (None, false) => client
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedLeaf {
                    leaf: chain[0].clone(),
                    provider: provider.clone(),
                })),
        }
        .with_no_client_auth();

        let client = ClientConnection::new(Arc::new(client), name).map_err(|e| e.to_string())?;
        let server = ServerConnection::new(Arc::new(server)).map_err(|e| e.to_string())?;
        let (mut client, mut server) = (Connection::Client(client), Connection::Server(server));
        let mut buf = Vec::with_capacity(16 * 1024);
        while client.is_handshaking() || server.is_handshaking() {
            let sent = pump(&mut client, &mut server, &mut buf)
                .map_err(|e| format!("server side: {e}"))?;
            let answered = pump(&mut server, &mut client, &mut buf)
                .map_err(|e| format!("client rejected the server: {e}"))?;
            if !sent && !answered {
                return Err("the handshake stalled".into());
            }
        }
        Ok(())
    }
}

/// Moves every pending TLS byte from `from` to `to` and lets `to` process
/// them. Says whether anything moved; errors are `to`'s.
fn pump(from: &mut Connection, to: &mut Connection, buf: &mut Vec<u8>) -> Result<bool, String> {
    buf.clear();
    while from.wants_write() {
        from.write_tls(buf).map_err(|e| e.to_string())?;
    }
    let mut rest = buf.as_slice();
    while !rest.is_empty() {
        to.read_tls(&mut rest).map_err(|e| e.to_string())?;
        to.process_new_packets().map_err(|e| e.to_string())?;
    }
    Ok(!buf.is_empty())
}

/// Serves one key, whatever the client asks: the probe's server side.
#[derive(Debug)]
struct Fixed(Arc<CertifiedKey>);

impl ResolvesServerCert for Fixed {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The probe client's clock: the policy's `now`.
#[derive(Debug)]
struct FixedTime(SystemTime);

impl rustls::time_provider::TimeProvider for FixedTime {
    fn current_time(&self) -> Option<UnixTime> {
        Some(unix_time(self.0))
    }
}

/// Trusts exactly one leaf certificate, and checks handshake signatures against it.
#[derive(Debug)]
struct PinnedLeaf {
    leaf: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedLeaf {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "the server sent a different certificate".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
