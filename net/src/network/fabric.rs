//! The L2 half of a network: the switch, its ports with their receive buffers, and the
//! capture file. Frames the gateway and the NAT send enter here ([`FrameSink`]).

use std::io;
use std::os::fd::RawFd;
use std::time::Instant;

use crate::config::MacAddr;
use crate::nat::{token, FrameSink, Registrar, Slab, TokenKind};
use crate::pcap::Capture;
use crate::port::{Port, ReadStatus, RxBuf};
use crate::switch::{Egress, PortId, Switch, MAX_ENTRIES};

const EPOLLIN: u32 = libc::EPOLLIN as u32;
const EPOLLOUT: u32 = libc::EPOLLOUT as u32;

/// Switch, ports and capture.
pub struct Fabric {
    pub(super) switch: Switch,
    ports: Slab<Port>,
    rx: Vec<Option<RxBuf>>,
    interest: Vec<u32>,
    dirty: Vec<PortId>,
    local_dirty: Vec<PortId>,
    capture: Option<Capture>,
    /// The time of the event being handled.
    pub now: Instant,
    /// Frames too short to be Ethernet.
    pub runts: u64,
}

impl Fabric {
    /// A fabric whose gateway answers at `gw_mac`.
    pub fn new(gw_mac: MacAddr, capture: Option<Capture>) -> Self {
        Fabric {
            switch: Switch::new(gw_mac, MAX_ENTRIES),
            ports: Slab::default(),
            rx: Vec::new(),
            interest: Vec::new(),
            dirty: Vec::new(),
            local_dirty: Vec::new(),
            capture,
            now: Instant::now(),
            runts: 0,
        }
    }

    /// Attaches a port; returns its id.
    pub fn add_port(&mut self, p: Port) -> PortId {
        let id = self.ports.insert(p);
        if self.rx.len() <= id {
            self.rx.resize_with(id + 1, || None);
            self.interest.resize(id + 1, 0);
        }
        self.rx[id] = Some(RxBuf::default());
        self.interest[id] = EPOLLIN;
        id
    }

    /// Detaches a port, forgetting the addresses learned on it.
    pub fn remove_port(&mut self, id: PortId) -> Option<Port> {
        self.switch.remove_port(id);
        if let Some(r) = self.rx.get_mut(id) {
            *r = None;
        }
        self.ports.remove(id)
    }

    /// Ids and descriptors of all ports.
    pub fn port_fds(&self) -> Vec<(PortId, RawFd)> {
        self.ports
            .indices()
            .into_iter()
            .filter_map(|i| self.ports.get(i).map(|p| (i, p.fd())))
            .collect()
    }

    /// The descriptor of port `id`.
    pub fn port_fd(&self, id: PortId) -> Option<RawFd> {
        self.ports.get(id).map(|p| p.fd())
    }

    /// Number of stream clients attached.
    pub fn stream_clients(&self) -> usize {
        self.ports
            .indices()
            .into_iter()
            .filter(|&i| matches!(self.ports.get(i), Some(Port::Stream(_))))
            .count()
    }

    /// Takes port `id`'s receive buffer while its frames are switched.
    pub fn take_rx(&mut self, id: PortId) -> Option<RxBuf> {
        self.rx.get_mut(id)?.take()
    }

    /// Gives the receive buffer back (dropped if the port went away meanwhile).
    pub fn put_rx(&mut self, id: PortId, rx: RxBuf) {
        if self.ports.get(id).is_some() {
            if let Some(r) = self.rx.get_mut(id) {
                *r = Some(rx);
            }
        }
    }

    /// Reads port `id` into `rx`; false when the port must be removed.
    pub fn read_port(&mut self, id: PortId, rx: &mut RxBuf) -> bool {
        match self.ports.get_mut(id).map(|p| p.read(rx)) {
            Some(Ok(ReadStatus::Open)) => true,
            Some(Ok(ReadStatus::Closed)) | None => false,
            Some(Err(e)) => {
                tracing::debug!("port {id}: read: {e}");
                false
            }
        }
    }

    /// Writes port `id`'s queued output.
    pub fn flush_port(&mut self, id: PortId) -> io::Result<()> {
        if let Some(p) = self.ports.get_mut(id) {
            p.flush()?;
            self.dirty.push(id);
        }
        Ok(())
    }

    /// Records a frame in the capture, if one is being written.
    pub fn record(&mut self, frame: &[u8]) {
        if let Some(c) = &mut self.capture {
            c.record(frame);
        }
    }

    /// Sends a frame that came in on `from` out of `egress`.
    pub fn forward(&mut self, from: Option<PortId>, egress: Egress, frame: &[u8]) {
        match egress {
            Egress::None => {}
            Egress::Port(q) => self.send_on(q, frame),
            Egress::Flood => {
                for q in 0..self.ports.slots() {
                    if Some(q) != from && self.ports.get(q).is_some() {
                        self.send_on(q, frame);
                    }
                }
            }
        }
    }

    fn send_on(&mut self, q: PortId, frame: &[u8]) {
        if let Some(p) = self.ports.get_mut(q) {
            p.send(frame);
            if matches!(p, Port::Local(_)) && !self.local_dirty.contains(&q) {
                self.local_dirty.push(q);
            }
            if p.wants_write() && self.interest.get(q).is_some_and(|i| i & EPOLLOUT == 0) {
                self.dirty.push(q);
            }
        }
    }

    /// Ends the batch of frames sent to local peers: one guest interrupt each.
    pub fn flush_local(&mut self) {
        for q in std::mem::take(&mut self.local_dirty) {
            if let Some(p) = self.ports.get_mut(q) {
                let _ = p.flush();
            }
        }
    }

    /// Polls congested ports for writability, and stops once they drained.
    pub fn update_interest(&mut self, reg: &mut dyn Registrar) {
        for q in std::mem::take(&mut self.dirty) {
            let Some(p) = self.ports.get(q) else { continue };
            let want = if p.wants_write() {
                EPOLLIN | EPOLLOUT
            } else {
                EPOLLIN
            };
            if let Some(cur) = self.interest.get_mut(q) {
                if *cur != want {
                    *cur = want;
                    reg.modify(p.fd(), token(TokenKind::Port, q), want);
                }
            }
        }
    }

    /// Periodic work: address ageing, capture flush.
    pub fn housekeeping(&mut self, now: Instant) {
        self.switch.age(now);
        if let Some(c) = &mut self.capture {
            c.flush();
        }
    }

    /// Best-effort flush of queued port output and the capture at exit.
    pub fn flush_all(&mut self) {
        for q in self.ports.indices() {
            if let Some(p) = self.ports.get_mut(q) {
                let _ = p.flush();
            }
        }
        if let Some(c) = &mut self.capture {
            c.flush();
        }
    }
}

impl FrameSink for Fabric {
    fn send_frame(&mut self, frame: &[u8]) {
        if frame.len() < 14 {
            return;
        }
        self.record(frame);
        let mut dst = [0u8; 6];
        dst.copy_from_slice(&frame[0..6]);
        let egress = self.switch.from_gateway(MacAddr(dst), self.now);
        self.forward(None, egress, frame);
    }
}
