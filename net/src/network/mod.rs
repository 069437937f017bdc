//! One network, running: the event loop that owns the switch, its ports, the gateway's
//! services and the NAT, all on one thread with no locks on the data path.
//!
//! [`Network::new`] opens everything a configuration asks for (or fails naming the flag, with
//! nothing left open); [`Network::run`] polls until the stop descriptor becomes readable.
//! [`fabric`] is the L2 half (switch, ports, capture), [`ingress`] what the gateway does with
//! the frames addressed to it.

/// Runs `$body` with one protocol table of the network (`$field`, bound as `$table`) and an
/// [`Env`] over the switch: the split borrow every NAT call needs.
macro_rules! with_table {
    ($net:expr, $reg:expr, $now:expr, $field:ident, |$table:ident, $env:ident| $body:expr) => {{
        let $crate::network::Network {
            $field: $table,
            fabric,
            ..
        } = $net;
        let mut $env = $crate::nat::Env {
            now: $now,
            reg: $reg,
            sink: fabric,
        };
        $body
    }};
}

mod fabric;
mod ingress;

use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::rc::Rc;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

use crate::config::NetworkConfig;
use crate::dhcp::DhcpServer;
use crate::dns::{self, Forwarder, Names, SharedNames};
use crate::error::{Error, Result};
use crate::gateway::Neighbours;
use crate::nat::forward::{self, Forward};
use crate::nat::icmp::{EchoMode, IcmpTable};
use crate::nat::tcp::TcpTable;
use crate::nat::udp::UdpTable;
use crate::nat::{token, untoken, Env, NatStats, Registrar, TokenKind, Translation};
use crate::pcap::Capture;
use crate::port::{Port, StreamListener, TapPort};

pub use fabric::Fabric;

/// Timer period: the granularity of retransmission and DNS time-outs.
const TICK: Duration = Duration::from_millis(20);
/// Housekeeping period: idle flows, leases, MAC and neighbour ageing, capture flush.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Bound on attached stream clients.
pub const MAX_STREAM_CLIENTS: usize = 64;

/// What the network attaches besides its configuration: where clients come from.
#[derive(Clone, Debug, Default)]
pub struct Attachments {
    /// `--socket PATH`: a listening unix socket for QEMU stream clients.
    pub socket: Option<std::path::PathBuf>,
    /// `--tap NAME`, repeatable.
    pub taps: Vec<String>,
    /// `--pcap FILE`.
    pub pcap: Option<std::path::PathBuf>,
}

/// A running network.
pub struct Network {
    cfg: NetworkConfig,
    fabric: Fabric,
    listener: Option<StreamListener>,
    neighbours: Neighbours,
    dhcp: DhcpServer,
    names: SharedNames,
    names_generation: u64,
    dns: Forwarder,
    dns_fds: Vec<RawFd>,
    dns_out: Vec<(dns::Client, Vec<u8>)>,
    tcp: TcpTable,
    udp: UdpTable,
    icmp: IcmpTable,
    forwards: Vec<Forward>,
    tr: Translation,
    timer: TimerFd,
    stop_fd: Option<RawFd>,
    stopping: Rc<RefCell<bool>>,
    last_housekeeping: Instant,
    listener_paused: bool,
    scratch: Vec<u8>,
    /// Counters of the NAT as a whole.
    pub nat_stats: NatStats,
}

impl Network {
    /// Opens a network: checks `cfg`, then opens the TAP devices, the stream socket, the
    /// capture file, the lease database, DNS sockets and port-forward sockets.
    ///
    /// # Errors
    /// [`Error::Config`] or [`Error::Io`] naming the flag at fault; whatever was opened before
    /// the failure is closed again.
    pub fn new(cfg: NetworkConfig, att: &Attachments) -> Result<Self> {
        cfg.validate()?;
        raise_fd_limit(cfg.max_flows);
        // A peer that closes its end must not kill the process through SIGPIPE.
        // SAFETY: setting a signal's disposition to ignore has no preconditions.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };

        let host = if cfg.host_loopback {
            Ipv4Addr::LOCALHOST
        } else {
            match cfg.host_address {
                Some(a) => a,
                None => default_route_address().unwrap_or_else(|| {
                    tracing::warn!(
                        "no default route: the gateway address reaches the host at 127.0.0.1"
                    );
                    Ipv4Addr::LOCALHOST
                }),
            }
        };
        let upstreams = if cfg.dns_upstreams.is_empty() {
            let u = dns::upstreams_from_resolv_conf(Path::new("/etc/resolv.conf"));
            if u.is_empty() {
                tracing::warn!("no nameserver in /etc/resolv.conf: DNS answers local names only");
            }
            u
        } else {
            cfg.dns_upstreams.clone()
        };

        let mut taps = Vec::new();
        for name in &att.taps {
            taps.push(TapPort::open(name)?);
        }
        let listener = match &att.socket {
            Some(p) => Some(StreamListener::bind(p)?),
            None => None,
        };
        let capture = match &att.pcap {
            Some(p) => Some(Capture::create(p)?),
            None => None,
        };
        let forwards = forward::open_all(&cfg.forwards)?;
        let dhcp = DhcpServer::new(&cfg)?;
        let names: SharedNames = Arc::new(RwLock::new(Names::new()));
        let dns_tcp = dns::spawn_tcp_server(
            SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            names.clone(),
            cfg.domain.clone(),
            cfg.subnet,
            upstreams.clone(),
        )?;
        let dns = Forwarder::new(upstreams)?;
        let dns_fds = dns.fds();
        let timer = TimerFd::new().map_err(|e| Error::io("timerfd", e.into()))?;

        let tr = Translation {
            subnet: cfg.subnet,
            gateway: cfg.gateway(),
            gateway_mac: cfg.gateway_mac,
            host,
            dns_tcp: match dns_tcp {
                SocketAddr::V4(a) => Some(a),
                SocketAddr::V6(_) => None,
            },
        };
        let echo = EchoMode::probe();
        tracing::info!(
            "network {}/{} gateway {} ({}), DHCP {}-{}, MTU {}, gateway maps to host {host}, \
             ICMP echo via {echo:?}",
            cfg.subnet.network(),
            cfg.subnet.prefix,
            cfg.gateway(),
            cfg.gateway_mac,
            cfg.dhcp_range.0,
            cfg.dhcp_range.1,
            cfg.mtu
        );
        let mut fabric = Fabric::new(cfg.gateway_mac, capture);
        for t in taps {
            tracing::info!("port: tap {}", t.name());
            fabric.add_port(Port::Tap(t));
        }
        let mut net = Network {
            tcp: TcpTable::new(cfg.mtu, tr.clone(), cfg.timeouts.tcp_idle),
            udp: UdpTable::new(cfg.mtu, tr.clone(), cfg.timeouts.udp_idle),
            icmp: IcmpTable::new(echo, cfg.mtu, tr.clone(), cfg.timeouts.icmp_idle),
            cfg,
            fabric,
            listener,
            neighbours: Neighbours::default(),
            dhcp,
            names,
            names_generation: u64::MAX,
            dns,
            dns_fds,
            dns_out: Vec::new(),
            forwards,
            tr,
            timer,
            stop_fd: None,
            stopping: Rc::new(RefCell::new(false)),
            last_housekeeping: Instant::now(),
            listener_paused: false,
            scratch: vec![0u8; 65536 + 64],
            nat_stats: NatStats::default(),
        };
        net.refresh_names();
        Ok(net)
    }

    /// Attaches a device of this process (a VMM's virtio-net) as a port; call before
    /// [`Network::run`].
    pub fn attach(&mut self, peer: Box<dyn crate::port::LocalPeer>) -> usize {
        let id = self.fabric.add_port(Port::Local(peer));
        tracing::info!("port {id}: virtio-net device");
        id
    }

    /// The address the gateway stands for on the host.
    pub fn host_address(&self) -> Ipv4Addr {
        self.tr.host
    }

    /// Runs until `stop` (a pipe or eventfd) becomes readable; then resets open flows,
    /// flushes the capture and returns.
    ///
    /// # Errors
    /// [`Error::Io`] when the event loop itself fails.
    pub fn run(mut self, stop: RawFd) -> Result<()> {
        self.stop_fd = Some(stop);
        let stopping = self.stopping.clone();
        let net = Rc::new(RefCell::new(self));
        let mut em: EventManager<Rc<RefCell<Network>>> = EventManager::new()
            .map_err(|e| Error::io("event manager", std::io::Error::other(format!("{e:?}"))))?;
        em.add_subscriber(net.clone());
        while !*stopping.borrow() {
            if let Err(e) = em.run_with_timeout(1000) {
                // EINTR from a signal is harmless; the stop pipe says whether to go on.
                tracing::debug!("event loop: {e:?}");
            }
        }
        let mut n = net.borrow_mut();
        n.finish();
        Ok(())
    }

    fn finish(&mut self) {
        let Network { tcp, fabric, .. } = self;
        let mut reg = NullRegistrar;
        let mut env = Env {
            now: Instant::now(),
            reg: &mut reg,
            sink: fabric,
        };
        tcp.shutdown(&mut env);
        fabric.flush_all();
        tracing::info!(
            "stats: {:?} {:?} {:?} {:?} {:?} {:?} {:?} runts: {}",
            self.nat_stats,
            self.tcp.stats,
            self.udp.stats,
            self.icmp.stats,
            self.dhcp.stats(),
            self.dns.stats(),
            self.fabric.switch.stats(),
            self.fabric.runts
        );
        tracing::info!("network stopped");
    }

    /// Rebuilds the DNS name table when the DHCP server's names changed.
    fn refresh_names(&mut self) {
        let g = self.dhcp.generation();
        if g == self.names_generation {
            return;
        }
        self.names_generation = g;
        let mut n = Names::new();
        for h in &self.cfg.static_hosts {
            if let Some(name) = &h.name {
                n.insert(name, h.ip);
            }
        }
        for l in self.dhcp.leases() {
            if let Some(name) = &l.hostname {
                n.insert(name, l.ip);
            }
        }
        if let Ok(mut w) = self.names.write() {
            *w = n;
        }
    }

    fn room(&self) -> bool {
        self.tcp.len() + self.udp.len() + self.icmp.len() < self.cfg.max_flows
    }

    fn on_timer(&mut self, ops: &mut EventOps) {
        let _ = self.timer.wait();
        let now = Instant::now();
        let mut reg = OpsRegistrar(ops);
        {
            with_table!(self, &mut reg, now, tcp, |tcp, env| tcp.timer(&mut env));
        }
        self.dns.on_timer(now);
        if now.saturating_duration_since(self.last_housekeeping) >= HOUSEKEEPING {
            self.last_housekeeping = now;
            if std::mem::take(&mut self.listener_paused) {
                if let Some(l) = &self.listener {
                    reg.modify(
                        l.as_raw_fd(),
                        token(TokenKind::StreamListener, 0),
                        libc::EPOLLIN as u32,
                    );
                }
            }
            let n = with_table!(self, &mut reg, now, udp, |udp, env| udp.expire(&mut env))
                + with_table!(self, &mut reg, now, icmp, |icmp, env| icmp.expire(&mut env));
            self.nat_stats.idle_closed += n;
            self.dhcp.expire(SystemTime::now());
            self.refresh_names();
            self.neighbours.expire(now);
            self.fabric.housekeeping(now);
        }
    }

    fn on_dns(&mut self, fd: RawFd, now: Instant) {
        let mut out = std::mem::take(&mut self.dns_out);
        self.dns.on_readable(fd, now, &mut out);
        for (client, resp) in out.drain(..) {
            self.send_udp_from_gateway(53, client.ip, client.port, &resp);
        }
        self.dns_out = out;
    }

    /// Sends a UDP datagram from the gateway's `port` to a guest.
    fn send_udp_from_gateway(&mut self, port: u16, ip: Ipv4Addr, dst_port: u16, payload: &[u8]) {
        let Some(mac) = self.neighbours.lookup(ip) else {
            return;
        };
        self.send_udp_to(mac, port, ip, dst_port, payload);
    }

    fn send_udp_to(
        &mut self,
        mac: crate::MacAddr,
        port: u16,
        ip: Ipv4Addr,
        dst_port: u16,
        payload: &[u8],
    ) {
        use crate::wire::{write_udp_frame, L4_OFF, UDP_LEN};
        let at = L4_OFF + UDP_LEN;
        if payload.len() + 28 > usize::from(self.cfg.mtu) || at + payload.len() > self.scratch.len()
        {
            return;
        }
        self.scratch[at..at + payload.len()].copy_from_slice(payload);
        let n = write_udp_frame(
            &mut self.scratch,
            mac,
            self.cfg.gateway_mac,
            self.cfg.gateway(),
            port,
            ip,
            dst_port,
            payload.len(),
        );
        let Network {
            fabric, scratch, ..
        } = self;
        crate::nat::FrameSink::send_frame(fabric, &scratch[..n]);
    }

    fn on_tcp_forward(&mut self, i: usize, ops: &mut EventOps, now: Instant) {
        let Some(fw) = self.forwards.get(i) else {
            return;
        };
        let (fd, guest) = (fw.fd(), fw.rule.guest);
        for _ in 0..64 {
            match crate::nat::sock::accept(fd) {
                Ok(Some((s, from))) => {
                    if !self.room() {
                        self.nat_stats.tcp_refused_full += 1;
                        crate::nat::sock::set_linger_zero(s.as_raw_fd());
                        continue;
                    }
                    tracing::debug!("forward: {from} -> {guest}");
                    let mac = self.neighbours.lookup(*guest.ip());
                    if mac.is_none() {
                        self.arp_for(*guest.ip());
                    }
                    let mut reg = OpsRegistrar(ops);
                    with_table!(self, &mut reg, now, tcp, |tcp, env| tcp
                        .accept_forward(&mut env, s, guest, mac));
                }
                _ => return,
            }
        }
    }

    fn on_udp_forward(&mut self, i: usize, ops: &mut EventOps, now: Instant) {
        let Some(fw) = self.forwards.get(i) else {
            return;
        };
        let (fd, guest) = (fw.fd(), fw.rule.guest);
        for _ in 0..64 {
            let room = self.room();
            let Some(mac) = self.neighbours.lookup(*guest.ip()) else {
                // Drain and drop until the guest has been seen; ask for it.
                let mut b = [0u8; 1];
                if crate::nat::sock::recv_from(fd, &mut b).is_err() {
                    return;
                }
                self.arp_for(*guest.ip());
                continue;
            };
            let got = crate::nat::sock::recv_from(fd, self.udp.forward_buf());
            let Ok((n, from)) = got else { return };
            let mut reg = OpsRegistrar(ops);
            with_table!(self, &mut reg, now, udp, |udp, env| udp
                .forward_datagram(&mut env, fd, from, guest, mac, n, room));
        }
    }

    fn arp_for(&mut self, ip: Ipv4Addr) {
        let n = crate::gateway::arp_request(
            ip,
            self.cfg.gateway(),
            self.cfg.gateway_mac,
            &mut self.scratch,
        );
        let Network {
            fabric, scratch, ..
        } = self;
        crate::nat::FrameSink::send_frame(fabric, &scratch[..n]);
    }
}

impl MutEventSubscriber for Network {
    fn init(&mut self, ops: &mut EventOps) {
        let reg = |ops: &mut EventOps, fd: RawFd, t: u32, set: EventSet| {
            if let Err(e) = ops.add(Events::with_data_raw(fd, t, set)) {
                tracing::error!("event loop: cannot poll descriptor {fd}: {e:?}");
            }
        };
        if self.timer.reset(TICK, Some(TICK)).is_err() {
            tracing::error!("timerfd: cannot arm");
        }
        reg(
            ops,
            self.timer.as_raw_fd(),
            token(TokenKind::Timer, 0),
            EventSet::IN,
        );
        if let Some(fd) = self.stop_fd {
            reg(ops, fd, token(TokenKind::Stop, 0), EventSet::IN);
        }
        if let Some(l) = &self.listener {
            reg(
                ops,
                l.as_raw_fd(),
                token(TokenKind::StreamListener, 0),
                EventSet::IN,
            );
        }
        for (i, fd) in self.dns_fds.iter().enumerate() {
            reg(ops, *fd, token(TokenKind::Dns, i), EventSet::IN);
        }
        for (i, f) in self.forwards.iter().enumerate() {
            let kind = match f.rule.proto {
                crate::config::ForwardProto::Tcp => TokenKind::TcpForward,
                crate::config::ForwardProto::Udp => TokenKind::UdpForward,
            };
            reg(ops, f.fd(), token(kind, i), EventSet::IN);
        }
        for (id, fd) in self.fabric.port_fds() {
            reg(ops, fd, token(TokenKind::Port, id), EventSet::IN);
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let now = Instant::now();
        self.fabric.now = now;
        let set = events.event_set().bits();
        match untoken(events.data()) {
            Some((TokenKind::Timer, _)) => self.on_timer(ops),
            Some((TokenKind::Stop, _)) => *self.stopping.borrow_mut() = true,
            Some((TokenKind::StreamListener, _)) => self.accept_clients(ops),
            Some((TokenKind::Port, p)) => self.on_port(p, set, ops, now),
            Some((TokenKind::Tcp, i)) => {
                let mut reg = OpsRegistrar(ops);
                with_table!(self, &mut reg, now, tcp, |tcp, env| tcp
                    .socket_event(&mut env, i, set));
            }
            Some((TokenKind::Udp, i)) => {
                let mut reg = OpsRegistrar(ops);
                with_table!(self, &mut reg, now, udp, |udp, env| udp
                    .socket_event(&mut env, i));
            }
            Some((TokenKind::Icmp, i)) => {
                let mut reg = OpsRegistrar(ops);
                with_table!(self, &mut reg, now, icmp, |icmp, env| icmp
                    .socket_event(&mut env, i));
            }
            Some((TokenKind::Dns, _)) => self.on_dns(events.fd(), now),
            Some((TokenKind::TcpForward, i)) => self.on_tcp_forward(i, ops, now),
            Some((TokenKind::UdpForward, i)) => self.on_udp_forward(i, ops, now),
            None => {
                // Not ours: stop polling it rather than spin.
                let _ = ops.remove(events);
            }
        }
        self.after_event(ops, now);
    }
}

impl Network {
    /// Work owed after any event: coalesced ACKs, and write interest of congested ports.
    fn after_event(&mut self, ops: &mut EventOps, now: Instant) {
        let mut reg = OpsRegistrar(ops);
        with_table!(self, &mut reg, now, tcp, |tcp, env| tcp
            .flush_acks(&mut env));
        self.fabric.flush_local();
        self.fabric.update_interest(&mut reg);
    }

    fn accept_clients(&mut self, ops: &mut EventOps) {
        let Some(l) = &self.listener else { return };
        for _ in 0..16 {
            match l.accept() {
                Ok(Some(c)) => {
                    if self.fabric.stream_clients() >= MAX_STREAM_CLIENTS {
                        tracing::warn!("stream: refusing a client: {MAX_STREAM_CLIENTS} attached");
                        continue;
                    }
                    let id = self.fabric.add_port(Port::Stream(c));
                    if let Some(fd) = self.fabric.port_fd(id) {
                        let _ = ops.add(Events::with_data_raw(
                            fd,
                            token(TokenKind::Port, id),
                            EventSet::IN,
                        ));
                    }
                    tracing::info!("port {id}: stream client attached");
                }
                Ok(None) => return,
                Err(e) => {
                    // Out of descriptors, typically: the listener stays readable, so stop
                    // polling it until the next housekeeping tick rather than spin.
                    tracing::warn!("stream: accept: {e}; retrying in a second");
                    if let Some(l) = &self.listener {
                        let _ = ops.modify(Events::with_data_raw(
                            l.as_raw_fd(),
                            token(TokenKind::StreamListener, 0),
                            EventSet::empty(),
                        ));
                    }
                    self.listener_paused = true;
                    return;
                }
            }
        }
    }

    fn on_port(&mut self, p: usize, set: u32, ops: &mut EventOps, now: Instant) {
        if set & (libc::EPOLLOUT as u32) != 0 && self.fabric.flush_port(p).is_err() {
            self.remove_port(p, ops);
            return;
        }
        if set & (libc::EPOLLIN as u32 | libc::EPOLLHUP as u32 | libc::EPOLLERR as u32) == 0 {
            return;
        }
        let Some(mut rx) = self.fabric.take_rx(p) else {
            return;
        };
        let mut open = self.fabric.read_port(p, &mut rx);
        loop {
            match rx.next_frame() {
                Ok(Some(frame)) => self.ingress(p, frame, ops, now),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!("port {p}: frame length {} is not a frame: detaching", e.0);
                    open = false;
                    break;
                }
            }
        }
        self.fabric.put_rx(p, rx);
        if !open {
            self.remove_port(p, ops);
        }
    }

    fn remove_port(&mut self, p: usize, ops: &mut EventOps) {
        if let Some(fd) = self.fabric.port_fd(p) {
            let _ = ops.remove(Events::empty_raw(fd));
        }
        if let Some(port) = self.fabric.remove_port(p) {
            tracing::info!("port {p}: {} detached", port.describe());
        }
    }
}

/// Registrations through event-manager.
struct OpsRegistrar<'a, 'b>(&'a mut EventOps<'b>);

impl Registrar for OpsRegistrar<'_, '_> {
    fn add(&mut self, fd: RawFd, token: u32, interest: u32) {
        let set = EventSet::from_bits_truncate(interest);
        if let Err(e) = self.0.add(Events::with_data_raw(fd, token, set)) {
            tracing::warn!("event loop: add {fd}: {e:?}");
        }
    }

    fn modify(&mut self, fd: RawFd, token: u32, interest: u32) {
        let set = EventSet::from_bits_truncate(interest);
        if let Err(e) = self.0.modify(Events::with_data_raw(fd, token, set)) {
            tracing::warn!("event loop: modify {fd}: {e:?}");
        }
    }

    fn remove(&mut self, fd: RawFd) {
        let _ = self.0.remove(Events::empty_raw(fd));
    }
}

/// Registrations when no event loop runs any more.
struct NullRegistrar;

impl Registrar for NullRegistrar {
    fn add(&mut self, _: RawFd, _: u32, _: u32) {}
    fn modify(&mut self, _: RawFd, _: u32, _: u32) {}
    fn remove(&mut self, _: RawFd) {}
}

/// Every flow holds a socket: lift the soft descriptor limit to the hard one, and say so when
/// even that is below what `--max-flows` needs (new flows then fail, counted, before the
/// table is full).
fn raise_fd_limit(max_flows: usize) {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one rlimit struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return;
        }
        if l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        }
    }
    let want = max_flows as u64 + 256;
    if l.rlim_cur < want {
        tracing::warn!(
            "descriptor limit {} is below the {want} that --max-flows {max_flows} needs",
            l.rlim_cur
        );
    }
}

/// The IPv4 address of the interface that holds the default route: what a UDP socket
/// "connected" to an outside address would use as its source. Nothing is sent.
pub fn default_route_address() -> Option<Ipv4Addr> {
    let s = UdpSocket::bind("0.0.0.0:0").ok()?;
    // TEST-NET-2: connect() on UDP only picks a route; no packet leaves.
    s.connect(SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, 1), 9))
        .ok()?;
    match s.local_addr().ok()? {
        SocketAddr::V4(a) if !a.ip().is_unspecified() => Some(*a.ip()),
        _ => None,
    }
}
