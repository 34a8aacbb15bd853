//! The Debian package as a user meets it: `contrib/debian/build-deb` (what `make deb`
//! runs) builds it from this build, lintian finds no error in it, and dpkg installs
//! it, then purges it.
//!
//! dpkg works in a root of its own (`--root`, with its own database), never on the
//! machine's: the package diverts /usr/bin/start_server, which on this machine is
//! Perl's original, run by other tests at the same time. That root first gets Perl's
//! start_server as Debian packages it (libserver-starter-perl's path, the machine's
//! own script), so that the diversion is exercised too. The maintainer scripts run
//! outside a chroot (`--force-script-chrootless`, with DPKG_ROOT set for
//! dpkg-divert), and libc6 is not in that database (`--force-depends`).
//!
//! The package tests are root only (dpkg) and need dpkg-dev, lintian, gcc and
//! pkg-config (.ci/run installs them); skipped with a message otherwise. Last, `make
//! install` on its own: it copies what `make` built, with no cargo on PATH.

mod common;
mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{repo_root, TempDir};
use support::*;

const PACKAGE: &str = "server-starter";
/// Building and checking a package reads and writes a few MB; lintian alone takes
/// seconds on an idle machine.
const SLOW: Duration = Duration::from_secs(180);

/// Why this machine cannot run these tests, if it cannot.
fn cannot_run() -> Option<String> {
    if !is_root() {
        return Some("dpkg installs as root only".into());
    }
    for (program, package) in [
        ("dpkg-deb", "dpkg"),
        ("dpkg-architecture", "dpkg-dev"),
        ("dpkg-shlibdeps", "dpkg-dev"),
        ("lintian", "lintian"),
        ("cc", "gcc"),
        ("pkg-config", "pkg-config"),
        ("readelf", "binutils"),
    ] {
        if !have(program) {
            return Some(format!(
                "{program} is not installed (apt-get install {package})"
            ));
        }
    }
    None
}

/// Runs `cmd`, which must succeed; its standard output.
fn run(cmd: Command) -> String {
    let what = format!("{cmd:?}");
    let Output {
        status,
        stdout,
        stderr,
    } = run_command_within(cmd, SLOW);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    );
    assert!(status.success(), "{what}: {status}\n{stdout}\n{stderr}");
    stdout
}

fn command(program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args);
    cmd
}

/// The package, built from what `make` built into a temp dir; None (the test skips)
/// where this machine cannot run the tests.
fn build_deb() -> Option<(TempDir, PathBuf)> {
    if let Some(why) = cannot_run() {
        eprintln!("skipped: {why}");
        return None;
    }
    let dir = TempDir::new("deb");
    let mut cmd = Command::new(repo_root().join("contrib/debian/build-deb"));
    cmd.arg(dir.path().join("out")).current_dir(repo_root());
    let out = run(cmd);
    let deb = PathBuf::from(out.lines().last().unwrap_or_default());
    assert!(deb.is_file(), "build-deb printed {out:?}");
    Some((dir, deb))
}

fn multiarch() -> String {
    run(command("dpkg-architecture", &["-qDEB_HOST_MULTIARCH"]))
        .trim()
        .to_string()
}

/// An empty dpkg database under `root`.
fn dpkg_root(root: &Path) {
    let admin = root.join("var/lib/dpkg");
    for sub in ["info", "updates", "triggers"] {
        fs::create_dir_all(admin.join(sub)).unwrap();
    }
    fs::write(admin.join("status"), "").unwrap();
}

fn dpkg(root: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new("dpkg");
    cmd.arg(format!("--root={}", root.display()))
        .args(["--force-script-chrootless", "--force-depends"])
        .args(args);
    run(cmd)
}

/// libserver-starter-perl's /usr/bin/start_server, packaged as Debian does (same
/// package name and path), holding this machine's copy of the Perl script.
fn perl_package(dir: &Path) -> (PathBuf, Vec<u8>) {
    let script = fs::read("/usr/bin/start_server")
        .expect("/usr/bin/start_server, Perl's original (apt-get install libserver-starter-perl)");
    assert!(
        script.starts_with(b"#!") && String::from_utf8_lossy(&script[..64]).contains("perl"),
        "/usr/bin/start_server is not Perl's original"
    );
    let tree = dir.join("perl");
    fs::create_dir_all(tree.join("DEBIAN")).unwrap();
    fs::create_dir_all(tree.join("usr/bin")).unwrap();
    fs::write(tree.join("usr/bin/start_server"), &script).unwrap();
    fs::write(
        tree.join("DEBIAN/control"),
        "Package: libserver-starter-perl\nVersion: 0.35-2\nArchitecture: all\n\
         Maintainer: test <test@localhost>\nDescription: the Perl original's start_server\n",
    )
    .unwrap();
    run(command(
        "chmod",
        &["-R", "go-w,a+rX", &tree.display().to_string()],
    ));
    run(command(
        "chmod",
        &[
            "755",
            &tree.join("usr/bin/start_server").display().to_string(),
        ],
    ));
    let deb = dir.join("perl.deb");
    run(command(
        "dpkg-deb",
        &[
            "--root-owner-group",
            "--build",
            &tree.display().to_string(),
            &deb.display().to_string(),
        ],
    ));
    (deb, script)
}

/// Everything under `root` (directories end in /), but dpkg's own database.
fn left_in(root: &Path) -> Vec<String> {
    let admin = root.join("var/lib/dpkg");
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.strip_prefix(root).unwrap().display().to_string();
            if path == admin {
                continue;
            }
            if path.is_dir() && !path.is_symlink() {
                if !admin.starts_with(&path) {
                    found.push(format!("{name}/"));
                }
                dirs.push(path);
            } else {
                found.push(name);
            }
        }
    }
    found.sort();
    found
}

/// lintian has no error to report (the overrides it honours each say why), and the
/// control data holds what an installed library needs: the ldconfig trigger, the
/// shlibs line for packages that link it, libc in Depends.
#[test]
fn package_passes_lintian() {
    let Some((_dir, deb)) = build_deb() else {
        return;
    };
    let deb_arg = deb.display().to_string();
    // lintian exits non-zero on an error (and only then, by default).
    let report = run(command("lintian", &["--fail-on", "error", &deb_arg]));
    assert!(!report.lines().any(|l| l.starts_with("E:")), "{report}");
    let info = |part: &str| run(command("dpkg-deb", &["--info", &deb_arg, part]));
    assert_eq!(info("triggers").trim(), "activate-noawait ldconfig");
    assert!(
        info("shlibs").starts_with(&format!("libserver_starter 0 {PACKAGE} (>= ")),
        "{}",
        info("shlibs")
    );
    let depends = run(command("dpkg-deb", &["--field", &deb_arg, "Depends"]));
    assert!(depends.starts_with("libc6 (>= "), "{depends}");
}

/// The package installed: the quick start with the installed start_server and a C
/// worker built with pkg-config against the installed files (the archive through
/// server_starter-static, the .so through server_starter), a restart, Perl's
/// start_server diverted and given back, and nothing left after the purge.
#[test]
fn package_installs_serves_and_purges_clean() {
    let Some((dir, deb)) = build_deb() else {
        return;
    };
    let root = dir.path().join("root");
    dpkg_root(&root);
    let (perl_deb, perl_script) = perl_package(dir.path());
    dpkg(&root, &["--install", &perl_deb.display().to_string()]);
    dpkg(&root, &["--install", &deb.display().to_string()]);

    let bin = root.join("usr/bin/start_server");
    assert!(
        fs::read(&bin).unwrap().starts_with(b"\x7fELF"),
        "ours is not at /usr/bin"
    );
    assert_eq!(
        fs::read(root.join("usr/bin/start_server.perl")).unwrap(),
        perl_script
    );

    let libdir = root.join("usr/lib").join(multiarch());
    let lib_so = libdir.join("libserver_starter.so.0");
    let dynamic = run(command("readelf", &["-d", &lib_so.display().to_string()]));
    assert!(
        dynamic.contains("Library soname: [libserver_starter.so.0]"),
        "{dynamic}"
    );

    // A C worker as a user builds one: the example's source, the installed header and
    // libraries, found by pkg-config (the sysroot maps the .pc files' /usr into root).
    let worker = |module: &str, extra: &[&str]| -> PathBuf {
        let out = dir.path().join(module);
        let pkg_config = format!(
            "PKG_CONFIG_LIBDIR='{}/pkgconfig' PKG_CONFIG_SYSROOT_DIR='{}' pkg-config",
            libdir.display(),
            root.display()
        );
        let line = format!(
            "cc -O2 -o '{}' '{}' $({pkg_config} --cflags --libs {module}) {}",
            out.display(),
            repo_root().join("c-examples/http.c").display(),
            extra.join(" ")
        );
        run(command("sh", &["-c", &line]));
        out
    };
    let needs_lib = |program: &Path| {
        run(command("readelf", &["-d", &program.display().to_string()]))
            .contains("[libserver_starter.so.0]")
    };
    let static_worker = worker("server_starter-static", &["-Wl,--gc-sections"]);
    assert!(!needs_lib(&static_worker), "the archive was not linked in");
    let shared_worker = worker("server_starter", &[]);
    assert!(needs_lib(&shared_worker), "the .so was not linked");

    // The quick start, with the installed start_server; then the shared worker, which
    // finds the installed .so (no ldconfig in this root: LD_LIBRARY_PATH).
    let library_path = libdir.display().to_string();
    for (program, generations) in [(&static_worker, 2), (&shared_worker, 1)] {
        let program = program.display().to_string();
        let (mut server, port) = Server::start_program_retrying(
            &bin,
            |port| {
                vec![
                    format!("--port=127.0.0.1:{port}"),
                    "--".into(),
                    program.clone(),
                ]
            },
            &[("LD_LIBRARY_PATH", &library_path)],
        );
        let at = addr("127.0.0.1", port);
        wait_generation(at, 1);
        if generations == 2 {
            server.signal(libc::SIGHUP);
            wait_generation(at, 2);
        }
        server.stop();
    }

    dpkg(&root, &["--purge", PACKAGE]);
    assert_eq!(
        fs::read(&bin).expect("Perl's start_server back at /usr/bin/start_server"),
        perl_script
    );
    assert_eq!(left_in(&root), ["usr/", "usr/bin/", "usr/bin/start_server"]);
    dpkg(&root, &["--purge", "libserver-starter-perl"]);
    assert_eq!(left_in(&root), Vec::<String>::new());
}

/// `make install` copies what `make` built and runs nothing else, so that it works
/// with a PATH that has no cargo (sudo's); it names what is not built and what to do.
#[test]
fn make_install_copies_only_what_make_built() {
    let dir = TempDir::new("install");
    let dest = dir.path().join("dest");
    let make = |extra: &[&str]| {
        let mut cmd = Command::new("make");
        cmd.args(["--no-print-directory", "-C"])
            .arg(repo_root())
            .args(["install", "PREFIX=/usr"])
            .arg(format!("DESTDIR={}", dest.display()))
            .args(extra)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        cmd
    };
    run(make(&[]));
    for file in [
        "bin/start_server",
        "lib/libserver_starter.a",
        "lib/libserver_starter.so.0",
        "lib/libserver_starter.so",
        "include/server_starter.h",
        "share/man/man1/start_server.1",
    ] {
        assert!(dest.join("usr").join(file).exists(), "{file} not installed");
    }
    // The static module names the archive itself: -lserver_starter would pick the .so.
    let libdir = dest.join("usr/lib");
    let mut pkg_config = command("pkg-config", &["--libs", "server_starter-static"]);
    pkg_config
        .env("PKG_CONFIG_LIBDIR", libdir.join("pkgconfig"))
        .env("PKG_CONFIG_SYSROOT_DIR", &dest);
    let libs = run(pkg_config);
    assert_eq!(
        libs.split_whitespace().collect::<Vec<_>>(),
        [&format!("-L{}", libdir.display()), "-l:libserver_starter.a"]
    );

    let out = run_command_within(make(&["BIN=build/not-built"]), SLOW);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("build/not-built is not built: run `make` first"),
        "{stderr}"
    );
}
