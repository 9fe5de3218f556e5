//! The host's side of a session with a device agent: connecting with deadlines, and the
//! application messages (`docs/rpc-protocol.md`, "Agent messages").
//!
//! ```text
//! INFO_REQUEST = 16 | (empty)        -> INFO = 17 | UTF-8 JSON (DeviceInfo)
//! BYE          = 31 | (empty)        (the client ends the session)
//! FAILED       = 30 | UTF-8 reason   (a request failed; the session goes on)
//! ```
//!
//! Invariant: every call has a deadline (the socket's read and write timeouts, set on connect),
//! and a reply of a kind the request does not expect ends the session with an error naming it.

use crate::{Channel, Key, Role, RpcError};
use serde::{Deserialize, Serialize};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

pub const INFO_REQUEST: u8 = 16;
pub const INFO: u8 = 17;
pub const FAILED: u8 = 30;
pub const BYE: u8 = 31;

/// The largest frame the host accepts from an agent after the handshake.
pub const SESSION_CAP: u64 = 1 << 20;

/// One level of the device's cache hierarchy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cache {
    pub level: u32,
    /// `Data`, `Instruction` or `Unified`.
    #[serde(rename = "type")]
    pub kind: String,
    pub bytes: u64,
}

/// What an agent reports about its machine (fields it could not read are empty or 0).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    pub agent_version: String,
    pub protocol_version: u16,
    /// `x86_64` or `aarch64`.
    pub arch: String,
    pub kernel: String,
    pub cpu_model: String,
    pub cores: u32,
    pub memory_bytes: u64,
    pub clock_mhz: u32,
    pub max_upload_bytes: u64,
    pub caches: Vec<Cache>,
    /// The CPU's feature flags as the kernel names them (`avx2`, `asimddp`, ...).
    pub features: Vec<String>,
}

/// An authenticated session with a device agent.
#[derive(Debug)]
pub struct AgentClient {
    channel: Channel<TcpStream>,
}

impl AgentClient {
    /// Connects to the agent at `addr` and runs the handshake with `key`; `timeout` bounds the
    /// connection and every later read and write.
    pub fn connect(addr: &str, key: &Key, timeout: Duration) -> Result<AgentClient, RpcError> {
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
        let channel = Channel::handshake(stream, key, Role::Client, SESSION_CAP)?;
        Ok(AgentClient { channel })
    }

    /// What the device is.
    pub fn device_info(&mut self) -> Result<DeviceInfo, RpcError> {
        self.channel.send(INFO_REQUEST, &[])?;
        let payload = self.expect(INFO)?;
        serde_json::from_slice(&payload).map_err(|e| RpcError::Malformed {
            what: "INFO",
            reason: e.to_string(),
        })
    }

    /// Ends the session politely (the agent's child exits).
    pub fn bye(mut self) -> Result<(), RpcError> {
        self.channel.send(BYE, &[])
    }

    /// The session, for messages this client has no method for yet (and for tests).
    pub fn channel(&mut self) -> &mut Channel<TcpStream> {
        &mut self.channel
    }

    /// The next message's payload when it is of kind `want`; FAILED becomes
    /// [`RpcError::Remote`], any other kind [`RpcError::Unexpected`].
    fn expect(&mut self, want: u8) -> Result<Vec<u8>, RpcError> {
        let (kind, payload) = self.channel.recv()?;
        match kind {
            k if k == want => Ok(payload),
            FAILED => Err(RpcError::Remote(
                String::from_utf8_lossy(&payload).into_owned(),
            )),
            other => Err(RpcError::Unexpected { want, got: other }),
        }
    }
}
