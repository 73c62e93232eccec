#![deny(missing_docs)]
//! The QEMU runtime of Tugboat.
//!
//! QEMU is executed directly (no libvirt), daemonized with a pidfile under
//! `DATA/ships/<uid>/`, and driven over QMP with the `qapi` crate. Images are OCI artifacts
//! pulled with `oci-client` into a content-addressed node cache; a Ship's root disk is a qcow2
//! overlay on the cached base image. Cloud-init NoCloud data goes on a `cidata` ISO written here.

pub mod accel;
pub mod cloudinit;
pub mod cmdline;
pub mod image;
pub mod iso9660;
pub mod mac;
pub mod process;
pub mod qmp;
pub mod runtime;

pub use runtime::{QemuConfig, QemuRuntime};
