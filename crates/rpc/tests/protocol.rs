//! The protocol against honest and hostile peers over socket pairs: a session's messages
//! round-trip; a wrong key, a version mismatch, a bad magic, a length of 2^64 - 1, a frame over
//! the cap, a truncated frame, and tampered, replayed, reordered and dropped frames each end
//! the session with their own error (and poison it); arbitrary bytes as a first frame never
//! panic.

use kiln_rpc::frame::{read_frame, write_frame, FrameError};
use kiln_rpc::handshake::{self, Key, PROTOCOL_VERSION};
use kiln_rpc::{Channel, Role, RpcError};
use proptest::prelude::*;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::thread;
use std::time::Duration;

const CAP: u64 = 1 << 20;

fn key(s: &str) -> Key {
    Key::new(s.as_bytes()).unwrap()
}

fn pair() -> (UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    for s in [&a, &b] {
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    (a, b)
}

/// What a meddling stream does to the frames written through it (counted from 0: the HELLO
/// and the AUTH are frames 0 and 1).
#[derive(Clone, Copy, Debug)]
enum Meddle {
    Flip(usize),
    Replay(usize),
    /// Holds frame `n` back and sends it after frame `n + 1`.
    Swap(usize),
    Drop(usize),
}

struct Meddler {
    inner: UnixStream,
    how: Meddle,
    writes: usize,
    held: Option<Vec<u8>>,
}

impl Read for Meddler {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.inner.read(buf)
    }
}

impl Write for Meddler {
    /// Frames go out in one `write_all` of a small buffer: one call per frame.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.writes;
        self.writes += 1;
        let mut frame = buf.to_vec();
        match self.how {
            Meddle::Flip(k) if k == n => {
                let last = frame.len() - 1;
                frame[last / 2 + 4] ^= 0x10;
            }
            Meddle::Replay(k) if k == n => {
                self.inner.write_all(&frame)?;
            }
            Meddle::Swap(k) if k == n => {
                self.held = Some(frame);
                return Ok(buf.len());
            }
            Meddle::Drop(k) if k == n => return Ok(buf.len()),
            _ => {}
        }
        self.inner.write_all(&frame)?;
        if let Some(held) = self.held.take() {
            self.inner.write_all(&held)?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[test]
fn a_session_round_trips_messages_both_ways() {
    let (a, b) = pair();
    let server = thread::spawn(move || {
        let mut ch = Channel::handshake(b, &key("a shared secret key"), Role::Server, CAP)?;
        for _ in 0..3 {
            let (kind, payload) = ch.recv()?;
            ch.send(kind + 1, &payload.iter().rev().copied().collect::<Vec<_>>())?;
        }
        Ok::<_, RpcError>(())
    });
    let mut ch = Channel::handshake(a, &key("a shared secret key"), Role::Client, CAP).unwrap();
    for (i, msg) in [&b"hello"[..], &[], &vec![7u8; 100_000]]
        .into_iter()
        .enumerate()
    {
        ch.send(20 + i as u8, msg).unwrap();
        let (kind, payload) = ch.recv().unwrap();
        assert_eq!(kind, 21 + i as u8);
        assert_eq!(payload, msg.iter().rev().copied().collect::<Vec<_>>());
    }
    server.join().unwrap().unwrap();
}

#[test]
fn a_wrong_key_fails_both_ends_and_the_client_hears_why() {
    let (a, b) = pair();
    let server = thread::spawn(move || {
        Channel::handshake(b, &key("the agent's key 12345"), Role::Server, CAP)
    });
    let client = Channel::handshake(a, &key("another key 1234567"), Role::Client, CAP);
    let e = client.unwrap_err();
    assert!(e.to_string().contains("authentication failed"), "{e}");
    assert!(matches!(
        server.join().unwrap().unwrap_err(),
        RpcError::Authentication
    ));
}

#[test]
fn short_keys_are_refused_and_never_printed() {
    assert!(Key::new(b"  short\n").is_err());
    let k = Key::new(b"0123456789abcdef-secret\n").unwrap();
    assert_eq!(format!("{k:?}"), "Key(23 bytes)");
}

#[test]
fn a_version_mismatch_names_both_versions_at_both_ends() {
    let (a, mut b) = pair();
    let peer = thread::spawn(move || {
        let nonce = [9u8; 32];
        write_frame(&mut b, &handshake::hello(PROTOCOL_VERSION + 1, &nonce)).unwrap();
        let _hello = read_frame(&mut b, 256).unwrap();
        read_frame(&mut b, 256).unwrap()
    });
    let e = Channel::handshake(a, &key("a shared secret key"), Role::Client, CAP).unwrap_err();
    assert!(
        matches!(e, RpcError::Version { ours, theirs } if ours == PROTOCOL_VERSION && theirs == PROTOCOL_VERSION + 1),
        "{e}"
    );
    let said = peer.join().unwrap();
    let text = String::from_utf8_lossy(&said[1..]).to_string();
    assert_eq!(said[0], handshake::ERROR);
    assert!(
        text.contains(&format!("version {PROTOCOL_VERSION}"))
            && text.contains(&format!("version {}", PROTOCOL_VERSION + 1)),
        "{text}"
    );
}

/// Runs the server's handshake against a peer that writes `bytes` and closes its side.
fn server_against(bytes: Vec<u8>) -> RpcError {
    let (a, mut b) = pair();
    let peer = thread::spawn(move || {
        let _ = b.write_all(&bytes);
        let _ = b.shutdown(std::net::Shutdown::Write);
        let mut sink = vec![];
        let _ = b.read_to_end(&mut sink);
    });
    let e = Channel::handshake(a, &key("a shared secret key"), Role::Server, CAP).unwrap_err();
    peer.join().unwrap();
    e
}

#[test]
fn hostile_first_frames_end_the_handshake_with_their_error() {
    let huge = server_against(u64::MAX.to_le_bytes().to_vec());
    assert!(
        matches!(
            huge,
            RpcError::Frame(FrameError::TooLong {
                len: u64::MAX,
                cap: 256
            })
        ),
        "{huge}"
    );
    let mut over = 257u64.to_le_bytes().to_vec();
    over.extend(vec![0u8; 257]);
    assert!(matches!(
        server_against(over),
        RpcError::Frame(FrameError::TooLong { len: 257, .. })
    ));
    let mut truncated = 43u64.to_le_bytes().to_vec();
    truncated.extend(vec![1u8; 10]);
    assert!(matches!(
        server_against(truncated),
        RpcError::Frame(FrameError::Truncated { got: 10, want: 43 })
    ));
    assert!(matches!(
        server_against(vec![]),
        RpcError::Frame(FrameError::Closed)
    ));
    assert!(matches!(
        server_against(0u64.to_le_bytes().to_vec()),
        RpcError::Frame(FrameError::Empty)
    ));
    let framed = |body: &[u8]| {
        let mut b = (body.len() as u64).to_le_bytes().to_vec();
        b.extend(body);
        b
    };
    let http = server_against(framed(b"GET / HTTP/1.1"));
    assert!(matches!(http, RpcError::Malformed { .. }), "{http}");
    let tvm = server_against(framed(b"\x01TVMRPC\0\x01\0"));
    assert!(matches!(tvm, RpcError::NotKiln), "{tvm}");
    let short = server_against(framed(&handshake::hello(PROTOCOL_VERSION, &[1; 32])[..20]));
    assert!(matches!(short, RpcError::Malformed { .. }), "{short}");
}

/// A session whose client writes through a meddler; returns the server's first error and
/// what it received before it.
fn meddled(how: Meddle) -> (Vec<Vec<u8>>, RpcError) {
    let (a, b) = pair();
    let server = thread::spawn(move || {
        let mut ch = Channel::handshake(b, &key("a shared secret key"), Role::Server, CAP).unwrap();
        let mut got = vec![];
        loop {
            match ch.recv() {
                Ok((_, p)) => got.push(p),
                Err(e) => {
                    // A poisoned channel stays closed.
                    assert!(ch.recv().is_err());
                    return (got, e);
                }
            }
        }
    });
    let meddler = Meddler {
        inner: a,
        how,
        writes: 0,
        held: None,
    };
    let mut ch =
        Channel::handshake(meddler, &key("a shared secret key"), Role::Client, CAP).unwrap();
    // The server may hang up early: later sends may fail.
    for i in 0..4u8 {
        let _ = ch.send(16, &[i; 40]);
    }
    let _ = ch.stream().inner.shutdown(std::net::Shutdown::Write);
    server.join().unwrap()
}

#[test]
fn tampered_replayed_reordered_and_dropped_frames_end_the_session() {
    // Frames 0 and 1 are the handshake; 2.. the messages 0..4.
    for how in [
        Meddle::Flip(3),
        Meddle::Replay(2),
        Meddle::Swap(3),
        Meddle::Drop(3),
    ] {
        let (got, e) = meddled(how);
        assert_eq!(got, vec![vec![0u8; 40]], "{how:?}");
        assert!(matches!(e, RpcError::BadMac { seq: 1 }), "{how:?}: {e}");
    }
    // Untouched, all four arrive and the session ends at the close.
    let (got, e) = meddled(Meddle::Flip(100));
    assert_eq!(got.len(), 4);
    assert!(matches!(e, RpcError::Frame(FrameError::Closed)), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn arbitrary_first_frames_are_errors_not_panics(body in prop::collection::vec(any::<u8>(), 1..300)) {
        let mut bytes = (body.len() as u64).to_le_bytes().to_vec();
        bytes.extend(&body);
        let _ = server_against(bytes);
    }
}
