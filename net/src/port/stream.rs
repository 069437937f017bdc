//! QEMU's stream netdev on a unix socket (`-netdev stream,addr.type=unix,...`): each frame
//! is a 4-byte big-endian length followed by the Ethernet frame, in both directions.
//!
//! The listener accepts any number of clients (bounded by the caller); each becomes a port.
//! Output that the peer's socket cannot take at once is queued up to [`TX_QUEUE_LIMIT`]
//! bytes; past that whole frames are dropped and counted, never half-written.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use super::{would_block, PortStats, ReadStatus, RxBuf, MAX_FRAME};
use crate::error::{Error, Result};

/// Output queued per client before frames are dropped, bytes.
pub const TX_QUEUE_LIMIT: usize = 1 << 20;

/// Bytes read from one client per readiness event before others get their turn.
const READ_BUDGET: usize = 1 << 20;

/// A listening unix socket for stream clients.
pub struct StreamListener {
    listener: UnixListener,
    path: PathBuf,
}

impl StreamListener {
    /// Listens on `path`. A stale socket file (nobody accepting) is replaced; a live one is an
    /// error, so two networks never share a path.
    ///
    /// # Errors
    /// [`Error::Io`] naming `--socket` and the path.
    pub fn bind(path: &Path) -> Result<Self> {
        let what = || format!("--socket {}", path.display());
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                return Err(Error::io(
                    what(),
                    io::Error::new(
                        io::ErrorKind::AddrInUse,
                        "another network is listening there",
                    ),
                ));
            }
            std::fs::remove_file(path).map_err(|e| Error::io(what(), e))?;
        }
        let listener = UnixListener::bind(path).map_err(|e| Error::io(what(), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io(what(), e))?;
        Ok(StreamListener {
            listener,
            path: path.to_path_buf(),
        })
    }

    /// Accepts one pending client, if any.
    pub fn accept(&self) -> io::Result<Option<StreamPort>> {
        match self.listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(true)?;
                Ok(Some(StreamPort::new(s)))
            }
            Err(e) if would_block(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl AsRawFd for StreamListener {
    fn as_raw_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }
}

impl Drop for StreamListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// One connected stream client.
pub struct StreamPort {
    sock: UnixStream,
    /// Output the socket did not take yet: a ring that never holds more than
    /// [`TX_QUEUE_LIMIT`] plus one frame, so a peer that reads slowly costs bounded memory.
    tx: VecDeque<u8>,
    /// Counters.
    pub stats: PortStats,
}

impl StreamPort {
    /// Wraps a connected, nonblocking socket.
    pub fn new(sock: UnixStream) -> Self {
        StreamPort {
            sock,
            tx: VecDeque::new(),
            stats: PortStats::default(),
        }
    }

    /// Sends a frame: written now if the queue is empty and the socket takes it, else queued,
    /// else dropped and counted.
    pub fn send(&mut self, frame: &[u8]) {
        let hdr = (frame.len() as u32).to_be_bytes();
        let mut written = 0;
        if self.tx.is_empty() {
            let iov = [
                libc::iovec {
                    iov_base: hdr.as_ptr() as *mut libc::c_void,
                    iov_len: 4,
                },
                libc::iovec {
                    iov_base: frame.as_ptr() as *mut libc::c_void,
                    iov_len: frame.len(),
                },
            ];
            // SAFETY: the iovecs point at live buffers of the stated lengths; writev only reads.
            let n = unsafe { libc::writev(self.sock.as_raw_fd(), iov.as_ptr(), 2) };
            if n >= 0 {
                written = n as usize;
            }
            if written == 4 + frame.len() {
                self.stats.tx_frames += 1;
                return;
            }
        }
        if written == 0 && self.tx.len() + 4 + frame.len() > TX_QUEUE_LIMIT {
            self.stats.tx_dropped += 1;
            return;
        }
        // A partly written frame is queued whatever the limit says, or the stream loses its
        // framing: the ring holds at most the limit plus one frame.
        if self.tx.capacity() == 0 {
            self.tx.reserve_exact(TX_QUEUE_LIMIT + 4 + MAX_FRAME);
        }
        self.tx.extend(&hdr[written.min(4)..]);
        self.tx.extend(&frame[written.saturating_sub(4)..]);
        self.stats.tx_frames += 1;
    }

    /// Writes queued output; true while some remains.
    pub fn flush(&mut self) -> io::Result<bool> {
        use std::io::Write;
        while !self.tx.is_empty() {
            let (front, _) = self.tx.as_slices();
            match self.sock.write(front) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.tx.drain(..n);
                }
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok(!self.tx.is_empty())
    }

    /// Whether output is queued.
    pub fn wants_write(&self) -> bool {
        !self.tx.is_empty()
    }

    /// Reads available bytes into `rx` (which keeps a partial frame between calls).
    pub fn read(&mut self, rx: &mut RxBuf) -> io::Result<ReadStatus> {
        rx.ensure_capacity();
        rx.compact();
        let mut budget = READ_BUDGET;
        while rx.end < rx.buf.len() && budget > 0 {
            match self.sock.read(&mut rx.buf[rx.end..]) {
                Ok(0) => return Ok(ReadStatus::Closed),
                Ok(n) => {
                    rx.end += n;
                    budget = budget.saturating_sub(n);
                }
                Err(e) if would_block(&e) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        // A length no frame can have means the peer does not speak this protocol.
        if rx.end - rx.start >= 4 {
            let b = &rx.buf[rx.start..rx.start + 4];
            if u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize > MAX_FRAME {
                self.stats.rx_malformed += 1;
                return Ok(ReadStatus::Closed);
            }
        }
        Ok(ReadStatus::Open)
    }
}

impl AsRawFd for StreamPort {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn frames_round_trip_and_bad_lengths_close() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut port = StreamPort::new(a);
        port.send(&[1, 2, 3]);
        let mut got = [0u8; 7];
        b.read_exact(&mut got).unwrap();
        assert_eq!(got, [0, 0, 0, 3, 1, 2, 3]);

        b.write_all(&[0, 0, 0, 2, 9, 9, 0, 0]).unwrap();
        let mut rx = RxBuf::default();
        assert_eq!(port.read(&mut rx).unwrap(), ReadStatus::Open);
        assert_eq!(rx.next_frame().unwrap().unwrap(), &[9, 9]);
        assert_eq!(rx.next_frame().unwrap(), None);
        b.write_all(&[0, 1]).unwrap();
        assert_eq!(port.read(&mut rx).unwrap(), ReadStatus::Open);
        b.write_all(&[0xff, 0xff, 0xff, 0xff]).unwrap();
        assert_eq!(port.read(&mut rx).unwrap(), ReadStatus::Open);
        b.write_all(&[0xff, 0xff]).unwrap();
        drop(b);
        assert_eq!(port.read(&mut rx).unwrap(), ReadStatus::Closed);
    }

    #[test]
    fn a_slowly_reading_peer_cannot_grow_the_queue() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        b.set_nonblocking(true).unwrap();
        let mut port = StreamPort::new(a);
        let frame = vec![1u8; 1400];
        let mut buf = vec![0u8; 1024];
        // Write more than the peer reads, for a long time; it always reads a little.
        for _ in 0..20_000 {
            port.send(&frame);
            port.send(&frame);
            let _ = b.read(&mut buf);
            let _ = port.flush();
            assert!(
                port.tx.capacity() <= 2 * (TX_QUEUE_LIMIT + 4 + MAX_FRAME),
                "{}",
                port.tx.capacity()
            );
        }
        assert!(port.stats.tx_dropped > 0);
    }

    #[test]
    fn slow_peer_gets_whole_frames_or_none() {
        let (a, mut b) = UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mut port = StreamPort::new(a);
        let frame = vec![7u8; 60000];
        for _ in 0..200 {
            port.send(&frame);
        }
        assert!(port.stats.tx_dropped > 0);
        assert!(port.wants_write());
        // Drain everything and check that each frame arrives whole.
        b.set_nonblocking(true).unwrap();
        let mut all = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        for _ in 0..100_000 {
            let _ = port.flush();
            match b.read(&mut buf) {
                Ok(n) => all.extend_from_slice(&buf[..n]),
                Err(_) if !port.wants_write() => break,
                Err(_) => {}
            }
        }
        let mut rest = &all[..];
        let mut frames = 0;
        while !rest.is_empty() {
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            assert_eq!(len, 60000);
            assert!(rest[4..4 + len].iter().all(|&x| x == 7));
            rest = &rest[4 + len..];
            frames += 1;
        }
        assert_eq!(frames as u64 + port.stats.tx_dropped, 200);
    }
}
