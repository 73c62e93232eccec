//! VM images as OCI artifacts: Imagefile builds, the node's image store, registries, archives.
//!
//! An image is an OCI image manifest (`artifactType application/vnd.tugboat.image.v1`) whose
//! config is [`ImageMetadata`] and whose layers are a gzip'd base disk and/or a kernel and an
//! initrd (see [`artifact`]). Any OCI registry stores it; `skopeo`, `oras` and `crane` can copy
//! and inspect it.
//!
//! [`ImageStore`] is the content-addressed cache a node (`DATA/images`) or a user
//! (`~/.local/share/tugboat/images`) keeps: [`ImageStore::build`] from an [`Imagefile`],
//! [`ImageStore::push`], [`ImageStore::pull`] / [`ImageStore::ensure`],
//! [`ImageStore::save`] / [`ImageStore::load`] for air-gapped hosts, and
//! [`ImageStore::gc`]. [`LocalImage`] gives the runtime the paths it boots from.

pub mod artifact;
pub mod auth;
pub mod blobio;
mod build;
pub mod disk;
pub mod error;
pub mod imagefile;
pub mod index;
pub mod layout;
pub mod progress;
pub mod reference;
pub mod registry;
pub mod store;

#[cfg(test)]
mod tests;

pub use artifact::{BootMode, ImageMetadata};
pub use auth::{Credentials, DockerConfig};
pub use disk::{Arch, DiskFormat};
pub use error::ImageError;
pub use imagefile::{Imagefile, ImagefileError};
pub use progress::{Progress, Task};
pub use reference::ImageRef;
pub use registry::{PullOptions, PushOptions};
pub use store::{GcReport, ImageStore, ImageSummary, LocalImage, Removed};
