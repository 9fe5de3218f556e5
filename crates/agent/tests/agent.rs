//! The device agent built for this machine and run on loopback: the device information round
//! trip; a compiled model uploaded, timed and checked against the host's own run of the same
//! inputs; and an agent that outlives every hostile or broken client (a wrong key, another
//! protocol version, frame lengths of 0, over the cap and 2^64 - 1, truncated frames, an HTTP
//! request, tampered, replayed, reordered and dropped frames (these and the version mismatch
//! against a tracker too), a client beyond the session
//! limit, a client that drops mid-upload, a wrong hash, libraries that crash, hang, allocate
//! without bound or exit). Skipped with a notice where this machine has no C compiler or
//! libcrypto, unless `KILN_REQUIRE_AGENT=1` (CI) makes that a failure.

use kiln_rpc::agent::{
    AgentClient, MeasureRequest, MeasureStatus, BYE, FAILED, INFO, INFO_REQUEST, UPLOAD_BEGIN,
    UPLOAD_CHUNK, UPLOAD_END, UPLOAD_READY,
};
use kiln_rpc::{Channel, Key, Role, RpcError};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

const KEY: &[u8] = b"0123456789abcdef-the-agent-test-key\n";
const TIMEOUT: Duration = Duration::from_secs(10);

/// The agent executable, built once for the host; `None` (with a notice) when it cannot be.
fn agent_binary() -> Option<&'static PathBuf> {
    static BUILT: OnceLock<Option<(tempfile::TempDir, PathBuf)>> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("kiln-agent");
            match kiln_agent::build(&kiln::Target::host(), &path) {
                Ok(_) => Some((dir, path)),
                Err(e) if std::env::var("KILN_REQUIRE_AGENT").as_deref() != Ok("1") => {
                    println!("notice: the device agent cannot be built here, its tests skip: {e}");
                    None
                }
                Err(e) => panic!("KILN_REQUIRE_AGENT=1 and the agent does not build: {e}"),
            }
        })
        .as_ref()
        .map(|(_, p)| p)
}

/// A running agent on a loopback port (killed when dropped) and its scratch folder.
struct Agent {
    local: kiln_agent::LocalAgent,
    addr: String,
    dir: tempfile::TempDir,
}

fn start(extra: &[&str]) -> Option<Agent> {
    Some(spawn(&[], agent_binary()?, extra))
}

/// The agent `bin` started on a loopback port (through `runner`, e.g. qemu, when not empty).
fn spawn(runner: &[String], bin: &std::path::Path, extra: &[&str]) -> Agent {
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, KEY).unwrap();
    let work = dir.path().join("work");
    let local = kiln_agent::LocalAgent::start(runner, bin, &key_file, &work, extra).unwrap();
    let addr = local.addr.clone();
    Agent { local, addr, dir }
}

fn key() -> Key {
    Key::new(KEY).unwrap()
}

/// The agent still serves a full session (it survived whatever came before).
fn still_serves(agent: &mut Agent) {
    assert!(
        agent.local.child.try_wait().unwrap().is_none(),
        "the agent process exited"
    );
    let mut client = AgentClient::connect(&agent.addr, &key(), TIMEOUT).unwrap();
    let info = client.device_info().unwrap();
    assert_eq!(info.protocol_version, 1);
    client.bye().unwrap();
}

/// Whether the agent closed `stream` (after reading whatever it still sent): an end of stream,
/// or a reset (a socket closed with our bytes still unread in it resets the connection); not
/// a deadline.
fn closed_by_agent(mut stream: TcpStream) -> bool {
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut sink = vec![];
    match stream.read_to_end(&mut sink) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

#[test]
fn an_agent_reports_what_its_machine_is() {
    let Some(agent) = start(&[]) else { return };
    let mut client = AgentClient::connect(&agent.addr, &key(), TIMEOUT).unwrap();
    let info = client.device_info().unwrap();
    assert_eq!(info.arch, std::env::consts::ARCH);
    assert_eq!(info.protocol_version, 1);
    assert!(info.cores >= 1, "{info:?}");
    assert!(info.memory_bytes > 0, "{info:?}");
    if cfg!(target_arch = "x86_64") {
        assert!(info.features.iter().any(|f| f == "sse2"), "{info:?}");
    }
    // A second request in the same session, then a message kind the agent does not know:
    // answered with FAILED, and the session goes on.
    assert_eq!(client.device_info().unwrap(), info);
    client.channel().send(99, b"?").unwrap();
    let (kind, reason) = client.channel().recv().unwrap();
    assert_eq!(kind, FAILED);
    assert!(String::from_utf8_lossy(&reason).contains("99"));
    assert_eq!(client.device_info().unwrap(), info);
    client.bye().unwrap();
}

#[test]
fn a_wrong_key_is_refused_with_a_reason() {
    let Some(mut agent) = start(&[]) else { return };
    let wrong = Key::new(b"another key of enough bytes").unwrap();
    let err = AgentClient::connect(&agent.addr, &wrong, TIMEOUT).unwrap_err();
    assert!(
        matches!(&err, RpcError::Peer(m) if m.contains("authentication failed")),
        "{err}"
    );
    still_serves(&mut agent);
}

/// A HELLO body of protocol `version`.
fn hello(version: u16) -> Vec<u8> {
    let mut b = vec![1u8];
    b.extend_from_slice(b"KILNRPC\0");
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&[7u8; 32]);
    b
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u64).to_le_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// A HELLO of version 2 to the endpoint at `addr`: its ERROR names both versions.
fn version_mismatch(addr: &str) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.write_all(&frame(&hello(2))).unwrap();
    let mut reply = vec![];
    s.read_to_end(&mut reply).unwrap();
    // The endpoint's HELLO, then its ERROR.
    let first = u64::from_le_bytes(reply[..8].try_into().unwrap()) as usize;
    let error = &reply[8 + first + 8..];
    assert_eq!(error[0], 3);
    let text = String::from_utf8_lossy(&error[1..]);
    assert!(
        text.contains("version 1") && text.contains("version 2"),
        "{addr}: {text}"
    );
}

#[test]
fn another_protocol_version_is_named_in_the_error() {
    let Some(mut agent) = start(&[]) else { return };
    version_mismatch(&agent.addr);
    still_serves(&mut agent);
    let (tracker, still_serves) = tracker();
    version_mismatch(&tracker.addr().to_string());
    still_serves();
}

#[test]
fn hostile_frames_before_authentication_end_only_their_connection() {
    let Some(mut agent) = start(&[]) else { return };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("a length of 2^64 - 1", u64::MAX.to_le_bytes().to_vec()),
        ("a length of 0", 0u64.to_le_bytes().to_vec()),
        ("a length over the cap", frame(&[1u8; 257])),
        ("a truncated frame", {
            let mut f = frame(&hello(1));
            f.truncate(20);
            f
        }),
        (
            "an HTTP request",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ),
        ("a TVM magic", 0xff271u64.to_le_bytes().to_vec()),
        (
            "garbage",
            (0..200u32).map(|i| (i * 97 % 251) as u8).collect(),
        ),
        ("an AUTH before a HELLO", frame(&[2u8; 33])),
    ];
    for (what, bytes) in cases {
        let mut s = TcpStream::connect(&agent.addr).unwrap();
        s.write_all(&bytes).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        assert!(closed_by_agent(s), "{what}: the agent did not close");
        still_serves(&mut agent);
    }
}

/// A stream whose writes are held back (when `hold` is set) for the test to forward, drop,
/// reorder or alter.
#[derive(Clone)]
struct Tap {
    stream: Arc<Mutex<TcpStream>>,
    held: Arc<Mutex<Vec<Vec<u8>>>>,
    hold: Arc<Mutex<bool>>,
}

impl Read for Tap {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut s = self.stream.lock().unwrap().try_clone()?;
        s.read(buf)
    }
}

impl Write for Tap {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if *self.hold.lock().unwrap() {
            self.held.lock().unwrap().push(buf.to_vec());
            return Ok(buf.len());
        }
        self.stream.lock().unwrap().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An authenticated session with the endpoint at `addr` through a [`Tap`]; each held message
/// is one frame's bytes.
fn tapped(addr: &str) -> (Channel<Tap>, Tap) {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let tap = Tap {
        stream: Arc::new(Mutex::new(stream)),
        held: Arc::default(),
        hold: Arc::default(),
    };
    let channel = Channel::handshake(tap.clone(), &key(), Role::Client, 1 << 20).unwrap();
    (channel, tap)
}

/// The held writes regrouped into whole frames.
fn held_frames(tap: &Tap) -> Vec<Vec<u8>> {
    let bytes: Vec<u8> = tap.held.lock().unwrap().drain(..).flatten().collect();
    let mut frames = vec![];
    let mut rest = &bytes[..];
    while rest.len() >= 8 {
        let n = 8 + u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
        frames.push(rest[..n].to_vec());
        rest = &rest[n..];
    }
    frames
}

/// A tracker on loopback with the agents' key, and a check that it still serves.
fn tracker() -> (kiln_rpc::tracker::TrackerHandle, impl Fn()) {
    std::env::set_var("KILN_TRACKER_QUIET", "1");
    let t = kiln_rpc::tracker::Tracker::bind("127.0.0.1:0", key(), Default::default())
        .unwrap()
        .spawn()
        .unwrap();
    let addr = t.addr().to_string();
    let still_serves = move || {
        let mut c = kiln_rpc::tracker::TrackerClient::connect(&addr, &key(), TIMEOUT).unwrap();
        c.status().unwrap();
    };
    (t, still_serves)
}

/// Tampered, replayed, reordered and dropped frames of a session with the endpoint at `addr`,
/// which answers `request` with `answer`: each must end that session, and only that one.
fn attack_sessions(addr: &str, request: u8, answer: u8, still_serves: &mut dyn FnMut()) {
    type Attack = fn(Vec<Vec<u8>>, Vec<u8>) -> Vec<Vec<u8>>;
    let attacks: [(&str, Attack); 4] = [
        ("tampered", |mut held, _| {
            // The kind byte (the length prefix is 8 bytes).
            held[0][8] ^= 1;
            held
        }),
        ("replayed", |_, first| vec![first]),
        ("reordered", |held, _| {
            vec![held[1].clone(), held[0].clone()]
        }),
        ("dropped", |held, _| vec![held[1].clone()]),
    ];
    for (what, attack) in attacks {
        let (mut channel, tap) = tapped(addr);
        // One genuine request and its answer; its frame is kept for the replay.
        *tap.hold.lock().unwrap() = true;
        channel.send(request, &[]).unwrap();
        let first = held_frames(&tap).remove(0);
        tap.stream.lock().unwrap().write_all(&first).unwrap();
        assert_eq!(channel.recv().unwrap().0, answer);
        // Two more requests, held, then delivered as the attack has it.
        channel.send(request, &[]).unwrap();
        channel.send(request, &[]).unwrap();
        for f in attack(held_frames(&tap), first) {
            tap.stream.lock().unwrap().write_all(&f).unwrap();
        }
        let reply = channel.recv();
        assert!(reply.is_err(), "{what}: {addr} answered {reply:?}");
        let s = tap.stream.lock().unwrap().try_clone().unwrap();
        assert!(closed_by_agent(s), "{what}: {addr} did not close");
        still_serves();
    }
}

#[test]
fn tampered_replayed_reordered_and_dropped_frames_end_the_session() {
    let Some(mut agent) = start(&[]) else { return };
    let addr = agent.addr.clone();
    attack_sessions(&addr, INFO_REQUEST, INFO, &mut || still_serves(&mut agent));
    // The tracker speaks the same sessions (its code is the host's, in Rust).
    let (tracker, mut check) = tracker();
    let addr = tracker.addr().to_string();
    use kiln_rpc::tracker::{STATUS, STATUS_REQUEST};
    attack_sessions(&addr, STATUS_REQUEST, STATUS, &mut check);
}

#[test]
fn clients_beyond_the_session_limit_are_told_the_agent_is_busy() {
    let Some(mut agent) = start(&["--max-sessions", "1"]) else {
        return;
    };
    let mut first = AgentClient::connect(&agent.addr, &key(), TIMEOUT).unwrap();
    first.device_info().unwrap();
    // The parent counts the session until its child exits; the second client is refused.
    let err = AgentClient::connect(&agent.addr, &key(), TIMEOUT).unwrap_err();
    assert!(
        matches!(&err, RpcError::Peer(m) if m.contains("busy")),
        "{err}"
    );
    first.channel().send(BYE, &[]).unwrap();
    drop(first);
    // Once the first session's child has exited, sessions are served again.
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        match AgentClient::connect(&agent.addr, &key(), TIMEOUT) {
            Ok(mut c) => {
                c.device_info().unwrap();
                break;
            }
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("the agent never served again: {e}"),
        }
    }
    assert!(agent.local.child.try_wait().unwrap().is_none());
}

fn model_library(dir: &std::path::Path) -> (kiln::Graph, Vec<u8>) {
    let model =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/models/dscnn_kws.onnx");
    let graph = kiln::load_onnx(&model, &Default::default()).unwrap().graph;
    let lib = dir.join("libdscnn.so");
    kiln::aot::compile_library(&graph, &kiln::Target::host(), &Default::default(), &lib).unwrap();
    (graph, std::fs::read(&lib).unwrap())
}

#[test]
fn a_compiled_model_is_uploaded_timed_and_matches_the_host() {
    let Some(mut agent) = start(&[]) else { return };
    let (graph, lib) = model_library(agent.dir.path());
    let mut client = AgentClient::connect(&agent.addr, &key(), TIMEOUT).unwrap();
    let hash = client.upload(&lib).unwrap();
    let req = MeasureRequest {
        seed: 7,
        repeat: 4,
        min_repeat_ms: 5,
        ..MeasureRequest::default()
    };
    let m = client.measure(&hash, &req).unwrap();
    assert_eq!(m.status, MeasureStatus::Ok, "{}", m.message);
    assert_eq!(m.seconds.len(), 4);
    assert!(m.seconds.iter().all(|&s| s > 0.0 && s < 1.0), "{m:?}");
    // `number` grew until a timing lasted 5 ms.
    assert!(
        m.number > 1 && m.seconds[0] * f64::from(m.number) >= 0.004,
        "{m:?}"
    );
    assert_eq!(
        m.checksum,
        kiln_agent::expected_checksum(&graph, &kiln::Target::host(), 7).unwrap(),
        "outputs differ from the host's"
    );
    let other = client
        .measure(
            &hash,
            &MeasureRequest {
                seed: 8,
                ..req.clone()
            },
        )
        .unwrap();
    assert_ne!(other.checksum, m.checksum, "another seed, other inputs");
    client.delete(&hash).unwrap();
    let err = client.measure(&hash, &req).unwrap_err();
    assert!(
        matches!(&err, RpcError::Remote(m) if m.contains("no library")),
        "{err}"
    );
    let err = client.delete(&hash).unwrap_err();
    assert!(matches!(err, RpcError::Remote(_)), "{err}");
    // A wrong hash and an oversized upload are refused; the session goes on.
    let mut begin = 64u64.to_le_bytes().to_vec();
    begin.extend_from_slice(&[0u8; 32]);
    client.channel().send(UPLOAD_BEGIN, &begin).unwrap();
    assert_eq!(client.channel().recv().unwrap().0, UPLOAD_READY);
    client.channel().send(UPLOAD_CHUNK, &[1u8; 64]).unwrap();
    client.channel().send(UPLOAD_END, &[]).unwrap();
    let (kind, why) = client.channel().recv().unwrap();
    assert_eq!(kind, FAILED);
    assert!(String::from_utf8_lossy(&why).contains("SHA-256"));
    let mut huge = (1u64 << 40).to_le_bytes().to_vec();
    huge.extend_from_slice(&[0u8; 32]);
    client.channel().send(UPLOAD_BEGIN, &huge).unwrap();
    let (kind, why) = client.channel().recv().unwrap();
    assert_eq!(kind, FAILED);
    assert!(String::from_utf8_lossy(&why).contains("refused"));
    client.device_info().unwrap();
    client.bye().unwrap();
    still_serves(&mut agent);
}

/// Session directories the agent still has.
fn session_dirs(agent: &Agent) -> usize {
    std::fs::read_dir(agent.dir.path().join("work"))
        .map(|d| d.count())
        .unwrap_or(0)
}

#[test]
fn a_client_that_drops_mid_upload_leaves_nothing_behind() {
    let Some(mut agent) = start(&[]) else { return };
    let mut client = AgentClient::connect(&agent.addr, &key(), TIMEOUT).unwrap();
    let mut begin = (1u64 << 20).to_le_bytes().to_vec();
    begin.extend_from_slice(&[9u8; 32]);
    client.channel().send(UPLOAD_BEGIN, &begin).unwrap();
    assert_eq!(client.channel().recv().unwrap().0, UPLOAD_READY);
    client.channel().send(UPLOAD_CHUNK, &[5u8; 4096]).unwrap();
    assert_eq!(session_dirs(&agent), 1);
    drop(client);
    let deadline = std::time::Instant::now() + TIMEOUT;
    while session_dirs(&agent) > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        session_dirs(&agent),
        0,
        "the dropped session's files remain"
    );
    still_serves(&mut agent);
}

/// A shared library with Kiln's C ABI whose `kiln_model_run` does `body` (`fake_model.c`).
fn fake_library(dir: &std::path::Path, name: &str, body: &str) -> Vec<u8> {
    let lib = dir.join(format!("lib{name}.so"));
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake_model.c");
    let ok = Command::new("cc")
        .args(["-shared", "-fPIC", "-O0"])
        .arg(format!("-DFAKE_BODY={body}"))
        .arg("-o")
        .arg(&lib)
        .arg(&src)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cannot build the {name} library");
    std::fs::read(lib).unwrap()
}

#[test]
fn crashing_hanging_hungry_and_exiting_libraries_are_reported_and_contained() {
    let Some(mut agent) = start(&[]) else { return };
    let dir = agent.dir.path().to_path_buf();
    let cases = [
        (
            "segfault",
            "*(volatile int *)0 = 1;",
            MeasureStatus::Crashed,
            "signal 11",
        ),
        ("hang", "for (;;) {}", MeasureStatus::Timeout, "killed"),
        (
            "hungry",
            "for (;;) { char *p = malloc(1 << 26); memset(p, 1, 1 << 26); }",
            MeasureStatus::Crashed,
            "signal",
        ),
        ("exit", "_exit(3);", MeasureStatus::Error, "status 3"),
        ("fine", "", MeasureStatus::Ok, ""),
    ];
    let mut client = AgentClient::connect(&agent.addr, &key(), TIMEOUT).unwrap();
    for (name, body, status, says) in cases {
        let lib = fake_library(&dir, name, body);
        let hash = client.upload(&lib).unwrap();
        let req = MeasureRequest {
            timeout_ms: 1500,
            memory_mb: 256,
            ..MeasureRequest::default()
        };
        let m = client.measure(&hash, &req).unwrap();
        assert_eq!(m.status, status, "{name}: {m:?}");
        assert!(m.message.contains(says), "{name}: {m:?}");
    }
    client.bye().unwrap();
    still_serves(&mut agent);
}

/// The agent built for aarch64 and run under qemu-user on loopback (timings under qemu mean
/// nothing: this checks the protocol and that a library compiled for aarch64 runs there).
#[test]
fn an_aarch64_agent_under_qemu_serves_and_measures() {
    let target = kiln::Target::named("aarch64-linux-gnu").unwrap();
    let require = std::env::var("KILN_REQUIRE_AGENT").as_deref() == Ok("1");
    let runner = target.runner().to_vec();
    let qemu = runner.first().and_then(|r| kiln::aot::find_program(r));
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("kiln-agent-aarch64");
    let built = kiln_agent::build(&target, &bin);
    match (&built, &qemu) {
        (Ok(_), Some(_)) => {}
        _ if require => panic!("KILN_REQUIRE_AGENT=1: no aarch64 agent under qemu: {built:?}"),
        _ => {
            println!("notice: no aarch64 agent or no qemu here, this test skips: {built:?}");
            return;
        }
    }
    let agent = spawn(&runner, &bin, &[]);
    let slow = Duration::from_secs(60);
    let mut client = AgentClient::connect(&agent.addr, &key(), slow).unwrap();
    let info = client.device_info().unwrap();
    assert_eq!(info.arch, "aarch64", "{info:?}");
    let model =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/models/dscnn_kws.onnx");
    let graph = kiln::load_onnx(&model, &Default::default()).unwrap().graph;
    let lib = agent.dir.path().join("libdscnn_aarch64.so");
    kiln::aot::compile_library(&graph, &target, &Default::default(), &lib).unwrap();
    let hash = client.upload(&std::fs::read(&lib).unwrap()).unwrap();
    let req = MeasureRequest {
        repeat: 2,
        min_repeat_ms: 1,
        timeout_ms: 50_000,
        ..MeasureRequest::default()
    };
    let first = client.measure(&hash, &req).unwrap();
    assert_eq!(first.status, MeasureStatus::Ok, "{}", first.message);
    let again = client.measure(&hash, &req).unwrap();
    assert_eq!(
        again.checksum, first.checksum,
        "the same inputs, the same outputs"
    );
    // A library for the other architecture is an error, not a crash.
    let x86 = agent.dir.path().join("libdscnn_x86.so");
    kiln::aot::compile_library(&graph, &kiln::Target::host(), &Default::default(), &x86).unwrap();
    let hash = client.upload(&std::fs::read(&x86).unwrap()).unwrap();
    let m = client.measure(&hash, &req).unwrap();
    assert_eq!(m.status, MeasureStatus::Error, "{m:?}");
    assert!(m.message.contains("cannot load"), "{m:?}");
    client.bye().unwrap();
}
