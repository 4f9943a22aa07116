//! One certificate authority: its certificate and key, made, loaded, saved
//! and signing leaves; and the set of them a CA trusts during a rollover.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::*;

/// How long a generated CA certificate is valid.
pub(super) const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

pub(super) struct State {
    pub(super) active: Authority,
    pub(super) next: Option<Authority>,
    /// Former signers whose leaves may still be out there.
    pub(super) retiring: Vec<Authority>,
}

pub(super) struct Authority {
    pub(super) issuer: Issuer<'static, KeyPair>,
    pub(super) cert: CertificateDer<'static>,
    pub(super) cert_pem: String,
    pub(super) key_pem: Zeroizing<String>,
    pub(super) not_after: SystemTime,
    /// The latest expiry of the leaves it signed.
    pub(super) last_leaf_expiry: Option<SystemTime>,
}

impl State {
    /// Every CA whose leaves may be in use: next, active, retiring.
    pub(super) fn authorities(&self) -> impl Iterator<Item = &Authority> {
        self.next
            .iter()
            .chain(std::iter::once(&self.active))
            .chain(&self.retiring)
    }

    pub(super) fn bundle(&self) -> Vec<CertificateDer<'static>> {
        self.authorities().map(|a| a.cert.clone()).collect()
    }

    pub(super) fn bundle_pem(&self) -> String {
        self.authorities().map(|a| a.cert_pem.as_str()).collect()
    }
}

impl Authority {
    pub(super) fn generate(name: &str, now: SystemTime) -> Result<Self, CaError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
        params.distinguished_name.push(DnType::CommonName, name);
        // Signs leaves only, never other CAs.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = (now - Duration::from_secs(60)).into();
        params.not_after = (now + CA_LIFETIME).into();
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let cert = params.self_signed(&key).map_err(rcgen_error)?;
        Self::from_pem(&cert.pem(), &key.serialize_pem())
    }

    pub(super) fn load(cert: &Path, key: &Path) -> Result<Self, CaError> {
        let read = |path: &Path| -> Result<Zeroizing<String>, CaError> {
            let mut bytes = crate::read::small(path).map_err(|e| io("read", path, e))?;
            match String::from_utf8(std::mem::take(&mut *bytes)) {
                Ok(text) => Ok(Zeroizing::new(text)),
                Err(error) => {
                    drop(Zeroizing::new(error.into_bytes()));
                    let what = format!("{} is not PEM text", path.display());
                    Err(CaError::unusable(what))
                }
            }
        };
        let key_pem = read(key)?;
        Self::from_pem(&read(cert)?, &key_pem)
    }

    pub(super) fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let unusable = |e: rcgen::Error| CaError::unusable(e);
        let key = KeyPair::from_pem(key_pem).map_err(unusable)?;
        let bundle = CertBundle::from_pem(cert_pem.as_bytes(), key_pem.as_bytes())
            .map_err(CaError::unusable)?;
        if !bundle.info().is_ca {
            return Err(CaError::unusable("the certificate is not a CA certificate"));
        }
        if bundle.key_mismatches() {
            return Err(CaError::unusable(
                "the key does not belong to the certificate",
            ));
        }
        let cert = bundle.chain()[0].clone();
        let issuer = Issuer::from_ca_cert_der(&cert, key).map_err(unusable)?;
        Ok(Self {
            issuer,
            not_after: bundle.info().not_after,
            cert,
            cert_pem: cert_pem.to_owned(),
            key_pem: Zeroizing::new(key_pem.to_owned()),
            last_leaf_expiry: None,
        })
    }

    /// Writes `<stem>.crt` (0644) and `<stem>.key` (0600) into `dir`.
    pub(super) fn save(&self, dir: &Path, stem: &str) -> Result<(), CaError> {
        let key = dir.join(format!("{stem}.key"));
        crate::atomic::write(&key, self.key_pem.as_bytes(), 0o600)
            .map_err(|e| io("write", &key, e))?;
        let cert = dir.join(format!("{stem}.crt"));
        crate::atomic::write(&cert, self.cert_pem.as_bytes(), 0o644)
            .map_err(|e| io("write", &cert, e))
    }

    pub(super) fn sign(&self, spec: &LeafSpec, now: SystemTime) -> Result<CertBundle, CaError> {
        let mut params = CertificateParams::new(spec.names.clone()).map_err(rcgen_error)?;
        if let Some(first) = spec.names.first().or(spec.uris.first()) {
            params.distinguished_name.push(DnType::CommonName, first);
        }
        for uri in &spec.uris {
            let uri = uri.clone().try_into().map_err(rcgen_error)?;
            params.subject_alt_names.push(SanType::URI(uri));
        }
        params.extended_key_usages = match spec.usage {
            Usage::Server => vec![ExtendedKeyUsagePurpose::ServerAuth],
            Usage::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            _ => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        };
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        // A little backdating for clock skew, small next to short lifetimes.
        let backdate = spec
            .backdate
            .unwrap_or((spec.lifetime / 10).min(Duration::from_secs(60)));
        params.not_before = (now - backdate).into();
        params.not_after = (now + spec.lifetime).min(self.not_after).into();
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(rcgen_error)?;
        let key_pem = Zeroizing::new(key.serialize_pem());
        CertBundle::from_pem(cert.pem().as_bytes(), key_pem.as_bytes())
            .map_err(|e| CaError::Issue(Arc::new(e)))
    }
}
