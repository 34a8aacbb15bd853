//! Generates the C header from `src/ffi.rs` with cbindgen.
//!
//! The header is written to `$OUT_DIR/server_starter.h` on every build. The copy
//! committed at `include/server_starter.h` is refreshed only when
//! `SERVER_STARTER_UPDATE_HEADER=1` (what `make header` sets), so that the test
//! `header_is_current` can notice a committed header that has drifted from the code.
//!
//! Built from a git checkout of this crate, the commit becomes start_server's build id
//! (`SERVER_STARTER_COMMIT`); otherwise start_server hashes its own binary when asked.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let crate_dir =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));

    println!("cargo:rerun-if-changed=src/ffi.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-env-changed=SERVER_STARTER_UPDATE_HEADER");

    // The shared library's soname, so that `libserver_starter.so.0` links are meaningful.
    let major = env::var("CARGO_PKG_VERSION_MAJOR").expect("cargo sets the version");
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libserver_starter.so.{major}");

    commit(&crate_dir);

    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("cbindgen.toml is readable and valid");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/ffi.rs"))
        .generate()
        .expect("cbindgen can generate the header from src/ffi.rs");
    bindings.write_to_file(out_dir.join("server_starter.h"));
    if env::var("SERVER_STARTER_UPDATE_HEADER").as_deref() == Ok("1") {
        bindings.write_to_file(crate_dir.join("include/server_starter.h"));
    }
}

/// The commit checked out, for `start_server --version`, if the crate is built from a
/// git checkout of its own (not from a tarball, nor vendored into another repository).
/// The build runs again when HEAD moves: HEAD itself, the ref it names, packed refs.
fn commit(crate_dir: &Path) {
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(crate_dir)
            .args(args)
            .output()
            .ok()?;
        let text = String::from_utf8(out.stdout).ok()?;
        out.status.success().then(|| text.trim().to_string())
    };
    let ours = git(&["rev-parse", "--show-toplevel"])
        .and_then(|top| Path::new(&top).canonicalize().ok())
        .zip(crate_dir.canonicalize().ok())
        .is_some_and(|(top, dir)| top == dir);
    let Some(commit) = ours.then(|| git(&["rev-parse", "HEAD"])).flatten() else {
        return;
    };
    let mut watched = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    if let Some(name) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(git(&["rev-parse", "--git-path", &name]));
    }
    watched.push(git(&["rev-parse", "--git-path", "packed-refs"]));
    for path in watched.into_iter().flatten() {
        let path = crate_dir.join(path);
        // A path that does not exist would make every build run this again.
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    println!("cargo:rustc-env=SERVER_STARTER_COMMIT={commit}");
}
