//! `SIGHUP` rotates: the process signals itself, the rotator fetches and
//! installs the newer certificate. (Its own test binary: the handler is
//! process-wide.)

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use certrotate::events::Trigger;
use certrotate::{CertBundle, CertSource, Policy, RotationEvent, Rotator, SourceError};
use common::Ca;

/// A bundle that changes without telling anyone: only a trigger fetches it.
#[derive(Clone)]
struct Quiet(Arc<Mutex<CertBundle>>);

impl CertSource for Quiet {
    async fn fetch(&self) -> Result<CertBundle, SourceError> {
        Ok(self.0.lock().unwrap().clone())
    }
    fn describe(&self) -> String {
        "quiet source".into()
    }
}

#[tokio::test]
async fn sighup_rotates_now() {
    let ca = Ca::new();
    let source = Quiet(Arc::new(Mutex::new(ca.nth(0))));
    let rotator = Rotator::builder(source.clone(), Policy::default())
        .start()
        .await
        .unwrap();
    let hangups = rotator.rotate_on_sighup().unwrap();
    let mut events = rotator.subscribe();
    for offset in [10, 20] {
        let next = ca.nth(offset);
        let serial = next.info().serial.clone();
        *source.0.lock().unwrap() = next;
        let status = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let attempt = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match events.recv().await.unwrap() {
                    RotationEvent::Attempted { trigger, .. } => {
                        assert_eq!(trigger, Trigger::Manual)
                    }
                    RotationEvent::Rotated { new, .. } => return new,
                    _ => {}
                }
            }
        });
        assert_eq!(attempt.await.expect("SIGHUP did not rotate").serial, serial);
    }
    rotator.shutdown().await;
    tokio::time::timeout(Duration::from_secs(5), hangups)
        .await
        .expect("the SIGHUP task stops with the rotator")
        .unwrap();
}
