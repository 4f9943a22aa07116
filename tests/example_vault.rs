//! The `vault` example's command line is a contract: run the built example
//! against a real OpenBao as a user would, and talk to it with curl.

#![cfg(feature = "vault")]

mod common;

use std::time::Duration;

use common::bao::Bao;

const NAME: &str = "api.svc.test";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_example_serves_a_certificate_from_openbao() {
    let bao = Bao::start(Duration::from_secs(3600));
    let (token_file, _) = bao.token_file(None);
    let root = bao.dir.join("root.pem");
    std::fs::write(
        &root,
        bao.cli(&["read", "-field=certificate", "pki/issuer/default"]),
    )
    .unwrap();
    let args: Vec<std::ffi::OsString> = vec![
        "--addr".into(),
        bao.addr.clone().into(),
        "--token-file".into(),
        token_file.into(),
        "--mount".into(),
        "pki".into(),
        "--role".into(),
        "svc".into(),
        "--name".into(),
        NAME.into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ];
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let (mut child, port) = common::run_example("vault", &refs).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer = common::pebble::get(&root, NAME, port, "/").await;
        if answer.as_deref() == Ok("ok\n") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not serving: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let body = common::pebble::get(&root, NAME, port, "/certs")
        .await
        .unwrap();
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["last_error"], serde_json::Value::Null, "{report}");
    assert_eq!(report["certificates"][0]["dns_names"][0], NAME, "{report}");
    child.kill().await.unwrap();
    child.wait().await.unwrap();
}
