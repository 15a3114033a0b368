//! sd_notify: one datagram of `KEY=VALUE` lines to `$NOTIFY_SOCKET`, a path or,
//! when it starts with `@`, an abstract socket (which the `sd-notify` crate does
//! not handle: std's `UnixDatagram` does both).

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The service manager's socket, from psflip's own environment.
pub fn socket_from_env() -> Option<SocketAddr> {
    let value = std::env::var_os("NOTIFY_SOCKET")?;
    let bytes = value.as_encoded_bytes();
    match bytes.first()? {
        b'@' => SocketAddr::from_abstract_name(&bytes[1..]).ok(),
        b'/' => SocketAddr::from_pathname(std::path::Path::new(&value)).ok(),
        _ => None,
    }
}

/// Send one message.
pub fn send(to: &SocketAddr, message: &str) -> io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    socket.send_to_addr(message.as_bytes(), to)?;
    Ok(())
}

/// `CLOCK_MONOTONIC` in microseconds, as `MONOTONIC_USEC=` wants it.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is valid for the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}
