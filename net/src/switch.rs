//! The L2 switch: which port a frame leaves by.
//!
//! Ports are numbered by the caller. The switch learns each source MAC's port (IEEE 802.1D
//! §7.8 learning, with ageing), sends known unicast to one port, and floods broadcast,
//! multicast and unknown unicast to every port but the one the frame came in on. The gateway
//! is not a port: frames for its MAC, and broadcast and multicast, are also handed to it.
//! The table is bounded; a full table stops learning new addresses (frames then flood),
//! which is what bridges do rather than grow.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::config::MacAddr;

/// Index of a switch port.
pub type PortId = usize;

/// How long a learned address stays without being seen again (Linux bridge default).
pub const AGEING_TIME: Duration = Duration::from_secs(300);

/// Default bound on learned addresses.
pub const MAX_ENTRIES: usize = 4096;

/// Where a frame goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Egress {
    /// To this one port.
    Port(PortId),
    /// To every port except the ingress one.
    Flood,
    /// Nowhere (it is for the gateway only, or its destination is the port it came from).
    None,
}

/// A forwarding decision for one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Which ports.
    pub egress: Egress,
    /// Whether the gateway (the network's own address) gets a copy.
    pub to_gateway: bool,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    port: PortId,
    seen: Instant,
}

/// Counters of the switch.
#[derive(Clone, Copy, Debug, Default)]
pub struct SwitchStats {
    /// Frames whose source address was a group address (never valid; dropped).
    pub bad_source: u64,
    /// Addresses not learned because the table was full.
    pub table_full: u64,
}

/// The MAC learning table and forwarding logic.
#[derive(Debug)]
pub struct Switch {
    gateway: MacAddr,
    table: HashMap<MacAddr, Entry>,
    max_entries: usize,
    ageing: Duration,
    stats: SwitchStats,
}

impl Switch {
    /// A switch whose gateway answers at `gateway`, bounded to `max_entries` addresses.
    pub fn new(gateway: MacAddr, max_entries: usize) -> Self {
        Switch {
            gateway,
            table: HashMap::new(),
            max_entries,
            ageing: AGEING_TIME,
            stats: SwitchStats::default(),
        }
    }

    /// Sets the ageing time (tests use short ones).
    pub fn set_ageing(&mut self, ageing: Duration) {
        self.ageing = ageing;
    }

    /// Decides where a frame with `src` and `dst` that came in on `ingress` goes, learning
    /// `src` on the way. A frame from a group source address is dropped and counted.
    pub fn ingress(
        &mut self,
        ingress: PortId,
        src: MacAddr,
        dst: MacAddr,
        now: Instant,
    ) -> Decision {
        if src.is_multicast() {
            self.stats.bad_source += 1;
            return Decision {
                egress: Egress::None,
                to_gateway: false,
            };
        }
        if src != self.gateway {
            self.learn(src, ingress, now);
        }
        self.route(Some(ingress), dst, now)
    }

    /// Decides where a frame the gateway sends to `dst` goes.
    pub fn from_gateway(&mut self, dst: MacAddr, now: Instant) -> Egress {
        self.route(None, dst, now).egress
    }

    fn route(&mut self, ingress: Option<PortId>, dst: MacAddr, now: Instant) -> Decision {
        if dst == self.gateway {
            return Decision {
                egress: Egress::None,
                to_gateway: ingress.is_some(),
            };
        }
        if dst.is_multicast() {
            return Decision {
                egress: Egress::Flood,
                to_gateway: ingress.is_some(),
            };
        }
        let egress = match self.table.get(&dst) {
            Some(e) if now.saturating_duration_since(e.seen) < self.ageing => {
                if Some(e.port) == ingress {
                    Egress::None
                } else {
                    Egress::Port(e.port)
                }
            }
            _ => Egress::Flood,
        };
        Decision {
            egress,
            to_gateway: false,
        }
    }

    fn learn(&mut self, src: MacAddr, port: PortId, now: Instant) {
        if let Some(e) = self.table.get_mut(&src) {
            e.port = port;
            e.seen = now;
            return;
        }
        if self.table.len() >= self.max_entries {
            self.age(now);
            if self.table.len() >= self.max_entries {
                self.stats.table_full += 1;
                return;
            }
        }
        self.table.insert(src, Entry { port, seen: now });
    }

    /// Forgets addresses not seen within the ageing time.
    pub fn age(&mut self, now: Instant) {
        let ageing = self.ageing;
        self.table
            .retain(|_, e| now.saturating_duration_since(e.seen) < ageing);
    }

    /// Forgets every address learned on `port` (the port went away).
    pub fn remove_port(&mut self, port: PortId) {
        self.table.retain(|_, e| e.port != port);
    }

    /// The port `mac` was last seen on, if still fresh.
    pub fn lookup(&self, mac: MacAddr, now: Instant) -> Option<PortId> {
        self.table
            .get(&mac)
            .filter(|e| now.saturating_duration_since(e.seen) < self.ageing)
            .map(|e| e.port)
    }

    /// Counters.
    pub fn stats(&self) -> SwitchStats {
        self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GW: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
    const A: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0xa]);
    const B: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 0xb]);

    #[test]
    fn learns_floods_and_forwards() {
        let mut s = Switch::new(GW, 16);
        let t = Instant::now();
        // Unknown destination floods; broadcast also reaches the gateway.
        let d = s.ingress(0, A, B, t);
        assert_eq!(
            d,
            Decision {
                egress: Egress::Flood,
                to_gateway: false
            }
        );
        let d = s.ingress(0, A, MacAddr::BROADCAST, t);
        assert_eq!(
            d,
            Decision {
                egress: Egress::Flood,
                to_gateway: true
            }
        );
        // B answers from port 1: A is known on port 0 now.
        let d = s.ingress(1, B, A, t);
        assert_eq!(d.egress, Egress::Port(0));
        assert_eq!(s.ingress(0, A, B, t).egress, Egress::Port(1));
        // To the gateway: nothing else.
        assert_eq!(
            s.ingress(0, A, GW, t),
            Decision {
                egress: Egress::None,
                to_gateway: true
            }
        );
        // Hairpin: destination on the ingress port goes nowhere.
        assert_eq!(s.ingress(1, A, B, t).egress, Egress::None);
        assert_eq!(s.from_gateway(A, t), Egress::Port(1));
    }

    #[test]
    fn entries_age_out_and_ports_are_forgotten() {
        let mut s = Switch::new(GW, 16);
        s.set_ageing(Duration::from_secs(10));
        let t = Instant::now();
        s.ingress(3, A, GW, t);
        assert_eq!(s.lookup(A, t), Some(3));
        assert_eq!(
            s.from_gateway(A, t + Duration::from_secs(11)),
            Egress::Flood
        );
        s.ingress(3, A, GW, t);
        s.remove_port(3);
        assert_eq!(s.lookup(A, t), None);
    }

    #[test]
    fn bad_sources_dropped_and_table_bounded() {
        let mut s = Switch::new(GW, 2);
        let t = Instant::now();
        let d = s.ingress(0, MacAddr::BROADCAST, A, t);
        assert_eq!(
            d,
            Decision {
                egress: Egress::None,
                to_gateway: false
            }
        );
        assert_eq!(s.stats().bad_source, 1);
        for i in 0..10u8 {
            s.ingress(0, MacAddr([2, 0, 0, 0, 0, i]), GW, t);
        }
        assert_eq!(s.stats().table_full, 8);
        assert_eq!(s.table.len(), 2);
    }
}
