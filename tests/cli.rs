//! The `certrotate` tool: exit codes and reasons of `check` on the policy
//! tests' bad inputs, `inspect`, `probe` against a live server on
//! 127.0.0.1, and `ca init`/`ca issue`.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use certrotate::source::StaticSource;
use certrotate::{Policy, Rotator};
use common::{Ca, Leaf, TempDir, HOST};
use rcgen::ExtendedKeyUsagePurpose;

const DAY: Duration = Duration::from_secs(86_400);

fn certrotate(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_certrotate"))
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

fn json(output: &Output) -> serde_json::Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(output)))
}

fn pem_of(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}

/// `check` on a pair: (exit code, refusal codes from `--json`), after
/// checking that the human output has one `refused:` line per reason.
fn check(dir: &TempDir, cert: &str, key: &str, args: &[&str]) -> (i32, Vec<String>) {
    std::fs::write(dir.join("c.pem"), cert).unwrap();
    std::fs::write(dir.join("k.pem"), key).unwrap();
    let mut all = vec!["check", "--cert", "c.pem", "--key", "k.pem"];
    all.extend_from_slice(args);
    let human = certrotate(&all, dir.path());
    all.push("--json");
    let machine = certrotate(&all, dir.path());
    assert_eq!(human.status.code(), machine.status.code());
    let report = json(&machine);
    let codes: Vec<String> = report["refusals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["code"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(report["accepted"], codes.is_empty());
    let lines: Vec<_> = stdout(&human).lines().map(str::to_owned).collect();
    if codes.is_empty() {
        assert!(
            lines.len() == 1 && lines[0].starts_with("accepted: "),
            "{lines:?}"
        );
    } else {
        assert_eq!(lines.len(), codes.len(), "{lines:?}");
        assert!(
            lines.iter().all(|l| l.starts_with("refused: ")),
            "{lines:?}"
        );
    }
    (machine.status.code().unwrap(), codes)
}

/// What is wrong, chain PEM, key PEM, extra arguments, expected refusal codes.
type Case<'a> = (&'a str, String, String, Vec<&'a str>, Vec<&'a str>);

#[test]
fn check_accepts_a_good_pair_and_names_every_reason_to_refuse_a_bad_one() {
    let dir = TempDir::new("cli-check");
    let ca = Ca::new();
    let other = Ca::new_named("some other CA");
    std::fs::write(dir.join("roots.pem"), &ca.pem).unwrap();
    std::fs::write(dir.join("other-roots.pem"), &other.pem).unwrap();
    let now = SystemTime::now();
    let good = ca.issue(Leaf::default());

    assert_eq!(
        check(
            &dir,
            &good.cert_pem,
            &good.key_pem,
            &["--name", HOST, "--roots", "roots.pem"]
        ),
        (0, vec![])
    );

    let leaf = |leaf: Leaf| ca.issue(leaf);
    let (rsa_cert, rsa_key) = common::rsa_1024_pem();
    let out_of_order = good.cert_pem.clone() + &pem_of(&other.der);
    let forged = good.cert_pem.clone() + &pem_of(&Ca::new().der);
    let expired = leaf(Leaf::default().lifetime(now - 3 * DAY, now - DAY));
    let future = leaf(Leaf::default().lifetime(now + DAY, now + 3 * DAY));
    let ca_leaf = leaf(Leaf {
        is_ca: true,
        ..Leaf::default()
    });
    let client_only = leaf(Leaf {
        eku: vec![ExtendedKeyUsagePurpose::ClientAuth],
        ..Leaf::default()
    });
    let nameless = leaf(Leaf::default().names(&[]));
    let cases: Vec<Case> = vec![
        (
            "wrong key",
            good.cert_pem.clone(),
            expired.key_pem.clone(),
            vec![],
            vec!["key_mismatch"],
        ),
        (
            "expired",
            expired.cert_pem.clone(),
            expired.key_pem.clone(),
            vec![],
            vec!["expired"],
        ),
        (
            "not yet valid",
            future.cert_pem.clone(),
            future.key_pem.clone(),
            vec![],
            vec!["not_yet_valid"],
        ),
        (
            "expires too soon",
            good.cert_pem.clone(),
            good.key_pem.clone(),
            vec!["--min-valid", "2d"],
            vec!["expires_too_soon"],
        ),
        (
            "wrong host",
            good.cert_pem.clone(),
            good.key_pem.clone(),
            vec!["--name", "other.example"],
            vec!["name_not_covered"],
        ),
        (
            "CA as leaf",
            ca_leaf.cert_pem.clone(),
            ca_leaf.key_pem.clone(),
            vec![],
            vec!["ca_certificate"],
        ),
        (
            "client only",
            client_only.cert_pem.clone(),
            client_only.key_pem.clone(),
            vec![],
            vec!["not_for_server_auth"],
        ),
        ("RSA-1024", rsa_cert, rsa_key, vec![], vec!["weak_key"]),
        (
            "chain out of order",
            out_of_order,
            good.key_pem.clone(),
            vec![],
            vec!["chain_out_of_order"],
        ),
        (
            "untrusted",
            good.cert_pem.clone(),
            good.key_pem.clone(),
            vec!["--roots", "other-roots.pem"],
            vec!["untrusted"],
        ),
        (
            "forged issuer",
            forged,
            good.key_pem.clone(),
            vec![],
            vec!["probe_failed"],
        ),
        (
            "no names",
            nameless.cert_pem.clone(),
            nameless.key_pem.clone(),
            vec![],
            vec!["no_subject_alt_names"],
        ),
        (
            "swapped",
            good.key_pem.clone(),
            good.cert_pem.clone(),
            vec![],
            vec!["swapped"],
        ),
        (
            "junk",
            "\u{0}\u{1}junk bytes\n".into(),
            good.key_pem.clone(),
            vec![],
            vec!["not_pem"],
        ),
        (
            "empty",
            String::new(),
            good.key_pem.clone(),
            vec![],
            vec!["empty"],
        ),
        (
            "several reasons",
            good.cert_pem.clone(),
            good.key_pem.clone(),
            vec![
                "--name",
                "a.example",
                "--name",
                HOST,
                "--name",
                "b.example",
                "--min-valid",
                "30d",
            ],
            vec!["expires_too_soon", "name_not_covered", "name_not_covered"],
        ),
    ];
    for (what, cert, key, args, expected) in cases {
        let (code, codes) = check(&dir, &cert, &key, &args);
        assert_eq!(
            (code, codes),
            (1, expected.iter().map(|c| c.to_string()).collect()),
            "{what}"
        );
    }

    // A file that cannot be read is refused, as the library would.
    let missing = certrotate(
        &["check", "--cert", "nope.pem", "--key", "k.pem"],
        dir.path(),
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stdout(&missing).contains("cannot read nope.pem"),
        "{}",
        stdout(&missing)
    );
}

#[test]
fn usage_errors_exit_2_with_one_line() {
    let dir = TempDir::new("cli-usage");
    for args in [
        &["check", "--cert", "c.pem"][..],
        &[
            "check",
            "--cert",
            "c.pem",
            "--key",
            "k.pem",
            "--min-valid",
            "3 fortnights",
        ],
        &[
            "check",
            "--cert",
            "c.pem",
            "--key",
            "k.pem",
            "--roots",
            "missing-roots.pem",
        ],
        &[
            "check",
            "--cert",
            "c.pem",
            "--key",
            "k.pem",
            "--name",
            "not a name!",
        ],
        &["probe", "no-port"],
        &["frobnicate"],
    ] {
        let output = certrotate(args, dir.path());
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let err = stderr(&output);
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.starts_with("certrotate: "), "{err}");
    }
}

#[test]
fn inspect_summarizes_a_chain() {
    let dir = TempDir::new("cli-inspect");
    let ca = Ca::new();
    let leaf = ca.issue(Leaf::default().names(&[HOST, "127.0.0.1"]));
    std::fs::write(dir.join("chain.pem"), leaf.cert_pem.clone() + &ca.pem).unwrap();
    let human = certrotate(&["inspect", "chain.pem"], dir.path());
    assert_eq!(human.status.code(), Some(0));
    let text = stdout(&human);
    for expected in [
        "chain.pem #0",
        "names:    localhost, 127.0.0.1",
        "issuer:   CN=certrotate test CA",
        "key:      ECDSA P-256",
        "h left",
        "chain.pem #1",
        "CA:       yes",
        &leaf.bundle.info().fingerprint_sha256,
    ] {
        assert!(text.contains(expected), "{expected:?} in\n{text}");
    }
    let machine = json(&certrotate(&["inspect", "chain.pem", "--json"], dir.path()));
    assert_eq!(machine.as_array().unwrap().len(), 2);
    assert_eq!(
        machine[0]["certificate"]["serial"],
        leaf.bundle.info().serial.as_str()
    );
    assert!(machine[0]["remaining_seconds"].as_u64().unwrap() > 23 * 3600);

    std::fs::write(dir.join("junk.pem"), "junk").unwrap();
    let bad = certrotate(&["inspect", "junk.pem"], dir.path());
    assert_eq!(bad.status.code(), Some(1));
    assert_eq!(
        stderr(&bad).trim(),
        "certrotate: junk.pem holds no PEM certificate"
    );
}

/// What a certificate says is shown escaped: a subject carrying terminal
/// escape sequences or a bidirectional override cannot rewrite the screen.
/// A warning window too large to count in seconds is a usage error, not a
/// wrapped number.
#[test]
fn certificate_text_is_escaped_and_warn_days_are_bounded() {
    let dir = TempDir::new("cli-escapes");
    let ca = common::Ca::new_named("evil\u{1b}[2J\u{202e}gnp.exe");
    std::fs::write(dir.join("ca.pem"), &ca.pem).unwrap();
    let output = certrotate(&["inspect", "ca.pem"], dir.path());
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(
        !text.contains('\u{1b}') && !text.contains('\u{202e}'),
        "{text:?}"
    );
    assert!(text.contains("evil\\u{1b}[2J\\u{202e}gnp.exe"), "{text}");

    let huge = certrotate(
        &["probe", "127.0.0.1:9", "--warn-days", "213503982334601"],
        dir.path(),
    );
    assert_eq!(huge.status.code(), Some(2), "{}", stderr(&huge));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_reports_the_served_chain_and_the_warning_window() {
    let dir = TempDir::new("cli-probe");
    let ca = Ca::new();
    let other = Ca::new_named("some other CA");
    std::fs::write(dir.join("roots.pem"), &ca.pem).unwrap();
    std::fs::write(dir.join("other-roots.pem"), &other.pem).unwrap();
    let served = ca.issue(Leaf::default()).bundle;
    let rotator = Rotator::builder(StaticSource::new(served.clone()), Policy::default())
        .start()
        .await
        .unwrap();
    let server = common::serve(Arc::new(rotator.server_config().unwrap())).await;
    let addr = server.addr.to_string();
    let probe = |extra: &'static [&'static str]| {
        let (addr, dir) = (addr.clone(), dir.path().to_owned());
        async move {
            tokio::task::spawn_blocking(move || {
                let mut args = vec!["probe", addr.as_str(), "--servername", HOST];
                args.extend_from_slice(extra);
                certrotate(&args, &dir)
            })
            .await
            .unwrap()
        }
    };

    // The 24 h certificate is outside a 0-day window, inside a 2-day one.
    let ok = probe(&["--roots", "roots.pem", "--warn-days", "0", "--json"]).await;
    assert_eq!(ok.status.code(), Some(0), "{}", stdout(&ok));
    let report = json(&ok);
    assert_eq!(report["ok"], true);
    assert_eq!(report["chain"][0]["serial"], served.info().serial.as_str());
    let warn = probe(&["--roots", "roots.pem", "--warn-days", "2"]).await;
    assert_eq!(warn.status.code(), Some(1));
    assert!(
        stdout(&warn).contains("within the 2-day warning window"),
        "{}",
        stdout(&warn)
    );

    // Not trusted: the chain is still reported, and the exit code is 3.
    let untrusted = probe(&["--roots", "other-roots.pem", "--json"]).await;
    assert_eq!(untrusted.status.code(), Some(3));
    let report = json(&untrusted);
    assert_eq!(report["chain"][0]["serial"], served.info().serial.as_str());
    assert!(
        report["verdict"]
            .as_str()
            .unwrap()
            .contains("TLS handshake"),
        "{report}"
    );

    // Nobody listening.
    drop(server);
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closed_addr = closed.local_addr().unwrap().to_string();
    drop(closed);
    let down = tokio::task::spawn_blocking({
        let dir = dir.path().to_owned();
        move || {
            certrotate(
                &[
                    "probe",
                    &closed_addr,
                    "--roots",
                    "roots.pem",
                    "--timeout",
                    "2s",
                ],
                &dir,
            )
        }
    })
    .await
    .unwrap();
    assert_eq!(down.status.code(), Some(3));
    assert!(
        stdout(&down).contains("cannot connect"),
        "{}",
        stdout(&down)
    );
    rotator.shutdown().await;
}

#[test]
fn ca_init_and_issue_make_a_pair_that_check_accepts() {
    let dir = TempDir::new("cli-ca");
    let init = certrotate(&["ca", "init", "--dir", "ca"], dir.path());
    assert_eq!(init.status.code(), Some(0), "{}", stderr(&init));
    assert_eq!(stdout(&init).trim(), "ca/ca.crt");
    let issue = certrotate(
        &[
            "ca",
            "issue",
            "--dir",
            "ca",
            "--name",
            HOST,
            "--name",
            "127.0.0.1",
            "--validity",
            "30d",
            "--cert-out",
            "tls.crt",
            "--key-out",
            "tls.key",
        ],
        dir.path(),
    );
    assert_eq!(issue.status.code(), Some(0), "{}", stderr(&issue));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("tls.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let mode = std::fs::metadata(dir.join("ca/ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let check = certrotate(
        &[
            "check",
            "--cert",
            "tls.crt",
            "--key",
            "tls.key",
            "--name",
            HOST,
            "--name",
            "127.0.0.1",
            "--roots",
            "ca/ca.crt",
            "--min-valid",
            "29d",
        ],
        dir.path(),
    );
    assert_eq!(check.status.code(), Some(0), "{}", stdout(&check));

    let no_ca = certrotate(
        &[
            "ca",
            "issue",
            "--dir",
            "elsewhere",
            "--name",
            HOST,
            "--cert-out",
            "a",
            "--key-out",
            "b",
        ],
        dir.path(),
    );
    assert_eq!(no_ca.status.code(), Some(1));
    assert!(
        stderr(&no_ca).contains("there is no CA in elsewhere"),
        "{}",
        stderr(&no_ca)
    );
}

/// Files named on the command line are read like every file the library
/// reads: a FIFO or a device is refused at once (no hang), a file over
/// 1 MiB is not read.
#[cfg(unix)]
#[test]
fn hostile_files_on_the_command_line_are_refused_without_reading_them() {
    let dir = TempDir::new("cli-hostile");
    let fifo = dir.join("fifo.pem");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let big = dir.join("big.pem");
    std::fs::File::create(&big)
        .unwrap()
        .set_len(64 << 30)
        .unwrap();
    for (file, says) in [
        (fifo.to_str().unwrap(), "not a regular file"),
        ("/dev/zero", "not a regular file"),
        (big.to_str().unwrap(), "over the 1 MiB limit"),
    ] {
        // Under a 4 GiB address-space limit and a 10 s timeout, so that a
        // regression fails here instead of hurting the machine.
        let output = Command::new("sh")
            .args(["-c", "ulimit -v 4194304; exec timeout 10 \"$0\" \"$@\""])
            .arg(env!("CARGO_BIN_EXE_certrotate"))
            .args(["inspect", file])
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{file}");
        assert!(stderr.contains(says), "{file}: {stderr}");
    }
}
