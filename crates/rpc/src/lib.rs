//! Kiln's remote measurement protocol, host side: the wire format the device agent (C, on the
//! board) and the tracker speak with the tuner. Specified in `docs/rpc-protocol.md`; the
//! agent's C implementation follows the same document.
//!
//! - [`frame`]: every message is one frame, a `u64` little-endian body length and the body; the
//!   reader refuses a length over its cap before it allocates or reads anything.
//! - [`handshake`]: both peers send a HELLO (magic, protocol version, a fresh 32-byte nonce); a
//!   version mismatch ends the session with an error naming both versions; then each proves
//!   knowledge of the pre-shared key by an HMAC-SHA256 tag over both nonces (the client first,
//!   so a peer without the key learns nothing from the server), and both derive one key per
//!   direction.
//! - [`channel`]: after the handshake every frame carries an HMAC-SHA256 tag over its implicit
//!   sequence number, type and payload, so a tampered, replayed, reordered or dropped frame
//!   fails verification and ends the session.
//! - [`agent`]: the host's client of a device agent (connect with deadlines, device info,
//!   upload, measure, delete).
//! - [`tracker`]: the device pool: agents register and send heartbeats, clients queue for
//!   leases by device key and priority; its server and both kinds of client.
//!
//! Invariant: nothing a peer sends is trusted before it is authenticated: before the handshake
//! completes a frame is at most [`frame::PREAUTH_MAX`] bytes and is parsed only as a HELLO or an
//! AUTH of fixed size; afterwards at most the negotiated cap. What the protocol does not give:
//! confidentiality (frames are readable on the wire: use an SSH tunnel or a VPN on untrusted
//! networks) and protection of the key file on either machine.

pub mod agent;
pub mod channel;
pub mod frame;
pub mod handshake;
pub mod tracker;

pub use agent::{AgentClient, DeviceInfo};
pub use channel::{Channel, Role};
pub use frame::{FrameError, PREAUTH_MAX};
pub use handshake::{Key, PROTOCOL_VERSION};
use std::net::{TcpStream, ToSocketAddrs};

/// A TCP connection to `addr` with `timeout` on the connection and on every read and write.
pub fn connect_stream(addr: &str, timeout: std::time::Duration) -> Result<TcpStream, RpcError> {
    let target = addr
        .to_socket_addrs()
        .map_err(|e| RpcError::Connect(format!("{addr}: {e}")))?
        .next()
        .ok_or_else(|| RpcError::Connect(format!("{addr}: no address")))?;
    let stream = TcpStream::connect_timeout(&target, timeout)
        .map_err(|e| RpcError::Connect(format!("{addr}: {e}")))?;
    let deadlines = stream
        .set_read_timeout(Some(timeout))
        .and_then(|()| stream.set_write_timeout(Some(timeout)))
        .and_then(|()| stream.set_nodelay(true));
    deadlines.map_err(|e| RpcError::Connect(format!("{addr}: {e}")))?;
    Ok(stream)
}

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(
        "protocol version mismatch: this side speaks version {ours}, the peer version {theirs}"
    )]
    Version { ours: u16, theirs: u16 },
    #[error("the peer is not a Kiln RPC endpoint (bad magic in its HELLO)")]
    NotKiln,
    #[error("authentication failed: the peer does not hold the same key")]
    Authentication,
    #[error("frame {seq} failed verification (tampered, replayed, reordered or dropped)")]
    BadMac { seq: u64 },
    #[error("malformed {what} message: {reason}")]
    Malformed { what: &'static str, reason: String },
    #[error("the peer ended the session: {0}")]
    Peer(String),
    #[error("no randomness for a nonce: {0}")]
    Random(String),
    #[error("cannot connect to {0}")]
    Connect(String),
    #[error("the agent could not do it: {0}")]
    Remote(String),
    #[error("expected a message of kind {want}, got kind {got}")]
    Unexpected { want: u8, got: u8 },
}
