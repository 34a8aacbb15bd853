//! `server_starter::notify`, the Rust face of sd_notify, against real sockets
//! this test binds: what arrives, from whom, and every way it fails.
//!
//! `notify` reads NOTIFY_SOCKET from this process's environment, so each test
//! sets it while holding `ENV`: the tests of this binary run in parallel threads.

use std::io::ErrorKind;
use std::sync::Mutex;
use std::time::Duration;

mod common;

use common::notify::NotifySocket;
use common::TempDir;

static ENV: Mutex<()> = Mutex::new(());

/// Calls `server_starter::notify(state)` with NOTIFY_SOCKET set to `socket`
/// (unset for None).
fn notify_with(socket: Option<&str>, state: &str) -> std::io::Result<bool> {
    let _guard = ENV.lock().unwrap_or_else(|e| e.into_inner());
    match socket {
        Some(value) => std::env::set_var("NOTIFY_SOCKET", value),
        None => std::env::remove_var("NOTIFY_SOCKET"),
    }
    let result = server_starter::notify(state);
    std::env::remove_var("NOTIFY_SOCKET");
    result
}

/// The message is queued by the time `notify` returns: nothing to wait for.
const NO_WAIT: Duration = Duration::from_millis(1);

#[test]
fn without_notify_socket_nothing_is_sent() {
    assert!(!notify_with(None, "READY=1").unwrap());
    assert!(!notify_with(Some(""), "READY=1").unwrap());
}

#[test]
fn abstract_socket_gets_exactly_the_state_and_the_senders_credentials() {
    let receiver = NotifySocket::new_abstract();
    let state = "READY=1\nSTATUS=serving 3 listeners";
    assert!(notify_with(Some(&receiver.env), state).unwrap());
    let got = receiver.recv(NO_WAIT).expect("the notification");
    assert_eq!(got.text, state);
    assert!(got.has("READY=1") && got.has("STATUS=serving 3 listeners"));
    // What start_server relies on to tell whose READY=1 it is.
    assert_eq!(got.pid, std::process::id() as i32);
    // SAFETY: geteuid has no preconditions.
    assert_eq!(got.uid, unsafe { libc::geteuid() });
    assert!(receiver.try_recv().is_err(), "one datagram per call");
}

#[test]
fn path_socket_gets_each_message_as_a_datagram_of_its_own() {
    let dir = TempDir::new("notify");
    let path = dir.path().join("notify.sock");
    let receiver = NotifySocket::at_path(&path);
    for state in ["WATCHDOG=1", "STOPPING=1"] {
        assert!(notify_with(Some(&receiver.env), state).unwrap());
    }
    for state in ["WATCHDOG=1", "STOPPING=1"] {
        let got = receiver.recv(NO_WAIT).expect("the notification");
        assert_eq!(
            (got.text.as_str(), got.pid),
            (state, std::process::id() as i32)
        );
    }
}

#[test]
fn nobody_listening_is_an_error_naming_the_socket() {
    let dir = TempDir::new("notify");
    let path = dir.path().join("gone.sock");
    let receiver = NotifySocket::at_path(&path);
    let abstract_receiver = NotifySocket::new_abstract();
    let abstract_env = abstract_receiver.env.clone();
    drop((receiver, abstract_receiver));

    // The file is left behind, with nobody bound to it.
    let path = path.display().to_string();
    let e = notify_with(Some(&path), "READY=1").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    assert!(e.to_string().contains(&path), "{e}");
    std::fs::remove_file(&path).unwrap();
    let e = notify_with(Some(&path), "READY=1").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");

    let e = notify_with(Some(&abstract_env), "READY=1").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
}

#[test]
fn what_is_not_an_address_is_invalid_input() {
    for value in ["notify.sock", "@", "x", "vsock:2:1"] {
        let e = notify_with(Some(value), "READY=1").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidInput, "{value}: {e}");
        assert!(
            e.to_string()
                .contains(&format!("NOTIFY_SOCKET=\"{value}\"")),
            "{e}"
        );
    }
    // sun_path holds 108 bytes: a path and its NUL, or a NUL and a name.
    let too_long = std::io::Error::from_raw_os_error(libc::ENAMETOOLONG).kind();
    for value in [
        format!("/{}", "x".repeat(107)),
        format!("@{}", "x".repeat(108)),
    ] {
        let e = notify_with(Some(&value), "READY=1").unwrap_err();
        assert_eq!(e.kind(), too_long, "{e}");
        assert!(e.to_string().contains("too long"), "{e}");
    }
    // One byte less fits: then nobody is there.
    let e = notify_with(Some(&format!("@{}", "x".repeat(107))), "READY=1").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
}

#[test]
fn a_nul_in_the_state_is_refused_before_sending() {
    let receiver = NotifySocket::new_abstract();
    let e = notify_with(Some(&receiver.env), "READY=1\0").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidInput, "{e}");
    assert!(receiver.try_recv().is_err(), "nothing was sent");
}
