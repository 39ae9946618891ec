//! `Content-Encoding` of a `POST /generate` body: `gzip`, `zstd` (or none).
//!
//! The body limit (`ARTEFATOS_MAX_BODY_BYTES`) applies to the bytes as sent;
//! the inflated document has its own limit (`ARTEFATOS_MAX_DOCUMENT_BYTES`),
//! checked chunk by chunk while it inflates, so a decompression bomb is
//! refused with 413 as soon as it passes the limit, never after inflating it
//! all. An inflated body larger than `ARTEFATOS_LARGE_BODY_BYTES` takes one of
//! the large-body slots like a plain body of that size, before it grows
//! further: the slots bound the API's memory whatever the encoding.

use std::io::Read;

use axum::body::Bytes;
use axum::http::{HeaderMap, header};
use flate2::read::MultiGzDecoder;
use ruzstd::decoding::StreamingDecoder;

use super::AppState;
use super::error::ApiError;
use super::generate::LargeBodySlot;

/// Inflated bytes read at a time: the granularity of the limit check.
const INFLATE_CHUNK: usize = 64 * 1024;
/// Largest zstd window accepted: RFC 9659's limit for the `zstd` content
/// coding, so a frame header cannot make the decoder allocate more.
const ZSTD_MAX_WINDOW: u64 = 8 * 1024 * 1024;

/// The content codings `POST /generate` understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Identity,
    Gzip,
    Zstd,
}

/// The request's coding: none, `identity`, or one `gzip` (`x-gzip` is its
/// RFC 9110 alias) or `zstd` (RFC 9659); anything else, or several codings stacked, is 415
/// `unsupported_encoding` rather than a body parsed as garbage.
pub fn encoding(headers: &HeaderMap) -> Result<Encoding, ApiError> {
    let mut found = Encoding::Identity;
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let text = value.to_str().map_err(|_| {
            ApiError::UnsupportedEncoding(String::from_utf8_lossy(value.as_bytes()).into())
        })?;
        for coding in text.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            match coding.to_ascii_lowercase().as_str() {
                "identity" => {}
                "gzip" | "x-gzip" if found == Encoding::Identity => found = Encoding::Gzip,
                "zstd" if found == Encoding::Identity => found = Encoding::Zstd,
                _ => return Err(ApiError::UnsupportedEncoding(text.to_string())),
            }
        }
    }
    Ok(found)
}

/// The body as the handler parses it: inflated when it came compressed,
/// within `ARTEFATOS_MAX_DOCUMENT_BYTES` either way; takes a large-body slot
/// into `slot` when the inflated body turns out large.
pub async fn decode(
    state: &AppState,
    slot: &mut LargeBodySlot,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Bytes, ApiError> {
    let limit = state.config.max_document_bytes;
    match encoding(headers)? {
        Encoding::Identity if body.len() > limit => Err(ApiError::DocumentTooLarge(limit)),
        Encoding::Identity => Ok(body),
        coding @ (Encoding::Gzip | Encoding::Zstd) => {
            let large = state.config.large_body_bytes;
            let slots = (!slot.holds_permit()).then(|| state.large_bodies.clone());
            // Inflating is CPU work proportional to the output: off the
            // async workers, whatever the compressed size.
            let (inflated, permit) = tokio::task::spawn_blocking(move || {
                let mut permit = None;
                let inflated = inflate(coding, &body, limit, large, || {
                    if let Some(slots) = &slots {
                        permit = Some(
                            slots
                                .clone()
                                .try_acquire_owned()
                                .map_err(|_| ApiError::Busy)?,
                        );
                    }
                    Ok(())
                });
                (inflated, permit)
            })
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?;
            slot.hold(permit);
            inflated.map(Bytes::from)
        }
    }
}

/// Inflates a gzip stream (one member or several, concatenated) or zstd
/// frames up to `limit` bytes: past it, [`ApiError::DocumentTooLarge`] with at most one
/// chunk more inflated. `on_large` runs once, when the output first passes
/// `large` bytes, and may refuse to go on.
pub fn inflate(
    coding: Encoding,
    compressed: &[u8],
    limit: usize,
    large: usize,
    mut on_large: impl FnMut() -> Result<(), ApiError>,
) -> Result<Vec<u8>, ApiError> {
    let mut decoder: Box<dyn Read + '_> = match coding {
        Encoding::Zstd => Box::new(ZstdFrames {
            rest: compressed,
            frame: None,
        }),
        _ => Box::new(MultiGzDecoder::new(compressed)),
    };
    let mut out: Vec<u8> = Vec::with_capacity(compressed.len().saturating_mul(4).min(large));
    let mut chunk = vec![0u8; INFLATE_CHUNK];
    let mut announced = false;
    loop {
        let n = match decoder.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(ApiError::InvalidRequest(format!(
                    "the {coding:?}-encoded body cannot be decompressed: {e}"
                )));
            }
        };
        let len = out.len() + n;
        if len > limit {
            return Err(ApiError::DocumentTooLarge(limit));
        }
        if len > large && !announced {
            announced = true;
            on_large()?;
        }
        // Grow by doubling, but never past the limit: the buffer is what
        // the limit bounds.
        if out.capacity() < len {
            let target = out.capacity().saturating_mul(2).max(len).min(limit);
            out.reserve_exact(target - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

/// zstd frames one after the other, as RFC 8878 allows, read as one stream.
struct ZstdFrames<'a> {
    rest: &'a [u8],
    frame: Option<StreamingDecoder<&'a [u8], ruzstd::decoding::FrameDecoder>>,
}

impl Read for ZstdFrames<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            if let Some(frame) = &mut self.frame {
                let n = frame.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                if let Some(done) = self.frame.take() {
                    self.rest = done.into_inner();
                }
            }
            if self.rest.is_empty() {
                return Ok(0);
            }
            let frame = StreamingDecoder::new_with_max_window_size(self.rest, ZSTD_MAX_WINDOW)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
            self.frame = Some(frame);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use axum::http::HeaderValue;
    use flate2::Compression;
    use flate2::write::GzEncoder;

    use super::*;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(header::CONTENT_ENCODING, HeaderValue::from_static(v));
        }
        headers
    }

    #[test]
    fn codings_are_gzip_identity_or_refused() {
        assert_eq!(encoding(&headers(&[])).unwrap(), Encoding::Identity);
        assert_eq!(encoding(&headers(&["GZip"])).unwrap(), Encoding::Gzip);
        assert_eq!(encoding(&headers(&["zstd"])).unwrap(), Encoding::Zstd);
        assert_eq!(
            encoding(&headers(&["identity, x-gzip"])).unwrap(),
            Encoding::Gzip
        );
        for refused in [
            &["br"][..],
            &["gzip, gzip"],
            &["gzip", "zstd"],
            &["deflate"],
        ] {
            assert_eq!(
                encoding(&headers(refused)).unwrap_err().code(),
                "unsupported_encoding"
            );
        }
    }

    #[test]
    fn a_bomb_stops_one_chunk_past_the_limit() {
        let bomb = gzip(&vec![b' '; 64 * 1024 * 1024]);
        let mut chunks_seen = 0;
        let err = inflate(Encoding::Gzip, &bomb, 1024 * 1024, usize::MAX, || {
            chunks_seen += 1;
            Ok(())
        })
        .unwrap_err();
        assert!(matches!(err, ApiError::DocumentTooLarge(n) if n == 1024 * 1024));
        assert_eq!(chunks_seen, 0);
    }

    #[test]
    fn inflated_bodies_round_trip_and_announce_when_large() {
        let text = b"{\"a\": 1}".repeat(1000);
        let mut concatenated = gzip(&text);
        concatenated.extend(gzip(b" "));
        let mut announced = 0;
        let out = inflate(Encoding::Gzip, &concatenated, usize::MAX, 100, || {
            announced += 1;
            Ok(())
        })
        .unwrap();
        assert_eq!(out.len(), text.len() + 1);
        assert_eq!(announced, 1);
        let refused = inflate(Encoding::Gzip, &concatenated, usize::MAX, 100, || {
            Err(ApiError::Busy)
        });
        assert!(matches!(refused, Err(ApiError::Busy)));
        let corrupt = inflate(Encoding::Gzip, b"not gzip", usize::MAX, 100, || Ok(()));
        assert_eq!(corrupt.unwrap_err().code(), "invalid_request");
    }
}
