//! The `vault` example's command line is a contract: run the built example
//! against a real OpenBao as a user would, and talk to it with curl.

#![cfg(feature = "vault")]

mod common;

use std::time::Duration;

use common::bao::Bao;

const NAME: &str = "api.svc.test";

/// The example's command line for `bao`, then `rest`.
fn args(bao: &Bao, token_file: std::path::PathBuf, rest: &[&str]) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec![
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
    args.extend(rest.iter().map(Into::into));
    args
}

/// The mount's default issuer, as a PEM file clients trust.
fn issuer_root(bao: &Bao) -> std::path::PathBuf {
    let root = bao.dir.join("root.pem");
    let pem = bao.cli(&["read", "-field=certificate", "pki/issuer/default"]);
    std::fs::write(&root, pem).unwrap();
    root
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_example_serves_a_certificate_from_openbao() {
    let bao = Bao::start(Duration::from_secs(3600));
    let (token_file, _) = bao.token_file(None);
    let root = issuer_root(&bao);
    let args = args(&bao, token_file, &[]);
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

/// `--client-trust`: a client with a certificate from the mount is
/// served; one without is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_example_requires_clients_of_the_mount() {
    let bao = Bao::start(Duration::from_secs(3600));
    let (token_file, _) = bao.token_file(None);
    let root = issuer_root(&bao);
    let (chain, private_key) = bao.issue_client("pki");
    let (cert, key) = (bao.dir.join("client.pem"), bao.dir.join("client.key"));
    std::fs::write(&cert, chain).unwrap();
    std::fs::write(&key, private_key).unwrap();
    let args = args(&bao, token_file, &["--client-trust"]);
    let refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let (mut child, port) = common::run_example("vault", &refs).await;
    let curl = |with_cert: bool| {
        let mut command = std::process::Command::new("curl");
        command
            .args(["--silent", "--show-error", "--max-time", "5"])
            .args(["--resolve", &format!("{NAME}:{port}:127.0.0.1"), "--cacert"])
            .arg(&root);
        if with_cert {
            command.arg("--cert").arg(&cert).arg("--key").arg(&key);
        }
        let output = command
            .arg(format!("https://{NAME}:{port}/"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while curl(true) != "ok\n" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not serving clients of the mount"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(curl(false), "", "served a client without a certificate");
    child.kill().await.unwrap();
    child.wait().await.unwrap();
}
