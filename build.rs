//! Generates the C header from `src/ffi.rs` with cbindgen.
//!
//! The header is written to `$OUT_DIR/server_starter.h` on every build. The copy
//! committed at `include/server_starter.h` is refreshed only when
//! `SERVER_STARTER_UPDATE_HEADER=1` (what `make header` sets), so that the test
//! `header_is_current` can notice a committed header that has drifted from the code.

use std::env;
use std::path::PathBuf;

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
