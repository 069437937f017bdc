//! The microVM: KVM set-up, guest memory, devices on two buses, one thread per vCPU, and
//! the event loop on the calling thread until the VM ends.
//!
//! [`run`] checks the whole configuration and opens every file before it touches KVM, so a
//! bad flag or path fails with nothing started.

pub mod console;
pub mod exit;
pub mod memory;
pub mod net;
pub mod vcpu;

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use boot::{BootSpec, LoadedKernel};
use devices::bus::Bus;
use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::Kvm;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use exit::{ExitReason, Exits};

/// Where the TSS lives: three pages just below the BIOS area, as every x86 VMM puts it.
const TSS_ADDRESS: usize = 0xfffb_d000;
/// COM1.
const COM1_PORT: u64 = 0x3f8;
/// COM1's interrupt line (ISA IRQ 4).
const COM1_IRQ: u32 = 4;
/// Most vCPUs a VM may have (the MP table and our APIC IDs are 8-bit).
pub const MAX_VCPUS: u8 = 32;
/// Least guest memory, MiB: room for the boot structures, a small kernel and initramfs.
pub const MIN_MEMORY_MIB: u64 = 16;

/// Errors that stop a VM before or while it starts.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag's value is out of range; names the flag.
    #[error("{0}")]
    Config(String),
    /// A file could not be opened; names it.
    #[error("{}: {error}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
    /// /dev/kvm or a VM-wide KVM call failed.
    #[error("KVM: {0}")]
    Kvm(String),
    /// Guest memory could not be created.
    #[error("guest memory: {0}")]
    Memory(String),
    /// The kernel, initrd or boot structures could not be put in place.
    #[error("boot: {0}")]
    Boot(#[from] boot::Error),
    /// A vCPU could not be set up.
    #[error("{0}")]
    Vcpu(String),
    /// A device could not be set up.
    #[error("devices: {0}")]
    Devices(String),
}

/// What the VM's network card is attached to.
#[derive(Clone, Debug)]
pub enum NetMode {
    /// No network card.
    None,
    /// The built-in NAT network, running in this process.
    Nat(Box<::net::NetworkConfig>),
    /// A client of the network `skiff net serve --socket PATH` runs.
    Socket(PathBuf),
}

/// Everything `skiff run` needs to start a VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// `--kernel`: ELF vmlinux or bzImage.
    pub kernel: PathBuf,
    /// `--initrd`.
    pub initrd: Option<PathBuf>,
    /// The kernel command line, complete.
    pub cmdline: String,
    /// `--cpus`.
    pub vcpus: u8,
    /// `--memory`, MiB.
    pub memory_mib: u64,
    /// `--net`.
    pub net: NetMode,
    /// `--mac`.
    pub mac: ::net::MacAddr,
}

impl VmConfig {
    /// Checks ranges.
    ///
    /// # Errors
    /// [`Error::Config`] naming the flag.
    pub fn validate(&self) -> Result<(), Error> {
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(Error::Config(format!(
                "--cpus: {} is outside 1..={MAX_VCPUS}",
                self.vcpus
            )));
        }
        if self.memory_mib < MIN_MEMORY_MIB || self.memory_mib > (1 << 20) {
            return Err(Error::Config(format!(
                "--memory: {} MiB is outside {MIN_MEMORY_MIB}..=1048576",
                self.memory_mib
            )));
        }
        Ok(())
    }
}

fn open(p: &PathBuf) -> Result<File, Error> {
    File::open(p).map_err(|error| Error::File {
        path: p.clone(),
        error,
    })
}

/// Boots the VM and runs it until it ends, or until `stop` (a pipe a signal handler writes)
/// becomes readable; returns why it ended.
///
/// # Errors
/// Anything that prevents the VM from starting; once vCPUs run, problems end the VM with an
/// [`ExitReason`] instead.
pub fn run(cfg: &VmConfig, stop: RawFd) -> Result<ExitReason, Error> {
    let started = Instant::now();
    cfg.validate()?;
    let mut kernel_file = open(&cfg.kernel)?;
    let mut initrd_file = cfg.initrd.as_ref().map(open).transpose()?;

    let kvm = Kvm::new().map_err(|e| Error::Kvm(format!("/dev/kvm: {e}")))?;
    let vm = kvm
        .create_vm()
        .map_err(|e| Error::Kvm(format!("KVM_CREATE_VM: {e}")))?;
    vm.set_tss_address(TSS_ADDRESS)
        .map_err(|e| Error::Kvm(format!("KVM_SET_TSS_ADDR: {e}")))?;
    vm.create_irq_chip()
        .map_err(|e| Error::Kvm(format!("KVM_CREATE_IRQCHIP: {e}")))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit)
        .map_err(|e| Error::Kvm(format!("KVM_CREATE_PIT2: {e}")))?;

    let (mem, _memfd) = memory::create(cfg.memory_mib << 20)?;
    for (slot, region) in mem.iter().enumerate() {
        let r = kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // SAFETY: the region stays mapped for the life of the VM (`mem` lives until the
        // process exits), and slots do not overlap.
        unsafe { vm.set_user_memory_region(r) }
            .map_err(|e| Error::Kvm(format!("KVM_SET_USER_MEMORY_REGION: {e}")))?;
    }

    // Open the network before anything runs: its flags are checked, its sockets bound.
    let mut network = match &cfg.net {
        NetMode::Nat(nc) => Some(
            ::net::Network::new((**nc).clone(), &::net::Attachments::default())
                .map_err(|e| Error::Config(e.to_string()))?,
        ),
        _ => None,
    };
    let bridge = match &cfg.net {
        NetMode::Socket(p) => Some(net::SocketBridge::connect(p)?),
        _ => None,
    };
    let mut card = None;
    let mut cmdline = cfg.cmdline.clone();
    if !matches!(cfg.net, NetMode::None) {
        cmdline.push(' ');
        cmdline.push_str(&devices::virtio::mmio::cmdline_entry(
            boot::layout::virtio_mmio_addr(0),
            devices::virtio::mmio::MMIO_SIZE,
            boot::layout::virtio_mmio_irq(0),
        ));
    }

    let kernel: LoadedKernel = boot::load_kernel(&mem, &mut kernel_file)?;
    let initrd = match initrd_file.as_mut() {
        Some(f) => Some(boot::load_initrd(&mem, f, kernel.kernel_end)?),
        None => None,
    };
    boot::configure_memory(
        &mem,
        &kernel,
        &BootSpec {
            cmdline: &cmdline,
            vcpus: cfg.vcpus,
            initrd,
        },
    )?;

    let exits = Arc::new(Exits::new().map_err(|e| Error::Devices(format!("eventfd: {e}")))?);
    let mut pio = Bus::new();
    let evt =
        || EventFd::new(libc::EFD_NONBLOCK).map_err(|e| Error::Devices(format!("eventfd: {e}")));
    let com1_irq = evt()?;
    vm.register_irqfd(&com1_irq, COM1_IRQ)
        .map_err(|e| Error::Kvm(format!("KVM_IRQFD for COM1: {e}")))?;
    // The console: output to stdout, watched for the guest command's exit status; stdin in.
    let guest_status = console::GuestStatus::default();
    let serial = Arc::new(Mutex::new(devices::serial::SerialDevice::new(
        com1_irq,
        Box::new(console::ConsoleWriter::new(
            std::io::stdout(),
            guest_status.clone(),
        )),
    )));
    pio.insert(serial.clone(), COM1_PORT, 8)
        .map_err(|e| Error::Devices(format!("COM1: {e}")))?;
    console::spawn_input(&serial, exits.clone())
        .map_err(|e| Error::Devices(format!("console input thread: {e}")))?;
    let reset_evt = evt()?;
    let i8042 = devices::i8042::I8042::new(
        reset_evt
            .try_clone()
            .map_err(|e| Error::Devices(format!("i8042: {e}")))?,
    );
    pio.insert(
        Arc::new(Mutex::new(i8042)),
        devices::i8042::I8042_PORT,
        devices::i8042::I8042_PORT_LEN,
    )
    .map_err(|e| Error::Devices(format!("i8042: {e}")))?;
    let pio = Arc::new(pio);
    let mut mmio = Bus::new();
    if !matches!(cfg.net, NetMode::None) {
        let base = boot::layout::virtio_mmio_addr(0);
        let irq = boot::layout::virtio_mmio_irq(0);
        let (dev, handle) = devices::virtio::net::VirtioNet::new(devices::virtio::net::NetConfig {
            mac: cfg.mac.octets(),
            mtu: match &cfg.net {
                NetMode::Nat(nc) => nc.mtu,
                _ => 1500,
            },
        })
        .map_err(|e| Error::Devices(format!("virtio-net: {e}")))?;
        // Queue notifications become eventfd writes in KVM: the vCPU does not exit.
        for (q, evt) in [(0u32, handle.rx_evt()), (1u32, handle.tx_evt())] {
            vm.register_ioevent(
                evt,
                &kvm_ioctls::IoEventAddress::Mmio(
                    base + devices::virtio::mmio::QUEUE_NOTIFY_OFFSET,
                ),
                q,
            )
            .map_err(|e| Error::Kvm(format!("KVM_IOEVENTFD for virtio-net queue {q}: {e}")))?;
        }
        let irqfd = evt()?;
        vm.register_irqfd(&irqfd, irq)
            .map_err(|e| Error::Kvm(format!("KVM_IRQFD for virtio-net: {e}")))?;
        let transport =
            devices::virtio::mmio::MmioTransport::new(Box::new(dev), mem.clone(), irqfd)
                .map_err(|e| Error::Devices(format!("virtio-mmio: {e}")))?;
        mmio.insert(
            Arc::new(Mutex::new(transport)),
            base,
            devices::virtio::mmio::MMIO_SIZE,
        )
        .map_err(|e| Error::Devices(format!("virtio-mmio: {e}")))?;
        card = Some(net::VirtioNetPort::new(handle));
    }
    if let (Some(network), Some(c)) = (network.as_mut(), card.take()) {
        network.attach(Box::new(c));
    }
    let mmio = Arc::new(mmio);

    let mut threads = Vec::new();
    for id in 0..cfg.vcpus {
        let vcpu = vm
            .create_vcpu(u64::from(id))
            .map_err(|e| Error::Vcpu(format!("vCPU {id}: KVM_CREATE_VCPU: {e}")))?;
        vcpu::configure(&kvm, &vcpu, id, cfg.vcpus, &kernel)?;
        let (pio, mmio, exits) = (pio.clone(), mmio.clone(), exits.clone());
        let t = std::thread::Builder::new()
            .name(format!("vcpu{id}"))
            .spawn(move || vcpu::run(vcpu, id, pio, mmio, exits))
            .map_err(|e| Error::Vcpu(format!("vCPU {id}: thread: {e}")))?;
        threads.push(t);
    }
    tracing::debug!("VM started in {:?}", started.elapsed());

    // The i8042's reset and the stop signals end the VM like a vCPU exit does.
    spawn_waiter(exits.clone(), reset_evt, stop)?;
    match (network, bridge, card) {
        // The event loop: the NAT and the virtio-net queues, until the VM ends.
        (Some(n), _, _) => n
            .run(exits.evt.as_raw_fd())
            .map_err(|e| Error::Devices(format!("network: {e}")))?,
        (None, Some(b), Some(c)) => b.run(c, &exits),
        _ => wait_for_end(&exits),
    }
    Ok(guest_status.exit_reason(exits.reason().unwrap_or(ExitReason::Stopped)))
}

/// A thread that turns the i8042 reset and `stop` (a signal pipe) into the VM's end.
fn spawn_waiter(exits: Arc<Exits>, reset_evt: EventFd, stop: RawFd) -> Result<(), Error> {
    std::thread::Builder::new()
        .name("vm-waiter".into())
        .spawn(move || {
            let mut fds = [
                libc::pollfd {
                    fd: reset_evt.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                },
                libc::pollfd {
                    fd: stop,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            while !exits.ended() {
                // SAFETY: polls two live descriptors (`stop` outlives the VM).
                unsafe { libc::poll(fds.as_mut_ptr(), 2, 1000) };
                if fds[0].revents & libc::POLLIN != 0 {
                    exits.end(ExitReason::Reset);
                } else if fds[1].revents & libc::POLLIN != 0 {
                    exits.end(ExitReason::Stopped);
                }
            }
        })
        .map(|_| ())
        .map_err(|e| Error::Devices(format!("waiter thread: {e}")))
}

/// Waits until the VM ends (no network: nothing else to run).
fn wait_for_end(exits: &Exits) {
    let mut fds = [libc::pollfd {
        fd: exits.evt.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    while !exits.ended() {
        // SAFETY: polls one live descriptor.
        unsafe { libc::poll(fds.as_mut_ptr(), 1, 1000) };
    }
}
