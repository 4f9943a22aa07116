//! Any bytes as a certificate file, a key file, or one combined file: parsing
//! returns a bundle or a typed error, never panics.
#![no_main]

use certrotate::CertBundle;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = CertBundle::from_combined_pem(data);
    let (chain, key) = data.split_at(data.len() / 2);
    let _ = CertBundle::from_pem(chain, key);
});
