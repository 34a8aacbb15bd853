//! The query core shared by the C API and the Rust API: each parsed entry's
//! descriptor checked with the kernel. Core only, no allocation, so that the C
//! library can be built without std.

use crate::parse::{Entry, ErrorKind, ParseError, Source};
use crate::sys::{self, Errno, SocketInfo};

/// Why an entry of a source could not be reported. Borrowed and allocation-free,
/// for the C API; the Rust API turns it into a `listeners::Error`.
#[derive(Debug)]
pub(crate) enum Failure<'a> {
    /// The text is wrong.
    Parse(ParseError),
    /// The descriptor is not an open socket (the C API reports only the kind).
    #[cfg_attr(not(feature = "std"), allow(dead_code))]
    Socket { entry: Entry<'a>, error: Errno },
}

impl Failure<'_> {
    pub(crate) fn kind(&self) -> ErrorKind {
        match self {
            Failure::Parse(e) => e.kind,
            Failure::Socket { .. } => ErrorKind::BadFd,
        }
    }
}

/// An entry whose descriptor the kernel confirmed to be a socket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Checked<'a> {
    pub entry: Entry<'a>,
    pub info: SocketInfo,
}

/// Checks one entry's descriptor.
pub(crate) fn check(entry: Entry<'_>) -> Result<Checked<'_>, Failure<'_>> {
    match sys::socket_info(entry.fd) {
        Ok(info) => Ok(Checked { entry, info }),
        Err(error) => Err(Failure::Socket { entry, error }),
    }
}

/// Every entry of `source`, each checked to be an open socket. The whole text is
/// parsed before any descriptor is looked at, so a malformed variable is always
/// reported as such, whatever state the descriptors are in. Callers stop at the
/// first error.
pub(crate) fn checked<'a>(
    source: &Source<'a>,
) -> Result<impl Iterator<Item = Result<Checked<'a>, Failure<'a>>>, Failure<'a>> {
    if source.may_be_malformed() {
        if let Some(Err(e)) = source.entries().find(Result::is_err) {
            return Err(Failure::Parse(e));
        }
    }
    Ok(source
        .entries()
        .map(|entry| check(entry.map_err(Failure::Parse)?)))
}
