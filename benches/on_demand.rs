//! What on-demand mode costs a handshake for a name already served: the
//! ClientHello read ahead (tokio-rustls's `LazyConfigAcceptor`), a look at
//! the names in memory, then the handshake, against the same handshake
//! through a plain `TlsAcceptor` (what `TlsListener` does without
//! on-demand). Both over an in-memory duplex on one thread, full TLS 1.3
//! handshakes with P-256, interleaved rounds (shuffled order per round),
//! medians and the median of per-round ratios.
//!
//! The name is served by a certificate installed in the store (the path an
//! evicted-and-reloaded or statically configured name takes); a name in
//! the on-demand memory costs one more hash lookup under the same lock.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use certrotate::on_demand::AllowList;
use certrotate::{AcmeSource, OnDemand, Policy};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const ROUNDS: usize = 15;
const PER_ROUND: usize = 200;
const NAME: &str = "shop.customers.example";

#[path = "support/mod.rs"]
mod support;
use support::{leaf_and_roots, ratio_table};

/// How the server side of one connection is accepted.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Plain,
    OnDemand,
}

async fn handshake(
    variant: Variant,
    acceptor: &TlsAcceptor,
    on_demand: &OnDemand,
    config: &Arc<ServerConfig>,
    client: &TlsConnector,
) {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from(NAME).unwrap();
    let connect = client.connect(name, client_io);
    match variant {
        Variant::Plain => {
            let (c, s) = tokio::join!(connect, acceptor.accept(server_io));
            black_box((c.unwrap(), s.unwrap()));
        }
        Variant::OnDemand => {
            let (c, s) = tokio::join!(connect, on_demand.accept(server_io, config.clone()));
            black_box((c.unwrap(), s.unwrap()));
        }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (bundle, roots) = leaf_and_roots(NAME);
        let acme = AcmeSource::template("https://acme.invalid/directory");
        let on_demand = OnDemand::builder(acme, AllowList::new().suffix("customers.example")).build();
        let valid = Policy::default().validate(&bundle, SystemTime::now()).unwrap();
        let renew_at = valid.info().renewal_time();
        on_demand.store().install(NAME, valid, renew_at);
        let mut config = on_demand.server_config().unwrap();
        config.alpn_protocols.clear();
        let config = Arc::new(config);
        let acceptor = TlsAcceptor::from(config.clone());
        let mut client = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.resumption = rustls::client::Resumption::disabled();
        let client = TlsConnector::from(Arc::new(client));

        let variants = [("tls-acceptor", Variant::Plain), ("on-demand", Variant::OnDemand)];
        let mut rates = vec![Vec::new(); variants.len()];
        for round in 0..ROUNDS {
            let order = support::round_order(round as u64, variants.len());
            for i in order {
                let start = Instant::now();
                for _ in 0..PER_ROUND {
                    handshake(variants[i].1, &acceptor, &on_demand, &config, &client).await;
                }
                rates[i].push(PER_ROUND as f64 / start.elapsed().as_secs_f64());
            }
        }
        let heading = format!(
            "Handshakes for a served name, on-demand mode or not ({ROUNDS} interleaved rounds of {PER_ROUND})"
        );
        let names: Vec<String> = variants.iter().map(|(name, _)| name.to_string()).collect();
        ratio_table(&heading, "accepted by", &names, &rates);
        let stats = on_demand.stats();
        assert_eq!(stats.hits as usize, ROUNDS * PER_ROUND, "{stats:?}");
    });
}
