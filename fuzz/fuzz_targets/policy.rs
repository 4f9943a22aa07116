//! Any bytes as a DER certificate chain plus key, all the way through the
//! policy (key loading, dates, names, chain, probe handshake): a verdict,
//! never a panic.
#![no_main]

use std::time::SystemTime;

use certrotate::{CertBundle, Policy};
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

fuzz_target!(|data: &[u8]| {
    // Two bytes of certificate length (big-endian), the certificate, the key.
    let [high, low, rest @ ..] = data else { return };
    let at = usize::from(u16::from_be_bytes([*high, *low])).min(rest.len());
    let (cert, key) = rest.split_at(at);
    let chain = vec![CertificateDer::from(cert.to_vec())];
    let key = PrivatePkcs8KeyDer::from(key.to_vec()).into();
    if let Ok(bundle) = CertBundle::from_der(chain, key) {
        let _ = Policy::default().validate(&bundle, SystemTime::now());
    }
});
