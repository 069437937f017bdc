//! TCP translation: each guest connection is spliced onto a host TCP socket.
//!
//! # Theory of operation
//!
//! skiff terminates neither side's TCP in a stack of its own and keeps no per-connection data
//! buffers. A flow is a small record: the host socket, the two sequence spaces, the guest's
//! window and a few flags. The kernel's socket buffers are the only buffers.
//!
//! **Guest to host.** A guest segment whose sequence number is the next one expected
//! (`rcv_nxt`) is written to the host socket with one `send()`. Only the bytes the socket
//! accepted are acknowledged; the rest the guest retransmits. The window advertised to the
//! guest is the free space of the socket's send buffer (`SO_SNDBUF` minus `SIOCOUTQ`), so a
//! guest that respects it is never refused. Out-of-order segments are dropped and answered
//! with a duplicate ACK, which makes the guest retransmit quickly. When the socket is full
//! we poll for `EPOLLOUT` and send a window update when it drains.
//!
//! **Host to guest.** Data the host peer sends stays in the host socket until the guest
//! acknowledges it. With `SO_PEEK_OFF` set, each `recvmsg(MSG_PEEK)` continues where the last
//! one stopped, so the socket's receive queue holds exactly the bytes in flight plus the
//! bytes not yet sent. Peeked bytes land directly in frame buffers behind room for the
//! headers, are cut into MSS-sized segments, and go to the guest within its window. A guest
//! ACK discards the acknowledged bytes from the socket (`recv(MSG_TRUNC)`, no copy).
//! Since bytes in flight keep the socket readable, it is polled edge-triggered while they are
//! there (new data and the host's FIN still wake us) and level-triggered otherwise.
//! Retransmission rewinds: `snd_nxt = snd_una`, peek offset back to zero, peek again. It is
//! triggered by three duplicate ACKs or by the retransmission timer (exponential back-off;
//! after [`MAX_RETRIES`] the flow is reset both ways). A zero guest window stops reading the
//! socket (the kernel then shrinks the host peer's window: backpressure end to end) and the
//! timer probes the window.
//!
//! **Opening.** A guest SYN starts a nonblocking `connect()` to the translated destination;
//! the SYN-ACK goes to the guest only once the host connection is up, so a refused
//! connection becomes a RST to the guest, like a real path would. A SYN that arrives when the
//! flow table is full is answered with a RST. Port forwards run the other way: an accepted
//! host connection makes skiff send a SYN to the guest from the gateway's address.
//!
//! **Options.** MSS is the guest MTU minus 40 in our SYNs, and the guest's MSS limits our
//! segments. Window scaling (RFC 7323) is used when the guest offers it; we scale by
//! [`OUR_WSCALE`]. No SACK, no timestamps: the path to the guest is a local link.
//!
//! **Closing.** A guest FIN is a `shutdown(SHUT_WR)` on the socket; the host's end of stream
//! (a zero-length peek) becomes our FIN to the guest once all data before it was sent. When
//! both FINs are acknowledged the socket is closed. A guest RST closes the socket with
//! `SO_LINGER` 0, so the host peer gets a RST too; a host reset or error becomes a RST to the
//! guest. A flow with no traffic for the TCP idle timeout is reset both ways.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::{random_u32, seq_le, seq_lt, sock, token, Env, Slab, TokenKind, Translation};
use crate::config::MacAddr;
use crate::wire::{self, tcp_flags as F, TcpFields, ETH_LEN, L4_OFF, TCP_LEN};

/// Our window scale shift (RFC 7323 §2.3): windows up to 64 KiB × 128 = 8 MiB.
pub const OUR_WSCALE: u8 = 7;
/// Initial retransmission timeout. The guest is on a local link, so this is short.
pub const RTO_INITIAL: Duration = Duration::from_millis(200);
/// Largest retransmission timeout after back-off.
pub const RTO_MAX: Duration = Duration::from_secs(10);
/// Retransmissions without progress before the flow is reset both ways.
pub const MAX_RETRIES: u8 = 10;
/// How long a host `connect()` may take before the guest gets a RST.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// SYNs sent to a guest for a port-forwarded connection before giving up.
pub const SYN_RETRIES: u8 = 5;
/// Segments peeked per `recvmsg`.
const FRAMES_PER_PEEK: usize = 32;
/// Without `SO_PEEK_OFF`, bytes in flight are re-read into a scratch buffer; bound it.
const MAX_IN_FLIGHT_NO_PEEK_OFF: u32 = 1 << 20;

const EPOLLIN: u32 = libc::EPOLLIN as u32;
const EPOLLOUT: u32 = libc::EPOLLOUT as u32;
const EPOLLRDHUP: u32 = libc::EPOLLRDHUP as u32;
const EPOLLHUP: u32 = libc::EPOLLHUP as u32;
const EPOLLERR: u32 = libc::EPOLLERR as u32;
const EPOLLET: u32 = libc::EPOLLET as u32;

/// A TCP segment from a guest, parsed.
#[derive(Clone, Copy, Debug)]
pub struct Segment<'a> {
    /// Guest's MAC.
    pub src_mac: MacAddr,
    /// Guest endpoint.
    pub src: SocketAddrV4,
    /// Destination as the guest addressed it.
    pub dst: SocketAddrV4,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number (valid with ACK).
    pub ack: u32,
    /// Flags, [`crate::wire::tcp_flags`].
    pub flags: u8,
    /// Window field, unscaled.
    pub window: u16,
    /// MSS option.
    pub mss: Option<u16>,
    /// Window scale option.
    pub wscale: Option<u8>,
    /// Payload.
    pub payload: &'a [u8],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Guest SYN seen; host connect() in progress.
    Connecting,
    /// Host connected; our SYN-ACK sent; waiting for the guest's ACK.
    SynAckSent,
    /// Port forward: our SYN sent to the guest; waiting for its SYN-ACK.
    SynSent,
    /// Data flows.
    Established,
}

/// Counters of TCP translation.
#[derive(Clone, Copy, Debug, Default)]
pub struct TcpStats {
    /// Flows opened (both directions).
    pub opened: u64,
    /// Flows closed normally.
    pub closed: u64,
    /// Flows reset (either side).
    pub reset: u64,
    /// Segments retransmitted to guests.
    pub retransmits: u64,
    /// Segments from guests with no flow (answered with RST).
    pub no_flow: u64,
    /// Guest segments the host socket took only in part (the guest retransmits the rest).
    pub partial_sends: u64,
    /// Guest segments after a hole, dropped.
    pub out_of_order: u64,
    /// New flows refused because no socket could be made (out of descriptors).
    pub socket_errors: u64,
}

struct Flow {
    sock: OwnedFd,
    token: u32,
    guest_mac: MacAddr,
    guest: SocketAddrV4,
    /// The far end as the guest sees it.
    peer: SocketAddrV4,
    state: State,
    iss: u32,
    snd_una: u32,
    snd_nxt: u32,
    /// The guest's receive window, bytes.
    snd_wnd: u32,
    snd_wscale: u8,
    rcv_wscale: u8,
    mss: u16,
    rcv_nxt: u32,
    guest_fin: bool,
    host_eof: bool,
    fin_sent: bool,
    fin_acked: bool,
    peek_off: bool,
    sndbuf: u32,
    interest: u32,
    registered: bool,
    needs_ack: bool,
    ack_queued: bool,
    dup_acks: u8,
    retries: u8,
    rto: Duration,
    deadline: Option<Instant>,
    last_activity: Instant,
}

impl Flow {
    fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    fn in_flight(&self) -> u32 {
        self.snd_nxt.wrapping_sub(self.snd_una)
    }

    /// The window we advertise, bytes: what the host socket can still take. The kernel
    /// charges its send buffer with the memory of the queued buffers, a little more than
    /// their bytes (SIOCOUTQ), so a quarter is kept back: a segment the socket refuses in
    /// part costs the guest a retransmission of everything after it. The send buffer grows
    /// with the kernel's autotuning, so it is read again when it looks full.
    fn rcv_window(&mut self) -> u32 {
        let outq = sock::outq(self.fd()).unwrap_or(0) as u32;
        if outq + 2 * u32::from(self.mss) >= self.sndbuf - self.sndbuf / 4 {
            if let Ok(b) = sock::getsockopt_int(self.fd(), libc::SOL_SOCKET, libc::SO_SNDBUF) {
                self.sndbuf = b.max(0) as u32;
            }
        }
        (self.sndbuf - self.sndbuf / 4).saturating_sub(outq)
    }

    /// The window field for our next segment.
    fn adv_window(&mut self) -> u16 {
        let w = self.rcv_window();
        self.window_field(w)
    }

    fn window_field(&self, wnd: u32) -> u16 {
        (wnd >> self.rcv_wscale).min(u32::from(u16::MAX)) as u16
    }
}

/// The TCP flows of one network.
pub struct TcpTable {
    flows: Slab<Flow>,
    by_key: HashMap<(SocketAddrV4, SocketAddrV4), usize>,
    pool: Vec<Vec<u8>>,
    ctl: Vec<u8>,
    discard: Vec<u8>,
    pending_acks: Vec<usize>,
    mtu: u16,
    tr: Translation,
    idle: Duration,
    next_forward_port: u16,
    /// Counters.
    pub stats: TcpStats,
}

enum Verdict {
    Keep,
    Close,
    Reset,
}

impl TcpTable {
    /// A table for a network of the given MTU and translation rules; flows idle for `idle`
    /// are reset.
    pub fn new(mtu: u16, tr: Translation, idle: Duration) -> Self {
        let frame = usize::from(mtu) + ETH_LEN;
        TcpTable {
            flows: Slab::default(),
            by_key: HashMap::new(),
            pool: (0..FRAMES_PER_PEEK).map(|_| vec![0u8; frame]).collect(),
            ctl: vec![0u8; 128],
            discard: Vec::new(),
            pending_acks: Vec::new(),
            mtu,
            tr,
            idle,
            next_forward_port: 0,
            stats: TcpStats::default(),
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

    fn our_mss(&self) -> u16 {
        self.mtu - 40
    }

    /// Handles one segment from a guest. `room` says whether a new flow may be opened.
    pub fn guest_segment(&mut self, env: &mut Env, seg: &Segment, room: bool) -> bool {
        let key = (seg.src, seg.dst);
        let Some(&idx) = self.by_key.get(&key) else {
            return self.new_flow(env, seg, room);
        };
        let verdict = match self.flows.get_mut(idx) {
            Some(f) => {
                f.guest_mac = seg.src_mac;
                f.last_activity = env.now;
                Self::segment_on_flow(
                    f,
                    env,
                    seg,
                    &self.tr,
                    &mut self.ctl,
                    self.mtu - 40,
                    &mut self.stats,
                )
            }
            None => return false,
        };
        match verdict {
            Verdict::Keep => {
                self.push(env, idx);
                self.queue_ack(idx);
                self.maybe_finish(env, idx);
            }
            Verdict::Close => self.close(env, idx, false),
            Verdict::Reset => self.close(env, idx, true),
        }
        true
    }

    fn new_flow(&mut self, env: &mut Env, seg: &Segment, room: bool) -> bool {
        if seg.flags & F::RST != 0 {
            return true;
        }
        if seg.flags & (F::SYN | F::ACK) != F::SYN {
            // No flow: RFC 9293 §3.10.7.1 says answer with a reset.
            self.stats.no_flow += 1;
            send_rst_for(env, &self.tr, &mut self.ctl, seg);
            return true;
        }
        let Some(target) = self.tr.outbound_tcp(seg.dst) else {
            return false;
        };
        if !room {
            send_rst_for(env, &self.tr, &mut self.ctl, seg);
            return false;
        }
        let sock = match sock::socket(libc::SOCK_STREAM, 0) {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors, typically: refused like a full table, counted, and
                // logged only at debug level since a guest can cause it at will.
                tracing::debug!("tcp: socket: {e}");
                self.stats.socket_errors += 1;
                send_rst_for(env, &self.tr, &mut self.ctl, seg);
                return true;
            }
        };
        let fd = sock.as_raw_fd();
        let _ = sock::setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
        if let Err(e) = sock::connect(fd, target) {
            tracing::debug!("tcp: connect {target}: {e}");
            send_rst_for(env, &self.tr, &mut self.ctl, seg);
            return true;
        }
        let peek_off = sock::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0).is_ok();
        let (snd_wscale, rcv_wscale) = match seg.wscale {
            Some(ws) => (ws.min(14), OUR_WSCALE),
            None => (0, 0),
        };
        let flow = Flow {
            sock,
            token: 0,
            guest_mac: seg.src_mac,
            guest: seg.src,
            peer: seg.dst,
            state: State::Connecting,
            iss: random_u32(),
            snd_una: 0,
            snd_nxt: 0,
            snd_wnd: u32::from(seg.window),
            snd_wscale,
            rcv_wscale,
            mss: seg.mss.unwrap_or(536).clamp(64, self.our_mss()),
            rcv_nxt: seg.seq.wrapping_add(1),
            guest_fin: false,
            host_eof: false,
            fin_sent: false,
            fin_acked: false,
            peek_off,
            sndbuf: 0,
            interest: EPOLLOUT,
            registered: true,
            needs_ack: false,
            ack_queued: false,
            dup_acks: 0,
            retries: 0,
            rto: RTO_INITIAL,
            deadline: Some(env.now + CONNECT_TIMEOUT),
            last_activity: env.now,
        };
        let idx = self.flows.insert(flow);
        let tok = token(TokenKind::Tcp, idx);
        if let Some(f) = self.flows.get_mut(idx) {
            f.token = tok;
        }
        self.by_key.insert((seg.src, seg.dst), idx);
        env.reg.add(fd, tok, EPOLLOUT);
        self.stats.opened += 1;
        tracing::debug!("tcp: {} -> {} via {target}", seg.src, seg.dst);
        true
    }

    /// A host connection accepted for the port forward to `guest`: opens the flow towards
    /// the guest with a SYN from the gateway. `guest_mac` is the guest's MAC if known (the
    /// SYN is retried until it is).
    pub fn accept_forward(
        &mut self,
        env: &mut Env,
        sock: OwnedFd,
        guest: SocketAddrV4,
        guest_mac: Option<MacAddr>,
    ) {
        let Some(port) = self.forward_port(guest) else {
            sock::set_linger_zero(sock.as_raw_fd());
            return;
        };
        let peer = SocketAddrV4::new(self.tr.gateway, port);
        let fd = sock.as_raw_fd();
        let _ = sock::setsockopt_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1);
        let peek_off = sock::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0).is_ok();
        let iss = random_u32();
        let flow = Flow {
            sock,
            token: 0,
            guest_mac: guest_mac.unwrap_or(MacAddr::BROADCAST),
            guest,
            peer,
            state: State::SynSent,
            iss,
            snd_una: iss,
            snd_nxt: iss.wrapping_add(1),
            snd_wnd: 0,
            snd_wscale: 0,
            rcv_wscale: 0,
            mss: 536,
            rcv_nxt: 0,
            guest_fin: false,
            host_eof: false,
            fin_sent: false,
            fin_acked: false,
            peek_off,
            sndbuf: sock::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUF).unwrap_or(65536)
                as u32,
            interest: 0,
            registered: false,
            needs_ack: false,
            ack_queued: false,
            dup_acks: 0,
            retries: 0,
            rto: Duration::from_secs(1),
            deadline: Some(env.now + Duration::from_secs(1)),
            last_activity: env.now,
        };
        let idx = self.flows.insert(flow);
        self.by_key.insert((guest, peer), idx);
        self.stats.opened += 1;
        if let Some(f) = self.flows.get_mut(idx) {
            f.token = token(TokenKind::Tcp, idx);
            // Registered once established: until then nothing is read from the socket.
            f.registered = true;
            env.reg.add(f.fd(), f.token, 0);
            if guest_mac.is_some() {
                send_syn(f, env, &self.tr, &mut self.ctl, self.mtu - 40);
            }
        }
    }

    /// Resends the SYN of port-forwarded flows to `guest` now that its MAC is known.
    pub fn guest_mac_learned(&mut self, env: &mut Env, ip: Ipv4Addr, mac: MacAddr) {
        for idx in self.flows.indices() {
            if let Some(f) = self.flows.get_mut(idx) {
                if *f.guest.ip() == ip && f.state == State::SynSent && f.guest_mac != mac {
                    f.guest_mac = mac;
                    send_syn(f, env, &self.tr, &mut self.ctl, self.mtu - 40);
                }
            }
        }
    }

    fn forward_port(&mut self, guest: SocketAddrV4) -> Option<u16> {
        // Ephemeral ports of the gateway, unique per guest endpoint.
        for _ in 0..1024 {
            self.next_forward_port = if self.next_forward_port < 32768 {
                32768 + (random_u32() % 1000) as u16
            } else if self.next_forward_port >= 60999 {
                32768
            } else {
                self.next_forward_port + 1
            };
            let peer = SocketAddrV4::new(self.tr.gateway, self.next_forward_port);
            if !self.by_key.contains_key(&(guest, peer)) {
                return Some(self.next_forward_port);
            }
        }
        None
    }

    fn segment_on_flow(
        f: &mut Flow,
        env: &mut Env,
        seg: &Segment,
        tr: &Translation,
        ctl: &mut [u8],
        our_mss: u16,
        stats: &mut TcpStats,
    ) -> Verdict {
        if seg.flags & F::RST != 0 {
            // Accept a reset only inside the window (RFC 5961 §3 in spirit: not blind).
            let ok = f.state == State::SynSent || seg.seq == f.rcv_nxt;
            return if ok {
                sock::set_linger_zero(f.fd());
                Verdict::Close
            } else {
                Verdict::Keep
            };
        }
        match f.state {
            State::Connecting => return Verdict::Keep,
            State::SynAckSent if seg.flags & F::SYN != 0 => {
                send_synack(f, env, tr, ctl, our_mss);
                return Verdict::Keep;
            }
            State::SynSent => {
                let want = F::SYN | F::ACK;
                if seg.flags & want != want || seg.ack != f.iss.wrapping_add(1) {
                    return Verdict::Keep;
                }
                f.rcv_nxt = seg.seq.wrapping_add(1);
                f.snd_una = seg.ack;
                if let Some(ws) = seg.wscale {
                    f.snd_wscale = ws.min(14);
                    f.rcv_wscale = OUR_WSCALE;
                }
                f.mss = seg
                    .mss
                    .unwrap_or(536)
                    .clamp(64, f.mss.max(seg.mss.unwrap_or(536)));
                f.snd_wnd = u32::from(seg.window) << f.snd_wscale;
                f.state = State::Established;
                f.deadline = None;
                f.retries = 0;
                f.rto = RTO_INITIAL;
                f.needs_ack = true;
                set_interest(f, env, EPOLLIN | EPOLLRDHUP);
                return Verdict::Keep;
            }
            _ => {}
        }
        if seg.flags & F::SYN != 0 {
            // A stray SYN on a live flow: answer with an ACK (RFC 5961 §4 challenge ACK).
            f.needs_ack = true;
            return Verdict::Keep;
        }
        if seg.flags & F::ACK == 0 {
            return Verdict::Keep;
        }
        if f.state == State::SynAckSent {
            if seg.ack != f.iss.wrapping_add(1) {
                return Verdict::Keep;
            }
            f.state = State::Established;
            f.snd_una = seg.ack;
            f.deadline = None;
            f.retries = 0;
            f.rto = RTO_INITIAL;
            set_interest(f, env, EPOLLIN | EPOLLRDHUP);
        }
        // Acknowledgment of what we sent.
        let wnd = u32::from(seg.window) << f.snd_wscale;
        if seq_lt(f.snd_una, seg.ack) && seq_le(seg.ack, f.snd_nxt) {
            let mut acked = seg.ack.wrapping_sub(f.snd_una);
            if f.fin_sent && !f.fin_acked && seg.ack == f.snd_nxt {
                f.fin_acked = true;
                acked -= 1;
            }
            if acked > 0 {
                match sock::discard(f.fd(), acked as usize) {
                    Ok(n) if n == acked as usize => {}
                    _ => return Verdict::Reset,
                }
            }
            f.snd_una = seg.ack;
            f.dup_acks = 0;
            f.retries = 0;
            f.rto = RTO_INITIAL;
            f.deadline = (f.in_flight() > 0).then(|| env.now + f.rto);
        } else if seg.ack == f.snd_una
            && seg.payload.is_empty()
            && seg.flags & F::FIN == 0
            && f.in_flight() > 0
            && wnd == f.snd_wnd
        {
            f.dup_acks = f.dup_acks.saturating_add(1);
            if f.dup_acks == 3 {
                rewind(f);
            }
        }
        if wnd == 0 {
            // The guest answers our probes: it is alive, only its application is slow.
            f.retries = 0;
        }
        f.snd_wnd = wnd;
        // Data from the guest. A retransmission may overlap what the socket already took:
        // only the new part is written.
        if !seg.payload.is_empty() {
            let seen = f.rcv_nxt.wrapping_sub(seg.seq) as usize;
            if seq_le(seg.seq, f.rcv_nxt) && seen < seg.payload.len() && !f.guest_fin {
                let data = &seg.payload[seen..];
                match sock::send(f.fd(), data) {
                    Ok(n) => {
                        f.rcv_nxt = f.rcv_nxt.wrapping_add(n as u32);
                        if n < data.len() {
                            stats.partial_sends += 1;
                            want_out(f, env);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        stats.partial_sends += 1;
                        want_out(f, env);
                    }
                    Err(_) => return Verdict::Reset,
                }
                f.needs_ack = true;
            } else if seq_lt(f.rcv_nxt, seg.seq) {
                // A hole before this segment: a duplicate ACK at once, not coalesced, so that
                // the guest's fast retransmit starts (RFC 5681 §4.2).
                stats.out_of_order += 1;
                send_ack(f, env, tr, ctl);
            } else {
                f.needs_ack = true;
            }
        }
        if seg.payload.is_empty() && seg.flags & F::FIN == 0 && seq_lt(seg.seq, f.rcv_nxt) {
            // A zero-window probe or keep-alive: an old sequence number asks for an ACK.
            f.needs_ack = true;
        }
        if seg.flags & F::FIN != 0 {
            let fin_seq = seg.seq.wrapping_add(seg.payload.len() as u32);
            if fin_seq == f.rcv_nxt && !f.guest_fin {
                f.guest_fin = true;
                f.rcv_nxt = f.rcv_nxt.wrapping_add(1);
                let _ = sock::shutdown_write(f.fd());
            }
            f.needs_ack = true;
        }
        Verdict::Keep
    }

    /// Handles readiness of flow `idx`'s socket.
    pub fn socket_event(&mut self, env: &mut Env, idx: usize, events: u32) {
        let Some(f) = self.flows.get_mut(idx) else {
            return;
        };
        f.last_activity = env.now;
        if f.state == State::Connecting {
            if events & (EPOLLOUT | EPOLLERR | EPOLLHUP) == 0 {
                return;
            }
            match sock::take_error(f.fd()) {
                Ok(None) if events & EPOLLERR == 0 => {
                    f.state = State::SynAckSent;
                    f.sndbuf = sock::getsockopt_int(f.fd(), libc::SOL_SOCKET, libc::SO_SNDBUF)
                        .unwrap_or(65536) as u32;
                    f.snd_una = f.iss;
                    f.snd_nxt = f.iss.wrapping_add(1);
                    f.deadline = Some(env.now + Duration::from_secs(1));
                    f.rto = Duration::from_secs(1);
                    set_interest(f, env, 0);
                    send_synack(f, env, &self.tr, &mut self.ctl, self.mtu - 40);
                }
                _ => self.close(env, idx, true),
            }
            return;
        }
        if events & EPOLLERR != 0 {
            if let Ok(Some(e)) = sock::take_error(f.fd()) {
                tracing::debug!("tcp: {} <-> {}: {e}", f.guest, f.peer);
            }
            self.close(env, idx, true);
            return;
        }
        if events & EPOLLOUT != 0 {
            // The host socket drained: tell the guest its window opened.
            f.needs_ack = true;
            let i = f.interest & !EPOLLOUT;
            set_interest(f, env, i);
        }
        if events & (EPOLLRDHUP | EPOLLHUP) != 0 {
            f.host_eof = true;
        }
        if events & EPOLLHUP != 0 && f.registered {
            // Both directions are shut: nothing new can arrive, and a level-triggered HUP
            // would fire forever. Sending what is left is driven by the guest's ACKs.
            env.reg.remove(f.fd());
            f.registered = false;
        }
        self.push(env, idx);
        self.queue_ack(idx);
        self.maybe_finish(env, idx);
    }

    /// Sends host data (and the FIN after it) to the guest, within its window.
    fn push(&mut self, env: &mut Env, idx: usize) {
        let mss = usize::from(self.our_mss());
        let Some(f) = self.flows.get_mut(idx) else {
            return;
        };
        if f.state != State::Established || f.fin_sent {
            return;
        }
        let hdr = L4_OFF + TCP_LEN;
        for _ in 0..64 {
            let in_flight = f.in_flight();
            let mut avail = f.snd_wnd.saturating_sub(in_flight);
            if !f.peek_off {
                avail = avail.min(MAX_IN_FLIGHT_NO_PEEK_OFF.saturating_sub(in_flight));
            }
            if avail == 0 {
                // Nothing may be sent: stop polling for input, the host's FIN included (a
                // level-triggered EPOLLRDHUP would fire until the window opens). The
                // guest's next ACK pushes again.
                if f.interest & (EPOLLIN | EPOLLRDHUP) != 0 {
                    let i = f.interest & !(EPOLLIN | EPOLLRDHUP);
                    set_interest(f, env, i);
                }
                if f.deadline.is_none() {
                    // Zero window with nothing in flight: probe it later.
                    f.deadline = Some(env.now + f.rto);
                }
                return;
            }
            let seg_max = mss.min(usize::from(f.mss));
            // The peek lands straight in the frame buffers, behind room for the headers.
            let mut iov = [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; FRAMES_PER_PEEK + 1];
            let mut n_iov = 0;
            if !f.peek_off && in_flight > 0 {
                // Without SO_PEEK_OFF the bytes in flight are peeked again, into scratch.
                self.discard.resize(in_flight as usize, 0);
                iov[0] = libc::iovec {
                    iov_base: self.discard.as_mut_ptr() as *mut libc::c_void,
                    iov_len: in_flight as usize,
                };
                n_iov = 1;
            }
            let mut want = 0usize;
            for buf in self.pool.iter_mut() {
                if want >= avail as usize {
                    break;
                }
                let len = seg_max.min(avail as usize - want);
                iov[n_iov] = libc::iovec {
                    // SAFETY: hdr + len <= buf.len(): buffers hold a whole frame of the MTU.
                    iov_base: unsafe { buf.as_mut_ptr().add(hdr) } as *mut libc::c_void,
                    iov_len: len,
                };
                n_iov += 1;
                want += len;
            }
            let got = match sock::peek_into(f.fd(), &mut iov[..n_iov]) {
                Ok(n) if !f.peek_off => n.saturating_sub(in_flight as usize),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    input_drained(f, env, in_flight);
                    return;
                }
                Err(_) => {
                    self.close(env, idx, true);
                    return;
                }
            };
            let eof = got == 0 && (f.peek_off || f.host_eof);
            if got == 0 && !eof {
                input_drained(f, env, in_flight);
                return;
            }
            if eof {
                let fields = TcpFields {
                    src_port: f.peer.port(),
                    dst_port: f.guest.port(),
                    seq: f.snd_nxt,
                    ack: f.rcv_nxt,
                    flags: F::FIN | F::ACK,
                    window: f.adv_window(),
                    ..Default::default()
                };
                emit(f, env, &self.tr, &mut self.ctl, &fields);
                f.fin_sent = true;
                f.host_eof = true;
                f.snd_nxt = f.snd_nxt.wrapping_add(1);
                f.needs_ack = false;
                if f.deadline.is_none() {
                    f.deadline = Some(env.now + f.rto);
                }
                if f.registered && f.interest & EPOLLIN != 0 {
                    let i = f.interest & !(EPOLLIN | EPOLLRDHUP);
                    set_interest(f, env, i);
                }
                return;
            }
            let window = f.adv_window();
            let mut left = got;
            for buf in self.pool.iter_mut() {
                if left == 0 {
                    break;
                }
                let len = left.min(seg_max);
                left -= len;
                let fields = TcpFields {
                    src_port: f.peer.port(),
                    dst_port: f.guest.port(),
                    seq: f.snd_nxt,
                    ack: f.rcv_nxt,
                    flags: if left == 0 { F::ACK | F::PSH } else { F::ACK },
                    window,
                    ..Default::default()
                };
                let n = wire::write_tcp_frame(
                    buf,
                    f.guest_mac,
                    self.tr.gateway_mac,
                    *f.peer.ip(),
                    *f.guest.ip(),
                    &fields,
                    len,
                );
                env.sink.send_frame(&buf[..n]);
                f.snd_nxt = f.snd_nxt.wrapping_add(len as u32);
            }
            f.needs_ack = false;
            if f.deadline.is_none() {
                f.deadline = Some(env.now + f.rto);
            }
            if got < want {
                // The socket is drained for now.
                return;
            }
        }
    }

    fn queue_ack(&mut self, idx: usize) {
        if let Some(f) = self.flows.get_mut(idx) {
            if f.needs_ack && !f.ack_queued {
                f.ack_queued = true;
                self.pending_acks.push(idx);
            }
        }
    }

    /// Sends the ACKs that handling a batch of segments left owed, one per flow.
    pub fn flush_acks(&mut self, env: &mut Env) {
        let mut pending = std::mem::take(&mut self.pending_acks);
        for idx in pending.drain(..) {
            if let Some(f) = self.flows.get_mut(idx) {
                f.ack_queued = false;
                if f.needs_ack {
                    send_ack(f, env, &self.tr, &mut self.ctl);
                }
            }
        }
        self.pending_acks = pending;
    }

    fn maybe_finish(&mut self, env: &mut Env, idx: usize) {
        let done = match self.flows.get(idx) {
            Some(f) => f.guest_fin && f.fin_acked,
            None => false,
        };
        if done {
            self.flush_one_ack(env, idx);
            self.close(env, idx, false);
        }
    }

    fn flush_one_ack(&mut self, env: &mut Env, idx: usize) {
        if let Some(f) = self.flows.get_mut(idx) {
            if f.needs_ack {
                send_ack(f, env, &self.tr, &mut self.ctl);
            }
        }
    }

    /// Closes flow `idx`; with `reset`, both sides get a RST.
    fn close(&mut self, env: &mut Env, idx: usize, reset: bool) {
        let Some(mut f) = self.flows.remove(idx) else {
            return;
        };
        self.by_key.remove(&(f.guest, f.peer));
        if f.registered {
            env.reg.remove(f.fd());
        }
        if reset {
            self.stats.reset += 1;
            sock::set_linger_zero(f.fd());
            if f.guest_mac != MacAddr::BROADCAST {
                let fields = TcpFields {
                    src_port: f.peer.port(),
                    dst_port: f.guest.port(),
                    seq: f.snd_nxt,
                    ack: f.rcv_nxt,
                    flags: F::RST | F::ACK,
                    ..Default::default()
                };
                emit(&f, env, &self.tr, &mut self.ctl, &fields);
            }
        } else {
            self.stats.closed += 1;
        }
        f.needs_ack = false;
        tracing::debug!("tcp: closed {} <-> {} reset={reset}", f.guest, f.peer);
    }

    /// Timers: retransmission, window probes, connect and SYN time-outs, idle flows.
    pub fn timer(&mut self, env: &mut Env) {
        for idx in self.flows.indices() {
            let Some(f) = self.flows.get_mut(idx) else {
                continue;
            };
            if env.now.saturating_duration_since(f.last_activity) > self.idle {
                self.close(env, idx, true);
                continue;
            }
            let Some(d) = f.deadline else { continue };
            if env.now < d {
                continue;
            }
            match f.state {
                State::Connecting => {
                    self.close(env, idx, true);
                    continue;
                }
                State::SynAckSent | State::SynSent => {
                    if f.retries >= SYN_RETRIES {
                        // Either side never answered: both get a reset, so the host client of
                        // a port forward sees a refusal rather than an empty connection.
                        self.close(env, idx, true);
                        continue;
                    }
                    f.retries += 1;
                    f.rto = (f.rto * 2).min(RTO_MAX);
                    f.deadline = Some(env.now + f.rto);
                    if f.state == State::SynSent {
                        send_syn(f, env, &self.tr, &mut self.ctl, self.mtu - 40);
                    } else {
                        send_synack(f, env, &self.tr, &mut self.ctl, self.mtu - 40);
                    }
                    continue;
                }
                State::Established => {}
            }
            if f.in_flight() == 0 {
                // Window probe: an ACK for an old sequence number makes the guest answer with
                // its current window (RFC 9293 §3.8.6.1).
                f.deadline = None;
                if f.snd_wnd == 0 {
                    probe(f, env, &self.tr, &mut self.ctl);
                    f.deadline = Some(env.now + f.rto);
                    f.rto = (f.rto * 2).min(RTO_MAX);
                }
                continue;
            }
            if f.retries >= MAX_RETRIES {
                self.close(env, idx, true);
                continue;
            }
            f.retries += 1;
            f.rto = (f.rto * 2).min(RTO_MAX);
            f.deadline = Some(env.now + f.rto);
            self.stats.retransmits += 1;
            if f.snd_wnd == 0 {
                probe(f, env, &self.tr, &mut self.ctl);
                continue;
            }
            rewind(f);
            self.push(env, idx);
        }
    }

    /// Closes every flow with a reset (the network is stopping).
    pub fn shutdown(&mut self, env: &mut Env) {
        for idx in self.flows.indices() {
            self.close(env, idx, true);
        }
    }
}

/// Restarts sending from the oldest unacknowledged byte (go-back-N).
fn rewind(f: &mut Flow) {
    if f.peek_off && sock::setsockopt_int(f.fd(), libc::SOL_SOCKET, libc::SO_PEEK_OFF, 0).is_err() {
        return;
    }
    f.snd_nxt = f.snd_una;
    if f.fin_sent && !f.fin_acked {
        f.fin_sent = false;
    }
    f.dup_acks = 0;
}

fn set_interest(f: &mut Flow, env: &mut Env, interest: u32) {
    if !f.registered || f.interest == interest {
        f.interest = interest;
        return;
    }
    f.interest = interest;
    env.reg.modify(f.fd(), f.token, interest);
}

/// Everything the socket holds has been sent. Bytes in flight keep it readable, so a
/// level-triggered EPOLLIN would fire without pause until the guest's ACK: while bytes are
/// in flight the socket is polled edge-triggered, which reports new data (and the host's
/// FIN) only. Other bits (EPOLLOUT) are kept.
fn input_drained(f: &mut Flow, env: &mut Env, in_flight: u32) {
    let i = f.interest | EPOLLIN | EPOLLRDHUP;
    let i = if in_flight > 0 {
        i | EPOLLET
    } else {
        i & !EPOLLET
    };
    set_interest(f, env, i);
}

fn want_out(f: &mut Flow, env: &mut Env) {
    if f.interest & EPOLLOUT == 0 {
        let i = f.interest | EPOLLOUT;
        set_interest(f, env, i);
    }
}

/// Sends a segment without payload from the flow's far end to its guest.
fn emit(f: &Flow, env: &mut Env, tr: &Translation, ctl: &mut [u8], fields: &TcpFields) {
    let n = wire::write_tcp_frame(
        ctl,
        f.guest_mac,
        tr.gateway_mac,
        *f.peer.ip(),
        *f.guest.ip(),
        fields,
        0,
    );
    env.sink.send_frame(&ctl[..n]);
}

fn send_ack(f: &mut Flow, env: &mut Env, tr: &Translation, ctl: &mut [u8]) {
    let wnd = f.rcv_window();
    if wnd < 4 * u32::from(f.mss) && !f.guest_fin {
        // The guest is about to stall on our window: tell it when the socket drains.
        want_out(f, env);
    }
    let fields = TcpFields {
        src_port: f.peer.port(),
        dst_port: f.guest.port(),
        seq: f.snd_nxt,
        ack: f.rcv_nxt,
        flags: F::ACK,
        window: f.window_field(wnd),
        ..Default::default()
    };
    emit(f, env, tr, ctl, &fields);
    f.needs_ack = false;
}

fn probe(f: &mut Flow, env: &mut Env, tr: &Translation, ctl: &mut [u8]) {
    let fields = TcpFields {
        src_port: f.peer.port(),
        dst_port: f.guest.port(),
        seq: f.snd_una.wrapping_sub(1),
        ack: f.rcv_nxt,
        flags: F::ACK,
        window: f.adv_window(),
        ..Default::default()
    };
    emit(f, env, tr, ctl, &fields);
}

fn send_synack(f: &mut Flow, env: &mut Env, tr: &Translation, ctl: &mut [u8], our_mss: u16) {
    let fields = TcpFields {
        src_port: f.peer.port(),
        dst_port: f.guest.port(),
        seq: f.iss,
        ack: f.rcv_nxt,
        flags: F::SYN | F::ACK,
        // Windows in SYN segments are never scaled (RFC 7323 §2.2).
        window: f.rcv_window().min(65535) as u16,
        mss: Some(our_mss),
        wscale: (f.rcv_wscale > 0).then_some(f.rcv_wscale),
    };
    emit(f, env, tr, ctl, &fields);
}

fn send_syn(f: &mut Flow, env: &mut Env, tr: &Translation, ctl: &mut [u8], our_mss: u16) {
    let fields = TcpFields {
        src_port: f.peer.port(),
        dst_port: f.guest.port(),
        seq: f.iss,
        ack: 0,
        flags: F::SYN,
        window: 65535,
        mss: Some(our_mss),
        wscale: Some(OUR_WSCALE),
    };
    emit(f, env, tr, ctl, &fields);
}

/// Answers a segment that has no flow with a RST (RFC 9293 §3.10.7.1).
fn send_rst_for(env: &mut Env, tr: &Translation, ctl: &mut [u8], seg: &Segment) {
    let (seq, ack, flags) = if seg.flags & F::ACK != 0 {
        (seg.ack, 0, F::RST)
    } else {
        let len = seg.payload.len() as u32
            + u32::from(seg.flags & F::SYN != 0)
            + u32::from(seg.flags & F::FIN != 0);
        (0, seg.seq.wrapping_add(len), F::RST | F::ACK)
    };
    let fields = TcpFields {
        src_port: seg.dst.port(),
        dst_port: seg.src.port(),
        seq,
        ack,
        flags,
        ..Default::default()
    };
    let n = wire::write_tcp_frame(
        ctl,
        seg.src_mac,
        tr.gateway_mac,
        *seg.dst.ip(),
        *seg.src.ip(),
        &fields,
        0,
    );
    env.sink.send_frame(&ctl[..n]);
}
