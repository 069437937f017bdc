//! The virtio-net device glue: [`VirtioNet`] is what the MMIO transport drives (features,
//! configuration space, activation, reset); [`NetHandle`] is what the event loop keeps to
//! do the queue work.
//!
//! Threads: the transport runs on whichever vCPU touched its registers. Activation moves
//! the queues into a [`NetQueues`] shared with the handle; reset takes it back. The queue
//! work itself never runs on a vCPU: the VMM registers [`NetHandle::rx_evt`] and
//! [`NetHandle::tx_evt`] as ioeventfds at the QueueNotify address (datamatch [`RX_QUEUE`] and
//! [`TX_QUEUE`]), and a notification that reaches the transport anyway (no ioeventfd) is
//! forwarded to the same eventfd. So the vCPU only takes the queues' lock on DRIVER_OK and
//! on reset, never per frame.

use std::mem::offset_of;
use std::sync::{Arc, Mutex, PoisonError};

use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    virtio_net_config, VIRTIO_NET_F_MAC, VIRTIO_NET_F_MTU, VIRTIO_NET_F_STATUS,
    VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use super::{NetQueues, QUEUE_SIZE, RX_QUEUE, TX_QUEUE};
use crate::virtio::{InterruptSignal, VirtioDevice};
use crate::{Error, Result};

/// The features the device offers (§5.1.3): VERSION_1, MAC, MTU, STATUS.
pub const AVAIL_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << VIRTIO_NET_F_MAC)
    | (1 << VIRTIO_NET_F_MTU)
    | (1 << VIRTIO_NET_F_STATUS);

/// Bytes of `virtio_net_config` the device exposes (§5.1.4): `mac`, `status`,
/// `max_virtqueue_pairs`, `mtu`. Later fields belong to features we do not offer.
pub const CONFIG_LEN: usize = offset_of!(virtio_net_config, mtu) + 2;

const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE, QUEUE_SIZE];

/// What the guest sees of the card.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetConfig {
    /// The card's MAC address (`mac`).
    pub mac: [u8; 6],
    /// The largest MTU the driver should use, in bytes of IP datagram (`mtu`; 1500 for a
    /// plain Ethernet). At most [`super::MAX_FRAME_LEN`] - 14.
    pub mtu: u16,
}

type SharedQueues = Arc<Mutex<Option<NetQueues>>>;

/// The virtio-net device (device ID 1), to be wrapped in an
/// [`crate::virtio::mmio::MmioTransport`].
pub struct VirtioNet {
    config_space: [u8; CONFIG_LEN],
    acked_features: u64,
    /// Indexed by queue: [`RX_QUEUE`], [`TX_QUEUE`].
    queue_evts: [EventFd; 2],
    queues: SharedQueues,
    ignored_config_writes: u64,
}

/// The event loop's side of a [`VirtioNet`].
pub struct NetHandle {
    rx_evt: EventFd,
    tx_evt: EventFd,
    queues: SharedQueues,
}

impl VirtioNet {
    /// A card with `config`, and the handle the event loop works its queues through.
    ///
    /// # Errors
    /// [`Error::EventFd`] when the queue eventfds cannot be created.
    pub fn new(config: NetConfig) -> Result<(Self, NetHandle)> {
        let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(Error::EventFd);
        let queue_evts = [evt()?, evt()?];
        let queues = SharedQueues::default();
        let handle = NetHandle {
            rx_evt: queue_evts[RX_QUEUE].try_clone().map_err(Error::EventFd)?,
            tx_evt: queue_evts[TX_QUEUE].try_clone().map_err(Error::EventFd)?,
            queues: queues.clone(),
        };
        let device = Self {
            config_space: config_space(&config),
            acked_features: 0,
            queue_evts,
            queues,
            ignored_config_writes: 0,
        };
        Ok((device, handle))
    }

    /// The features the driver accepted (0 before FEATURES_OK or after a reset).
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Driver writes to the (read-only) configuration space, ignored so far.
    pub fn ignored_config_writes(&self) -> u64 {
        self.ignored_config_writes
    }
}

/// The configuration space (§5.1.4), little-endian.
fn config_space(config: &NetConfig) -> [u8; CONFIG_LEN] {
    let mut space = [0u8; CONFIG_LEN];
    let mut put = |offset: usize, bytes: &[u8]| {
        space[offset..offset + bytes.len()].copy_from_slice(bytes);
    };
    put(offset_of!(virtio_net_config, mac), &config.mac);
    put(
        offset_of!(virtio_net_config, status),
        &(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes(),
    );
    put(
        offset_of!(virtio_net_config, max_virtqueue_pairs),
        &1u16.to_le_bytes(),
    );
    put(
        offset_of!(virtio_net_config, mtu),
        &config.mtu.to_le_bytes(),
    );
    space
}

impl VirtioDevice for VirtioNet {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn features(&self) -> u64 {
        AVAIL_FEATURES
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & AVAIL_FEATURES;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let tail = usize::try_from(offset)
            .ok()
            .and_then(|start| self.config_space.get(start..));
        if let Some(tail) = tail {
            let n = tail.len().min(data.len());
            data[..n].copy_from_slice(&tail[..n]);
        }
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // mac is read-only for a VERSION_1 driver (§5.1.4.2), the rest always is.
        self.ignored_config_writes += 1;
        tracing::debug!(
            "virtio-net: ignored config write of {} bytes at {offset}",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<Queue>,
        interrupt: Arc<dyn InterruptSignal>,
    ) -> Result<()> {
        if queues.len() != QUEUE_SIZES.len() {
            return Err(Error::QueueCount {
                expected: QUEUE_SIZES.len(),
                got: queues.len(),
            });
        }
        if let Some(index) = queues.iter().position(|q| !q.ready()) {
            return Err(Error::QueueNotReady { index });
        }
        let mut queues = queues.into_iter();
        let (Some(rx), Some(tx)) = (queues.next(), queues.next()) else {
            return Err(Error::QueueCount {
                expected: QUEUE_SIZES.len(),
                got: 0,
            });
        };
        *lock(&self.queues) = Some(NetQueues::new(mem, rx, tx, interrupt));
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(old) = lock(&self.queues).take() {
            tracing::debug!("virtio-net: reset; {:?}", old.stats());
        }
        self.acked_features = 0;
    }

    fn queue_notify(&mut self, index: u16) {
        if let Some(evt) = self.queue_evts.get(usize::from(index)) {
            if let Err(e) = evt.write(1) {
                tracing::warn!("virtio-net: queue {index} notification lost: {e}");
            }
        }
    }
}

impl NetHandle {
    /// Readable when the guest posted receive buffers (queue [`RX_QUEUE`] notified): retry
    /// frames kept back for lack of buffers. Read it to clear it.
    pub fn rx_evt(&self) -> &EventFd {
        &self.rx_evt
    }

    /// Readable when the guest transmitted (queue [`TX_QUEUE`] notified): call
    /// [`NetQueues::process_tx`]. Read it to clear it.
    pub fn tx_evt(&self) -> &EventFd {
        &self.tx_evt
    }

    /// Whether the driver has activated the device (DRIVER_OK, no reset since).
    pub fn is_active(&self) -> bool {
        lock(&self.queues).is_some()
    }

    /// Runs `f` on the queues if the device is active; `None` otherwise (frames for an
    /// inactive card are dropped by the caller).
    pub fn with_queues<R>(&self, f: impl FnOnce(&mut NetQueues) -> R) -> Option<R> {
        lock(&self.queues).as_mut().map(f)
    }
}

fn lock(queues: &Mutex<Option<NetQueues>>) -> std::sync::MutexGuard<'_, Option<NetQueues>> {
    queues.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;
    use crate::virtio::mmio::{MmioTransport, CONFIG_OFFSET};
    use crate::virtio::net::{NetBackend, NET_HDR_LEN};
    use virtio_bindings::bindings::virtio_config::{
        VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
        VIRTIO_CONFIG_S_FEATURES_OK,
    };
    use virtio_bindings::bindings::virtio_mmio::*;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const MAC: [u8; 6] = [0x52, 0x54, 0x00, 0x12, 0x34, 0x56];

    fn net() -> (VirtioNet, NetHandle) {
        VirtioNet::new(NetConfig {
            mac: MAC,
            mtu: 1500,
        })
        .unwrap()
    }

    #[test]
    fn identity_features_and_config() {
        let (dev, _) = net();
        assert_eq!(dev.device_type(), 1);
        assert_eq!(dev.queue_max_sizes(), &[256, 256]);
        assert_eq!(dev.features(), (1 << 32) | (1 << 16) | (1 << 5) | (1 << 3));
        let mut cfg = [0u8; CONFIG_LEN];
        dev.read_config(0, &mut cfg);
        assert_eq!(cfg[..6], MAC);
        assert_eq!(u16::from_le_bytes([cfg[6], cfg[7]]), 1, "LINK_UP");
        assert_eq!(u16::from_le_bytes([cfg[8], cfg[9]]), 1, "one queue pair");
        assert_eq!(u16::from_le_bytes([cfg[10], cfg[11]]), 1500, "mtu");
        // Reads past the end (speed, duplex...) are zeros; huge offsets too.
        let mut tail = [0xffu8; 4];
        dev.read_config(10, &mut tail);
        assert_eq!(tail, [0xdc, 0x05, 0, 0]);
        dev.read_config(u64::MAX, &mut tail);
        assert_eq!(tail, [0; 4]);
    }

    #[test]
    fn activation_needs_both_queues_ready() {
        let (mut dev, handle) = net();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        let irq: Arc<dyn InterruptSignal> =
            Arc::new(crate::virtio::MmioInterrupt::new(EventFd::new(0).unwrap()));
        let one = vec![Queue::new(256).unwrap()];
        assert!(matches!(
            dev.activate(mem.clone(), one, irq.clone()),
            Err(Error::QueueCount {
                expected: 2,
                got: 1
            })
        ));
        let mut two = vec![Queue::new(256).unwrap(), Queue::new(256).unwrap()];
        two[0].set_ready(true);
        assert!(matches!(
            dev.activate(mem.clone(), two, irq.clone()),
            Err(Error::QueueNotReady { index: 1 })
        ));
        assert!(!handle.is_active());
        let mut ok = vec![Queue::new(256).unwrap(), Queue::new(256).unwrap()];
        ok.iter_mut().for_each(|q| q.set_ready(true));
        dev.activate(mem, ok, irq).unwrap();
        assert!(handle.is_active());
        dev.reset();
        assert!(!handle.is_active());
        assert!(handle.with_queues(|_| ()).is_none());
    }

    #[test]
    fn notifications_reach_the_handle() {
        let (mut dev, handle) = net();
        dev.queue_notify(TX_QUEUE as u16);
        assert_eq!(handle.tx_evt().read().unwrap(), 1);
        assert!(handle.rx_evt().read().is_err(), "RX not notified");
        dev.queue_notify(7); // no such queue: nothing happens
    }

    struct Frames(Vec<Vec<u8>>);
    impl NetBackend for Frames {
        fn send(&mut self, frame: &[u8]) {
            self.0.push(frame.to_vec());
        }
    }

    /// A driver's view: the full handshake through the MMIO registers, then a frame each
    /// way through the handle.
    #[test]
    fn through_the_mmio_transport() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x40000)]).unwrap();
        let rxq = MockSplitQueue::create(&mem, GuestAddress(0x0), 16);
        let txq = MockSplitQueue::create(&mem, GuestAddress(0x1000), 16);
        let (dev, handle) = net();
        let irqfd = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut t =
            MmioTransport::new(Box::new(dev), mem.clone(), irqfd.try_clone().unwrap()).unwrap();
        let wr = |t: &mut MmioTransport, reg: u32, v: u32| t.write(reg.into(), &v.to_le_bytes());
        let rd = |t: &mut MmioTransport, reg: u32| {
            let mut d = [0u8; 4];
            t.read(reg.into(), &mut d);
            u32::from_le_bytes(d)
        };

        assert_eq!(rd(&mut t, VIRTIO_MMIO_DEVICE_ID), 1);
        let mut mac = [0u8; 6];
        for (i, b) in mac.iter_mut().enumerate() {
            let mut one = [0u8];
            t.read(CONFIG_OFFSET + i as u64, &mut one);
            *b = one[0];
        }
        assert_eq!(mac, MAC);

        let mut status = VIRTIO_CONFIG_S_ACKNOWLEDGE;
        wr(&mut t, VIRTIO_MMIO_STATUS, status);
        status |= VIRTIO_CONFIG_S_DRIVER;
        wr(&mut t, VIRTIO_MMIO_STATUS, status);
        for sel in 0..2 {
            wr(&mut t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, sel);
            let f = rd(&mut t, VIRTIO_MMIO_DEVICE_FEATURES);
            wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, sel);
            wr(&mut t, VIRTIO_MMIO_DRIVER_FEATURES, f);
        }
        status |= VIRTIO_CONFIG_S_FEATURES_OK;
        wr(&mut t, VIRTIO_MMIO_STATUS, status);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_STATUS), status);
        // Used rings placed by hand: the mock's overlap its available rings' upper half.
        for (sel, q, used) in [(0u32, &rxq, 0x2000u32), (1, &txq, 0x3000)] {
            wr(&mut t, VIRTIO_MMIO_QUEUE_SEL, sel);
            assert_eq!(rd(&mut t, VIRTIO_MMIO_QUEUE_NUM_MAX), 256);
            wr(&mut t, VIRTIO_MMIO_QUEUE_NUM, 16);
            wr(
                &mut t,
                VIRTIO_MMIO_QUEUE_DESC_LOW,
                q.desc_table_addr().0 as u32,
            );
            wr(&mut t, VIRTIO_MMIO_QUEUE_AVAIL_LOW, q.avail_addr().0 as u32);
            wr(&mut t, VIRTIO_MMIO_QUEUE_USED_LOW, used);
            wr(&mut t, VIRTIO_MMIO_QUEUE_READY, 1);
        }
        status |= VIRTIO_CONFIG_S_DRIVER_OK;
        wr(&mut t, VIRTIO_MMIO_STATUS, status);
        assert!(t.is_activated() && handle.is_active());

        // TX: header + frame in two descriptors; the kick comes through the bus.
        let frame: Vec<u8> = (0..64u8).collect();
        mem.write_slice(&frame, GuestAddress(0x10000 + NET_HDR_LEN as u64))
            .unwrap();
        let d = |a: u64, l: u32, f: u32, n: u16| {
            RawDescriptor::from(SplitDescriptor::new(a, l, f as u16, n))
        };
        txq.add_desc_chains(
            &[
                d(0x10000, NET_HDR_LEN as u32, VRING_DESC_F_NEXT, 1),
                d(0x10000 + NET_HDR_LEN as u64, 64, 0, 0),
            ],
            0,
        )
        .unwrap();
        wr(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, TX_QUEUE as u32);
        assert_eq!(handle.tx_evt().read().unwrap(), 1);
        let mut out = Frames(Vec::new());
        assert_eq!(
            handle
                .with_queues(|q| q.process_tx(&mut out))
                .unwrap()
                .unwrap(),
            1
        );
        assert_eq!(out.0, vec![frame.clone()]);
        assert_eq!(irqfd.read().unwrap(), 1);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 1);
        wr(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, 1);

        // RX: the frame comes back into a posted buffer.
        rxq.add_desc_chains(&[d(0x20000, 2048, VRING_DESC_F_WRITE, 0)], 0)
            .unwrap();
        assert!(handle.with_queues(|q| q.deliver(&frame)).unwrap().unwrap());
        let mut got = vec![0u8; 64];
        mem.read_slice(&mut got, GuestAddress(0x20000 + NET_HDR_LEN as u64))
            .unwrap();
        assert_eq!(got, frame);
        assert_eq!(rd(&mut t, VIRTIO_MMIO_INTERRUPT_STATUS), 1);

        // Reset takes the queues away from the event loop.
        wr(&mut t, VIRTIO_MMIO_STATUS, 0);
        assert!(!handle.is_active());
    }
}
