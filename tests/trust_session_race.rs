//! No session outlives the trust its client was verified under, even when
//! the trust changes *during* the handshake: rustls verifies the client's
//! certificate at its Certificate message but stores the session (or
//! encrypts its ticket) after the client's Finished, which the client may
//! hold back across a trust change. A verifier hook makes that change
//! right after a successful verification; the session from that handshake
//! must not resume.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use certrotate::source::StaticSource;
use certrotate::{Policy, Rotator, TrustStore};
use common::{Ca, HOST};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// The trust store's own verifier, which replaces the trust once, right
/// after it verified a client: the worst moment for a partition that reads
/// the generation when the session is stored.
#[derive(Debug)]
struct ChangesTrustAfterVerifying {
    inner: Arc<dyn ClientCertVerifier>,
    trust: TrustStore,
    new_roots: Vec<CertificateDer<'static>>,
    fired: AtomicBool,
}

impl ClientCertVerifier for ChangesTrustAfterVerifying {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if !self.fired.swap(true, Ordering::SeqCst) {
            self.trust
                .replace(self.new_roots.clone(), Vec::new())
                .unwrap();
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

async fn a_session_verified_across_a_trust_change_does_not_resume(tickets: bool) {
    let (server_ca, clients, other) = (
        Ca::new(),
        Ca::new_named("client CA"),
        Ca::new_named("another CA"),
    );
    let trust = TrustStore::new(vec![clients.der.clone()]).unwrap();
    let rotator = Rotator::builder(
        StaticSource::new(server_ca.nth(0)),
        Policy::builder().server_name(HOST).build().unwrap(),
    )
    .start()
    .await
    .unwrap();
    let hook = Arc::new(ChangesTrustAfterVerifying {
        inner: trust.client_verifier(),
        trust: trust.clone(),
        // The client stays trusted: only the generation changes.
        new_roots: vec![clients.der.clone(), other.der.clone()],
        fired: AtomicBool::new(false),
    });
    let mut config = common::server_builder()
        .with_client_cert_verifier(hook)
        .with_cert_resolver(rotator.resolver());
    if tickets {
        config.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().unwrap();
    }
    trust.partition_sessions(&mut config);
    let server = common::serve(Arc::new(config)).await;
    let client = common::resuming_client(&server_ca, &common::client_leaf(&clients, 7));

    let generation = trust.generation();
    assert_eq!(common::request(&client, server.addr).await, Ok(false));
    assert_eq!(
        trust.generation(),
        generation + 1,
        "the hook changed the trust"
    );
    // Verified under the old generation: whatever the client kept from that
    // handshake does not resume.
    assert_eq!(
        common::request(&client, server.addr).await,
        Ok(false),
        "a session verified before the trust change was resumed"
    );
    // Verified under the trust in force: resumes as usual.
    assert_eq!(common::request(&client, server.addr).await, Ok(true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_verified_across_a_trust_change_does_not_resume_from_the_cache() {
    a_session_verified_across_a_trust_change_does_not_resume(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_verified_across_a_trust_change_does_not_resume_by_ticket() {
    a_session_verified_across_a_trust_change_does_not_resume(true).await;
}
