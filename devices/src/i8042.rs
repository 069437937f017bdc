//! A minimal i8042 keyboard controller: its one job is the CPU reset command.
//!
//! Linux's `reboot=k` path (and the fallback of every other path) writes [`CMD_RESET_CPU`]
//! to the command port 0x64; the device then adds 1 to the reset eventfd the VMM waits on,
//! and the VMM ends the VM. Every read returns [`STATUS_IDLE`]: output buffer empty, input
//! buffer empty, so the guest's keyboard probe and `kb_wait()` never spin on us (the probe
//! times out and finds no keyboard).

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// First I/O port of the controller (the data port).
pub const I8042_PORT: u64 = 0x60;
/// Ports decoded from [`I8042_PORT`]: 0x60 (data) through 0x64 (status/command).
pub const I8042_PORT_LEN: u64 = 5;
/// Offset of the command (write) / status (read) port from [`I8042_PORT`]: port 0x64.
pub const COMMAND_OFFSET: u64 = 4;
/// Controller command "pulse the CPU reset line".
pub const CMD_RESET_CPU: u8 = 0xfe;
/// What every read returns: no data waiting, ready for a command.
pub const STATUS_IDLE: u8 = 0;

/// The i8042 as a [`BusDevice`]: insert it at [`I8042_PORT`] with [`I8042_PORT_LEN`] ports.
pub struct I8042 {
    reset_evt: EventFd,
    failed_resets: u64,
}

impl I8042 {
    /// A controller that writes 1 to `reset_evt` when the guest resets the CPU.
    pub fn new(reset_evt: EventFd) -> Self {
        Self {
            reset_evt,
            failed_resets: 0,
        }
    }

    /// Resets requested by the guest that could not be signalled (eventfd write failed).
    pub fn failed_resets(&self) -> u64 {
        self.failed_resets
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(STATUS_IDLE);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data == [CMD_RESET_CPU] {
            if let Err(e) = self.reset_evt.write(1) {
                self.failed_resets += 1;
                tracing::warn!("i8042: cannot signal the guest's reset: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device() -> (I8042, EventFd) {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (I8042::new(evt.try_clone().unwrap()), evt)
    }

    #[test]
    fn reset_command_writes_the_eventfd() {
        let (mut dev, evt) = device();
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(evt.read().unwrap(), 1);
    }

    #[test]
    fn other_writes_do_not_reset() {
        let (mut dev, evt) = device();
        dev.write(0, &[CMD_RESET_CPU]); // data port
        dev.write(COMMAND_OFFSET, &[0xaa]); // self-test
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU, 0]); // wrong width
        assert!(evt.read().is_err(), "no reset signalled");
    }

    #[test]
    fn status_reads_idle() {
        let (mut dev, _evt) = device();
        let mut status = [0xff];
        dev.read(COMMAND_OFFSET, &mut status);
        assert_eq!(status, [STATUS_IDLE]);
    }
}
