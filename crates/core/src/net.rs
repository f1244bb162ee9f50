//! Network addresses: whether a host is this machine.

/// Whether `host` (a name, an IP address, an IPv6 address in brackets, or a Unix socket folder)
/// is this machine: `localhost`, a loopback address or a socket path. Traffic to it never
/// crosses a network, so reaching it without TLS exposes nothing on the way.
pub fn is_this_machine(host: &str) -> bool {
    host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The environment variable that makes an unauthenticated connection to another machine an
/// error instead of a warning: a PostgreSQL `sslmode` below `verify-full`, a plain `http://`
/// OpenLineage or S3 endpoint. For administrators who must be able to say that nothing leaves
/// the machine to a server it has not authenticated.
pub const REQUIRE_VERIFIED_TLS: &str = "SEALTRAIL_REQUIRE_VERIFIED_TLS";

/// Whether [`REQUIRE_VERIFIED_TLS`] is set to `1`, `true` or `yes` (read once per process).
fn verified_tls_required() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var(REQUIRE_VERIFIED_TLS)
            .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
    })
}

/// A connection to another machine that would not authenticate its server: refused under
/// [`REQUIRE_VERIFIED_TLS`], otherwise warned about once per server and process. `server` names
/// it (`the PostgreSQL server at db:5432`), `how` says how it is reached (`sslmode=require`,
/// `plain http://`), `exposed` what would reach whoever answers at its address, `fix` what to
/// change. The one place PostgreSQL, OpenLineage and S3 connections decide this.
pub fn unauthenticated(server: &str, how: &str, exposed: &str, fix: &str) -> Result<(), String> {
    if verified_tls_required() {
        return Err(format!(
            "{server} would be reached without authenticating it ({how}), which {REQUIRE_VERIFIED_TLS} forbids; {fix}"
        ));
    }
    static SAID: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let first = SAID
        .lock()
        .map(|mut s| s.insert(server.to_string()))
        .unwrap_or(true);
    if first {
        tracing::warn!(
            "{server} is reached without authenticating it ({how}): {exposed} go to whoever answers at its address; {fix}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_loopback_names_addresses_and_sockets_are_this_machine() {
        for (host, local) in [
            ("localhost", true),
            ("LOCALHOST", true),
            ("127.0.0.1", true),
            ("127.0.0.2", true),
            ("[::1]", true),
            ("::1", true),
            ("/var/run/postgresql", true),
            ("10.1.2.3", false),
            ("db.example.com", false),
            ("localhost.example.com", false),
            ("", false),
        ] {
            assert_eq!(super::is_this_machine(host), local, "{host}");
        }
    }
}
