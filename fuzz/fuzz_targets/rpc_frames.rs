//! Fuzz target: arbitrary bytes as what a peer sends to the host's side of the RPC protocol.
//!
//! Invariant checked: the frame reader (under the pre-authentication cap and a session's), the
//! handshake as client and as server with the channel after it, the parsers of the agent's
//! replies (MEASURED, INFO) and of the tracker's messages never panic, never read a frame over its cap and end every
//! input in a result.
#![no_main]

use kiln_rpc::{Channel, Key, Role};
use libfuzzer_sys::fuzz_target;
use std::io::{Read, Write};

/// The input as the peer's side of a connection; what the host writes goes nowhere.
struct Peer<'a>(&'a [u8]);

impl Read for Peer<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Peer<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    for cap in [kiln_rpc::PREAUTH_MAX, 1 << 20] {
        let mut rest = data;
        while let Ok(body) = kiln_rpc::frame::read_frame(&mut rest, cap) {
            assert!(!body.is_empty() && body.len() as u64 <= cap);
        }
    }
    let key = Key::new(b"fuzzing-key-of-enough-bytes").expect("a valid key");
    for role in [Role::Client, Role::Server] {
        if let Ok(mut channel) = Channel::handshake(Peer(data), &key, role, 1 << 20) {
            while channel.recv().is_ok() {}
        }
    }
    let _ = kiln_rpc::agent::parse_measured(data);
    let _ = serde_json::from_slice::<kiln_rpc::DeviceInfo>(data);
    use kiln_rpc::tracker::{Lease, LeaseRequest, Register, TrackerStatus};
    let _ = serde_json::from_slice::<Register>(data);
    let _ = serde_json::from_slice::<LeaseRequest>(data);
    let _ = serde_json::from_slice::<Lease>(data);
    let _ = serde_json::from_slice::<TrackerStatus>(data);
});
