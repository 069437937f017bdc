//! The boot vCPU's register state at the kernel's entry: general registers, segment and
//! control registers, FPU, and the MSRs Linux expects a firmware to have set.
//!
//! [`Protocol::Linux64`] follows boot.rst's "64-bit boot protocol": long mode, paging on with
//! the identity map of [`crate::paging`], `__BOOT_CS`/`__BOOT_DS` loaded, interrupts off,
//! `%rsi` = zero page. [`Protocol::Pvh`] follows xen `docs/misc/pvh.pandoc`: 32-bit protected
//! mode, paging off, flat segments, `%ebx` = `hvm_start_info`.

use kvm_bindings::{kvm_dtable, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_sregs};

use crate::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PML4_START, PVH_INFO_START, ZERO_PAGE_START,
};
use crate::paging::{gdt, segment, CODE_SELECTOR, DATA_SELECTOR, TSS_SELECTOR};
use crate::{LoadedKernel, Protocol};

/// RFLAGS bit 1 is reserved and always 1; everything else clear (IF=0: interrupts off).
const RFLAGS_RESERVED: u64 = 1 << 1;

// Control-register and EFER bits (Intel SDM vol. 3, 2.5 and 2.2.1).
const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// x87 control word after FNINIT: all exceptions masked, 64-bit precision, round to nearest.
const FPU_FCW: u16 = 0x37f;
/// MXCSR at reset: all SIMD exceptions masked, round to nearest.
const MXCSR_DEFAULT: u32 = 0x1f80;

// MSR indices (Intel SDM vol. 4, table 2-2).
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// IA32_MISC_ENABLE bit 0: fast-string operations (rep movs/stos) enabled, as firmware leaves it.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// IA32_MTRR_DEF_TYPE: MTRRs enabled (bit 11), default memory type write-back (6), so that
/// a guest which honours MTRRs does not run all of RAM uncached.
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 6;

/// General registers for the boot vCPU at entry.
///
/// - [`Protocol::Linux64`]: `rip` = entry, `rsp` = `rbp` = [`BOOT_STACK_POINTER`],
///   `rsi` = [`ZERO_PAGE_START`] (boot_params), `rflags` = 0x2.
/// - [`Protocol::Pvh`]: `rip` = entry, `rbx` = [`PVH_INFO_START`] (hvm_start_info),
///   `rflags` = 0x2.
///
/// Everything else is zero.
pub fn boot_regs(kernel: &LoadedKernel) -> kvm_regs {
    let mut regs = kvm_regs {
        rip: kernel.entry.0,
        rflags: RFLAGS_RESERVED,
        ..Default::default()
    };
    match kernel.protocol {
        Protocol::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        Protocol::Pvh => regs.rbx = PVH_INFO_START,
    }
    regs
}

/// Sets the segment, descriptor-table and control registers of `sregs` (as read with
/// KVM_GET_SREGS, so that fields we do not own, such as `apic_base`, keep KVM's values).
///
/// - Both: GDTR = [`BOOT_GDT_START`] (4 entries), IDTR = [`BOOT_IDT_START`] (one null gate),
///   CS = 0x10, DS/ES/FS/GS/SS = 0x18, TR = 0x08, as in the GDT that
///   [`crate::configure_memory`] writes.
/// - [`Protocol::Linux64`]: CS 64-bit (L=1); CR0 = PE|ET|PG, CR3 = [`PML4_START`],
///   CR4 = PAE, EFER = LME|LMA.
/// - [`Protocol::Pvh`]: 32-bit flat segments; CR0 = PE|ET, paging off (CR3 = CR4 = 0), EFER = 0.
///
/// CR0 is set outright rather than or-ed into KVM's reset value, which has CD and NW set
/// (caches off) and would leave the guest running uncached until it rewrote CR0.
pub fn configure_sregs(kernel: &LoadedKernel, sregs: &mut kvm_sregs) {
    let table = gdt(kernel.protocol);
    sregs.gdt = kvm_dtable {
        base: BOOT_GDT_START,
        limit: (std::mem::size_of_val(&table) - 1) as u16,
        ..Default::default()
    };
    sregs.idt = kvm_dtable {
        base: BOOT_IDT_START,
        limit: (std::mem::size_of::<u64>() - 1) as u16,
        ..Default::default()
    };
    sregs.cs = segment(&table, CODE_SELECTOR);
    let data = segment(&table, DATA_SELECTOR);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = segment(&table, TSS_SELECTOR);
    match kernel.protocol {
        Protocol::Linux64 => {
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 = CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
        Protocol::Pvh => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
}

/// FPU state at entry: the x87 control word FNINIT leaves (0x37f) and the reset MXCSR (0x1f80).
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: FPU_FCW,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    }
}

/// MSRs for the boot vCPU (the VMM may set them on every vCPU): the SYSENTER and SYSCALL
/// MSRs and KERNEL_GS_BASE zero (the kernel programs them), the TSC at 0, fast strings on in
/// IA32_MISC_ENABLE, and MTRRs on with write-back as the default type.
pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    let msr = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    vec![
        msr(MSR_IA32_SYSENTER_CS, 0),
        msr(MSR_IA32_SYSENTER_ESP, 0),
        msr(MSR_IA32_SYSENTER_EIP, 0),
        msr(MSR_STAR, 0),
        msr(MSR_CSTAR, 0),
        msr(MSR_KERNEL_GS_BASE, 0),
        msr(MSR_SYSCALL_MASK, 0),
        msr(MSR_LSTAR, 0),
        msr(MSR_IA32_TSC, 0),
        msr(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        msr(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    fn kernel(protocol: Protocol) -> LoadedKernel {
        LoadedKernel {
            entry: GuestAddress(0x100_0200),
            protocol,
            kernel_end: GuestAddress(0x200_0000),
            setup_header: None,
        }
    }

    #[test]
    fn linux64_registers() {
        let r = boot_regs(&kernel(Protocol::Linux64));
        assert_eq!(
            (r.rip, r.rsp, r.rbp, r.rsi, r.rflags),
            (0x100_0200, 0x8ff0, 0x8ff0, 0x7000, 2)
        );
        assert_eq!(r.rbx, 0);
    }

    #[test]
    fn pvh_registers() {
        let r = boot_regs(&kernel(Protocol::Pvh));
        assert_eq!((r.rip, r.rbx, r.rflags, r.rsi), (0x100_0200, 0x6000, 2, 0));
    }

    #[test]
    fn linux64_sregs_are_long_mode() {
        let mut s = kvm_sregs {
            cr0: 0x6000_0010,
            apic_base: 0xfee0_0900,
            ..Default::default()
        };
        configure_sregs(&kernel(Protocol::Linux64), &mut s);
        assert_eq!(
            (s.gdt.base, s.gdt.limit, s.idt.base, s.idt.limit),
            (0x500, 31, 0x520, 7)
        );
        assert_eq!(
            (s.cs.selector, s.cs.l, s.cs.db, s.cs.present),
            (0x10, 1, 0, 1)
        );
        for d in [s.ds, s.es, s.fs, s.gs, s.ss] {
            assert_eq!((d.selector, d.type_, d.present, d.db), (0x18, 3, 1, 1));
        }
        assert_eq!((s.tr.selector, s.tr.type_), (0x08, 0xb));
        assert_eq!(s.cr0, 0x8000_0011, "PG | ET | PE, caches on");
        assert_eq!((s.cr3, s.cr4, s.efer), (0x9000, 0x20, 0x500));
        assert_eq!(s.apic_base, 0xfee0_0900, "left as KVM set it");
    }

    #[test]
    fn pvh_sregs_are_flat_protected_mode() {
        let mut s = kvm_sregs {
            cr0: 0x6000_0010,
            efer: 0x500,
            cr4: 0x20,
            ..Default::default()
        };
        configure_sregs(&kernel(Protocol::Pvh), &mut s);
        assert_eq!(
            (s.cs.selector, s.cs.l, s.cs.db, s.cs.limit),
            (0x10, 0, 1, 0xffff_ffff)
        );
        assert_eq!((s.ss.db, s.ds.limit, s.ds.base), (1, 0xffff_ffff, 0));
        assert_eq!((s.tr.limit, s.tr.type_), (0x67, 0xb));
        assert_eq!((s.cr0, s.cr3, s.cr4, s.efer), (0x11, 0, 0, 0));
    }

    #[test]
    fn fpu_and_msrs() {
        let f = boot_fpu();
        assert_eq!((f.fcw, f.mxcsr), (0x37f, 0x1f80));
        let msrs = boot_msrs();
        let get = |i| msrs.iter().find(|m| m.index == i).map(|m| m.data);
        assert_eq!(get(MSR_IA32_MISC_ENABLE), Some(1));
        assert_eq!(get(MSR_IA32_TSC), Some(0));
        assert_eq!(get(MSR_LSTAR), Some(0));
        assert_eq!(get(MSR_MTRR_DEF_TYPE), Some(0x806));
        let mut idx: Vec<_> = msrs.iter().map(|m| m.index).collect();
        idx.sort_unstable();
        idx.dedup();
        assert_eq!(idx.len(), msrs.len(), "no MSR twice");
    }
}
