//! The error type of the image store, its registry client and its archives.

use std::path::PathBuf;

use super::auth::AuthError;
use super::imagefile::ImagefileError;
use super::reference::ReferenceError;

/// Everything that can go wrong building, storing, pushing, pulling, saving or loading an image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The Imagefile is malformed (the message carries the line number).
    #[error(transparent)]
    Imagefile(#[from] ImagefileError),
    /// An image reference did not parse.
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    /// The registry credentials (docker config) could not be read.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// No such image in the store (or in the registry).
    #[error("image {0} not found")]
    NotFound(String),
    /// The registry refused or failed a request.
    #[error("registry {registry}: {message}")]
    Registry {
        /// Registry host (or mirror) that answered.
        registry: String,
        /// HTTP status, when the registry answered with one.
        status: Option<u16>,
        /// What the registry (or the connection) said.
        message: String,
    },
    /// Content did not hash to the digest that names it.
    #[error("digest mismatch for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// Which blob (a layer title, "manifest", a path in an archive).
        what: String,
        /// The digest the content was announced with.
        expected: String,
        /// The digest of the bytes actually received.
        actual: String,
    },
    /// Content had another size than its descriptor announced.
    #[error("size mismatch for {what}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// Which blob.
        what: String,
        /// The announced size.
        expected: u64,
        /// The size received.
        actual: u64,
    },
    /// A manifest, config or layer is not a valid Tugboat image.
    #[error("invalid image {reference}: {message}")]
    InvalidImage {
        /// The image (reference or digest).
        reference: String,
        /// What is wrong with it.
        message: String,
    },
    /// An image archive (OCI layout tar) is malformed.
    #[error("invalid image archive {path}: {message}")]
    Archive {
        /// The archive.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A disk file in a build context is unusable (wrong format, backing file, …).
    #[error("disk {path}: {message}")]
    Disk {
        /// The disk file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A file system operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("reading", "creating", …).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The store's `index.json` is corrupt.
    #[error("image index {path}: {message}")]
    Index {
        /// The index file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A background task died (panicked or was cancelled).
    #[error("internal error: {0}")]
    Internal(String),
}

/// Result alias of this module.
pub type Result<T> = std::result::Result<T, ImageError>;

/// Builds a mapper from an `io::Error` to [`ImageError::Io`] naming the operation and path.
pub(crate) fn io_err(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.into();
    move |source| ImageError::Io { op, path, source }
}

impl From<tokio::task::JoinError> for ImageError {
    fn from(e: tokio::task::JoinError) -> Self {
        ImageError::Internal(format!("background task failed: {e}"))
    }
}
