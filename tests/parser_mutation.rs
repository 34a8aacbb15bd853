//! Hostile input for `server_starter_parse`, through its C ABI: every
//! single-byte mutation (replace, insert, delete, duplicate, swap) from a byte
//! alphabet at every position of a set of valid seeds, plus a bounded number of
//! fixed-seed random multi-mutations. Each input is parsed into output arrays of
//! several capacities, placed (aligned or not) between canary-filled guards, and
//! checked against a straightforward reference implementation of the documented
//! rules: same return value, entries equal to the reference (names NUL-terminated,
//! zero-filled, equal to the trimmed text; descriptors round-trip), nothing
//! written past the count or past `cap`.
//!
//! Runs in a few seconds in a debug build.

use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::raw::c_char;

use server_starter::ffi::{
    server_starter_listener as Listener, server_starter_parse, SERVER_STARTER_EMALFORMED,
    SERVER_STARTER_ENAMETOOLONG, SERVER_STARTER_NAME_MAX,
};

const CANARY: u8 = 0xa5;
/// Entries of canary on each side of the output array.
const GUARD: usize = 2;
/// Output capacities tried for every input (0 also with a NULL array).
const CAPS: &[usize] = &[0, 1, 2, 3, 8];
const RANDOM_INPUTS: usize = 60_000;

const ALPHABET: &[u8] = b";=019[]:/ \t\n.a%-+\x00\xff\x80";

fn seeds() -> Vec<Vec<u8>> {
    let mut seeds: Vec<Vec<u8>> = [
        "80=3",
        "127.0.0.1:8080=4",
        "[::1]:8443=5",
        "/run/app.sock=6",
        "80=3;127.0.0.1:8080=4;[::1]:8443=5;/run/app.sock=6",
        " 80 = 3 ;\t81=4 ;",
        "/tmp/a=b.sock=7",
        "localhost:80=3;[fe80::1%eth0]:1=9",
        "80=2147483647;0=0",
        "x=3;;y=4",
        ";",
        "",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    // Names at and just past the length limit.
    for len in [SERVER_STARTER_NAME_MAX - 1, SERVER_STARTER_NAME_MAX] {
        let mut s = vec![b'/'; len];
        s.extend_from_slice(b"=3");
        seeds.push(s);
    }
    seeds
}

// ---- The reference: the documented rules, written plainly. ----

fn is_space(b: u8) -> bool {
    b" \t\n\r\x0b\x0c".contains(&b)
}

fn trim(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|&b| !is_space(b)).unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|&b| !is_space(b))
        .map_or(start, |i| i + 1);
    &s[start..end]
}

fn decimal(s: &[u8], max: u64) -> Option<u64> {
    if s.is_empty() || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let digits = std::str::from_utf8(s).unwrap().trim_start_matches('0');
    if digits.len() > 19 {
        return None;
    }
    let value = if digits.is_empty() {
        0
    } else {
        digits.parse::<u64>().unwrap()
    };
    (value <= max).then_some(value)
}

fn hints(name: &[u8]) -> (i32, i32) {
    if name.starts_with(b"/") {
        return (libc::AF_UNIX, 0);
    }
    if let Some(port) = decimal(name, 65535) {
        return (libc::AF_UNSPEC, port as i32);
    }
    let Some(colon) = name.iter().rposition(|&b| b == b':') else {
        return (libc::AF_UNSPEC, 0);
    };
    let (host, port) = (&name[..colon], &name[colon + 1..]);
    let Some(port) = decimal(port, 65535) else {
        return (libc::AF_UNSPEC, 0);
    };
    let host = String::from_utf8_lossy(host);
    let family = if host.len() >= 2 && host.starts_with('[') && host.ends_with(']') {
        let inner = &host[1..host.len() - 1];
        let address = inner.split('%').next().unwrap();
        if address.parse::<Ipv6Addr>().is_ok() {
            libc::AF_INET6
        } else {
            libc::AF_UNSPEC
        }
    } else if !host.contains('\u{fffd}') && host.parse::<Ipv4Addr>().is_ok() {
        libc::AF_INET
    } else {
        libc::AF_UNSPEC
    };
    (family, port as i32)
}

#[derive(Debug, PartialEq)]
struct Expected {
    name: Vec<u8>,
    fd: i32,
    family: i32,
    port: i32,
}

fn reference(input: &[u8]) -> Result<Vec<Expected>, i32> {
    // A C string ends at its first NUL.
    let input = &input[..input.iter().position(|&b| b == 0).unwrap_or(input.len())];
    let pieces: Vec<&[u8]> = input.split(|&b| b == b';').map(trim).collect();
    let last_nonempty = pieces.iter().rposition(|p| !p.is_empty());
    let mut out = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        if piece.is_empty() {
            if last_nonempty.is_none_or(|last| i > last) {
                break;
            }
            return Err(SERVER_STARTER_EMALFORMED);
        }
        let Some(eq) = piece.iter().rposition(|&b| b == b'=') else {
            return Err(SERVER_STARTER_EMALFORMED);
        };
        let (name, fd) = (trim(&piece[..eq]), trim(&piece[eq + 1..]));
        if name.is_empty() {
            return Err(SERVER_STARTER_EMALFORMED);
        }
        if name.len() > SERVER_STARTER_NAME_MAX - 1 {
            return Err(SERVER_STARTER_ENAMETOOLONG);
        }
        let Some(fd) = decimal(fd, i32::MAX as u64) else {
            return Err(SERVER_STARTER_EMALFORMED);
        };
        let (family, port) = hints(name);
        out.push(Expected {
            name: name.to_vec(),
            fd: fd as i32,
            family,
            port,
        });
    }
    Ok(out)
}

// ---- Running the parser between canaries. ----

#[derive(Default)]
struct Stats {
    inputs: u64,
    calls: u64,
    ok: u64,
    ok_nonempty: u64,
    malformed: u64,
    too_long: u64,
    unaligned: u64,
    max_count: usize,
}

fn entry_at(buf: &[u8], offset: usize, index: usize) -> Listener {
    let start = offset + index * size_of::<Listener>();
    let bytes = &buf[start..start + size_of::<Listener>()];
    // SAFETY: `bytes` is exactly one Listener's worth of initialised bytes, and
    // every bit pattern is a valid Listener (integers and a char array).
    unsafe { bytes.as_ptr().cast::<Listener>().read_unaligned() }
}

fn check_entry(got: &Listener, want: &Expected, context: &str) {
    assert_eq!(
        (got.fd, got.family, got.socktype, got.port),
        (want.fd, want.family, 0, want.port),
        "{context}"
    );
    let name: Vec<u8> = got.name.iter().map(|&c| c as u8).collect();
    let len = want.name.len();
    assert_eq!(&name[..len], &want.name[..], "{context}: name");
    assert!(
        name[len..].iter().all(|&b| b == 0),
        "{context}: name NUL-terminated and zero-filled"
    );
}

fn check(input: &[u8], stats: &mut Stats) {
    let want = reference(input);
    let mut c_string = input.to_vec();
    c_string.push(0);
    stats.inputs += 1;
    match &want {
        Ok(v) => {
            stats.ok += 1;
            stats.ok_nonempty += u64::from(!v.is_empty());
            stats.max_count = stats.max_count.max(v.len());
        }
        Err(SERVER_STARTER_ENAMETOOLONG) => stats.too_long += 1,
        Err(_) => stats.malformed += 1,
    }
    let expected_rc = match &want {
        Ok(v) => v.len() as i32,
        Err(code) => *code,
    };

    // SAFETY: a NUL-terminated string and no array.
    let rc = unsafe {
        server_starter_parse(c_string.as_ptr().cast::<c_char>(), std::ptr::null_mut(), 0)
    };
    stats.calls += 1;
    assert_eq!(
        rc,
        expected_rc,
        "input {:?} with a NULL array",
        String::from_utf8_lossy(input)
    );

    for &cap in CAPS {
        for misalign in [0, 1] {
            let size = size_of::<Listener>();
            let offset = GUARD * size + misalign;
            let mut buf = vec![CANARY; (cap + 2 * GUARD) * size + 1];
            let out = buf[offset..].as_mut_ptr().cast::<Listener>();
            // SAFETY: `out` points to `cap` writable entries' worth of bytes (the
            // library writes unaligned) and `c_string` is NUL-terminated.
            let rc = unsafe { server_starter_parse(c_string.as_ptr().cast::<c_char>(), out, cap) };
            stats.calls += 1;
            stats.unaligned += misalign as u64;
            let context = format!(
                "input {:?}, cap {cap}, misalign {misalign}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(rc, expected_rc, "{context}");
            let written = match &want {
                Ok(v) => {
                    for (i, e) in v.iter().take(cap).enumerate() {
                        check_entry(
                            &entry_at(&buf, offset, i),
                            e,
                            &format!("{context}, entry {i}"),
                        );
                    }
                    v.len().min(cap)
                }
                // On error, entries within cap may have been written.
                Err(_) => cap,
            };
            let untouched_from = offset + written * size;
            assert!(
                buf[..offset].iter().all(|&b| b == CANARY),
                "{context}: wrote before the array"
            );
            assert!(
                buf[untouched_from..].iter().all(|&b| b == CANARY),
                "{context}: wrote past entry {written}"
            );
        }
    }
}

// ---- Mutations. ----

fn single_byte_mutations(seed: &[u8], mut each: impl FnMut(&[u8])) {
    let mut m = Vec::with_capacity(seed.len() + 2);
    for pos in 0..=seed.len() {
        for &b in ALPHABET {
            if pos < seed.len() {
                m.clear();
                m.extend_from_slice(seed);
                m[pos] = b;
                each(&m);
            }
            m.clear();
            m.extend_from_slice(&seed[..pos]);
            m.push(b);
            m.extend_from_slice(&seed[pos..]);
            each(&m);
        }
        if pos < seed.len() {
            m.clear();
            m.extend_from_slice(seed);
            m.remove(pos);
            each(&m);
            m.clear();
            m.extend_from_slice(seed);
            m.insert(pos, seed[pos]);
            each(&m);
            if pos + 1 < seed.len() {
                m.clear();
                m.extend_from_slice(seed);
                m.swap(pos, pos + 1);
                each(&m);
            }
        }
    }
}

/// xorshift64*, fixed seed: the same inputs on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn random_input(rng: &mut Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    if rng.below(8) == 0 {
        // Pure noise from the alphabet.
        return (0..rng.below(48))
            .map(|_| ALPHABET[rng.below(ALPHABET.len())])
            .collect();
    }
    let mut m = seeds[rng.below(seeds.len())].clone();
    for _ in 0..1 + rng.below(6) {
        let pos = rng.below(m.len() + 1);
        match rng.below(5) {
            0 if pos < m.len() => m[pos] = ALPHABET[rng.below(ALPHABET.len())],
            1 => m.insert(pos, ALPHABET[rng.below(ALPHABET.len())]),
            2 if pos < m.len() => {
                m.remove(pos);
            }
            3 if pos < m.len() => {
                // Duplicate a run.
                let end = (pos + 1 + rng.below(12)).min(m.len());
                let run = m[pos..end].to_vec();
                m.splice(pos..pos, run);
            }
            _ => {
                // Splice in a piece of another seed.
                let other = &seeds[rng.below(seeds.len())];
                let start = rng.below(other.len() + 1);
                let end = (start + rng.below(16)).min(other.len());
                m.splice(pos..pos, other[start..end].iter().copied());
            }
        }
    }
    m
}

#[test]
fn reference_agrees_with_documented_examples() {
    let names = |s: &str| {
        reference(s.as_bytes()).map(|v| v.into_iter().map(|e| (e.name, e.fd)).collect::<Vec<_>>())
    };
    assert_eq!(
        names("/a=b=7; 80 = 3 ;"),
        Ok(vec![(b"/a=b".to_vec(), 7), (b"80".to_vec(), 3)])
    );
    assert_eq!(names(""), Ok(vec![]));
    assert_eq!(names("80=3;;81=4"), Err(SERVER_STARTER_EMALFORMED));
    assert_eq!(names("80=3\0;junk"), Ok(vec![(b"80".to_vec(), 3)]));
}

#[test]
fn every_single_byte_mutation_and_random_ones() {
    let seeds = seeds();
    let mut stats = Stats::default();
    for seed in &seeds {
        check(seed, &mut stats);
        single_byte_mutations(seed, |m| check(m, &mut stats));
    }
    let exhaustive = stats.inputs;
    let mut rng = Rng(0x5eed_5eed_5eed_5eed);
    for _ in 0..RANDOM_INPUTS {
        let input = random_input(&mut rng, &seeds);
        check(&input, &mut stats);
    }
    eprintln!(
        "parser mutation run: {} inputs ({exhaustive} exhaustive single-byte mutations of {} seeds, {RANDOM_INPUTS} \
         random), {} calls ({} into unaligned arrays); results: {} ok ({} with listeners, up to {} in one input), {} \
         malformed, {} name too long",
        stats.inputs,
        seeds.len(),
        stats.calls,
        stats.unaligned,
        stats.ok,
        stats.ok_nonempty,
        stats.max_count,
        stats.malformed,
        stats.too_long
    );
    // The run must reach every outcome, or it proves little.
    assert!(stats.ok_nonempty > 1000 && stats.malformed > 1000 && stats.too_long > 100);
    assert!(stats.max_count > *CAPS.iter().max().unwrap() / 2);
}
