//! The serial console on the terminal.
//!
//! Output: COM1's bytes go to stdout through a [`ConsoleWriter`], which also watches them for
//! the guest image's `skiff-guest: exit=N` line (resources/guest-init.sh) and keeps N in a
//! [`GuestStatus`]; when the guest then resets the machine, the VM's end is
//! [`ExitReason::Status`]`(N)`, so `skiff run -- COMMAND` exits with COMMAND's status.
//!
//! Input: a thread ([`spawn_input`]) reads stdin and queues the bytes in COM1's receive FIFO.
//! When stdin is a terminal, `Ctrl-A x` ends the VM and `Ctrl-A Ctrl-A` sends one `Ctrl-A`
//! (QEMU's keys), and [`RawTerminal`] puts the terminal in raw mode (no line editing, no
//! echo, and Ctrl-C goes to the guest) until it is dropped, a panic happens, or
//! [`restore_terminal`] is called.

use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, Once, Weak};
use std::time::Duration;

use devices::serial::SerialDevice;

use super::exit::{ExitReason, Exits};

/// What the guest image's init prints, at the start of a line, after its command.
pub const EXIT_PREFIX: &[u8] = b"skiff-guest: exit=";
/// Longest console line the watcher keeps: the prefix, a sign, ten digits and some room
/// for blanks. Longer lines cannot be exit lines; their bytes are not kept.
pub const LINE_MAX: usize = 64;
/// The console's escape key, Ctrl-A.
pub const ESCAPE: u8 = 0x01;
/// After [`ESCAPE`]: end the VM.
pub const ESCAPE_QUIT: u8 = b'x';
/// Most input bytes kept while the guest does not empty its receive FIFO. From a terminal,
/// bytes beyond this are dropped (so that Ctrl-A x is still read); from a pipe or a file,
/// stdin is not read until there is room again.
pub const PENDING_MAX: usize = 4096;
/// How long the input thread waits for stdin, or for room in the FIFO, before it looks again
/// (and checks whether the VM has ended).
const IDLE_WAIT: Duration = Duration::from_millis(100);
const FIFO_WAIT: Duration = Duration::from_millis(10);

/// The last `skiff-guest: exit=N` the guest printed, shared between the console writer (on a
/// vCPU thread) and whoever decides the VM's exit status.
#[derive(Clone, Debug, Default)]
pub struct GuestStatus(Arc<StatusCell>);

#[derive(Debug, Default)]
struct StatusCell {
    seen: AtomicBool,
    value: AtomicI32,
}

impl GuestStatus {
    /// N of the last exit line, if there was one.
    pub fn get(&self) -> Option<i32> {
        if self.0.seen.load(Ordering::Acquire) {
            Some(self.0.value.load(Ordering::Acquire))
        } else {
            None
        }
    }

    /// Records N.
    pub fn set(&self, n: i32) {
        self.0.value.store(n, Ordering::Release);
        self.0.seen.store(true, Ordering::Release);
    }

    /// How the VM ended, given its raw end `reason`: a reset after an exit line is the
    /// command's status; anything else stays as it is.
    pub fn exit_reason(&self, reason: ExitReason) -> ExitReason {
        match (reason, self.get()) {
            (ExitReason::Reset, Some(n)) => ExitReason::Status(n),
            (r, _) => r,
        }
    }
}

/// N of `skiff-guest: exit=N` (blanks and a carriage return around it allowed), else `None`.
pub fn parse_exit_line(line: &[u8]) -> Option<i32> {
    let digits = line.trim_ascii().strip_prefix(EXIT_PREFIX)?;
    if digits.is_empty() || digits.iter().any(|b| !(b.is_ascii_digit() || *b == b'-')) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Splits console output into lines and finds exit lines, with a fixed-size buffer: a line
/// longer than [`LINE_MAX`] is skipped up to its newline.
#[derive(Debug)]
pub struct ExitLineWatcher {
    line: [u8; LINE_MAX],
    len: usize,
    overlong: bool,
}

impl Default for ExitLineWatcher {
    fn default() -> Self {
        Self {
            line: [0; LINE_MAX],
            len: 0,
            overlong: false,
        }
    }
}

impl ExitLineWatcher {
    /// Takes the next output bytes; returns N of the last exit line they completed.
    pub fn feed(&mut self, bytes: &[u8]) -> Option<i32> {
        let mut found = None;
        for &b in bytes {
            if b == b'\n' {
                if !self.overlong {
                    if let Some(n) = parse_exit_line(&self.line[..self.len]) {
                        found = Some(n);
                    }
                }
                self.len = 0;
                self.overlong = false;
            } else if self.overlong {
            } else if self.len == LINE_MAX {
                self.overlong = true;
            } else {
                self.line[self.len] = b;
                self.len += 1;
            }
        }
        found
    }
}

/// The serial port's writer: passes the bytes to `out` and records exit lines in a
/// [`GuestStatus`]. Bytes `out` refuses with an error are still watched (the guest did print
/// them).
pub struct ConsoleWriter<W> {
    out: W,
    watcher: ExitLineWatcher,
    status: GuestStatus,
}

impl<W: Write> ConsoleWriter<W> {
    /// A writer to `out` that records into `status`.
    pub fn new(out: W, status: GuestStatus) -> Self {
        Self {
            out,
            watcher: ExitLineWatcher::default(),
            status,
        }
    }

    fn watch(&mut self, bytes: &[u8]) {
        if let Some(n) = self.watcher.feed(bytes) {
            self.status.set(n);
        }
    }
}

impl<W: Write> Write for ConsoleWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.out.write(buf) {
            Ok(n) => {
                self.watch(&buf[..n.min(buf.len())]);
                Ok(n)
            }
            // Retried by the caller: watched then.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                self.watch(buf);
                Err(e)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The Ctrl-A key state of a terminal's input.
#[derive(Debug, Default)]
pub struct EscapeFilter {
    pending: bool,
}

impl EscapeFilter {
    /// Appends to `out` the bytes of `input` meant for the guest; returns true at Ctrl-A x
    /// (what follows it is not looked at). A Ctrl-A at the end of `input` waits for the next
    /// call. Ctrl-A Ctrl-A sends one Ctrl-A; Ctrl-A and any other key sends both.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        for &b in input {
            if self.pending {
                self.pending = false;
                match b {
                    ESCAPE_QUIT => return true,
                    ESCAPE => out.push(ESCAPE),
                    _ => out.extend_from_slice(&[ESCAPE, b]),
                }
            } else if b == ESCAPE {
                self.pending = true;
            } else {
                out.push(b);
            }
        }
        false
    }
}

/// Whether `fd` is a terminal.
pub fn is_tty(fd: i32) -> bool {
    // SAFETY: isatty only looks at the descriptor number.
    unsafe { libc::isatty(fd) == 1 }
}

/// Starts the thread that feeds stdin to `serial`. It keeps only a weak reference: it ends
/// when the device is gone, when the VM has ended, at Ctrl-A x (which ends the VM with
/// [`ExitReason::Stopped`]), or at the end of stdin once its bytes are delivered.
///
/// # Errors
/// The thread cannot be started.
pub fn spawn_input(serial: &Arc<Mutex<SerialDevice>>, exits: Arc<Exits>) -> io::Result<()> {
    let serial = Arc::downgrade(serial);
    let escapes = is_tty(libc::STDIN_FILENO);
    std::thread::Builder::new()
        .name("console-in".into())
        .spawn(move || input_loop(libc::STDIN_FILENO, escapes, &serial, &exits))
        .map(|_| ())
}

/// Queues what the FIFO takes of `pending`; false when the device is gone or broken.
fn deliver(serial: &Weak<Mutex<SerialDevice>>, pending: &mut Vec<u8>) -> bool {
    let Some(dev) = serial.upgrade() else {
        return false;
    };
    let Ok(mut dev) = dev.lock() else {
        return false;
    };
    match dev.enqueue_raw_bytes(pending) {
        Ok(n) => {
            pending.drain(..n.min(pending.len()));
            true
        }
        Err(e) => {
            tracing::warn!("console input: {e}");
            false
        }
    }
}

/// Waits up to `wait` for `fd` to be readable (or at its end, or failed).
fn readable(fd: i32, wait: Duration) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polls one descriptor, with a live pollfd.
    let r = unsafe { libc::poll(&mut p, 1, wait.as_millis() as i32) };
    r > 0 && p.revents != 0
}

fn input_loop(fd: i32, escapes: bool, serial: &Weak<Mutex<SerialDevice>>, exits: &Exits) {
    let mut filter = EscapeFilter::default();
    let mut pending: Vec<u8> = Vec::with_capacity(PENDING_MAX);
    let mut buf = [0u8; 512];
    let mut keys = Vec::with_capacity(2 * buf.len());
    let mut eof = false;
    let mut dropped = 0u64;
    while !exits.ended() {
        if !pending.is_empty() && !deliver(serial, &mut pending) {
            break;
        }
        if serial.strong_count() == 0 || (eof && pending.is_empty()) {
            break;
        }
        let wait = if pending.is_empty() {
            IDLE_WAIT
        } else {
            FIFO_WAIT
        };
        // From a terminal, read on even when the guest does not (Ctrl-A x must work); from
        // anything else, lose nothing: read only what fits.
        let room = PENDING_MAX - pending.len();
        let want = if escapes {
            buf.len()
        } else {
            room.min(buf.len())
        };
        if eof || want == 0 {
            std::thread::sleep(wait);
            continue;
        }
        if !readable(fd, wait) {
            continue;
        }
        // SAFETY: reads at most `want` <= buf.len() bytes into `buf`.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), want) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(
                e.kind(),
                io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
            ) {
                continue;
            }
            tracing::debug!("console input: stdin: {e}");
            eof = true;
            continue;
        }
        if n == 0 {
            eof = true;
            continue;
        }
        let input = &buf[..n as usize];
        keys.clear();
        if escapes {
            if filter.feed(input, &mut keys) {
                exits.end(ExitReason::Stopped);
                break;
            }
        } else {
            keys.extend_from_slice(input);
        }
        let take = keys.len().min(room);
        pending.extend_from_slice(&keys[..take]);
        dropped += (keys.len() - take) as u64;
    }
    if dropped > 0 {
        tracing::debug!("console input: {dropped} bytes dropped (the guest did not read them)");
    }
}

/// The terminal settings to put back, while stdin is in raw mode.
static SAVED: Mutex<Option<libc::termios>> = Mutex::new(None);
static PANIC_HOOK: Once = Once::new();

/// Stdin in raw mode while this lives.
#[derive(Debug)]
pub struct RawTerminal(());

impl RawTerminal {
    /// Puts stdin in raw mode if it is a terminal (`None` if it is not): no echo, no line
    /// editing, no signals from keys (Ctrl-C, Ctrl-Z and Ctrl-\ go to the guest), 8-bit
    /// input. Output processing stays on, so that skiff's own messages end their lines as
    /// usual (QEMU's `-serial stdio` does the same). A panic hook puts the settings back too.
    ///
    /// # Errors
    /// The terminal's settings cannot be read or changed.
    pub fn enter() -> io::Result<Option<RawTerminal>> {
        let fd = libc::STDIN_FILENO;
        if !is_tty(fd) {
            return Ok(None);
        }
        // SAFETY: termios is plain data; tcgetattr fills it.
        let mut orig: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `orig` is a live termios.
        if unsafe { libc::tcgetattr(fd, &mut orig) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut raw = orig;
        // SAFETY: `raw` is a live termios.
        unsafe { libc::cfmakeraw(&mut raw) };
        raw.c_oflag |= libc::OPOST;
        raw.c_cc[libc::VMIN] = 1;
        raw.c_cc[libc::VTIME] = 0;
        PANIC_HOOK.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore_terminal();
                previous(info);
            }));
        });
        *SAVED.lock().unwrap_or_else(|e| e.into_inner()) = Some(orig);
        // SAFETY: `raw` is a live termios.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            let e = io::Error::last_os_error();
            SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
            return Err(e);
        }
        Ok(Some(RawTerminal(())))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        restore_terminal();
    }
}

/// Puts back the terminal settings [`RawTerminal::enter`] changed, if they are still changed.
/// Safe to call at any time, any number of times.
pub fn restore_terminal() {
    let saved = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(t) = saved {
        // SAFETY: `t` is a live termios read from this terminal.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Takes at most one byte per call, then fails after `limit` bytes.
    struct Stingy {
        taken: usize,
        limit: usize,
    }

    impl Write for Stingy {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.taken >= self.limit {
                return Err(io::Error::from(io::ErrorKind::BrokenPipe));
            }
            self.taken += 1;
            Ok(buf.len().min(1))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn exit_lines_parse() {
        assert_eq!(parse_exit_line(b"skiff-guest: exit=0"), Some(0));
        assert_eq!(parse_exit_line(b"skiff-guest: exit=42\r"), Some(42));
        assert_eq!(parse_exit_line(b"  skiff-guest: exit=7 \t"), Some(7));
        assert_eq!(parse_exit_line(b"skiff-guest: exit=-1"), Some(-1));
        assert_eq!(
            parse_exit_line(b"skiff-guest: exit=2147483647"),
            Some(i32::MAX)
        );
        for bad in [
            &b"skiff-guest: exit="[..],
            b"skiff-guest: exit=2147483648",
            b"skiff-guest: exit=1x",
            b"skiff-guest: exit=+1",
            b"skiff-guest: exit=1 2",
            b"skiff-guest: exit=--1",
            b"skiff-guest: exit=\xff",
            b"xskiff-guest: exit=1",
            b"skiff-guest: exit 1",
            b"skiff-guest: lease failed",
            b"",
        ] {
            assert_eq!(
                parse_exit_line(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn watcher_joins_lines_split_across_writes() {
        let mut w = ExitLineWatcher::default();
        let text = b"[    1.0] booting\r\nskiff-guest: init started\r\nskiff-guest: exit=3\r\nreboot: Restarting system\r\n";
        // Byte by byte, as the UART writes, and in every two-piece split.
        let mut found = None;
        for b in text {
            found = w.feed(std::slice::from_ref(b)).or(found);
        }
        assert_eq!(found, Some(3));
        for cut in 0..=text.len() {
            let mut w = ExitLineWatcher::default();
            let a = w.feed(&text[..cut]);
            let b = w.feed(&text[cut..]);
            assert_eq!(b.or(a), Some(3), "cut at {cut}");
        }
    }

    #[test]
    fn watcher_needs_the_newline_and_keeps_the_last() {
        let mut w = ExitLineWatcher::default();
        assert_eq!(w.feed(b"skiff-guest: exit=5"), None);
        assert_eq!(w.feed(b"\n"), Some(5));
        assert_eq!(
            w.feed(b"skiff-guest: exit=1\nskiff-guest: exit=9\n"),
            Some(9)
        );
        assert_eq!(w.feed(b"no exit line here\n"), None);
    }

    #[test]
    fn watcher_survives_garbage() {
        let mut w = ExitLineWatcher::default();
        // Every byte value, control characters and invalid UTF-8 included.
        let garbage: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        w.feed(&garbage);
        assert_eq!(w.feed(b"\nskiff-guest: exit=12\n"), Some(12));
        let mut state = 0x1234_5678u32;
        let noise: Vec<u8> = (0..100_000)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 24) as u8
            })
            .collect();
        w.feed(&noise);
        assert_eq!(w.feed(b"\nskiff-guest: exit=13\n"), Some(13));
    }

    #[test]
    fn huge_lines_are_bounded_and_skipped() {
        let mut w = ExitLineWatcher::default();
        // A long line that ends with what looks like an exit line is not one.
        let mut long = vec![b'a'; 1 << 20];
        long.extend_from_slice(b"skiff-guest: exit=4");
        assert_eq!(w.feed(&long), None);
        assert!(w.len <= LINE_MAX);
        assert_eq!(w.feed(b"\n"), None);
        // The next line is read again; the buffer is a fixed array.
        assert_eq!(w.feed(b"skiff-guest: exit=6\n"), Some(6));
        assert!(std::mem::size_of::<ExitLineWatcher>() <= LINE_MAX + 16);
        // Exactly LINE_MAX bytes still fit.
        let mut line = b"skiff-guest: exit=8".to_vec();
        line.resize(LINE_MAX, b' ');
        line.push(b'\n');
        assert_eq!(w.feed(&line), Some(8));
        let mut line = b"skiff-guest: exit=8".to_vec();
        line.resize(LINE_MAX + 1, b' ');
        line.push(b'\n');
        assert_eq!(w.feed(&line), None);
    }

    #[test]
    fn writer_passes_output_and_records_the_status() {
        let out = SharedBuf::default();
        let status = GuestStatus::default();
        let mut w = ConsoleWriter::new(out.clone(), status.clone());
        assert_eq!(status.get(), None);
        for b in b"hello\r\nskiff-guest: exit=17\r\n" {
            w.write_all(&[*b]).unwrap();
            w.flush().unwrap();
        }
        assert_eq!(
            out.0.lock().unwrap().as_slice(),
            b"hello\r\nskiff-guest: exit=17\r\n"
        );
        assert_eq!(status.get(), Some(17));
        assert_eq!(
            status.exit_reason(ExitReason::Reset),
            ExitReason::Status(17)
        );
        assert_eq!(status.exit_reason(ExitReason::Stopped), ExitReason::Stopped);
        let fault = ExitReason::TripleFault { vcpu: 0, rip: 1 };
        assert_eq!(status.exit_reason(fault.clone()), fault);
        assert_eq!(
            GuestStatus::default().exit_reason(ExitReason::Reset),
            ExitReason::Reset
        );
        assert_eq!(ExitReason::Status(17).status(), 17);
    }

    #[test]
    fn writer_watches_each_byte_once_even_when_output_fails() {
        let status = GuestStatus::default();
        let text = b"skiff-guest: exit=2\nskiff-guest: exit=99\n";
        let mut w = ConsoleWriter::new(
            Stingy {
                taken: 0,
                limit: 21,
            },
            status.clone(),
        );
        // Partial writes: only the bytes taken are watched, the rest on the next call.
        w.write_all(&text[..20]).unwrap();
        assert_eq!(status.get(), Some(2));
        // The output is gone (EPIPE), but the guest's line still counts.
        for b in &text[20..] {
            let _ = w.write(&[*b]);
        }
        assert_eq!(status.get(), Some(99));
    }

    fn filter(f: &mut EscapeFilter, input: &[u8]) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let quit = f.feed(input, &mut out);
        (out, quit)
    }

    #[test]
    fn ctrl_a_keys() {
        let mut f = EscapeFilter::default();
        assert_eq!(filter(&mut f, b"ls -l\r"), (b"ls -l\r".to_vec(), false));
        // Ctrl-A Ctrl-A: one Ctrl-A.
        assert_eq!(filter(&mut f, b"a\x01\x01b"), (b"a\x01b".to_vec(), false));
        // Ctrl-A and another key: both.
        assert_eq!(filter(&mut f, b"\x01e"), (b"\x01e".to_vec(), false));
        assert_eq!(filter(&mut f, b"\x01X"), (b"\x01X".to_vec(), false));
        // Ctrl-C is an ordinary byte.
        assert_eq!(filter(&mut f, b"\x03"), (b"\x03".to_vec(), false));
        // Ctrl-A x quits; bytes before it are still handed over.
        assert_eq!(filter(&mut f, b"ab\x01xcd"), (b"ab".to_vec(), true));
    }

    #[test]
    fn ctrl_a_split_across_reads() {
        let mut f = EscapeFilter::default();
        assert_eq!(filter(&mut f, b"q\x01"), (b"q".to_vec(), false));
        assert_eq!(filter(&mut f, b"x"), (Vec::new(), true));
        let mut f = EscapeFilter::default();
        assert_eq!(filter(&mut f, b"\x01"), (Vec::new(), false));
        assert_eq!(filter(&mut f, b"\x01"), (b"\x01".to_vec(), false));
        // The pair is done: a lone x is typed.
        assert_eq!(filter(&mut f, b"x"), (b"x".to_vec(), false));
        // Ctrl-A, Ctrl-A, x: a Ctrl-A and an x, no quit.
        assert_eq!(filter(&mut f, b"\x01\x01x"), (b"\x01x".to_vec(), false));
    }

    fn serial() -> (Arc<Mutex<SerialDevice>>, vmm_sys_util::eventfd::EventFd) {
        let irq = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let dev = SerialDevice::new(irq.try_clone().unwrap(), Box::new(io::sink()));
        (Arc::new(Mutex::new(dev)), irq)
    }

    /// Reads what the guest would: the receive buffer while the line status says data ready.
    fn drain(dev: &Arc<Mutex<SerialDevice>>) -> Vec<u8> {
        use devices::bus::BusDevice;
        let mut got = Vec::new();
        let mut d = dev.lock().unwrap();
        loop {
            let mut lsr = [0];
            d.read(5, &mut lsr);
            if lsr[0] & 1 == 0 {
                return got;
            }
            let mut b = [0];
            d.read(0, &mut b);
            got.push(b[0]);
        }
    }

    fn pipe() -> (std::fs::File, std::fs::File) {
        use std::os::fd::FromRawFd;
        let mut fds = [0; 2];
        // SAFETY: pipe2 fills two descriptors, which the Files then own.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: fresh descriptors owned by nobody else.
        unsafe {
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        }
    }

    #[test]
    fn pipe_input_reaches_the_fifo_without_loss() {
        use std::os::fd::AsRawFd;
        let (dev, _irq) = serial();
        let exits = Arc::new(Exits::new().unwrap());
        let (r, mut w) = pipe();
        let weak = Arc::downgrade(&dev);
        let e = exits.clone();
        let t = std::thread::spawn(move || input_loop(r.as_raw_fd(), false, &weak, &e));
        // Far more than the 64-byte FIFO: the thread waits for the guest to read.
        let text: Vec<u8> = (0..3000u32).map(|i| b'a' + (i % 26) as u8).collect();
        w.write_all(&text).unwrap();
        w.write_all(b"\x01x").unwrap(); // not a terminal: plain bytes
        drop(w);
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while got.len() < text.len() + 2 && std::time::Instant::now() < deadline {
            got.extend(drain(&dev));
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(&got[..text.len()], &text[..]);
        assert_eq!(&got[text.len()..], b"\x01x");
        t.join().unwrap(); // EOF and all delivered: the thread ends
        assert!(!exits.ended(), "EOF on stdin does not end the VM");
    }

    #[test]
    fn ctrl_a_x_from_a_terminal_ends_the_vm_even_when_the_guest_does_not_read() {
        use std::os::fd::AsRawFd;
        let (dev, _irq) = serial();
        let exits = Arc::new(Exits::new().unwrap());
        let (r, mut w) = pipe();
        let weak = Arc::downgrade(&dev);
        let e = exits.clone();
        let t = std::thread::spawn(move || input_loop(r.as_raw_fd(), true, &weak, &e));
        // The FIFO fills and stays full; more than PENDING_MAX is typed; then Ctrl-A x.
        w.write_all(&vec![b'k'; PENDING_MAX + 1000]).unwrap();
        w.write_all(b"\x01x").unwrap();
        t.join().unwrap();
        assert_eq!(exits.reason(), Some(ExitReason::Stopped));
        assert_eq!(drain(&dev).len(), 64, "the FIFO holds what it can");
    }

    #[test]
    fn input_thread_ends_with_the_device() {
        use std::os::fd::AsRawFd;
        let (dev, _irq) = serial();
        let exits = Arc::new(Exits::new().unwrap());
        let (r, _w) = pipe();
        let weak = Arc::downgrade(&dev);
        let e = exits.clone();
        let t = std::thread::spawn(move || input_loop(r.as_raw_fd(), true, &weak, &e));
        drop(dev);
        t.join().unwrap();
        assert!(!exits.ended());
    }
}
