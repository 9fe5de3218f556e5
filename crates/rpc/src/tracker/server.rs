//! The tracker's server: one thread per connection (and one reading its frames), all sharing
//! one [`State`] under a mutex; every change that frees a device or queues a request runs
//! [`State::dispatch`], which hands each free device to the best waiting request of its key.
//!
//! Invariant: a connection's handler is the only writer of its session; grants and the end of
//! a lease whose device vanished reach it as [`Event`]s through its own queue, so no message is
//! ever written by two threads.

use super::*;
use crate::agent::FAILED;
use crate::channel::RecvHalf;
use crate::{Channel, Key, Role, RpcError};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How the tracker runs.
#[derive(Clone, Debug)]
pub struct TrackerOptions {
    /// How often agents send heartbeats; one silent for three periods is dropped.
    pub heartbeat: Duration,
    /// The longest lease granted (requests asking for more get this).
    pub max_lease: Duration,
    /// Connections served at once; more are closed at once.
    pub max_connections: usize,
    /// Deadline of the handshake and of every write.
    pub io_timeout: Duration,
}

impl Default for TrackerOptions {
    fn default() -> Self {
        TrackerOptions {
            heartbeat: Duration::from_secs(2),
            max_lease: Duration::from_secs(24 * 3600),
            max_connections: 4096,
            io_timeout: Duration::from_secs(10),
        }
    }
}

/// What a connection's handler waits for.
enum Event {
    Message(u8, Vec<u8>),
    Closed(String),
    Granted(Lease),
    /// The lease's device vanished.
    Ended(String),
}

struct Device {
    key: String,
    address: String,
    info: serde_json::Value,
    registered: Instant,
    last_heartbeat: Instant,
    lease: Option<u64>,
}

struct Ticket {
    ticket: u64,
    key: String,
    priority: i32,
    client: String,
    lease: Duration,
    since: Instant,
    notify: Sender<Event>,
}

struct LeaseState {
    device: u64,
    key: String,
    client: String,
    since: Instant,
    deadline: Instant,
    notify: Sender<Event>,
}

#[derive(Default)]
struct State {
    devices: BTreeMap<u64, Device>,
    /// In arrival order; served by priority, then arrival.
    queue: Vec<Ticket>,
    leases: BTreeMap<u64, LeaseState>,
    next_id: u64,
}

impl State {
    fn id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Index of the request served next among those for `key`.
    fn best(&self, key: &str) -> Option<usize> {
        (0..self.queue.len())
            .filter(|&i| self.queue[i].key == key)
            .min_by_key(|&i| (-(self.queue[i].priority as i64), self.queue[i].ticket))
    }

    /// Gives every free device to the best waiting request of its key.
    fn dispatch(&mut self) {
        let free: Vec<u64> = self
            .devices
            .iter()
            .filter(|(_, d)| d.lease.is_none())
            .map(|(&id, _)| id)
            .collect();
        for device in free {
            let key = self.devices[&device].key.clone();
            while let Some(i) = self.best(&key) {
                let t = self.queue.remove(i);
                let lease_id = self.id();
                let d = &self.devices[&device];
                let grant = Lease {
                    lease_id,
                    ticket: t.ticket,
                    device_id: device,
                    address: d.address.clone(),
                    info: d.info.clone(),
                    deadline_ms: t.lease.as_millis() as u64,
                };
                // A request whose connection is gone is dropped; the device goes to the next.
                if t.notify.send(Event::Granted(grant)).is_ok() {
                    let now = Instant::now();
                    self.leases.insert(
                        lease_id,
                        LeaseState {
                            device,
                            key: t.key,
                            client: t.client,
                            since: now,
                            deadline: now + t.lease,
                            notify: t.notify,
                        },
                    );
                    if let Some(d) = self.devices.get_mut(&device) {
                        d.lease = Some(lease_id);
                    }
                    break;
                }
            }
        }
    }

    /// Ends lease `id` (if it is still in force) and hands its device on.
    fn end_lease(&mut self, id: u64) {
        if let Some(l) = self.leases.remove(&id) {
            if let Some(d) = self.devices.get_mut(&l.device) {
                d.lease = None;
            }
            self.dispatch();
        }
    }

    /// Drops device `id`; the holder of its lease learns why.
    fn drop_device(&mut self, id: u64, why: &str) {
        if let Some(d) = self.devices.remove(&id) {
            if let Some(lease) = d.lease.and_then(|l| self.leases.remove(&l)) {
                let _ = lease
                    .notify
                    .send(Event::Ended(format!("device vanished: {why}")));
            }
        }
    }

    fn status(&self) -> TrackerStatus {
        let now = Instant::now();
        let secs = |t: Instant| now.saturating_duration_since(t).as_secs_f64();
        let mut queue: Vec<&Ticket> = self.queue.iter().collect();
        queue.sort_by_key(|t| (-(t.priority as i64), t.ticket));
        TrackerStatus {
            devices: self
                .devices
                .iter()
                .map(|(&id, d)| DeviceStatus {
                    device_id: id,
                    device_key: d.key.clone(),
                    address: d.address.clone(),
                    cpu: d.info["cpu_model"].as_str().unwrap_or_default().to_string(),
                    registered_s: secs(d.registered),
                    last_heartbeat_s: secs(d.last_heartbeat),
                    lease_id: d.lease,
                })
                .collect(),
            leases: self
                .leases
                .iter()
                .map(|(&id, l)| LeaseStatus {
                    lease_id: id,
                    device_id: l.device,
                    device_key: l.key.clone(),
                    client: l.client.clone(),
                    held_s: secs(l.since),
                    remaining_s: l.deadline.saturating_duration_since(now).as_secs_f64(),
                })
                .collect(),
            queue: queue
                .into_iter()
                .map(|t| QueueStatus {
                    ticket: t.ticket,
                    device_key: t.key.clone(),
                    priority: t.priority,
                    client: t.client.clone(),
                    waiting_s: secs(t.since),
                })
                .collect(),
        }
    }
}

struct Shared {
    key: Key,
    options: TrackerOptions,
    state: Mutex<State>,
    connections: AtomicUsize,
    stop: AtomicBool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        // A handler that panicked left the state consistent (every update is one statement
        // group under the lock): keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A bound tracker, not yet serving.
pub struct Tracker {
    listener: TcpListener,
    shared: Arc<Shared>,
}

/// A tracker serving on a background thread (stopped when dropped).
pub struct TrackerHandle {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Tracker {
    /// Listens on `addr` (port 0 picks a free one).
    pub fn bind(addr: &str, key: Key, options: TrackerOptions) -> std::io::Result<Tracker> {
        let listener = TcpListener::bind(addr)?;
        Ok(Tracker {
            listener,
            shared: Arc::new(Shared {
                key,
                options,
                state: Mutex::new(State::default()),
                connections: AtomicUsize::new(0),
                stop: AtomicBool::new(false),
            }),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the process ends.
    pub fn serve(self) {
        accept_loop(&self.listener, &self.shared);
    }

    /// Serves on a background thread.
    pub fn spawn(self) -> std::io::Result<TrackerHandle> {
        let addr = self.listener.local_addr()?;
        let shared = self.shared.clone();
        let thread = std::thread::Builder::new()
            .name("kiln-tracker".into())
            .spawn(move || accept_loop(&self.listener, &self.shared))?;
        Ok(TrackerHandle {
            addr,
            shared,
            thread: Some(thread),
        })
    }
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tracker({:?})", self.listener.local_addr().ok())
    }
}

impl std::fmt::Debug for TrackerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrackerHandle({})", self.addr)
    }
}

impl TrackerHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What `kiln rpc status` would show, read directly.
    pub fn status(&self) -> TrackerStatus {
        self.shared.state().status()
    }
}

impl Drop for TrackerHandle {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept call.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        if shared.connections.load(Ordering::SeqCst) >= shared.options.max_connections {
            continue;
        }
        shared.connections.fetch_add(1, Ordering::SeqCst);
        let shared = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("kiln-tracker-conn".into())
            .spawn({
                let shared = shared.clone();
                move || {
                    let peer = stream
                        .peer_addr()
                        .map(|a| a.to_string())
                        .unwrap_or_default();
                    if let Err(e) = serve_connection(stream, &shared) {
                        tracing_line(&format!("session from {peer} ended: {e}"));
                    }
                    shared.connections.fetch_sub(1, Ordering::SeqCst);
                }
            });
        if spawned.is_err() {
            shared.connections.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// One line on stderr about a session (never a key or a payload).
fn tracing_line(line: &str) {
    if std::env::var_os("KILN_TRACKER_QUIET").is_none() {
        eprintln!("kiln tracker: {line}");
    }
}

/// Reads the session's frames on a thread of their own, as events.
fn spawn_reader(mut rx: RecvHalf, events: Sender<Event>) {
    std::thread::spawn(move || loop {
        match rx.recv() {
            Ok((kind, payload)) => {
                if events.send(Event::Message(kind, payload)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = events.send(Event::Closed(e.to_string()));
                return;
            }
        }
    });
}

fn serve_connection(stream: TcpStream, shared: &Arc<Shared>) -> Result<(), RpcError> {
    let io = |e: std::io::Error| RpcError::Connect(e.to_string());
    let peer = stream.peer_addr().map_err(io)?;
    let timeout = Some(shared.options.io_timeout);
    stream.set_read_timeout(timeout).map_err(io)?;
    stream.set_write_timeout(timeout).map_err(io)?;
    stream.set_nodelay(true).map_err(io)?;
    let closer = stream.try_clone().map_err(io)?;
    let mut channel = Channel::handshake(stream, &shared.key, Role::Server, TRACKER_CAP)?;
    let (kind, payload) = channel.recv()?;
    let served = serve_session(channel, kind, payload, peer, shared);
    // The reader thread ends with the socket.
    let _ = closer.shutdown(std::net::Shutdown::Both);
    served
}

fn serve_session(
    channel: Channel<TcpStream>,
    kind: u8,
    payload: Vec<u8>,
    peer: SocketAddr,
    shared: &Arc<Shared>,
) -> Result<(), RpcError> {
    let io = |e: std::io::Error| RpcError::Connect(e.to_string());
    if kind == REGISTER {
        let register: Register = from_payload("REGISTER", &payload)?;
        // An agent is silent between heartbeats: three missed ones end it.
        let silence = shared.options.heartbeat * 3;
        channel
            .stream()
            .set_read_timeout(Some(silence))
            .map_err(io)?;
        let (tx, rx) = channel.split().map_err(io)?;
        let (events_tx, events) = mpsc::channel();
        spawn_reader(rx, events_tx);
        return serve_device(tx, events, register, peer, shared);
    }
    channel.stream().set_read_timeout(None).map_err(io)?;
    let (tx, rx) = channel.split().map_err(io)?;
    let (events_tx, events) = mpsc::channel();
    spawn_reader(rx, events_tx.clone());
    serve_client(tx, events, events_tx, (kind, payload), peer, shared)
}

fn serve_device(
    mut tx: crate::channel::SendHalf,
    events: mpsc::Receiver<Event>,
    register: Register,
    peer: SocketAddr,
    shared: &Arc<Shared>,
) -> Result<(), RpcError> {
    if register.device_key.is_empty() || register.port == 0 {
        tx.send(FAILED, b"REGISTER needs a device key and a port")?;
        return Ok(());
    }
    let host = register
        .host
        .clone()
        .unwrap_or_else(|| peer.ip().to_string());
    let address = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{}", register.port)
    } else {
        format!("{host}:{}", register.port)
    };
    let id = {
        let mut state = shared.state();
        let id = state.id();
        // An agent that restarted registers again: its old entry is gone.
        let stale: Vec<u64> = state
            .devices
            .iter()
            .filter(|(_, d)| d.address == address)
            .map(|(&i, _)| i)
            .collect();
        for old in stale {
            state.drop_device(old, "registered again");
        }
        let now = Instant::now();
        state.devices.insert(
            id,
            Device {
                key: register.device_key.clone(),
                address: address.clone(),
                info: register.info,
                registered: now,
                last_heartbeat: now,
                lease: None,
            },
        );
        id
    };
    tracing_line(&format!(
        "device {id} `{}` at {address} registered",
        register.device_key
    ));
    let registered = Registered {
        device_id: id,
        heartbeat_ms: shared.options.heartbeat.as_millis() as u64,
    };
    let result = tx
        .send(REGISTERED, &to_payload(&registered))
        .and_then(|()| {
            shared.state().dispatch();
            let silence = shared.options.heartbeat * 3;
            loop {
                match events.recv_timeout(silence) {
                    Ok(Event::Message(HEARTBEAT, _)) => {
                        if let Some(d) = shared.state().devices.get_mut(&id) {
                            d.last_heartbeat = Instant::now();
                        } else {
                            return Ok("dropped".to_string());
                        }
                        tx.send(HEARTBEAT_ACK, &[])?;
                    }
                    Ok(Event::Message(kind, _)) => {
                        tx.send(FAILED, format!("unexpected message kind {kind}").as_bytes())?;
                    }
                    Ok(Event::Closed(why)) => return Ok(why),
                    Ok(_) => {}
                    Err(RecvTimeoutError::Timeout) => {
                        return Ok(format!("no heartbeat for {} ms", silence.as_millis()))
                    }
                    Err(RecvTimeoutError::Disconnected) => return Ok("closed".into()),
                }
            }
        });
    let why = match &result {
        Ok(why) => why.clone(),
        Err(e) => e.to_string(),
    };
    tracing_line(&format!("device {id} at {address} dropped: {why}"));
    let mut state = shared.state();
    state.drop_device(id, &why);
    result.map(|_| ())
}

/// Where a client's connection stands.
enum ClientState {
    Idle,
    Queued(u64),
    Leased(u64, Instant),
}

fn serve_client(
    mut tx: crate::channel::SendHalf,
    events: mpsc::Receiver<Event>,
    notify: Sender<Event>,
    first: (u8, Vec<u8>),
    peer: SocketAddr,
    shared: &Arc<Shared>,
) -> Result<(), RpcError> {
    let mut now = ClientState::Idle;
    let mut next = Some(Event::Message(first.0, first.1));
    let result = loop {
        let event = match next.take() {
            Some(e) => e,
            None => match &now {
                ClientState::Leased(_, deadline) => {
                    let wait = deadline.saturating_duration_since(Instant::now());
                    match events.recv_timeout(wait) {
                        Ok(e) => e,
                        Err(RecvTimeoutError::Timeout) => {
                            Event::Ended("the lease's deadline passed".into())
                        }
                        Err(RecvTimeoutError::Disconnected) => Event::Closed("closed".into()),
                    }
                }
                _ => match events.recv() {
                    Ok(e) => e,
                    Err(_) => Event::Closed("closed".into()),
                },
            },
        };
        match (event, &now) {
            (Event::Closed(why), _) => break Ok(why),
            (Event::Message(STATUS_REQUEST, _), _) => {
                let status = shared.state().status();
                if let Err(e) = tx.send(STATUS, &to_payload(&status)) {
                    break Err(e);
                }
            }
            (Event::Message(REQUEST, payload), ClientState::Idle) => {
                let request: LeaseRequest = match from_payload("REQUEST", &payload) {
                    Ok(r) => r,
                    Err(e) => break Err(e),
                };
                if request.device_key.is_empty() || request.lease_ms == 0 {
                    if let Err(e) = tx.send(FAILED, b"REQUEST needs a device key and a lease") {
                        break Err(e);
                    }
                    continue;
                }
                let lease = Duration::from_millis(request.lease_ms).min(shared.options.max_lease);
                let client = if request.client.is_empty() {
                    peer.to_string()
                } else {
                    format!("{} ({peer})", request.client)
                };
                let mut state = shared.state();
                let ticket = state.id();
                let ahead = state
                    .queue
                    .iter()
                    .filter(|t| t.key == request.device_key && t.priority >= request.priority)
                    .count();
                state.queue.push(Ticket {
                    ticket,
                    key: request.device_key,
                    priority: request.priority,
                    client,
                    lease,
                    since: Instant::now(),
                    notify: notify.clone(),
                });
                // QUEUED goes out before any LEASE: the grant waits in this handler's queue.
                let sent = tx.send(QUEUED, &to_payload(&Queued { ticket, ahead }));
                state.dispatch();
                drop(state);
                if let Err(e) = sent {
                    break Err(e);
                }
                now = ClientState::Queued(ticket);
            }
            (Event::Granted(lease), ClientState::Queued(_)) => {
                let id = lease.lease_id;
                let deadline = Instant::now() + Duration::from_millis(lease.deadline_ms);
                now = ClientState::Leased(id, deadline);
                if let Err(e) = tx.send(LEASE, &to_payload(&lease)) {
                    break Err(e);
                }
            }
            (Event::Message(RELEASE, _), ClientState::Queued(ticket)) => {
                let ticket = *ticket;
                shared.state().queue.retain(|t| t.ticket != ticket);
                now = ClientState::Idle;
                let ended = LeaseEnded {
                    reason: "the request was cancelled".into(),
                };
                if let Err(e) = tx.send(LEASE_ENDED, &to_payload(&ended)) {
                    break Err(e);
                }
            }
            (Event::Message(RELEASE, _), ClientState::Leased(id, _)) => {
                shared.state().end_lease(*id);
                now = ClientState::Idle;
                let ended = LeaseEnded {
                    reason: "released".into(),
                };
                if let Err(e) = tx.send(LEASE_ENDED, &to_payload(&ended)) {
                    break Err(e);
                }
            }
            (Event::Ended(reason), ClientState::Leased(id, _)) => {
                shared.state().end_lease(*id);
                now = ClientState::Idle;
                if let Err(e) = tx.send(LEASE_ENDED, &to_payload(&LeaseEnded { reason })) {
                    break Err(e);
                }
            }
            (Event::Message(kind, _), _) => {
                let why = format!("message kind {kind} is not expected now");
                if let Err(e) = tx.send(FAILED, why.as_bytes()) {
                    break Err(e);
                }
            }
            // A grant or an end that raced with this connection's own change: undo it.
            (Event::Granted(lease), _) => shared.state().end_lease(lease.lease_id),
            (Event::Ended(_), _) => {}
        }
    };
    // However the connection ends, what it held is given back.
    let mut state = shared.state();
    match now {
        ClientState::Queued(ticket) => state.queue.retain(|t| t.ticket != ticket),
        ClientState::Leased(id, _) => state.end_lease(id),
        ClientState::Idle => {}
    }
    // A grant sent after the connection's last look is still in its queue.
    while let Ok(e) = events.try_recv() {
        if let Event::Granted(lease) = e {
            state.end_lease(lease.lease_id);
        }
    }
    result.map(|_| ())
}
