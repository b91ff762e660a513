//! The one error type of the library.

use std::path::PathBuf;

use crate::identity::NodeId;

/// Everything that can go wrong in Butter, as one enum.
///
/// Network input never panics: a bad frame, a wrong identity or a stuck peer each
/// ends up as one of these variants.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No path to the peer worked (no address known, every address failed, or the
    /// connection was lost).
    #[error("peer unreachable: {0}")]
    Unreachable(String),
    /// The peer did not prove the identity we expected (wrong key, forged or
    /// non-ed25519 certificate).
    #[error("identity mismatch: {0}")]
    IdentityMismatch(String),
    /// The peer has no handler for this route.
    #[error("no such route: {0:?}")]
    NoSuchRoute(String),
    /// A frame or body exceeded a configured limit.
    #[error("too large: {what} exceeds the limit of {limit} bytes")]
    TooLarge {
        /// What was too large (header, body, reply).
        what: &'static str,
        /// The limit in force.
        limit: u64,
    },
    /// Bytes that do not decode as the protocol says.
    #[error("malformed: {0}")]
    Malformed(String),
    /// The remote handler answered with an error (or panicked).
    #[error("remote handler error: {0}")]
    Remote(String),
    /// A handler rejected a request; sent to the caller as a remote error.
    #[error("{0}")]
    Handler(String),
    /// The operation did not complete in time.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// A reserved route name (`butter/...`) was registered by the application.
    #[error("route name {0:?} is reserved for the platform")]
    ReservedRoute(String),
    /// The node's key file could not be read, parsed or written.
    #[error("identity key file {path}: {reason}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Invalid configuration or argument (address syntax, TLS setup).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The peer (or this node) is at capacity for now: a budget shared with
    /// other callers is in use. Retrying later may succeed.
    #[error("busy: {0}")]
    Busy(&'static str),
    /// The node has been shut down.
    #[error("node is shut down")]
    Shutdown,
    /// A DHT lookup ended without what it looked for (no such node, record
    /// or provider among the closest nodes that answered).
    #[error("not found: {0}")]
    NotFound(String),
    /// The store cannot take this: it would exceed the byte budget.
    #[error("storage full: {needed} bytes needed, {free} free")]
    StorageFull {
        /// Bytes the write needed.
        needed: u64,
        /// Bytes left in the budget.
        free: u64,
    },
    /// The persistent store failed (disk, corruption).
    #[error("storage: {0}")]
    Storage(String),
    /// A record or provider record was refused (bad signature, stale
    /// sequence number, over a bound).
    #[error("refused: {0}")]
    Refused(String),
    /// A message was refused (by a mailbox holder, its recipient, or the
    /// sender's own bounds).
    #[error("message refused: {0}")]
    Message(#[from] crate::messaging::MessageError),
    /// The node's socket could not be bound to its address.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A value given to the library (an address, an id, a key) does not
    /// parse or is out of range.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// Local I/O error (file, socket).
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// An application-level error for a handler to return; the caller receives it
    /// as [`Error::Remote`] with this message.
    ///
    /// ```
    /// let e = butter::Error::handler("no such user");
    /// assert_eq!(e.to_string(), "no such user");
    /// ```
    pub fn handler(msg: impl std::fmt::Display) -> Self {
        Error::Handler(msg.to_string())
    }

    /// What went wrong without the kind's prefix ("peer unreachable: ..."),
    /// for an error quoted inside another of the same kind.
    pub fn detail(&self) -> String {
        match self {
            Error::Unreachable(s)
            | Error::IdentityMismatch(s)
            | Error::Malformed(s)
            | Error::Remote(s)
            | Error::Handler(s)
            | Error::NotFound(s)
            | Error::Refused(s)
            | Error::InvalidArgument(s)
            | Error::Config(s) => s.clone(),
            other => other.to_string(),
        }
    }

    pub(crate) fn mismatch(expected: &NodeId, reason: impl std::fmt::Display) -> Self {
        Error::IdentityMismatch(format!("expected {}: {reason}", expected.short()))
    }
}

/// Result alias of the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
