//! Database connections: URLs checked for what the driver would not honour, error texts safe
//! to show (never anything from the connection string), and a warning for a connection whose
//! server is not authenticated.

use sqlx::postgres::{PgConnectOptions, PgSslMode};
use std::str::FromStr;

const TLS_HINT: &str =
    " (`sslmode` and `sslrootcert` in the connection URL choose how the server is checked)";

/// Where a state store or database URL points, to name it in a message: a SQLite URL as given
/// (a file), a server's database by its name alone (nothing else of a connection string is
/// shown, as in [`redact_db_error`]).
pub fn url_location(url: &str) -> String {
    if url.starts_with("sqlite:") {
        return url.to_string();
    }
    match url::Url::parse(url) {
        Ok(u) => format!(
            "the PostgreSQL database `{}`",
            u.path().trim_start_matches('/')
        ),
        Err(_) => "a database URL that does not parse".to_string(),
    }
}

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
        // A data exception (SQLSTATE class 22: `invalid input syntax for type integer: "..."`,
        // `value "..." is out of range`, `invalid input value for enum e: "..."`) quotes the
        // value, which may be personal data bound for a log or the ledger: it is withheld.
        sqlx::Error::Database(d) if d.code().is_some_and(|c| c.starts_with("22")) => {
            withhold_quoted(d.message())
        }
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

/// `message` with everything from its first `"` to its last replaced by `"…"` (a value
/// PostgreSQL quoted, and whatever quotes it holds).
fn withhold_quoted(message: &str) -> String {
    match (message.find('"'), message.rfind('"')) {
        (Some(a), Some(b)) if b > a => {
            format!(
                "{}\"…\"{} (value withheld)",
                &message[..a],
                &message[b + 1..]
            )
        }
        _ => message.to_string(),
    }
}

/// The settings sqlx's PostgreSQL driver reads from a URL's query (`options[NAME]` too). It
/// passes over any other with a warning that quotes its value, and a value can be a secret
/// (`sslpassword=...`); a setting libpq knows and the driver ignores can also weaken the
/// connection without a word (`channel_binding=require`, `sslcrl`): both are refused instead.
const URL_SETTINGS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
    // Read by sealtrail itself (libpq's meaning), and taken out before the driver sees the URL.
    "connect_timeout",
];

/// How long a connection may take to open when the URL sets no `connect_timeout`: a server that
/// accepted the connection and never answers, or an address nothing answers at, fails within
/// it instead of holding a run for minutes (the system's own TCP timeout is about two).
pub const DEFAULT_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// A checked PostgreSQL URL, ready to connect to (see [`pg_connect_options`]).
///
/// Its `Debug` shows the server and the timeout only: sqlx's options print their password, and
/// the URL holds it too.
pub struct PgTarget {
    pub options: PgConnectOptions,
    /// The URL's `connect_timeout` (seconds, libpq's meaning), if it sets one.
    pub connect_timeout: Option<std::time::Duration>,
    /// The URL without the settings sealtrail reads itself, for a driver that takes a URL.
    pub url: crate::secret::Secret,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget")
            .field("host", &self.options.get_host())
            .field("port", &self.options.get_port())
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl PgTarget {
    /// Opens one connection within the URL's `connect_timeout` ([`DEFAULT_CONNECT_TIMEOUT`]
    /// without one); the error never quotes the URL.
    pub async fn connect(&self) -> Result<sqlx::PgConnection, String> {
        use sqlx::Connection;
        let limit = self.connect_timeout.unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        match tokio::time::timeout(limit, sqlx::PgConnection::connect_with(&self.options)).await {
            Ok(r) => r.map_err(|e| redact_db_error(&e)),
            Err(_) => Err(format!(
                "no connection within {} s (`connect_timeout=SECONDS` in the connection URL sets how long to wait)",
                limit.as_secs()
            )),
        }
    }
}

/// Parses a PostgreSQL connection URL for connection `what` (`sink trades`, `the ledger`) and
/// readies the process to open it. To be called before every PostgreSQL connection. Errors say
/// what to change and never quote the URL.
///
/// Refused, where the driver (sqlx with rustls) would silently do less than libpq does with
/// the same URL:
/// - a setting it does not read (see [`URL_SETTINGS`]);
/// - `sslmode=verify-ca`: the driver checks the certificate against the system's trusted
///   authorities *and* `sslrootcert`'s, without its name, so any certificate a public
///   authority issued, for any name, would pass; `verify-full` checks the name too;
/// - `sslmode=allow`: the driver never starts TLS with it;
/// - `sslrootcert` with an `sslmode` below `verify-full`: the certificate would not be checked
///   at all, against the intent the setting shows;
/// - a certificate or key file that cannot be read, an `sslrootcert` without a PEM
///   certificate, `sslcert` without `sslkey` (or the reverse), a key file others may read
///   (libpq's rule), a key that is not the certificate's, and an X.509 version 1 client
///   certificate (rustls refuses to present one, in words that blame the server's).
///
/// Then names ring as the process's TLS provider (rustls is built here with ring and
/// aws-lc-rs, asked for by different dependencies, so it has no default, and the driver's
/// certificate check would panic without one), and warns, once per server in a process, when
/// a connection to another machine does not authenticate the server: records and credentials
/// would cross the network to whoever answers.
pub fn pg_connect_options(url: &str, what: &str) -> Result<PgTarget, String> {
    let Parsed {
        opts,
        mut files,
        hostaddr,
        connect_timeout,
        url,
    } = parse(url)?;
    let mode = opts.get_ssl_mode();
    // The same settings from the environment (`PGSSLROOTCERT`, ...), which the driver reads
    // when the URL does not set them; a value holding PEM itself is no file. A root
    // certificate is read only to check the server's (`verify-full`).
    for (setting, var) in [
        ("sslrootcert", "PGSSLROOTCERT"),
        ("sslcert", "PGSSLCERT"),
        ("sslkey", "PGSSLKEY"),
    ] {
        if (setting != "sslrootcert" || matches!(mode, PgSslMode::VerifyFull))
            && !files.iter().any(|(s, _)| *s == setting)
            && let Ok(v) = std::env::var(var)
            && !v.trim_start().starts_with("-----BEGIN")
        {
            files.push((setting, v));
        }
    }
    if matches!(mode, PgSslMode::Disable) {
        files.clear();
    }
    let has = |s: &str| files.iter().any(|(f, _)| *f == s);
    if has("sslcert") != has("sslkey") {
        return Err("`sslcert` and `sslkey` go together: a client certificate needs its private key (set both, or neither)".into());
    }
    // Each file read once: checked here, the certificate and key then parsed together.
    let mut read = Vec::with_capacity(files.len());
    for (setting, path) in &files {
        read.push((*setting, path.as_str(), check_tls_file(setting, path)?));
    }
    let file = |s: &str| read.iter().find(|(f, _, _)| *f == s);
    if let (Some((_, cert, cert_pem)), Some((_, key, key_pem))) = (file("sslcert"), file("sslkey"))
    {
        check_client_certificate(cert, cert_pem, key, key_pem)?;
    }
    static PROVIDER: std::sync::Once = std::sync::Once::new();
    PROVIDER.call_once(|| {
        // Fails only when a library installed one first: that one serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
    let hostaddr = hostaddr.or_else(|| std::env::var("PGHOSTADDR").ok());
    if let Some(server) = unauthenticated_server(&opts, hostaddr.as_deref()) {
        crate::net::unauthenticated(
            &format!("the PostgreSQL server at {server}"),
            &format!("sslmode={}", mode_name(mode)),
            &format!("the records and the credentials of {what}"),
            "add `sslmode=verify-full` to the connection URL (with `sslrootcert=PATH` for a private certificate authority)",
        )?;
    }
    Ok(PgTarget {
        options: opts,
        connect_timeout,
        url: crate::secret::Secret::new(url),
    })
}

/// The checks of [`pg_connect_options`] that depend on the URL alone (no file is read), for
/// `check` to report on a URL written in a spec, with its location.
pub fn check_pg_url(url: &str) -> Result<(), String> {
    parse(url).map(|_| ())
}

/// A URL's options, with the TLS files it names and the address it sets.
struct Parsed {
    opts: PgConnectOptions,
    files: Vec<(&'static str, String)>,
    hostaddr: Option<String>,
    connect_timeout: Option<std::time::Duration>,
    /// The URL without `connect_timeout`.
    url: String,
}

fn parse(url: &str) -> Result<Parsed, String> {
    let mut parsed =
        url::Url::parse(url).map_err(|e| format!("not a valid postgres:// URL ({e})"))?;
    let mut files: Vec<(&'static str, String)> = Vec::new();
    let mut hostaddr = None;
    let mut connect_timeout = None;
    for (key, value) in parsed.query_pairs() {
        let key = &*key;
        let known =
            URL_SETTINGS.contains(&key) || key.starts_with("options[") && key.ends_with(']');
        if !known {
            return Err(unknown_setting(key));
        }
        let setting = match key {
            "sslrootcert" | "ssl-root-cert" | "ssl-ca" => "sslrootcert",
            "sslcert" | "ssl-cert" => "sslcert",
            "sslkey" | "ssl-key" => "sslkey",
            "hostaddr" => {
                hostaddr = Some(value.into_owned());
                continue;
            }
            "connect_timeout" => {
                // libpq: whole seconds; zero (or none) waits without a limit, here the default.
                let secs = value.trim().parse::<u64>().map_err(|_| {
                    "`connect_timeout` must be a whole number of seconds (`connect_timeout=10`)"
                        .to_string()
                })?;
                connect_timeout = (secs > 0).then(|| std::time::Duration::from_secs(secs));
                continue;
            }
            _ => continue,
        };
        files.push((setting, value.into_owned()));
    }
    // The driver reads the URL without the settings read here (it would pass over them with a
    // warning).
    let url = if parsed.query_pairs().any(|(k, _)| k == "connect_timeout") {
        let kept: Vec<(String, String)> = parsed
            .query_pairs()
            .filter(|(k, _)| k != "connect_timeout")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if kept.is_empty() {
            parsed.set_query(None);
        } else {
            parsed.query_pairs_mut().clear().extend_pairs(kept);
        }
        parsed.to_string()
    } else {
        url.to_string()
    };
    let opts = PgConnectOptions::from_str(&url).map_err(|e| redact_db_error(&e))?;
    let mode = opts.get_ssl_mode();
    // Where the mode came from: the URL, or the environment the driver reads when it has none.
    let set = |m: &str| {
        if parsed
            .query_pairs()
            .any(|(k, _)| k == "sslmode" || k == "ssl-mode")
        {
            format!("`sslmode={m}`")
        } else {
            format!("`PGSSLMODE={m}` (in the environment)")
        }
    };
    match mode {
        PgSslMode::VerifyCa => {
            return Err(format!(
                "{} is not supported: the driver would accept a certificate from any authority the system trusts, made for any name; use `sslmode=verify-full` with the host name the server's certificate is made for (and `sslrootcert=PATH` for a private authority)",
                set("verify-ca")
            ));
        }
        PgSslMode::Allow => {
            return Err(format!(
                "{} is not supported: the driver never starts TLS with it, so a server that requires TLS refuses the connection; use `sslmode=prefer` (TLS when the server offers it) or `sslmode=verify-full`",
                set("allow")
            ));
        }
        _ => {}
    }
    if !matches!(mode, PgSslMode::VerifyFull) && files.iter().any(|(s, _)| *s == "sslrootcert") {
        return Err("`sslrootcert` is used only with `sslmode=verify-full`: with a lower `sslmode` the server's certificate is not checked at all; add `sslmode=verify-full`".into());
    }
    Ok(Parsed {
        opts,
        files,
        hostaddr,
        connect_timeout,
        url,
    })
}

/// The refusal of a setting the driver does not read, naming it when it looks like a setting's
/// name (a mistyped `password:S3cret` does not).
fn unknown_setting(key: &str) -> String {
    let named = !key.is_empty()
        && key.len() <= 40
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let which = if named {
        format!("`{key}`")
    } else {
        "a setting".to_string()
    };
    let instead = match key {
        "sslpassword" => {
            "; the driver reads only unencrypted keys: decrypt the `sslkey` file into one only this user can read (`openssl pkey -in KEY -out PLAIN`, `chmod 600 PLAIN`)"
        }
        "channel_binding" => {
            "; to be sure of the server, use `sslmode=verify-full`, which authenticates it by its certificate"
        }
        "target_session_attrs" | "load_balance_hosts" => {
            "; name the one server to use (the primary, for sinks) as the URL's host"
        }
        _ => "",
    };
    format!(
        "the connection URL sets {which}, which sealtrail's PostgreSQL driver does not read; remove it (the URL's query may set {}){instead}",
        URL_SETTINGS.join(", ")
    )
}

/// A certificate or key file the driver will read: readable; a root certificate file holds a
/// PEM certificate; a key file is not readable by others (libpq's rule: `0600` or less, `0640`
/// if root owns it). The path is named: it is no secret, and the fix depends on it. Returns the
/// file's bytes, wiped when dropped (a key file's are key material).
fn check_tls_file(setting: &str, path: &str) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    let bytes = zeroize::Zeroizing::new(
        std::fs::read(path)
            .map_err(|e| format!("`{setting}` names `{path}`, which cannot be read: {e}"))?,
    );
    if setting == "sslrootcert"
        && !bytes
            .windows(27)
            .any(|w| w == b"-----BEGIN CERTIFICATE-----")
    {
        return Err(format!(
            "`{setting}` names `{path}`, which holds no PEM certificate (`-----BEGIN CERTIFICATE-----`); a DER file converts with `openssl x509 -inform der -in FILE -out FILE.pem`"
        ));
    }
    #[cfg(unix)]
    if setting == "sslkey" {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("`{setting}` names `{path}`, which cannot be read: {e}"))?;
        let others = if meta.uid() == 0 { 0o037 } else { 0o077 };
        if meta.mode() & others != 0 {
            return Err(format!(
                "`{setting}` names `{path}`, which others may read (mode {:o}): a private key must be `0600` or less (`chmod 600 {path}`)",
                meta.mode() & 0o777
            ));
        }
    }
    Ok(bytes)
}

/// A client certificate and key rustls can present: the driver would otherwise fail the
/// handshake with rustls' words for a server's certificate (`invalid peer certificate`). What
/// the key file holds is never shown.
fn check_client_certificate(
    cert: &str,
    cert_pem: &[u8],
    key: &str,
    key_pem: &[u8],
) -> Result<(), String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .ok()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            format!("`sslcert` names `{cert}`, which holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)")
        })?;
    let private = PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| {
        let encrypted = [&b"ENCRYPTED PRIVATE KEY"[..], b"Proc-Type: 4,ENCRYPTED"]
            .iter()
            .any(|m| key_pem.windows(m.len()).any(|w| w == *m));
        if encrypted {
            // libpq asks for `sslpassword`; the driver reads unencrypted keys only.
            format!(
                "`sslkey` names `{key}`, whose key is encrypted with a passphrase, which the driver cannot use; decrypt it into a file only this user can read (`openssl pkey -in {key} -out KEY`, then `chmod 600 KEY`) and name that"
            )
        } else {
            format!(
                "`sslkey` names `{key}`, which holds no PEM private key (PKCS#8, PKCS#1 or SEC1)"
            )
        }
    })?;
    let provider = rustls::crypto::ring::default_provider();
    rustls::sign::CertifiedKey::from_der(chain, private, &provider)
        .map(|_| ())
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => format!(
                "`sslkey` (`{key}`) is not the private key of the certificate in `sslcert` (`{cert}`)"
            ),
            rustls::Error::InvalidCertificate(c) => {
                let why = format!("{c:?}");
                let hint = if why.contains("UnsupportedCertVersion") {
                    ": it is an X.509 version 1 certificate (what `openssl x509 -req` makes without extensions); issue it again with extensions, e.g. `-extfile` naming a file with `basicConstraints=CA:FALSE`"
                } else {
                    ""
                };
                format!("`sslcert` names `{cert}`, whose certificate TLS cannot present ({why}){hint}")
            }
            other => format!("`sslkey` names `{key}`, which TLS cannot use: {other}"),
        })
}

/// `sslmode`'s value as a URL spells it.
fn mode_name(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

/// `host:port` of a connection that leaves the machine (not a Unix socket, not a loopback
/// address) with an `sslmode` below `verify-full`; `None` for any other.
/// A `hostaddr` is the address connected to (the host name then serves the certificate check).
fn unauthenticated_server(opts: &PgConnectOptions, hostaddr: Option<&str>) -> Option<String> {
    if opts.get_socket().is_some() || matches!(opts.get_ssl_mode(), PgSslMode::VerifyFull) {
        return None;
    }
    let host = hostaddr.unwrap_or(opts.get_host());
    (!crate::net::is_this_machine(host)).then(|| format!("{host}:{}", opts.get_port()))
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
            ("postgres://u@10.1.2.3/x?sslmode=verify-full", None),
            ("postgres://u@db.example.com/x?sslmode=verify-full", None),
            ("postgres://u@127.0.0.1/x", None),
            ("postgres://u@127.0.0.2/x", None),
            ("postgres://u@LOCALHOST/x?sslmode=disable", None),
            ("postgres://u@[::1]/x", None),
            ("postgres://u@%2Fvar%2Frun%2Fpostgresql/x", None),
            // The address connected to decides, not the name.
            (
                "postgres://u@localhost/x?hostaddr=10.1.2.3",
                Some("10.1.2.3:5432"),
            ),
            ("postgres://u@db.example.com/x?hostaddr=127.0.0.1", None),
        ] {
            let o = PgConnectOptions::from_str(url).unwrap();
            let hostaddr = url.split_once("hostaddr=").map(|(_, a)| a);
            assert_eq!(
                unauthenticated_server(&o, hostaddr).as_deref(),
                warned,
                "{url}"
            );
            // Said at most once per server, and never panics.
            pg_connect_options(url, "test").unwrap();
            pg_connect_options(url, "test").unwrap();
        }
    }

    /// What the driver would silently not do as libpq does is refused, saying what to change,
    /// never quoting a value of the URL; what it does is accepted.
    #[test]
    fn connection_urls_the_driver_would_not_honour_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
        // Real certificates and keys (the `openssl` command, as CI's other TLS tests use): a
        // client certificate (X.509 v3, self-signed: it serves as an authority's too), and an
        // X.509 v1 certificate of another key.
        let openssl = |args: &[&str]| {
            let out = std::process::Command::new("openssl")
                .current_dir(dir.path())
                .args(args)
                .output()
                .expect("the openssl command");
            assert!(out.status.success(), "{args:?}: {out:?}");
        };
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        let mut a = vec!["req", "-x509", "-subj", "/CN=postgres", "-days", "1"];
        a.extend(key);
        openssl(&[&a[..], &["-keyout", "client.key", "-out", "client.pem"]].concat());
        let mut a = vec!["req", "-subj", "/CN=postgres"];
        a.extend(key);
        openssl(&[&a[..], &["-keyout", "other.key", "-out", "other.csr"]].concat());
        openssl(&[
            "x509",
            "-req",
            "-in",
            "other.csr",
            "-signkey",
            "other.key",
            "-days",
            "1",
            "-out",
            "v1.pem",
        ]);
        std::fs::copy(path("client.pem"), path("ca.pem")).unwrap();
        std::fs::copy(path("client.key"), path("open.key")).unwrap();
        std::fs::write(path("ca.der"), [0x30, 0x82, 0x01, 0x0a]).unwrap();
        std::fs::write(path("empty.pem"), "").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = |name: &str, m: u32| {
            std::fs::set_permissions(path(name), std::fs::Permissions::from_mode(m)).unwrap()
        };
        for k in ["client.key", "other.key", "empty.pem"] {
            mode(k, 0o600);
        }
        mode("open.key", 0o644);
        let pair = |cert: &str, key: &str| {
            format!(
                "sslmode=verify-full&sslcert={}&sslkey={}",
                path(cert),
                path(key)
            )
        };
        let base = "postgres://u:Sup3rS3cret@db.example.com/x";
        let refused = |query: String, says: &[&str]| {
            let e = pg_connect_options(&format!("{base}?{query}"), "test").unwrap_err();
            for s in says {
                assert!(e.contains(s), "{query}: {e}");
            }
            assert!(
                !e.contains("Sup3rS3cret") && !e.contains("db.example.com") && !e.contains("V4lue"),
                "{e}"
            );
        };
        // Settings the driver does not read: named (when they look like one), never valued.
        refused(
            "sslpassword=V4lue".into(),
            &[
                "`sslpassword`",
                "does not read",
                "sslmode, ssl-mode",
                "decrypt the `sslkey` file",
            ],
        );
        refused(
            "channel_binding=require".into(),
            &["`channel_binding`", "use `sslmode=verify-full`"],
        );
        refused("password:V4lue".into(), &["sets a setting"]);
        refused(
            format!("sslmode=verify-ca&sslrootcert={}", path("ca.pem")),
            &[
                "`sslmode=verify-ca` is not supported",
                "any authority",
                "verify-full",
            ],
        );
        refused(
            "sslmode=allow".into(),
            &["`sslmode=allow` is not supported", "prefer"],
        );
        for mode in ["require", "prefer", "disable"] {
            refused(
                format!("sslmode={mode}&sslrootcert={}", path("ca.pem")),
                &["only with `sslmode=verify-full`", "not checked at all"],
            );
        }
        refused(
            format!("sslmode=verify-full&sslrootcert={}", path("missing.pem")),
            &[
                "`sslrootcert` names `",
                "missing.pem`, which cannot be read: No such file",
            ],
        );
        refused(
            format!("sslmode=verify-full&ssl-ca={}", path("ca.der")),
            &["holds no PEM certificate", "openssl x509 -inform der"],
        );
        refused(
            format!("sslmode=verify-full&sslcert={}", path("client.pem")),
            &["`sslcert` and `sslkey` go together"],
        );
        refused(
            format!(
                "sslmode=verify-full&sslcert={}&sslkey={}",
                path("client.pem"),
                path("open.key")
            ),
            &["others may read (mode 644)", "chmod 600"],
        );
        refused(
            pair("client.pem", "other.key"),
            &["is not the private key of the certificate in `sslcert`"],
        );
        refused(
            pair("v1.pem", "other.key"),
            &[
                "whose certificate TLS cannot present",
                "X.509 version 1",
                "-extfile",
            ],
        );
        refused(
            pair("empty.pem", "client.key"),
            &["holds no PEM certificate"],
        );
        refused(
            pair("client.pem", "empty.pem"),
            &["holds no PEM private key"],
        );
        openssl(&[
            "pkey",
            "-in",
            "client.key",
            "-aes256",
            "-passout",
            "pass:x",
            "-out",
            "locked.key",
        ]);
        mode("locked.key", 0o600);
        refused(
            pair("client.pem", "locked.key"),
            &["encrypted with a passphrase", "openssl pkey -in"],
        );
        refused(
            "sslmode=verify-fulll".into(),
            &["bad connection settings", "verify-fulll"],
        );
        // Accepted: the driver does what these say.
        for query in [
            String::new(),
            "sslmode=require&application_name=etl&options[statement_timeout]=5s".into(),
            format!("sslmode=verify-full&sslrootcert={}", path("ca.pem")),
            format!(
                "sslmode=verify-full&sslcert={}&ssl-key={}",
                path("client.pem"),
                path("client.key")
            ),
            format!("sslmode=disable&sslcert={}", path("missing.pem")),
        ] {
            let url = format!("{base}?{query}");
            pg_connect_options(&url, "test").unwrap_or_else(|e| panic!("{query}: {e}"));
        }
        // `connect_timeout` (libpq's, in seconds) is read here and kept from the driver.
        let t = pg_connect_options(
            &format!("{base}?sslmode=require&connect_timeout=5&application_name=etl"),
            "test",
        )
        .unwrap();
        assert_eq!(t.connect_timeout, Some(std::time::Duration::from_secs(5)));
        assert!(
            !t.url.expose().contains("connect_timeout")
                && t.url.expose().contains("sslmode=require")
                && t.url.expose().contains("application_name=etl"),
            "the URL the driver gets keeps every other setting"
        );
        assert!(!format!("{t:?}").contains("Sup3rS3cret"), "{t:?}");
        let t = pg_connect_options(&format!("{base}?connect_timeout=0"), "test").unwrap();
        assert_eq!(
            t.connect_timeout, None,
            "0 is libpq's no limit: the default"
        );
        assert!(!t.url.expose().contains('?'));
        let t = pg_connect_options(base, "test").unwrap();
        assert_eq!(
            t.url.expose(),
            base,
            "a URL without it is passed on as it is"
        );
        refused(
            "connect_timeout=ten".into(),
            &["`connect_timeout` must be a whole number of seconds"],
        );
        let e = pg_connect_options("db/x", "test").unwrap_err();
        assert!(e.starts_with("not a valid postgres:// URL ("), "{e}");
    }
}
