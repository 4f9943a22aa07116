//! CRLs apply per issuer: a CRL speaks for the CA that signed it, so one
//! CA's CRL neither locks out the clients of another CA nor, in a root →
//! intermediate hierarchy, those of the intermediate whose CRL it is not.
//! `RevocationPolicy` chooses how strict to be; `TrustFile` reloads behave
//! the same.

mod common;

use certrotate::mtls::RevocationPolicy;
use certrotate::TrustStore;
use common::{client_leaf, Ca, Issued};
use rustls::pki_types::{CertificateDer, UnixTime};

/// Whether `trust` accepts a client presenting `chain` (leaf first).
fn accepts(trust: &TrustStore, chain: &[CertificateDer<'static>]) -> Result<(), String> {
    trust
        .client_verifier()
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn leaf(issued: &Issued) -> Vec<CertificateDer<'static>> {
    issued.bundle.chain().to_vec()
}

/// A client of `intermediate`, with the intermediate in its chain.
fn through(intermediate: &Ca, serial: u64) -> Vec<CertificateDer<'static>> {
    let mut chain = leaf(&client_leaf(intermediate, serial));
    chain.push(intermediate.der.clone());
    chain
}

#[test]
fn one_issuers_crl_does_not_lock_out_another_ca() {
    let (ca1, ca2) = (Ca::new_named("CA one"), Ca::new_named("CA two"));
    let trust = TrustStore::new(vec![ca1.der.clone(), ca2.der.clone()]).unwrap();
    trust.set_crls(vec![ca1.crl(&[1001])]).unwrap();

    accepts(&trust, &leaf(&client_leaf(&ca1, 1000))).expect("CA one's good client");
    let revoked = accepts(&trust, &leaf(&client_leaf(&ca1, 1001)));
    assert!(
        revoked.as_ref().is_err_and(|e| e.contains("Revoked")),
        "{revoked:?}"
    );
    // CA two published no CRL: its clients are not refused for that.
    accepts(&trust, &leaf(&client_leaf(&ca2, 2000))).expect("CA two's client");
}

#[test]
fn an_intermediates_crl_applies_to_the_leaves_it_issued() {
    let root = Ca::new_named("root");
    let issuing = root.intermediate("issuing CA");
    let trust = TrustStore::new(vec![root.der.clone()]).unwrap();
    // Only the issuing CA publishes a CRL; the root does not.
    trust.set_crls(vec![issuing.crl(&[3001])]).unwrap();

    accepts(&trust, &through(&issuing, 3000)).expect("a good leaf of the intermediate");
    let revoked = accepts(&trust, &through(&issuing, 3001));
    assert!(
        revoked.as_ref().is_err_and(|e| e.contains("Revoked")),
        "{revoked:?}"
    );
}

#[test]
fn strict_revocation_refuses_a_chain_an_issuer_has_no_crl_for() {
    let (ca1, ca2) = (Ca::new_named("CA one"), Ca::new_named("CA two"));
    let trust = TrustStore::new(vec![ca1.der.clone(), ca2.der.clone()]).unwrap();
    trust.set_crls(vec![ca1.crl(&[])]).unwrap();
    let generation = trust.generation();
    trust
        .set_revocation_policy(RevocationPolicy::Strict)
        .unwrap();
    assert_eq!(
        trust.generation(),
        generation + 1,
        "a new policy is new trust"
    );

    accepts(&trust, &leaf(&client_leaf(&ca1, 1000))).expect("covered by CA one's CRL");
    let unknown = accepts(&trust, &leaf(&client_leaf(&ca2, 2000)));
    assert!(unknown.is_err(), "CA two has no CRL: {unknown:?}");

    // Strict over a hierarchy wants the root's CRL too.
    let root = Ca::new_named("root");
    let issuing = root.intermediate("issuing CA");
    let trust = TrustStore::new(vec![root.der.clone()]).unwrap();
    trust.set_crls(vec![issuing.crl(&[])]).unwrap();
    trust
        .set_revocation_policy(RevocationPolicy::Strict)
        .unwrap();
    assert!(accepts(&trust, &through(&issuing, 3000)).is_err());
    trust
        .set_crls(vec![issuing.crl(&[]), root.crl(&[])])
        .unwrap();
    accepts(&trust, &through(&issuing, 3000)).expect("every issuer has a CRL");
}

#[test]
fn end_entity_only_does_not_check_the_intermediates() {
    let root = Ca::new_named("root");
    let issuing = root.intermediate("issuing CA");
    let trust = TrustStore::new(vec![root.der.clone()]).unwrap();
    // The root revokes the intermediate itself.
    let serial = x509_parser::parse_x509_certificate(issuing.der.as_ref())
        .unwrap()
        .1
        .raw_serial()
        .iter()
        .fold(0u64, |n, b| n << 8 | u64::from(*b));
    trust.set_crls(vec![root.crl(&[serial])]).unwrap();
    assert!(accepts(&trust, &through(&issuing, 3000)).is_err());
    trust
        .set_revocation_policy(RevocationPolicy::EndEntityOnly)
        .unwrap();
    accepts(&trust, &through(&issuing, 3000)).expect("only the leaf is checked");
}

#[cfg(all(feature = "file", feature = "ca"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_file_reloads_apply_crls_per_issuer() {
    let dir = common::TempDir::new("trust-revocation");
    let path = dir.join("client-ca.pem");
    let (ca1, ca2) = (Ca::new_named("CA one"), Ca::new_named("CA two"));
    let bundle = |revoked: &[u64]| {
        let crl = ca1.crl(revoked);
        let crl_pem = pem::encode(&pem::Pem::new("X509 CRL", crl.as_ref().to_vec()));
        format!("{}{}{crl_pem}", ca1.pem, ca2.pem)
    };
    common::write_atomic(&path, &bundle(&[1001]));
    let file = certrotate::source::TrustFile::open(&path, common::file_options())
        .await
        .unwrap();
    let trust = file.trust();
    accepts(&trust, &leaf(&client_leaf(&ca2, 2000))).expect("CA two's client");
    assert!(accepts(&trust, &leaf(&client_leaf(&ca1, 1001))).is_err());
    accepts(&trust, &leaf(&client_leaf(&ca1, 1000))).expect("CA one's good client");

    // A new CRL revokes 1000 too: CA two's clients still get in.
    let generation = trust.generation();
    common::write_atomic(&path, &bundle(&[1000, 1001]));
    let deadline = std::time::Instant::now() + common::WITHIN;
    while trust.generation() == generation {
        assert!(
            std::time::Instant::now() < deadline,
            "the reload never came"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(accepts(&trust, &leaf(&client_leaf(&ca1, 1000))).is_err());
    accepts(&trust, &leaf(&client_leaf(&ca2, 2000))).expect("CA two's client");
}
