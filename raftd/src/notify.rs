//! Readiness for systemd (`Type=notify`): `READY=1` once the node serves, `STOPPING=1` when it
//! shuts down, sent to `$NOTIFY_SOCKET` as sd_notify(3) does. Without the variable, nothing.

use std::os::unix::net::UnixDatagram;

/// Sends `state` to the service manager, if one asked for notifications. A failure is logged,
/// never fatal: the node serves whether or not the manager hears.
pub fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let result = UnixDatagram::unbound().and_then(|s| {
        let bytes = socket.as_encoded_bytes();
        // '@' names a socket in the abstract namespace.
        if let Some(name) = bytes.strip_prefix(b"@") {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
            s.send_to_addr(state.as_bytes(), &addr)
        } else {
            s.send_to(state.as_bytes(), &socket)
        }
    });
    if let Err(e) = result {
        log::warn!("cannot notify the service manager at {socket:?} ({state}): {e}");
    }
}
