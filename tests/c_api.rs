//! The C API as C programs see it: tests/c/*.c compiled against
//! include/server_starter.h and the release library that `make lib` builds,
//! linked statically and dynamically, and run against real inherited sockets.
//!
//! These tests do not build the library (a test that runs cargo inside cargo
//! would fight over the build lock): run `make lib` first (`make test` does).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");

/// The API, exactly: the shared library must export these and nothing else.
const EXPORTS: &[&str] = &[
    "server_starter_find",
    "server_starter_generation",
    "server_starter_listeners",
    "server_starter_notify",
    "server_starter_parse",
    "server_starter_strerror",
    "server_starter_version",
];

fn release_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| Path::new(MANIFEST_DIR).join("target"), PathBuf::from);
    target.join("release")
}

/// The release library `name`, which must exist and be newer than the library's
/// sources (else this would test stale code).
fn library(name: &str) -> PathBuf {
    let path = release_dir().join(name);
    let built = match std::fs::metadata(&path).and_then(|m| m.modified()) {
        Ok(time) => time,
        Err(e) => panic!("{}: {e}: run `make lib` first", path.display()),
    };
    for source in [
        "src/lib.rs",
        "src/ffi.rs",
        "src/notify.rs",
        "src/parse.rs",
        "src/query.rs",
        "src/sys.rs",
    ] {
        let source_path = Path::new(MANIFEST_DIR).join(source);
        let modified = std::fs::metadata(&source_path)
            .and_then(|m| m.modified())
            .unwrap();
        assert!(
            modified <= built,
            "{} is older than {source}: run `make lib` first",
            path.display()
        );
    }
    path
}

/// A fresh directory for this test's build products, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let dir = std::env::temp_dir().join(format!(
            "server_starter-c_api-{tag}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn cc() -> Command {
    let mut cmd = Command::new(std::env::var_os("CC").unwrap_or_else(|| "cc".into()));
    cmd.current_dir(MANIFEST_DIR)
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-Iinclude"]);
    cmd
}

/// Runs a test program with an environment free of the variables it sets itself.
fn run_test_program(exe: &Path, library_path: Option<&Path>) -> String {
    let mut cmd = Command::new(exe);
    for var in [
        "SERVER_STARTER_PORT",
        "SERVER_STARTER_GENERATION",
        "LISTEN_PID",
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
    ] {
        cmd.env_remove(var);
    }
    if let Some(dir) = library_path {
        cmd.env("LD_LIBRARY_PATH", dir);
    }
    let out = run(&mut cmd);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!stdout.contains("FAIL"), "{stdout}");
    assert!(
        stdout.contains("notify: ") && stdout.contains("starter: ") && stdout.contains("systemd: "),
        "every stage ran:\n{stdout}"
    );
    assert!(stdout.trim_end().ends_with("ALL OK"), "{stdout}");
    stdout
}

#[test]
fn c_program_linked_statically() {
    let archive = library("libserver_starter.a");
    let dir = TempDir::new("static");
    let exe = dir.0.join("listeners_test");
    // The archive alone: built without std, it needs nothing but libc.
    run(cc()
        .arg("tests/c/listeners_test.c")
        .arg(&archive)
        .arg("-o")
        .arg(&exe));
    let stdout = run_test_program(&exe, None);
    eprintln!("{stdout}");
}

#[test]
fn c_program_linked_dynamically() {
    library("libserver_starter.a");
    let shared = library("libserver_starter.so");
    let dir = TempDir::new("shared");
    // The linker wants libserver_starter.so, the loader the soname.
    for link in ["libserver_starter.so", "libserver_starter.so.0"] {
        std::os::unix::fs::symlink(&shared, dir.0.join(link)).unwrap();
    }
    let exe = dir.0.join("listeners_test");
    run(cc()
        .arg("tests/c/listeners_test.c")
        .arg("-L")
        .arg(&dir.0)
        .arg("-lserver_starter")
        .arg("-o")
        .arg(&exe));
    let needed = run(Command::new("objdump").arg("-p").arg(&exe));
    assert!(
        String::from_utf8_lossy(&needed.stdout)
            .contains("NEEDED               libserver_starter.so.0"),
        "the program must need the soname, not the file name"
    );
    let stdout = run_test_program(&exe, Some(&dir.0));
    eprintln!("{stdout}");
}

#[test]
fn shared_library_exports_only_the_api() {
    library("libserver_starter.a");
    let shared = library("libserver_starter.so");
    let out = run(Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&shared));
    let mut symbols: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().last().map(str::to_owned))
        .collect();
    symbols.sort();
    assert!(
        symbols.iter().all(|s| s.starts_with("server_starter_")),
        "unexpected exports: {symbols:?}"
    );
    assert_eq!(symbols, EXPORTS, "exported symbols");
}

/// The library is built without std, so nothing of Rust's runtime may be left for
/// the loader to find: `dlopen` (Python's ctypes) fails on any undefined symbol
/// that libc does not define, such as the unwinder's `rust_eh_personality`.
#[test]
fn shared_library_needs_only_libc() {
    let shared = library("libserver_starter.so");
    let out = run(Command::new("nm")
        .args(["-D", "--undefined-only"])
        .arg(&shared));
    let undefined: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|line| line.trim_start().starts_with("U "))
        .filter_map(|line| line.split_whitespace().last().map(str::to_owned))
        .collect();
    let foreign: Vec<&String> = undefined
        .iter()
        .filter(|s| s.starts_with("rust_") || s.starts_with("_Unwind") || s.starts_with("__rust"))
        .collect();
    assert!(
        foreign.is_empty(),
        "undefined Rust runtime symbols: {foreign:?}"
    );
    let out = run(Command::new("objdump").arg("-p").arg(&shared));
    let needed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim_start().starts_with("NEEDED"))
        .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
        .collect();
    assert!(
        !needed.is_empty() && needed.iter().all(|lib| lib.starts_with("libc.so")),
        "libraries needed besides libc: {needed:?}"
    );
}

#[test]
fn shared_library_has_soname() {
    library("libserver_starter.a");
    let shared = library("libserver_starter.so");
    let out = run(Command::new("objdump").arg("-p").arg(&shared));
    let text = String::from_utf8_lossy(&out.stdout);
    let soname = text
        .lines()
        .find(|l| l.trim_start().starts_with("SONAME"))
        .map(|l| l.split_whitespace().last());
    assert_eq!(
        soname,
        Some(Some("libserver_starter.so.0")),
        "objdump -p:\n{text}"
    );
}

#[test]
fn header_is_valid_c99_and_cxx() {
    let dir = TempDir::new("header");
    let source = dir.0.join("header.c");
    std::fs::write(
        &source,
        "#include \"server_starter.h\"\n\
         typedef char name_fits[sizeof(((server_starter_listener *)0)->name) == SERVER_STARTER_NAME_MAX ? 1 : -1];\n\
         static const char version[] = SERVER_STARTER_VERSION_STRING;\n\
         int main(void) { return server_starter_find(version) == SERVER_STARTER_ENOTSET ? 0 : (int)sizeof(name_fits); }\n",
    )
    .unwrap();
    let include = Path::new(MANIFEST_DIR).join("include");
    run(Command::new("cc")
        .args([
            "-std=c99",
            "-pedantic",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-fsyntax-only",
            "-I",
        ])
        .arg(&include)
        .arg(&source));
    run(Command::new("c++")
        .args([
            "-std=c++11",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-fsyntax-only",
            "-x",
            "c++",
            "-I",
        ])
        .arg(&include)
        .arg(&source));
}
