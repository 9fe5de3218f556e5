//! Frames: `length: u64 LE` then `length` body bytes, the body's first byte its type.
//!
//! Invariant: [`read_frame`] returns a body only when its length is at least 1 and at most the
//! cap given, and allocates only after that check; a stream that ends inside a frame is
//! [`FrameError::Truncated`], never a short body. Timeouts are the stream's (the caller sets
//! read and write deadlines on its socket).

use std::io::{ErrorKind, Read, Write};

/// The largest body accepted before the handshake completes (a HELLO or an AUTH, with room).
pub const PREAUTH_MAX: u64 = 256;

/// Bytes of the length prefix.
pub const LENGTH_BYTES: usize = 8;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes refused: the cap is {cap}")]
    TooLong { len: u64, cap: u64 },
    #[error("empty frame")]
    Empty,
    #[error("the stream ended inside a frame ({got} of {want} bytes)")]
    Truncated { got: usize, want: usize },
    #[error("the peer closed the connection")]
    Closed,
    #[error("timed out waiting for the peer")]
    Timeout,
    #[error("i/o: {0}")]
    Io(std::io::Error),
}

fn io(e: std::io::Error) -> FrameError {
    match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => FrameError::Timeout,
        ErrorKind::UnexpectedEof => FrameError::Closed,
        _ => FrameError::Io(e),
    }
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` when the stream ends before the first byte.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<bool, FrameError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if got == 0 => return Ok(false),
            Ok(0) => {
                return Err(FrameError::Truncated {
                    got,
                    want: buf.len(),
                })
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
    }
    Ok(true)
}

/// The body length a prefix announces, checked against `cap`.
pub fn check_length(prefix: [u8; LENGTH_BYTES], cap: u64) -> Result<usize, FrameError> {
    let len = u64::from_le_bytes(prefix);
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > cap {
        return Err(FrameError::TooLong { len, cap });
    }
    usize::try_from(len).map_err(|_| FrameError::TooLong { len, cap })
}

/// Reads one frame's body of at most `cap` bytes.
pub fn read_frame(r: &mut impl Read, cap: u64) -> Result<Vec<u8>, FrameError> {
    let mut prefix = [0u8; LENGTH_BYTES];
    if !read_full(r, &mut prefix)? {
        return Err(FrameError::Closed);
    }
    let len = check_length(prefix, cap)?;
    let mut body = vec![0u8; len];
    match read_full(r, &mut body) {
        Ok(true) => Ok(body),
        Ok(false) => Err(FrameError::Truncated { got: 0, want: len }),
        Err(e) => Err(e),
    }
}

/// Writes one frame (prefix and body in one write call where the stream allows).
pub fn write_frame(w: &mut impl Write, body: &[u8]) -> Result<(), FrameError> {
    let mut out = Vec::with_capacity(LENGTH_BYTES + body.len());
    out.extend_from_slice(&(body.len() as u64).to_le_bytes());
    out.extend_from_slice(body);
    w.write_all(&out).map_err(io)?;
    w.flush().map_err(io)
}
