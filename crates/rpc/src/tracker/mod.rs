//! The tracker: a pool of device agents shared by tuning clients (`docs/rpc-protocol.md`,
//! "Tracker messages").
//!
//! Agents connect to the tracker, authenticate like every peer, register under a device key
//! (`rpi4`, `x86-avx2`, ...) with the port clients should reach them on, and send heartbeats.
//! Clients connect, authenticate and request a device of a key with a priority; requests wait
//! in one queue served by priority, first come first served within a priority; a granted lease
//! names the agent's address, and the client then talks to the agent directly (with the same
//! key). Every payload is UTF-8 JSON.
//!
//! ```text
//! REGISTER      = 40 | Register          (agent)  -> REGISTERED = 41 | Registered
//! HEARTBEAT     = 42 | (empty)           (agent)  -> HEARTBEAT_ACK = 43 | (empty)
//! REQUEST       = 44 | LeaseRequest      (client) -> QUEUED = 45 | Queued, later LEASE = 46 | Lease
//! RELEASE       = 47 | (empty)           (client) -> LEASE_ENDED = 48 | LeaseEnded
//! STATUS_REQUEST= 49 | (empty)                    -> STATUS = 50 | TrackerStatus
//! FAILED        = 30 | UTF-8 reason      (a request the tracker cannot serve; the session goes on)
//! ```
//!
//! Invariant: a device is leased to at most one client at a time; a lease ends exactly once —
//! by RELEASE, by its client's connection closing, by its deadline, or by its device vanishing
//! (LEASE_ENDED says which) — and its device then goes to the next request in the queue; a
//! device that misses its heartbeats for [`TrackerOptions::heartbeat`] x 3 or whose connection
//! closes is dropped.

mod client;
mod server;

pub use client::{DeviceRegistration, TrackerClient};
pub use server::{Tracker, TrackerHandle, TrackerOptions};

use serde::{Deserialize, Serialize};

pub const REGISTER: u8 = 40;
pub const REGISTERED: u8 = 41;
pub const HEARTBEAT: u8 = 42;
pub const HEARTBEAT_ACK: u8 = 43;
pub const REQUEST: u8 = 44;
pub const QUEUED: u8 = 45;
pub const LEASE: u8 = 46;
pub const RELEASE: u8 = 47;
pub const LEASE_ENDED: u8 = 48;
pub const STATUS_REQUEST: u8 = 49;
pub const STATUS: u8 = 50;

/// The largest frame a tracker session carries (JSON messages; device info is the largest).
pub const TRACKER_CAP: u64 = 64 << 10;

/// An agent's registration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Register {
    /// The pool the device joins.
    pub device_key: String,
    /// The port the agent listens on.
    pub port: u16,
    /// The host clients should connect to; absent: the address the registration came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The agent's INFO report.
    #[serde(default)]
    pub info: serde_json::Value,
}

/// The tracker's answer to a registration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    pub device_id: u64,
    /// How often the agent must send a heartbeat.
    pub heartbeat_ms: u64,
}

/// A client's request for a device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRequest {
    pub device_key: String,
    /// Higher is served first.
    #[serde(default)]
    pub priority: i32,
    /// How long the lease may last once granted.
    pub lease_ms: u64,
    /// Who asks (shown by `kiln rpc status`).
    #[serde(default)]
    pub client: String,
}

/// A request's place in the queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Queued {
    /// Increases with every request the tracker receives.
    pub ticket: u64,
    /// Requests served before this one, as the queue stands now.
    pub ahead: usize,
}

/// A granted lease.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub lease_id: u64,
    pub ticket: u64,
    pub device_id: u64,
    /// `HOST:PORT` of the agent.
    pub address: String,
    pub info: serde_json::Value,
    /// Milliseconds until the tracker ends the lease.
    pub deadline_ms: u64,
}

/// Why a lease (or a queued request) ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseEnded {
    pub reason: String,
}

/// A device in the pool.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeviceStatus {
    pub device_id: u64,
    pub device_key: String,
    pub address: String,
    /// The CPU model from its INFO, when it sent one.
    pub cpu: String,
    pub registered_s: f64,
    pub last_heartbeat_s: f64,
    pub lease_id: Option<u64>,
}

/// A lease in force.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaseStatus {
    pub lease_id: u64,
    pub device_id: u64,
    pub device_key: String,
    pub client: String,
    pub held_s: f64,
    pub remaining_s: f64,
}

/// A waiting request, in the order the queue serves them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueStatus {
    pub ticket: u64,
    pub device_key: String,
    pub priority: i32,
    pub client: String,
    pub waiting_s: f64,
}

/// What `kiln rpc status` shows.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrackerStatus {
    pub devices: Vec<DeviceStatus>,
    pub leases: Vec<LeaseStatus>,
    pub queue: Vec<QueueStatus>,
}

/// `value` as a message payload.
pub(crate) fn to_payload<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// A message payload as `T`.
pub(crate) fn from_payload<T: for<'a> Deserialize<'a>>(
    what: &'static str,
    payload: &[u8],
) -> Result<T, crate::RpcError> {
    serde_json::from_slice(payload).map_err(|e| crate::RpcError::Malformed {
        what,
        reason: e.to_string(),
    })
}
