//! skiff's NAT network: libvirt's default network (192.168.122.0/24, gateway .1, DHCP .2–.254,
//! DNS, masquerade) in user space, without privileges.
//!
//! The crate owns everything between an Ethernet frame arriving on a port and a host socket:
//! - [`switch`]: the L2 switch (ports, MAC learning with ageing, flooding);
//! - [`gateway`]: the network's own address: ARP, ICMP echo, and dispatch to the services;
//! - [`dhcp`]: the DHCPv4 server and its lease database (RFC 2131/2132);
//! - [`dns`]: the DNS forwarder and the local guest names (RFC 1035);
//! - [`nat`]: TCP, UDP and ICMP echo translated to host sockets, and port forwards;
//! - [`port`]: the clients of the switch: QEMU stream sockets and TAP devices;
//! - [`network`]: the single-threaded event loop that ties them together.
//!
//! It builds and tests without /dev/kvm.

pub mod config;
pub mod dhcp;
pub mod dns;
pub mod error;
pub mod gateway;
pub mod nat;
pub mod network;
pub mod pcap;
pub mod port;
pub mod switch;
pub mod wire;

pub use config::{MacAddr, NetworkConfig};
pub use error::{Error, Result};
pub use network::{Attachments, Network};
