//! The gateway's own address on the guest network: ARP (RFC 826) for it, ICMP echo
//! (RFC 792) to it, and the neighbour table that maps guest addresses to MACs so that
//! translated traffic and port forwards can be addressed to the right guest.
//!
//! Everything here works on frames already parsed by etherparse; replies are written into a
//! caller's buffer with [`crate::wire`].

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use etherparse::ArpPacketSlice;

use crate::config::MacAddr;
use crate::wire::{self, arp_op, ICMP_ECHO_LEN, L4_OFF};

/// How long a neighbour entry lives without being refreshed.
pub const NEIGHBOUR_TTL: Duration = Duration::from_secs(600);
/// Bound on the neighbour table.
pub const MAX_NEIGHBOURS: usize = 4096;

/// Guest IPv4 address to MAC, learned from the frames guests send.
#[derive(Debug, Default)]
pub struct Neighbours {
    map: HashMap<Ipv4Addr, (MacAddr, Instant)>,
}

impl Neighbours {
    /// Records that `ip` is at `mac`; returns true when this is new or changed information.
    /// A full table first forgets stale entries and otherwise refuses new ones.
    pub fn learn(&mut self, ip: Ipv4Addr, mac: MacAddr, now: Instant) -> bool {
        if mac.is_multicast() || ip.is_unspecified() || ip.is_broadcast() {
            return false;
        }
        if let Some(e) = self.map.get_mut(&ip) {
            let changed = e.0 != mac;
            *e = (mac, now);
            return changed;
        }
        if self.map.len() >= MAX_NEIGHBOURS {
            self.map
                .retain(|_, e| now.saturating_duration_since(e.1) < NEIGHBOUR_TTL);
            if self.map.len() >= MAX_NEIGHBOURS {
                return false;
            }
        }
        self.map.insert(ip, (mac, now));
        true
    }

    /// The MAC of `ip`, if known.
    pub fn lookup(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        self.map.get(&ip).map(|e| e.0)
    }

    /// Forgets stale entries.
    pub fn expire(&mut self, now: Instant) {
        self.map
            .retain(|_, e| now.saturating_duration_since(e.1) < NEIGHBOUR_TTL);
    }
}

/// What an ARP packet asks of the gateway.
#[derive(Debug, PartialEq, Eq)]
pub struct ArpInfo {
    /// Operation (1 request, 2 reply).
    pub op: u16,
    /// Sender hardware address.
    pub sha: MacAddr,
    /// Sender protocol address.
    pub spa: Ipv4Addr,
    /// Target protocol address.
    pub tpa: Ipv4Addr,
}

/// Parses an Ethernet/IPv4 ARP packet (the Ethernet payload); `None` for anything else.
pub fn parse_arp(payload: &[u8]) -> Option<ArpInfo> {
    let a = ArpPacketSlice::from_slice(payload).ok()?;
    let p = a.to_packet().try_eth_ipv4().ok()?;
    Some(ArpInfo {
        op: p.operation.0,
        sha: MacAddr(p.sender_mac),
        spa: Ipv4Addr::from(p.sender_ipv4),
        tpa: Ipv4Addr::from(p.target_ipv4),
    })
}

/// Writes the gateway's reply to an ARP request for `gateway` into `out`; returns its length,
/// or `None` when the packet is not such a request.
pub fn arp_reply(
    arp: &ArpInfo,
    gateway: Ipv4Addr,
    gw_mac: MacAddr,
    out: &mut [u8],
) -> Option<usize> {
    if arp.op != arp_op::REQUEST || arp.tpa != gateway || arp.sha.is_multicast() {
        return None;
    }
    Some(wire::write_arp_frame(
        out,
        arp_op::REPLY,
        gw_mac,
        gateway,
        arp.sha,
        arp.spa,
    ))
}

/// Writes an ARP request from the gateway for `target` into `out`; returns its length.
pub fn arp_request(target: Ipv4Addr, gateway: Ipv4Addr, gw_mac: MacAddr, out: &mut [u8]) -> usize {
    wire::write_arp_frame(
        out,
        arp_op::REQUEST,
        gw_mac,
        gateway,
        MacAddr([0; 6]),
        target,
    )
}

/// Writes the echo reply to an ICMP echo request `msg` (ICMP header and data) sent to the
/// gateway by `src` at `src_mac`; returns the frame length, or `None` when `msg` is not an
/// echo request or does not fit `out`.
pub fn echo_reply(
    msg: &[u8],
    src: Ipv4Addr,
    src_mac: MacAddr,
    gateway: Ipv4Addr,
    gw_mac: MacAddr,
    out: &mut [u8],
) -> Option<usize> {
    if msg.len() < ICMP_ECHO_LEN || msg[0] != 8 || msg[1] != 0 || L4_OFF + msg.len() > out.len() {
        return None;
    }
    out[L4_OFF..L4_OFF + msg.len()].copy_from_slice(msg);
    out[L4_OFF] = 0;
    Some(wire::write_icmp_frame(
        out,
        src_mac,
        gw_mac,
        gateway,
        src,
        msg.len(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{SlicedPacket, TransportSlice};

    const GW: Ipv4Addr = Ipv4Addr::new(192, 168, 122, 1);
    const GW_MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
    const G: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 2]);

    #[test]
    fn answers_arp_for_the_gateway_only() {
        let mut req = vec![0u8; 60];
        let g_ip = Ipv4Addr::new(192, 168, 122, 5);
        wire::write_arp_frame(&mut req, arp_op::REQUEST, G, g_ip, MacAddr([0; 6]), GW);
        let arp = parse_arp(&req[14..]).unwrap();
        assert_eq!(arp.spa, g_ip);
        let mut out = vec![0u8; 64];
        let n = arp_reply(&arp, GW, GW_MAC, &mut out).unwrap();
        assert_eq!(n, 60);
        assert_eq!(&out[0..6], &G.0);
        let reply = parse_arp(&out[14..n]).unwrap();
        assert_eq!(reply.op, arp_op::REPLY);
        assert_eq!(reply.sha, GW_MAC);
        let other = ArpInfo {
            tpa: Ipv4Addr::new(192, 168, 122, 9),
            ..arp
        };
        assert_eq!(arp_reply(&other, GW, GW_MAC, &mut out), None);
        assert_eq!(parse_arp(&[1, 2, 3]), None);
        assert_eq!(parse_arp(&[0u8; 28]), None);
    }

    #[test]
    fn echoes_pings_with_a_valid_checksum() {
        let msg = [8u8, 0, 0, 0, 0x12, 0x34, 0, 1, b'h', b'i'];
        let mut out = vec![0u8; 128];
        let g_ip = Ipv4Addr::new(192, 168, 122, 5);
        let n = echo_reply(&msg, g_ip, G, GW, GW_MAC, &mut out).unwrap();
        let p = SlicedPacket::from_ethernet(&out[..n]).unwrap();
        let Some(TransportSlice::Icmpv4(i)) = p.transport else {
            panic!("not icmp")
        };
        assert_eq!(i.type_u8(), 0);
        assert_eq!(i.payload(), b"hi");
        assert_eq!(
            i.header().checksum,
            i.header().icmp_type.calc_checksum(i.payload())
        );
        let mut out2 = vec![0u8; 128];
        assert!(echo_reply(&msg[..4], g_ip, G, GW, GW_MAC, &mut out2).is_none());
        assert!(echo_reply(&[0u8; 8], g_ip, G, GW, GW_MAC, &mut out2).is_none());
        assert!(echo_reply(&[8u8; 200], g_ip, G, GW, GW_MAC, &mut out2).is_none());
    }

    #[test]
    fn neighbour_table_is_bounded() {
        let mut n = Neighbours::default();
        let t = Instant::now();
        for i in 0..(MAX_NEIGHBOURS as u32 + 10) {
            n.learn(Ipv4Addr::from(0x0a00_0000 + i), G, t);
        }
        assert_eq!(n.map.len(), MAX_NEIGHBOURS);
        assert!(!n.learn(Ipv4Addr::new(1, 1, 1, 1), MacAddr::BROADCAST, t));
        assert_eq!(n.lookup(Ipv4Addr::from(0x0a00_0000)), Some(G));
    }
}
