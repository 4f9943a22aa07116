//! Every policy check, end to end: a bad candidate is refused with its own
//! error, a real TLS client keeps seeing the old certificate, and the refusal
//! shows up as an event and as `last_error` in health.

mod common;

use std::time::{Duration, SystemTime};

use certrotate::policy::Refusal;
use certrotate::rotator::Rotation;
use certrotate::source::StaticSource;
use certrotate::{CertBundle, Policy, RotateError, RotationEvent, Rotator};
use common::{Ca, Leaf, HOST};
use rcgen::ExtendedKeyUsagePurpose;

/// Starts serving a good certificate, pushes `bad`, and checks everything a
/// refusal must do. Returns the refusal for the caller to match.
async fn refused(ca: &Ca, policy: Policy, bad: CertBundle) -> Refusal {
    let good = ca.nth(0);
    let common::Serving {
        source,
        rotator,
        server,
        client,
    } = common::serving(ca, policy, good.clone()).await;
    let good_serial = good.info().serial.clone();
    assert_eq!(
        common::serial_seen(&client, server.addr, HOST)
            .await
            .unwrap(),
        good_serial
    );

    let mut events = rotator.subscribe();
    source.push(bad.clone());
    let error = match rotator.rotate_now().await {
        Err(RotateError::Refused(e)) => e,
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(
        error.cert().serial,
        bad.info().serial,
        "the error names the candidate"
    );
    assert!(
        error.to_string().contains(&bad.info().serial),
        "message names the serial: {error}"
    );

    // Still serving the good one, to real clients.
    assert_eq!(rotator.current().unwrap().serial, good_serial);
    assert_eq!(
        common::serial_seen(&client, server.addr, HOST)
            .await
            .unwrap(),
        good_serial
    );

    // Recorded as an event and in health.
    let event = loop {
        match events.recv().await.unwrap() {
            RotationEvent::Refused { error, .. } => break error,
            _ => continue,
        }
    };
    assert_eq!(event.to_string(), error.to_string());
    assert_eq!(
        rotator.health().last_error.as_deref(),
        Some(error.to_string().as_str())
    );
    assert_eq!(
        rotator.health().certificates[0].last_error.as_deref(),
        Some(error.to_string().as_str())
    );

    // A good candidate afterwards is accepted and clears last_error.
    source.push(ca.nth(10));
    assert!(matches!(
        rotator.rotate_now().await,
        Ok(Rotation::Rotated { .. })
    ));
    assert_eq!(rotator.health().last_error, None);
    rotator.shutdown().await;
    error.reason().clone()
}

fn policy() -> Policy {
    Policy::builder().server_name(HOST).build().unwrap()
}

#[tokio::test]
async fn mismatched_key_is_refused() {
    let ca = Ca::new();
    let a = ca.issue(Leaf::default().valid_from(SystemTime::now() - Duration::from_secs(60)));
    let b = ca.issue(Leaf::default());
    let bad = CertBundle::from_pem(a.cert_pem.as_bytes(), b.key_pem.as_bytes()).unwrap();
    assert!(matches!(
        refused(&ca, policy(), bad).await,
        Refusal::KeyMismatch
    ));
}

#[tokio::test]
async fn expired_is_refused() {
    let ca = Ca::new();
    let now = SystemTime::now();
    let bad = ca.issue(Leaf::default().lifetime(
        now - Duration::from_secs(100),
        now - Duration::from_secs(10),
    ));
    assert!(matches!(
        refused(&ca, policy(), bad.bundle).await,
        Refusal::Expired { .. }
    ));
}

#[tokio::test]
async fn not_yet_valid_is_refused() {
    let ca = Ca::new();
    let now = SystemTime::now();
    let bad = ca.issue(Leaf::default().lifetime(
        now + Duration::from_secs(3600),
        now + Duration::from_secs(7200),
    ));
    assert!(matches!(
        refused(&ca, policy(), bad.bundle).await,
        Refusal::NotYetValid { .. }
    ));
}

#[tokio::test]
async fn expiring_too_soon_is_refused() {
    let ca = Ca::new();
    let now = SystemTime::now();
    let policy = Policy::builder()
        .server_name(HOST)
        .min_remaining(Duration::from_secs(3 * 3600))
        .build()
        .unwrap();
    let bad = ca.issue(Leaf::default().lifetime(
        now - Duration::from_secs(60),
        now + Duration::from_secs(3600),
    ));
    let refusal = refused(&ca, policy, bad.bundle).await;
    assert!(
        matches!(refusal, Refusal::ExpiresTooSoon { .. }),
        "{refusal}"
    );
}

#[tokio::test]
async fn wrong_host_is_refused() {
    let ca = Ca::new();
    let bad = ca.issue(Leaf::default().names(&["other.example.com"]));
    match refused(&ca, policy(), bad.bundle).await {
        Refusal::NameNotCovered { name } => assert_eq!(name, HOST),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn missing_ip_address_is_refused() {
    let ca = Ca::new();
    let policy = Policy::builder()
        .server_name(HOST)
        .server_name("127.0.0.1")
        .build()
        .unwrap();
    // The serving certificate covers both.
    let bad = ca.issue(Leaf::default()); // localhost only
    let good = ca.issue(
        Leaf::default()
            .names(&[HOST, "127.0.0.1"])
            .valid_from(SystemTime::now() - Duration::from_secs(7200)),
    );
    let source = StaticSource::new(good.bundle);
    let rotator = Rotator::builder(source.clone(), policy)
        .start()
        .await
        .unwrap();
    source.push(bad.bundle);
    match rotator.rotate_now().await {
        Err(RotateError::Refused(e)) => assert!(
            matches!(e.reason(), Refusal::NameNotCovered { name } if name == "127.0.0.1"),
            "{e}"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn wildcard_covers_one_label() {
    let ca = Ca::new();
    let policy = Policy::builder()
        .server_name("api.example.com")
        .build()
        .unwrap();
    let wildcard = ca.issue(Leaf::default().names(&["*.example.com"]));
    assert!(policy.validate(&wildcard.bundle, SystemTime::now()).is_ok());
    let deep = Policy::builder()
        .server_name("a.b.example.com")
        .build()
        .unwrap();
    let err = deep
        .validate(&wildcard.bundle, SystemTime::now())
        .unwrap_err();
    assert!(matches!(err.reason(), Refusal::NameNotCovered { .. }));
}

#[tokio::test]
async fn ca_certificate_as_leaf_is_refused() {
    let ca = Ca::new();
    let leaf = Leaf {
        is_ca: true,
        ..Leaf::default()
    };
    assert!(matches!(
        refused(&ca, policy(), ca.issue(leaf).bundle).await,
        Refusal::CaCertificate
    ));
}

#[tokio::test]
async fn client_only_certificate_is_refused() {
    let ca = Ca::new();
    let leaf = Leaf {
        eku: vec![ExtendedKeyUsagePurpose::ClientAuth],
        ..Leaf::default()
    };
    assert!(matches!(
        refused(&ca, policy(), ca.issue(leaf).bundle).await,
        Refusal::NotForServerAuth
    ));
}

#[tokio::test]
async fn rsa_1024_is_refused() {
    let (cert, key) = common::rsa_1024_pem();
    let bad = CertBundle::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
    let ca = Ca::new();
    match refused(&ca, policy(), bad).await {
        Refusal::WeakKey { key, .. } => assert_eq!(key.to_string(), "RSA-1024"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn chain_out_of_order_is_refused() {
    let ca = Ca::new();
    let other = Ca::new_named("some other CA");
    let leaf = ca.issue(Leaf::default());
    let chain = vec![leaf.bundle.chain()[0].clone(), other.der.clone()];
    let bad = CertBundle::from_der(chain, leaf.bundle.key().clone_key()).unwrap();
    assert!(matches!(
        refused(&ca, policy(), bad).await,
        Refusal::ChainOutOfOrder { index: 0, .. }
    ));
}

#[tokio::test]
async fn untrusted_chain_is_refused() {
    let ca = Ca::new();
    let rogue = Ca::new();
    let policy = Policy::builder()
        .server_name(HOST)
        .trust_roots(ca.roots())
        .build()
        .unwrap();
    let bad = rogue.issue(Leaf::default());
    assert!(matches!(
        refused(&ca, policy, bad.bundle).await,
        Refusal::Untrusted { .. }
    ));
}

/// The verifier's verdict is kept typed, not flattened to text.
#[tokio::test]
async fn an_untrusted_chain_keeps_the_verifiers_error() {
    let ca = Ca::new();
    let policy = Policy::builder()
        .server_name(HOST)
        .trust_roots(ca.roots())
        .build()
        .unwrap();
    let refusal = refused(&ca, policy, Ca::new().issue(Leaf::default()).bundle).await;
    let Refusal::Untrusted { error, .. } = &refusal else {
        panic!("{refusal}");
    };
    assert!(
        matches!(error, rustls::Error::InvalidCertificate(_)),
        "{error:?}"
    );
    let source = std::error::Error::source(&refusal).unwrap();
    assert!(source.downcast_ref::<rustls::Error>().is_some());
}

#[tokio::test]
async fn older_certificate_is_refused_unless_asked_for() {
    let ca = Ca::new();
    let older = ca.issue(Leaf::default().valid_from(SystemTime::now() - Duration::from_secs(7200)));
    assert!(matches!(
        refused(&ca, policy(), older.bundle.clone()).await,
        Refusal::OlderThanServing { .. }
    ));

    let rotator = Rotator::builder(StaticSource::new(ca.nth(0)), policy())
        .start()
        .await
        .unwrap();
    match rotator.install_allowing_older(older.bundle.clone()).await {
        Ok(Rotation::Rotated { new, .. }) => assert_eq!(new.serial, older.bundle.info().serial),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn forged_signature_fails_the_probe() {
    // Same issuer name, different key: the chain looks in order by name, but
    // no client can verify the leaf's signature.
    let ca = Ca::new();
    let impostor = Ca::new();
    let leaf = ca.issue(Leaf::default());
    let chain = vec![leaf.bundle.chain()[0].clone(), impostor.der.clone()];
    let bad = CertBundle::from_der(chain, leaf.bundle.key().clone_key()).unwrap();
    match refused(&ca, policy(), bad).await {
        Refusal::ProbeFailed { name, reason } => {
            assert_eq!(name, HOST);
            assert!(reason.contains("client rejected"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn certificate_without_names_is_refused() {
    let ca = Ca::new();
    let bad = ca.issue(Leaf::default().names(&[]));
    assert!(matches!(
        refused(&ca, Policy::default(), bad.bundle).await,
        Refusal::NoSubjectAltNames
    ));
}

#[tokio::test]
async fn every_key_type_is_accepted() {
    let ca = Ca::new();
    for alg in [
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
        &rcgen::PKCS_RSA_SHA256,
    ] {
        let issued = ca.issue(Leaf::default().alg(alg));
        let policy = Policy::builder()
            .server_name(HOST)
            .trust_roots(ca.roots())
            .build()
            .unwrap();
        let valid = policy.validate(&issued.bundle, SystemTime::now());
        assert!(valid.is_ok(), "{alg:?}: {:?}", valid.err());
    }
}

#[test]
fn invalid_server_names_are_config_errors() {
    for bad in ["", "exa mple.com", "a.*.example.com", "*"] {
        let err = Policy::builder().server_name(bad).build().unwrap_err();
        assert!(
            err.to_string().contains("not a valid server name"),
            "{bad:?}: {err}"
        );
    }
}

#[test]
fn certificate_rustls_cannot_read_is_refused() {
    // 3,000 names make a SAN extension over webpki's 64 KiB limit.
    let names: Vec<String> = (0..3000).map(|i| format!("host-{i}.example.com")).collect();
    let ck = rcgen::generate_simple_self_signed(names).unwrap();
    let bundle = CertBundle::from_pem(
        ck.cert.pem().as_bytes(),
        ck.signing_key.serialize_pem().as_bytes(),
    )
    .unwrap();
    // Past the name limit, which would refuse it first (see `hostile.rs`).
    let policy = Policy::builder().max_names(10_000).build().unwrap();
    let err = policy.validate(&bundle, SystemTime::now()).unwrap_err();
    assert!(matches!(err.reason(), Refusal::Unreadable(_)), "{err}");
    assert!(
        err.to_string()
            .contains("rustls cannot read the certificate"),
        "{err}"
    );
}

#[test]
fn empty_trust_roots_are_a_config_error() {
    let err = Policy::builder()
        .trust_roots(rustls::RootCertStore::empty())
        .build()
        .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("the configured trust roots cannot be used"),
        "{err}"
    );
}
