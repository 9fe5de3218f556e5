//! The handshake's messages and keys.
//!
//! ```text
//! HELLO  = kind 1 | "KILNRPC\0" | version u16 LE | nonce [32]          (both sides)
//! AUTH   = kind 2 | HMAC-SHA256(psk, label | client nonce | server nonce)
//!          label "kiln-rpc client auth" from the client, then "kiln-rpc server auth"
//! ERROR  = kind 3 | UTF-8 reason                                        (then close)
//! keys   = HMAC-SHA256(psk, "kiln-rpc client->server" | cn | sn), and "server->client"
//! ```
//!
//! Invariant: tags are compared in constant time ([`hmac::Mac::verify_slice`]); the pre-shared
//! key is never sent, printed or logged (its `Debug` shows only its length).

use crate::RpcError;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// The first bytes of every HELLO.
pub const MAGIC: &[u8; 8] = b"KILNRPC\0";
/// Bytes of a nonce, a tag and a derived key.
pub const NONCE_BYTES: usize = 32;
pub const TAG_BYTES: usize = 32;

/// Message kinds of the handshake (application messages start at [`FIRST_APP_KIND`]).
pub const HELLO: u8 = 1;
pub const AUTH: u8 = 2;
pub const ERROR: u8 = 3;
pub const FIRST_APP_KIND: u8 = 16;

/// The shortest pre-shared key accepted, in bytes.
pub const MIN_KEY_BYTES: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// A pre-shared key (the bytes of a key file, surrounding whitespace removed).
#[derive(Clone)]
pub struct Key(Vec<u8>);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({} bytes)", self.0.len())
    }
}

impl Key {
    /// A key from a key file's contents: at least [`MIN_KEY_BYTES`] bytes once surrounding
    /// ASCII whitespace is removed (so a file written by `head -c 32 /dev/urandom | base64`
    /// and one with a trailing newline hold the same key).
    pub fn new(bytes: &[u8]) -> Result<Key, RpcError> {
        let start = bytes.iter().position(|b| !b.is_ascii_whitespace());
        let end = bytes.iter().rposition(|b| !b.is_ascii_whitespace());
        let trimmed = match (start, end) {
            (Some(s), Some(e)) => &bytes[s..=e],
            _ => &[][..],
        };
        if trimmed.len() < MIN_KEY_BYTES {
            return Err(RpcError::Malformed {
                what: "key",
                reason: format!(
                    "{} bytes; a key needs at least {MIN_KEY_BYTES}",
                    trimmed.len()
                ),
            });
        }
        Ok(Key(trimmed.to_vec()))
    }

    /// HMAC-SHA256 keyed with this key over the concatenation of `parts`.
    pub(crate) fn tag(&self, parts: &[&[u8]]) -> [u8; TAG_BYTES] {
        tag_with(&self.0, parts)
    }

    /// Whether `tag` is this key's tag over `parts` (constant time).
    pub(crate) fn verify(&self, parts: &[&[u8]], tag: &[u8]) -> bool {
        verify_with(&self.0, parts, tag)
    }
}

pub(crate) fn tag_with(key: &[u8], parts: &[&[u8]]) -> [u8; TAG_BYTES] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

pub(crate) fn verify_with(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    for p in parts {
        mac.update(p);
    }
    mac.verify_slice(tag).is_ok()
}

/// A fresh nonce from the operating system.
pub fn nonce() -> Result<[u8; NONCE_BYTES], RpcError> {
    let mut n = [0u8; NONCE_BYTES];
    getrandom::getrandom(&mut n).map_err(|e| RpcError::Random(e.to_string()))?;
    Ok(n)
}

/// A HELLO body.
pub fn hello(version: u16, nonce: &[u8; NONCE_BYTES]) -> Vec<u8> {
    let mut b = vec![HELLO];
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(nonce);
    b
}

/// The version and nonce of a HELLO body (an ERROR body becomes [`RpcError::Peer`]).
pub fn parse_hello(body: &[u8]) -> Result<(u16, [u8; NONCE_BYTES]), RpcError> {
    peer_error(body)?;
    let bad = |reason: &str| RpcError::Malformed {
        what: "HELLO",
        reason: reason.into(),
    };
    if body.first() != Some(&HELLO) {
        return Err(bad("not a HELLO"));
    }
    if body.len() < 1 + MAGIC.len() || &body[1..1 + MAGIC.len()] != MAGIC {
        return Err(RpcError::NotKiln);
    }
    let rest = &body[1 + MAGIC.len()..];
    // The version first: a later version may send a longer HELLO, and the mismatch must be
    // reported as such.
    let version = u16::from_le_bytes(
        rest.get(..2)
            .ok_or_else(|| bad("no version"))?
            .try_into()
            .map_err(|_| bad("no version"))?,
    );
    if version != PROTOCOL_VERSION {
        return Ok((version, [0; NONCE_BYTES]));
    }
    let nonce: [u8; NONCE_BYTES] = rest[2..]
        .try_into()
        .map_err(|_| bad(&format!("{} bytes after the version", rest.len() - 2)))?;
    Ok((version, nonce))
}

/// An ERROR body.
pub fn error_body(reason: &str) -> Vec<u8> {
    let mut b = vec![ERROR];
    b.extend_from_slice(reason.as_bytes());
    b
}

/// `Err(Peer)` when `body` is an ERROR.
pub fn peer_error(body: &[u8]) -> Result<(), RpcError> {
    match body.split_first() {
        Some((&ERROR, reason)) => Err(RpcError::Peer(String::from_utf8_lossy(reason).into())),
        _ => Ok(()),
    }
}

/// Who computes a tag or a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// The AUTH body `side` sends.
pub fn auth(key: &Key, side: Side, cn: &[u8], sn: &[u8]) -> Vec<u8> {
    let mut b = vec![AUTH];
    b.extend_from_slice(&key.tag(&[auth_label(side), cn, sn]));
    b
}

/// Whether `body` is the AUTH `side` sends with `key`.
pub fn check_auth(
    key: &Key,
    side: Side,
    cn: &[u8],
    sn: &[u8],
    body: &[u8],
) -> Result<(), RpcError> {
    peer_error(body)?;
    match body.split_first() {
        Some((&AUTH, tag)) if tag.len() == TAG_BYTES => {
            if key.verify(&[auth_label(side), cn, sn], tag) {
                Ok(())
            } else {
                Err(RpcError::Authentication)
            }
        }
        _ => Err(RpcError::Malformed {
            what: "AUTH",
            reason: format!("{} bytes", body.len()),
        }),
    }
}

fn auth_label(side: Side) -> &'static [u8] {
    match side {
        Side::Client => b"kiln-rpc client auth",
        Side::Server => b"kiln-rpc server auth",
    }
}

/// The key of frames sent by `from`.
pub fn direction_key(key: &Key, from: Side, cn: &[u8], sn: &[u8]) -> [u8; TAG_BYTES] {
    let label: &[u8] = match from {
        Side::Client => b"kiln-rpc client->server",
        Side::Server => b"kiln-rpc server->client",
    };
    key.tag(&[label, cn, sn])
}
