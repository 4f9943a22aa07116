//! Randomness that must not be guessed or repeated: AEAD nonces and lease
//! owners. It comes from the crypto provider's CSPRNG (the operating
//! system's generator underneath), never from `fastrand`, whose per-thread
//! state is seeded from the time and can be reseeded by any crate in the
//! process. (`fastrand` stays for jitter and temporary file names, where a
//! repeat costs nothing.)

use rustls::crypto::GetRandomFailed;

/// `N` bytes from the default crypto provider's secure random generator.
pub(crate) fn secure<const N: usize>() -> Result<[u8; N], GetRandomFailed> {
    let mut bytes = [0; N];
    crate::default_provider().secure_random.fill(&mut bytes)?;
    Ok(bytes)
}
