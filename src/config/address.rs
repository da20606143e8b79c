//! Listen addresses: what `listen`, `tls_listen` and `admin_listen` accept, and what the
//! gateway's `coprocess_grpc_server` target means for where we listen.

use std::{
    fmt,
    net::{IpAddr, Ipv6Addr},
    path::PathBuf,
};

use serde::{Deserialize, Deserializer};

/// The host part of a TCP listen address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// An IP literal (`0.0.0.0` and `::` mean every interface).
    Ip(IpAddr),
    /// `localhost`: every loopback address the machine has (127.0.0.1 and ::1).
    Localhost,
}

/// One place to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP socket.
    Tcp {
        /// Interface(s).
        host: Host,
        /// Port; 0 picks a free one.
        port: u16,
    },
    /// A Unix domain socket at this path.
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp {
                host: Host::Localhost,
                port,
            } => write!(f, "localhost:{port}"),
            Self::Tcp {
                host: Host::Ip(IpAddr::V6(ip)),
                port,
            } => write!(f, "[{ip}]:{port}"),
            Self::Tcp {
                host: Host::Ip(ip),
                port,
            } => write!(f, "{ip}:{port}"),
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

/// Why an address was refused; the message names the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// No `:port` at the end.
    #[error("{0:?} has no port (expected host:port, tcp://host:port or unix:///path)")]
    MissingPort(String),
    /// The port is not a number from 0 to 65535.
    #[error("{0:?} has an invalid port (expected 0 to 65535)")]
    BadPort(String),
    /// A host name other than `localhost` where an interface is needed.
    #[error("{0:?}: the host must be an IP literal or localhost")]
    HostName(String),
    /// `unix://` with nothing after it.
    #[error("{0:?}: a Unix socket needs a path (unix:///path/to/socket)")]
    EmptyUnixPath(String),
    /// A scheme we do not listen on.
    #[error("{0:?}: unsupported scheme (use tcp://, unix:// or a bare host:port)")]
    Scheme(String),
    /// Nothing at all.
    #[error("empty address")]
    Empty,
}

fn split_host_port(raw: &str, hostport: &str) -> Result<(String, u16), AddressError> {
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| AddressError::MissingPort(raw.to_string()))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| AddressError::MissingPort(raw.to_string()))?;
        (host, port)
    } else {
        hostport
            .rsplit_once(':')
            .ok_or_else(|| AddressError::MissingPort(raw.to_string()))?
    };
    if port.is_empty() {
        return Err(AddressError::MissingPort(raw.to_string()));
    }
    let port = port
        .parse::<u16>()
        .map_err(|_| AddressError::BadPort(raw.to_string()))?;
    Ok((host.to_string(), port))
}

fn unix_path(raw: &str, rest: &str) -> Result<ListenAddr, AddressError> {
    // `unix:///abs/path` and `unix:relative/path`, as gRPC spells them.
    let path = rest.strip_prefix("//").unwrap_or(rest);
    if path.is_empty() {
        return Err(AddressError::EmptyUnixPath(raw.to_string()));
    }
    Ok(ListenAddr::Unix(PathBuf::from(path)))
}

impl ListenAddr {
    /// Parses one entry of `listen` or `tls_listen`: `host:port`, `tcp://host:port`,
    /// `[v6]:port`, `localhost:port` or `unix:///path`.
    ///
    /// # Errors
    /// An [`AddressError`] naming the value.
    pub fn parse(raw: &str) -> Result<Self, AddressError> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(AddressError::Empty);
        }
        if let Some(rest) = trimmed.strip_prefix("unix:") {
            return unix_path(raw, rest);
        }
        let hostport = trimmed.strip_prefix("tcp://").unwrap_or(trimmed);
        if hostport.contains("://") {
            return Err(AddressError::Scheme(raw.to_string()));
        }
        let (host, port) = split_host_port(raw, hostport)?;
        let host = if host.eq_ignore_ascii_case("localhost") {
            Host::Localhost
        } else if host.is_empty() {
            Host::Ip(IpAddr::V6(Ipv6Addr::UNSPECIFIED))
        } else {
            Host::Ip(
                host.parse()
                    .map_err(|_| AddressError::HostName(raw.to_string()))?,
            )
        };
        Ok(Self::Tcp { host, port })
    }

    /// Where to listen so that a gateway configured with `coprocess_grpc_server = target`
    /// reaches us: loopback targets keep their address, a DNS name (a Service) means every
    /// interface, `unix://` means that socket.
    ///
    /// # Errors
    /// An [`AddressError`] naming the value.
    pub fn from_gateway_target(target: &str) -> Result<Self, AddressError> {
        let trimmed = target.trim();
        if trimmed.starts_with("unix:") {
            return Self::parse(trimmed);
        }
        let hostport = if let Some(rest) = trimmed.strip_prefix("dns:") {
            // dns:///name:port or dns://resolver/name:port
            let rest = rest.strip_prefix("//").unwrap_or(rest);
            rest.split_once('/').map_or(rest, |(_, name)| name)
        } else {
            trimmed.strip_prefix("tcp://").unwrap_or(trimmed)
        };
        if hostport.contains("://") {
            return Err(AddressError::Scheme(target.to_string()));
        }
        let (host, port) = split_host_port(target, hostport)?;
        let host = if host.eq_ignore_ascii_case("localhost") {
            Host::Localhost
        } else {
            match host.parse::<IpAddr>() {
                Ok(ip) => Host::Ip(ip),
                // A name the gateway resolves (usually a Kubernetes Service): take it on
                // every interface.
                Err(_) => Host::Ip(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
            }
        };
        Ok(Self::Tcp { host, port })
    }
}

/// A list of addresses, written as a TOML array or a comma-separated string (as in env vars).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
#[serde(transparent)]
pub struct AddressList(pub Vec<String>);

impl AddressList {
    /// Builds a list from string slices.
    pub fn of(items: &[&str]) -> Self {
        Self(items.iter().map(|item| (*item).to_string()).collect())
    }

    /// Parses every entry.
    ///
    /// # Errors
    /// The first entry that does not parse.
    pub fn parse(&self) -> Result<Vec<ListenAddr>, AddressError> {
        self.0.iter().map(|raw| ListenAddr::parse(raw)).collect()
    }

    /// True when the list names nothing.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de> Deserialize<'de> for AddressList {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            List(Vec<String>),
        }
        let items = match Form::deserialize(deserializer)? {
            Form::Text(text) => text
                .split(',')
                .map(str::trim)
                .filter(|item| !item.is_empty())
                .map(str::to_string)
                .collect(),
            Form::List(items) => items,
        };
        Ok(Self(items))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn tcp(host: Host, port: u16) -> ListenAddr {
        ListenAddr::Tcp { host, port }
    }

    #[test]
    fn listen_forms() {
        let any6 = Host::Ip(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        let lo4 = Host::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(ListenAddr::parse("[::]:50051"), Ok(tcp(any6, 50051)));
        assert_eq!(ListenAddr::parse("tcp://127.0.0.1:1"), Ok(tcp(lo4, 1)));
        assert_eq!(ListenAddr::parse("127.0.0.1:0"), Ok(tcp(lo4, 0)));
        assert_eq!(
            ListenAddr::parse("localhost:9"),
            Ok(tcp(Host::Localhost, 9))
        );
        assert_eq!(ListenAddr::parse(":7"), Ok(tcp(any6, 7)));
        assert_eq!(
            ListenAddr::parse("unix:///run/tyk/d.sock"),
            Ok(ListenAddr::Unix("/run/tyk/d.sock".into()))
        );
        assert_eq!(
            ListenAddr::parse("unix:rel.sock"),
            Ok(ListenAddr::Unix("rel.sock".into()))
        );
    }

    #[test]
    fn listen_errors_name_the_value() {
        let err = ListenAddr::parse("dispatcher:50051").unwrap_err();
        assert_eq!(
            err.to_string(),
            "\"dispatcher:50051\": the host must be an IP literal or localhost"
        );
        assert!(matches!(
            ListenAddr::parse("127.0.0.1"),
            Err(AddressError::MissingPort(_))
        ));
        assert!(matches!(
            ListenAddr::parse("127.0.0.1:99999"),
            Err(AddressError::BadPort(_))
        ));
        assert!(matches!(
            ListenAddr::parse("unix://"),
            Err(AddressError::EmptyUnixPath(_))
        ));
        assert!(matches!(
            ListenAddr::parse("http://x:1"),
            Err(AddressError::Scheme(_))
        ));
    }

    #[test]
    fn gateway_targets_map_to_where_we_listen() {
        let any6 = Host::Ip(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        let cases = [
            ("tcp://localhost:5555", tcp(Host::Localhost, 5555)),
            ("localhost:5555", tcp(Host::Localhost, 5555)),
            (
                "tcp://127.0.0.1:5555",
                tcp(Host::Ip("127.0.0.1".parse().unwrap()), 5555),
            ),
            (
                "tcp://[::1]:5555",
                tcp(Host::Ip("::1".parse().unwrap()), 5555),
            ),
            ("tcp://tyk-dispatcher:5555", tcp(any6, 5555)),
            ("tyk-dispatcher.tyk.svc:5555", tcp(any6, 5555)),
            ("dns:///tyk-dispatcher-headless:5555", tcp(any6, 5555)),
            (
                "unix:///var/run/tyk/dispatcher.sock",
                ListenAddr::Unix("/var/run/tyk/dispatcher.sock".into()),
            ),
        ];
        for (target, expected) in cases {
            assert_eq!(
                ListenAddr::from_gateway_target(target),
                Ok(expected),
                "{target}"
            );
        }
    }

    #[test]
    fn address_lists_accept_commas_and_arrays() {
        let from_text: AddressList =
            serde_json::from_str("\"127.0.0.1:1, unix:///a.sock,\"").unwrap();
        assert_eq!(
            from_text,
            AddressList::of(&["127.0.0.1:1", "unix:///a.sock"])
        );
        let from_list: AddressList = serde_json::from_str("[\"[::1]:2\"]").unwrap();
        assert_eq!(from_list, AddressList::of(&["[::1]:2"]));
    }
}
