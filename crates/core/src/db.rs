//! Database connections: error texts safe to show (never anything from the connection
//! string), and a warning for a connection whose server is not authenticated.

use sqlx::postgres::{PgConnectOptions, PgSslMode};
use std::collections::BTreeSet;
use std::sync::Mutex;

const TLS_HINT: &str =
    " (`sslmode` and `sslrootcert` in the connection URL choose how the server is checked)";

/// A database error without anything from the connection string (user, password, host).
pub fn redact_db_error(e: &sqlx::Error) -> String {
    let strict = |s: String, instead: &str| {
        // sqlx error texts do not carry URLs, but be strict: no '@' or "://".
        if s.contains("://") || s.contains('@') {
            instead.to_string()
        } else {
            s
        }
    };
    match e {
        sqlx::Error::Database(d) => d.message().to_string(),
        // A failed TLS handshake reaches sqlx as an I/O error carrying rustls' own.
        sqlx::Error::Io(io) => match io.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
            Some(t) => strict(format!("TLS error: {t}{TLS_HINT}"), "TLS error"),
            // The system's words (`failed to lookup address information: Name or service not
            // known`, `Connection refused`): a kind alone says `uncategorized error` for both.
            None => strict(
                format!("network error: {io}"),
                &format!("network error: {}", io.kind()),
            ),
        },
        // What failed in the handshake (`invalid peer certificate: UnknownIssuer`, a name the
        // certificate is not valid for, a server without TLS): the fix depends on it.
        sqlx::Error::Tls(t) => strict(format!("TLS error: {t}{TLS_HINT}"), "TLS error"),
        sqlx::Error::PoolTimedOut => "timed out".into(),
        // What is wrong with the settings (`unknown value "verify-fulll" for `ssl_mode``): sqlx
        // names the setting and the value given, never the password.
        sqlx::Error::Configuration(c) => strict(
            format!("bad connection settings: {c}"),
            "bad connection settings",
        ),
        other => strict(other.to_string(), "connection failed"),
    }
}

/// To be called before every PostgreSQL connection is opened: names ring as the process's
/// TLS provider, and warns, once per server in a process, when a connection to another machine
/// does not authenticate the server: records and credentials would cross the network to
/// whoever answers, readable or alterable on the way when TLS is not required either. `what`
/// names the connection (`sink trades`), never its URL.
///
/// sqlx checks a certificate without its name (`sslmode=verify-ca`) with the process's
/// provider, and rustls has none of its own when, as here, it is built with two (ring and
/// aws-lc-rs, asked for by different dependencies): that check would panic without this.
pub fn before_connect(opts: &PgConnectOptions, what: &str) {
    static PROVIDER: std::sync::Once = std::sync::Once::new();
    PROVIDER.call_once(|| {
        // Fails only when a library installed one first: that one serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    let Some(server) = unauthenticated_server(opts) else {
        return;
    };
    static SAID: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let first = SAID
        .lock()
        .map(|mut s| s.insert(server.clone()))
        .unwrap_or(true);
    if first {
        let mode = match opts.get_ssl_mode() {
            PgSslMode::Disable => "disable: no TLS",
            PgSslMode::Allow => "allow: TLS only if the server asks for it",
            PgSslMode::Prefer => "prefer, the default: TLS if the server offers it, unchecked",
            PgSslMode::Require => "require: TLS, but any certificate is accepted",
            PgSslMode::VerifyCa | PgSslMode::VerifyFull => "",
        };
        tracing::warn!(
            connection = %what,
            %server,
            "the PostgreSQL server is not authenticated (sslmode={mode}): whoever answers at its address receives the records and credentials; add `sslmode=verify-full` to the connection URL (with `sslrootcert=PATH` for a private certificate authority)"
        );
    }
}

/// `host:port` of a connection that leaves the machine (not a Unix socket, not a loopback
/// address) with an `sslmode` below `verify-ca`; `None` for any other.
fn unauthenticated_server(opts: &PgConnectOptions) -> Option<String> {
    if opts.get_socket().is_some()
        || matches!(
            opts.get_ssl_mode(),
            PgSslMode::VerifyCa | PgSslMode::VerifyFull
        )
    {
        return None;
    }
    let host = opts.get_host();
    let local = host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    (!local).then(|| format!("{host}:{}", opts.get_port()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    /// A URL's wrong setting is named, with the value given; nothing else of the URL is shown.
    #[test]
    fn a_wrong_connection_setting_is_named_without_the_url() {
        let e = PgConnectOptions::from_str("postgres://u:Sup3rS3cret@db/x?sslmode=verify-fulll")
            .unwrap_err();
        let shown = redact_db_error(&e);
        assert!(
            shown.starts_with("bad connection settings: ") && shown.contains("verify-fulll"),
            "{shown}"
        );
        assert!(
            !shown.contains("Sup3rS3cret") && !shown.contains("db/x"),
            "{shown}"
        );
        let e = PgConnectOptions::from_str("postgres://u:Sup3rS3cret@db:99999/x").unwrap_err();
        let shown = redact_db_error(&e);
        assert!(!shown.contains("Sup3rS3cret"), "{shown}");
    }

    /// Network errors say what the system said, a failed handshake what rustls said; a text
    /// that could hold a URL falls back to the error's kind.
    #[test]
    fn network_and_tls_errors_say_what_failed() {
        use std::io::{Error, ErrorKind};
        let io = |e: Error| redact_db_error(&sqlx::Error::Io(e));
        assert_eq!(
            io(Error::other(
                "failed to lookup address information: Name or service not known"
            )),
            "network error: failed to lookup address information: Name or service not known"
        );
        assert_eq!(
            io(Error::other("cannot reach postgres://u:pw@db/x")),
            "network error: other error"
        );
        let tls = io(Error::new(
            ErrorKind::InvalidData,
            rustls::Error::General("handshake refused".into()),
        ));
        assert!(
            tls.starts_with("TLS error: unexpected error: handshake refused (`sslmode`"),
            "{tls}"
        );
    }

    /// Only a connection that leaves the machine without checking the server's certificate is
    /// warned about.
    #[test]
    fn only_unauthenticated_remote_servers_are_warned_about() {
        for (url, warned) in [
            ("postgres://u@db.example.com/x", Some("db.example.com:5432")),
            (
                "postgres://u@db.example.com:6432/x?sslmode=require",
                Some("db.example.com:6432"),
            ),
            (
                "postgres://u@10.1.2.3/x?sslmode=disable",
                Some("10.1.2.3:5432"),
            ),
            ("postgres://u@10.1.2.3/x?sslmode=verify-ca", None),
            ("postgres://u@db.example.com/x?sslmode=verify-full", None),
            ("postgres://u@127.0.0.1/x", None),
            ("postgres://u@127.0.0.2/x", None),
            ("postgres://u@LOCALHOST/x?sslmode=disable", None),
            ("postgres://u@[::1]/x", None),
            ("postgres://u@%2Fvar%2Frun%2Fpostgresql/x", None),
        ] {
            let o = PgConnectOptions::from_str(url).unwrap();
            assert_eq!(unauthenticated_server(&o).as_deref(), warned, "{url}");
            // Said at most once per server, and never panics.
            before_connect(&o, "test");
            before_connect(&o, "test");
        }
    }
}
