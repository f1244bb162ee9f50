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
