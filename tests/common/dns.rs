//! A real DNS server for tests: BIND 9 (`named`, Debian package bind9) on
//! a 127.0.0.1 port found at run time, authoritative for the test zones,
//! taking updates signed with a TSIG key that `tsig-keygen` made; stopped
//! on drop. `dig` (bind9-dnsutils) reads zones back by zone transfer.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::pebble::free_port;
use super::TempDir;

/// A zone a [`Bind`] serves.
pub struct Zone {
    /// Its name (`example.test`).
    pub name: &'static str,
    /// Records beyond the SOA, in zone-file syntax with names relative to
    /// the zone (`ns1 A 127.0.0.1`).
    pub records: Vec<String>,
    /// Whether the test key may write TXT records in it
    /// (`grant KEY zonesub TXT`).
    pub updatable: bool,
}

impl Zone {
    /// A zone served by `ns1` (and `ns2`, when there is a secondary).
    pub fn new(name: &'static str, secondary: bool) -> Self {
        let mut records = vec!["@ NS ns1".to_owned(), "ns1 A 127.0.0.1".to_owned()];
        if secondary {
            records.push("@ NS ns2".into());
            records.push("ns2 A 127.0.0.1".into());
        }
        Self {
            name,
            records,
            updatable: true,
        }
    }

    pub fn record(mut self, record: &str) -> Self {
        self.records.push(record.to_owned());
        self
    }

    pub fn read_only(mut self) -> Self {
        self.updatable = false;
        self
    }
}

/// `named`, running.
pub struct Bind {
    pub dir: TempDir,
    pub addr: SocketAddr,
    /// The key file `tsig-keygen` wrote (the one the server trusts).
    pub key_file: PathBuf,
    child: Child,
}

impl Bind {
    /// A primary for `zones`, trusting a new key. No NOTIFY is sent: a
    /// secondary learns of changes at its refresh only (it lags).
    pub fn primary(zones: Vec<Zone>) -> Self {
        let dir = TempDir::new("bind-primary");
        let key_file = dir.join("certrotate.key");
        let key = Command::new("tsig-keygen")
            .args(["-a", "hmac-sha256", "certrotate"])
            .output()
            .expect("tsig-keygen is installed (Debian package bind9-utils; .ci/run installs it)");
        assert!(key.status.success());
        std::fs::write(&key_file, &key.stdout).unwrap();
        let mut conf = format!("include \"{}\";\n", key_file.display());
        for zone in &zones {
            let mut text = format!(
                "$TTL 60\n@ SOA ns1.{0}. hostmaster.{0}. 1 2 2 600 1\n",
                zone.name
            );
            for record in &zone.records {
                text.push_str(record);
                text.push('\n');
            }
            std::fs::write(dir.join(&format!("{}.db", zone.name)), text).unwrap();
            let policy = match zone.updatable {
                true => "update-policy { grant certrotate zonesub TXT; };",
                false => "",
            };
            conf.push_str(&format!(
                "zone \"{0}\" {{ type primary; file \"{0}.db\"; {policy} }};\n",
                zone.name
            ));
        }
        Self::start(
            dir,
            key_file,
            &conf,
            "recursion no; notify no; allow-transfer { any; };",
        )
    }

    /// A secondary of `zones` from `primary`, asking it for changes every
    /// `refresh`.
    pub fn secondary(primary: &Bind, zones: &[&str], refresh: Duration) -> Self {
        let dir = TempDir::new("bind-secondary");
        let mut conf = String::new();
        for zone in zones {
            conf.push_str(&format!(
                "zone \"{zone}\" {{ type secondary; primaries {{ 127.0.0.1 port {}; }}; file \"{zone}.db\"; }};\n",
                primary.addr.port()
            ));
        }
        let refresh = refresh.as_secs().max(1);
        let options = format!(
            "recursion no; min-refresh-time {refresh}; max-refresh-time {refresh}; allow-transfer {{ any; }};"
        );
        let bind = Self::start(dir, primary.key_file.clone(), &conf, &options);
        for zone in zones {
            bind.wait_for_zone(zone);
        }
        bind
    }

    /// A recursive resolver (as a CA's validation uses) that asks
    /// `primary` for every name and follows CNAMEs across its zones, with
    /// a cache of at most a second.
    pub fn resolver(primary: &Bind) -> Self {
        let dir = TempDir::new("bind-resolver");
        let options = format!(
            "recursion yes; allow-recursion {{ 127.0.0.1; }}; dnssec-validation no; forward only; forwarders {{ 127.0.0.1 port {}; }}; max-cache-ttl 1; max-ncache-ttl 1;",
            primary.addr.port()
        );
        Self::start(dir, primary.key_file.clone(), "", &options)
    }

    fn start(dir: TempDir, key_file: PathBuf, zones: &str, options: &str) -> Self {
        for _ in 0..3 {
            let port = free_port();
            let conf = format!(
                "options {{ directory \"{}\"; listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }}; pid-file none; session-keyfile none; reuseport no; {options} }};\ncontrols {{ }};\n{zones}",
                dir.path().display()
            );
            std::fs::write(dir.join("named.conf"), conf).unwrap();
            let log = std::fs::File::create(dir.join("named.log")).unwrap();
            let mut child = Command::new("named")
                .args(["-g", "-c"])
                .arg(dir.join("named.conf"))
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .expect("named is installed (Debian package bind9; .ci/run installs it)");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            // named logs `running` once up; a port it could not take (in
            // use by another test) is logged, not fatal: another port then.
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let log = loop {
                let log = std::fs::read_to_string(dir.join("named.log")).unwrap_or_default();
                if log.lines().any(|line| line.ends_with(" running")) {
                    break Some(log);
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break None;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "named did not come up: {log}"
                );
                std::thread::sleep(Duration::from_millis(50));
            };
            match log {
                Some(log) if !log.contains("address in use") => {
                    return Self {
                        dir,
                        addr,
                        key_file,
                        child,
                    }
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        panic!(
            "named did not start: {}",
            std::fs::read_to_string(dir.join("named.log")).unwrap_or_default()
        )
    }

    fn wait_for_zone(&self, zone: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while self.dig(&["SOA", zone, "+short"]).trim().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "{zone} not transferred"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What `dig @this ARGS` prints.
    pub fn dig(&self, args: &[&str]) -> String {
        let output = Command::new("dig")
            .arg(format!("@{}", self.addr.ip()))
            .args([
                "-p",
                &self.addr.port().to_string(),
                "+tcp",
                "+time=5",
                "+tries=1",
            ])
            .args(args)
            .output()
            .expect("dig is installed (Debian package bind9-dnsutils; .ci/run installs it)");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// The TXT values at `name`, as this server serves them.
    pub fn txt(&self, name: &str) -> Vec<String> {
        let mut values: Vec<String> = self
            .dig(&["TXT", name, "+short"])
            .lines()
            .map(|line| line.trim_matches('"').to_owned())
            .filter(|line| !line.is_empty())
            .collect();
        values.sort();
        values
    }

    /// Every TXT record in `zone`, by zone transfer (AXFR).
    pub fn txt_records(&self, zone: &str) -> Vec<String> {
        let transfer = self.dig(&["AXFR", zone, "+nocmd", "+nostats", "+nocomments"]);
        assert!(
            transfer.contains("SOA"),
            "no zone transfer of {zone}: {transfer}"
        );
        transfer
            .lines()
            .filter(|line| line.split_whitespace().nth(3) == Some("TXT"))
            .map(str::to_owned)
            .collect()
    }

    /// The zone's serial number: how many changes the primary took.
    pub fn serial(&self, zone: &str) -> u64 {
        let soa = self.dig(&["SOA", zone, "+short"]);
        soa.split_whitespace()
            .nth(2)
            .and_then(|serial| serial.parse().ok())
            .unwrap_or_else(|| panic!("no SOA for {zone}: {soa}"))
    }

    /// Stops (SIGSTOP) or resumes (SIGCONT) the server: one that hangs.
    pub fn freeze(&self, frozen: bool) {
        super::freeze(&self.child, frozen);
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        super::stop(&mut self.child);
    }
}
