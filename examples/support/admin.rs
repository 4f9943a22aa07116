//! Health in the examples: the public port answers `GET /certs` with the
//! public summary (`HealthService`'s default: counts and machine codes, no
//! names, paths or messages); the detailed snapshot is served only with
//! `--admin ADDR`, over plain HTTP on a loopback address, and the example
//! then prints `admin on http://ADDR` after its `listening on` line.

use std::net::SocketAddr;

/// The address of `--admin ADDR`, which must be a loopback address.
pub fn parse(value: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = value
        .parse()
        .map_err(|_| format!("--admin: {value:?} is not an address"))?;
    if !addr.ip().is_loopback() {
        return Err(format!(
            "--admin: {addr} is not a loopback address (the detailed health names every certificate)"
        ));
    }
    Ok(addr)
}

/// Serves `router` over plain HTTP on `addr`, and prints where.
pub async fn serve(addr: SocketAddr, router: axum::Router) -> std::io::Result<()> {
    let tcp = tokio::net::TcpListener::bind(addr).await?;
    println!("admin on http://{}", tcp.local_addr()?);
    tokio::spawn(async move {
        let _ = axum::serve(tcp, router).await;
    });
    Ok(())
}
