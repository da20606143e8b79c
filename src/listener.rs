//! Binding listeners: TCP (with the `[::]` → `0.0.0.0` fallback, `localhost` as every loopback,
//! opt-in SO_REUSEPORT) and Unix sockets (bound beside the path and renamed over it, unlinked on
//! exit only while still ours).

use std::{
    fmt, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, UnixListener};

use crate::config::{Host, ListenAddr};

/// Connections waiting to be accepted, per listener.
const BACKLOG: i32 = 1024;

/// A listener could not be bound. The message holds the system's reason; it is not also the
/// error's `source()`, so printing the chain cannot repeat it.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {reason}")]
pub struct BindError {
    /// The address as configured.
    pub addr: String,
    /// The system's reason.
    pub reason: io::Error,
}

/// How to bind.
#[derive(Debug, Clone, Copy, Default)]
pub struct BindOptions {
    /// Set SO_REUSEPORT on TCP sockets.
    pub reuse_port: bool,
    /// Permission bits of Unix sockets.
    pub unix_mode: u32,
}

/// Where a listener ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BoundAddr {
    /// A TCP address (port 0 resolved).
    Tcp(SocketAddr),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl fmt::Display for BoundAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "{addr}"),
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// A Unix socket, unlinked on drop if still ours.
    Unix(UnixListener, UnixSocketOwner),
}

impl Listener {
    /// The bound address.
    pub fn local_addr(&self) -> BoundAddr {
        match self {
            Self::Tcp(listener) => BoundAddr::Tcp(
                listener
                    .local_addr()
                    .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
            ),
            Self::Unix(_, owner) => BoundAddr::Unix(owner.path.clone()),
        }
    }
}

fn tcp_socket(addr: SocketAddr, options: &BindOptions) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if options.reuse_port {
        socket.set_reuse_port(true)?;
    }
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        // `[::]` serves IPv4 clients too.
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

fn ipv6_unavailable(err: &io::Error) -> bool {
    // EAFNOSUPPORT: no IPv6 in the kernel; EADDRNOTAVAIL: IPv6 disabled on every interface.
    matches!(err.raw_os_error(), Some(97 | 99))
}

fn bind_tcp(
    host: Host,
    port: u16,
    options: &BindOptions,
    shown: &str,
) -> Result<Vec<Listener>, BindError> {
    let error = |reason| BindError {
        addr: shown.to_string(),
        reason,
    };
    match host {
        Host::Ip(IpAddr::V6(ip)) if ip.is_unspecified() => {
            match tcp_socket(SocketAddr::new(ip.into(), port), options) {
                Ok(listener) => Ok(vec![Listener::Tcp(listener)]),
                Err(err) if ipv6_unavailable(&err) => {
                    tracing::warn!(addr = shown, error = %err, "IPv6 is not available here: listening on 0.0.0.0 instead");
                    let v4 = SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port);
                    Ok(vec![Listener::Tcp(tcp_socket(v4, options).map_err(error)?)])
                }
                Err(err) => Err(error(err)),
            }
        }
        Host::Ip(ip) => Ok(vec![Listener::Tcp(
            tcp_socket(SocketAddr::new(ip, port), options).map_err(error)?,
        )]),
        Host::Localhost => {
            let v4 = tcp_socket(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port), options)
                .map_err(error)?;
            // Port 0: the IPv6 loopback takes the port the IPv4 one got.
            let port = v4.local_addr().map(|a| a.port()).unwrap_or(port);
            let mut listeners = vec![Listener::Tcp(v4)];
            match tcp_socket(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port), options) {
                Ok(v6) => listeners.push(Listener::Tcp(v6)),
                Err(err) if ipv6_unavailable(&err) => {
                    tracing::debug!(error = %err, "no IPv6 loopback: localhost is 127.0.0.1 only");
                }
                Err(err) => return Err(error(err)),
            }
            Ok(listeners)
        }
    }
}

/// Unlinks a Unix socket on drop if the path still names the socket we bound (a newer instance
/// may have renamed its own over it).
#[derive(Debug)]
pub struct UnixSocketOwner {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl UnixSocketOwner {
    /// Whether the path still names our socket.
    pub fn still_ours(&self) -> bool {
        std::fs::symlink_metadata(&self.path)
            .is_ok_and(|meta| meta.dev() == self.dev && meta.ino() == self.ino)
    }
}

impl Drop for UnixSocketOwner {
    fn drop(&mut self) {
        if self.still_ours() {
            if let Err(err) = std::fs::remove_file(&self.path) {
                tracing::warn!(path = %self.path.display(), error = %err, "could not remove Unix socket");
            }
        } else {
            tracing::info!(path = %self.path.display(), "Unix socket now belongs to another instance; left in place");
        }
    }
}

fn bind_unix(path: &Path, options: &BindOptions) -> io::Result<Listener> {
    let file_name = path.file_name().ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "socket path has no file name")
    })?;
    // Bound beside the final path, then renamed over it: a running instance keeps serving its
    // own connections while new ones reach us, and clients never see a missing socket.
    let mut temp_name = file_name.to_os_string();
    temp_name.push(format!(".{}.new", std::process::id()));
    let temp = path.with_file_name(temp_name);
    let _ = std::fs::remove_file(&temp);
    let listener = UnixListener::bind(&temp)?;
    let prepared =
        std::fs::set_permissions(&temp, std::fs::Permissions::from_mode(options.unix_mode))
            .and_then(|()| std::fs::symlink_metadata(&temp))
            .and_then(|meta| std::fs::rename(&temp, path).map(|()| meta));
    match prepared {
        Ok(meta) => Ok(Listener::Unix(
            listener,
            UnixSocketOwner {
                path: path.to_path_buf(),
                dev: meta.dev(),
                ino: meta.ino(),
            },
        )),
        Err(err) => {
            let _ = std::fs::remove_file(&temp);
            Err(err)
        }
    }
}

/// Binds one configured address; `localhost` may give two listeners.
///
/// # Errors
/// A [`BindError`] naming the address.
pub fn bind(addr: &ListenAddr, options: &BindOptions) -> Result<Vec<Listener>, BindError> {
    match addr {
        ListenAddr::Tcp { host, port } => bind_tcp(*host, *port, options, &addr.to_string()),
        ListenAddr::Unix(path) => bind_unix(path, options)
            .map(|listener| vec![listener])
            .map_err(|reason| BindError {
                addr: addr.to_string(),
                reason,
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_unix_socket_is_renamed_into_place_and_removed_only_while_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sock");
        let options = BindOptions {
            unix_mode: 0o600,
            ..BindOptions::default()
        };
        let first = bind(&ListenAddr::Unix(path.clone()), &options).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // A second instance takes the path over.
        let second = bind(&ListenAddr::Unix(path.clone()), &options).unwrap();
        drop(first);
        assert!(
            path.exists(),
            "the first instance must not remove the second's socket"
        );
        drop(second);
        assert!(!path.exists(), "the owner removes its socket");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "no temporary left behind"
        );
    }

    #[tokio::test]
    async fn localhost_binds_every_loopback_on_one_port() {
        let listeners = bind(
            &ListenAddr::parse("localhost:0").unwrap(),
            &BindOptions::default(),
        )
        .unwrap();
        let ports: Vec<u16> = listeners
            .iter()
            .map(|l| match l.local_addr() {
                BoundAddr::Tcp(addr) => {
                    assert!(addr.ip().is_loopback());
                    addr.port()
                }
                BoundAddr::Unix(_) => panic!("tcp expected"),
            })
            .collect();
        assert!(ports.iter().all(|p| *p == ports[0] && *p != 0), "{ports:?}");
    }

    #[tokio::test]
    async fn reuse_port_lets_two_listeners_share_an_address_only_when_asked() {
        let addr = ListenAddr::parse("127.0.0.1:0").unwrap();
        let shared = BindOptions {
            reuse_port: true,
            ..BindOptions::default()
        };
        let first = bind(&addr, &shared).unwrap();
        let BoundAddr::Tcp(bound) = first[0].local_addr() else {
            unreachable!()
        };
        let same = ListenAddr::parse(&bound.to_string()).unwrap();
        assert!(bind(&same, &shared).is_ok());
        let err = bind(&same, &BindOptions::default()).unwrap_err();
        assert!(
            err.to_string()
                .starts_with(&format!("cannot listen on {bound}: ")),
            "{err}"
        );
    }
}
