//! The tracker on loopback: leases by priority and arrival, and every way a lease or a device
//! ends; hostile peers leave it serving.

use kiln_rpc::tracker::{
    DeviceRegistration, LeaseRequest, Register, Tracker, TrackerClient, TrackerHandle,
    TrackerOptions, REQUEST,
};
use kiln_rpc::Key;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(10);

fn key() -> Key {
    Key::new(b"tracker test key, 32 bytes long!").unwrap()
}

fn tracker(heartbeat_ms: u64) -> TrackerHandle {
    std::env::set_var("KILN_TRACKER_QUIET", "1");
    let options = TrackerOptions {
        heartbeat: Duration::from_millis(heartbeat_ms),
        ..TrackerOptions::default()
    };
    Tracker::bind("127.0.0.1:0", key(), options)
        .unwrap()
        .spawn()
        .unwrap()
}

fn device(t: &TrackerHandle, device_key: &str, port: u16) -> DeviceRegistration {
    let register = Register {
        device_key: device_key.into(),
        port,
        host: None,
        info: serde_json::json!({"cpu_model": "test cpu"}),
    };
    DeviceRegistration::register(&t.addr().to_string(), &key(), &register, T).unwrap()
}

fn client(t: &TrackerHandle) -> TrackerClient {
    TrackerClient::connect(&t.addr().to_string(), &key(), T).unwrap()
}

fn request(device_key: &str, priority: i32, lease_ms: u64) -> LeaseRequest {
    LeaseRequest {
        device_key: device_key.into(),
        priority,
        lease_ms,
        client: "test".into(),
    }
}

/// Polls the tracker's state until `done` holds (at most 10 s).
fn wait_for(
    t: &TrackerHandle,
    what: &str,
    done: impl Fn(&kiln_rpc::tracker::TrackerStatus) -> bool,
) {
    let start = Instant::now();
    while !done(&t.status()) {
        assert!(
            start.elapsed() < T,
            "timed out waiting for {what}: {:?}",
            t.status()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_hundred_concurrent_clients_are_served_by_priority_then_arrival_and_none_is_lost() {
    let t = tracker(1000);
    let _device = device(&t, "pool", 9);
    let mut holder = client(&t);
    holder.request(&request("pool", 0, 60_000)).unwrap();
    let lease = holder.wait_lease(Some(T)).unwrap();
    assert_eq!(lease.address, "127.0.0.1:9");
    // Every client queues while the only device is held; the order they are served in is
    // recorded while each holds the lease, so it is the order of the grants.
    let served = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..100)
        .map(|i| {
            let addr = t.addr().to_string();
            let served = served.clone();
            std::thread::spawn(move || {
                let mut c = TrackerClient::connect(&addr, &key(), T).unwrap();
                let priority = [0, 5, 1, -2][i % 4];
                let queued = c.request(&request("pool", priority, 60_000)).unwrap();
                let lease = c.wait_lease(Some(Duration::from_secs(60))).unwrap();
                assert_eq!(lease.ticket, queued.ticket);
                served.lock().unwrap().push((priority, queued.ticket));
                assert_eq!(c.release().unwrap(), "released");
                (priority, queued.ticket)
            })
        })
        .collect();
    wait_for(&t, "100 queued requests", |s| s.queue.len() == 100);
    let status = t.status();
    assert_eq!(status.leases.len(), 1);
    assert_eq!(status.devices[0].lease_id, Some(lease.lease_id));
    assert_eq!(holder.release().unwrap(), "released");
    let mut asked: Vec<(i32, u64)> = threads.into_iter().map(|h| h.join().unwrap()).collect();
    let served = served.lock().unwrap().clone();
    asked.sort_by_key(|&(p, ticket)| (-p, ticket));
    assert_eq!(served.len(), 100, "every request was served once");
    assert_eq!(served, asked, "served by priority, then in arrival order");
    wait_for(&t, "the device free again", |s| {
        s.leases.is_empty() && s.queue.is_empty() && s.devices[0].lease_id.is_none()
    });
}

#[test]
fn requests_wait_for_their_own_device_key() {
    let t = tracker(1000);
    let _x86 = device(&t, "x86", 10);
    let _arm = device(&t, "arm", 11);
    let mut a = client(&t);
    a.request(&request("arm", 0, 60_000)).unwrap();
    assert_eq!(a.wait_lease(Some(T)).unwrap().address, "127.0.0.1:11");
    let mut b = client(&t);
    b.request(&request("arm", 0, 60_000)).unwrap();
    // The x86 device is free but of another key: b waits.
    assert!(b.wait_lease(Some(Duration::from_millis(300))).is_err());
    let mut c = client(&t);
    c.request(&request("nonexistent", 0, 60_000)).unwrap();
    let s = t.status();
    assert_eq!(s.queue.len(), 2);
    assert_eq!(s.devices.iter().filter(|d| d.lease_id.is_some()).count(), 1);
}

#[test]
fn a_lease_ends_when_its_client_goes_away_or_its_deadline_passes() {
    let t = tracker(1000);
    let _device = device(&t, "pool", 9);
    let mut first = client(&t);
    first.request(&request("pool", 0, 60_000)).unwrap();
    first.wait_lease(Some(T)).unwrap();
    let mut second = client(&t);
    second.request(&request("pool", 0, 300)).unwrap();
    drop(first);
    // The first client vanished: the second gets the device, for 300 ms.
    second.wait_lease(Some(T)).unwrap();
    let start = Instant::now();
    let mut third = client(&t);
    third.request(&request("pool", 0, 60_000)).unwrap();
    third.wait_lease(Some(T)).unwrap();
    assert!(start.elapsed() >= Duration::from_millis(250));
    // The second learns its lease ended at the deadline.
    assert_eq!(second.release().unwrap(), "the lease's deadline passed");
}

#[test]
fn a_device_that_vanishes_or_falls_silent_is_dropped_and_its_lease_ends() {
    let t = tracker(100);
    let dev = device(&t, "pool", 9);
    let mut c = client(&t);
    c.request(&request("pool", 0, 60_000)).unwrap();
    c.wait_lease(Some(T)).unwrap();
    drop(dev);
    wait_for(&t, "no devices", |s| {
        s.devices.is_empty() && s.leases.is_empty()
    });
    // The tracker told the client before it asked.
    let reason = c.release().unwrap();
    assert!(reason.starts_with("device vanished"), "{reason}");

    // A device that registers and then never sends a heartbeat is dropped after three periods.
    let stream = kiln_rpc::connect_stream(&t.addr().to_string(), T).unwrap();
    let mut ch =
        kiln_rpc::Channel::handshake(stream, &key(), kiln_rpc::Role::Client, 1 << 16).unwrap();
    let register = serde_json::json!({"device_key": "pool", "port": 12});
    ch.send(kiln_rpc::tracker::REGISTER, register.to_string().as_bytes())
        .unwrap();
    ch.recv().unwrap();
    wait_for(&t, "the silent device registered", |s| s.devices.len() == 1);
    let start = Instant::now();
    wait_for(&t, "the silent device dropped", |s| s.devices.is_empty());
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[test]
fn hostile_peers_end_only_their_own_sessions() {
    let t = tracker(1000);
    let _device = device(&t, "pool", 9);
    let addr = t.addr().to_string();
    let raw = |bytes: &[u8]| {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(T)).unwrap();
        let _ = s.write_all(bytes);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut sink = Vec::new();
        let _ = s.read_to_end(&mut sink);
    };
    raw(&u64::MAX.to_le_bytes());
    raw(b"GET / HTTP/1.1\r\n\r\n");
    raw(&[5, 0, 0, 0, 0, 0, 0, 0, 1, 2]);
    let wrong = Key::new(b"another key entirely, 32 bytes!!").unwrap();
    assert!(TrackerClient::connect(&addr, &wrong, T).is_err());
    // An authenticated client sending nonsense gets FAILED, or loses only its own session.
    let mut c = client(&t);
    c.channel().send(REQUEST, b"{not json").unwrap();
    assert!(c.status().is_err());
    let mut c = client(&t);
    c.channel().send(99, b"").unwrap();
    assert_eq!(c.channel().recv().unwrap().0, kiln_rpc::agent::FAILED);
    assert_eq!(c.status().unwrap().devices.len(), 1);
    // A request without a device key is refused, and the session goes on.
    assert!(c.request(&request("", 0, 1000)).is_err());
    assert_eq!(client(&t).status().unwrap().devices.len(), 1);
}
