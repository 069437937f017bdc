//! `skiff net serve --vhost-user PATH`: a vhost-user-net backend whose frontend (QEMU, Cloud
//! Hypervisor) gets a port of the switch.
//!
//! The vhost-user crates run the protocol: a thread per listening socket accepts one
//! frontend at a time and serves its messages, and their vring worker thread watches the
//! queues' kick eventfds. That worker does no queue work: [`VhostUserBackend::handle_event`]
//! only writes an eventfd that is the port's [`LocalPeer::fd`], waking the network's
//! single-threaded event loop. The network thread then works the frontend's vrings (cloned
//! handles, stored on the first kick) through the same [`NetQueueLogic`] as the in-VMM
//! virtio-net device: TX chains of vring 1 copied once into the switch's buffer, frames
//! written into vring 0's chains, one call-eventfd signal per batch.
//!
//! Features: VIRTIO_F_VERSION_1, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU, VIRTIO_NET_F_MRG_RXBUF
//! (when acked, a received frame may span several RX chains, `num_buffers` counting them),
//! VIRTIO_RING_F_EVENT_IDX (virtio-queue's `Queue` suppresses notifications both ways). No
//! checksum offload: every frame carries a 12-byte header. Protocol features: REPLY_ACK and
//! CONFIG; no MQ (one queue pair).
//!
//! Queues of up to 1024 descriptors (QEMU's virtio-mmio offers 1024). Virtio 1 only: a
//! frontend that does not accept VIRTIO_F_VERSION_1 (QEMU's virtio-mmio is legacy unless
//! `-global virtio-mmio.force-legacy=false`) would use 10-byte headers; its frames are
//! dropped, with a warning.
//!
//! Between the frontend and the crate's request handler sits a small relay (see
//! [`relay_requests`]) that holds back the SET_VRING_ENABLE messages QEMU 7.2's virtio-net
//! sends before SET_FEATURES, which the crate would refuse by closing the connection.
//!
//! With no frontend connected, or with its rings stopped, frames for the port are dropped and
//! counted. A frontend that goes away (even by SIGKILL) is forgotten: its vrings and memory
//! are dropped and the socket accepts the next frontend.

use std::io;
use std::io::{Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use devices::virtio::net::{NetQueueLogic, RxOutcome, RX_QUEUE, TX_QUEUE};
use devices::virtio::{InterruptKind, InterruptSignal};
use net::port::{LocalPeer, PortStats, ReadStatus, RxBuf};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

/// virtio feature bits (virtio 1.2 §5.1.3, §6).
const VIRTIO_NET_F_MTU: u64 = 1 << 3;
const VIRTIO_NET_F_MAC: u64 = 1 << 5;
const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_NET_S_LINK_UP in the config space's `status`.
const VIRTIO_NET_S_LINK_UP: u16 = 1;
/// Descriptors per queue the frontend may configure.
const MAX_QUEUE_SIZE: usize = 1024;

/// What the network thread needs of the connected frontend.
#[derive(Default)]
struct Conn {
    /// Bumped for every new frontend: a worker thread of an old connection that calls late
    /// cannot install its vrings.
    generation: u64,
    /// The frontend's guest memory, followed on SET_MEM_TABLE by the vhost-user crate.
    mem: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    /// Clones of the frontend's vrings (RX, TX), stored on the first kick.
    vrings: Option<Vec<VringRwLock>>,
    /// The frontend acked features without VIRTIO_F_VERSION_1: its headers are 10 bytes
    /// (legacy), which the shared queue code does not speak; its frames are dropped.
    legacy: bool,
    /// The frontend acked VIRTIO_NET_F_MRG_RXBUF.
    mergeable: bool,
}

/// State shared by the backend (vhost-user threads) and the port (network thread).
struct Shared {
    /// Written on every kick; the port's [`LocalPeer::fd`].
    wake: EventFd,
    conn: Mutex<Conn>,
    mac: [u8; 6],
    mtu: u16,
}

impl Shared {
    fn conn(&self) -> MutexGuard<'_, Conn> {
        // A panic elsewhere while holding the lock leaves plain data: go on with it.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The backend the vhost-user crates drive: one per connection, all sharing [`Shared`].
#[derive(Clone)]
struct Backend {
    shared: Arc<Shared>,
    generation: u64,
}

impl VhostUserBackend for Backend {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        2
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
            | VIRTIO_NET_F_MAC
            | VIRTIO_NET_F_MTU
            | VIRTIO_NET_F_MRG_RXBUF
            | VIRTIO_RING_F_EVENT_IDX
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::CONFIG
    }

    fn acked_features(&self, features: u64) {
        let mut c = self.shared.conn();
        if c.generation == self.generation {
            c.legacy = features & VIRTIO_F_VERSION_1 == 0;
            c.mergeable = features & VIRTIO_NET_F_MRG_RXBUF != 0;
            if c.legacy {
                tracing::warn!(
                    "vhost-user: the frontend did not accept VIRTIO_F_VERSION_1 (legacy \
                     virtio-mmio? use -global virtio-mmio.force-legacy=false): frames dropped"
                );
            }
        }
    }

    fn set_event_idx(&self, _enabled: bool) {
        // The crate sets it on each vring's Queue; NetQueueLogic goes through the Queue.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        // struct virtio_net_config: mac[6], status, max_virtqueue_pairs, mtu (§5.1.4).
        let mut cfg = Vec::with_capacity(12);
        cfg.extend_from_slice(&self.shared.mac);
        cfg.extend_from_slice(&VIRTIO_NET_S_LINK_UP.to_le_bytes());
        cfg.extend_from_slice(&1u16.to_le_bytes());
        cfg.extend_from_slice(&self.shared.mtu.to_le_bytes());
        let start = (offset as usize).min(cfg.len());
        let end = start.saturating_add(size as usize).min(cfg.len());
        let mut out = cfg[start..end].to_vec();
        // The frontend asked for `size` bytes: pad what lies past the config space.
        out.resize(size.min(256) as usize, 0);
        out
    }

    fn update_memory(&self, mem: GuestMemoryAtomic<GuestMemoryMmap>) -> io::Result<()> {
        let mut c = self.shared.conn();
        if c.generation == self.generation {
            c.mem = Some(mem);
        }
        Ok(())
    }

    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        // A fresh pair per worker thread, so that ending a connection ends its worker.
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn handle_event(
        &self,
        device_event: u16,
        _evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> io::Result<()> {
        if usize::from(device_event) > TX_QUEUE {
            return Ok(());
        }
        {
            let mut c = self.shared.conn();
            if c.generation != self.generation {
                return Ok(());
            }
            if c.vrings.is_none() && vrings.len() > TX_QUEUE {
                c.vrings = Some(vrings.to_vec());
            }
        }
        tracing::trace!("vhost-user: kick on vring {device_event}");
        // Only wake the network thread: it does the queue work.
        self.shared.wake.write(1)
    }
}

/// Records that the guest should be interrupted; the caller then writes the vring's call
/// eventfd (the vring's lock is held while the logic runs).
#[derive(Default)]
struct CallFlag(AtomicBool);

impl InterruptSignal for CallFlag {
    fn trigger(&self, _kind: InterruptKind) -> devices::Result<()> {
        self.0.store(true, Ordering::Relaxed);
        Ok(())
    }
}

use crate::vm::net::Collect;

/// The switch side of a `--vhost-user` socket: a [`LocalPeer`] whose frontend comes and
/// goes.
pub struct VhostUserPort {
    shared: Arc<Shared>,
    logic: NetQueueLogic,
    /// The connection generation `logic`'s pending state belongs to.
    generation: u64,
    pending_signal: bool,
    stats: PortStats,
    path: PathBuf,
}

impl VhostUserPort {
    /// Listens on `path` (replacing a stale socket there) and starts the thread that
    /// serves one frontend after another. `mac` and `mtu` fill the device's config space.
    ///
    /// # Errors
    /// The eventfd or the socket cannot be made.
    pub fn listen(path: &Path, mac: [u8; 6], mtu: u16) -> anyhow::Result<Self> {
        let wake = EventFd::new(EFD_NONBLOCK)?;
        let shared = Arc::new(Shared {
            wake,
            conn: Mutex::new(Conn::default()),
            mac,
            mtu,
        });
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)
            .map_err(|e| anyhow::anyhow!("--vhost-user {}: {e}", path.display()))?;
        let thread_shared = shared.clone();
        let thread_path = path.to_path_buf();
        std::thread::Builder::new()
            .name("vhost-user".into())
            .spawn(move || serve(listener, thread_shared, &thread_path))?;
        Ok(VhostUserPort {
            shared,
            logic: NetQueueLogic::new(),
            generation: 0,
            pending_signal: false,
            stats: PortStats::default(),
            path: path.to_path_buf(),
        })
    }

    /// The frontend's memory and vrings, if one is connected and has kicked.
    fn frontend(
        &mut self,
    ) -> Option<(GuestMemoryAtomic<GuestMemoryMmap>, VringRwLock, VringRwLock)> {
        let (generation, mem, vrings, legacy, mergeable) = {
            let c = self.shared.conn();
            (
                c.generation,
                c.mem.clone(),
                c.vrings.clone(),
                c.legacy,
                c.mergeable,
            )
        };
        if generation != self.generation {
            // A new frontend: nothing pending belongs to it.
            self.generation = generation;
            self.logic.reset_pending();
            self.pending_signal = false;
        }
        if legacy {
            return None;
        }
        self.logic.set_mergeable(mergeable);
        let vrings = vrings?;
        let rx = vrings.get(RX_QUEUE)?.clone();
        let tx = vrings.get(TX_QUEUE)?.clone();
        Some((mem?, rx, tx))
    }
}

/// Accepts frontends on `listener` one after another, each served by a fresh daemon.
fn serve(listener: UnixListener, shared: Arc<Shared>, path: &Path) {
    for n in 0u64.. {
        let frontend = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("--vhost-user {}: accept: {e}", path.display());
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        tracing::info!("--vhost-user {}: frontend connected", path.display());
        if let Err(e) = serve_one(frontend, &shared, n) {
            tracing::warn!("--vhost-user {}: {e}", path.display());
        }
        {
            let mut c = shared.conn();
            c.mem = None;
            c.vrings = None;
            c.legacy = false;
            c.mergeable = false;
        }
        // The network thread notices the change on its next wake.
        let _ = shared.wake.write(1);
        tracing::info!("--vhost-user {}: frontend gone", path.display());
    }
}

/// Serves one frontend until it goes away: a fresh daemon of the vhost-user crate behind a
/// relay (see [`relay_requests`]).
fn serve_one(frontend: UnixStream, shared: &Arc<Shared>, n: u64) -> anyhow::Result<()> {
    let generation = {
        let mut c = shared.conn();
        c.generation += 1;
        c.mem = None;
        c.vrings = None;
        c.legacy = false;
        c.mergeable = false;
        c.generation
    };
    let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    shared.conn().mem = Some(mem.clone());
    let backend = Backend {
        shared: shared.clone(),
        generation,
    };
    let mut daemon = VhostUserDaemon::new("vhost-user-net".into(), backend, mem)
        .map_err(|e| anyhow::anyhow!("daemon: {e}"))?;
    // The daemon's end of the relay: a private abstract socket, connected before the
    // daemon accepts on it.
    let name = format!("skiff-vhost-user-{}-{}-{n}", std::process::id(), generation);
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
    let inner = UnixListener::bind_addr(&addr)?;
    let to_daemon = UnixStream::connect_addr(&addr)?;
    let mut vl = Listener::from(inner);
    daemon
        .start(&mut vl)
        .map_err(|e| anyhow::anyhow!("daemon: {e}"))?;
    drop(vl);
    let (f2, d2) = (frontend.try_clone()?, to_daemon.try_clone()?);
    let up = std::thread::Builder::new()
        .name("vhost-user-relay".into())
        .spawn(move || {
            if let Err(e) = relay_requests(&f2, &d2) {
                tracing::debug!("vhost-user relay: {e}");
            }
            let _ = f2.shutdown(Shutdown::Both);
            let _ = d2.shutdown(Shutdown::Both);
        })?;
    let (mut f3, mut d3) = (frontend.try_clone()?, to_daemon.try_clone()?);
    let down = std::thread::Builder::new()
        .name("vhost-user-relay".into())
        .spawn(move || {
            let _ = std::io::copy(&mut d3, &mut f3);
            let _ = f3.shutdown(Shutdown::Both);
            let _ = d3.shutdown(Shutdown::Both);
        })?;
    let r = daemon.wait();
    let _ = frontend.shutdown(Shutdown::Both);
    let _ = to_daemon.shutdown(Shutdown::Both);
    for h in daemon.get_epoll_handlers() {
        h.send_exit_event();
    }
    let _ = up.join();
    let _ = down.join();
    if let Err(e) = r {
        tracing::debug!("vhost-user daemon: {e}");
    }
    Ok(())
}

/// vhost-user request codes the relay looks at.
const REQ_SET_FEATURES: u32 = 2;
const REQ_SET_VRING_ENABLE: u32 = 18;
/// Header flag: the frontend waits for an ack.
const FLAG_NEED_REPLY: u32 = 0x8;
/// Largest request body relayed (SET_MEM_TABLE with 8 regions is 264 bytes).
const MAX_BODY: usize = 4096;
/// Most descriptors one request carries (the crate's limit).
const MAX_FDS: usize = 32;

/// Copies requests, with their file descriptors, from the frontend to the daemon, leaving
/// holding back a SET_VRING_ENABLE that arrives before SET_FEATURES until SET_FEATURES has
/// gone through. QEMU 7.2's virtio-net sends them when the guest negotiates features, before
/// it starts the vhost device and sends SET_FEATURES, and does not send them again; the vhost
/// crate refuses them then (VHOST_USER_F_PROTOCOL_FEATURES not acked yet) and ends the
/// connection.
fn relay_requests(frontend: &UnixStream, daemon: &UnixStream) -> io::Result<()> {
    let mut features_seen = false;
    let mut held = std::collections::BTreeMap::new();
    let mut hdr = [0u8; 12];
    let mut body = vec![0u8; MAX_BODY];
    loop {
        let mut raw = [-1 as RawFd; MAX_FDS];
        let mut iov = [libc::iovec {
            iov_base: hdr.as_mut_ptr().cast(),
            iov_len: hdr.len(),
        }];
        // SAFETY: the iovec points into `hdr`, which lives across the call.
        let (got, nfds) = unsafe { frontend.recv_with_fds(&mut iov, &mut raw) }
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        // SAFETY: recv_with_fds handed us ownership of its first `nfds` descriptors.
        let fds: Vec<OwnedFd> = raw[..nfds.min(MAX_FDS)]
            .iter()
            .map(|&fd| unsafe { OwnedFd::from_raw_fd(fd) })
            .collect();
        if got == 0 {
            return Ok(());
        }
        let mut reader = frontend;
        if got < hdr.len() {
            reader.read_exact(&mut hdr[got..])?;
        }
        let field = |i: usize| u32::from_le_bytes([hdr[i], hdr[i + 1], hdr[i + 2], hdr[i + 3]]);
        let (req, flags, size) = (field(0), field(4), field(8) as usize);
        if size > MAX_BODY {
            return Err(io::Error::other(format!("request {req}: {size}-byte body")));
        }
        reader.read_exact(&mut body[..size])?;
        tracing::trace!("vhost-user: request {req} flags {flags:#x} size {size} fds {nfds}");
        let msg = [&hdr[..], &body[..size]].concat();
        if req == REQ_SET_VRING_ENABLE && !features_seen && flags & FLAG_NEED_REPLY == 0 {
            tracing::debug!("vhost-user: SET_VRING_ENABLE before SET_FEATURES held back");
            let index = body
                .get(..4)
                .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            held.insert(index, msg);
            continue;
        }
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        daemon
            .send_with_fds(&[&msg[..]], &raw)
            .map_err(|e| io::Error::from_raw_os_error(e.errno()))?;
        if req == REQ_SET_FEATURES {
            features_seen = true;
            // Now the crate takes them: the rings' last requested state, without replies.
            for (_, m) in std::mem::take(&mut held) {
                let mut w = daemon;
                w.write_all(&m)?;
            }
        }
    }
}

impl LocalPeer for VhostUserPort {
    fn fd(&self) -> RawFd {
        self.shared.wake.as_raw_fd()
    }

    fn read(&mut self, rx: &mut RxBuf) -> io::Result<ReadStatus> {
        // Clear the notification first: a kick that comes after is seen next time.
        let _ = self.shared.wake.read();
        let Some((mem, _, tx)) = self.frontend() else {
            return Ok(ReadStatus::Open);
        };
        let mem = mem.memory();
        let mut state = tx.get_mut();
        if !state.is_enabled() || !state.get_queue().ready() {
            tracing::trace!(
                "vhost-user: TX vring not running (enabled {}, ready {})",
                state.is_enabled(),
                state.get_queue().ready()
            );
            return Ok(ReadStatus::Open);
        }
        let flag = CallFlag::default();
        let mut c = Collect {
            rx,
            stats: &mut self.stats,
        };
        match self
            .logic
            .process_tx(&mem, state.get_queue_mut(), &flag, &mut c)
        {
            Ok(n) => tracing::trace!("vhost-user: {n} frame(s) from the guest"),
            Err(e) => {
                tracing::debug!("--vhost-user {}: transmit queue: {e}", self.path.display());
            }
        }
        if flag.0.load(Ordering::Relaxed) {
            if let Err(e) = state.signal_used_queue() {
                tracing::debug!("--vhost-user {}: call: {e}", self.path.display());
            }
        }
        Ok(ReadStatus::Open)
    }

    fn send(&mut self, frame: &[u8]) {
        let Some((mem, rxq, _)) = self.frontend() else {
            self.stats.tx_dropped += 1;
            return;
        };
        let mem = mem.memory();
        let mut state = rxq.get_mut();
        if !state.is_enabled() || !state.get_queue().ready() {
            self.stats.tx_dropped += 1;
            return;
        }
        match self.logic.try_deliver(&mem, state.get_queue_mut(), frame) {
            Ok(RxOutcome::Delivered) => {
                self.stats.tx_frames += 1;
                self.pending_signal = true;
            }
            r => {
                tracing::trace!("vhost-user: frame for the guest dropped: {r:?}");
                self.stats.tx_dropped += 1;
            }
        }
    }

    fn flush(&mut self) {
        if !std::mem::take(&mut self.pending_signal) {
            return;
        }
        let Some((mem, rxq, _)) = self.frontend() else {
            return;
        };
        let mem = mem.memory();
        let mut state = rxq.get_mut();
        if !state.get_queue().ready() {
            self.logic.reset_pending();
            return;
        }
        let flag = CallFlag::default();
        if let Err(e) = self.logic.signal_rx(&mem, state.get_queue_mut(), &flag) {
            tracing::debug!("--vhost-user {}: receive queue: {e}", self.path.display());
        }
        if flag.0.load(Ordering::Relaxed) {
            if let Err(e) = state.signal_used_queue() {
                tracing::debug!("--vhost-user {}: call: {e}", self.path.display());
            }
        }
    }

    fn stats(&self) -> PortStats {
        self.stats
    }
}

/// A locally administered MAC for the device's config space, derived from `path`.
pub fn mac_for(path: &Path) -> [u8; 6] {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    let b = h.finish().to_le_bytes();
    [0x52, 0x54, 0x00, b[0], b[1], b[2]]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(req: u32, flags: u32, body: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&req.to_le_bytes());
        m.extend_from_slice(&flags.to_le_bytes());
        m.extend_from_slice(&(body.len() as u32).to_le_bytes());
        m.extend_from_slice(body);
        m
    }

    fn enable(index: u32, on: u32) -> Vec<u8> {
        let body: Vec<u8> = [index.to_le_bytes(), on.to_le_bytes()].concat();
        msg(REQ_SET_VRING_ENABLE, 1, &body)
    }

    #[test]
    fn early_vring_enable_waits_for_set_features() {
        let (mut frontend, relay_in) = UnixStream::pair().unwrap();
        let (relay_out, mut daemon) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || relay_requests(&relay_in, &relay_out));
        let features = msg(REQ_SET_FEATURES, 1, &(1u64 << 30).to_le_bytes());
        let get_features = msg(1, 1, &[]);
        for m in [
            enable(0, 0),
            enable(0, 1),
            enable(1, 1),
            features.clone(),
            get_features.clone(),
            enable(1, 0),
        ] {
            frontend.write_all(&m).unwrap();
        }
        drop(frontend);
        t.join().unwrap().unwrap();
        let mut got = Vec::new();
        daemon.read_to_end(&mut got).unwrap();
        let want = [
            features,
            enable(0, 1),
            enable(1, 1),
            get_features,
            enable(1, 0),
        ]
        .concat();
        assert_eq!(got, want);
    }

    #[test]
    fn oversized_or_truncated_requests_end_the_relay() {
        let (mut frontend, relay_in) = UnixStream::pair().unwrap();
        let (relay_out, _daemon) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || relay_requests(&relay_in, &relay_out));
        let mut m = msg(5, 1, &[]);
        m[8..12].copy_from_slice(&(MAX_BODY as u32 + 1).to_le_bytes());
        frontend.write_all(&m).unwrap();
        assert!(t.join().unwrap().is_err());

        let (mut frontend, relay_in) = UnixStream::pair().unwrap();
        let (relay_out, _daemon) = UnixStream::pair().unwrap();
        let t = std::thread::spawn(move || relay_requests(&relay_in, &relay_out));
        frontend.write_all(&msg(5, 1, &[0; 40])[..20]).unwrap();
        drop(frontend);
        assert!(t.join().unwrap().is_err());
    }

    #[test]
    fn config_space() {
        let backend = Backend {
            shared: Arc::new(Shared {
                wake: EventFd::new(EFD_NONBLOCK).unwrap(),
                conn: Mutex::new(Conn::default()),
                mac: [0x52, 0x54, 0, 1, 2, 3],
                mtu: 1500,
            }),
            generation: 0,
        };
        let all = backend.get_config(0, 12);
        assert_eq!(&all[..6], &[0x52, 0x54, 0, 1, 2, 3]);
        assert_eq!(u16::from_le_bytes([all[6], all[7]]), VIRTIO_NET_S_LINK_UP);
        assert_eq!(u16::from_le_bytes([all[10], all[11]]), 1500);
        assert_eq!(backend.get_config(10, 2), 1500u16.to_le_bytes());
        // Past the end, or absurd sizes: zeros, bounded, no panic.
        assert_eq!(backend.get_config(u32::MAX, 4), vec![0; 4]);
        assert_eq!(backend.get_config(8, u32::MAX).len(), 256);
        assert!(backend.features() & VIRTIO_F_VERSION_1 != 0);
    }
}
