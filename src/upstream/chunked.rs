//! The chunked transfer coding of an upstream response (RFC 9112 §7.1), decoded from the
//! bytes [`super::h1`] has read, as strictly as hyper decodes it.

use bytes::{Buf, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::h1::BodyError;

/// Bytes of a chunk-size line (size, whitespace, extensions), and of a trailer section, at
/// most (hyper's limits).
const MAX_CHUNK_LINE: usize = 16 * 1024;
/// Bytes of chunk extensions over a whole body, at most (hyper's limit): they are
/// skipped, and must not let an upstream send unbounded bytes around little data.
const MAX_EXTENSIONS: usize = 16 * 1024;
const MAX_TRAILERS: usize = 16 * 1024;
/// Trailer fields, at most.
const MAX_FIELDS: usize = 100;

/// RFC 9112 §7.1, as hyper decodes it: hex size (with optional whitespace and extensions),
/// CRLF, data, CRLF; after the last chunk, trailer fields up to an empty line.
#[derive(Default)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    /// Bytes of the current size line.
    line: usize,
    /// Bytes of extensions so far.
    extensions: usize,
    trailers: Vec<u8>,
}

#[derive(Default, Clone, Copy, PartialEq)]
enum ChunkState {
    #[default]
    Start,
    Size,
    SizeWs,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// After the last chunk: trailer lines, or the final CRLF.
    Trailers,
    End,
}

pub enum Step {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
    /// Nothing complete in the buffer: read more.
    More,
}

impl Chunked {
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, BodyError> {
        use ChunkState::*;
        let bad = |what| Err(BodyError::Chunked(what));
        loop {
            if self.state == End {
                return Ok(Step::End);
            }
            if self.state == Data {
                if buf.is_empty() {
                    return Ok(Step::More);
                }
                let take = buf
                    .len()
                    .min(usize::try_from(self.size).unwrap_or(usize::MAX));
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = DataCr;
                }
                return Ok(Step::Data(buf.split_to(take).freeze()));
            }
            if self.state == Trailers {
                return self.trailers(buf);
            }
            let Some(&b) = buf.first() else {
                return Ok(Step::More);
            };
            buf.advance(1);
            self.line += 1;
            if self.line > MAX_CHUNK_LINE {
                return bad("chunk-size line too long");
            }
            self.state = match (self.state, b) {
                (Start | Size, b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
                    let digit = (b as char).to_digit(16).unwrap_or(0);
                    self.size = match self.size.checked_mul(16) {
                        Some(s) => s + u64::from(digit),
                        None => return bad("chunk size overflows"),
                    };
                    Size
                }
                (Start, _) => return bad("chunk size missing"),
                (Size | SizeWs, b' ' | b'\t') => SizeWs,
                (Size | SizeWs, b';') => Extension,
                (Size | SizeWs | Extension, b'\r') => SizeLf,
                (Size | SizeWs, _) => return bad("invalid chunk size"),
                (Extension, b'\n') => return bad("bare LF in chunk extension"),
                (Extension, _) => {
                    self.extensions += 1;
                    if self.extensions > MAX_EXTENSIONS {
                        return bad("chunk extensions over the limit");
                    }
                    Extension
                }
                (SizeLf, b'\n') => {
                    self.line = 0;
                    if self.size == 0 {
                        Trailers
                    } else {
                        Data
                    }
                }
                (SizeLf, _) => return bad("chunk size line without LF"),
                (DataCr, b'\r') => DataLf,
                (DataCr, _) => return bad("chunk data without CRLF"),
                (DataLf, b'\n') => {
                    self.line = 0;
                    Start
                }
                (DataLf, _) => return bad("chunk data without CRLF"),
                (Data | Trailers | End, _) => return bad("chunk state"),
            };
        }
    }

    /// The trailer section: fields, then an empty line.
    fn trailers(&mut self, buf: &mut BytesMut) -> Result<Step, BodyError> {
        let start = self.trailers.len().saturating_sub(3);
        self.trailers.extend_from_slice(buf);
        let end = if self.trailers.starts_with(b"\r\n") {
            Some(2)
        } else {
            self.trailers[start..]
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|p| start + p + 4)
        };
        let Some(end) = end else {
            buf.clear();
            if self.trailers.len() > MAX_TRAILERS {
                return Err(BodyError::Chunked("trailers too large"));
            }
            return Ok(Step::More);
        };
        if end > MAX_TRAILERS {
            return Err(BodyError::Chunked("trailers too large"));
        }
        // What followed the body stays in the buffer (and keeps the connection from reuse).
        let extra = self.trailers.len() - end;
        buf.advance(buf.len() - extra);
        self.state = ChunkState::End;
        if end == 2 {
            return Ok(Step::End);
        }
        let mut slots = [httparse::EMPTY_HEADER; MAX_FIELDS];
        let fields = match httparse::parse_headers(&self.trailers[..end], &mut slots) {
            Ok(httparse::Status::Complete((_, fields))) => fields,
            _ => return Err(BodyError::Chunked("malformed trailers")),
        };
        let mut map = HeaderMap::with_capacity(fields.len());
        for f in fields {
            let (Ok(name), Ok(value)) = (
                HeaderName::from_bytes(f.name.as_bytes()),
                HeaderValue::from_bytes(f.value),
            ) else {
                return Err(BodyError::Chunked("malformed trailers"));
            };
            map.append(name, value);
        }
        Ok(Step::Trailers(map))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(
        input: &[u8],
        split: usize,
    ) -> Result<(Vec<u8>, Option<HeaderMap>, usize), BodyError> {
        let mut c = Chunked::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut trailers = None;
        let mut chunks = input.chunks(split.max(1));
        loop {
            match c.step(&mut buf)? {
                Step::Data(d) => out.extend_from_slice(&d),
                Step::Trailers(t) => trailers = Some(t),
                Step::End => return Ok((out, trailers, buf.len())),
                Step::More => match chunks.next() {
                    Some(more) => buf.extend_from_slice(more),
                    None => return Err(BodyError::Truncated),
                },
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_whatever_the_reads() {
        let body = b"5\r\nhello\r\n7;ext=\"x\"\r\n, world\r\nA \r\n0123456789\r\n0\r\nX-Sum: 1\r\nX-Other: 2\r\n\r\n";
        for split in [1, 2, 3, 7, 1000] {
            let (data, trailers, extra) = decode_all(body, split).expect("decodes");
            assert_eq!(data, b"hello, world0123456789", "split {split}");
            let t = trailers.expect("trailers");
            assert_eq!(t.get("x-sum").map(|v| v.as_bytes()), Some(&b"1"[..]));
            assert_eq!(t.len(), 2);
            assert_eq!(extra, 0);
        }
        let (data, trailers, extra) =
            decode_all(b"3\r\nabc\r\n0\r\n\r\nHTTP/1.1 200", 1000).expect("decodes");
        assert_eq!((data.as_slice(), trailers.is_none()), (&b"abc"[..], true));
        assert_eq!(extra, 12, "what follows the body is left, not swallowed");
    }

    #[test]
    fn broken_chunked_framing_is_an_error() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"5 5\r\nhello\r\n",
            b"5;a\nb\r\nhello\r\n",
            b"1ffffffffffffffff\r\n",
            b"-5\r\nhello\r\n",
            b"0x5\r\nhello\r\n",
        ] {
            assert!(
                matches!(decode_all(bad, 1000), Err(BodyError::Chunked(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"5;".as_slice(), &vec![b'a'; MAX_CHUNK_LINE], b"\r\n"].concat();
        assert!(matches!(
            decode_all(&long, 4096),
            Err(BodyError::Chunked(_))
        ));
        // Small lines, but too many extension bytes over the body.
        let many: Vec<u8> = (0..MAX_EXTENSIONS / 1000 + 1)
            .flat_map(|_| [b"1;".as_slice(), &[b'e'; 1000], b"\r\nx\r\n"].concat())
            .collect();
        assert!(matches!(
            decode_all(&many, 4096),
            Err(BodyError::Chunked(_))
        ));
        let trailers = [b"0\r\n".as_slice(), &vec![b'a'; MAX_TRAILERS + 10]].concat();
        assert!(matches!(
            decode_all(&trailers, 4096),
            Err(BodyError::Chunked(_))
        ));
    }
}
