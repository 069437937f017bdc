//! The network's configuration: libvirt's default network unless told otherwise, and the
//! parsers for the user-facing spellings of each value (`--forward`, `--dhcp-host`, ...).
//!
//! Every parser returns [`Error::Config`] naming the flag, and [`NetworkConfig::validate`]
//! checks the whole before anything is opened, so nothing is half-applied.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use crate::error::{Error, Result};

/// Smallest MTU accepted: the IPv4 minimum datagram size every host must accept (RFC 791).
pub const MIN_MTU: u16 = 576;
/// Largest MTU accepted: the largest a TAP device or a QEMU stream frame carries here.
pub const MAX_MTU: u16 = 65520;

/// A 48-bit IEEE 802 MAC address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);

    /// True for group (multicast and broadcast) addresses: the I/G bit of the first octet.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 == 1
    }

    /// The address as a byte slice.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for MacAddr {
    type Err = String;

    /// Parses `aa:bb:cc:dd:ee:ff` (or with `-`), case-insensitive.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(format!("'{s}' is not a MAC address (aa:bb:cc:dd:ee:ff)"));
        }
        let mut m = [0u8; 6];
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 {
                return Err(format!("'{s}' is not a MAC address (aa:bb:cc:dd:ee:ff)"));
            }
            m[i] = u8::from_str_radix(p, 16)
                .map_err(|_| format!("'{s}' is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
        }
        Ok(MacAddr(m))
    }
}

/// An IPv4 subnet: network address and prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Subnet {
    /// The address as written (may have host bits set, e.g. the gateway's).
    pub addr: Ipv4Addr,
    /// Prefix length, 0..=32.
    pub prefix: u8,
}

impl Ipv4Subnet {
    /// The netmask, e.g. 255.255.255.0 for /24.
    pub fn netmask(&self) -> Ipv4Addr {
        let bits = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        };
        Ipv4Addr::from(bits)
    }

    /// The network address (host bits cleared).
    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) & u32::from(self.netmask()))
    }

    /// The directed broadcast address (host bits set).
    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network()) | !u32::from(self.netmask()))
    }

    /// True when `ip` lies inside the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & u32::from(self.netmask()) == u32::from(self.network())
    }
}

impl FromStr for Ipv4Subnet {
    type Err = String;

    /// Parses `A.B.C.D/N`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("'{s}' is not a CIDR subnet (A.B.C.D/N)"))?;
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("'{a}' is not an IPv4 address"))?;
        let prefix: u8 = p
            .parse()
            .map_err(|_| format!("'{p}' is not a prefix length"))?;
        if !(8..=30).contains(&prefix) {
            return Err(format!("prefix /{prefix} is outside /8../30"));
        }
        Ok(Ipv4Subnet { addr, prefix })
    }
}

/// A static DHCP host (`--dhcp-host MAC,IP[,NAME]`), like libvirt's `<host>` element.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticHost {
    /// The client's hardware address.
    pub mac: MacAddr,
    /// The address it always gets.
    pub ip: Ipv4Addr,
    /// Its DNS name, answered at the gateway.
    pub name: Option<String>,
}

impl FromStr for StaticHost {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut it = s.split(',');
        let mac = it.next().unwrap_or_default().parse::<MacAddr>()?;
        let ip_s = it
            .next()
            .ok_or_else(|| format!("'{s}': expected MAC,IP[,NAME]"))?;
        let ip: Ipv4Addr = ip_s
            .parse()
            .map_err(|_| format!("'{ip_s}' is not an IPv4 address"))?;
        let name = match it.next() {
            Some(n) => {
                check_hostname(n)?;
                Some(n.to_ascii_lowercase())
            }
            None => None,
        };
        if it.next().is_some() {
            return Err(format!("'{s}': expected MAC,IP[,NAME]"));
        }
        Ok(StaticHost { mac, ip, name })
    }
}

/// Checks a single DNS label used as a host name (RFC 1123 §2.1: letters, digits, hyphens,
/// 1..=63 octets, not starting or ending with a hyphen).
pub fn check_hostname(n: &str) -> std::result::Result<(), String> {
    let ok = !n.is_empty()
        && n.len() <= 63
        && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !n.starts_with('-')
        && !n.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!("'{n}' is not a host name (letters, digits, '-')"))
    }
}

/// Transport protocol of a port forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ForwardProto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// A port forward from the host into a guest
/// (`--forward tcp:[HOSTADDR:]HOSTPORT:GUESTIP:GUESTPORT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortForward {
    /// TCP or UDP.
    pub proto: ForwardProto,
    /// Where skiff listens on the host (address defaults to 127.0.0.1).
    pub host: SocketAddrV4,
    /// The guest's address and port.
    pub guest: SocketAddrV4,
}

impl FromStr for PortForward {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let shape = "expected tcp|udp:[HOSTADDR:]HOSTPORT:GUESTIP:GUESTPORT";
        let parts: Vec<&str> = s.split(':').collect();
        let proto = match parts.first().copied() {
            Some("tcp") => ForwardProto::Tcp,
            Some("udp") => ForwardProto::Udp,
            _ => return Err(format!("'{s}': {shape}")),
        };
        let (host_ip, rest) = match parts.len() {
            4 => (Ipv4Addr::LOCALHOST, &parts[1..]),
            5 => (
                parts[1]
                    .parse()
                    .map_err(|_| format!("'{}' is not an IPv4 address", parts[1]))?,
                &parts[2..],
            ),
            _ => return Err(format!("'{s}': {shape}")),
        };
        let port = |p: &str| -> std::result::Result<u16, String> {
            match p.parse::<u16>() {
                Ok(n) if n != 0 => Ok(n),
                _ => Err(format!("'{p}' is not a port (1-65535)")),
            }
        };
        let host_port = port(rest[0])?;
        let guest_ip: Ipv4Addr = rest[1]
            .parse()
            .map_err(|_| format!("'{}' is not an IPv4 address", rest[1]))?;
        let guest_port = port(rest[2])?;
        Ok(PortForward {
            proto,
            host: SocketAddrV4::new(host_ip, host_port),
            guest: SocketAddrV4::new(guest_ip, guest_port),
        })
    }
}

/// Parses a DNS upstream, `ADDR[:PORT]` (port 53 by default).
pub fn parse_dns_upstream(s: &str) -> std::result::Result<SocketAddr, String> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Ok(sa);
    }
    if let Ok(ip) = s.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, 53));
    }
    Err(format!("'{s}' is not ADDR[:PORT]"))
}

/// Idle timeouts per protocol: a flow with no traffic for this long is closed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Established TCP flows (both directions silent).
    pub tcp_idle: Duration,
    /// UDP flows.
    pub udp_idle: Duration,
    /// ICMP echo flows.
    pub icmp_idle: Duration,
}

impl Default for Timeouts {
    /// Linux conntrack's orders of magnitude, shortened for TCP: 2 h, 3 min, 30 s.
    fn default() -> Self {
        Timeouts {
            tcp_idle: Duration::from_secs(2 * 3600),
            udp_idle: Duration::from_secs(180),
            icmp_idle: Duration::from_secs(30),
        }
    }
}

/// Everything that defines one network. [`Default`] is libvirt's default network.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    /// The subnet; its `addr` is the gateway's address (192.168.122.1/24).
    pub subnet: Ipv4Subnet,
    /// The gateway's MAC address, as seen by guests.
    pub gateway_mac: MacAddr,
    /// First and last address the DHCP server hands out (inclusive).
    pub dhcp_range: (Ipv4Addr, Ipv4Addr),
    /// The network's DNS domain (DHCP option 15; guest names are answered under it).
    pub domain: Option<String>,
    /// MTU given to guests (DHCP option 26), bytes of IP packet.
    pub mtu: u16,
    /// DHCP lease time.
    pub lease_time: Duration,
    /// Static DHCP hosts.
    pub static_hosts: Vec<StaticHost>,
    /// DNS upstream resolvers, tried in order. Empty means "read /etc/resolv.conf".
    pub dns_upstreams: Vec<SocketAddr>,
    /// The host address connections to the gateway reach; `None` means "the address of the
    /// default-route interface", found at start.
    pub host_address: Option<Ipv4Addr>,
    /// Map the gateway address to 127.0.0.1 instead of the host's address.
    pub host_loopback: bool,
    /// Port forwards from the host into guests.
    pub forwards: Vec<PortForward>,
    /// Maximum number of NAT flows (TCP, UDP and ICMP together).
    pub max_flows: usize,
    /// Idle timeouts.
    pub timeouts: Timeouts,
    /// Where leases are kept.
    pub state_dir: PathBuf,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        NetworkConfig {
            subnet: Ipv4Subnet {
                addr: Ipv4Addr::new(192, 168, 122, 1),
                prefix: 24,
            },
            gateway_mac: MacAddr([0x52, 0x54, 0x00, 0x5c, 0x1f, 0x01]),
            dhcp_range: (
                Ipv4Addr::new(192, 168, 122, 2),
                Ipv4Addr::new(192, 168, 122, 254),
            ),
            domain: None,
            mtu: 1500,
            lease_time: Duration::from_secs(3600),
            static_hosts: Vec::new(),
            dns_upstreams: Vec::new(),
            host_address: None,
            host_loopback: false,
            forwards: Vec::new(),
            max_flows: 4096,
            timeouts: Timeouts::default(),
            state_dir: default_state_dir(),
        }
    }
}

/// `$XDG_STATE_HOME/skiff/net/default`, else `~/.local/state/skiff/net/default`, else
/// `/tmp/skiff-UID/net/default` when there is no home.
pub fn default_state_dir() -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty() && v != "/nonexistent")
                .map(|h| PathBuf::from(h).join(".local/state"))
        })
        // SAFETY: getuid has no preconditions and cannot fail.
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/skiff-{}", unsafe { libc::getuid() })));
    base.join("skiff/net/default")
}

impl NetworkConfig {
    /// The gateway's address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.subnet.addr
    }

    /// Checks the configuration as a whole.
    ///
    /// # Errors
    /// [`Error::Config`] naming the flag whose value does not fit the others.
    pub fn validate(&self) -> Result<()> {
        let s = &self.subnet;
        let gw = s.addr;
        if gw == s.network() || gw == s.broadcast() {
            return Err(Error::config(
                "--subnet",
                format!("the gateway address {gw} must be a host address of the subnet"),
            ));
        }
        let (first, last) = self.dhcp_range;
        for ip in [first, last] {
            if !s.contains(ip) || ip == s.network() || ip == s.broadcast() {
                return Err(Error::config(
                    "--dhcp-range",
                    format!("{ip} is not a host address of {}/{}", s.network(), s.prefix),
                ));
            }
        }
        if u32::from(first) > u32::from(last) {
            return Err(Error::config(
                "--dhcp-range",
                format!("{first} comes after {last}"),
            ));
        }
        if (u32::from(first)..=u32::from(last)).contains(&u32::from(gw)) {
            return Err(Error::config(
                "--dhcp-range",
                format!("the range contains the gateway {gw}"),
            ));
        }
        if !(MIN_MTU..=MAX_MTU).contains(&self.mtu) {
            return Err(Error::config(
                "--mtu",
                format!("{} is outside {MIN_MTU}..={MAX_MTU}", self.mtu),
            ));
        }
        if let Some(d) = &self.domain {
            let ok =
                !d.is_empty() && d.len() <= 200 && d.split('.').all(|l| check_hostname(l).is_ok());
            if !ok {
                return Err(Error::config(
                    "--domain",
                    format!("'{d}' is not a domain name"),
                ));
            }
        }
        for (i, h) in self.static_hosts.iter().enumerate() {
            if !s.contains(h.ip) || h.ip == gw || h.ip == s.network() || h.ip == s.broadcast() {
                return Err(Error::config(
                    "--dhcp-host",
                    format!("{} is not a free host address of the subnet", h.ip),
                ));
            }
            for o in &self.static_hosts[..i] {
                if o.mac == h.mac || o.ip == h.ip {
                    return Err(Error::config(
                        "--dhcp-host",
                        format!("{} / {} given twice", h.mac, h.ip),
                    ));
                }
            }
        }
        for (i, f) in self.forwards.iter().enumerate() {
            if !s.contains(*f.guest.ip()) || *f.guest.ip() == gw {
                return Err(Error::config(
                    "--forward",
                    format!("{} is not a guest address of the subnet", f.guest.ip()),
                ));
            }
            if self.forwards[..i]
                .iter()
                .any(|o| o.proto == f.proto && o.host == f.host)
            {
                return Err(Error::config(
                    "--forward",
                    format!("host {} is forwarded twice", f.host),
                ));
            }
        }
        if self.max_flows == 0 || self.max_flows > 1 << 20 {
            return Err(Error::config("--max-flows", "must be 1..=1048576"));
        }
        if self.lease_time < Duration::from_secs(120) {
            return Err(Error::config(
                "--lease-time",
                "must be at least 120 seconds",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_libvirts_and_valid() {
        let c = NetworkConfig::default();
        c.validate().unwrap();
        assert_eq!(c.gateway(), Ipv4Addr::new(192, 168, 122, 1));
        assert_eq!(c.subnet.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(c.subnet.broadcast(), Ipv4Addr::new(192, 168, 122, 255));
        assert_eq!(c.dhcp_range.1, Ipv4Addr::new(192, 168, 122, 254));
    }

    #[test]
    fn parses_forward_specs() {
        let f: PortForward = "tcp:8080:192.168.122.10:80".parse().unwrap();
        assert_eq!(f.host, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(f.guest, "192.168.122.10:80".parse().unwrap());
        let f: PortForward = "udp:0.0.0.0:53:192.168.122.3:5353".parse().unwrap();
        assert_eq!(f.proto, ForwardProto::Udp);
        assert_eq!(f.host, "0.0.0.0:53".parse().unwrap());
        for bad in [
            "",
            "sctp:1:192.168.122.2:1",
            "tcp:0:192.168.122.2:1",
            "tcp:1:nope:1",
            "tcp:99999:192.168.122.2:1",
            "tcp:1:2",
            "tcp:a:b:c:d:e:f",
        ] {
            assert!(bad.parse::<PortForward>().is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_static_hosts_and_macs() {
        let h: StaticHost = "52:54:00:AA:bb:cc,192.168.122.9,Web1".parse().unwrap();
        assert_eq!(h.mac, MacAddr([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]));
        assert_eq!(h.name.as_deref(), Some("web1"));
        for bad in [
            "52:54:00:aa:bb,192.168.122.9",
            "52:54:00:aa:bb:cc",
            "52:54:00:aa:bb:cc,1.2.3",
            "52:54:00:aa:bb:cc,192.168.122.9,bad_name",
            "52:54:00:aa:bb:cc,192.168.122.9,a,b",
            "zz:54:00:aa:bb:cc,192.168.122.9",
        ] {
            assert!(bad.parse::<StaticHost>().is_err(), "{bad}");
        }
    }

    #[test]
    fn validate_names_the_flag() {
        let mut c = NetworkConfig {
            dhcp_range: (
                Ipv4Addr::new(192, 168, 122, 1),
                Ipv4Addr::new(192, 168, 122, 9),
            ),
            ..Default::default()
        };
        let e = c.validate().unwrap_err().to_string();
        assert!(e.starts_with("--dhcp-range"), "{e}");
        c = NetworkConfig {
            mtu: 70000u32 as u16,
            ..Default::default()
        };
        c.mtu = 100;
        assert!(c.validate().unwrap_err().to_string().starts_with("--mtu"));
        c = NetworkConfig {
            forwards: vec!["tcp:80:10.0.0.2:80".parse().unwrap()],
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .starts_with("--forward"));
        assert!("10.0.0.0/31".parse::<Ipv4Subnet>().is_err());
        assert_eq!(
            parse_dns_upstream("127.0.0.1").unwrap(),
            "127.0.0.1:53".parse().unwrap()
        );
        assert!(parse_dns_upstream("x").is_err());
    }
}
