//! The committed C header must be what cbindgen generates from src/ffi.rs now.

#[test]
fn committed_header_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/include/server_starter.h");
    let committed =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
    assert!(
        committed == server_starter::GENERATED_HEADER,
        "{path} differs from the header generated from src/ffi.rs: run `make header` and commit it"
    );
}
