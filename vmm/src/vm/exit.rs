//! Why a VM ended, and the one place every thread reports it: the first reason wins, the
//! event loop wakes on an eventfd, and the process exits with the reason's status.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;

/// The end of a VM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest reset the machine (i8042 CPU reset: Linux's `reboot=k`).
    Reset,
    /// The guest's command (skiff.cmd) asked for this exit status.
    Status(i32),
    /// A triple fault (KVM_EXIT_SHUTDOWN).
    TripleFault {
        /// vCPU index.
        vcpu: u8,
        /// Instruction pointer at the fault.
        rip: u64,
    },
    /// KVM_EXIT_INTERNAL_ERROR: suberror 1 is an instruction KVM could not emulate.
    InternalError {
        /// vCPU index.
        vcpu: u8,
        /// `kvm_run.internal.suberror`.
        suberror: u32,
        /// Instruction pointer.
        rip: u64,
    },
    /// KVM_EXIT_FAIL_ENTRY.
    FailEntry {
        /// vCPU index.
        vcpu: u8,
        /// Hardware entry failure reason.
        reason: u64,
    },
    /// An exit skiff does not handle.
    Unexpected {
        /// vCPU index.
        vcpu: u8,
        /// What KVM reported.
        exit: String,
    },
    /// KVM_RUN itself failed.
    KvmError {
        /// vCPU index.
        vcpu: u8,
        /// The error.
        error: String,
    },
    /// SIGINT or SIGTERM, or Ctrl-A x on the console.
    Stopped,
}

impl ExitReason {
    /// The process exit status: 0 for a guest reset or a stop the user asked for.
    pub fn status(&self) -> i32 {
        match self {
            ExitReason::Reset | ExitReason::Stopped => 0,
            ExitReason::Status(s) => *s,
            _ => 1,
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Reset => write!(f, "the guest reset the machine"),
            ExitReason::Status(s) => write!(f, "the guest's command exited with {s}"),
            ExitReason::TripleFault { vcpu, rip } => {
                write!(f, "vCPU {vcpu}: triple fault at rip {rip:#x}")
            }
            ExitReason::InternalError {
                vcpu,
                suberror: 1,
                rip,
            } => write!(
                f,
                "vCPU {vcpu}: KVM could not emulate the instruction at rip {rip:#x} \
                 (KVM_EXIT_INTERNAL_ERROR, emulation failure)"
            ),
            ExitReason::InternalError {
                vcpu,
                suberror,
                rip,
            } => write!(
                f,
                "vCPU {vcpu}: KVM internal error, suberror {suberror}, at rip {rip:#x}"
            ),
            ExitReason::FailEntry { vcpu, reason } => {
                write!(
                    f,
                    "vCPU {vcpu}: VM entry failed, hardware reason {reason:#x}"
                )
            }
            ExitReason::Unexpected { vcpu, exit } => {
                write!(f, "vCPU {vcpu}: unhandled exit {exit}")
            }
            ExitReason::KvmError { vcpu, error } => write!(f, "vCPU {vcpu}: KVM_RUN: {error}"),
            ExitReason::Stopped => write!(f, "stopped"),
        }
    }
}

/// The shared record of how the VM ended.
pub struct Exits {
    ended: AtomicBool,
    reason: Mutex<Option<ExitReason>>,
    /// Written once when the VM ends; the event loop polls it.
    pub evt: EventFd,
}

impl Exits {
    /// A fresh record.
    ///
    /// # Errors
    /// The eventfd cannot be created.
    pub fn new() -> std::io::Result<Self> {
        Ok(Exits {
            ended: AtomicBool::new(false),
            reason: Mutex::new(None),
            evt: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// Records `r` if nothing ended the VM before, and wakes the event loop.
    pub fn end(&self, r: ExitReason) {
        if let Ok(mut g) = self.reason.lock() {
            if g.is_none() {
                *g = Some(r);
            }
        }
        self.ended.store(true, Ordering::SeqCst);
        let _ = self.evt.write(1);
    }

    /// Whether the VM has ended.
    pub fn ended(&self) -> bool {
        self.ended.load(Ordering::SeqCst)
    }

    /// The reason, once ended.
    pub fn reason(&self) -> Option<ExitReason> {
        self.reason.lock().ok().and_then(|g| g.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins_and_maps_to_a_status() {
        let e = Exits::new().unwrap();
        assert!(!e.ended());
        e.end(ExitReason::Reset);
        e.end(ExitReason::TripleFault { vcpu: 0, rip: 1 });
        assert_eq!(e.reason(), Some(ExitReason::Reset));
        assert_eq!(e.reason().unwrap().status(), 0);
        assert_eq!(ExitReason::TripleFault { vcpu: 0, rip: 1 }.status(), 1);
        let msg = ExitReason::InternalError {
            vcpu: 0,
            suberror: 1,
            rip: 0x10,
        }
        .to_string();
        assert!(msg.contains("emulate"), "{msg}");
    }
}
