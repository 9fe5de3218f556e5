//! An authenticated session over a byte stream.
//!
//! After the handshake a frame body is `kind | payload | tag`, `tag = HMAC-SHA256(k_dir, seq
//! u64 LE | kind | payload)`, where `k_dir` is the sending direction's key and `seq` counts that
//! direction's frames from 0. The sequence number is not sent: each side knows which frame it
//! expects, so a replayed, reordered or dropped frame fails its tag.
//!
//! Invariant: [`Channel::recv`] returns a payload only after its tag verified with the next
//! expected sequence number; after any error the channel is poisoned and every later call fails
//! (a session that saw one bad frame is over).

use crate::frame::{read_frame, write_frame, FrameError, PREAUTH_MAX};
use crate::handshake::{self, Key, Side, FIRST_APP_KIND, NONCE_BYTES, PROTOCOL_VERSION, TAG_BYTES};
use crate::RpcError;
use std::io::{Read, Write};
use std::net::TcpStream;

/// Which end of the session this is: the client connects and authenticates first.
pub type Role = Side;

/// An authenticated session.
#[derive(Debug)]
pub struct Channel<S> {
    stream: S,
    send_key: [u8; TAG_BYTES],
    recv_key: [u8; TAG_BYTES],
    send_seq: u64,
    recv_seq: u64,
    /// The largest body accepted after the handshake.
    cap: u64,
    poisoned: bool,
}

impl<S: Read + Write> Channel<S> {
    /// Runs the handshake as `role` over `stream` with `key`; frames after it are capped at
    /// `cap` bytes. The stream's own deadlines bound every step.
    pub fn handshake(mut stream: S, key: &Key, role: Role, cap: u64) -> Result<Self, RpcError> {
        let ours = handshake::nonce()?;
        let theirs = exchange_hello(&mut stream, &ours)?;
        let (cn, sn) = match role {
            Side::Client => (ours, theirs),
            Side::Server => (theirs, ours),
        };
        match role {
            Side::Client => {
                write_frame(&mut stream, &handshake::auth(key, Side::Client, &cn, &sn))?;
                let body = read_frame(&mut stream, PREAUTH_MAX)?;
                handshake::check_auth(key, Side::Server, &cn, &sn, &body)?;
            }
            Side::Server => {
                let body = read_frame(&mut stream, PREAUTH_MAX)?;
                if let Err(e) = handshake::check_auth(key, Side::Client, &cn, &sn, &body) {
                    if matches!(e, RpcError::Authentication) {
                        // Best effort: the client learns why before the connection closes.
                        let _ = write_frame(&mut stream, &handshake::error_body(&e.to_string()));
                    }
                    return Err(e);
                }
                write_frame(&mut stream, &handshake::auth(key, Side::Server, &cn, &sn))?;
            }
        }
        let other = match role {
            Side::Client => Side::Server,
            Side::Server => Side::Client,
        };
        Ok(Channel {
            stream,
            send_key: handshake::direction_key(key, role, &cn, &sn),
            recv_key: handshake::direction_key(key, other, &cn, &sn),
            send_seq: 0,
            recv_seq: 0,
            cap,
            poisoned: false,
        })
    }

    /// Sends one message of application kind `kind` (at least [`FIRST_APP_KIND`]).
    pub fn send(&mut self, kind: u8, payload: &[u8]) -> Result<(), RpcError> {
        self.live()?;
        let result = self.send_inner(kind, payload);
        self.poisoned |= result.is_err();
        result
    }

    fn send_inner(&mut self, kind: u8, payload: &[u8]) -> Result<(), RpcError> {
        if kind < FIRST_APP_KIND {
            return Err(RpcError::Malformed {
                what: "message",
                reason: format!("kind {kind} is reserved for the handshake"),
            });
        }
        let len = 1 + payload.len() + TAG_BYTES;
        if len as u64 > self.cap {
            return Err(FrameError::TooLong {
                len: len as u64,
                cap: self.cap,
            }
            .into());
        }
        let seq = self.send_seq.to_le_bytes();
        let tag = handshake::tag_with(&self.send_key, &[&seq, &[kind], payload]);
        let mut body = Vec::with_capacity(len);
        body.push(kind);
        body.extend_from_slice(payload);
        body.extend_from_slice(&tag);
        write_frame(&mut self.stream, &body)?;
        self.send_seq += 1;
        Ok(())
    }

    /// Receives the next message: `(kind, payload)`.
    pub fn recv(&mut self) -> Result<(u8, Vec<u8>), RpcError> {
        self.live()?;
        let result = self.recv_inner();
        self.poisoned |= result.is_err();
        result
    }

    fn recv_inner(&mut self) -> Result<(u8, Vec<u8>), RpcError> {
        let mut body = read_frame(&mut self.stream, self.cap)?;
        let seq = self.recv_seq;
        if body.len() < 1 + TAG_BYTES {
            return Err(RpcError::BadMac { seq });
        }
        let tag = body.split_off(body.len() - TAG_BYTES);
        let (kind, payload) = (body[0], &body[1..]);
        if !handshake::verify_with(
            &self.recv_key,
            &[&seq.to_le_bytes(), &[kind], payload],
            &tag,
        ) {
            return Err(RpcError::BadMac { seq });
        }
        self.recv_seq += 1;
        body.remove(0);
        Ok((kind, body))
    }

    fn live(&self) -> Result<(), RpcError> {
        if self.poisoned {
            return Err(RpcError::Peer(
                "the session ended after an earlier error".into(),
            ));
        }
        Ok(())
    }

    /// The underlying stream (to set deadlines, or to shut it down).
    pub fn stream(&self) -> &S {
        &self.stream
    }
}

/// The sending half of a split TCP session.
#[derive(Debug)]
pub struct SendHalf(Channel<TcpStream>);

/// The receiving half of a split TCP session.
#[derive(Debug)]
pub struct RecvHalf(Channel<TcpStream>);

impl SendHalf {
    /// See [`Channel::send`].
    pub fn send(&mut self, kind: u8, payload: &[u8]) -> Result<(), RpcError> {
        self.0.send(kind, payload)
    }

    /// The underlying stream.
    pub fn stream(&self) -> &TcpStream {
        &self.0.stream
    }
}

impl RecvHalf {
    /// See [`Channel::recv`].
    pub fn recv(&mut self) -> Result<(u8, Vec<u8>), RpcError> {
        self.0.recv()
    }

    /// The underlying stream.
    pub fn stream(&self) -> &TcpStream {
        &self.0.stream
    }
}

impl Channel<TcpStream> {
    /// Splits the session so that one thread sends while another receives: each half keeps
    /// its own direction's sequence number (the directions are independent), and an error in
    /// either poisons only that half (its peer notices at its next frame).
    pub fn split(self) -> std::io::Result<(SendHalf, RecvHalf)> {
        let other = self.stream.try_clone()?;
        let recv = Channel {
            stream: other,
            send_key: [0; TAG_BYTES],
            recv_key: self.recv_key,
            send_seq: 0,
            recv_seq: self.recv_seq,
            cap: self.cap,
            poisoned: self.poisoned,
        };
        let send = Channel {
            recv_key: [0; TAG_BYTES],
            ..self
        };
        Ok((SendHalf(send), RecvHalf(recv)))
    }
}

/// Sends our HELLO and reads the peer's; a version mismatch is reported to the peer (best
/// effort) and returned with both versions.
fn exchange_hello<S: Read + Write>(
    stream: &mut S,
    ours: &[u8; NONCE_BYTES],
) -> Result<[u8; NONCE_BYTES], RpcError> {
    write_frame(stream, &handshake::hello(PROTOCOL_VERSION, ours))?;
    let body = read_frame(stream, PREAUTH_MAX)?;
    let (version, nonce) = handshake::parse_hello(&body)?;
    if version != PROTOCOL_VERSION {
        let e = RpcError::Version {
            ours: PROTOCOL_VERSION,
            theirs: version,
        };
        let _ = write_frame(stream, &handshake::error_body(&e.to_string()));
        return Err(e);
    }
    Ok(nonce)
}
