//! The record declared once: `record!` names every field of a struct that crosses an
//! upgrade's exec, and both the writing and the reading come from that one list. Its
//! encoder destructures the struct without `..`, so a field added to the struct but
//! not to the list (as persisted, or as `transient`) does not compile. Each top-level
//! field is one record of the state (`state`'s format), named after the field; a
//! nested value takes its fields in order (`Persist`).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::state::{Cursor, Field};

/// A value written as one or more fields of a record, and read back from them.
pub trait Persist: Sized {
    fn put(&self, out: &mut Vec<Field>);
    fn take(c: &mut Cursor) -> Result<Self, String>;
}

/// A struct whose fields are written in order; `transient` fields are not handed over
/// and start from their `Default` in the next image.
macro_rules! persist {
    ($ty:ident { $($field:ident),* $(,)? } $(transient { $($skip:ident),* })?) => {
        impl $crate::upgrade::record::Persist for $ty {
            fn put(&self, out: &mut Vec<$crate::upgrade::state::Field>) {
                let $ty { $($field,)* $($($skip: _,)*)? } = self;
                $($crate::upgrade::record::Persist::put($field, out);)*
            }
            fn take(c: &mut $crate::upgrade::state::Cursor) -> Result<Self, String> {
                Ok($ty {
                    $($field: $crate::upgrade::record::Persist::take(c)?,)*
                    $($($skip: Default::default(),)*)?
                })
            }
        }
    };
}

pub(crate) use persist;

/// A struct whose fields are each one record of the state, named after the field;
/// `transient` ones, as with `persist!`, start from their `Default`.
macro_rules! record {
    ($ty:ident { $($field:ident),* $(,)? } $(transient { $($skip:ident),* })?) => {
        impl $ty {
            pub fn save(&self, w: &mut $crate::upgrade::state::Writer) {
                let $ty { $($field,)* $($($skip: _,)*)? } = self;
                $(
                    let mut out = Vec::new();
                    $crate::upgrade::record::Persist::put($field, &mut out);
                    w.put(stringify!($field), &out);
                )*
            }
            pub fn read(r: &mut $crate::upgrade::state::Reader) -> Result<Self, String> {
                Ok($ty {
                    $($field: {
                        let mut c = r.one(stringify!($field))?.cursor();
                        let value = $crate::upgrade::record::Persist::take(&mut c)?;
                        c.finish()?;
                        value
                    },)*
                    $($($skip: Default::default(),)*)?
                })
            }
        }
    };
}

pub(crate) use record;

macro_rules! number {
    ($($ty:ty),*) => {$(
        impl $crate::upgrade::record::Persist for $ty {
            fn put(&self, out: &mut Vec<Field>) {
                out.push(Field::num(self));
            }
            fn take(c: &mut Cursor) -> Result<Self, String> {
                c.next(|f, i| f.num(i))
            }
        }
    )*};
}
number!(u32, u64, i32);

impl Persist for bool {
    fn put(&self, out: &mut Vec<Field>) {
        out.push(Field::flag(*self));
    }
    fn take(c: &mut Cursor) -> Result<Self, String> {
        c.next(|f, i| f.flag(i))
    }
}

impl Persist for Duration {
    fn put(&self, out: &mut Vec<Field>) {
        out.push(Field::duration(*self));
    }
    fn take(c: &mut Cursor) -> Result<Self, String> {
        c.next(|f, i| f.duration(i))
    }
}

impl Persist for String {
    fn put(&self, out: &mut Vec<Field>) {
        out.push(Field::text(self));
    }
    fn take(c: &mut Cursor) -> Result<Self, String> {
        c.next(|f, i| f.text(i))
    }
}

impl Persist for OsString {
    fn put(&self, out: &mut Vec<Field>) {
        out.push(Field::bytes(self.as_bytes()));
    }
    fn take(c: &mut Cursor) -> Result<Self, String> {
        c.next(|f, i| f.bytes(i)).map(OsString::from_vec)
    }
}

impl Persist for PathBuf {
    fn put(&self, out: &mut Vec<Field>) {
        self.as_os_str().to_owned().put(out);
    }
    fn take(c: &mut Cursor) -> Result<Self, String> {
        OsString::take(c).map(PathBuf::from)
    }
}

/// An instant, as CLOCK_MONOTONIC microseconds (which go on counting across execve).
impl Persist for Instant {
    fn put(&self, out: &mut Vec<Field>) {
        out.push(Field::instant(*self));
    }
    fn take(c: &mut Cursor) -> Result<Self, String> {
        c.next(|f, i| {
            f.opt_instant(i)?
                .ok_or_else(|| "an instant, not -".to_string())
        })
    }
}

impl<T: Persist> Persist for Option<T> {
    fn put(&self, out: &mut Vec<Field>) {
        match self {
            None => out.push(Field::none()),
            Some(value) => {
                out.push(Field::some());
                value.put(out);
            }
        }
    }
    fn take(c: &mut Cursor) -> Result<Self, String> {
        match c.present()? {
            false => Ok(None),
            true => T::take(c).map(Some),
        }
    }
}

impl<T: Persist> Persist for Vec<T> {
    fn put(&self, out: &mut Vec<Field>) {
        out.push(Field::num(self.len()));
        self.iter().for_each(|item| item.put(out));
    }
    fn take(c: &mut Cursor) -> Result<Self, String> {
        let len: usize = c.next(|f, i| f.num(i))?;
        (0..len).map(|_| T::take(c)).collect()
    }
}

impl<K: Persist + Ord, V: Persist> Persist for BTreeMap<K, V> {
    fn put(&self, out: &mut Vec<Field>) {
        out.push(Field::num(self.len()));
        for (key, value) in self {
            key.put(out);
            value.put(out);
        }
    }
    fn take(c: &mut Cursor) -> Result<Self, String> {
        let len: usize = c.next(|f, i| f.num(i))?;
        (0..len).map(|_| Ok((K::take(c)?, V::take(c)?))).collect()
    }
}

impl<A: Persist, B: Persist> Persist for (A, B) {
    fn put(&self, out: &mut Vec<Field>) {
        self.0.put(out);
        self.1.put(out);
    }
    fn take(c: &mut Cursor) -> Result<Self, String> {
        Ok((A::take(c)?, B::take(c)?))
    }
}

impl<A: Persist, B: Persist, C: Persist> Persist for (A, B, C) {
    fn put(&self, out: &mut Vec<Field>) {
        self.0.put(out);
        self.1.put(out);
        self.2.put(out);
    }
    fn take(c: &mut Cursor) -> Result<Self, String> {
        Ok((A::take(c)?, B::take(c)?, C::take(c)?))
    }
}
