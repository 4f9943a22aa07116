//! The `mtls` example runs as documented: short leaves on both ends and CA
//! rollovers while its client calls, with no failed request.

#![cfg(feature = "ca")]

mod common;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_example_rotates_and_rolls_over_without_a_failed_request() {
    let run = tokio::process::Command::new(common::example("mtls"))
        .args(["--lifetime", "2", "--rollover", "6", "--for", "14"])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the example did not stop")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.starts_with("listening on https://127.0.0.1:"),
        "{stdout}"
    );
    // Two rollovers: each prepares (a new generation) and retires (another).
    let generations = stdout.matches("trust bundle: generation").count();
    assert!(generations >= 3, "{generations} trust changes:\n{stdout}");
    assert!(
        stdout.matches("client certificate: now").count() >= 5,
        "{stdout}"
    );
    let done = stdout.lines().last().unwrap();
    assert!(
        done.starts_with("done: ") && done.ends_with(" ok, 0 failed"),
        "{done}"
    );
}
