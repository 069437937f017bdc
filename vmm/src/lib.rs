//! skiff's virtual machine monitor: KVM set-up, vCPU threads and the devices' event loop.
//! The `skiff` binary (src/main.rs) is its command line.

pub mod vhost_user;
pub mod vm;
