//! The `operations` example runs as documented: health and metrics answer
//! over TLS, and `SIGHUP` rotates.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::WITHIN;

/// GETs `path` from the example with curl, trusting its CA: (status, body).
async fn get(port: u16, ca: &PathBuf, path: &str) -> (u16, String) {
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(ca)
        .args([
            "-w",
            "\n%{http_code}",
            &format!("https://localhost:{port}{path}"),
        ])
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.parse().unwrap(), body.to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_example_serves_health_and_metrics_and_rotates_on_sighup() {
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--lifetime",
        "600",
        "--max-age",
        "1",
    ];
    let (child, port) = common::run_example("operations", &args.map(AsRef::as_ref)).await;
    let pid = child.id().unwrap();
    let ca = std::env::temp_dir().join(format!("certrotate-operations-{pid}/ca.pem"));

    let (status, body) = get(port, &ca, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["alert"], "ok");

    let rotated = |n: u32| {
        format!(
            "certrotate_rotations_total{{slot=\"default\",source=\"ca\",result=\"rotated\"}} {n}\n"
        )
    };
    let (status, metrics) = get(port, &ca, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains(&rotated(1)), "{metrics}");
    assert!(
        metrics.contains("certrotate_certificate_expiry_timestamp_seconds{slot=\"default\"}"),
        "{metrics}"
    );

    let kill = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let (_, metrics) = get(port, &ca, "/metrics").await;
        if metrics.contains(&rotated(2)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "SIGHUP did not rotate:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(child);
    let _ = std::fs::remove_dir_all(ca.parent().unwrap());
}
