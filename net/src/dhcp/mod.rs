//! The network's DHCPv4 server (RFC 2131, options from RFC 2132), behaving like the
//! dnsmasq that libvirt runs for its default network.
//!
//! The module owns address assignment on the guest subnet and everything it implies:
//! - [`server`]: turning one client message into at most one reply, choosing addresses
//!   (static hosts, previous leases, requested addresses, lowest free), pending offers,
//!   quarantined (declined) addresses, and the counters;
//! - [`leases`]: the lease table, the host names guests gave themselves (which the DNS
//!   forwarder answers through [`DhcpServer::lookup_name`] / [`DhcpServer::lookup_ip`]),
//!   and its file `leases.json` in the state directory.
//!
//! It does not touch sockets or frames: the gateway hands it UDP payloads addressed to
//! port 67 together with the frame's source MAC, and sends back what [`DhcpReply`] says.

pub mod leases;
pub mod server;

pub use leases::Lease;
pub use server::{DhcpReply, DhcpServer, DhcpStats};

/// UDP port the server listens on (RFC 2131 §4.1).
pub const SERVER_PORT: u16 = 67;
/// UDP port replies go to (RFC 2131 §4.1).
pub const CLIENT_PORT: u16 = 68;

#[cfg(test)]
pub(crate) mod test_util {
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};

    /// A fresh directory path under the system temp dir, removed with its contents on drop.
    pub(crate) struct TempDir(pub PathBuf);

    impl TempDir {
        pub(crate) fn new(tag: &str) -> Self {
            static N: AtomicU32 = AtomicU32::new(0);
            let nanos = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            TempDir(std::env::temp_dir().join(format!(
                "skiff-dhcp-{tag}-{}-{nanos}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            )))
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
