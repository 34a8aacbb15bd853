//! The upgrade state's format: what one image of start_server hands the next across
//! execve, as text.
//!
//! ```text
//! server_starter-state 2
//! version 0.1.0
//! listeners 1 127.0.0.1:8080 3 0 - -
//! pid_file + 4 /run/app.pid 1
//! generation 3
//! newest serving 4242 3 81234567 82234567 -
//! ...
//! end
//! ```
//!
//! The first line names the format; an image reads only the formats its
//! `--upgrade-check` lists. Then one record per line: a key and its fields, separated
//! by single spaces, each field percent-encoded (`%20` for a space, `%25` for `%`, any
//! byte outside printable ASCII as `%XX`), `-` for "none" (and `+` before a value
//! that may be none), a count before a list, a word before an enum's fields; which
//! records and fields there are is declared once (`record`). Instants are CLOCK_MONOTONIC
//! microseconds, which go on counting across execve. The last line is `end`, so that a
//! state cut short is told from a complete one.
//!
//! Reading is strict: an unknown key, a missing one, a field that does not parse or
//! fields left over are all errors, and the new image then hands the state back to
//! the previous one (see `upgrade::resume`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::sys;

/// The format this build writes. 2: the workers' slots, the roll and its canary,
/// `--ready`, the process trees, what `--status` reports (format 1's images are
/// refused by the check, before the exec, rather than handed back after it).
pub const FORMAT: u32 = 2;
/// The formats this build reads.
pub const READS: &[u32] = &[2];

const MAGIC: &str = "server_starter-state";

/// Writes records, in order, after the header line.
pub struct Writer {
    text: String,
}

impl Writer {
    pub fn new() -> Writer {
        Writer {
            text: format!("{MAGIC} {FORMAT}\n"),
        }
    }

    /// One record: `key` and its fields, each already a `Field`.
    pub fn put(&mut self, key: &str, fields: &[Field]) {
        self.text.push_str(key);
        for field in fields {
            self.text.push(' ');
            self.text.push_str(&field.0);
        }
        self.text.push('\n');
    }

    pub fn finish(mut self) -> String {
        self.text.push_str("end\n");
        self.text
    }
}

/// One encoded field.
pub struct Field(String);

impl Field {
    pub fn none() -> Field {
        Field("-".into())
    }

    pub fn bytes(bytes: &[u8]) -> Field {
        let mut text = String::with_capacity(bytes.len());
        for &b in bytes {
            if b.is_ascii_graphic() && b != b'%' && !(bytes.len() == 1 && b == b'-') {
                text.push(b as char);
            } else {
                text.push_str(&format!("%{b:02X}"));
            }
        }
        // An empty field is a lone `%`, which nothing else encodes to, so that it does
        // not vanish between two spaces.
        if text.is_empty() {
            text.push('%');
        }
        Field(text)
    }

    pub fn text(text: &str) -> Field {
        Field::bytes(text.as_bytes())
    }

    pub fn num(n: impl std::fmt::Display) -> Field {
        Field(n.to_string())
    }

    pub fn flag(on: bool) -> Field {
        Field(if on { "1" } else { "0" }.into())
    }

    pub fn duration(d: Duration) -> Field {
        Field(saturating_micros(d).to_string())
    }
}

/// A parsed state: its records by key, each taken once by the reader.
pub struct Reader {
    records: BTreeMap<String, Vec<Vec<String>>>,
    clock: Clock,
}

/// The fields of one record.
pub struct Fields<'a> {
    key: &'a str,
    fields: Vec<String>,
    clock: Clock,
}

impl Reader {
    /// Parses the whole state, checking its format and its end.
    pub fn parse(text: &[u8]) -> Result<Reader, String> {
        let text = std::str::from_utf8(text).map_err(|_| "the state is not text".to_string())?;
        let mut lines = text.lines();
        let header = lines.next().unwrap_or_default();
        let format = header
            .strip_prefix(MAGIC)
            .and_then(|rest| rest.strip_prefix(' '))
            .ok_or_else(|| format!("not an upgrade state (it begins {header:?})"))?;
        let format: u32 = format
            .parse()
            .map_err(|_| format!("state format {format:?} is not a number"))?;
        if !READS.contains(&format) {
            return Err(format!(
                "state format {format} is not one this build reads ({READS:?})"
            ));
        }
        let mut records: BTreeMap<String, Vec<Vec<String>>> = BTreeMap::new();
        let mut ended = false;
        for line in lines {
            if ended {
                return Err("records after the end of the state".into());
            }
            if line == "end" {
                ended = true;
                continue;
            }
            let mut parts = line.split(' ');
            let key = parts.next().unwrap_or_default().to_string();
            let fields = parts.map(String::from).collect();
            records.entry(key).or_default().push(fields);
        }
        if !ended {
            return Err("the state is cut short (no end line)".into());
        }
        Ok(Reader {
            records,
            clock: Clock::now(),
        })
    }

    /// Every record of `key`, in order (none is fine).
    pub fn all(&mut self, key: &'static str) -> Vec<Fields<'static>> {
        let clock = self.clock;
        self.records
            .remove(key)
            .unwrap_or_default()
            .into_iter()
            .map(|fields| Fields { key, fields, clock })
            .collect()
    }

    /// The one record of `key`, which must be there.
    pub fn one(&mut self, key: &'static str) -> Result<Fields<'static>, String> {
        let mut all = self.all(key);
        match all.len() {
            1 => Ok(all.remove(0)),
            0 => Err(format!("the state has no {key:?} record")),
            n => Err(format!("the state has {n} {key:?} records, not one")),
        }
    }

    /// Every record must have been taken: one left over is a key this build does not
    /// know, and the state is not understood.
    pub fn finish(self) -> Result<(), String> {
        match self.records.keys().next() {
            None => Ok(()),
            Some(key) => Err(format!("unknown record {key:?} in the state")),
        }
    }
}

impl Fields<'_> {
    fn error(&self, why: &str) -> String {
        format!("state record {} {}: {why}", self.key, self.fields.join(" "))
    }

    fn raw(&self, i: usize) -> Result<&str, String> {
        self.fields
            .get(i)
            .map(String::as_str)
            .ok_or_else(|| self.error(&format!("no field {}", i + 1)))
    }

    pub fn is_none(&self, i: usize) -> bool {
        self.fields.get(i).is_some_and(|f| f == "-")
    }

    pub fn bytes(&self, i: usize) -> Result<Vec<u8>, String> {
        let raw = self.raw(i)?;
        if raw == "%" {
            return Ok(Vec::new());
        }
        let mut out = Vec::with_capacity(raw.len());
        let mut rest = raw.as_bytes();
        while let Some((&b, tail)) = rest.split_first() {
            if b == b'%' {
                let hex = tail
                    .get(..2)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| self.error(&format!("bad escape in field {}", i + 1)))?;
                out.push(hex);
                rest = &tail[2..];
            } else {
                out.push(b);
                rest = tail;
            }
        }
        Ok(out)
    }

    pub fn text(&self, i: usize) -> Result<String, String> {
        String::from_utf8(self.bytes(i)?)
            .map_err(|_| self.error(&format!("field {} is not UTF-8", i + 1)))
    }

    pub fn num<T: std::str::FromStr>(&self, i: usize) -> Result<T, String> {
        let raw = self.raw(i)?;
        raw.parse()
            .map_err(|_| self.error(&format!("field {} is not a number", i + 1)))
    }

    pub fn opt_num<T: std::str::FromStr>(&self, i: usize) -> Result<Option<T>, String> {
        if self.is_none(i) {
            return Ok(None);
        }
        self.num(i).map(Some)
    }

    pub fn flag(&self, i: usize) -> Result<bool, String> {
        match self.raw(i)? {
            "0" => Ok(false),
            "1" => Ok(true),
            _ => Err(self.error(&format!("field {} is not 0 or 1", i + 1))),
        }
    }

    pub fn duration(&self, i: usize) -> Result<Duration, String> {
        self.num(i).map(Duration::from_micros)
    }

    pub fn opt_instant(&self, i: usize) -> Result<Option<Instant>, String> {
        Ok(self.opt_num(i)?.map(|usec| self.clock.instant_at(usec)))
    }
}

/// Reads the fields of one record one after the other, for values that take several
/// (see `supervisor::record`).
pub struct Cursor<'a> {
    fields: Fields<'a>,
    at: usize,
}

impl<'a> Fields<'a> {
    pub fn cursor(self) -> Cursor<'a> {
        Cursor {
            fields: self,
            at: 0,
        }
    }
}

impl Cursor<'_> {
    /// The next field, read by `read` (a `Fields` method).
    pub fn next<T>(
        &mut self,
        read: impl FnOnce(&Fields, usize) -> Result<T, String>,
    ) -> Result<T, String> {
        let value = read(&self.fields, self.at)?;
        self.at += 1;
        Ok(value)
    }

    /// The next field as a presence mark: `-` for none, `+` for a value that follows.
    pub fn present(&mut self) -> Result<bool, String> {
        let at = self.at;
        self.at += 1;
        match self.fields.raw(at)? {
            "-" => Ok(false),
            "+" => Ok(true),
            _ => Err(self
                .fields
                .error(&format!("field {} is neither - nor +", at + 1))),
        }
    }

    /// Every field must have been read.
    pub fn finish(self) -> Result<(), String> {
        match self.fields.fields.len() == self.at {
            true => Ok(()),
            false => Err(self.fields.error(&format!(
                "{} fields, {} expected",
                self.fields.fields.len(),
                self.at
            ))),
        }
    }
}

impl Field {
    /// An instant, in CLOCK_MONOTONIC microseconds.
    pub fn instant(at: Instant) -> Field {
        Field(Clock::now().usec_at(at).to_string())
    }

    /// The presence mark of a value that follows (see `Cursor::present`).
    pub fn some() -> Field {
        Field("+".into())
    }
}

/// One moment read both as an `Instant` and as CLOCK_MONOTONIC microseconds (which is
/// what `Instant` counts on Linux): instants are converted through it, exactly enough.
#[derive(Clone, Copy)]
struct Clock {
    instant: Instant,
    usec: u64,
}

impl Clock {
    fn now() -> Clock {
        Clock {
            instant: Instant::now(),
            usec: sys::monotonic_usec(),
        }
    }

    /// Saturating: a deadline as far off as `EXTEND_TIMEOUT_USEC=18446744073709551615`
    /// (systemd's infinity) is saved as the farthest one, never wrapped into the past.
    fn usec_at(self, at: Instant) -> u64 {
        if at >= self.instant {
            self.usec
                .saturating_add(saturating_micros(at - self.instant))
        } else {
            self.usec
                .saturating_sub(saturating_micros(self.instant - at))
        }
    }

    fn instant_at(self, usec: u64) -> Instant {
        if usec >= self.usec {
            let ahead = Duration::from_micros(usec - self.usec);
            self.instant
                .checked_add(ahead)
                .unwrap_or(far_future(self.instant))
        } else {
            let ago = Duration::from_micros(self.usec - usec);
            self.instant.checked_sub(ago).unwrap_or(self.instant)
        }
    }
}

/// A duration in microseconds, `u64::MAX` for any longer.
fn saturating_micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The farthest instant a state can name, for one beyond what `Instant` can hold.
fn far_future(now: Instant) -> Instant {
    now.checked_add(Duration::from_micros(u64::MAX))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let mut w = Writer::new();
        let soon = Instant::now() + Duration::from_millis(1500);
        let past = Instant::now() - Duration::from_millis(200);
        w.put(
            "thing",
            &[
                Field::text("a b%c\n"),
                Field::num(42),
                Field::flag(true),
                Field::none(),
                Field::text(""),
                Field::text("-"),
            ],
        );
        w.put(
            "at",
            &[Field::instant(soon), Field::instant(past), Field::none()],
        );
        w.put("many", &[Field::num(1)]);
        w.put("many", &[Field::num(2)]);
        let text = w.finish();
        assert!(text.starts_with("server_starter-state 2\n"));
        assert!(text.contains("thing a%20b%25c%0A 42 1 - % %2D\n"), "{text}");

        let mut r = Reader::parse(text.as_bytes()).unwrap();
        let thing = r.one("thing").unwrap();
        assert_eq!(thing.text(0).unwrap(), "a b%c\n");
        assert_eq!(thing.num::<u64>(1).unwrap(), 42);
        assert!(thing.flag(2).unwrap());
        assert_eq!(thing.opt_num::<u64>(3).unwrap(), None);
        assert_eq!(thing.text(4).unwrap(), "");
        assert_eq!(thing.text(5).unwrap(), "-");
        let at = r.one("at").unwrap();
        let close = |a: Instant, b: Instant| {
            let d = if a > b { a - b } else { b - a };
            d < Duration::from_millis(1)
        };
        assert!(close(at.opt_instant(0).unwrap().unwrap(), soon));
        assert!(close(at.opt_instant(1).unwrap().unwrap(), past));
        assert_eq!(at.opt_instant(2).unwrap(), None);
        let many: Vec<u64> = r.all("many").iter().map(|f| f.num(0).unwrap()).collect();
        assert_eq!(many, [1, 2]);
        r.finish().unwrap();
    }

    #[test]
    fn far_deadlines_saturate() {
        let far = Instant::now() + Duration::from_micros(u64::MAX);
        let mut w = Writer::new();
        w.put("at", &[Field::instant(far), Field::duration(Duration::MAX)]);
        let text = w.finish();
        assert!(
            text.contains(&format!("at {} {}\n", u64::MAX, u64::MAX)),
            "{text}"
        );
        let mut r = Reader::parse(text.as_bytes()).unwrap();
        let at = r.one("at").unwrap();
        // Still as far off as it can be: never wrapped into the past.
        let back = at.opt_instant(0).unwrap().unwrap();
        assert!(back > Instant::now() + Duration::from_secs(1 << 40));
        assert_eq!(at.duration(1).unwrap(), Duration::from_micros(u64::MAX));
    }

    #[test]
    fn refusals() {
        let parse = |text: &str| Reader::parse(text.as_bytes()).err().unwrap_or_default();
        assert!(parse("hello\nend\n").contains("not an upgrade state"));
        assert!(parse("server_starter-state 9\nend\n").contains("format 9"));
        assert!(parse("server_starter-state x\nend\n").contains("not a number"));
        assert!(parse("server_starter-state 2\ngeneration 3\n").contains("cut short"));
        assert!(parse("server_starter-state 2\nend\nx 1\n").contains("after the end"));
        assert!(Reader::parse(b"\xff").is_err());

        let mut r =
            Reader::parse(b"server_starter-state 2\nnew-thing 1\ngeneration 3 4\nend\n").unwrap();
        let mut generation = r.one("generation").unwrap().cursor();
        generation.next(|f, i| f.num::<u64>(i)).unwrap();
        assert!(generation
            .finish()
            .err()
            .unwrap()
            .contains("2 fields, 1 expected"));
        assert!(r.one("missing").err().unwrap().contains("no \"missing\""));
        assert!(r.finish().err().unwrap().contains("new-thing"));

        let mut r = Reader::parse(b"server_starter-state 2\nn x %G1 2\nend\n").unwrap();
        let n = r.one("n").unwrap();
        assert!(n.num::<u64>(0).is_err());
        assert!(n.bytes(1).is_err());
        assert!(n.flag(2).is_err());
        assert!(n.bytes(3).is_err());
    }
}
