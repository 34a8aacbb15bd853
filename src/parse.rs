//! The one parser of `SERVER_STARTER_PORT` and of the systemd variables, shared by
//! the C API (`ffi`) and the Rust API (`listeners`).
//!
//! Everything here works on borrowed bytes: no allocation, no system call, no
//! panic (indexing and arithmetic that could panic are denied below), so the C
//! API can call it from any context.
//!
//! `SERVER_STARTER_PORT` grammar, as start_server writes it and as this parser
//! accepts it:
//!
//! * entries are separated by `;`;
//! * in each entry the descriptor is the decimal after the *last* `=` (a unix
//!   socket path may itself contain `=`), the name is everything before it;
//! * whitespace (space, `\t`, `\n`, `\v`, `\f`, `\r`) around names and numbers is
//!   ignored;
//! * an empty (or all-whitespace) value is zero listeners, and so are trailing
//!   empty entries (`80=3;`), like Perl's `split /;/` which drops them; an empty
//!   entry followed by a non-empty one (`;80=3`, `80=3;;81=4`) is malformed, as it
//!   is for Server::Starter;
//! * an entry without `=`, with an empty name, with a descriptor that is not a
//!   decimal in `0..=INT_MAX`, or with a name containing NUL is malformed; a name
//!   longer than `NAME_MAX - 1` bytes is too long.

#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::arithmetic_side_effects
    )
)]

use core::net::{Ipv4Addr, Ipv6Addr};

/// Size of the C struct's name buffer, terminating NUL included. It holds any
/// unix socket path (`sun_path` is 108 bytes) and any DNS host name (253) with
/// brackets and a port. Must equal `ffi::SERVER_STARTER_NAME_MAX` (a test checks).
pub const NAME_MAX: usize = 272;

/// The first descriptor passed by systemd socket activation (`SD_LISTEN_FDS_START`).
pub const SD_LISTEN_FDS_START: i32 = 3;

/// The name systemd gives descriptors it has no name for.
pub const SD_UNKNOWN_NAME: &[u8] = b"unknown";

/// The longest name systemd accepts in `LISTEN_FDNAMES` (its `FDNAME_MAX`).
pub const FDNAME_MAX: usize = 255;

/// The byte standing for `b` when a `SERVER_STARTER_PORT` name becomes a
/// `LISTEN_FDNAMES` name (as `start_server --listen-fds` makes them): systemd
/// allows printable ASCII but `:`, its field separator; anything else is `_`.
pub fn fdname_byte(b: u8) -> u8 {
    if b == b':' || !(0x20..0x7f).contains(&b) {
        b'_'
    } else {
        b
    }
}

/// Whether `fdname` is what `name` becomes as a `LISTEN_FDNAMES` name: each
/// byte through [`fdname_byte`], the whole cut at [`FDNAME_MAX`] bytes
/// (`127.0.0.1:8080` is `127.0.0.1_8080`, `[::1]:8443` is `[__1]_8443`).
pub fn is_fdname_of(fdname: &[u8], name: &[u8]) -> bool {
    let name = name.get(..FDNAME_MAX).unwrap_or(name);
    fdname.len() == name.len() && fdname.iter().zip(name).all(|(&f, &n)| f == fdname_byte(n))
}

/// What went wrong, mapped one to one onto the C error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// Neither `SERVER_STARTER_PORT` nor systemd socket activation for this process.
    NotSet,
    /// An entry (or a systemd variable) does not follow the grammar.
    Malformed,
    /// The descriptor is not open, or is not a socket.
    BadFd,
    /// No listener has the name asked for.
    NotFound,
    /// A NULL pointer where one was required (C API only).
    Null,
    /// A name longer than `NAME_MAX - 1` bytes.
    NameTooLong,
    /// The socket is not of the kind asked for (Rust API conversions only).
    WrongType,
    /// The descriptor was already turned into an owned socket (Rust API only).
    AlreadyTaken,
    /// A bug in this library (a caught panic).
    Internal,
}

impl ErrorKind {
    /// The message, NUL-terminated for `server_starter_strerror`.
    pub fn message_with_nul(self) -> &'static [u8] {
        match self {
            ErrorKind::NotSet => b"neither SERVER_STARTER_PORT nor systemd socket activation (LISTEN_PID/LISTEN_FDS) is set for this process\0",
            ErrorKind::Malformed => b"malformed SERVER_STARTER_PORT entry or systemd variable\0",
            ErrorKind::BadFd => b"descriptor is not open or is not a socket\0",
            ErrorKind::NotFound => b"no listener has that name\0",
            ErrorKind::Null => b"NULL argument\0",
            ErrorKind::NameTooLong => b"name longer than SERVER_STARTER_NAME_MAX - 1 bytes\0",
            ErrorKind::WrongType => b"socket is not of the requested type\0",
            ErrorKind::AlreadyTaken => b"descriptor already taken as an owned socket\0",
            ErrorKind::Internal => b"internal error in libserver_starter (a bug)\0",
        }
    }

    /// The message, for humans.
    pub fn message(self) -> &'static str {
        let bytes = self.message_with_nul();
        let bytes = bytes.strip_suffix(b"\0").unwrap_or(bytes);
        core::str::from_utf8(bytes).unwrap_or("libserver_starter error")
    }
}

/// A parse failure with enough context to point at the culprit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParseError {
    /// Which rule was broken.
    pub kind: ErrorKind,
    /// Which variable was being parsed.
    pub variable: &'static str,
    /// Zero-based index of the offending entry (0 for single-valued variables).
    pub entry: usize,
    /// Byte offset of the offending entry in the variable's value.
    pub offset: usize,
    /// Human-readable reason.
    pub reason: &'static str,
}

/// One `name=fd` entry, borrowed from the variable's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The name, trimmed of surrounding whitespace, never empty.
    pub name: &'a [u8],
    /// The descriptor number.
    pub fd: i32,
    /// The address family the name's text implies (`AF_UNSPEC` when it doesn't).
    pub family: i32,
    /// The port the name's text gives, 0 when it gives none.
    pub port: u16,
}

/// C `isspace` in the "C" locale.
pub fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// `s` without leading and trailing whitespace.
pub fn trim(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !is_space(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !is_space(*last) {
            break;
        }
        s = rest;
    }
    s
}

/// A non-empty run of ASCII digits whose value is at most `max`.
pub fn parse_decimal(s: &[u8], max: u64) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    let mut value: u64 = 0;
    for &b in s {
        let digit = u64::from(char::from(b).to_digit(10)?);
        value = value.checked_mul(10)?.checked_add(digit)?;
        if value > max {
            return None;
        }
    }
    Some(value)
}

fn parse_port(s: &[u8]) -> Option<u16> {
    parse_decimal(s, u64::from(u16::MAX)).and_then(|p| u16::try_from(p).ok())
}

/// The family and port a name's text implies: `/path` is unix, `[v6]:port` is
/// IPv6, `a.b.c.d:port` is IPv4; a bare port or `host:port` gives a port but no
/// family. These are hints for the pure parser only: the queries report what the
/// kernel says.
pub fn classify(name: &[u8]) -> (i32, u16) {
    if name.first() == Some(&b'/') {
        return (libc::AF_UNIX, 0);
    }
    if let Some(port) = parse_port(name) {
        return (libc::AF_UNSPEC, port);
    }
    let mut halves = name.rsplitn(2, |&b| b == b':');
    let (port_text, host) = match (halves.next(), halves.next()) {
        (Some(port_text), Some(host)) => (port_text, host),
        _ => return (libc::AF_UNSPEC, 0),
    };
    let port = match parse_port(port_text) {
        Some(port) => port,
        None => return (libc::AF_UNSPEC, 0),
    };
    let family = if let [b'[', inner @ .., b']'] = host {
        // A scope (`%eth0`) is legal in the text but not for Ipv6Addr's parser.
        let address = inner.split(|&b| b == b'%').next().unwrap_or(inner);
        match core::str::from_utf8(address)
            .ok()
            .map(str::parse::<Ipv6Addr>)
        {
            Some(Ok(_)) => libc::AF_INET6,
            _ => libc::AF_UNSPEC,
        }
    } else {
        match core::str::from_utf8(host).ok().map(str::parse::<Ipv4Addr>) {
            Some(Ok(_)) => libc::AF_INET,
            _ => libc::AF_UNSPEC,
        }
    };
    (family, port)
}

/// Checks a name against the rules shared by both sources.
fn check_name(name: &[u8]) -> Result<(), (ErrorKind, &'static str)> {
    if name.is_empty() {
        return Err((ErrorKind::Malformed, "empty name"));
    }
    if name.len() >= NAME_MAX {
        return Err((
            ErrorKind::NameTooLong,
            "name longer than SERVER_STARTER_NAME_MAX - 1 bytes",
        ));
    }
    if name.contains(&0) {
        return Err((ErrorKind::Malformed, "NUL byte in name"));
    }
    Ok(())
}

/// Parses one trimmed, non-empty entry.
fn parse_entry(text: &[u8]) -> Result<Entry<'_>, (ErrorKind, &'static str)> {
    let mut halves = text.rsplitn(2, |&b| b == b'=');
    let (fd_text, name) = match (halves.next(), halves.next()) {
        (Some(fd_text), Some(name)) => (trim(fd_text), trim(name)),
        _ => return Err((ErrorKind::Malformed, "no '=' between name and descriptor")),
    };
    check_name(name)?;
    let fd = parse_decimal(fd_text, i32::MAX as u64)
        .and_then(|fd| i32::try_from(fd).ok())
        .ok_or((
            ErrorKind::Malformed,
            "descriptor is not a decimal number in 0..=INT_MAX",
        ))?;
    let (family, port) = classify(name);
    Ok(Entry {
        name,
        fd,
        family,
        port,
    })
}

/// Iterator over the entries of a `SERVER_STARTER_PORT` value. It stops after the
/// first error.
#[derive(Debug, Clone)]
pub struct Entries<'a> {
    rest: &'a [u8],
    done: bool,
    index: usize,
    offset: usize,
}

impl<'a> Entries<'a> {
    /// Parses `value`, which must not include the C string's terminating NUL.
    pub fn new(value: &'a [u8]) -> Self {
        Entries {
            rest: value,
            done: false,
            index: 0,
            offset: 0,
        }
    }

    fn error(&mut self, (kind, reason): (ErrorKind, &'static str)) -> ParseError {
        self.done = true;
        ParseError {
            kind,
            variable: "SERVER_STARTER_PORT",
            entry: self.index,
            offset: self.offset,
            reason,
        }
    }
}

impl<'a> Iterator for Entries<'a> {
    type Item = Result<Entry<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let mut pieces = self.rest.splitn(2, |&b| b == b';');
        let piece = pieces.next().unwrap_or_default();
        let after = pieces.next();
        let text = trim(piece);
        if text.is_empty() {
            let only_trailing = after.is_none_or(|a| a.iter().all(|&b| b == b';' || is_space(b)));
            if only_trailing {
                self.done = true;
                return None;
            }
            return Some(Err(self.error((
                ErrorKind::Malformed,
                "empty entry before a non-empty one",
            ))));
        }
        let item = match parse_entry(text) {
            Ok(entry) => entry,
            Err(e) => return Some(Err(self.error(e))),
        };
        match after {
            Some(after) => {
                self.rest = after;
                // `piece` plus its `;`: cannot overflow, both lie within one slice.
                self.offset = self.offset.saturating_add(piece.len()).saturating_add(1);
            }
            None => self.done = true,
        }
        self.index = self.index.saturating_add(1);
        Some(Ok(item))
    }
}

/// The systemd socket-activation variables, as `sd_listen_fds_with_names` reads them.
#[derive(Debug, Clone, Copy)]
pub struct Systemd<'a> {
    /// `LISTEN_FDS`: the descriptors are `3 .. 3 + count`.
    pub count: i32,
    /// `LISTEN_FDNAMES`, colon-separated, when set.
    pub names: Option<&'a [u8]>,
}

/// Where the listeners come from.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// `SERVER_STARTER_PORT` is set (even to an empty value).
    Starter(&'a [u8]),
    /// `SERVER_STARTER_PORT` is not set and systemd activated this very process.
    Systemd(Systemd<'a>),
}

/// The raw values of the variables that matter, `None` when unset.
#[derive(Debug, Clone, Copy, Default)]
pub struct Vars<'a> {
    /// `SERVER_STARTER_PORT`
    pub starter_port: Option<&'a [u8]>,
    /// `LISTEN_PID`
    pub listen_pid: Option<&'a [u8]>,
    /// `LISTEN_FDS`
    pub listen_fds: Option<&'a [u8]>,
    /// `LISTEN_FDNAMES`
    pub listen_fdnames: Option<&'a [u8]>,
}

fn var_error(variable: &'static str, kind: ErrorKind, reason: &'static str) -> ParseError {
    ParseError {
        kind,
        variable,
        entry: 0,
        offset: 0,
        reason,
    }
}

/// Decides where the listeners come from, for the process whose id is `pid`.
///
/// Follows `sd_listen_fds`: `LISTEN_PID` unset or naming another process means
/// "not for us" (not set); a malformed `LISTEN_PID` or `LISTEN_FDS`, or a
/// `LISTEN_FDS` out of `1..=INT_MAX-3`, is malformed; `LISTEN_FDNAMES` with a
/// different number of fields than `LISTEN_FDS` is malformed (systemd's
/// `-EINVAL`).
pub fn resolve<'a>(vars: &Vars<'a>, pid: i32) -> Result<Source<'a>, ParseError> {
    if let Some(value) = vars.starter_port {
        return Ok(Source::Starter(value));
    }
    let not_set = || {
        var_error(
            "SERVER_STARTER_PORT",
            ErrorKind::NotSet,
            "neither SERVER_STARTER_PORT nor LISTEN_PID/LISTEN_FDS for this process is set",
        )
    };
    let listen_pid = match vars.listen_pid {
        Some(text) => parse_decimal(trim(text), i32::MAX as u64)
            .filter(|&p| p > 0)
            .ok_or_else(|| var_error("LISTEN_PID", ErrorKind::Malformed, "not a process id"))?,
        None => return Err(not_set()),
    };
    if listen_pid != u64::try_from(pid).unwrap_or(0) {
        return Err(not_set());
    }
    let max_count = (i32::MAX - SD_LISTEN_FDS_START) as u64;
    let count = match vars.listen_fds {
        Some(text) => parse_decimal(trim(text), max_count)
            .filter(|&n| n > 0)
            .and_then(|n| i32::try_from(n).ok())
            .ok_or_else(|| {
                var_error(
                    "LISTEN_FDS",
                    ErrorKind::Malformed,
                    "not a count in 1..=INT_MAX-3",
                )
            })?,
        None => return Err(not_set()),
    };
    if let Some(names) = vars.listen_fdnames {
        let fields = names.split(|&b| b == b':').count();
        if u64::try_from(fields).ok() != u64::try_from(count).ok() {
            return Err(var_error(
                "LISTEN_FDNAMES",
                ErrorKind::Malformed,
                "number of names differs from LISTEN_FDS",
            ));
        }
    }
    Ok(Source::Systemd(Systemd {
        count,
        names: vars.listen_fdnames,
    }))
}

/// The fields of `LISTEN_FDNAMES`.
type NameFields<'a> = core::slice::Split<'a, u8, fn(&u8) -> bool>;

/// Iterator over the descriptors passed by systemd.
#[derive(Debug, Clone)]
pub struct SystemdEntries<'a> {
    names: Option<NameFields<'a>>,
    index: i32,
    count: i32,
    offset: usize,
    done: bool,
}

fn is_colon(b: &u8) -> bool {
    *b == b':'
}

impl<'a> SystemdEntries<'a> {
    /// Iterates over the descriptors `sd` describes.
    pub fn new(sd: Systemd<'a>) -> Self {
        let split: fn(&u8) -> bool = is_colon;
        SystemdEntries {
            names: sd.names.map(|n| n.split(split)),
            index: 0,
            count: sd.count,
            offset: 0,
            done: false,
        }
    }
}

impl<'a> Iterator for SystemdEntries<'a> {
    type Item = Result<Entry<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done || self.index >= self.count {
            return None;
        }
        // An empty field is a missing name, which systemd reports as "unknown".
        let name = match self.names.as_mut().map(Iterator::next) {
            Some(Some(field)) if !field.is_empty() => field,
            _ => SD_UNKNOWN_NAME,
        };
        let entry = usize::try_from(self.index).unwrap_or(usize::MAX);
        if let Err((kind, reason)) = check_name(name) {
            self.done = true;
            return Some(Err(ParseError {
                kind,
                variable: "LISTEN_FDNAMES",
                entry,
                offset: self.offset,
                reason,
            }));
        }
        self.offset = self.offset.saturating_add(name.len()).saturating_add(1);
        // `index < count <= INT_MAX - 3`, so neither addition overflows.
        let fd = SD_LISTEN_FDS_START.saturating_add(self.index);
        self.index = self.index.saturating_add(1);
        Some(Ok(Entry {
            name,
            fd,
            family: libc::AF_UNSPEC,
            port: 0,
        }))
    }
}

/// The entries of either source, one iterator type for both.
#[derive(Debug, Clone)]
pub enum SourceEntries<'a> {
    /// From `SERVER_STARTER_PORT`.
    Starter(Entries<'a>),
    /// From `LISTEN_FDS` / `LISTEN_FDNAMES`.
    Systemd(SystemdEntries<'a>),
}

impl<'a> Source<'a> {
    /// Whether iterating may yield a parse error. Without `LISTEN_FDNAMES` every
    /// systemd entry is valid, and there may be up to INT_MAX - 3 of them: callers
    /// skip validation passes rather than walk them all.
    pub fn may_be_malformed(&self) -> bool {
        match self {
            Source::Starter(_) => true,
            Source::Systemd(sd) => sd.names.is_some(),
        }
    }

    /// The entries this source names.
    pub fn entries(&self) -> SourceEntries<'a> {
        match *self {
            Source::Starter(value) => SourceEntries::Starter(Entries::new(value)),
            Source::Systemd(sd) => SourceEntries::Systemd(SystemdEntries::new(sd)),
        }
    }
}

impl<'a> Iterator for SourceEntries<'a> {
    type Item = Result<Entry<'a>, ParseError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            SourceEntries::Starter(it) => it.next(),
            SourceEntries::Systemd(it) => it.next(),
        }
    }
}

/// The first entry of `source` named `wanted`, after checking that the whole
/// source parses (a malformed entry anywhere is an error, wherever the match is).
///
/// A systemd name is also found by the `SERVER_STARTER_PORT` name it was made
/// from ([`is_fdname_of`]): a worker of `start_server --listen-fds` asking for
/// `127.0.0.1:8080` gets the same socket whichever variable it reads.
pub fn find<'a>(source: &Source<'a>, wanted: &[u8]) -> Result<Option<Entry<'a>>, ParseError> {
    if let Source::Systemd(Systemd { count, names: None }) = *source {
        // Every descriptor is "unknown": answer without walking up to INT_MAX - 3
        // entries.
        return Ok((wanted == SD_UNKNOWN_NAME && count > 0).then_some(Entry {
            name: SD_UNKNOWN_NAME,
            fd: SD_LISTEN_FDS_START,
            family: libc::AF_UNSPEC,
            port: 0,
        }));
    }
    let systemd = matches!(source, Source::Systemd(_));
    let mut found = None;
    for entry in source.entries() {
        let entry = entry?;
        let named = entry.name == wanted || (systemd && is_fdname_of(entry.name, wanted));
        if found.is_none() && named {
            found = Some(entry);
        }
    }
    Ok(found)
}

/// `SERVER_STARTER_GENERATION`'s value: a decimal in `0..=i64::MAX`, whitespace
/// around it ignored.
pub fn parse_generation(text: &[u8]) -> Option<i64> {
    parse_decimal(trim(text), i64::MAX as u64).and_then(|g| i64::try_from(g).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Vec<(String, i32)>, ParseError> {
        Entries::new(s.as_bytes())
            .map(|e| e.map(|e| (String::from_utf8(e.name.to_vec()).unwrap(), e.fd)))
            .collect()
    }

    fn kind(s: &str) -> ErrorKind {
        parse(s).unwrap_err().kind
    }

    fn ok(pairs: &[(&str, i32)]) -> Result<Vec<(String, i32)>, ParseError> {
        Ok(pairs.iter().map(|&(n, fd)| (n.to_string(), fd)).collect())
    }

    #[test]
    fn start_server_examples() {
        assert_eq!(
            parse("80=3;127.0.0.1:8080=4;[::1]:8443=5;/run/app.sock=6"),
            ok(&[
                ("80", 3),
                ("127.0.0.1:8080", 4),
                ("[::1]:8443", 5),
                ("/run/app.sock", 6)
            ])
        );
        assert_eq!(parse("53=4"), ok(&[("53", 4)]));
    }

    #[test]
    fn descriptor_follows_the_last_equals_sign() {
        assert_eq!(parse("/tmp/a=b=c.sock=7"), ok(&[("/tmp/a=b=c.sock", 7)]));
        assert_eq!(parse("/x==8"), ok(&[("/x=", 8)]));
        assert_eq!(kind("/x=8="), ErrorKind::Malformed);
    }

    #[test]
    fn whitespace_is_ignored_around_names_and_numbers() {
        assert_eq!(
            parse(" 80 = 3 ;\t/s p = 4\n"),
            ok(&[("80", 3), ("/s p", 4)])
        );
        assert_eq!(parse("\x0b\x0c80=\r3"), ok(&[("80", 3)]));
    }

    #[test]
    fn empty_values_and_trailing_separators() {
        assert_eq!(parse(""), ok(&[]));
        assert_eq!(parse("   "), ok(&[]));
        assert_eq!(parse(";"), ok(&[]));
        assert_eq!(parse(" ; ;; "), ok(&[]));
        assert_eq!(parse("80=3;"), ok(&[("80", 3)]));
        assert_eq!(parse("80=3; ;;"), ok(&[("80", 3)]));
        assert_eq!(kind(";80=3"), ErrorKind::Malformed);
        assert_eq!(kind("80=3;;81=4"), ErrorKind::Malformed);
        assert_eq!(kind("80=3; ;81=4"), ErrorKind::Malformed);
    }

    #[test]
    fn malformed_entries() {
        for bad in [
            "80",
            "80=",
            "=3",
            " = 3",
            "80=x",
            "80=-1",
            "80=+3",
            "80=3x",
            "80=3 4",
            "80=2147483648",
            "80=99999999999999999999999",
        ] {
            assert_eq!(kind(bad), ErrorKind::Malformed, "{bad:?}");
        }
        assert_eq!(parse("80=2147483647"), ok(&[("80", i32::MAX)]));
        assert_eq!(parse("80=0003"), ok(&[("80", 3)]));
    }

    #[test]
    fn error_context_points_at_the_entry() {
        let e = parse("80=3;81=4;oops;82=5").unwrap_err();
        assert_eq!(
            (e.entry, e.offset, e.variable),
            (2, 10, "SERVER_STARTER_PORT")
        );
    }

    #[test]
    fn name_length_limit() {
        let longest = "/".repeat(NAME_MAX - 1);
        assert_eq!(
            parse(&format!("{longest}=3")).unwrap()[0].0.len(),
            NAME_MAX - 1
        );
        assert_eq!(kind(&format!("{longest}x=3")), ErrorKind::NameTooLong);
    }

    #[test]
    fn family_and_port_hints() {
        let hint = |s: &str| classify(s.as_bytes());
        assert_eq!(hint("80"), (libc::AF_UNSPEC, 80));
        assert_eq!(hint("127.0.0.1:8080"), (libc::AF_INET, 8080));
        assert_eq!(hint("[::1]:8443"), (libc::AF_INET6, 8443));
        assert_eq!(hint("[fe80::1%eth0]:1"), (libc::AF_INET6, 1));
        assert_eq!(hint("/run/app.sock"), (libc::AF_UNIX, 0));
        assert_eq!(hint("localhost:80"), (libc::AF_UNSPEC, 80));
        assert_eq!(hint("[nonsense]:80"), (libc::AF_UNSPEC, 80));
        assert_eq!(hint("1.2.3.4:65536"), (libc::AF_UNSPEC, 0));
        assert_eq!(hint("65536"), (libc::AF_UNSPEC, 0));
        assert_eq!(hint("name"), (libc::AF_UNSPEC, 0));
        assert_eq!(hint("1.2.3.4:"), (libc::AF_UNSPEC, 0));
    }

    fn vars<'a>(pid: &'a str, fds: &'a str, names: Option<&'a str>) -> Vars<'a> {
        Vars {
            starter_port: None,
            listen_pid: Some(pid.as_bytes()),
            listen_fds: Some(fds.as_bytes()),
            listen_fdnames: names.map(str::as_bytes),
        }
    }

    fn systemd(v: &Vars<'_>, pid: i32) -> Result<Vec<(String, i32)>, ErrorKind> {
        let source = resolve(v, pid).map_err(|e| e.kind)?;
        source
            .entries()
            .map(|e| {
                e.map(|e| (String::from_utf8(e.name.to_vec()).unwrap(), e.fd))
                    .map_err(|e| e.kind)
            })
            .collect()
    }

    #[test]
    fn systemd_rules() {
        assert_eq!(
            systemd(&vars("42", "2", Some("http:admin")), 42),
            Ok(vec![("http".into(), 3), ("admin".into(), 4)])
        );
        assert_eq!(
            systemd(&vars("42", "2", None), 42),
            Ok(vec![("unknown".into(), 3), ("unknown".into(), 4)])
        );
        assert_eq!(
            systemd(&vars("42", "2", Some(":admin")), 42),
            Ok(vec![("unknown".into(), 3), ("admin".into(), 4)])
        );
        assert_eq!(
            systemd(&vars("42", "1", Some("")), 42),
            Ok(vec![("unknown".into(), 3)])
        );
        assert_eq!(systemd(&vars("43", "2", None), 42), Err(ErrorKind::NotSet));
        assert_eq!(
            systemd(
                &Vars {
                    listen_pid: None,
                    ..vars("", "2", None)
                },
                42
            ),
            Err(ErrorKind::NotSet)
        );
        assert_eq!(
            systemd(
                &Vars {
                    listen_fds: None,
                    ..vars("42", "", None)
                },
                42
            ),
            Err(ErrorKind::NotSet)
        );
        for (pid, fds) in [
            ("x", "1"),
            ("0", "1"),
            ("-42", "1"),
            ("42", "0"),
            ("42", "x"),
            ("42", "-1"),
            ("42", "2147483645"),
        ] {
            assert_eq!(
                systemd(&vars(pid, fds, None), 42),
                Err(ErrorKind::Malformed),
                "{pid} {fds}"
            );
        }
        assert!(resolve(&vars("42", "2147483644", None), 42).is_ok());
        assert_eq!(
            systemd(&vars("42", "2", Some("a")), 42),
            Err(ErrorKind::Malformed)
        );
        assert_eq!(
            systemd(&vars("42", "1", Some("a:b")), 42),
            Err(ErrorKind::Malformed)
        );
        let long = "n".repeat(NAME_MAX);
        assert_eq!(
            systemd(&vars("42", "1", Some(&long)), 42),
            Err(ErrorKind::NameTooLong)
        );
        // SERVER_STARTER_PORT, even empty, wins over systemd.
        let both = Vars {
            starter_port: Some(b""),
            ..vars("42", "2", None)
        };
        assert_eq!(systemd(&both, 42), Ok(vec![]));
    }

    #[test]
    fn fdnames_made_from_starter_names_find_the_same_socket() {
        let fdname = |name: &str| -> String {
            let cut = &name.as_bytes()[..name.len().min(FDNAME_MAX)];
            cut.iter().map(|&b| char::from(fdname_byte(b))).collect()
        };
        assert_eq!(fdname("8080"), "8080");
        assert_eq!(fdname("/run/app.sock"), "/run/app.sock");
        assert_eq!(fdname("127.0.0.1:8080"), "127.0.0.1_8080");
        assert_eq!(fdname("[::1]:8443"), "[__1]_8443");
        assert_eq!(fdname("/tmp/caf\u{e9}\t.sock"), "/tmp/caf___.sock");
        let long = format!("{}:80", "h".repeat(300));
        assert_eq!(fdname(&long).len(), FDNAME_MAX);
        assert!(is_fdname_of(fdname(&long).as_bytes(), long.as_bytes()));
        assert!(!is_fdname_of(b"127.0.0.1_808", b"127.0.0.1:8080"));
        assert!(!is_fdname_of(b"127.0.0.1_80800", b"127.0.0.1:8080"));

        let v = vars("42", "3", Some("8080:127.0.0.1_8081:[__1]_8443"));
        let source = resolve(&v, 42).unwrap();
        let fd = |wanted: &str| find(&source, wanted.as_bytes()).unwrap().map(|e| e.fd);
        assert_eq!(fd("8080"), Some(3));
        assert_eq!(fd("127.0.0.1:8081"), Some(4));
        assert_eq!(fd("127.0.0.1_8081"), Some(4));
        assert_eq!(fd("[::1]:8443"), Some(5));
        assert_eq!(fd("127.0.0.1:8443"), None);
        // SERVER_STARTER_PORT names are matched exactly.
        let starter = resolve(
            &Vars {
                starter_port: Some(b"127.0.0.1:8081=3"),
                ..v
            },
            42,
        )
        .unwrap();
        assert_eq!(find(&starter, b"127.0.0.1_8081").unwrap(), None);
    }

    #[test]
    fn generation() {
        assert_eq!(parse_generation(b"7"), Some(7));
        assert_eq!(parse_generation(b" 12\n"), Some(12));
        assert_eq!(parse_generation(b"9223372036854775807"), Some(i64::MAX));
        for bad in ["", "x", "-1", "9223372036854775808", "1 2"] {
            assert_eq!(parse_generation(bad.as_bytes()), None, "{bad:?}");
        }
    }
}
