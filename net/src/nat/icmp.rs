//! ICMP echo translation (RFC 792): a guest's echo requests to an outside address go out
//! through a host socket, and the replies come back with the guest's identifier.
//!
//! Unprivileged ping sockets (`SOCK_DGRAM`/`IPPROTO_ICMP`, allowed by
//! `net.ipv4.ping_group_range`) are preferred: the kernel picks the identifier and matches
//! replies. As root without them, a raw socket is used, filtered by peer and identifier.
//! With neither, echo is unavailable and one clear line is logged. Echo requests to the
//! gateway itself never reach this module: the gateway answers them.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::{sock, token, Env, Slab, TokenKind, Translation};
use crate::config::MacAddr;
use crate::wire::{self, ICMP_ECHO_LEN, L4_OFF};

const ECHO_REPLY: u8 = 0;
const ECHO_REQUEST: u8 = 8;
const READ_BUDGET: usize = 32;

/// How echo requests leave the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EchoMode {
    /// Unprivileged ping sockets.
    PingSocket,
    /// Raw sockets (CAP_NET_RAW).
    Raw,
    /// Neither is allowed.
    Unavailable,
}

impl EchoMode {
    /// Finds what this process may use, trying ping sockets first.
    pub fn probe() -> Self {
        if sock::socket(libc::SOCK_DGRAM, libc::IPPROTO_ICMP).is_ok() {
            EchoMode::PingSocket
        } else if sock::socket(libc::SOCK_RAW, libc::IPPROTO_ICMP).is_ok() {
            EchoMode::Raw
        } else {
            EchoMode::Unavailable
        }
    }
}

/// Counters of ICMP echo translation.
#[derive(Clone, Copy, Debug, Default)]
pub struct IcmpStats {
    /// Echo requests sent out.
    pub requests: u64,
    /// Echo replies delivered to guests.
    pub replies: u64,
    /// Requests dropped because echo is unavailable.
    pub unavailable: u64,
}

struct Flow {
    sock: OwnedFd,
    guest_mac: MacAddr,
    guest: Ipv4Addr,
    id: u16,
    /// The destination as the guest addressed it.
    peer: Ipv4Addr,
    last: Instant,
}

/// The ICMP echo flows of one network.
pub struct IcmpTable {
    flows: Slab<Flow>,
    by_key: HashMap<(Ipv4Addr, u16, Ipv4Addr), usize>,
    mode: EchoMode,
    warned: bool,
    buf: Vec<u8>,
    mtu: u16,
    tr: Translation,
    idle: Duration,
    /// Counters.
    pub stats: IcmpStats,
}

impl IcmpTable {
    /// A table using `mode`.
    pub fn new(mode: EchoMode, mtu: u16, tr: Translation, idle: Duration) -> Self {
        IcmpTable {
            flows: Slab::default(),
            by_key: HashMap::new(),
            mode,
            warned: false,
            buf: vec![0u8; 65536 + L4_OFF],
            mtu,
            tr,
            idle,
            stats: IcmpStats::default(),
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

    /// An ICMP message from a guest to `dst` (`msg` is the ICMP header and data). Only echo
    /// requests are translated; returns false when dropped.
    pub fn guest_message(
        &mut self,
        env: &mut Env,
        src_mac: MacAddr,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        msg: &[u8],
        room: bool,
    ) -> bool {
        if msg.len() < ICMP_ECHO_LEN || msg[0] != ECHO_REQUEST || msg[1] != 0 {
            return false;
        }
        let id = u16::from_be_bytes([msg[4], msg[5]]);
        let idx = match self.by_key.get(&(src, id, dst)) {
            Some(&i) => i,
            None => {
                let Some(target) = self.tr.outbound(dst) else {
                    return false;
                };
                if !room {
                    return false;
                }
                let s = match self.mode {
                    EchoMode::PingSocket => sock::socket(libc::SOCK_DGRAM, libc::IPPROTO_ICMP),
                    EchoMode::Raw => sock::socket(libc::SOCK_RAW, libc::IPPROTO_ICMP),
                    EchoMode::Unavailable => {
                        self.stats.unavailable += 1;
                        if !self.warned {
                            self.warned = true;
                            tracing::warn!(
                                "icmp: echo requests from guests are dropped: this process may \
                                 open neither ping sockets (net.ipv4.ping_group_range) nor raw \
                                 sockets (CAP_NET_RAW)"
                            );
                        }
                        return false;
                    }
                };
                let s = match s {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::debug!("icmp: socket: {e}");
                        return true;
                    }
                };
                if sock::connect(s.as_raw_fd(), SocketAddrV4::new(target, 0)).is_err() {
                    return false;
                }
                let fd = s.as_raw_fd();
                let i = self.flows.insert(Flow {
                    sock: s,
                    guest_mac: src_mac,
                    guest: src,
                    id,
                    peer: dst,
                    last: env.now,
                });
                self.by_key.insert((src, id, dst), i);
                env.reg
                    .add(fd, token(TokenKind::Icmp, i), libc::EPOLLIN as u32);
                i
            }
        };
        let Some(f) = self.flows.get_mut(idx) else {
            return false;
        };
        f.last = env.now;
        f.guest_mac = src_mac;
        // Ping sockets rewrite the identifier and checksum; raw sockets send as is, and the
        // guest's checksum is still right since nothing changed.
        if sock::send(f.sock.as_raw_fd(), msg).is_ok() {
            self.stats.requests += 1;
        }
        true
    }

    /// Reads replies on flow `idx`'s socket and sends them to its guest.
    pub fn socket_event(&mut self, env: &mut Env, idx: usize) {
        let max = usize::from(self.mtu) - 20;
        for _ in 0..READ_BUDGET {
            let Some(f) = self.flows.get_mut(idx) else {
                return;
            };
            let n = match sock::recv(f.sock.as_raw_fd(), &mut self.buf[L4_OFF..]) {
                Ok(n) => n,
                Err(_) => return,
            };
            // Raw sockets deliver the IP header too; skip it.
            let (start, len) = if self.mode == EchoMode::Raw {
                let b = &self.buf[L4_OFF..L4_OFF + n];
                if n < 20 {
                    continue;
                }
                let ihl = usize::from(b[0] & 0x0f) * 4;
                if ihl < 20 || n < ihl + ICMP_ECHO_LEN {
                    continue;
                }
                let id = u16::from_be_bytes([b[ihl + 4], b[ihl + 5]]);
                if b[ihl] != ECHO_REPLY || id != f.id {
                    continue;
                }
                (L4_OFF + ihl, n - ihl)
            } else {
                (L4_OFF, n)
            };
            if len < ICMP_ECHO_LEN || len > max || self.buf[start] != ECHO_REPLY {
                continue;
            }
            f.last = env.now;
            self.buf.copy_within(start..start + len, L4_OFF);
            self.buf[L4_OFF + 4..L4_OFF + 6].copy_from_slice(&f.id.to_be_bytes());
            let n = wire::write_icmp_frame(
                &mut self.buf,
                f.guest_mac,
                self.tr.gateway_mac,
                f.peer,
                f.guest,
                len,
            );
            env.sink.send_frame(&self.buf[..n]);
            self.stats.replies += 1;
        }
    }

    /// Closes flows idle longer than the ICMP timeout; returns how many.
    pub fn expire(&mut self, env: &mut Env) -> u64 {
        let mut n = 0;
        for idx in self.flows.indices() {
            let idle = self
                .flows
                .get(idx)
                .is_some_and(|f| env.now.saturating_duration_since(f.last) > self.idle);
            if idle {
                if let Some(f) = self.flows.remove(idx) {
                    self.by_key.remove(&(f.guest, f.id, f.peer));
                    env.reg.remove(f.sock.as_raw_fd());
                    n += 1;
                }
            }
        }
        n
    }
}
