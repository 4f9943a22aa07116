//! Any bytes as a CA bundle file (a `TrustFile`, `--client-ca`): reading it
//! gives a trust store or a typed error, never a panic, and a refused bundle
//! leaves the trust in force untouched.
#![no_main]

use certrotate::TrustStore;
use libfuzzer_sys::fuzz_target;

/// A valid CA certificate to start from (self-signed, P-256).
const CA: &str = include_str!("../seeds/ca.pem");

fuzz_target!(|data: &[u8]| {
    let _ = TrustStore::from_pem(data);
    let trust = TrustStore::from_pem(CA.as_bytes()).expect("the seed CA is valid");
    let generation = trust.generation();
    if trust.replace_pem(data).is_err() {
        assert_eq!(trust.generation(), generation);
    }
});
