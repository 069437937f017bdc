//! COM1: an 8250/16550A UART (vm-superio's `Serial`) on the port I/O bus.
//!
//! Output bytes go to any writer (stdout in the VMM). Input comes from
//! [`SerialDevice::enqueue_raw_bytes`]; each time the guest should look at the UART the
//! device adds 1 to the interrupt eventfd, which the VMM registers as an irqfd for
//! [`COM1_IRQ`].

use std::io::Write;

use vm_superio::serial::{Error as SerialError, NoEvents};
use vm_superio::Serial;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::trigger::EventFdTrigger;
use crate::{Error, Result};

/// First I/O port of COM1.
pub const COM1_PORT: u64 = 0x3f8;
/// ISA IRQ line of COM1.
pub const COM1_IRQ: u32 = 4;
/// I/O ports an 8250 decodes, from its base.
pub const SERIAL_PORT_LEN: u64 = 8;

type Uart = Serial<EventFdTrigger, NoEvents, Box<dyn Write + Send>>;

/// Counters of what the serial device ignored or lost.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SerialStats {
    /// Accesses that were not one byte wide or fell outside the 8 registers.
    pub bad_accesses: u64,
    /// Output bytes the writer refused (the guest is not blocked for them).
    pub lost_output: u64,
    /// Interrupts that could not be raised (the irqfd write failed).
    pub lost_interrupts: u64,
}

/// COM1 as a [`BusDevice`]: insert it at [`COM1_PORT`] with [`SERIAL_PORT_LEN`] ports.
pub struct SerialDevice {
    uart: Uart,
    stats: SerialStats,
}

impl SerialDevice {
    /// A UART that raises its interrupt by writing `interrupt` and sends its output to `out`.
    pub fn new(interrupt: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: Serial::new(EventFdTrigger::new(interrupt), out),
            stats: SerialStats::default(),
        }
    }

    /// Queues `input` for the guest to read, as far as the 64-byte receive FIFO has room,
    /// and raises the receive interrupt. Returns how many bytes were taken (0 when the FIFO
    /// is full: call again once [`Self::fifo_capacity`] is non-zero).
    ///
    /// # Errors
    /// [`Error::Interrupt`] when the interrupt eventfd cannot be written.
    pub fn enqueue_raw_bytes(&mut self, input: &[u8]) -> Result<usize> {
        match self.uart.enqueue_raw_bytes(input) {
            Ok(n) => Ok(n),
            Err(SerialError::FullFifo) => Ok(0),
            Err(SerialError::Trigger(e)) | Err(SerialError::IOError(e)) => Err(Error::Interrupt(e)),
        }
    }

    /// Free bytes in the receive FIFO.
    pub fn fifo_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }

    /// What was ignored or lost so far.
    pub fn stats(&self) -> SerialStats {
        self.stats
    }

    fn register(&mut self, offset: u64, len: usize) -> Option<u8> {
        if len == 1 && offset < SERIAL_PORT_LEN {
            Some(offset as u8)
        } else {
            self.stats.bad_accesses += 1;
            None
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if let Some(reg) = self.register(offset, data.len()) {
            data[0] = self.uart.read(reg);
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(reg) = self.register(offset, data.len()) else {
            return;
        };
        match self.uart.write(reg, data[0]) {
            Ok(()) => {}
            Err(SerialError::IOError(e)) => {
                self.stats.lost_output += 1;
                tracing::trace!("serial output lost: {e}");
            }
            Err(SerialError::Trigger(e)) => {
                self.stats.lost_interrupts += 1;
                tracing::debug!("serial interrupt lost: {e}");
            }
            Err(SerialError::FullFifo) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A writer the test can look into after handing it to the device.
    #[derive(Clone, Default)]
    struct SharedBuf(Arc<Mutex<Vec<u8>>>);

    impl Write for SharedBuf {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn device() -> (SerialDevice, SharedBuf, EventFd) {
        let out = SharedBuf::default();
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let dev = SerialDevice::new(irq.try_clone().unwrap(), Box::new(out.clone()));
        (dev, out, irq)
    }

    const THR: u64 = 0; // transmit holding / receive buffer
    const IER: u64 = 1;
    const LSR: u64 = 5;

    #[test]
    fn writes_reach_the_writer() {
        let (mut dev, out, _irq) = device();
        for b in b"hello\n" {
            dev.write(THR, &[*b]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hello\n");
    }

    #[test]
    fn input_is_readable_and_interrupts() {
        let (mut dev, _out, irq) = device();
        dev.write(IER, &[0x01]); // received-data interrupt on
        assert_eq!(dev.enqueue_raw_bytes(b"ok").unwrap(), 2);
        assert!(irq.read().unwrap() >= 1);
        let mut lsr = [0];
        dev.read(LSR, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut b = [0];
        dev.read(THR, &mut b);
        assert_eq!(b[0], b'o');
        dev.read(THR, &mut b);
        assert_eq!(b[0], b'k');
        dev.read(LSR, &mut lsr);
        assert_eq!(lsr[0] & 1, 0, "FIFO drained");
    }

    #[test]
    fn full_fifo_takes_nothing() {
        let (mut dev, _out, _irq) = device();
        let n = dev.fifo_capacity();
        assert_eq!(dev.enqueue_raw_bytes(&vec![b'x'; n + 10]).unwrap(), n);
        assert_eq!(dev.enqueue_raw_bytes(b"y").unwrap(), 0);
    }

    #[test]
    fn bad_accesses_are_ignored_and_counted() {
        let (mut dev, out, _irq) = device();
        dev.write(THR, b"ab");
        dev.write(9, b"c");
        let mut wide = [0xff; 2];
        dev.read(LSR, &mut wide);
        assert_eq!(wide, [0, 0]);
        assert!(out.0.lock().unwrap().is_empty());
        assert_eq!(dev.stats().bad_accesses, 3);
    }
}
