//! The examples' `serving SERIAL` lines: one for each certificate of a
//! rotator's slot, the one already serving first.

use tokio::sync::broadcast::error::RecvError;

/// Prints `serving SERIAL` for each certificate `rotator` serves, in a
/// task of its own, until the rotator stops.
pub fn print(rotator: certrotate::Rotator) {
    let mut events = rotator.subscribe();
    tokio::spawn(async move {
        let mut printed = String::new();
        loop {
            if let Some(cert) = rotator.current().filter(|c| c.serial != printed) {
                println!("serving {}", cert.serial);
                printed.clone_from(&cert.serial);
            }
            if let Err(RecvError::Closed) = events.recv().await {
                break;
            }
        }
    });
}
