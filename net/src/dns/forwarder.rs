//! The UDP forwarder: relays guests' queries to the upstream resolvers and their responses
//! back, byte-for-byte, like dnsmasq's forwarding (RFC 1035 §7: the gateway acts as a
//! resolver that delegates recursion to the host's resolvers).
//!
//! This module owns the upstream sockets and the table of pending queries; it does no I/O on
//! the guest side and has no thread or timer of its own: the event loop polls [`Forwarder::fds`],
//! calls [`Forwarder::on_readable`], and calls [`Forwarder::on_timer`] at the deadline it returns.
//!
//! Queries keep their guest-chosen ID (they are not rewritten), so a response is matched by the
//! address it came from (the upstream the query was last sent to), its ID and its question
//! section (RFC 5452 §9.1), and the pending table is bounded.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use super::message_key;
use crate::error::{Error, Result};

/// How long an upstream has to answer before the query goes to the next one: dnsmasq's order
/// of magnitude, and shorter than the guest resolver's own retry (glibc: 5 s).
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(1500);

/// Most queries awaiting an upstream answer at once; more are dropped (dnsmasq's
/// `dns-forward-max` default is 150; guests of one network rarely need more than a few).
pub const MAX_PENDING: usize = 1024;

/// Largest query relayed. Real queries are a name (at most 255 bytes, RFC 1035 §2.3.4) plus
/// an OPT record; the bound keeps the pending table within [`MAX_PENDING`] × 4 KiB.
pub const MAX_QUERY_LEN: usize = 4096;

/// Most datagrams read per [`Forwarder::on_readable`] call, so one busy socket cannot starve
/// the rest of the event loop; level-triggered polling brings the loop back for the rest.
const MAX_READS_PER_CALL: usize = 64;

/// A guest that asked: the source of its query, where the response goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Client {
    /// The guest's address.
    pub ip: Ipv4Addr,
    /// The guest's UDP source port.
    pub port: u16,
}

/// Counters of the forwarder's activity.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DnsStats {
    /// Queries accepted and sent upstream (retransmissions from the guest included).
    pub queries: u64,
    /// Guest retransmissions (same client, same ID) that refreshed a pending query.
    pub refreshed: u64,
    /// Queries sent again to the next upstream after a timeout or a send error.
    pub retries: u64,
    /// Responses delivered to a guest (one response delivered to two guests counts twice).
    pub responses: u64,
    /// Datagrams received that matched no pending query: wrong source address, ID or
    /// question, a late answer, or not a response.
    pub unmatched: u64,
    /// Queries dropped because [`MAX_PENDING`] were pending.
    pub dropped_full: u64,
    /// Queries dropped after the last upstream timed out (or none could be reached).
    pub timed_out: u64,
    /// Queries dropped as unparsable or larger than [`MAX_QUERY_LEN`].
    pub dropped_malformed: u64,
    /// Failed sends to an upstream.
    pub send_errors: u64,
}

/// A query waiting for its answer.
struct Pending {
    client: Client,
    /// The query as the guest sent it, kept to resend it to the next upstream.
    query: Box<[u8]>,
    /// Keyed hash of the question section, see [`super::MessageKey`].
    questions: u64,
    /// Index in `upstreams` of the upstream the query was last sent to.
    upstream: usize,
    deadline: Instant,
}

/// Forwards guests' UDP queries to the upstream resolvers (RFC 1035 §4.2.1), tried in order.
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
    /// Pending queries by ID: IDs are guest-chosen, so several guests may share one.
    pending: HashMap<u16, Vec<Pending>>,
    pending_count: usize,
    /// Key of the question hashes, random per forwarder.
    keys: RandomState,
    buf: Box<[u8]>,
    stats: DnsStats,
    timeout: Duration,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("upstreams", &self.upstreams)
            .field("pending", &self.pending_count)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Forwarder {
    /// Opens one nonblocking UDP socket per address family used by `upstreams`, bound to an
    /// ephemeral port (on the loopback address when every upstream of the family is a loopback
    /// one, such as systemd-resolved's 127.0.0.53, so nothing else can reach it). `upstreams`
    /// are tried in order (RFC 1035 §7.2); an empty list yields a forwarder that drops all.
    ///
    /// # Errors
    /// [`Error::Io`] when a socket cannot be opened.
    pub fn new(upstreams: Vec<SocketAddr>) -> Result<Self> {
        let open = |loopback: bool, v6: bool| -> Result<UdpSocket> {
            let ip: IpAddr = match (v6, loopback) {
                (false, true) => Ipv4Addr::LOCALHOST.into(),
                (false, false) => Ipv4Addr::UNSPECIFIED.into(),
                (true, true) => Ipv6Addr::LOCALHOST.into(),
                (true, false) => Ipv6Addr::UNSPECIFIED.into(),
            };
            let bind = SocketAddr::new(ip, 0);
            let s = UdpSocket::bind(bind).map_err(|e| Error::io(format!("dns: bind {bind}"), e))?;
            s.set_nonblocking(true)
                .map_err(|e| Error::io("dns: set upstream socket nonblocking", e))?;
            Ok(s)
        };
        let family = |v6: bool| upstreams.iter().filter(move |u| u.is_ipv6() == v6);
        let v4 = match family(false).next() {
            Some(_) => Some(open(family(false).all(|u| u.ip().is_loopback()), false)?),
            None => None,
        };
        let v6 = match family(true).next() {
            Some(_) => Some(open(family(true).all(|u| u.ip().is_loopback()), true)?),
            None => None,
        };
        Ok(Forwarder {
            upstreams,
            v4,
            v6,
            pending: HashMap::new(),
            pending_count: 0,
            keys: RandomState::new(),
            buf: vec![0u8; 65536].into_boxed_slice(),
            stats: DnsStats::default(),
            timeout: UPSTREAM_TIMEOUT,
        })
    }

    /// The sockets' file descriptors, to poll for readability; they do not change.
    pub fn fds(&self) -> Vec<RawFd> {
        [&self.v4, &self.v6]
            .into_iter()
            .flatten()
            .map(AsRawFd::as_raw_fd)
            .collect()
    }

    /// The upstreams, in the order they are tried.
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// Sends `query` (a DNS message, RFC 1035 §4.1, normally classified
    /// [`super::LocalAnswer::Forward`]) unchanged to the first upstream, and remembers `client`
    /// to deliver the response to.
    ///
    /// A retransmission (same client, same ID) replaces the pending query and is sent again
    /// to the upstream it was waiting on. When [`MAX_PENDING`] queries are pending, or the query
    /// does not parse or exceeds [`MAX_QUERY_LEN`], it is dropped and counted.
    pub fn submit(&mut self, query: &[u8], client: Client, now: Instant) {
        let key = match message_key(query, &self.keys) {
            Some(k) if !k.response && query.len() <= MAX_QUERY_LEN => k,
            _ => {
                self.stats.dropped_malformed += 1;
                tracing::debug!("dns: not forwarding a malformed query from {client:?}");
                return;
            }
        };
        let deadline = now + self.timeout;
        if let Some(p) = self
            .pending
            .get_mut(&key.id)
            .and_then(|v| v.iter_mut().find(|p| p.client == client))
        {
            p.query = query.into();
            p.questions = key.questions;
            p.deadline = deadline;
            let first = p.upstream;
            self.stats.refreshed += 1;
            self.stats.queries += 1;
            self.send_pending(key.id, client, first, now);
            return;
        }
        if self.pending_count >= MAX_PENDING {
            self.stats.dropped_full += 1;
            tracing::debug!("dns: {MAX_PENDING} queries pending, dropping one from {client:?}");
            return;
        }
        self.pending.entry(key.id).or_default().push(Pending {
            client,
            query: query.into(),
            questions: key.questions,
            upstream: 0,
            deadline,
        });
        self.pending_count += 1;
        self.stats.queries += 1;
        self.send_pending(key.id, client, 0, now);
    }

    /// Sends the pending query `(id, client)` to upstream `first`, or the next one that
    /// accepts it; drops the query when none does.
    fn send_pending(&mut self, id: u16, client: Client, first: usize, now: Instant) {
        let Some(list) = self.pending.get_mut(&id) else {
            return;
        };
        let Some(pos) = list.iter().position(|p| p.client == client) else {
            return;
        };
        let mut sent = false;
        if let Some(p) = list.get_mut(pos) {
            for (i, up) in self.upstreams.iter().enumerate().skip(first) {
                if i != first {
                    self.stats.retries += 1;
                }
                let sock = if up.is_ipv6() { &self.v6 } else { &self.v4 };
                let Some(sock) = sock else { continue };
                match sock.send_to(&p.query, up) {
                    Ok(_) => {
                        tracing::trace!("dns: query {id:#06x} from {client:?} sent to {up}");
                        p.upstream = i;
                        p.deadline = now + self.timeout;
                        sent = true;
                        break;
                    }
                    Err(e) => {
                        // Unreachable network, full socket buffer...: try the next one now
                        // rather than wait for a timeout.
                        self.stats.send_errors += 1;
                        tracing::debug!("dns: sending to upstream {up}: {e}");
                    }
                }
            }
        }
        if !sent {
            self.stats.timed_out += 1;
            tracing::debug!("dns: no upstream took query {id:#06x} from {client:?}");
            self.remove(id, pos);
        }
    }

    fn remove(&mut self, id: u16, pos: usize) {
        if let Some(list) = self.pending.get_mut(&id) {
            if pos < list.len() {
                list.swap_remove(pos);
                self.pending_count -= 1;
            }
            if list.is_empty() {
                self.pending.remove(&id);
            }
        }
    }

    /// Reads the datagrams waiting on `fd` (one of [`Self::fds`]), at most a fixed number per
    /// call, and appends the responses to deliver to `out`, unchanged (RFC 1035 §4.1: the ID
    /// is the guest's own). A datagram that is not a response (QR=1) from the upstream the
    /// matching query was sent to, with its ID and question section, is dropped and counted.
    pub fn on_readable(&mut self, fd: RawFd, _now: Instant, out: &mut Vec<(Client, Vec<u8>)>) {
        let sock = [&self.v4, &self.v6]
            .into_iter()
            .flatten()
            .find(|s| s.as_raw_fd() == fd);
        let Some(sock) = sock else {
            return;
        };
        let mut received = Vec::new();
        for _ in 0..MAX_READS_PER_CALL {
            match sock.recv_from(&mut self.buf) {
                Ok((n, from)) => {
                    if let Some(data) = self.buf.get(..n) {
                        received.push((from, data.to_vec()));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // E.g. a queued ICMP error: logged and consumed; keep reading.
                    tracing::debug!("dns: upstream socket: {e}");
                }
            }
        }
        for (from, data) in received {
            self.deliver(from, data, out);
        }
    }

    fn deliver(&mut self, from: SocketAddr, data: Vec<u8>, out: &mut Vec<(Client, Vec<u8>)>) {
        let key = match message_key(&data, &self.keys) {
            Some(k) if k.response => k,
            _ => {
                self.stats.unmatched += 1;
                tracing::debug!("dns: dropping a non-response from {from}");
                return;
            }
        };
        let Some(list) = self.pending.get_mut(&key.id) else {
            self.stats.unmatched += 1;
            tracing::debug!("dns: unexpected response {:#06x} from {from}", key.id);
            return;
        };
        let upstreams = &self.upstreams;
        let before = list.len();
        let mut matched = Vec::new();
        list.retain(|p| {
            let up = upstreams.get(p.upstream);
            // Compare address and port only: IPv6 flow info may differ between send and reply.
            let same_source = up.is_some_and(|u| u.ip() == from.ip() && u.port() == from.port());
            let hit = same_source && p.questions == key.questions;
            if hit {
                matched.push(p.client);
            }
            !hit
        });
        let removed = before - list.len();
        if list.is_empty() {
            self.pending.remove(&key.id);
        }
        self.pending_count -= removed;
        if matched.is_empty() {
            self.stats.unmatched += 1;
            tracing::debug!("dns: unmatched response {:#06x} from {from}", key.id);
            return;
        }
        // Identical questions with the same ID from two guests (a 1-in-65536 coincidence)
        // have the same answer: both get it.
        let last = matched.len() - 1;
        let mut data = Some(data);
        for (i, client) in matched.into_iter().enumerate() {
            let bytes = if i == last {
                data.take().unwrap_or_default()
            } else {
                data.clone().unwrap_or_default()
            };
            self.stats.responses += 1;
            out.push((client, bytes));
        }
    }

    /// Moves the queries whose upstream has not answered within [`UPSTREAM_TIMEOUT`] to the
    /// next upstream (same bytes); after the last upstream they are dropped and counted (the
    /// guest will retry, RFC 1035 §7.2). Returns the next deadline, if any query is pending.
    pub fn on_timer(&mut self, now: Instant) -> Option<Instant> {
        let expired: Vec<(u16, Client, usize)> = self
            .pending
            .iter()
            .flat_map(|(id, list)| {
                list.iter()
                    .filter(|p| p.deadline <= now)
                    .map(|p| (*id, p.client, p.upstream + 1))
            })
            .collect();
        for (id, client, next) in expired {
            if next < self.upstreams.len() {
                self.stats.retries += 1;
                tracing::trace!("dns: query {id:#06x} from {client:?} timed out, trying next");
            }
            // Past the last upstream, send_pending finds none and drops the query.
            self.send_pending(id, client, next, now);
        }
        self.next_deadline()
    }

    /// The earliest deadline of the pending queries: when [`Self::on_timer`] must run next.
    /// [`Self::submit`] may make it earlier.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending.values().flatten().map(|p| p.deadline).min()
    }

    /// Number of queries awaiting an answer.
    pub fn pending(&self) -> usize {
        self.pending_count
    }

    /// The counters.
    pub fn stats(&self) -> &DnsStats {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::testutil::{as_response, query};
    use hickory_proto::rr::RecordType;
    use std::thread::JoinHandle;

    const GUEST: Client = Client {
        ip: Ipv4Addr::new(192, 168, 122, 10),
        port: 40000,
    };

    /// A test upstream on 127.0.0.1 that answers each query with the query, QR set, and stops
    /// after `answers` queries or 5 s of silence.
    fn responder(answers: usize) -> (SocketAddr, JoinHandle<()>) {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let addr = s.local_addr().unwrap();
        let h = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            for _ in 0..answers {
                let Ok((n, from)) = s.recv_from(&mut buf) else {
                    return;
                };
                s.send_to(&as_response(&buf[..n]), from).unwrap();
            }
        });
        (addr, h)
    }

    /// Waits (at most 3 s) until `fd` is readable.
    fn wait_readable(fd: RawFd) -> bool {
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        unsafe { libc::poll(&mut p, 1, 3000) == 1 }
    }

    /// Polls the forwarder until it yields a response or 3 s pass.
    fn collect(f: &mut Forwarder) -> Vec<(Client, Vec<u8>)> {
        let mut out = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(3);
        while out.is_empty() && Instant::now() < deadline {
            for fd in f.fds() {
                if wait_readable(fd) {
                    f.on_readable(fd, Instant::now(), &mut out);
                }
            }
        }
        out
    }

    #[test]
    fn response_is_matched_and_returned_unchanged() {
        let (up, h) = responder(1);
        let mut f = Forwarder::new(vec![up]).unwrap();
        assert_eq!(f.fds().len(), 1);
        let q = query(0x1234, "example.com.", RecordType::A);
        let now = Instant::now();
        f.submit(&q, GUEST, now);
        assert_eq!(f.pending(), 1);
        assert_eq!(f.next_deadline(), Some(now + UPSTREAM_TIMEOUT));
        let out = collect(&mut f);
        assert_eq!(out, vec![(GUEST, as_response(&q))]);
        assert_eq!(f.pending(), 0);
        assert_eq!(f.stats().responses, 1);
        assert_eq!(f.on_timer(now), None);
        h.join().unwrap();
    }

    #[test]
    fn response_from_wrong_address_or_question_is_dropped() {
        // The real upstream never answers; a rogue socket answers instead.
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let up = silent.local_addr().unwrap();
        let mut f = Forwarder::new(vec![up]).unwrap();
        let q = query(0x0101, "example.com.", RecordType::A);
        f.submit(&q, GUEST, Instant::now());
        let ours = f.v4.as_ref().unwrap().local_addr().unwrap();
        let rogue = UdpSocket::bind("127.0.0.1:0").unwrap();
        rogue.send_to(&as_response(&q), ours).unwrap();
        let fd = f.fds()[0];
        assert!(wait_readable(fd));
        let mut out = Vec::new();
        f.on_readable(fd, Instant::now(), &mut out);
        assert!(out.is_empty());
        assert_eq!(f.stats().unmatched, 1);
        assert_eq!(f.pending(), 1);

        // From the right address, but another question, or not a response: dropped too.
        let other = as_response(&query(0x0101, "example.org.", RecordType::A));
        silent.send_to(&other, ours).unwrap();
        silent.send_to(&q, ours).unwrap();
        silent.send_to(b"garbage", ours).unwrap();
        // Then the real answer, in another case (upstreams may echo 0x20-mixed names).
        let real = as_response(&query(0x0101, "EXAMPLE.com.", RecordType::A));
        silent.send_to(&real, ours).unwrap();
        let out = collect(&mut f);
        assert_eq!(out, vec![(GUEST, real)]);
        assert_eq!(f.stats().unmatched, 4);
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn timeout_moves_to_next_upstream_then_drops() {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        silent
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let (good, h) = responder(1);
        let mut f = Forwarder::new(vec![silent.local_addr().unwrap(), good]).unwrap();
        let q = query(0x7777, "example.com.", RecordType::AAAA);
        let t0 = Instant::now();
        f.submit(&q, GUEST, t0);
        // The first upstream got the query, unchanged.
        let mut buf = [0u8; 512];
        let (n, _) = silent.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &q[..]);
        // Before the deadline nothing moves.
        assert_eq!(f.on_timer(t0), Some(t0 + UPSTREAM_TIMEOUT));
        // After it, the query goes to the second upstream, with a new deadline.
        let t1 = t0 + UPSTREAM_TIMEOUT;
        assert_eq!(f.on_timer(t1), Some(t1 + UPSTREAM_TIMEOUT));
        assert_eq!(f.stats().retries, 1);
        let out = collect(&mut f);
        assert_eq!(out, vec![(GUEST, as_response(&q))]);
        // A late answer from the first upstream matches nothing any more.
        silent
            .send_to(
                &as_response(&q),
                f.v4.as_ref().unwrap().local_addr().unwrap(),
            )
            .unwrap();
        let fd = f.fds()[0];
        assert!(wait_readable(fd));
        let mut out = Vec::new();
        f.on_readable(fd, t1, &mut out);
        assert!(out.is_empty());
        assert_eq!(f.stats().unmatched, 1);
        h.join().unwrap();

        // With every upstream silent, the query is dropped after the last one.
        let mut f = Forwarder::new(vec![silent.local_addr().unwrap()]).unwrap();
        f.submit(&q, GUEST, t0);
        assert_eq!(f.on_timer(t1), None);
        assert_eq!(f.pending(), 0);
        assert_eq!(f.stats().timed_out, 1);
    }

    #[test]
    fn pending_table_is_bounded_and_retransmissions_refresh() {
        let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut f = Forwarder::new(vec![silent.local_addr().unwrap()]).unwrap();
        let now = Instant::now();
        for i in 0..MAX_PENDING {
            let c = Client {
                ip: GUEST.ip,
                port: 1024 + i as u16,
            };
            f.submit(&query(i as u16, "example.com.", RecordType::A), c, now);
        }
        assert_eq!(f.pending(), MAX_PENDING);
        f.submit(&query(1, "example.net.", RecordType::A), GUEST, now);
        assert_eq!(f.pending(), MAX_PENDING);
        assert_eq!(f.stats().dropped_full, 1);
        // A retransmission by a pending client is still accepted, and not duplicated.
        let c = Client {
            ip: GUEST.ip,
            port: 1024,
        };
        let later = now + Duration::from_millis(500);
        f.submit(&query(0, "example.com.", RecordType::A), c, later);
        assert_eq!(f.pending(), MAX_PENDING);
        assert_eq!(f.stats().refreshed, 1);
        assert_eq!(f.stats().dropped_full, 1);
        // Garbage and responses are refused.
        f.submit(b"garbage", GUEST, now);
        f.submit(&as_response(&query(5, "a.", RecordType::A)), GUEST, now);
        f.submit(&vec![0u8; MAX_QUERY_LEN + 1], GUEST, now);
        assert_eq!(f.stats().dropped_malformed, 3);
        // Everything times out; the refreshed query a little later.
        assert_eq!(
            f.on_timer(now + UPSTREAM_TIMEOUT),
            Some(later + UPSTREAM_TIMEOUT)
        );
        assert_eq!(f.on_timer(later + UPSTREAM_TIMEOUT), None);
        assert_eq!(f.stats().timed_out, MAX_PENDING as u64);
    }

    #[test]
    fn no_upstream_drops_everything() {
        let mut f = Forwarder::new(Vec::new()).unwrap();
        assert!(f.fds().is_empty());
        f.submit(
            &query(1, "example.com.", RecordType::A),
            GUEST,
            Instant::now(),
        );
        assert_eq!(f.pending(), 0);
        assert_eq!(f.stats().timed_out, 1);
        let mut out = Vec::new();
        f.on_readable(-1, Instant::now(), &mut out);
        assert!(out.is_empty());
    }
}
