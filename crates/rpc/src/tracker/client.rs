//! The tracker's clients: [`TrackerClient`] (tuners asking for devices, `kiln rpc status`) and
//! [`DeviceRegistration`] (a device joining the pool from Rust; boards use the C agent's
//! `--tracker`).
//!
//! Invariant: every call has a deadline except [`TrackerClient::wait_lease`], whose wait is
//! the caller's choice; a reply of an unexpected kind is an error naming it.

use super::*;
use crate::agent::FAILED;
use crate::{connect_stream, Channel, Key, Role, RpcError};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// An authenticated session with a tracker.
#[derive(Debug)]
pub struct TrackerClient {
    channel: Channel<TcpStream>,
    timeout: Duration,
}

fn expect(channel: &mut Channel<TcpStream>, want: u8) -> Result<Vec<u8>, RpcError> {
    let (kind, payload) = channel.recv()?;
    match kind {
        k if k == want => Ok(payload),
        FAILED => Err(RpcError::Remote(
            String::from_utf8_lossy(&payload).into_owned(),
        )),
        other => Err(RpcError::Unexpected { want, got: other }),
    }
}

impl TrackerClient {
    /// Connects to the tracker at `addr` and authenticates with `key`; `timeout` bounds the
    /// connection and every later call but [`TrackerClient::wait_lease`].
    pub fn connect(addr: &str, key: &Key, timeout: Duration) -> Result<TrackerClient, RpcError> {
        let stream = connect_stream(addr, timeout)?;
        let channel = Channel::handshake(stream, key, Role::Client, TRACKER_CAP)?;
        Ok(TrackerClient { channel, timeout })
    }

    /// Devices, leases and the queue.
    pub fn status(&mut self) -> Result<TrackerStatus, RpcError> {
        self.channel.send(STATUS_REQUEST, &[])?;
        from_payload("STATUS", &expect(&mut self.channel, STATUS)?)
    }

    /// Queues a request for a device; the lease comes later ([`TrackerClient::wait_lease`]).
    pub fn request(&mut self, request: &LeaseRequest) -> Result<Queued, RpcError> {
        self.channel.send(REQUEST, &to_payload(request))?;
        from_payload("QUEUED", &expect(&mut self.channel, QUEUED)?)
    }

    /// Waits for the queued request's lease (`None`: as long as it takes).
    pub fn wait_lease(&mut self, wait: Option<Duration>) -> Result<Lease, RpcError> {
        let set = |c: &Channel<TcpStream>, t| {
            c.stream()
                .set_read_timeout(t)
                .map_err(|e| RpcError::Connect(e.to_string()))
        };
        set(&self.channel, wait)?;
        let reply = self.channel.recv();
        set(&self.channel, Some(self.timeout))?;
        let (kind, payload) = reply?;
        match kind {
            LEASE => from_payload("LEASE", &payload),
            LEASE_ENDED => {
                let ended: LeaseEnded = from_payload("LEASE_ENDED", &payload)?;
                Err(RpcError::Remote(ended.reason))
            }
            other => Err(RpcError::Unexpected {
                want: LEASE,
                got: other,
            }),
        }
    }

    /// Ends the lease (or cancels the queued request); returns the tracker's reason, which
    /// says whether the lease had already ended (its deadline, its device vanishing).
    pub fn release(&mut self) -> Result<String, RpcError> {
        self.channel.send(RELEASE, &[])?;
        let ended: LeaseEnded =
            from_payload("LEASE_ENDED", &expect(&mut self.channel, LEASE_ENDED)?)?;
        Ok(ended.reason)
    }

    /// The session (for tests sending what this client would not).
    pub fn channel(&mut self) -> &mut Channel<TcpStream> {
        &mut self.channel
    }
}

/// A device registered with a tracker, kept alive by heartbeats on a background thread until
/// dropped (or until the tracker goes away: [`DeviceRegistration::alive`]).
#[derive(Debug)]
pub struct DeviceRegistration {
    pub device_id: u64,
    stop: Arc<AtomicBool>,
    alive: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DeviceRegistration {
    /// Registers an agent listening on `register.port` with the tracker at `addr`.
    pub fn register(
        addr: &str,
        key: &Key,
        register: &Register,
        timeout: Duration,
    ) -> Result<DeviceRegistration, RpcError> {
        let stream = connect_stream(addr, timeout)?;
        let mut channel = Channel::handshake(stream, key, Role::Client, TRACKER_CAP)?;
        channel.send(REGISTER, &to_payload(register))?;
        let registered: Registered =
            from_payload("REGISTERED", &expect(&mut channel, REGISTERED)?)?;
        let stop = Arc::new(AtomicBool::new(false));
        let alive = Arc::new(AtomicBool::new(true));
        let period = Duration::from_millis(registered.heartbeat_ms.max(10));
        let thread = std::thread::spawn({
            let (stop, alive) = (stop.clone(), alive.clone());
            move || {
                while !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(period);
                    let beat = channel
                        .send(HEARTBEAT, &[])
                        .and_then(|()| expect(&mut channel, HEARTBEAT_ACK));
                    if beat.is_err() {
                        alive.store(false, Ordering::SeqCst);
                        return;
                    }
                }
                let _ = channel.stream().shutdown(std::net::Shutdown::Both);
            }
        });
        Ok(DeviceRegistration {
            device_id: registered.device_id,
            stop,
            alive,
            thread: Some(thread),
        })
    }

    /// Whether the tracker still answers its heartbeats.
    pub fn alive(&self) -> bool {
        self.alive.load(Ordering::SeqCst)
    }
}

impl Drop for DeviceRegistration {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
