//! Which names may be ordered on demand: the application's [`Decide`] hook,
//! and the ready-made [`AllowList`].

use std::collections::HashSet;
use std::future::Future;

use crate::acme::BoxFuture;

/// Decides whether a certificate may be obtained for a server name the
/// first time a client asks for it (see [`OnDemand`](crate::OnDemand)).
///
/// It may take its time (query a database, call an API): only the first
/// handshakes for a name wait for it, one call per name at a time, and a
/// refusal is remembered for a while
/// ([`OnDemandBuilder::refusal_ttl`](crate::on_demand::OnDemandBuilder::refusal_ttl)).
/// Names reach it lowercase, without a trailing dot, and shaped like a DNS
/// name; anything else is refused before.
///
/// An async closure taking the name as a `String` is a `Decide`:
///
/// ```
/// # fn demo(acme: certrotate::acme::AcmeBuilder) {
/// let on_demand = certrotate::OnDemand::builder(acme, |name: String| async move {
///     // Look the customer's domain up, say.
///     name.ends_with(".customers.example.com")
/// });
/// # }
/// ```
pub trait Decide: Send + Sync + 'static {
    /// Whether a certificate for `name` may be obtained.
    fn allow<'a>(&'a self, name: &'a str) -> BoxFuture<'a, bool>;
}

impl<F, Fut> Decide for F
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    fn allow<'a>(&'a self, name: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(self(name.to_owned()))
    }
}

/// Allows exact names and every name under given suffixes; refuses the
/// rest.
///
/// ```
/// use certrotate::on_demand::AllowList;
///
/// let allowed = AllowList::new()
///     .name("api.example.com")
///     .suffix("customers.example.net");
/// assert!(allowed.allows("api.example.com"));
/// assert!(allowed.allows("shop.customers.example.net"));
/// assert!(allowed.allows("a.b.customers.example.net"));
/// assert!(!allowed.allows("customers.example.net")); // the suffix itself is not under it
/// assert!(!allowed.allows("www.example.com"));
/// ```
#[derive(Debug, Clone, Default)]
pub struct AllowList {
    names: HashSet<String>,
    /// Each with its leading dot: `.example.com`.
    suffixes: Vec<String>,
}

impl AllowList {
    /// Allows nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Allows `name` itself.
    #[must_use]
    pub fn name(mut self, name: impl AsRef<str>) -> Self {
        self.names.insert(normal(name.as_ref()));
        self
    }

    /// Allows every name that ends in `.suffix` (`suffix` or `*.suffix`:
    /// any depth under it, not `suffix` itself).
    #[must_use]
    pub fn suffix(mut self, suffix: impl AsRef<str>) -> Self {
        let suffix = normal(suffix.as_ref());
        let suffix = suffix.trim_start_matches("*.").trim_start_matches('.');
        self.suffixes.push(format!(".{suffix}"));
        self
    }

    /// Whether `name` (lowercase, as handshakes give it) is allowed.
    pub fn allows(&self, name: &str) -> bool {
        self.names.contains(name) || self.suffixes.iter().any(|s| name.ends_with(s.as_str()))
    }
}

impl Decide for AllowList {
    fn allow<'a>(&'a self, name: &'a str) -> BoxFuture<'a, bool> {
        let allowed = self.allows(name);
        Box::pin(std::future::ready(allowed))
    }
}

fn normal(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}
