//! The gateway's own `TYK_GW_COPROCESSOPTIONS_*` variables, read so that one ConfigMap can
//! configure both containers of a pod: where the gateway dials is where we listen, and its size
//! limits become ours.

use super::{Config, ListenAddr, Problem};

/// Where the gateway dials its gRPC plugin server.
pub const ENV_SERVER: &str = "TYK_GW_COPROCESSOPTIONS_COPROCESSGRPCSERVER";
/// The largest reply the gateway accepts.
pub const ENV_RECV_MAX: &str = "TYK_GW_COPROCESSOPTIONS_GRPCRECVMAXSIZE";
/// The largest request the gateway sends.
pub const ENV_SEND_MAX: &str = "TYK_GW_COPROCESSOPTIONS_GRPCSENDMAXSIZE";

/// The gateway's coprocess options that concern us.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GatewayOptions {
    /// `coprocess_grpc_server`.
    pub grpc_server: Option<String>,
    /// `grpc_recv_max_size`; 0 or unset means gRPC-Go's 4 MiB default.
    pub recv_max: Option<usize>,
    /// `grpc_send_max_size`; 0 or unset means no limit.
    pub send_max: Option<usize>,
}

impl GatewayOptions {
    /// Reads the options from environment pairs.
    ///
    /// # Errors
    /// A size variable that is not a whole number.
    pub fn from_env<'a>(
        vars: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, Vec<Problem>> {
        let mut options = Self::default();
        let mut problems = Vec::new();
        let size = |name: &str, value: &str, problems: &mut Vec<Problem>| match value
            .trim()
            .parse::<usize>()
        {
            Ok(0) => None,
            Ok(bytes) => Some(bytes),
            Err(_) => {
                problems.push(Problem::new(
                    name,
                    format!("{value:?} is not a whole number of bytes"),
                ));
                None
            }
        };
        for (name, value) in vars {
            match name {
                ENV_SERVER if !value.trim().is_empty() => {
                    options.grpc_server = Some(value.trim().to_string());
                }
                ENV_RECV_MAX => options.recv_max = size(name, value, &mut problems),
                ENV_SEND_MAX => options.send_max = size(name, value, &mut problems),
                _ => {}
            }
        }
        if problems.is_empty() {
            Ok(options)
        } else {
            Err(problems)
        }
    }

    /// Fills what `config` leaves open from the gateway's options and returns notes on where
    /// the two disagree.
    ///
    /// `explicit_recv` says whether `max_recv_bytes` was set by the user (a larger gateway send
    /// limit raises only the default).
    ///
    /// # Errors
    /// A gateway target we cannot listen for.
    pub fn apply(&self, config: &mut Config) -> Result<Vec<String>, Problem> {
        let mut notes = Vec::new();
        if let Some(target) = &self.grpc_server {
            let wanted = ListenAddr::from_gateway_target(target)
                .map_err(|err| Problem::new(ENV_SERVER, err.to_string()))?;
            match &config.listen {
                None => config.listen = Some(super::AddressList(vec![wanted.to_string()])),
                Some(list) => {
                    let ours = list.parse().unwrap_or_default();
                    if !ours.iter().any(|addr| serves(addr, &wanted)) {
                        notes.push(format!(
                            "listen ({}) does not include where the gateway dials ({ENV_SERVER}={target})",
                            list.0.join(",")
                        ));
                    }
                }
            }
        }
        if let Some(send_max) = self.send_max
            && send_max > config.max_recv_bytes
        {
            notes.push(format!(
                "max_recv_bytes raised from {} to {send_max} to match {ENV_SEND_MAX}",
                config.max_recv_bytes
            ));
            config.max_recv_bytes = send_max;
        }
        match (config.max_reply_bytes, self.recv_max) {
            (None, Some(recv_max)) => config.max_reply_bytes = Some(recv_max),
            (Some(ours), Some(recv_max)) if ours > recv_max => notes.push(format!(
                "max_reply_bytes ({ours}) is above the gateway's {ENV_RECV_MAX} ({recv_max}): the gateway will refuse replies between the two"
            )),
            (Some(ours), None) if ours > super::GATEWAY_DEFAULT_RECV_BYTES => notes.push(format!(
                "max_reply_bytes ({ours}) is above the gateway's default receive limit (4194304) and {ENV_RECV_MAX} is not set"
            )),
            _ => {}
        }
        Ok(notes)
    }
}

/// Whether listening on `ours` answers a gateway dialing `wanted`.
fn serves(ours: &ListenAddr, wanted: &ListenAddr) -> bool {
    use super::Host;
    match (ours, wanted) {
        (ListenAddr::Unix(a), ListenAddr::Unix(b)) => a == b,
        (
            ListenAddr::Tcp {
                host: ours_host,
                port: ours_port,
            },
            ListenAddr::Tcp {
                host: wanted_host,
                port: wanted_port,
            },
        ) => {
            ours_port == wanted_port
                && (ours_host == wanted_host
                    || matches!(ours_host, Host::Ip(ip) if ip.is_unspecified())
                    || (*ours_host == Host::Localhost
                        && matches!(wanted_host, Host::Ip(ip) if ip.is_loopback())))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AddressList;

    fn options(pairs: &[(&str, &str)]) -> GatewayOptions {
        GatewayOptions::from_env(pairs.iter().copied()).expect("valid")
    }

    #[test]
    fn the_gateway_target_becomes_our_listener_when_listen_is_unset() {
        let mut config = Config::default();
        let notes = options(&[(ENV_SERVER, "unix:///run/tyk/d.sock")])
            .apply(&mut config)
            .unwrap();
        assert!(notes.is_empty());
        assert_eq!(
            config.listen,
            Some(AddressList::of(&["unix:///run/tyk/d.sock"]))
        );
    }

    #[test]
    fn explicit_listen_wins_with_a_note_when_it_disagrees() {
        let mut config = Config {
            listen: Some(AddressList::of(&["127.0.0.1:6000"])),
            ..Config::default()
        };
        let notes = options(&[(ENV_SERVER, "tcp://127.0.0.1:5555")])
            .apply(&mut config)
            .unwrap();
        assert_eq!(config.listen, Some(AddressList::of(&["127.0.0.1:6000"])));
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(notes[0].contains("does not include where the gateway dials"));
        // [::]:5555 does serve a gateway dialing 127.0.0.1:5555.
        let mut config = Config {
            listen: Some(AddressList::of(&["[::]:5555"])),
            ..Config::default()
        };
        assert!(
            options(&[(ENV_SERVER, "tcp://127.0.0.1:5555")])
                .apply(&mut config)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn size_limits_follow_the_gateway() {
        let mut config = Config::default();
        let notes = options(&[(ENV_SEND_MAX, "100000000"), (ENV_RECV_MAX, "100000000")])
            .apply(&mut config)
            .unwrap();
        assert_eq!(config.max_recv_bytes, 100_000_000);
        assert_eq!(config.max_reply_bytes, Some(100_000_000));
        assert_eq!(notes.len(), 1);
        // A smaller gateway send limit does not lower ours.
        let mut config = Config::default();
        options(&[(ENV_SEND_MAX, "1000")])
            .apply(&mut config)
            .unwrap();
        assert_eq!(config.max_recv_bytes, 64 * 1024 * 1024);
    }

    #[test]
    fn a_reply_limit_above_the_gateways_is_noted() {
        let mut config = Config {
            max_reply_bytes: Some(10_000_000),
            ..Config::default()
        };
        let notes = options(&[(ENV_RECV_MAX, "5000000")])
            .apply(&mut config)
            .unwrap();
        assert_eq!(config.max_reply_bytes, Some(10_000_000));
        assert!(
            notes[0].contains("the gateway will refuse replies"),
            "{notes:?}"
        );
    }

    #[test]
    fn bad_gateway_values_are_problems() {
        let problems = GatewayOptions::from_env([(ENV_RECV_MAX, "lots")]).unwrap_err();
        assert_eq!(
            problems[0].to_string(),
            "TYK_GW_COPROCESSOPTIONS_GRPCRECVMAXSIZE: \"lots\" is not a whole number of bytes"
        );
        let err = options(&[(ENV_SERVER, "http://x:1")])
            .apply(&mut Config::default())
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("TYK_GW_COPROCESSOPTIONS_COPROCESSGRPCSERVER: ")
        );
    }
}
