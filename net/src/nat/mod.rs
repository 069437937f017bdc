//! Masquerade through host sockets: each guest TCP connection, UDP flow and ICMP echo
//! identifier becomes a socket of this process, so the guest's traffic leaves the host as this
//! process's own, with no privileges, no TAP on the host side and no firewall rules.
//!
//! This module owns the flow table (bounded, with idle timeouts), the address translation
//! rules (the gateway stands for the host; loopback never leaves the guest side) and the glue
//! every protocol shares; [`tcp`], [`udp`] and [`icmp`] own their protocols' state, and
//! [`forward`] the listening sockets of port forwards.

pub mod forward;
pub mod icmp;
pub mod sock;
pub mod tcp;
pub mod udp;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;
use std::time::Instant;

use crate::config::{Ipv4Subnet, MacAddr};

/// Readiness interest of a descriptor, as epoll bits (`EPOLLIN`, `EPOLLOUT`, `EPOLLRDHUP`).
pub type Interest = u32;

/// Registers descriptors with the event loop. The event loop passes its own implementation;
/// unit tests pass a recorder.
pub trait Registrar {
    /// Starts polling `fd` for `interest`; events come back with `token`.
    fn add(&mut self, fd: RawFd, token: u32, interest: Interest);
    /// Changes what `fd` is polled for.
    fn modify(&mut self, fd: RawFd, token: u32, interest: Interest);
    /// Stops polling `fd` (before it is closed).
    fn remove(&mut self, fd: RawFd);
}

/// Where frames for guests go: the switch.
pub trait FrameSink {
    /// Sends one Ethernet frame (already addressed) into the network.
    fn send_frame(&mut self, frame: &[u8]);
}

/// What a protocol handler needs from its surroundings for one call.
pub struct Env<'a> {
    /// The time of the event being handled.
    pub now: Instant,
    /// The event loop's registrations.
    pub reg: &'a mut dyn Registrar,
    /// The switch.
    pub sink: &'a mut dyn FrameSink,
}

/// The kinds of descriptor the network polls, encoded in the top byte of an event token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum TokenKind {
    /// The periodic timer.
    Timer = 1,
    /// The stop signal pipe.
    Stop = 2,
    /// The stream listener.
    StreamListener = 3,
    /// A switch port.
    Port = 4,
    /// A TCP flow's socket.
    Tcp = 5,
    /// A UDP flow's socket.
    Udp = 6,
    /// An ICMP echo flow's socket.
    Icmp = 7,
    /// A DNS forwarder socket.
    Dns = 8,
    /// A TCP port-forward listener.
    TcpForward = 9,
    /// A UDP port-forward socket.
    UdpForward = 10,
}

/// Packs a kind and an index (< 2^24) into an event token.
pub fn token(kind: TokenKind, index: usize) -> u32 {
    ((kind as u32) << 24) | (index as u32 & 0x00ff_ffff)
}

/// Splits an event token; `None` for a kind this build does not know.
pub fn untoken(t: u32) -> Option<(TokenKind, usize)> {
    let kind = match t >> 24 {
        1 => TokenKind::Timer,
        2 => TokenKind::Stop,
        3 => TokenKind::StreamListener,
        4 => TokenKind::Port,
        5 => TokenKind::Tcp,
        6 => TokenKind::Udp,
        7 => TokenKind::Icmp,
        8 => TokenKind::Dns,
        9 => TokenKind::TcpForward,
        10 => TokenKind::UdpForward,
        _ => return None,
    };
    Some((kind, (t & 0x00ff_ffff) as usize))
}

/// How guest destinations map to host destinations.
#[derive(Clone, Debug)]
pub struct Translation {
    /// The guest network.
    pub subnet: Ipv4Subnet,
    /// The gateway's address on it.
    pub gateway: Ipv4Addr,
    /// The gateway's MAC.
    pub gateway_mac: MacAddr,
    /// What the gateway address stands for on the host: its default-route address, or
    /// 127.0.0.1 with `--host-loopback`.
    pub host: Ipv4Addr,
    /// Where DNS over TCP to the gateway goes (the in-process DNS server).
    pub dns_tcp: Option<SocketAddrV4>,
}

impl Translation {
    /// The host-side address a guest's packet to `dst` is sent to, or `None` when it must not
    /// leave the guest side: loopback (127.0.0.0/8), unspecified, broadcast and multicast
    /// addresses, and other addresses of the guest subnet.
    pub fn outbound(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        if dst == self.gateway {
            return Some(self.host);
        }
        if dst.is_loopback()
            || dst.is_unspecified()
            || dst.is_broadcast()
            || dst.is_multicast()
            || self.subnet.contains(dst)
        {
            return None;
        }
        Some(dst)
    }

    /// The host-side endpoint for a guest TCP connection to `dst`.
    pub fn outbound_tcp(&self, dst: SocketAddrV4) -> Option<SocketAddrV4> {
        if *dst.ip() == self.gateway && dst.port() == 53 {
            return self.dns_tcp;
        }
        self.outbound(*dst.ip())
            .map(|ip| SocketAddrV4::new(ip, dst.port()))
    }
}

/// Counters of the flow table, shared by all protocols.
#[derive(Clone, Copy, Debug, Default)]
pub struct NatStats {
    /// New TCP flows refused with a RST because the table was full.
    pub tcp_refused_full: u64,
    /// New UDP or ICMP flows dropped because the table was full.
    pub dropped_full: u64,
    /// Packets to destinations that never leave the guest side (loopback...).
    pub dropped_martian: u64,
    /// Malformed or unexpected segments and datagrams from guests.
    pub dropped_malformed: u64,
    /// Flows closed for being idle.
    pub idle_closed: u64,
    /// Socket errors (connect refused, reset...).
    pub socket_errors: u64,
    /// Frames for the gateway that nothing handles: other EtherTypes and IP protocols,
    /// ICMP other than echo, broadcast UDP other than DHCP.
    pub unhandled: u64,
}

/// A fixed-capacity slab of flows: indices are stable for a flow's life and reused after.
pub struct Slab<T> {
    slots: Vec<Option<T>>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    /// Stores `v`; returns its index.
    pub fn insert(&mut self, v: T) -> usize {
        self.len += 1;
        if let Some(i) = self.free.pop() {
            self.slots[i] = Some(v);
            i
        } else {
            self.slots.push(Some(v));
            self.slots.len() - 1
        }
    }

    /// Removes and returns the value at `i`.
    pub fn remove(&mut self, i: usize) -> Option<T> {
        let v = self.slots.get_mut(i)?.take();
        if v.is_some() {
            self.len -= 1;
            self.free.push(i);
        }
        v
    }

    /// The value at `i`.
    pub fn get(&self, i: usize) -> Option<&T> {
        self.slots.get(i)?.as_ref()
    }

    /// The value at `i`, mutably.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.slots.get_mut(i)?.as_mut()
    }

    /// Number of values stored.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing is stored.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// One past the highest index ever used: `0..slots()` covers every stored value, for
    /// walking the slab without allocating.
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Indices of all stored values.
    pub fn indices(&self) -> Vec<usize> {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|_| i))
            .collect()
    }
}

/// Sequence-number arithmetic modulo 2^32 (RFC 9293 §3.4).
pub fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// `a <= b` modulo 2^32.
pub fn seq_le(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) <= 0
}

/// Four random bytes from the kernel, for initial sequence numbers and ports.
pub fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: writes at most 4 bytes into a live array. On failure the bytes stay zero and
    // the caller mixes in the clock below.
    unsafe { libc::getrandom(b.as_mut_ptr() as *mut libc::c_void, 4, 0) };
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    u32::from_ne_bytes(b) ^ t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr() -> Translation {
        Translation {
            subnet: "192.168.122.1/24".parse().unwrap(),
            gateway: Ipv4Addr::new(192, 168, 122, 1),
            gateway_mac: MacAddr::default(),
            host: Ipv4Addr::new(10, 1, 1, 2),
            dns_tcp: Some("127.0.0.1:5000".parse().unwrap()),
        }
    }

    #[test]
    fn loopback_never_leaves_and_gateway_is_the_host() {
        let t = tr();
        assert_eq!(t.outbound(Ipv4Addr::new(127, 0, 0, 1)), None);
        assert_eq!(t.outbound(Ipv4Addr::new(127, 9, 9, 9)), None);
        assert_eq!(t.outbound(Ipv4Addr::new(192, 168, 122, 7)), None);
        assert_eq!(t.outbound(Ipv4Addr::BROADCAST), None);
        assert_eq!(t.outbound(Ipv4Addr::new(224, 0, 0, 1)), None);
        assert_eq!(
            t.outbound(Ipv4Addr::new(192, 168, 122, 1)),
            Some(Ipv4Addr::new(10, 1, 1, 2))
        );
        assert_eq!(
            t.outbound(Ipv4Addr::new(8, 8, 8, 8)),
            Some(Ipv4Addr::new(8, 8, 8, 8))
        );
        assert_eq!(
            t.outbound_tcp("192.168.122.1:53".parse().unwrap()),
            Some("127.0.0.1:5000".parse().unwrap())
        );
    }

    #[test]
    fn tokens_round_trip_and_sequence_wraps() {
        assert_eq!(
            untoken(token(TokenKind::Tcp, 77)),
            Some((TokenKind::Tcp, 77))
        );
        assert_eq!(untoken(0xff00_0000), None);
        assert!(seq_lt(0xffff_fff0, 5));
        assert!(!seq_lt(5, 0xffff_fff0));
        assert!(seq_le(5, 5));
    }

    #[test]
    fn slab_reuses_slots() {
        let mut s = Slab::default();
        let a = s.insert(1);
        let b = s.insert(2);
        assert_eq!(s.remove(a), Some(1));
        assert_eq!(s.remove(a), None);
        assert_eq!(s.insert(3), a);
        assert_eq!(s.len(), 2);
        assert_eq!(s.get(b), Some(&2));
    }
}

#[cfg(test)]
mod flow_tests;
