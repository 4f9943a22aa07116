//! What an ACME CA sends that certrotate reads itself (instant-acme parses
//! the rest): `Retry-After` headers, problem documents (rate limits with a
//! "retry after" time, unknown-account messages), and the account
//! credentials read back from a `Storage`. Typed answers, never a panic.
#![no_main]

use certrotate::fuzzing::acme;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = acme::retry_after(data);
    let _ = acme::problem(data);
    let _ = acme::account(data);
    // The same bytes as the detail of a rate-limit problem.
    if let Ok(detail) = std::str::from_utf8(data) {
        let problem = serde_json::json!({
            "type": "urn:ietf:params:acme:error:rateLimited",
            "detail": detail,
        });
        let _ = acme::problem(problem.to_string().as_bytes());
    }
});
