//! The `mtls` example runs as documented: short leaves on both ends and CA
//! rollovers while its client calls, with no failed request.

#![cfg(feature = "ca")]

mod common;

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_example_rotates_and_rolls_over_without_a_failed_request() {
    let args = ["--lifetime", "2", "--rollover", "6", "--for", "14"];
    let stdout = common::example_output("mtls", &args, Duration::from_secs(60)).await;
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
