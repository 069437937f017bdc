//! [`EventFdTrigger`]: vm-superio's `Trigger` over an eventfd.

use std::io;

use vm_superio::Trigger;
use vmm_sys_util::eventfd::EventFd;

/// Signals an event by adding 1 to an eventfd. The VMM registers the eventfd with KVM as an
/// irqfd (the serial port's IRQ) or waits on it (the i8042's reset).
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `evt`.
    pub fn new(evt: EventFd) -> Self {
        Self(evt)
    }

    /// The wrapped eventfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.0
    }
}

impl Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}
