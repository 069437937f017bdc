//! What happens to a frame a guest sends: switched to other ports, and, when it is for the
//! gateway (its MAC, or broadcast), parsed with etherparse's checked slices and handed to ARP,
//! ICMP echo, DHCP, DNS or the NAT. Anything malformed is dropped and counted.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Instant, SystemTime};

use etherparse::{
    EtherType, Ethernet2Slice, IpNumber, Ipv4Slice, TcpOptionElement, TcpSlice, UdpSlice,
};
use event_manager::EventOps;

use super::{Network, OpsRegistrar};
use crate::config::MacAddr;
use crate::dns::{self, LocalAnswer};
use crate::gateway;
use crate::nat::tcp::Segment;

const DHCP_SERVER_PORT: u16 = 67;
const DHCP_CLIENT_PORT: u16 = 68;
const DNS_PORT: u16 = 53;

impl Network {
    /// Switches one frame that arrived on port `p`.
    pub(super) fn ingress(&mut self, p: usize, frame: &[u8], ops: &mut EventOps, now: Instant) {
        self.fabric.record(frame);
        let Ok(eth) = Ethernet2Slice::from_slice_without_fcs(frame) else {
            self.fabric.runts += 1;
            return;
        };
        let src = MacAddr(eth.source());
        let dst = MacAddr(eth.destination());
        let d = self.fabric.switch.ingress(p, src, dst, now);
        self.fabric.forward(Some(p), d.egress, frame);
        if !d.to_gateway {
            return;
        }
        let to_us = dst == self.cfg.gateway_mac;
        match eth.ether_type() {
            EtherType::ARP => self.arp_input(src, eth.payload_slice()),
            EtherType::IPV4 => self.ipv4_input(src, to_us, eth.payload_slice(), ops, now),
            _ => self.nat_stats.unhandled += 1,
        }
    }

    fn arp_input(&mut self, src: MacAddr, payload: &[u8]) {
        let Some(arp) = gateway::parse_arp(payload) else {
            self.nat_stats.dropped_malformed += 1;
            return;
        };
        if arp.sha != src {
            // An ARP sender that is not the frame's source is lying about someone.
            self.nat_stats.dropped_malformed += 1;
            return;
        }
        if self.cfg.subnet.contains(arp.spa) && arp.spa != self.cfg.gateway() {
            self.learn(arp.spa, src);
        }
        let gw = self.cfg.gateway();
        if let Some(n) = gateway::arp_reply(&arp, gw, self.cfg.gateway_mac, &mut self.scratch) {
            let super::Network {
                fabric, scratch, ..
            } = self;
            crate::nat::FrameSink::send_frame(fabric, &scratch[..n]);
        }
    }

    fn learn(&mut self, ip: Ipv4Addr, mac: MacAddr) {
        if self.neighbours.learn(ip, mac, self.fabric.now) {
            let now = self.fabric.now;
            let mut reg = super::NullRegistrar;
            with_table!(self, &mut reg, now, tcp, |tcp, env| tcp
                .guest_mac_learned(&mut env, ip, mac));
        }
    }

    fn ipv4_input(
        &mut self,
        src_mac: MacAddr,
        to_us: bool,
        payload: &[u8],
        ops: &mut EventOps,
        now: Instant,
    ) {
        let Ok(ip) = Ipv4Slice::from_slice(payload) else {
            self.nat_stats.dropped_malformed += 1;
            return;
        };
        if ip.is_payload_fragmented() {
            // Guests send within the MTU we give them; fragments are not reassembled.
            self.nat_stats.dropped_malformed += 1;
            return;
        }
        let h = ip.header();
        let (src, dst) = (h.source_addr(), h.destination_addr());
        let gw = self.cfg.gateway();
        if self.cfg.subnet.contains(src) && src != gw && src != self.cfg.subnet.network() {
            self.learn(src, src_mac);
        }
        let body = ip.payload().payload;
        match ip.payload_ip_number() {
            IpNumber::UDP => {
                let Ok(udp) = UdpSlice::from_slice(body) else {
                    self.nat_stats.dropped_malformed += 1;
                    return;
                };
                let (sp, dp) = (udp.source_port(), udp.destination_port());
                if dp == DHCP_SERVER_PORT && (dst == gw || dst.is_broadcast()) {
                    self.dhcp_input(src_mac, udp.payload());
                } else if !to_us {
                    // Broadcast or multicast UDP other than DHCP stays on the L2 segment.
                    self.nat_stats.unhandled += 1;
                } else if dst == gw && dp == DNS_PORT {
                    self.dns_input(src, sp, udp.payload(), now);
                } else {
                    let room = self.room();
                    let mut reg = OpsRegistrar(ops);
                    let s = SocketAddrV4::new(src, sp);
                    let d = SocketAddrV4::new(dst, dp);
                    let payload = udp.payload();
                    if !with_table!(self, &mut reg, now, udp, |table, env| table
                        .guest_datagram(&mut env, src_mac, s, d, payload, room))
                    {
                        self.count_drop(dst, room);
                    }
                }
            }
            IpNumber::TCP if to_us => {
                let Ok(t) = TcpSlice::from_slice(body) else {
                    self.nat_stats.dropped_malformed += 1;
                    return;
                };
                let mut mss = None;
                let mut wscale = None;
                for o in t.options_iterator() {
                    match o {
                        Ok(TcpOptionElement::MaximumSegmentSize(m)) => mss = Some(m),
                        Ok(TcpOptionElement::WindowScale(w)) => wscale = Some(w),
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                let flags = t.header_slice().get(13).copied().unwrap_or(0);
                let seg = Segment {
                    src_mac,
                    src: SocketAddrV4::new(src, t.source_port()),
                    dst: SocketAddrV4::new(dst, t.destination_port()),
                    seq: t.sequence_number(),
                    ack: t.acknowledgment_number(),
                    flags,
                    window: t.window_size(),
                    mss,
                    wscale,
                    payload: t.payload(),
                };
                let room = self.room();
                let mut reg = OpsRegistrar(ops);
                if !with_table!(self, &mut reg, now, tcp, |tcp, env| tcp
                    .guest_segment(&mut env, &seg, room))
                {
                    if room {
                        self.nat_stats.dropped_martian += 1;
                    } else {
                        self.nat_stats.tcp_refused_full += 1;
                    }
                }
            }
            IpNumber::ICMP if to_us => {
                if dst == gw {
                    let n = gateway::echo_reply(
                        body,
                        src,
                        src_mac,
                        gw,
                        self.cfg.gateway_mac,
                        &mut self.scratch,
                    );
                    if let Some(n) = n {
                        let super::Network {
                            fabric, scratch, ..
                        } = self;
                        crate::nat::FrameSink::send_frame(fabric, &scratch[..n]);
                    } else {
                        self.nat_stats.unhandled += 1;
                    }
                    return;
                }
                let room = self.room();
                let mut reg = OpsRegistrar(ops);
                if !with_table!(self, &mut reg, now, icmp, |icmp, env| icmp
                    .guest_message(&mut env, src_mac, src, dst, body, room))
                {
                    self.count_drop(dst, room);
                }
            }
            // Other protocols, and TCP or ICMP not addressed to the gateway's MAC.
            _ => self.nat_stats.unhandled += 1,
        }
    }

    fn count_drop(&mut self, dst: Ipv4Addr, room: bool) {
        if self.tr.outbound(dst).is_none() {
            self.nat_stats.dropped_martian += 1;
        } else if !room {
            self.nat_stats.dropped_full += 1;
        } else {
            self.nat_stats.unhandled += 1;
        }
    }

    fn dhcp_input(&mut self, src_mac: MacAddr, payload: &[u8]) {
        let Some(reply) = self.dhcp.handle(payload, src_mac, SystemTime::now()) else {
            return;
        };
        self.send_udp_to(
            reply.dst_mac,
            DHCP_SERVER_PORT,
            reply.dst_ip,
            DHCP_CLIENT_PORT,
            &reply.payload,
        );
        self.refresh_names();
    }

    fn dns_input(&mut self, src: Ipv4Addr, sport: u16, query: &[u8], now: Instant) {
        let answer = match self.names.read() {
            Ok(names) => dns::classify(query, &names, self.cfg.domain.as_deref(), self.cfg.subnet),
            Err(_) => LocalAnswer::Drop,
        };
        match answer {
            LocalAnswer::Answer(resp) => self.send_udp_from_gateway(DNS_PORT, src, sport, &resp),
            LocalAnswer::Forward => self.dns.submit(
                query,
                dns::Client {
                    ip: src,
                    port: sport,
                },
                now,
            ),
            LocalAnswer::Drop => self.nat_stats.dropped_malformed += 1,
        }
    }
}
