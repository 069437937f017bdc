//! One vCPU: its KVM state at power-on (CPUID, MSRs, local APIC, and for the boot CPU the
//! registers the boot protocol asks for) and its thread, which runs `KVM_RUN` and hands port
//! I/O and MMIO exits to the device buses. A vCPU never blocks on the network: devices it
//! touches only signal the event loop (ioeventfd) or raise interrupts (irqfd).

use std::sync::Arc;

use boot::LoadedKernel;
use devices::bus::Bus;
use kvm_bindings::{Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};

use super::exit::{ExitReason, Exits};
use super::Error;

/// Local APIC register offsets and delivery modes used for the LINT pins (Intel SDM vol. 3
/// §10.5.1), wired as on a PC: LINT0 takes the PIC's ExtINT, LINT1 the NMI.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Sets up vCPU `id` of `count`; the boot CPU (0) also gets the entry state of `kernel`.
///
/// # Errors
/// [`Error::Vcpu`] naming the KVM call that failed.
pub fn configure(
    kvm: &Kvm,
    vcpu: &VcpuFd,
    id: u8,
    count: u8,
    kernel: &LoadedKernel,
) -> Result<(), Error> {
    let e = |what: &str, err: kvm_ioctls::Error| Error::Vcpu(format!("vCPU {id}: {what}: {err}"));
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|err| e("KVM_GET_SUPPORTED_CPUID", err))?;
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            1 => {
                // Initial APIC ID and logical processor count; "running on a hypervisor".
                entry.ebx =
                    (entry.ebx & 0x0000_ffff) | (u32::from(id) << 24) | (u32::from(count) << 16);
                entry.ecx |= 1 << 31;
            }
            0xb | 0x1f => entry.edx = u32::from(id),
            _ => {}
        }
    }
    vcpu.set_cpuid2(&cpuid)
        .map_err(|err| e("KVM_SET_CPUID2", err))?;
    let msrs = Msrs::from_entries(&boot::boot_msrs())
        .map_err(|err| Error::Vcpu(format!("vCPU {id}: MSR list: {err:?}")))?;
    vcpu.set_msrs(&msrs).map_err(|err| e("KVM_SET_MSRS", err))?;
    let mut lapic = vcpu.get_lapic().map_err(|err| e("KVM_GET_LAPIC", err))?;
    set_lvt(&mut lapic.regs, APIC_LVT0, APIC_MODE_EXTINT);
    set_lvt(&mut lapic.regs, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic)
        .map_err(|err| e("KVM_SET_LAPIC", err))?;
    if id == 0 {
        vcpu.set_regs(&boot::boot_regs(kernel))
            .map_err(|err| e("KVM_SET_REGS", err))?;
        let mut sregs = vcpu.get_sregs().map_err(|err| e("KVM_GET_SREGS", err))?;
        boot::configure_sregs(kernel, &mut sregs);
        vcpu.set_sregs(&sregs)
            .map_err(|err| e("KVM_SET_SREGS", err))?;
        vcpu.set_fpu(&boot::boot_fpu())
            .map_err(|err| e("KVM_SET_FPU", err))?;
    }
    Ok(())
}

fn set_lvt(regs: &mut [std::os::raw::c_char; 1024], off: usize, mode: u32) {
    let mut b = [0u8; 4];
    for (i, x) in b.iter_mut().enumerate() {
        *x = regs[off + i] as u8;
    }
    let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
    for (i, x) in v.to_le_bytes().iter().enumerate() {
        regs[off + i] = *x as std::os::raw::c_char;
    }
}

/// Runs vCPU `id` until the VM ends; the reason goes to `exits`.
pub fn run(mut vcpu: VcpuFd, id: u8, pio: Arc<Bus>, mmio: Arc<Bus>, exits: Arc<Exits>) {
    loop {
        if exits.ended() {
            return;
        }
        let reason = match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                pio.write(u64::from(port), data);
                continue;
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                pio.read(u64::from(port), data);
                continue;
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                mmio.read(addr, data);
                continue;
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                mmio.write(addr, data);
                continue;
            }
            // With the in-kernel irqchip HLT waits in the kernel; an exit here is spurious.
            Ok(VcpuExit::Hlt) | Ok(VcpuExit::IrqWindowOpen) | Ok(VcpuExit::Intr) => continue,
            Ok(VcpuExit::Shutdown) => ExitReason::TripleFault {
                vcpu: id,
                rip: rip(&vcpu),
            },
            Ok(VcpuExit::InternalError) => {
                let sub = {
                    let run = vcpu.get_kvm_run();
                    // SAFETY: for KVM_EXIT_INTERNAL_ERROR the union holds `internal`.
                    unsafe { run.__bindgen_anon_1.internal.suberror }
                };
                ExitReason::InternalError {
                    vcpu: id,
                    suberror: sub,
                    rip: rip(&vcpu),
                }
            }
            Ok(VcpuExit::FailEntry(reason, _)) => ExitReason::FailEntry { vcpu: id, reason },
            Ok(other) => ExitReason::Unexpected {
                vcpu: id,
                exit: format!("{other:?}"),
            },
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => continue,
            Err(e) => ExitReason::KvmError {
                vcpu: id,
                error: e.to_string(),
            },
        };
        exits.end(reason);
        return;
    }
}

fn rip(vcpu: &VcpuFd) -> u64 {
    vcpu.get_regs().map(|r| r.rip).unwrap_or(0)
}
