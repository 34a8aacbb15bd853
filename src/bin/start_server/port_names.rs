//! What a listener's name must be for `SERVER_STARTER_PORT` to carry it to the workers.
//! Checked at start, before anything is created: a name the workers' parsers reject
//! or misread would fail every worker, and only once it is running.

/// Why `name` (a `--port`'s name, or a `--path`) cannot be a name in
/// `SERVER_STARTER_PORT`, if it cannot.
pub fn check(name: &str) -> Result<(), String> {
    if name.contains(';') {
        return Err("';' separates the entries of SERVER_STARTER_PORT".into());
    }
    // Ours takes the descriptor after the last '=', but Server::Starter's own parser
    // (and those modelled on it) split at the first.
    if name.contains('=') {
        return Err("'=' separates a name from its descriptor in SERVER_STARTER_PORT".into());
    }
    if name.chars().any(char::is_control) {
        return Err("SERVER_STARTER_PORT cannot carry control characters".into());
    }
    // The rest is what this crate's own parser, which the workers use, makes of the
    // entry: it must read back as this very name.
    let entry = format!("{name}=3");
    let mut entries = server_starter::parse::Entries::new(entry.as_bytes());
    match (entries.next(), entries.next()) {
        (Some(Ok(e)), None) if e.name == name.as_bytes() && e.fd == 3 => Ok(()),
        (Some(Err(e)), _) => Err(format!("workers cannot parse it: {}", e.reason)),
        _ => Err(
            "workers would read another name (they drop leading and trailing whitespace)".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn names() {
        for good in [
            "80",
            "127.0.0.1:8080",
            "[::1]:80",
            "/run/app.sock",
            "/tmp/a b.sock",
        ] {
            assert_eq!(check(good), Ok(()), "{good}");
        }
        let long = format!("/{}", "x".repeat(271));
        for bad in [
            "/tmp/a;b",
            "/tmp/a=b",
            "/tmp/a\nb",
            "/tmp/\t",
            "/tmp/\u{7f}",
            "",
            " /tmp/a",
            "/tmp/a ",
            &long,
        ] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
        assert_eq!(check(&long[..271]), Ok(()));
    }
}
