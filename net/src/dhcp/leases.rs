//! The lease database: who holds which address until when, the names guests gave
//! themselves, and the `leases.json` file that carries all of it across restarts.
//!
//! This file knows nothing about DHCP messages; [`super::server`] decides *whether* an
//! address may be bound and calls `LeaseDb::bind` / `LeaseDb::remove` to record it.
//! The table keeps three invariants that the server relies on:
//! - at most one lease per MAC and one per address (RFC 2131 §4.3.1: a client has one
//!   binding per network), so the table never outgrows the range plus the static hosts;
//! - at most one lease per host name, the newest claim winning (as dnsmasq does), so DNS
//!   answers are unambiguous;
//! - the generation counter moves whenever the set of (name, address) pairs changes.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::config::MacAddr;
use crate::error::{Error, Result};

/// File name of the lease database inside the network's state directory.
pub const LEASE_FILE: &str = "leases.json";

/// Version written to, and required in, the lease file.
const FILE_VERSION: u32 = 1;

/// One binding of an address to a client (RFC 2131 §1.5 "binding", §2.2 "lease").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The client's hardware address (its `chaddr`, which must match the frame's source).
    #[serde(with = "mac_text")]
    pub mac: MacAddr,
    /// The bound address.
    pub ip: Ipv4Addr,
    /// The host name: a static host's configured name, else the client's own (option 12,
    /// RFC 2132 §3.14), validated and lower-cased. Bare label, no domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// When the lease runs out (stored as Unix seconds).
    #[serde(with = "unix_secs")]
    pub expires: SystemTime,
}

/// The on-disk shape of `leases.json`.
#[derive(Serialize, Deserialize)]
struct LeaseFile {
    version: u32,
    leases: Vec<Lease>,
}

/// The lease table and its file.
#[derive(Debug)]
pub(crate) struct LeaseDb {
    path: PathBuf,
    by_ip: BTreeMap<Ipv4Addr, Lease>,
    by_mac: HashMap<MacAddr, Ipv4Addr>,
    by_name: HashMap<String, Ipv4Addr>,
    /// Addresses whose lease ended (expiry or release), by MAC: a returning client gets
    /// the same address back while nobody else holds it, like dnsmasq. Only addresses
    /// that were leased are remembered, and each address for one MAC, so this is
    /// bounded by the table's own bound.
    previous: HashMap<MacAddr, Ipv4Addr>,
    previous_by_ip: HashMap<Ipv4Addr, MacAddr>,
    generation: u64,
}

impl LeaseDb {
    /// Opens `dir/leases.json`, creating `dir` if missing. A missing file is an empty
    /// table. `keep` decides which stored leases still fit the configuration (a lease
    /// for an address that left the range, or that is now another host's static address,
    /// is dropped). Leases already expired at `now` are only remembered as preferences.
    ///
    /// # Errors
    /// [`Error::Io`] when the directory cannot be created; [`Error::Leases`] naming the
    /// file when it cannot be read or is not a lease database.
    pub(crate) fn open(
        dir: &Path,
        now: SystemTime,
        mut keep: impl FnMut(&Lease) -> bool,
    ) -> Result<Self> {
        fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let path = dir.join(LEASE_FILE);
        let mut db = LeaseDb {
            path,
            by_ip: BTreeMap::new(),
            by_mac: HashMap::new(),
            by_name: HashMap::new(),
            previous: HashMap::new(),
            previous_by_ip: HashMap::new(),
            generation: 0,
        };
        let text = match fs::read_to_string(&db.path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(db),
            Err(e) => return Err(db.error(e.to_string())),
        };
        let file: LeaseFile = serde_json::from_str(&text).map_err(|e| db.error(e.to_string()))?;
        if file.version != FILE_VERSION {
            return Err(db.error(format!(
                "version {} is not supported (expected {FILE_VERSION})",
                file.version
            )));
        }
        for mut lease in file.leases {
            if !keep(&lease) {
                tracing::info!(
                    "dropping stored lease {} to {}: no longer fits the configuration",
                    lease.ip,
                    lease.mac
                );
                continue;
            }
            if db.by_ip.contains_key(&lease.ip) || db.by_mac.contains_key(&lease.mac) {
                // A hand-edited file may repeat an address or a MAC; the first one wins
                // so the one-lease-per-address invariant holds.
                tracing::warn!(
                    "{}: ignoring duplicate lease {} to {}",
                    db.path.display(),
                    lease.ip,
                    lease.mac
                );
                continue;
            }
            if lease.expires <= now {
                db.remember(lease.mac, lease.ip);
                continue;
            }
            lease.hostname = lease.hostname.and_then(|h| normalize_hostname(&h));
            db.bind(lease);
        }
        Ok(db)
    }

    fn error(&self, reason: String) -> Error {
        Error::Leases {
            path: self.path.display().to_string(),
            reason,
        }
    }

    /// The file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Leases in address order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = &Lease> {
        self.by_ip.values()
    }

    /// Number of leases.
    pub(crate) fn len(&self) -> usize {
        self.by_ip.len()
    }

    /// The lease on `ip`, if any (expired or not).
    pub(crate) fn by_ip(&self, ip: Ipv4Addr) -> Option<&Lease> {
        self.by_ip.get(&ip)
    }

    /// The lease held by `mac`, if any (expired or not).
    pub(crate) fn by_mac(&self, mac: MacAddr) -> Option<&Lease> {
        self.by_mac.get(&mac).and_then(|ip| self.by_ip.get(ip))
    }

    /// The address `mac` held last, if its lease ended.
    pub(crate) fn previous(&self, mac: MacAddr) -> Option<Ipv4Addr> {
        self.previous.get(&mac).copied()
    }

    /// True when `ip` is remembered as another client's previous address.
    pub(crate) fn remembered_for_other(&self, ip: Ipv4Addr, mac: MacAddr) -> bool {
        self.previous_by_ip.get(&ip).is_some_and(|m| *m != mac)
    }

    /// The address of lease host name `name` (already lower-case).
    pub(crate) fn lookup_name(&self, name: &str) -> Option<Ipv4Addr> {
        self.by_name.get(name).copied()
    }

    /// Bumped whenever the set of (name, address) pairs changes.
    pub(crate) fn generation(&self) -> u64 {
        self.generation
    }

    /// Records `lease`, replacing whatever `lease.mac` or `lease.ip` held before. If the
    /// host name was another lease's, that lease loses it (the newest claim wins).
    /// Returns true when this is a new binding rather than a renewal of the same one.
    pub(crate) fn bind(&mut self, lease: Lease) -> bool {
        if let Some(old) = self.by_ip.get_mut(&lease.ip) {
            if old.mac == lease.mac && old.hostname == lease.hostname {
                // A renewal: only the expiry moves, names are unchanged.
                old.expires = lease.expires;
                return false;
            }
        }
        let old_ip = self.by_mac.get(&lease.mac).copied();
        if let Some(ip) = old_ip {
            self.remove(ip);
        }
        let renewed = old_ip == Some(lease.ip);
        self.remove(lease.ip);
        self.forget(lease.mac, lease.ip);
        if let Some(name) = &lease.hostname {
            if let Some(other) = self.by_name.get(name).copied() {
                if let Some(o) = self.by_ip.get_mut(&other) {
                    tracing::info!("host name {name} moves from {} to {}", o.ip, lease.ip);
                    o.hostname = None;
                }
            }
            self.by_name.insert(name.clone(), lease.ip);
            self.generation += 1;
        }
        self.by_mac.insert(lease.mac, lease.ip);
        self.by_ip.insert(lease.ip, lease);
        !renewed
    }

    /// Removes the lease on `ip`, returning it. Its MAC keeps `ip` as its preference.
    pub(crate) fn release(&mut self, ip: Ipv4Addr) -> Option<Lease> {
        let lease = self.remove(ip)?;
        self.remember(lease.mac, lease.ip);
        Some(lease)
    }

    /// Removes the lease on `ip` without remembering it (a declined address must not be
    /// handed back to the same client).
    pub(crate) fn remove(&mut self, ip: Ipv4Addr) -> Option<Lease> {
        let lease = self.by_ip.remove(&ip)?;
        self.by_mac.remove(&lease.mac);
        if let Some(name) = &lease.hostname {
            if self.by_name.get(name) == Some(&ip) {
                self.by_name.remove(name);
            }
            self.generation += 1;
        }
        Some(lease)
    }

    /// Forgets any preference of `mac`, and any other client's preference for `ip`.
    pub(crate) fn forget(&mut self, mac: MacAddr, ip: Ipv4Addr) {
        if let Some(old) = self.previous.remove(&mac) {
            self.previous_by_ip.remove(&old);
        }
        if let Some(m) = self.previous_by_ip.remove(&ip) {
            self.previous.remove(&m);
        }
    }

    fn remember(&mut self, mac: MacAddr, ip: Ipv4Addr) {
        self.forget(mac, ip);
        self.previous.insert(mac, ip);
        self.previous_by_ip.insert(ip, mac);
    }

    /// Removes every lease that ran out at `now`, returning them; their MACs keep their
    /// addresses as preferences.
    pub(crate) fn expire(&mut self, now: SystemTime) -> Vec<Lease> {
        let gone: Vec<Ipv4Addr> = self
            .by_ip
            .values()
            .filter(|l| l.expires <= now)
            .map(|l| l.ip)
            .collect();
        gone.into_iter().filter_map(|ip| self.release(ip)).collect()
    }

    /// Writes the table to the file atomically: a temporary file in the same directory,
    /// fsync'd, then renamed over the old one, so a crash leaves the old or the new
    /// database and never half of one.
    ///
    /// # Errors
    /// [`Error::Leases`] naming the file.
    pub(crate) fn save(&self) -> Result<()> {
        let file = LeaseFile {
            version: FILE_VERSION,
            leases: self.by_ip.values().cloned().collect(),
        };
        let mut text = serde_json::to_vec_pretty(&file).map_err(|e| self.error(e.to_string()))?;
        text.push(b'\n');
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".{LEASE_FILE}.{}.tmp", std::process::id()));
        let written = File::create(&tmp)
            .and_then(|mut f| {
                f.write_all(&text)?;
                f.sync_all()
            })
            .and_then(|()| fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(self.error(e.to_string()));
        }
        // The rename is only durable once the directory itself is synced; failing that
        // costs at most the latest change after a crash, so it is not an error.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// Turns a client-supplied host name (option 12) into a bare lower-case label, or `None`
/// when it is not a valid one (RFC 1123 §2.1, via [`crate::config::check_hostname`]).
/// Clients may send a fully qualified name or a trailing NUL; only the first label counts,
/// as dnsmasq does.
pub(crate) fn normalize_hostname(raw: &str) -> Option<String> {
    let trimmed = raw.trim_end_matches('\0');
    let label = trimmed.split('.').next().unwrap_or_default();
    crate::config::check_hostname(label).ok()?;
    Some(label.to_ascii_lowercase())
}

/// `MacAddr` as `"aa:bb:cc:dd:ee:ff"`.
mod mac_text {
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    use crate::config::MacAddr;

    pub(super) fn serialize<S: Serializer>(mac: &MacAddr, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(mac)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<MacAddr, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(D::Error::custom)
    }
}

/// `SystemTime` as whole seconds since the Unix epoch.
mod unix_secs {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        // Times before 1970 cannot occur for an expiry computed from the clock; write 0.
        let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        s.serialize_u64(secs)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let secs = u64::deserialize(d)?;
        UNIX_EPOCH
            .checked_add(Duration::from_secs(secs))
            .ok_or_else(|| D::Error::custom(format!("expiry {secs} is out of range")))
    }
}

#[cfg(test)]
/// Seconds from `now` until `t`, 0 when `t` has passed.
pub(crate) fn secs_until(t: SystemTime, now: SystemTime) -> u64 {
    t.duration_since(now).map_or(0, |d| d.as_secs())
}

/// `now + d`, saturating instead of panicking on a clock near the end of time.
pub(crate) fn after(now: SystemTime, d: Duration) -> SystemTime {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(u64::from(u32::MAX))))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dhcp::test_util::TempDir;
    use std::time::UNIX_EPOCH;

    fn mac(n: u8) -> MacAddr {
        MacAddr([0x52, 0x54, 0, 0, 0, n])
    }

    fn lease(n: u8, name: Option<&str>, expires: SystemTime) -> Lease {
        Lease {
            mac: mac(n),
            ip: Ipv4Addr::new(192, 168, 122, n),
            hostname: name.map(str::to_owned),
            expires,
        }
    }

    #[test]
    fn round_trips_through_the_file() {
        let dir = TempDir::new("db");
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut db = LeaseDb::open(&dir.0, now, |_| true).unwrap();
        db.bind(lease(5, Some("vm5"), now + Duration::from_secs(60)));
        db.bind(lease(6, None, now + Duration::from_secs(60)));
        db.save().unwrap();
        let text = fs::read_to_string(dir.0.join(LEASE_FILE)).unwrap();
        assert!(text.contains("\"52:54:00:00:00:05\""), "{text}");
        assert!(text.contains("1700000060"), "{text}");
        let back = LeaseDb::open(&dir.0, now, |_| true).unwrap();
        assert_eq!(
            back.iter().cloned().collect::<Vec<_>>(),
            db.iter().cloned().collect::<Vec<_>>()
        );
        assert_eq!(
            back.lookup_name("vm5"),
            Some(Ipv4Addr::new(192, 168, 122, 5))
        );
        // Expired at load: not a lease, but remembered.
        let later = now + Duration::from_secs(120);
        let back = LeaseDb::open(&dir.0, later, |_| true).unwrap();
        assert_eq!(back.len(), 0);
        assert_eq!(back.previous(mac(5)), Some(Ipv4Addr::new(192, 168, 122, 5)));
        // The filter drops leases that no longer fit.
        let back = LeaseDb::open(&dir.0, now, |l| l.ip.octets()[3] != 5).unwrap();
        assert_eq!(back.len(), 1);
        // No stray temporary files.
        assert_eq!(fs::read_dir(&dir.0).unwrap().count(), 1);
    }

    #[test]
    fn corrupt_or_foreign_files_are_errors_naming_the_path() {
        let dir = TempDir::new("corrupt");
        fs::create_dir_all(&dir.0).unwrap();
        let now = SystemTime::now();
        for bad in [
            "{",
            "[]",
            r#"{"version":2,"leases":[]}"#,
            r#"{"version":1,"leases":[{"mac":"zz","ip":"192.168.122.2","expires":1}]}"#,
            r#"{"version":1,"leases":[{"mac":"52:54:00:00:00:01","ip":"x","expires":1}]}"#,
            r#"{"version":1,"leases":[{"mac":"52:54:00:00:00:01","ip":"192.168.122.2","expires":18446744073709551615}]}"#,
        ] {
            fs::write(dir.0.join(LEASE_FILE), bad).unwrap();
            let e = LeaseDb::open(&dir.0, now, |_| true).unwrap_err();
            assert!(matches!(e, Error::Leases { .. }), "{bad}: {e}");
            assert!(e.to_string().contains(LEASE_FILE), "{e}");
        }
    }

    #[test]
    fn one_lease_per_mac_address_and_name() {
        let dir = TempDir::new("inv");
        let now = SystemTime::now();
        let exp = now + Duration::from_secs(60);
        let mut db = LeaseDb::open(&dir.0, now, |_| true).unwrap();
        let g0 = db.generation();
        assert!(db.bind(lease(5, Some("a"), exp)));
        assert!(db.generation() > g0);
        // Renewal: same binding, no generation change.
        let g1 = db.generation();
        assert!(!db.bind(lease(5, Some("a"), exp + Duration::from_secs(60))));
        assert_eq!(db.generation(), g1);
        assert_eq!(db.len(), 1);
        // The same MAC moving to another address leaves one lease.
        let mut moved = lease(5, Some("a"), exp);
        moved.ip = Ipv4Addr::new(192, 168, 122, 9);
        assert!(db.bind(moved));
        assert_eq!(db.len(), 1);
        assert_eq!(db.lookup_name("a"), Some(Ipv4Addr::new(192, 168, 122, 9)));
        // Another lease claiming the name takes it.
        db.bind(lease(6, Some("a"), exp));
        assert_eq!(db.lookup_name("a"), Some(Ipv4Addr::new(192, 168, 122, 6)));
        assert_eq!(db.by_mac(mac(5)).unwrap().hostname, None);
        // Removing the old holder does not remove the new holder's name.
        db.remove(Ipv4Addr::new(192, 168, 122, 9));
        assert_eq!(db.lookup_name("a"), Some(Ipv4Addr::new(192, 168, 122, 6)));
        // Expiry remembers the address.
        let gone = db.expire(exp + Duration::from_secs(1));
        assert_eq!(gone.len(), 1);
        assert_eq!(db.lookup_name("a"), None);
        assert_eq!(db.previous(mac(6)), Some(Ipv4Addr::new(192, 168, 122, 6)));
        assert!(db.remembered_for_other(Ipv4Addr::new(192, 168, 122, 6), mac(7)));
        assert!(!db.remembered_for_other(Ipv4Addr::new(192, 168, 122, 6), mac(6)));
    }

    #[test]
    fn host_names_are_normalized() {
        assert_eq!(normalize_hostname("MyHost").as_deref(), Some("myhost"));
        assert_eq!(
            normalize_hostname("web.example.org").as_deref(),
            Some("web")
        );
        assert_eq!(normalize_hostname("db\0").as_deref(), Some("db"));
        for bad in ["", "bad_name", "-x", ".x", "\0", &"a".repeat(64)] {
            assert_eq!(normalize_hostname(bad), None, "{bad:?}");
        }
    }
}
