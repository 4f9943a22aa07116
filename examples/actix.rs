//! actix-web with certrotate's rotating certificate: `bind_rustls_0_23`
//! takes the rotator's `ServerConfig`, whose certificate resolver follows
//! every rotation (no restart, no dropped connection). Needs no setup: a
//! development CA issues short-lived certificates.
//!
//! ```text
//! cargo run --example actix -- [--listen 127.0.0.1:8443] [--lifetime 30] [--ca-out ca.pem]
//! ```
//!
//! Prints `listening on https://HOST:PORT`, then `server: serving SERIAL`
//! at each certificate. `GET /` answers `ok`. (Health is not served on
//! the public port: see the axum examples' public `/certs`.)

use actix_web::{web, App, HttpServer};

#[path = "support/stack.rs"]
mod stack;

#[actix_web::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = stack::Args::parse("actix");
    let (_ca, rotator) = stack::dev_ca(&args).await?;

    // The one line that matters: actix's TLS config, from the rotator.
    let tls = rotator.server_config()?;

    let server = HttpServer::new(|| App::new().route("/", web::get().to(|| async { "ok\n" })))
        .workers(2)
        .bind_rustls_0_23(args.listen, tls)?;
    println!("listening on https://{}", server.addrs()[0]);
    stack::print_rotations("server", &rotator);
    server.run().await?;
    Ok(())
}
