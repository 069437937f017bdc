//! DNS over TCP (RFC 1035 §4.2.2, RFC 7766) at the gateway, for responses too large for UDP
//! (the guest retries over TCP after a truncated answer, RFC 1035 §4.2.1) and for clients that
//! prefer TCP.
//!
//! This module owns a listener thread and one thread per connection: TCP DNS is rare and off
//! the data path, so blocking I/O with timeouts is simpler than another state machine in the
//! event loop. Local names are answered through [`classify`]; other queries are relayed over
//! TCP to the upstreams in order, one upstream connection per query. Every wait has a timeout
//! and the number of connections is bounded, so a hostile guest can tie up at most
//! [`MAX_CONNECTIONS`] threads.

use std::collections::hash_map::RandomState;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use super::local::{classify, servfail, LocalAnswer};
use super::names::SharedNames;
use super::{message_key, HEADER_LEN};
use crate::config::Ipv4Subnet;
use crate::error::{Error, Result};

/// Most connections served at once; more are closed as soon as accepted (RFC 7766 §6.2.2
/// lets a server limit its connections).
pub const MAX_CONNECTIONS: usize = 32;

/// How long a connection may stay idle, and how long one message may take to arrive
/// (RFC 7766 §6.2.3 suggests idle timeouts of the order of seconds).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long connecting to an upstream may take before the next one is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long an upstream may take to send its whole response once the query is sent.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);

/// What every connection thread needs.
struct Service {
    names: SharedNames,
    domain: Option<String>,
    subnet: Ipv4Subnet,
    upstreams: Vec<SocketAddr>,
    keys: RandomState,
}

/// Decrements the connection count when a connection thread ends, however it ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Starts serving DNS over TCP (RFC 1035 §4.2.2: each message preceded by its length in two
/// bytes) on `listen`, normally 127.0.0.1:0, and returns the bound address.
///
/// Each connection (at most [`MAX_CONNECTIONS`] at once) may send several queries; each is
/// answered in order: locally through [`classify`] (with `names`, `domain` and `subnet`), or
/// forwarded unchanged over TCP to `upstreams` in order (next upstream on connection failure,
/// timeout or a mismatched response), the upstream's response relayed unchanged. When no
/// upstream answers, the client gets SERVFAIL. A malformed message, a response instead of a
/// query, a message shorter than a header, [`IDLE_TIMEOUT`] without a complete message, or
/// end of input mid-message close the connection.
///
/// The threads run for the rest of the process.
///
/// # Errors
/// [`Error::Io`] when the listener cannot be bound or its thread cannot start.
pub fn spawn_tcp_server(
    listen: SocketAddr,
    names: SharedNames,
    domain: Option<String>,
    subnet: Ipv4Subnet,
    upstreams: Vec<SocketAddr>,
) -> Result<SocketAddr> {
    let listener =
        TcpListener::bind(listen).map_err(|e| Error::io(format!("dns: bind tcp {listen}"), e))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io("dns: tcp listener address", e))?;
    let service = Arc::new(Service {
        names,
        domain,
        subnet,
        upstreams,
        keys: RandomState::new(),
    });
    thread::Builder::new()
        .name("skiff-dns-tcp".into())
        .spawn(move || accept_loop(listener, service))
        .map_err(|e| Error::io("dns: start the tcp thread", e))?;
    tracing::debug!("dns: serving tcp on {addr}");
    Ok(addr)
}

fn accept_loop(listener: TcpListener, service: Arc<Service>) {
    let active = Arc::new(AtomicUsize::new(0));
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(c) => c,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // Out of descriptors, typically: back off instead of spinning.
                tracing::warn!("dns: tcp accept: {e}");
                thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        // Only this thread increments, so the check cannot be overtaken.
        if active.load(Ordering::Acquire) >= MAX_CONNECTIONS {
            tracing::debug!("dns: {MAX_CONNECTIONS} tcp connections open, closing one from {peer}");
            continue;
        }
        active.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(Arc::clone(&active));
        let service = Arc::clone(&service);
        let spawned = thread::Builder::new()
            .name("skiff-dns-conn".into())
            .spawn(move || {
                let _slot = slot;
                if let Err(e) = serve(stream, &service) {
                    tracing::debug!("dns: tcp connection from {peer}: {e}");
                }
            });
        // On failure the closure, and with it the slot and the stream, is dropped.
        if let Err(e) = spawned {
            tracing::warn!("dns: cannot start a tcp connection thread: {e}");
        }
    }
}

/// Serves one connection until the client closes it, idles out, or sends something malformed.
fn serve(mut stream: TcpStream, service: &Service) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(IDLE_TIMEOUT))?;
    while let Some(query) = read_message(&mut stream, IDLE_TIMEOUT)? {
        let local = {
            // A panic elsewhere while holding the lock leaves the table as it was: still usable.
            let names = service.names.read().unwrap_or_else(PoisonError::into_inner);
            classify(&query, &names, service.domain.as_deref(), service.subnet)
        };
        let response = match local {
            LocalAnswer::Answer(r) => r,
            LocalAnswer::Drop => return Err(invalid("malformed query")),
            LocalAnswer::Forward => match service.forward(&query) {
                Some(r) => r,
                None => servfail(&query).ok_or_else(|| invalid("malformed query"))?,
            },
        };
        write_message(&mut stream, &response)?;
    }
    Ok(())
}

impl Service {
    /// Relays `query` to the upstreams in order; the first matching response, unchanged.
    fn forward(&self, query: &[u8]) -> Option<Vec<u8>> {
        let want = message_key(query, &self.keys)?;
        for up in &self.upstreams {
            match exchange(*up, query) {
                Ok(resp) => match message_key(&resp, &self.keys) {
                    // The same checks as over UDP (RFC 5452 §9.1), against a confused upstream.
                    Some(k) if k.response && k.id == want.id && k.questions == want.questions => {
                        return Some(resp);
                    }
                    _ => tracing::debug!("dns: tcp upstream {up}: mismatched response"),
                },
                Err(e) => tracing::debug!("dns: tcp upstream {up}: {e}"),
            }
        }
        None
    }
}

/// One query, one response, over a fresh connection to `up`.
fn exchange(up: SocketAddr, query: &[u8]) -> io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&up, CONNECT_TIMEOUT)?;
    s.set_nodelay(true)?;
    s.set_write_timeout(Some(UPSTREAM_TIMEOUT))?;
    write_message(&mut s, query)?;
    read_message(&mut s, UPSTREAM_TIMEOUT)?
        .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "closed without answer"))
}

fn invalid(what: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// Reads one length-prefixed message (RFC 1035 §4.2.2), which must arrive whole within
/// `timeout`. `None` when the peer closed the connection cleanly between messages.
fn read_message(stream: &mut TcpStream, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
    let deadline = Instant::now() + timeout;
    let mut len = [0u8; 2];
    match read_by(stream, &mut len, deadline)? {
        0 => return Ok(None),
        2 => {}
        _ => return Err(io::ErrorKind::UnexpectedEof.into()),
    }
    // The u16 prefix bounds the allocation at 64 KiB.
    let len = usize::from(u16::from_be_bytes(len));
    if len < HEADER_LEN {
        return Err(invalid("message shorter than a header"));
    }
    let mut msg = vec![0u8; len];
    if read_by(stream, &mut msg, deadline)? != len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Some(msg))
}

/// Fills `buf` unless the peer closes first; returns the bytes read. Fails with a timeout
/// error at `deadline`, however slowly the peer trickles bytes in.
fn read_by(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> io::Result<usize> {
    let mut got = 0;
    while let Some(rest) = buf.get_mut(got..).filter(|r| !r.is_empty()) {
        let left = deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or(io::ErrorKind::TimedOut)?;
        stream.set_read_timeout(Some(left))?;
        match stream.read(rest) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Writes `msg` with its length prefix, in one write so it leaves in as few segments as
/// possible (RFC 7766 §8).
fn write_message(stream: &mut TcpStream, msg: &[u8]) -> io::Result<()> {
    let len = u16::try_from(msg.len()).map_err(|_| invalid("message over 65535 bytes"))?;
    let mut framed = Vec::with_capacity(msg.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(msg);
    stream.write_all(&framed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::names::Names;
    use crate::dns::testutil::{as_response, query};
    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::{RData, RecordType};
    use std::net::{Ipv4Addr, Shutdown};
    use std::sync::RwLock;

    fn subnet() -> Ipv4Subnet {
        Ipv4Subnet {
            addr: Ipv4Addr::new(192, 168, 122, 1),
            prefix: 24,
        }
    }

    fn server(upstreams: Vec<SocketAddr>) -> SocketAddr {
        let mut names = Names::new();
        names.insert("web1", Ipv4Addr::new(192, 168, 122, 10));
        spawn_tcp_server(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(RwLock::new(names)),
            Some("example.lan".into()),
            subnet(),
            upstreams,
        )
        .unwrap()
    }

    fn connect(addr: SocketAddr) -> TcpStream {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    fn ask(s: &mut TcpStream, q: &[u8]) -> Vec<u8> {
        write_message(s, q).unwrap();
        read_message(s, Duration::from_secs(5)).unwrap().unwrap()
    }

    /// True when the server closed the connection (EOF or reset), false on a timeout.
    fn closed(s: &mut TcpStream) -> bool {
        let mut buf = [0u8; 16];
        match s.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() == io::ErrorKind::ConnectionReset,
        }
    }

    /// A test upstream on 127.0.0.1 that answers `queries` length-prefixed queries (over any
    /// number of connections) with the query, QR set. Gives up after 5 s.
    fn upstream(queries: usize) -> (SocketAddr, thread::JoinHandle<usize>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let h = thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut answered = 0;
            while answered < queries && Instant::now() < deadline {
                let Ok((mut s, _)) = l.accept() else {
                    thread::sleep(Duration::from_millis(10));
                    continue;
                };
                s.set_nonblocking(false).unwrap();
                if let Ok(Some(q)) = read_message(&mut s, Duration::from_secs(3)) {
                    write_message(&mut s, &as_response(&q)).unwrap();
                    answered += 1;
                }
            }
            answered
        });
        (addr, h)
    }

    /// A loopback address nobody listens on: connections are refused at once.
    fn refused() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    #[test]
    fn answers_local_names_and_servfails_without_upstream() {
        let addr = server(Vec::new());
        let mut s = connect(addr);
        let r =
            Message::from_vec(&ask(&mut s, &query(5, "web1.example.lan.", RecordType::A))).unwrap();
        assert_eq!(r.metadata.id, 5);
        assert!(matches!(
            &r.answers[..],
            [a] if a.data == RData::A(Ipv4Addr::new(192, 168, 122, 10).into())
        ));
        // Same connection, second query: nxdomain in our domain, then servfail for a
        // forwarded name with no upstream.
        let r =
            Message::from_vec(&ask(&mut s, &query(6, "x.example.lan.", RecordType::A))).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
        let r = Message::from_vec(&ask(&mut s, &query(7, "example.com.", RecordType::A))).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(r.metadata.id, 7);
        s.shutdown(Shutdown::Write).unwrap();
        assert!(closed(&mut s));
    }

    #[test]
    fn forwards_to_the_next_upstream_unchanged() {
        let (up, h) = upstream(2);
        let addr = server(vec![refused(), up]);
        let mut s = connect(addr);
        for id in [0x5151, 0x5252] {
            let q = query(id, "Example.com.", RecordType::AAAA);
            assert_eq!(ask(&mut s, &q), as_response(&q));
        }
        assert_eq!(h.join().unwrap(), 2);
    }

    #[test]
    fn garbage_and_oversize_input_close_the_connection() {
        let addr = server(Vec::new());
        let mut garbage = vec![0, 20];
        garbage.extend_from_slice(&[0xff; 20]);
        let mut huge = vec![0xff, 0xff];
        huge.resize(2 + 65535, 0xa5);
        let q = query(8, "web1.", RecordType::A);
        let mut response = vec![0, q.len() as u8];
        response.extend_from_slice(&as_response(&q));
        let mut truncated = vec![0, 100];
        truncated.extend_from_slice(&[0; 10]);
        for (what, bytes) in [
            ("garbage", garbage),
            ("zero length", vec![0, 0]),
            ("short", vec![0, 4, 1, 2, 3, 4]),
            ("oversize", huge),
            ("response", response),
            ("truncated", truncated),
            ("half a prefix", vec![0]),
        ] {
            let mut s = connect(addr);
            s.write_all(&bytes).unwrap();
            // The peer's end of input is what makes the truncated cases fail, not a timeout.
            // (The server may already have reset the connection: ignore errors here.)
            let _ = s.shutdown(Shutdown::Write);
            assert!(closed(&mut s), "{what}");
        }
    }

    #[test]
    fn connections_beyond_the_limit_are_closed() {
        let addr = server(Vec::new());
        let mut open: Vec<TcpStream> = (0..MAX_CONNECTIONS).map(|_| connect(addr)).collect();
        let mut extra = connect(addr);
        assert!(closed(&mut extra));
        // The admitted ones are served.
        let r = ask(&mut open[0], &query(9, "web1.", RecordType::A));
        assert_eq!(Message::from_vec(&r).unwrap().answers.len(), 1);
        drop(open);
    }
}
