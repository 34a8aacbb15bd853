//! Which build this is: the git commit it was built from (`build.rs`), or, built
//! from elsewhere, a hash of the binary itself, so that two builds of one version can
//! be told apart (`--version`, `--status`, the upgrade's log line).

use std::io::Read;
use std::sync::OnceLock;

/// The build id: `git:COMMIT`, or `fnv1a64:HASH` of the running image (read through
/// /proc/self/exe, which is this image even when its file was replaced since), or
/// `unknown` if it cannot be read. Computed once, when first asked.
pub fn id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| match option_env!("SERVER_STARTER_COMMIT") {
        Some(commit) => format!("git:{commit}"),
        None => match hash_file("/proc/self/exe") {
            Some(hash) => format!("fnv1a64:{hash:016x}"),
            None => "unknown".into(),
        },
    })
}

/// The version and the build, as the upgrade's log line names each side.
pub fn identity() -> String {
    format!("{} (build {})", crate::upgrade::VERSION, id())
}

fn hash_file(path: &str) -> Option<u64> {
    let mut file = std::fs::File::open(path).ok()?;
    let mut hash = Fnv::default();
    let mut buf = [0u8; 8192];
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Some(hash.0),
            Ok(n) => hash.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// FNV-1a, 64 bits: small and enough to tell builds apart (not a defence against
/// anyone who would forge one).
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_as_published() {
        let hash = |s: &[u8]| {
            let mut h = Fnv::default();
            h.update(s);
            h.0
        };
        assert_eq!(hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(hash(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn an_id_either_way() {
        let id = id();
        assert!(id.starts_with("git:") || id.starts_with("fnv1a64:"), "{id}");
    }
}
