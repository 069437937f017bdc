//! The local name table: the guests' host names (from DHCP leases and `--dhcp-host`) and
//! their addresses, answered at the gateway like dnsmasq answers its DHCP names.
//!
//! This module owns only the mapping; [`super::local`] turns it into DNS answers. The table is
//! shared between the event loop (UDP, DHCP) and the DNS-over-TCP thread as [`SharedNames`].

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::{Arc, RwLock};

use crate::config::check_hostname;

/// Guest host names and their IPv4 addresses, one name per address and one address per name.
///
/// Names are single DNS labels (RFC 1035 §2.3.1, RFC 1123 §2.1) kept in lowercase, because
/// DNS name comparison is case-insensitive (RFC 1035 §2.3.3).
#[derive(Default, Clone, Debug)]
pub struct Names {
    by_name: HashMap<String, Ipv4Addr>,
    by_ip: HashMap<Ipv4Addr, String>,
}

/// The name table shared between the event loop and the DNS-over-TCP thread.
pub type SharedNames = Arc<RwLock<Names>>;

impl Names {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps `name` (a single label, any case, an optional trailing dot) to `ip`.
    ///
    /// The mapping stays one-to-one, like dnsmasq's DHCP names: a name given to a new address
    /// leaves its old address, and an address that gets a new name loses its old one. A name
    /// that is not a host-name label (RFC 1123 §2.1) is ignored: names usually come from a
    /// guest's DHCP request, and a dotted or odd name must not shadow names outside the table.
    pub fn insert(&mut self, name: &str, ip: Ipv4Addr) {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        if let Err(e) = check_hostname(&name) {
            tracing::debug!("dns: not adding local name for {ip}: {e}");
            return;
        }
        if let Some(old_ip) = self.by_name.remove(&name) {
            self.by_ip.remove(&old_ip);
        }
        if let Some(old_name) = self.by_ip.remove(&ip) {
            self.by_name.remove(&old_name);
        }
        self.by_name.insert(name.clone(), ip);
        self.by_ip.insert(ip, name);
    }

    /// Forgets the name of `ip` (its lease ended), returning it.
    pub fn remove_ip(&mut self, ip: Ipv4Addr) -> Option<String> {
        let name = self.by_ip.remove(&ip)?;
        self.by_name.remove(&name);
        Some(name)
    }

    /// The address of `name` (a single label, compared case-insensitively).
    pub fn by_name(&self, name: &str) -> Option<Ipv4Addr> {
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            self.by_name.get(&name.to_ascii_lowercase()).copied()
        } else {
            self.by_name.get(name).copied()
        }
    }

    /// The name of `ip` (lowercase), for PTR answers (RFC 1035 §3.5).
    pub fn by_ip(&self, ip: Ipv4Addr) -> Option<&str> {
        self.by_ip.get(&ip).map(String::as_str)
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// True when the table holds no name.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_keeps_one_to_one_and_lowercase() {
        let a = Ipv4Addr::new(192, 168, 122, 10);
        let b = Ipv4Addr::new(192, 168, 122, 11);
        let mut n = Names::new();
        n.insert("Web1.", a);
        assert_eq!(n.by_name("web1"), Some(a));
        assert_eq!(n.by_name("WEB1"), Some(a));
        assert_eq!(n.by_ip(a), Some("web1"));
        // The name moves to another address.
        n.insert("web1", b);
        assert_eq!(n.by_ip(a), None);
        assert_eq!(n.by_ip(b), Some("web1"));
        // The address gets another name.
        n.insert("db", b);
        assert_eq!(n.by_name("web1"), None);
        assert_eq!(n.by_name("db"), Some(b));
        assert_eq!(n.len(), 1);
        // Not labels: ignored.
        for bad in ["a.b", "", "-x", "x_y", "é"] {
            n.insert(bad, a);
        }
        assert_eq!(n.len(), 1);
        assert_eq!(n.remove_ip(b).as_deref(), Some("db"));
        assert!(n.is_empty());
    }
}
