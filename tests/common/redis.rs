//! A real `redis-server` for the tests that share state through Redis.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::pebble::free_port;
use super::TempDir;

/// The encryption key of the tests' `RedisStorage`s.
pub const KEY: [u8; 32] = *b"certrotate test key, 32 bytes!!!";

/// A `redis-server` on 127.0.0.1, persisting every write (append-only file,
/// fsync always) in its own directory, killed on drop.
pub struct Redis {
    pub port: u16,
    dir: TempDir,
    /// How clients connect: plain, or TLS only (the `--tls-*` arguments).
    listen: Vec<String>,
    child: Option<Child>,
}

impl Redis {
    pub fn start() -> Self {
        Self::start_at(free_port())
    }

    /// A new, empty Redis on `port`.
    pub fn start_at(port: u16) -> Self {
        let mut redis = Self::stopped(port);
        redis.listen = vec!["--port".into(), port.to_string()];
        redis.restart();
        redis
    }

    /// A Redis that speaks TLS only, with `chain` and `key` (PEM) under
    /// `ca`, and whose only user is `user` with `password` (an ACL file;
    /// the default user is off).
    pub fn start_tls(ca: &str, chain: &str, key: &str, user: &str, password: &str) -> Self {
        let mut redis = Self::stopped(free_port());
        let file = |name: &str, contents: &str| {
            let path = redis.dir.join(name);
            std::fs::write(&path, contents).unwrap();
            path.display().to_string()
        };
        let acl = format!("user default off\nuser {user} on >{password} ~* &* +@all\n");
        redis.listen = vec![
            "--port".into(),
            "0".into(),
            "--tls-port".into(),
            redis.port.to_string(),
            "--tls-ca-cert-file".into(),
            file("ca.pem", ca),
            "--tls-cert-file".into(),
            file("chain.pem", chain),
            "--tls-key-file".into(),
            file("key.pem", key),
            "--tls-auth-clients".into(),
            "no".into(),
            "--aclfile".into(),
            file("users.acl", &acl),
        ];
        redis.restart();
        redis
    }

    /// A Redis for `port`, with its own directory, not running yet.
    fn stopped(port: u16) -> Self {
        Self {
            port,
            dir: TempDir::new("redis"),
            listen: Vec::new(),
            child: None,
        }
    }

    /// Kills the server (SIGKILL): clients find the port closed.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts it again on the same port with no data,
    /// as a Redis without persistence (a cache) comes back.
    pub fn restart_empty(&mut self) {
        self.stop();
        // The append-only files and snapshots, not the TLS files beside them.
        for entry in std::fs::read_dir(self.dir.path()).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with("appendonly") || name.ends_with(".rdb") {
                let _ = std::fs::remove_dir_all(&path).or_else(|_| std::fs::remove_file(&path));
            }
        }
        self.restart();
    }

    /// Starts the server again on the same port, with the data it had.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1"])
            .args(&self.listen)
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .args(["--protected-mode", "yes"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server is installed (.ci/run installs it)");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// The raw bytes Redis holds under `key`, quoted by redis-cli.
    pub fn raw(&self, key: &str) -> Vec<u8> {
        self.cli(&["--no-raw", "GET", key])
    }

    /// The bytes Redis holds under `key`, exactly.
    pub fn bytes(&self, key: &str) -> Vec<u8> {
        let mut value = self.cli(&["--raw", "GET", key]);
        // redis-cli ends its output with a line feed of its own.
        value.pop();
        value
    }

    /// Puts `value` under `key` as raw bytes, as someone with write access
    /// to Redis (but not the encryption key) could.
    pub fn set_bytes(&self, key: &str, value: &[u8]) {
        use std::io::Write;
        let mut cli = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "-x", "SET", key])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        cli.stdin.take().unwrap().write_all(value).unwrap();
        assert!(cli.wait().unwrap().success());
    }

    /// The holder of the one renewal lock there is, if any: the value under
    /// `certrotate:lock:*` (`<pid>-<random>`).
    pub fn lock_holder(&self) -> Option<String> {
        let key = self.keys("certrotate:lock:*").pop()?;
        let owner = String::from_utf8(self.cli(&["--raw", "GET", &key])).unwrap();
        Some(owner.trim().to_owned()).filter(|o| !o.is_empty())
    }

    /// Empties Redis (`FLUSHALL`), as a restart without persistence does.
    pub fn flush(&self) {
        self.cli(&["FLUSHALL"]);
    }

    /// Runs a command with redis-cli, as someone with write access to
    /// Redis (but not the encryption key) could.
    pub fn command(&self, args: &[&str]) {
        self.cli(args);
    }

    /// The keys matching `pattern`.
    pub fn keys(&self, pattern: &str) -> Vec<String> {
        let keys = String::from_utf8(self.cli(&["--raw", "KEYS", pattern])).unwrap();
        keys.lines().map(str::to_owned).collect()
    }

    fn cli(&self, args: &[&str]) -> Vec<u8> {
        let output = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success());
        output.stdout
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
