//! The Intel MultiProcessor Specification 1.4 tables, which tell the guest how many CPUs it
//! has (one processor entry each, APIC IDs 0..n) and how the ISA interrupts reach the IOAPIC.
//!
//! Layout at [`MPTABLE_START`] (the EBDA, which Linux scans): the 16-byte floating pointer
//! (chapter 4.1), then the configuration table (4.2): a 44-byte header and its entries:
//! processors, one ISA bus, the IOAPIC, one I/O interrupt assignment per IOAPIC pin (ISA IRQ n
//! -> pin n, matching KVM's default GSI routing), and the two local interrupts of the PC's
//! "virtual wire" mode (ExtINT on LINT0, NMI on LINT1).

use vm_memory::{ByteValued, GuestMemoryMmap};

use crate::layout::{IOAPIC_START, LAPIC_START, MPTABLE_START};
use crate::params;
use crate::{Error, Result};

/// MP spec revision 1.4.
const MP_SPEC_REV: u8 = 4;
/// APIC IDs 0..=254 hold the CPUs and the IOAPIC (which takes the ID after the last CPU);
/// 0xff is the broadcast ID.
pub(crate) const MAX_VCPUS: u8 = 254;
/// Pins on the IOAPIC that KVM emulates (82093AA: 24).
const IOAPIC_PINS: u8 = 24;
/// Local APIC version of an integrated (xAPIC) APIC, as KVM reports.
const APIC_VERSION: u8 = 0x14;
/// Processor signature (CPUID.1:EAX): family 6; Linux only logs it.
const CPU_SIGNATURE: u32 = 0x600;
/// CPUID.1:EDX feature flags: FPU (bit 0) and APIC (bit 9).
const CPU_FEATURES: u32 = 1 | (1 << 9);

// Entry types (table 4-3), processor flags (4-5), interrupt types (4-8).
const MP_PROCESSOR: u8 = 0;
const MP_BUS: u8 = 1;
const MP_IOAPIC: u8 = 2;
const MP_INTSRC: u8 = 3;
const MP_LINTSRC: u8 = 4;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const MPC_APIC_USABLE: u8 = 1;
const MP_INT: u8 = 0;
const MP_NMI: u8 = 1;
const MP_EXTINT: u8 = 3;
/// Polarity and trigger "conform to the bus" (ISA: active high, edge).
const MP_IRQFLAG_DEFAULT: u16 = 0;
/// Destination "all local APICs".
const ALL_APICS: u8 = 0xff;

/// MP floating pointer structure (4.1), 16 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpfIntel {
    signature: [u8; 4],
    physptr: u32,
    /// In 16-byte units.
    length: u8,
    specification: u8,
    checksum: u8,
    /// 0: a configuration table is present (no default configuration).
    feature1: u8,
    /// Bit 7 clear: no IMCR, virtual wire mode.
    feature2: u8,
    feature3: [u8; 3],
}

/// MP configuration table header (4.2), 44 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcTable {
    signature: [u8; 4],
    /// Bytes, header and base entries.
    length: u16,
    spec: u8,
    checksum: u8,
    oem: [u8; 8],
    productid: [u8; 12],
    oemptr: u32,
    oemsize: u16,
    /// Number of entries.
    oemcount: u16,
    lapic: u32,
    /// Extended table length (u16), its checksum, and a reserved byte: all zero.
    reserved: u32,
}

/// Processor entry (4.3.1), 20 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcCpu {
    type_: u8,
    apicid: u8,
    apicver: u8,
    cpuflag: u8,
    cpufeature: u32,
    featureflag: u32,
    reserved: [u32; 2],
}

/// Bus entry (4.3.2), 8 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcBus {
    type_: u8,
    busid: u8,
    bustype: [u8; 6],
}

/// I/O APIC entry (4.3.3), 8 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcIoapic {
    type_: u8,
    apicid: u8,
    apicver: u8,
    flags: u8,
    apicaddr: u32,
}

/// I/O interrupt (4.3.4) and local interrupt (4.3.5) assignment entries, 8 bytes.
#[repr(C, packed)]
#[derive(Clone, Copy, Default)]
struct MpcIntsrc {
    type_: u8,
    irqtype: u8,
    irqflag: u16,
    srcbus: u8,
    srcbusirq: u8,
    dstapic: u8,
    /// IOAPIC pin (4.3.4) or LINTn (4.3.5).
    dstirq: u8,
}

// SAFETY: plain-old-data, repr(C, packed) so without padding: every byte pattern is a valid
// value, and the layout is the one the MP spec defines.
unsafe impl ByteValued for MpfIntel {}
// SAFETY: as above.
unsafe impl ByteValued for MpcTable {}
// SAFETY: as above.
unsafe impl ByteValued for MpcCpu {}
// SAFETY: as above.
unsafe impl ByteValued for MpcBus {}
// SAFETY: as above.
unsafe impl ByteValued for MpcIoapic {}
// SAFETY: as above.
unsafe impl ByteValued for MpcIntsrc {}

/// The byte that makes `bytes` (which hold 0 in the checksum field) sum to 0 mod 256.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b)))
}

/// The whole MP table for `vcpus` CPUs: floating pointer, then configuration table.
fn build(vcpus: u8) -> Result<Vec<u8>> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(Error::MpTable(format!(
            "{vcpus} vCPUs requested; the MP table describes 1 to {MAX_VCPUS}"
        )));
    }
    let ioapic_id = vcpus;
    let mut entries = Vec::new();
    let mut count = 0u16;
    let mut push = |entry: &[u8]| {
        entries.extend_from_slice(entry);
        count += 1;
    };
    for cpu in 0..vcpus {
        let bsp = if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        push(
            MpcCpu {
                type_: MP_PROCESSOR,
                apicid: cpu,
                apicver: APIC_VERSION,
                cpuflag: CPU_ENABLED | bsp,
                cpufeature: CPU_SIGNATURE,
                featureflag: CPU_FEATURES,
                reserved: [0; 2],
            }
            .as_slice(),
        );
    }
    push(
        MpcBus {
            type_: MP_BUS,
            busid: 0,
            bustype: *b"ISA   ",
        }
        .as_slice(),
    );
    push(
        MpcIoapic {
            type_: MP_IOAPIC,
            apicid: ioapic_id,
            apicver: APIC_VERSION,
            flags: MPC_APIC_USABLE,
            apicaddr: IOAPIC_START as u32,
        }
        .as_slice(),
    );
    for pin in 0..IOAPIC_PINS {
        push(
            MpcIntsrc {
                type_: MP_INTSRC,
                irqtype: MP_INT,
                irqflag: MP_IRQFLAG_DEFAULT,
                srcbus: 0,
                srcbusirq: pin,
                dstapic: ioapic_id,
                dstirq: pin,
            }
            .as_slice(),
        );
    }
    // Virtual wire: the 8259's output on the BSP's LINT0, NMI on every CPU's LINT1.
    let lint = |irqtype, dstapic, dstirq| MpcIntsrc {
        type_: MP_LINTSRC,
        irqtype,
        irqflag: MP_IRQFLAG_DEFAULT,
        srcbus: 0,
        srcbusirq: 0,
        dstapic,
        dstirq,
    };
    push(lint(MP_EXTINT, 0, 0).as_slice());
    push(lint(MP_NMI, ALL_APICS, 1).as_slice());

    let header_len = std::mem::size_of::<MpcTable>();
    let mut header = MpcTable {
        signature: *b"PCMP",
        length: (header_len + entries.len()) as u16,
        spec: MP_SPEC_REV,
        oem: *b"SKIFF   ",
        productid: *b"MICROVM     ",
        oemcount: count,
        lapic: LAPIC_START as u32,
        ..Default::default()
    };
    header.checksum = checksum(&[header.as_slice(), &entries].concat());

    let mut fp = MpfIntel {
        signature: *b"_MP_",
        physptr: (MPTABLE_START + std::mem::size_of::<MpfIntel>() as u64) as u32,
        length: 1,
        specification: MP_SPEC_REV,
        ..Default::default()
    };
    fp.checksum = checksum(fp.as_slice());
    Ok([fp.as_slice(), header.as_slice(), &entries].concat())
}

/// Writes the MP table for `vcpus` CPUs at [`MPTABLE_START`].
///
/// # Errors
/// [`Error::MpTable`] when `vcpus` is 0 or above [`MAX_VCPUS`], [`Error::GuestMemory`] when
/// the EBDA is not in guest memory.
pub(crate) fn write(mem: &GuestMemoryMmap, vcpus: u8) -> Result<()> {
    let table = build(vcpus)?;
    params::write(mem, "MP table", MPTABLE_START, &table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::mem;
    use vm_memory::{Bytes, GuestAddress};

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    /// Reads back the table written for `vcpus` and returns the entries, each as bytes.
    fn written(vcpus: u8) -> Vec<Vec<u8>> {
        let m = mem(16 << 20);
        write(&m, vcpus).unwrap();
        let mut fp = [0u8; 16];
        m.read_slice(&mut fp, GuestAddress(MPTABLE_START)).unwrap();
        assert_eq!(&fp[..4], b"_MP_");
        assert_eq!(sum(&fp), 0, "floating pointer checksum");
        assert_eq!(
            (fp[8], fp[9], fp[11]),
            (1, 4, 0),
            "length, spec rev, feature1"
        );
        let table_at = u32::from_le_bytes(fp[4..8].try_into().unwrap()) as u64;
        assert_eq!(table_at, MPTABLE_START + 16);

        let mut hdr = [0u8; 44];
        m.read_slice(&mut hdr, GuestAddress(table_at)).unwrap();
        assert_eq!(&hdr[..4], b"PCMP");
        let len = u16::from_le_bytes([hdr[4], hdr[5]]) as usize;
        let mut table = vec![0u8; len];
        m.read_slice(&mut table, GuestAddress(table_at)).unwrap();
        assert_eq!(sum(&table), 0, "configuration table checksum");
        assert_eq!(hdr[6], 4);
        assert_eq!(
            u32::from_le_bytes(hdr[36..40].try_into().unwrap()),
            0xfee0_0000
        );
        let count = u16::from_le_bytes([hdr[34], hdr[35]]) as usize;

        let mut entries = Vec::new();
        let mut at = 44;
        while at < len {
            let size = if table[at] == MP_PROCESSOR { 20 } else { 8 };
            entries.push(table[at..at + size].to_vec());
            at += size;
        }
        assert_eq!(at, len);
        assert_eq!(entries.len(), count);
        entries
    }

    #[test]
    fn one_processor_entry_per_vcpu_bsp_first() {
        let entries = written(4);
        let cpus: Vec<_> = entries.iter().filter(|e| e[0] == MP_PROCESSOR).collect();
        assert_eq!(cpus.len(), 4);
        for (i, cpu) in cpus.iter().enumerate() {
            assert_eq!(cpu[1], i as u8, "APIC ID");
            let flags = if i == 0 {
                CPU_ENABLED | CPU_BOOTPROCESSOR
            } else {
                CPU_ENABLED
            };
            assert_eq!(cpu[3], flags);
        }
    }

    #[test]
    fn bus_ioapic_and_interrupts() {
        let entries = written(2);
        let of = |t| entries.iter().filter(move |e| e[0] == t);
        let bus: Vec<_> = of(MP_BUS).collect();
        assert_eq!(bus.len(), 1);
        assert_eq!(&bus[0][2..8], b"ISA   ");
        let ioapic: Vec<_> = of(MP_IOAPIC).collect();
        assert_eq!(ioapic.len(), 1);
        assert_eq!(
            (ioapic[0][1], ioapic[0][3]),
            (2, MPC_APIC_USABLE),
            "ID after the CPUs"
        );
        assert_eq!(
            u32::from_le_bytes(ioapic[0][4..8].try_into().unwrap()),
            0xfec0_0000
        );
        let ints: Vec<_> = of(MP_INTSRC).collect();
        assert_eq!(ints.len(), 24);
        for (pin, e) in ints.iter().enumerate() {
            // type, INT, flags, bus 0, ISA IRQ = pin, to the IOAPIC (ID 2), pin.
            assert_eq!(**e, [MP_INTSRC, MP_INT, 0, 0, 0, pin as u8, 2, pin as u8]);
        }
        let lints: Vec<_> = of(MP_LINTSRC).collect();
        assert_eq!(lints.len(), 2);
        assert_eq!((lints[0][1], lints[0][7]), (MP_EXTINT, 0));
        assert_eq!((lints[1][1], lints[1][6], lints[1][7]), (MP_NMI, 0xff, 1));
    }

    #[test]
    fn the_largest_table_fits_below_1_mib() {
        let entries = written(MAX_VCPUS);
        assert_eq!(entries.iter().filter(|e| e[0] == MP_PROCESSOR).count(), 254);
        assert!(
            MPTABLE_START + build(MAX_VCPUS).unwrap().len() as u64 <= crate::layout::HIMEM_START
        );
    }

    #[test]
    fn vcpu_count_out_of_range_is_an_error() {
        assert!(matches!(build(0), Err(Error::MpTable(_))));
        assert!(matches!(build(255), Err(Error::MpTable(_))));
    }

    #[test]
    fn struct_sizes_match_the_spec() {
        use std::mem::size_of;
        assert_eq!(size_of::<MpfIntel>(), 16);
        assert_eq!(size_of::<MpcTable>(), 44);
        assert_eq!(size_of::<MpcCpu>(), 20);
        assert_eq!(size_of::<MpcBus>(), 8);
        assert_eq!(size_of::<MpcIoapic>(), 8);
        assert_eq!(size_of::<MpcIntsrc>(), 8);
    }
}
