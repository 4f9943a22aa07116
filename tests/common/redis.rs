//! A real `redis-server` for the tests that share state through Redis.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The encryption key of the tests' `RedisStorage`s.
pub const KEY: [u8; 32] = *b"certrotate test key, 32 bytes!!!";

/// A `redis-server` on 127.0.0.1, without persistence, stopped on drop.
pub struct Redis {
    pub port: u16,
    child: Child,
}

impl Redis {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Self::start_at(port)
    }

    pub fn start_at(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        let redis = Self { port, child };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The raw bytes Redis holds under `key`.
    pub fn raw(&self, key: &str) -> Vec<u8> {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--no-raw", "GET", key])
            .output()
            .unwrap();
        assert!(output.status.success());
        output.stdout
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
