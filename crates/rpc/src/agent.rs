//! The host's side of a session with a device agent: connecting with deadlines, and the
//! application messages (`docs/rpc-protocol.md`, "Agent messages").
//!
//! ```text
//! INFO_REQUEST = 16 | (empty)                 -> INFO = 17 | UTF-8 JSON (DeviceInfo)
//! UPLOAD_BEGIN = 18 | size u64 | sha256 [32]  -> UPLOAD_READY = 19 | chunk bytes u32
//! UPLOAD_CHUNK = 20 | bytes                   (no reply)
//! UPLOAD_END   = 21 | (empty)                 -> UPLOADED = 22 | sha256
//! MEASURE      = 23 | sha256 | MeasureRequest -> MEASURED = 24 | Measurement
//! DELETE       = 25 | sha256                  -> DELETED = 26 | sha256
//! BYE          = 31 | (empty)                 (the client ends the session)
//! FAILED       = 30 | UTF-8 reason            (a request failed; the session goes on)
//! ```
//!
//! Invariant: every call has a deadline (the socket's read and write timeouts, set on connect),
//! and a reply of a kind the request does not expect ends the session with an error naming it.

use crate::{Channel, Key, Role, RpcError};
use serde::{Deserialize, Serialize};
use std::net::TcpStream;
use std::time::Duration;

pub const INFO_REQUEST: u8 = 16;
pub const INFO: u8 = 17;
pub const UPLOAD_BEGIN: u8 = 18;
pub const UPLOAD_READY: u8 = 19;
pub const UPLOAD_CHUNK: u8 = 20;
pub const UPLOAD_END: u8 = 21;
pub const UPLOADED: u8 = 22;
pub const MEASURE: u8 = 23;
pub const MEASURED: u8 = 24;
pub const DELETE: u8 = 25;
pub const DELETED: u8 = 26;
pub const FAILED: u8 = 30;
pub const BYE: u8 = 31;

/// How a library is timed on the device (TVM's time evaluator): `warmup` untimed calls, then
/// `repeat` timings of `number` calls each, `number` grown until a timing lasts at least
/// `min_repeat_ms`; the whole measurement killed after `timeout_ms`; inputs generated from
/// `seed` ([`fill_input`]); the measuring process limited to `memory_mb` of address space (0:
/// the agent's default, 4 GiB).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MeasureRequest {
    /// Threads of the model's context (0: one per online CPU).
    pub threads: i32,
    pub number: u32,
    pub repeat: u32,
    pub min_repeat_ms: u32,
    pub warmup: u32,
    pub timeout_ms: u32,
    pub seed: u64,
    pub memory_mb: u64,
}

impl Default for MeasureRequest {
    fn default() -> Self {
        MeasureRequest {
            threads: 1,
            number: 1,
            repeat: 3,
            min_repeat_ms: 10,
            warmup: 1,
            timeout_ms: 10_000,
            seed: 1,
            memory_mb: 0,
        }
    }
}

/// How a measurement ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeasureStatus {
    Ok,
    /// The library crashed (the message names the signal).
    Crashed,
    /// Still running at the deadline: killed.
    Timeout,
    /// It could not be loaded or run (the message says why).
    Error,
}

/// A measurement's result.
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    pub status: MeasureStatus,
    pub message: String,
    /// SHA-256 of the outputs (in order) after the last call.
    pub checksum: [u8; 32],
    /// Calls per timing in the end.
    pub number: u32,
    /// Seconds per call, one per timing.
    pub seconds: Vec<f64>,
}

/// SHA-256 of `bytes` (an upload's name, an outputs checksum).
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// Fills an input buffer as the agent does for MEASURE: element type `dtype` (`kiln_model.h`'s
/// codes), `state` an xorshift64* state seeded with the request's seed and carried from input
/// to input; f32 and f64 uniform in `[0, 1)`, every other type zero.
pub fn fill_input(buf: &mut [u8], dtype: i32, state: &mut u64) {
    let mut next = || {
        let mut x = if *state == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            *state
        };
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        *state = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    match dtype {
        0 => {
            for c in buf.chunks_exact_mut(4) {
                let v = (next() >> 40) as f32 / 16_777_216.0;
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        8 => {
            for c in buf.chunks_exact_mut(8) {
                let v = (next() >> 11) as f64 / 9_007_199_254_740_992.0;
                c.copy_from_slice(&v.to_le_bytes());
            }
        }
        _ => buf.fill(0),
    }
}

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
        let stream = crate::connect_stream(addr, timeout)?;
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

    /// Uploads a library in chunks; returns its SHA-256, under which the agent stored it.
    pub fn upload(&mut self, bytes: &[u8]) -> Result<[u8; 32], RpcError> {
        let hash = sha256(bytes);
        let mut begin = (bytes.len() as u64).to_le_bytes().to_vec();
        begin.extend_from_slice(&hash);
        self.channel.send(UPLOAD_BEGIN, &begin)?;
        let ready = self.expect(UPLOAD_READY)?;
        let chunk = ready
            .get(..4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .filter(|&c| c > 0)
            .ok_or_else(|| RpcError::Malformed {
                what: "UPLOAD_READY",
                reason: format!("{} bytes", ready.len()),
            })?;
        let chunk = chunk.min(SESSION_CAP as usize - 64);
        for part in bytes.chunks(chunk) {
            self.channel.send(UPLOAD_CHUNK, part)?;
        }
        self.channel.send(UPLOAD_END, &[])?;
        let stored = self.expect(UPLOADED)?;
        if stored != hash {
            return Err(RpcError::Malformed {
                what: "UPLOADED",
                reason: "another hash than the upload's".into(),
            });
        }
        Ok(hash)
    }

    /// Times the uploaded library `hash` on the device. The read deadline is stretched to the
    /// request's own timeout (plus the connection's) for this call.
    pub fn measure(
        &mut self,
        hash: &[u8; 32],
        req: &MeasureRequest,
    ) -> Result<Measurement, RpcError> {
        let mut p = hash.to_vec();
        for v in [
            req.threads as u32,
            req.number,
            req.repeat,
            req.min_repeat_ms,
            req.warmup,
            req.timeout_ms,
        ] {
            p.extend_from_slice(&v.to_le_bytes());
        }
        p.extend_from_slice(&req.seed.to_le_bytes());
        p.extend_from_slice(&req.memory_mb.to_le_bytes());
        let base = self.channel.stream().read_timeout().ok().flatten();
        let longer = base.map(|b| b + Duration::from_millis(u64::from(req.timeout_ms)));
        let set = |c: &Channel<TcpStream>, t| c.stream().set_read_timeout(t);
        set(&self.channel, longer).map_err(|e| RpcError::Connect(e.to_string()))?;
        self.channel.send(MEASURE, &p)?;
        let reply = self.expect(MEASURED);
        set(&self.channel, base).map_err(|e| RpcError::Connect(e.to_string()))?;
        parse_measured(&reply?)
    }

    /// Deletes the uploaded library `hash` from the device.
    pub fn delete(&mut self, hash: &[u8; 32]) -> Result<(), RpcError> {
        self.channel.send(DELETE, hash)?;
        self.expect(DELETED).map(|_| ())
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

/// A MEASURED payload: `status u8 | checksum [32] | number u32 | count u32 | f64 x count |
/// message`.
pub fn parse_measured(p: &[u8]) -> Result<Measurement, RpcError> {
    let bad = |reason: &str| RpcError::Malformed {
        what: "MEASURED",
        reason: reason.into(),
    };
    if p.len() < 41 {
        return Err(bad("shorter than its header"));
    }
    let status = match p[0] {
        0 => MeasureStatus::Ok,
        1 => MeasureStatus::Crashed,
        2 => MeasureStatus::Timeout,
        3 => MeasureStatus::Error,
        s => return Err(bad(&format!("status {s}"))),
    };
    let word = |at: usize| u32::from_le_bytes([p[at], p[at + 1], p[at + 2], p[at + 3]]);
    let (number, count) = (word(33), word(37) as usize);
    let end = 41 + 8 * count;
    if count > 64 || p.len() < end {
        return Err(bad(&format!("{count} timings in {} bytes", p.len())));
    }
    let seconds = p[41..end]
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default()))
        .collect();
    let mut checksum = [0u8; 32];
    checksum.copy_from_slice(&p[1..33]);
    Ok(Measurement {
        status,
        message: String::from_utf8_lossy(&p[end..]).into_owned(),
        checksum,
        number,
        seconds,
    })
}
