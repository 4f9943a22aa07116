//! Plain tokio-rustls with certrotate's rotating certificate: a
//! `TlsAcceptor` made once from the rotator's `ServerConfig`, whose
//! certificate resolver follows every rotation. Each connection is told
//! `ok` and closed. Needs no setup: a development CA issues short-lived
//! certificates.
//!
//! ```text
//! cargo run --example tokio_rustls -- [--listen 127.0.0.1:8443] [--lifetime 30] [--ca-out ca.pem]
//! ```
//!
//! Prints `listening on https://HOST:PORT`, then `server: serving SERIAL`
//! at each certificate. (`TlsListener` does the same accept loop with
//! handshakes in parallel, each under a timeout, and a share per client.)

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio_rustls::TlsAcceptor;

#[path = "support/stack.rs"]
mod stack;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = stack::Args::parse("tokio_rustls");
    let (_ca, rotator) = stack::dev_ca(&args).await?;

    // The one line that matters: the acceptor, from the rotator.
    let acceptor = TlsAcceptor::from(Arc::new(rotator.server_config()?));

    let tcp = tokio::net::TcpListener::bind(args.listen).await?;
    println!("listening on https://{}", tcp.local_addr()?);
    stack::print_rotations("server", &rotator);
    loop {
        let (stream, _) = tcp.accept().await?;
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
            if let Ok(Ok(mut tls)) = handshake.await {
                let _ = tls.write_all(b"ok\n").await;
                let _ = tls.shutdown().await;
            }
        });
    }
}
