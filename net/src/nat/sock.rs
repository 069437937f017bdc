//! Thin, checked wrappers over the socket calls the NAT makes that std does not offer:
//! nonblocking connect, peeking at an offset, discarding acknowledged bytes, send-queue
//! depth, linger-0 close, ping sockets.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: libc::ssize_t) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// A `sockaddr_in` for `a`.
pub fn sockaddr_in(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from(*a.ip()).to_be(),
        },
        sin_zero: [0; 8],
    }
}

/// The address in a `sockaddr_in`.
pub fn from_sockaddr_in(s: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(s.sin_addr.s_addr)),
        u16::from_be(s.sin_port),
    )
}

/// A new nonblocking, close-on-exec IPv4 socket.
pub fn socket(ty: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; the result is checked before being owned.
    let fd = cvt(unsafe {
        libc::socket(
            libc::AF_INET,
            ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            proto,
        )
    })?;
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Sets an integer socket option.
pub fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    opt: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its size.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            &v as *const libc::c_int as *const libc::c_void,
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// Reads an integer socket option.
pub fn getsockopt_int(fd: RawFd, level: libc::c_int, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: passes a pointer to a live c_int and its size.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            level,
            opt,
            &mut v as *mut libc::c_int as *mut libc::c_void,
            &mut len,
        )
    })?;
    Ok(v)
}

/// Starts a nonblocking connect; `Ok(())` whether it completed or is in progress.
pub fn connect(fd: RawFd, to: SocketAddrV4) -> io::Result<()> {
    let sa = sockaddr_in(to);
    // SAFETY: passes a live sockaddr_in and its size.
    let r = unsafe {
        libc::connect(
            fd,
            &sa as *const libc::sockaddr_in as *const libc::sockaddr,
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(e);
        }
    }
    Ok(())
}

/// Binds to `a`.
pub fn bind(fd: RawFd, a: SocketAddrV4) -> io::Result<()> {
    let sa = sockaddr_in(a);
    // SAFETY: passes a live sockaddr_in and its size.
    cvt(unsafe {
        libc::bind(
            fd,
            &sa as *const libc::sockaddr_in as *const libc::sockaddr,
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })
    .map(|_| ())
}

/// The pending error of a socket (SO_ERROR), which also clears it.
pub fn take_error(fd: RawFd) -> io::Result<Option<io::Error>> {
    let e = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_ERROR)?;
    Ok((e != 0).then(|| io::Error::from_raw_os_error(e)))
}

/// `recvmsg` with MSG_PEEK into `iov`; returns bytes copied (0 at end of stream).
pub fn peek_into(fd: RawFd, iov: &mut [libc::iovec]) -> io::Result<usize> {
    // SAFETY: msghdr is plain data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = iov.len() as _;
    // SAFETY: the iovecs describe live, writable buffers owned by the caller.
    cvt_size(unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_PEEK | libc::MSG_DONTWAIT) })
}

/// Drops `n` bytes from the front of a TCP receive queue without copying them (MSG_TRUNC on
/// TCP discards, see tcp(7)); returns how many were dropped.
pub fn discard(fd: RawFd, n: usize) -> io::Result<usize> {
    // SAFETY: with MSG_TRUNC on a TCP socket the buffer is not written; a null pointer is
    // what tcp(7) documents for this use.
    cvt_size(unsafe {
        libc::recv(
            fd,
            std::ptr::null_mut(),
            n,
            libc::MSG_TRUNC | libc::MSG_DONTWAIT,
        )
    })
}

/// `send` without SIGPIPE; returns bytes queued.
pub fn send(fd: RawFd, data: &[u8]) -> io::Result<usize> {
    // SAFETY: reads `data.len()` bytes from a live slice.
    cvt_size(unsafe {
        libc::send(
            fd,
            data.as_ptr() as *const libc::c_void,
            data.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    })
}

/// `recv` into `buf`.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: writes at most `buf.len()` bytes into a live slice.
    cvt_size(unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    })
}

/// `recvfrom` into `buf`; returns the length and the sender.
pub fn recv_from(fd: RawFd, buf: &mut [u8]) -> io::Result<(usize, SocketAddrV4)> {
    // SAFETY: sockaddr_in is plain data.
    let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: writes at most `buf.len()` bytes into a live slice and a sockaddr_in.
    let n = cvt_size(unsafe {
        libc::recvfrom(
            fd,
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            libc::MSG_DONTWAIT,
            &mut sa as *mut libc::sockaddr_in as *mut libc::sockaddr,
            &mut len,
        )
    })?;
    Ok((n, from_sockaddr_in(&sa)))
}

/// `sendto` without SIGPIPE.
pub fn send_to(fd: RawFd, data: &[u8], to: SocketAddrV4) -> io::Result<usize> {
    let sa = sockaddr_in(to);
    // SAFETY: reads `data.len()` bytes and a live sockaddr_in.
    cvt_size(unsafe {
        libc::sendto(
            fd,
            data.as_ptr() as *const libc::c_void,
            data.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            &sa as *const libc::sockaddr_in as *const libc::sockaddr,
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })
}

/// Bytes in the send queue not yet acknowledged by the peer (SIOCOUTQ, tcp(7)).
pub fn outq(fd: RawFd) -> io::Result<usize> {
    let mut v: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one c_int.
    cvt(unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut v) })?;
    Ok(v.max(0) as usize)
}

/// Bytes in the receive queue (SIOCINQ, tcp(7)).
pub fn inq(fd: RawFd) -> io::Result<usize> {
    let mut v: libc::c_int = 0;
    // SAFETY: SIOCINQ writes one c_int.
    cvt(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut v) })?;
    Ok(v.max(0) as usize)
}

/// Makes the next close send a RST instead of a FIN (SO_LINGER with a zero timeout).
pub fn set_linger_zero(fd: RawFd) {
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: passes a live linger struct and its size. Failure only means a FIN is sent.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            &l as *const libc::linger as *const libc::c_void,
            mem::size_of::<libc::linger>() as libc::socklen_t,
        );
    }
}

/// Shuts down the sending side (our FIN to the host peer).
pub fn shutdown_write(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain syscall.
    cvt(unsafe { libc::shutdown(fd, libc::SHUT_WR) }).map(|_| ())
}

/// The local address of a socket.
pub fn local_addr(fd: RawFd) -> io::Result<SocketAddrV4> {
    // SAFETY: sockaddr_in is plain data.
    let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: writes at most `len` bytes into a live sockaddr_in.
    cvt(unsafe {
        libc::getsockname(
            fd,
            &mut sa as *mut libc::sockaddr_in as *mut libc::sockaddr,
            &mut len,
        )
    })?;
    Ok(from_sockaddr_in(&sa))
}

/// A nonblocking TCP listener on `a`.
pub fn tcp_listener(a: SocketAddrV4) -> io::Result<OwnedFd> {
    let s = socket(libc::SOCK_STREAM, 0)?;
    setsockopt_int(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    bind(s.as_raw_fd(), a)?;
    // SAFETY: plain syscall.
    cvt(unsafe { libc::listen(s.as_raw_fd(), 128) })?;
    Ok(s)
}

/// Accepts one connection as a nonblocking socket; `Ok(None)` when none is pending.
pub fn accept(fd: RawFd) -> io::Result<Option<(OwnedFd, SocketAddrV4)>> {
    // SAFETY: sockaddr_in is plain data.
    let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: writes at most `len` bytes into a live sockaddr_in.
    let r = unsafe {
        libc::accept4(
            fd,
            &mut sa as *mut libc::sockaddr_in as *mut libc::sockaddr,
            &mut len,
            libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
        )
    };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock {
            return Ok(None);
        }
        return Err(e);
    }
    // SAFETY: r is a fresh descriptor nobody else owns.
    Ok(Some((
        unsafe { OwnedFd::from_raw_fd(r) },
        from_sockaddr_in(&sa),
    )))
}

/// Raw descriptor of an owned socket.
pub fn raw(fd: &OwnedFd) -> RawFd {
    fd.as_raw_fd()
}
