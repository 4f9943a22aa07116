//! Connections on old credentials: after a rotation, a long-lived HTTP/2
//! connection is closed gracefully (GOAWAY) once it reaches its maximum age,
//! and its client moves to the new certificate without a failed request; an
//! HTTP/1 connection closes after the response in flight.

mod common;

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use certrotate::serve::MaxConnectionAge;
use certrotate::source::StaticSource;
use certrotate::{Policy, Rotator, TlsListener};
use common::{push_and_rotate, serial_of, Ca, Leaf, HOST};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

/// Verifies as usual, and records the serial of each leaf it is shown: one
/// per handshake, as the client does not resume sessions.
#[derive(Debug)]
struct Recording {
    inner: Arc<WebPkiServerVerifier>,
    seen: Arc<Mutex<Vec<String>>>,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.seen.lock().unwrap().push(serial_of(leaf));
        self.inner
            .verify_server_cert(leaf, intermediates, name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Serves HTTP/1 and HTTP/2 with `service`, closing each connection
/// gracefully once `max_age` says it is stale, and counting those.
fn serve<S>(
    mut listener: TlsListener,
    max_age: MaxConnectionAge,
    service: S,
    drained: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<()>
where
    S: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<Full<Bytes>>,
            Error = Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    tokio::spawn(async move {
        loop {
            let (tls, _) = listener.accept().await;
            let stale = max_age.connection();
            let (service, drained) = (service.clone(), drained.clone());
            tokio::spawn(async move {
                let http = auto::Builder::new(TokioExecutor::new());
                let connection = http.serve_connection(TokioIo::new(tls), service);
                tokio::pin!(connection);
                tokio::select! {
                    _ = connection.as_mut() => return,
                    () = stale => connection.as_mut().graceful_shutdown(),
                }
                drained.fetch_add(1, Ordering::SeqCst);
                let _ = connection.await;
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_move_to_the_new_certificate_after_the_maximum_age() {
    let ca = Ca::new();
    let first = ca.issue(Leaf::default()).bundle;
    let first_serial = first.info().serial.clone();
    let source = StaticSource::new(first);
    let rotator = Rotator::builder(source.clone(), Policy::default())
        .start()
        .await
        .unwrap();

    // The server: hyper over TLS, each connection closed gracefully once stale.
    let mut tls = rotator.server_config().unwrap();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let listener = TlsListener::new(tcp, Arc::new(tls));
    let max_age = MaxConnectionAge::new(rotator.store(), Duration::from_secs(1));
    let drained = Arc::new(AtomicUsize::new(0));
    let service = hyper::service::service_fn(|_| async {
        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let server = serve(listener, max_age, service, drained.clone());

    // The client: one pooled HTTP/2 connection, reused for every request.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let verifier = Recording {
        inner: WebPkiServerVerifier::builder_with_provider(
            Arc::new(ca.roots()),
            common::provider(),
        )
        .build()
        .unwrap(),
        seen: seen.clone(),
    };
    let mut config = common::client_builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::disabled();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http2()
        .build();
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector);
    let url: hyper::Uri = format!("https://{HOST}:{port}/").parse().unwrap();
    // A request above the last stream id of a GOAWAY was not processed by
    // the server and is to be retried (RFC 9113, 6.8). Go's and .NET's
    // clients do; hyper's does not (hyperium/hyper#2500), so this client
    // does it, for that error only.
    let refused = Arc::new(AtomicUsize::new(0));
    let get = |client: Client<_, Empty<Bytes>>, url: hyper::Uri, refused: Arc<AtomicUsize>| async move {
        let response = loop {
            match client.get(url.clone()).await {
                Ok(response) => break response,
                Err(e) if format!("{e:?}").contains("GoAway(b\"\", NO_ERROR, Remote)") => {
                    refused.fetch_add(1, Ordering::SeqCst);
                }
                Err(e) => return Err(format!("{e:?}")),
            }
        };
        assert_eq!(response.version(), hyper::Version::HTTP_2);
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        assert_eq!(&body.to_bytes()[..], b"ok");
        Ok::<_, String>(())
    };

    // Requests without pause, on two concurrent streams, for 4 s; the
    // rotation happens after 1 s.
    let stop = tokio::time::Instant::now() + Duration::from_secs(4);
    let mut streams = Vec::new();
    for _ in 0..2 {
        let (client, url, refused) = (client.clone(), url.clone(), refused.clone());
        streams.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            while tokio::time::Instant::now() < stop {
                match get(client.clone(), url.clone(), refused.clone()).await {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        std::slice::from_ref(&first_serial),
        "one connection so far"
    );
    let second = ca.issue(Leaf::default()).bundle;
    let second_serial = second.info().serial.clone();
    push_and_rotate(&rotator, &source, second).await;

    let mut total = 0;
    for stream in streams {
        let (ok, failed) = stream.await.unwrap();
        assert!(failed.is_empty(), "failed requests: {failed:?}");
        total += ok;
    }
    let seen = seen.lock().unwrap().clone();
    assert!(total > 100, "only {total} requests");
    assert!(
        refused.load(Ordering::SeqCst) <= 2,
        "at most one refused stream per client stream"
    );
    assert_eq!(
        drained.load(Ordering::SeqCst),
        1,
        "the old connection was drained"
    );
    assert_eq!(
        seen,
        [first_serial, second_serial],
        "the client reconnected once, to the new certificate"
    );
    server.abort();
    rotator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_connections_close_after_the_response_in_flight() {
    let ca = Ca::new();
    let source = StaticSource::new(ca.nth(0));
    let rotator = Rotator::builder(source.clone(), Policy::default())
        .start()
        .await
        .unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    let listener = TlsListener::new(tcp, Arc::new(rotator.server_config().unwrap()));
    let max_age = MaxConnectionAge::new(rotator.store(), Duration::from_millis(500));
    // Each response takes a second: the connection goes stale while one is
    // in flight.
    let service = hyper::service::service_fn(|_| async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
    });
    let server = serve(listener, max_age, service, Arc::default());

    // One keep-alive HTTP/1.1 connection.
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from(HOST).unwrap();
    let tls = tokio_rustls::TlsConnector::from(common::client_config(&ca))
        .connect(name, tcp)
        .await
        .unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    let connection = tokio::spawn(connection);
    let request = || {
        hyper::Request::get("/")
            .header("host", HOST)
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let before = sender.send_request(request()).await.unwrap();
    assert_eq!(before.headers().get("connection"), None, "kept alive");
    before.into_body().collect().await.unwrap();
    // hyper's sender takes the next request only once the connection has
    // finished the last one.
    sender.ready().await.unwrap();

    // The rotation happens during the second request, the maximum age passes
    // before its response: the response completes, says `close`, and the
    // connection ends.
    let in_flight = sender.send_request(request());
    let rotate = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        push_and_rotate(&rotator, &source, ca.nth(10)).await;
    };
    let (response, ()) = tokio::join!(in_flight, rotate);
    let response = response.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["connection"], "close");
    assert_eq!(
        &response.into_body().collect().await.unwrap().to_bytes()[..],
        b"ok"
    );
    tokio::time::timeout(Duration::from_secs(5), connection)
        .await
        .expect("the server closed the connection")
        .unwrap()
        .unwrap();
    server.abort();
    rotator.shutdown().await;
}
