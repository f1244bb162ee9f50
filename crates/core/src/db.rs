//! Database error texts safe to show: never anything from the connection string.

/// A database error without anything from the connection string (user, password, host).
pub fn redact_db_error(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(d) => d.message().to_string(),
        sqlx::Error::Io(io) => format!("network error: {}", io.kind()),
        sqlx::Error::Tls(_) => "TLS error".into(),
        sqlx::Error::PoolTimedOut => "timed out".into(),
        sqlx::Error::Configuration(_) => "bad connection settings".into(),
        other => {
            let s = other.to_string();
            // sqlx error texts do not carry URLs, but be strict: no '@' or "://".
            if s.contains("://") || s.contains('@') {
                "connection failed".into()
            } else {
                s
            }
        }
    }
}
