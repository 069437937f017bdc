//! UDP translation: a flow is a guest endpoint and a destination, carried by one connected
//! host UDP socket (endpoint-dependent mapping, as Linux masquerade does). Replies from the
//! destination come back to the guest from the address it sent to. Port-forwarded flows run
//! the other way and answer through the forward's own socket.
//!
//! Datagrams larger than the guest MTU allows are dropped and counted: skiff does not
//! fragment. Idle flows close after the UDP idle timeout.

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::{sock, token, Env, Slab, TokenKind, Translation};
use crate::config::MacAddr;
use crate::wire::{self, ETH_LEN, L4_OFF, UDP_LEN};

/// Datagrams read from one socket per readiness event.
const READ_BUDGET: usize = 64;

/// Counters of UDP translation.
#[derive(Clone, Copy, Debug, Default)]
pub struct UdpStats {
    /// Flows opened.
    pub opened: u64,
    /// Datagrams from hosts too large for the guest MTU.
    pub too_big: u64,
    /// Datagrams that could not be sent to the host.
    pub send_errors: u64,
}

/// Where a flow's guest-to-host datagrams go.
enum Uplink {
    /// Its own connected socket.
    Own(OwnedFd),
    /// A port forward's socket, to the host client that started the flow.
    Forward { fd: RawFd, client: SocketAddrV4 },
}

struct Flow {
    uplink: Uplink,
    guest_mac: MacAddr,
    guest: SocketAddrV4,
    peer: SocketAddrV4,
    last: Instant,
}

/// The UDP flows of one network.
pub struct UdpTable {
    flows: Slab<Flow>,
    by_key: HashMap<(SocketAddrV4, SocketAddrV4), usize>,
    by_client: HashMap<(RawFd, SocketAddrV4), usize>,
    buf: Vec<u8>,
    mtu: u16,
    tr: Translation,
    idle: Duration,
    next_port: u16,
    /// Counters.
    pub stats: UdpStats,
}

impl UdpTable {
    /// A table for a network of the given MTU and translation rules.
    pub fn new(mtu: u16, tr: Translation, idle: Duration) -> Self {
        UdpTable {
            flows: Slab::default(),
            by_key: HashMap::new(),
            by_client: HashMap::new(),
            buf: vec![0u8; 65536 + L4_OFF + UDP_LEN],
            mtu,
            tr,
            idle,
            next_port: 0,
            stats: UdpStats::default(),
        }
    }

    /// Number of flows.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// True when there are no flows.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// A datagram from a guest to `dst`. Returns false when it was dropped because it may not
    /// leave (`dst` translates to nothing) or no flow could be made (`room` false: table full).
    pub fn guest_datagram(
        &mut self,
        env: &mut Env,
        src_mac: MacAddr,
        src: SocketAddrV4,
        dst: SocketAddrV4,
        payload: &[u8],
        room: bool,
    ) -> bool {
        let idx = match self.by_key.get(&(src, dst)) {
            Some(&i) => i,
            None => {
                let Some(ip) = self.tr.outbound(*dst.ip()) else {
                    return false;
                };
                if !room {
                    return false;
                }
                let target = SocketAddrV4::new(ip, dst.port());
                let s = match sock::socket(libc::SOCK_DGRAM, 0) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!("udp: socket: {e}");
                        self.stats.send_errors += 1;
                        return true;
                    }
                };
                if let Err(e) = sock::connect(s.as_raw_fd(), target) {
                    tracing::debug!("udp: connect {target}: {e}");
                    self.stats.send_errors += 1;
                    return true;
                }
                let fd = s.as_raw_fd();
                let i = self.flows.insert(Flow {
                    uplink: Uplink::Own(s),
                    guest_mac: src_mac,
                    guest: src,
                    peer: dst,
                    last: env.now,
                });
                self.by_key.insert((src, dst), i);
                env.reg
                    .add(fd, token(TokenKind::Udp, i), libc::EPOLLIN as u32);
                self.stats.opened += 1;
                i
            }
        };
        let Some(f) = self.flows.get_mut(idx) else {
            return false;
        };
        f.last = env.now;
        f.guest_mac = src_mac;
        let r = match &f.uplink {
            Uplink::Own(s) => sock::send(s.as_raw_fd(), payload),
            Uplink::Forward { fd, client } => sock::send_to(*fd, payload, *client),
        };
        if r.is_err() {
            self.stats.send_errors += 1;
        }
        true
    }

    /// Reads datagrams from flow `idx`'s socket and sends them to its guest.
    pub fn socket_event(&mut self, env: &mut Env, idx: usize) {
        let max_payload = usize::from(self.mtu) - 28;
        for _ in 0..READ_BUDGET {
            let Some(f) = self.flows.get_mut(idx) else {
                return;
            };
            let Uplink::Own(s) = &f.uplink else { return };
            let at = L4_OFF + UDP_LEN;
            match sock::recv(s.as_raw_fd(), &mut self.buf[at..]) {
                Ok(n) => {
                    f.last = env.now;
                    if n > max_payload {
                        self.stats.too_big += 1;
                        continue;
                    }
                    let len = wire::write_udp_frame(
                        &mut self.buf,
                        f.guest_mac,
                        self.tr.gateway_mac,
                        *f.peer.ip(),
                        f.peer.port(),
                        *f.guest.ip(),
                        f.guest.port(),
                        n,
                    );
                    env.sink.send_frame(&self.buf[..len]);
                }
                // Would block, or an ICMP error (ECONNREFUSED...) that recv reports once.
                Err(_) => return,
            }
        }
    }

    /// A datagram from a host client of the UDP port forward whose socket is `fd`, for
    /// `guest`. The guest sees it come from the gateway.
    #[allow(clippy::too_many_arguments)]
    pub fn forward_datagram(
        &mut self,
        env: &mut Env,
        fd: RawFd,
        client: SocketAddrV4,
        guest: SocketAddrV4,
        guest_mac: MacAddr,
        payload_len: usize,
        room: bool,
    ) {
        let idx = match self.by_client.get(&(fd, client)) {
            Some(&i) => i,
            None => {
                if !room {
                    return;
                }
                let Some(port) = self.free_port(guest) else {
                    return;
                };
                let peer = SocketAddrV4::new(self.tr.gateway, port);
                let i = self.flows.insert(Flow {
                    uplink: Uplink::Forward { fd, client },
                    guest_mac,
                    guest,
                    peer,
                    last: env.now,
                });
                self.by_key.insert((guest, peer), i);
                self.by_client.insert((fd, client), i);
                self.stats.opened += 1;
                i
            }
        };
        let Some(f) = self.flows.get_mut(idx) else {
            return;
        };
        f.last = env.now;
        if payload_len > usize::from(self.mtu) - 28 {
            self.stats.too_big += 1;
            return;
        }
        let len = wire::write_udp_frame(
            &mut self.buf,
            guest_mac,
            self.tr.gateway_mac,
            *f.peer.ip(),
            f.peer.port(),
            *f.guest.ip(),
            f.guest.port(),
            payload_len,
        );
        env.sink.send_frame(&self.buf[..len]);
    }

    /// The buffer a forward's datagram is read into: the payload goes at
    /// `[L4_OFF + UDP_LEN..]` so the frame is built around it.
    pub fn forward_buf(&mut self) -> &mut [u8] {
        let at = L4_OFF + UDP_LEN;
        let end = (at + usize::from(self.mtu) + ETH_LEN).min(self.buf.len());
        &mut self.buf[at..end]
    }

    fn free_port(&mut self, guest: SocketAddrV4) -> Option<u16> {
        for _ in 0..1024 {
            self.next_port = if !(32768..60999).contains(&self.next_port) {
                32768
            } else {
                self.next_port + 1
            };
            let peer = SocketAddrV4::new(self.tr.gateway, self.next_port);
            if !self.by_key.contains_key(&(guest, peer)) {
                return Some(self.next_port);
            }
        }
        None
    }

    /// Closes flows idle longer than the UDP timeout; returns how many.
    pub fn expire(&mut self, env: &mut Env) -> u64 {
        let mut n = 0;
        for idx in self.flows.indices() {
            let idle = match self.flows.get(idx) {
                Some(f) => env.now.saturating_duration_since(f.last) > self.idle,
                None => false,
            };
            if idle {
                self.remove(env, idx);
                n += 1;
            }
        }
        n
    }

    fn remove(&mut self, env: &mut Env, idx: usize) {
        if let Some(f) = self.flows.remove(idx) {
            self.by_key.remove(&(f.guest, f.peer));
            match f.uplink {
                Uplink::Own(s) => env.reg.remove(s.as_raw_fd()),
                Uplink::Forward { fd, client } => {
                    self.by_client.remove(&(fd, client));
                }
            }
        }
    }
}
