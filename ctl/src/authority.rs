//! Repairs the HTTP/2 `:authority` of incoming requests before tonic sees them.
//!
//! Go gRPC clients (etcdctl 3.4's per-endpoint dials among them) send the whole
//! dial target, e.g. `http://127.0.0.1:2379`, as `:authority`. The h2 crate
//! answers that with RST_STREAM(PROTOCOL_ERROR) while etcd accepts it, so the
//! listeners put [`AuthorityFixStream`] between the accepted connection and
//! tonic. It parses the client's byte stream frame by frame, re-encodes every
//! header block (with a repaired `:authority`) and passes all other frames
//! through unchanged. Re-encoding uses only literals that are never added to
//! the dynamic table, so the server's HPACK decoder table stays empty and can
//! never disagree with what the client's encoder assumed.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::codegen::http::uri::Authority;
use tonic::transport::server::Connected;

/// Largest header block (all HEADERS + CONTINUATION fragments) accepted from a client.
pub const MAX_HEADER_BLOCK: usize = 1 << 20;
/// Largest decoded header list (RFC 7541 sizes: name + value + 32) accepted from a client.
pub const MAX_DECODED_HEADERS: usize = 1 << 20;
/// Frame payload size we emit: the HTTP/2 minimum, valid whatever the server advertised.
const EMITTED_FRAME_PAYLOAD: usize = 16_384;
/// Dynamic table size the server's decoder allows (h2's default; tonic does not change it).
const CLIENT_TABLE_SIZE: usize = 4096;
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER_LEN: usize = 9;

const TYPE_HEADERS: u8 = 0x1;
const TYPE_PUSH_PROMISE: u8 = 0x5;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

/// Why a client connection was closed by the rewriter.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    /// The first 24 bytes were not the HTTP/2 client preface.
    #[error("client did not open with the HTTP/2 connection preface")]
    BadPreface,
    /// A header block grew past [`MAX_HEADER_BLOCK`].
    #[error("header block larger than {MAX_HEADER_BLOCK} bytes")]
    BlockTooLarge,
    /// A header block decoded to more than [`MAX_DECODED_HEADERS`].
    #[error("decoded header list larger than {MAX_DECODED_HEADERS} bytes")]
    HeaderListTooLarge,
    /// A frame other than the expected CONTINUATION interrupted a header block.
    #[error("frame type {frame_type:#x} on stream {stream} interrupted the header block of stream {expected}")]
    ExpectedContinuation {
        /// Type of the offending frame.
        frame_type: u8,
        /// Stream of the offending frame.
        stream: u32,
        /// Stream whose header block is open.
        expected: u32,
    },
    /// A CONTINUATION frame arrived with no open header block.
    #[error("CONTINUATION frame without a header block to continue")]
    UnexpectedContinuation,
    /// Clients must not push; its header block would touch HPACK state.
    #[error("PUSH_PROMISE frame from a client")]
    PushPromise,
    /// Padding or priority fields do not fit in the HEADERS frame.
    #[error("HEADERS frame padding or priority fields exceed the frame")]
    BadPadding,
    /// The header block is not valid HPACK.
    #[error("undecodable header block: {0}")]
    Hpack(String),
}

/// What the parser is in the middle of.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Collecting the 24-byte client preface into `pending`.
    Preface,
    /// Collecting a 9-byte frame header into `pending`.
    FrameHeader,
    /// Copying this many more payload bytes of a frame that is not touched.
    Passthrough { remaining: usize },
    /// Collecting the payload of a HEADERS or CONTINUATION frame into `pending`.
    BlockFrame {
        len: usize,
        frame_type: u8,
        flags: u8,
        stream: u32,
    },
}

/// The HEADERS frame fields that are re-emitted with the rewritten block.
#[derive(Debug, Clone, Copy)]
struct OpenBlock {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
}

/// Whether the connection's header blocks are being rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// No header block seen yet.
    Undecided,
    /// The first block was fine: everything passes through untouched.
    Transparent,
    /// The first block needed repair: every block is re-encoded.
    Rewrite,
}

/// Sans-IO rewriter of a client-to-server HTTP/2 byte stream.
///
/// gRPC clients send one `:authority` per connection, so the first header
/// block decides: a valid authority makes the rest of the connection a plain
/// byte copy (no HPACK work at all); a malformed one makes the rewriter
/// re-encode every block of the connection.
pub struct Http2Rewriter {
    mode: Mode,
    state: State,
    pending: Vec<u8>,
    open: Option<OpenBlock>,
    block: Vec<u8>,
    decoder: loona_hpack::Decoder<'static>,
}

impl Default for Http2Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Http2Rewriter {
    /// A rewriter expecting the client preface next.
    pub fn new() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_allowed_table_size(CLIENT_TABLE_SIZE);
        Self {
            mode: Mode::Undecided,
            state: State::Preface,
            pending: Vec::new(),
            open: None,
            block: Vec::new(),
            decoder,
        }
    }

    /// True once the connection passes through untouched.
    pub fn is_transparent(&self) -> bool {
        self.mode == Mode::Transparent
    }

    /// Consumes client bytes (split anywhere) and appends what the server should see to `out`.
    ///
    /// After an error the connection must be closed: the HPACK state is no longer known.
    pub fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        while !input.is_empty() {
            if self.mode == Mode::Transparent {
                out.extend_from_slice(input);
                return Ok(());
            }
            match self.state {
                State::Preface => {
                    if !self.fill(&mut input, PREFACE.len()) {
                        continue;
                    }
                    if self.pending[..] != PREFACE[..] {
                        return Err(RewriteError::BadPreface);
                    }
                    out.extend_from_slice(PREFACE);
                    self.pending.clear();
                    self.state = State::FrameHeader;
                }
                State::FrameHeader => {
                    if !self.fill(&mut input, FRAME_HEADER_LEN) {
                        continue;
                    }
                    self.start_frame(out)?;
                }
                State::Passthrough { remaining } => {
                    let n = remaining.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.state = if n == remaining {
                        State::FrameHeader
                    } else {
                        State::Passthrough {
                            remaining: remaining - n,
                        }
                    };
                }
                State::BlockFrame {
                    len,
                    frame_type,
                    flags,
                    stream,
                } => {
                    if !self.fill(&mut input, len) {
                        continue;
                    }
                    self.finish_block_frame(frame_type, flags, stream, out)?;
                }
            }
        }
        Ok(())
    }

    /// Moves bytes from `input` into `pending` until it holds `want`; true once it does.
    fn fill(&mut self, input: &mut &[u8], want: usize) -> bool {
        let missing = want.saturating_sub(self.pending.len());
        let n = missing.min(input.len());
        self.pending.extend_from_slice(&input[..n]);
        *input = &input[n..];
        self.pending.len() >= want
    }

    /// Dispatches on a complete frame header held in `pending`.
    fn start_frame(&mut self, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let h = &self.pending;
        let len = (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
        let frame_type = h[3];
        let flags = h[4];
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;

        if let Some(open) = self.open {
            if frame_type != TYPE_CONTINUATION || stream != open.stream {
                return Err(RewriteError::ExpectedContinuation {
                    frame_type,
                    stream,
                    expected: open.stream,
                });
            }
        }
        match frame_type {
            TYPE_HEADERS | TYPE_CONTINUATION => {
                if frame_type == TYPE_CONTINUATION && self.open.is_none() {
                    return Err(RewriteError::UnexpectedContinuation);
                }
                if self.block.len() + len > MAX_HEADER_BLOCK {
                    return Err(RewriteError::BlockTooLarge);
                }
                self.pending.clear();
                self.state = State::BlockFrame {
                    len,
                    frame_type,
                    flags,
                    stream,
                };
                if len == 0 {
                    self.finish_block_frame(frame_type, flags, stream, out)?;
                }
            }
            TYPE_PUSH_PROMISE => return Err(RewriteError::PushPromise),
            _ => {
                out.extend_from_slice(&self.pending);
                self.pending.clear();
                self.state = if len == 0 {
                    State::FrameHeader
                } else {
                    State::Passthrough { remaining: len }
                };
            }
        }
        Ok(())
    }

    /// Takes in a complete HEADERS/CONTINUATION payload held in `pending`.
    fn finish_block_frame(
        &mut self,
        frame_type: u8,
        flags: u8,
        stream: u32,
        out: &mut Vec<u8>,
    ) -> Result<(), RewriteError> {
        let payload = std::mem::take(&mut self.pending);
        if frame_type == TYPE_HEADERS {
            let mut start = 0;
            let mut pad = 0;
            if flags & FLAG_PADDED != 0 {
                pad = usize::from(*payload.first().ok_or(RewriteError::BadPadding)?);
                start = 1;
            }
            let mut priority = None;
            if flags & FLAG_PRIORITY != 0 {
                let fields = payload
                    .get(start..start + 5)
                    .ok_or(RewriteError::BadPadding)?;
                let mut p = [0u8; 5];
                p.copy_from_slice(fields);
                priority = Some(p);
                start += 5;
            }
            let end = payload
                .len()
                .checked_sub(pad)
                .filter(|end| *end >= start)
                .ok_or(RewriteError::BadPadding)?;
            self.block.extend_from_slice(&payload[start..end]);
            self.open = Some(OpenBlock {
                stream,
                end_stream: flags & FLAG_END_STREAM != 0,
                priority,
            });
        } else {
            self.block.extend_from_slice(&payload);
        }
        // Reuse the allocation for the next frame.
        self.pending = payload;
        self.pending.clear();
        self.state = State::FrameHeader;
        if flags & FLAG_END_HEADERS != 0 {
            self.emit_block(out)?;
        }
        Ok(())
    }

    /// Decodes the complete header block, repairs it and writes it as fresh frames.
    fn emit_block(&mut self, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let open = self
            .open
            .take()
            .ok_or(RewriteError::UnexpectedContinuation)?;
        let block = std::mem::take(&mut self.block);
        let mut headers: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut decoded_size = 0usize;
        let mut too_large = false;
        self.decoder
            .decode_with_cb(&block, |name, value| {
                decoded_size = decoded_size.saturating_add(name.len() + value.len() + 32);
                if decoded_size > MAX_DECODED_HEADERS {
                    too_large = true;
                } else {
                    headers.push((name.into_owned(), value.into_owned()));
                }
            })
            .map_err(|e| RewriteError::Hpack(format!("{e:?}")))?;
        if too_large {
            return Err(RewriteError::HeaderListTooLarge);
        }
        if self.mode == Mode::Undecided {
            let all_valid = headers
                .iter()
                .filter(|(n, _)| n.as_slice() == b":authority")
                .all(|(_, v)| is_valid_authority(v));
            if all_valid {
                // Same compressed bytes as the client sent: the server's HPACK
                // state matches the client's, so no later block needs decoding.
                self.mode = Mode::Transparent;
                write_header_frames(open, &block, out);
                return Ok(());
            }
            self.mode = Mode::Rewrite;
        }

        let mut encoded = Vec::with_capacity(block.len() + 64);
        for (name, value) in &headers {
            if name.as_slice() == b":authority" {
                match repair_authority(value) {
                    Some(fixed) => {
                        if fixed.len() != value.len() {
                            tracing::debug!(
                                original = %String::from_utf8_lossy(value),
                                repaired = %String::from_utf8_lossy(fixed),
                                "repaired a malformed :authority"
                            );
                        }
                        encode_literal(name, fixed, &mut encoded);
                    }
                    None => tracing::debug!(
                        original = %String::from_utf8_lossy(value),
                        "dropped an unrepairable :authority"
                    ),
                }
            } else {
                encode_literal(name, value, &mut encoded);
            }
        }
        write_header_frames(open, &encoded, out);
        // Keep the block buffer's allocation for the next request.
        self.block = block;
        self.block.clear();
        Ok(())
    }
}

/// The `:authority` value the server should see: the original when valid, the
/// host:port part of a URL-shaped value, or None to drop the header.
pub fn repair_authority(value: &[u8]) -> Option<&[u8]> {
    if is_valid_authority(value) {
        return Some(value);
    }
    let after_scheme = match find(value, b"://") {
        Some(i) => &value[i + 3..],
        None => value,
    };
    let end = after_scheme
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(after_scheme.len());
    let candidate = &after_scheme[..end];
    is_valid_authority(candidate).then_some(candidate)
}

/// Whether h2 would accept this `:authority` (it parses it with the same `http` type).
fn is_valid_authority(value: &[u8]) -> bool {
    std::str::from_utf8(value).is_ok() && Authority::try_from(value).is_ok()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Static-table indices of the names worth abbreviating (RFC 7541 appendix A).
fn static_name_index(name: &[u8]) -> Option<usize> {
    Some(match name {
        b":authority" => 1,
        b":method" => 2,
        b":path" => 4,
        b":scheme" => 6,
        b":status" => 8,
        b"accept-encoding" => 16,
        b"content-length" => 28,
        b"content-type" => 31,
        b"user-agent" => 58,
        _ => return None,
    })
}

/// Appends a "literal header field without indexing" representation (RFC 7541 6.2.2).
fn encode_literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
    match static_name_index(name) {
        Some(index) => encode_integer(index, 4, 0x00, out),
        None => {
            out.push(0x00);
            encode_string(name, out);
        }
    }
    encode_string(value, out);
}

/// Appends a raw (not Huffman-coded) string literal.
fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    encode_integer(s.len(), 7, 0x00, out);
    out.extend_from_slice(s);
}

/// Appends an HPACK integer with an N-bit prefix; `high_bits` fill the rest of the first octet.
fn encode_integer(mut value: usize, prefix_bits: u8, high_bits: u8, out: &mut Vec<u8>) {
    let max_prefix = (1usize << prefix_bits) - 1;
    if value < max_prefix {
        out.push(high_bits | value as u8);
        return;
    }
    out.push(high_bits | max_prefix as u8);
    value -= max_prefix;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// Writes one HEADERS frame, followed by CONTINUATION frames when the block is too large.
fn write_header_frames(open: OpenBlock, block: &[u8], out: &mut Vec<u8>) {
    let mut first_flags = 0;
    let mut first_payload = Vec::with_capacity(EMITTED_FRAME_PAYLOAD.min(block.len() + 5));
    if open.end_stream {
        first_flags |= FLAG_END_STREAM;
    }
    if let Some(p) = open.priority {
        first_flags |= FLAG_PRIORITY;
        first_payload.extend_from_slice(&p);
    }
    let first_len = (EMITTED_FRAME_PAYLOAD - first_payload.len()).min(block.len());
    first_payload.extend_from_slice(&block[..first_len]);
    let mut rest = &block[first_len..];
    if rest.is_empty() {
        first_flags |= FLAG_END_HEADERS;
    }
    write_frame(TYPE_HEADERS, first_flags, open.stream, &first_payload, out);
    while !rest.is_empty() {
        let n = rest.len().min(EMITTED_FRAME_PAYLOAD);
        let flags = if n == rest.len() { FLAG_END_HEADERS } else { 0 };
        write_frame(TYPE_CONTINUATION, flags, open.stream, &rest[..n], out);
        rest = &rest[n..];
    }
}

fn write_frame(frame_type: u8, flags: u8, stream: u32, payload: &[u8], out: &mut Vec<u8>) {
    // Payloads are at most EMITTED_FRAME_PAYLOAD, so the length fits in 24 bits.
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(frame_type);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
}

/// A server-side connection whose client-to-server HTTP/2 stream goes through [`Http2Rewriter`].
pub struct AuthorityFixStream<S> {
    inner: S,
    rewriter: Http2Rewriter,
    out: Vec<u8>,
    out_pos: usize,
    read_buf: Box<[u8]>,
    eof: bool,
    failed: bool,
}

impl<S> AuthorityFixStream<S> {
    /// Wraps a freshly accepted connection (before any HTTP/2 byte was read).
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            rewriter: Http2Rewriter::new(),
            out: Vec::new(),
            out_pos: 0,
            read_buf: vec![0u8; 16 * 1024].into_boxed_slice(),
            eof: false,
            failed: false,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFixStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_pos < this.out.len() {
                let n = (this.out.len() - this.out_pos).min(buf.remaining());
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.failed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "HTTP/2 stream rejected by the authority rewriter",
                )));
            }
            if this.eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.rewriter.is_transparent() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut raw = ReadBuf::new(&mut this.read_buf);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut raw))?;
            let got = raw.filled();
            if got.is_empty() {
                this.eof = true;
                continue;
            }
            if let Err(e) = this.rewriter.feed(got, &mut this.out) {
                tracing::debug!(error = %e, "closing a client connection");
                this.failed = true;
                this.out.clear();
                this.out_pos = 0;
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, e)));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFixStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: Connected> Connected for AuthorityFixStream<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    type Headers = Vec<(Vec<u8>, Vec<u8>)>;

    fn frame(frame_type: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_frame(frame_type, flags, stream, payload, &mut out);
        out
    }

    fn hdrs(pairs: &[(&str, &str)]) -> Headers {
        pairs
            .iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect()
    }

    fn request(authority: &str) -> Headers {
        hdrs(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/etcdserverpb.Maintenance/Status"),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("user-agent", "grpc-go/1.26.0"),
            ("te", "trailers"),
        ])
    }

    /// A SETTINGS frame and a DATA frame, which must pass through byte for byte.
    fn other_frames() -> Vec<u8> {
        let mut v = frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
        v.extend(frame(0x0, 0, 1, b"\0\0\0\0\x05hello"));
        v
    }

    /// A parsed frame as the server would see it.
    #[derive(Debug, PartialEq)]
    struct Frame {
        frame_type: u8,
        flags: u8,
        stream: u32,
        payload: Vec<u8>,
    }

    fn parse_frames(mut bytes: &[u8]) -> Vec<Frame> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            assert!(bytes.len() >= 9, "truncated frame header");
            let len = (usize::from(bytes[0]) << 16)
                | (usize::from(bytes[1]) << 8)
                | usize::from(bytes[2]);
            let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]);
            assert!(bytes.len() >= 9 + len, "truncated frame payload");
            frames.push(Frame {
                frame_type: bytes[3],
                flags: bytes[4],
                stream,
                payload: bytes[9..9 + len].to_vec(),
            });
            bytes = &bytes[9 + len..];
        }
        frames
    }

    /// Decodes the server-side output with a fresh decoder per block, proving
    /// that the output never relies on dynamic table state.
    fn server_view(out: &[u8]) -> (Vec<Frame>, Vec<Headers>) {
        assert_eq!(&out[..24], PREFACE);
        let frames = parse_frames(&out[24..]);
        let mut blocks = Vec::new();
        let mut block = Vec::new();
        let mut in_block = false;
        let mut others = Vec::new();
        for f in frames {
            match f.frame_type {
                TYPE_HEADERS | TYPE_CONTINUATION => {
                    assert!(f.payload.len() <= EMITTED_FRAME_PAYLOAD);
                    assert_eq!(f.frame_type == TYPE_CONTINUATION, in_block);
                    assert_eq!(f.flags & FLAG_PADDED, 0);
                    let start = if f.flags & FLAG_PRIORITY != 0 { 5 } else { 0 };
                    block.extend_from_slice(&f.payload[start..]);
                    in_block = f.flags & FLAG_END_HEADERS == 0;
                    if !in_block {
                        let mut fresh = loona_hpack::Decoder::new();
                        fresh.set_max_allowed_table_size(0);
                        fresh.set_max_table_size(0);
                        blocks.push(
                            fresh
                                .decode(&block)
                                .expect("output block decodes statelessly"),
                        );
                        block.clear();
                    }
                    others.push(Frame {
                        payload: Vec::new(),
                        ..f
                    });
                }
                _ => others.push(f),
            }
        }
        assert!(!in_block, "output ends inside a header block");
        (others, blocks)
    }

    fn run(input: &[u8], chunk: usize) -> Result<Vec<u8>, RewriteError> {
        let mut rw = Http2Rewriter::new();
        let mut out = Vec::new();
        for piece in input.chunks(chunk) {
            rw.feed(piece, &mut out)?;
        }
        Ok(out)
    }

    fn client_stream(encoder: &mut loona_hpack::Encoder<'_>, blocks: &[Headers]) -> Vec<u8> {
        let mut input = PREFACE.to_vec();
        input.extend(other_frames());
        for (i, h) in blocks.iter().enumerate() {
            let stream = 1 + 2 * i as u32;
            let block = encoder.encode(h.iter().map(|(n, v)| (&n[..], &v[..])));
            input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, stream, &block));
            input.extend(frame(0x0, FLAG_END_STREAM, stream, b"\0\0\0\0\0"));
        }
        input
    }

    #[test]
    fn repairs_url_shaped_authorities() {
        assert_eq!(
            repair_authority(b"127.0.0.1:2379"),
            Some(&b"127.0.0.1:2379"[..])
        );
        assert_eq!(
            repair_authority(b"http://127.0.0.1:2379"),
            Some(&b"127.0.0.1:2379"[..])
        );
        assert_eq!(
            repair_authority(b"https://h.example:1/x/y?q"),
            Some(&b"h.example:1"[..])
        );
        assert_eq!(repair_authority(b"unix:///run/sock"), None);
        assert_eq!(repair_authority(b""), None);
        assert_eq!(repair_authority(b"a b"), None);
    }

    #[test]
    fn round_trip_keeps_valid_headers_and_other_frames() {
        let blocks = vec![request("127.0.0.1:2379"), request("localhost")];
        let input = client_stream(&mut loona_hpack::Encoder::new(), &blocks);
        let out = run(&input, input.len()).unwrap();
        assert_eq!(
            out, input,
            "a valid first authority makes the connection a plain copy"
        );
        let frames = parse_frames(&out[PREFACE.len()..]);
        // Settings and data frames are untouched and in order.
        let settings_and_data: Vec<_> = frames
            .iter()
            .filter(|f| f.frame_type != TYPE_HEADERS)
            .collect();
        assert_eq!(settings_and_data[0].payload, vec![0, 3, 0, 0, 0, 100]);
        assert_eq!(settings_and_data[1].payload, b"\0\0\0\0\x05hello".to_vec());
        assert_eq!(settings_and_data[2].flags, FLAG_END_STREAM);
    }

    #[test]
    fn repairs_bad_authority_across_dynamic_table_references() {
        // The indexing encoder makes the second and third blocks refer to
        // entries the first one inserted, including the bad authority itself.
        let bad = request("http://127.0.0.1:23791");
        let blocks = vec![bad.clone(), bad.clone(), request("127.0.0.1:23791"), bad];
        let mut encoder = loona_hpack::Encoder::new();
        let input = client_stream(&mut encoder, &blocks);
        let out = run(&input, input.len()).unwrap();
        let (_, decoded) = server_view(&out);
        let good = request("127.0.0.1:23791");
        assert_eq!(
            decoded,
            vec![good.clone(), good.clone(), good.clone(), good]
        );
    }

    #[test]
    fn drops_unrepairable_authority() {
        let input = client_stream(&mut loona_hpack::Encoder::new(), &[request("unix:///x")]);
        let (_, decoded) = server_view(&run(&input, input.len()).unwrap());
        let mut expected = request("x");
        expected.retain(|(n, _)| n.as_slice() != b":authority");
        assert_eq!(decoded, vec![expected]);
    }

    #[test]
    fn huffman_and_dynamic_table_from_rfc7541_examples() {
        // RFC 7541 C.4.1 and C.4.2: Huffman strings, an indexed insert, then a reference (0xbe).
        let first = [
            0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
            0x90, 0xf4, 0xff,
        ];
        let second = [
            0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf,
        ];
        // A first block with a URL-shaped authority (literal, not indexed) puts
        // the connection in rewrite mode without touching the dynamic table.
        let mut bad = vec![0x82, 0x86, 0x84, 0x01, 0x0a];
        bad.extend_from_slice(b"http://x:1");
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &bad));
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &first));
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 5, &second));
        let (_, mut decoded) = server_view(&run(&input, input.len()).unwrap());
        assert_eq!(
            decoded.remove(0),
            hdrs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "x:1")
            ])
        );
        let base = [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
        ];
        let mut with_cc = base.to_vec();
        with_cc.push(("cache-control", "no-cache"));
        assert_eq!(decoded, vec![hdrs(&base), hdrs(&with_cc)]);
    }

    #[test]
    fn byte_by_byte_reads_give_the_same_output() {
        let blocks = vec![request("http://127.0.0.1:1"), request("http://127.0.0.1:1")];
        let input = client_stream(&mut loona_hpack::Encoder::new(), &blocks);
        let whole = run(&input, input.len()).unwrap();
        for chunk in [1, 2, 7, 9, 10, 33] {
            assert_eq!(run(&input, chunk).unwrap(), whole, "chunk size {chunk}");
        }
    }

    #[test]
    fn continuation_padding_and_priority_are_understood() {
        let block = loona_hpack::Encoder::new().encode(
            request("http://10.0.0.1:2379")
                .iter()
                .map(|(n, v)| (&n[..], &v[..])),
        );
        let (a, rest) = block.split_at(10);
        let (b, c) = rest.split_at(20);
        // HEADERS with padding (3 bytes) and priority, then two CONTINUATIONs.
        let mut first = vec![3u8];
        first.extend_from_slice(&[0x80, 0, 0, 1, 15]);
        first.extend_from_slice(a);
        first.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            5,
            &first,
        ));
        input.extend(frame(TYPE_CONTINUATION, 0, 5, b));
        input.extend(frame(TYPE_CONTINUATION, 0, 5, &[]));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 5, c));
        for chunk in [1, input.len()] {
            let out = run(&input, chunk).unwrap();
            let (frames, decoded) = server_view(&out);
            assert_eq!(decoded, vec![request("10.0.0.1:2379")]);
            assert_eq!(frames.len(), 1);
            assert_eq!(frames[0].stream, 5);
            assert_eq!(
                frames[0].flags,
                FLAG_PRIORITY | FLAG_END_STREAM | FLAG_END_HEADERS
            );
            let raw = parse_frames(&out[24..]);
            assert_eq!(&raw[0].payload[..5], &[0x80, 0, 0, 1, 15]);
        }
    }

    #[test]
    fn large_blocks_are_split_into_continuations() {
        let mut big = request("http://127.0.0.1:9");
        for i in 0..40 {
            big.push((format!("x-pad-{i}").into_bytes(), vec![b'v'; 1000]));
        }
        let block = loona_hpack::Encoder::new().encode(big.iter().map(|(n, v)| (&n[..], &v[..])));
        let mut input = PREFACE.to_vec();
        // The client may itself use frames larger than we emit if the server allowed it.
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block));
        let out = run(&input, 4096).unwrap();
        let raw = parse_frames(&out[24..]);
        assert!(raw.len() >= 3);
        assert_eq!(raw[0].frame_type, TYPE_HEADERS);
        assert!(raw[1..].iter().all(|f| f.frame_type == TYPE_CONTINUATION));
        let (_, decoded) = server_view(&out);
        let mut expected = big;
        expected[3].1 = b"127.0.0.1:9".to_vec();
        assert_eq!(decoded, vec![expected]);
    }

    #[test]
    fn oversized_block_is_rejected() {
        let mut input = PREFACE.to_vec();
        let chunk = vec![0u8; 16_384];
        input.extend(frame(TYPE_HEADERS, 0, 1, &chunk));
        for _ in 0..(MAX_HEADER_BLOCK / chunk.len()) {
            input.extend(frame(TYPE_CONTINUATION, 0, 1, &chunk));
        }
        assert!(matches!(
            run(&input, 50_000),
            Err(RewriteError::BlockTooLarge)
        ));
    }

    #[test]
    fn decoded_size_amplification_is_rejected() {
        // One 4000-byte entry in the dynamic table, then a block of 1-byte references to it.
        let mut block = vec![0x40, 0x01, b'x', 0x7f, 0xa1, 0x1e];
        block.extend(vec![b'v'; 4000]);
        block.extend(vec![0xbe; 400]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block));
        assert!(matches!(
            run(&input, input.len()),
            Err(RewriteError::HeaderListTooLarge)
        ));
    }

    #[test]
    fn protocol_violations_close_the_connection() {
        let mut bad_preface = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        bad_preface.extend(vec![0; 10]);
        assert!(matches!(
            run(&bad_preface, 3),
            Err(RewriteError::BadPreface)
        ));

        let mut interrupted = PREFACE.to_vec();
        interrupted.extend(frame(TYPE_HEADERS, 0, 1, &[0x82]));
        interrupted.extend(frame(0x0, 0, 1, b"x"));
        assert!(matches!(
            run(&interrupted, 1),
            Err(RewriteError::ExpectedContinuation { .. })
        ));

        let mut stray = PREFACE.to_vec();
        stray.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, &[0x82]));
        assert!(matches!(
            run(&stray, 1),
            Err(RewriteError::UnexpectedContinuation)
        ));

        let mut overpadded = PREFACE.to_vec();
        overpadded.extend(frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_END_HEADERS,
            1,
            &[9, 0x82],
        ));
        assert!(matches!(run(&overpadded, 1), Err(RewriteError::BadPadding)));

        let mut garbage_hpack = PREFACE.to_vec();
        garbage_hpack.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[0xff, 0xff, 0xff],
        ));
        assert!(matches!(
            run(&garbage_hpack, 1),
            Err(RewriteError::Hpack(_))
        ));

        let mut oversized_table = PREFACE.to_vec();
        oversized_table.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &[0x3f, 0xe2, 0x3f, 0x82],
        ));
        assert!(matches!(
            run(&oversized_table, 1),
            Err(RewriteError::Hpack(_))
        ));
    }

    #[test]
    fn random_garbage_never_panics() {
        // xorshift: deterministic pseudo-random frames with random flags and payloads.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut errors = 0;
        for _ in 0..2000 {
            let mut input = PREFACE.to_vec();
            for _ in 0..(next() % 4 + 1) {
                let len = (next() % 40) as usize;
                let payload: Vec<u8> = (0..len).map(|_| next() as u8).collect();
                let frame_type = [0u8, 1, 4, 9][(next() % 4) as usize];
                input.extend(frame(frame_type, next() as u8, 1, &payload));
            }
            if run(&input, (next() % 7 + 1) as usize).is_err() {
                errors += 1;
            }
        }
        assert!(errors > 0, "garbage should be rejected at least sometimes");
    }

    #[tokio::test]
    async fn stream_wrapper_rewrites_reads_and_passes_writes() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut wrapped = AuthorityFixStream::new(server);
        let input = client_stream(
            &mut loona_hpack::Encoder::new(),
            &[request("http://127.0.0.1:5")],
        );
        let expected = run(&input, input.len()).unwrap();
        let writer = tokio::spawn(async move {
            for b in input.chunks(3) {
                client.write_all(b).await.unwrap();
            }
            let mut reply = [0u8; 5];
            client.read_exact(&mut reply).await.unwrap();
            client.shutdown().await.unwrap();
            reply
        });
        let mut got = vec![0u8; expected.len()];
        wrapped.read_exact(&mut got).await.unwrap();
        assert_eq!(got, expected);
        wrapped.write_all(b"hello").await.unwrap();
        assert_eq!(&writer.await.unwrap(), b"hello");
        let mut rest = Vec::new();
        wrapped.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn stream_wrapper_fails_reads_on_bad_input() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut wrapped = AuthorityFixStream::new(server);
        client
            .write_all(b"NOT HTTP/2 AT ALL, NOPE!!")
            .await
            .unwrap();
        let mut buf = [0u8; 64];
        let err = wrapped.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(wrapped.read(&mut buf).await.is_err());
    }
}
