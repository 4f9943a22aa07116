//! Client and server certificate verifiers that follow the trust in force
//! at each handshake, and remember under which generation each certificate
//! was verified.

use std::fmt;

use super::*;

/// How many client certificate verifications are remembered: far more than
/// there are handshakes between a verification and its session being stored
/// (a session whose verification was forgotten is not stored: the client
/// makes a full handshake next time).
pub(super) const VERIFIED_REMEMBERED: usize = 4096;

/// Client certificates verified lately, by SHA-256 of their DER, with the
/// generation each was verified under.
#[derive(Default)]
pub(super) struct Verified {
    generations: std::collections::HashMap<[u8; 32], u64>,
    order: std::collections::VecDeque<[u8; 32]>,
}

impl Verified {
    fn note(&mut self, cert: &[u8], generation: u64) {
        let id = fingerprint(cert);
        if self.generations.insert(id, generation).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > VERIFIED_REMEMBERED {
            if let Some(oldest) = self.order.pop_front() {
                self.generations.remove(&oldest);
            }
        }
    }

    pub(super) fn generation_of(&self, cert: &[u8]) -> Option<u64> {
        self.generations.get(&fingerprint(cert)).copied()
    }
}

pub(super) fn fingerprint(der: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(der).into()
}

/// A client-certificate verifier that follows a [`TrustStore`].
pub(super) struct FollowingClientVerifier(pub(super) TrustStore);

impl fmt::Debug for FollowingClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FollowingClientVerifier")
            .field(&self.0)
            .finish()
    }
}

impl ClientCertVerifier for FollowingClientVerifier {
    /// No hints: they would have to borrow from one generation of trust.
    /// Clients then send the certificate they have.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    /// Verifies against the trust in force, and remembers under which
    /// generation, so that the session can only carry that one.
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let trust = self.0.trust();
        let verified = trust
            .clients
            .verify_client_cert(end_entity, intermediates, now)?;
        self.0
            .verified()
            .note(end_entity.as_ref(), trust.generation);
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .trust()
            .clients
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .trust()
            .clients
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.trust().clients.supported_verify_schemes()
    }
}

/// A server-certificate verifier that follows a [`TrustStore`].
pub(super) struct FollowingServerVerifier(pub(super) TrustStore);

impl fmt::Debug for FollowingServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("FollowingServerVerifier")
            .field(&self.0)
            .finish()
    }
}

impl ServerCertVerifier for FollowingServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.0.trust().servers.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .trust()
            .servers
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0
            .trust()
            .servers
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.trust().servers.supported_verify_schemes()
    }
}
