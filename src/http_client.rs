//! Reading the body of an outbound HTTP response with a byte cap.
//!
//! keyhost reads documents from servers it does not control: a partner's JWKS (`keyhost doctor`,
//! the AIR Kit emulator) and AIR Kit's answers. reqwest's `bytes()`, `text()` and `json()` keep
//! whatever arrives until the server stops or the timeout fires, so the server decides how much
//! memory keyhost uses: a fast endless body grows by gigabytes before a ten-second timeout.
//!
//! What [`read_capped`] guarantees, whatever the server sends:
//! - a `Content-Length` above the cap is refused before any of the body is read;
//! - the body is read chunk by chunk and reading stops, with an error, at the first chunk that
//!   would take it past the cap, so at most `cap` bytes are ever kept (plus the one chunk in
//!   hand, which is bounded by the HTTP stack's read buffer);
//! - a body of exactly `cap` bytes is accepted.
//!
//! The cap applies to the bytes handed out by [`reqwest::Response::chunk`], i.e. after any
//! content decoding; keyhost builds reqwest without decompression, so they are the bytes on the
//! wire.
//!
//! Redirects are each caller's business (every client keyhost builds refuses them), as is the
//! time limit (the client's timeout still bounds a body that trickles in under the cap).
//! [`describe`] turns a reqwest error into one line with its root cause, for messages.

use std::error::Error as StdError;

/// One mebibyte, the unit of the caps keyhost uses.
pub const MIB: usize = 1 << 20;

/// Why a response body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// The response announced a body larger than the cap; nothing was read.
    #[error(
        "the response announces {declared} bytes (Content-Length), over the {} cap; it was not read",
        size(*.cap)
    )]
    DeclaredTooLarge {
        /// The `Content-Length` announced.
        declared: u64,
        /// The cap, in bytes.
        cap: usize,
    },
    /// The body grew past the cap while it was read; reading stopped there.
    #[error("the response body exceeds the {} cap; reading stopped there", size(*.cap))]
    TooLarge {
        /// The cap, in bytes.
        cap: usize,
    },
    /// The body could not be read (connection closed, timeout...).
    #[error("reading the response body failed: {0}")]
    Read(#[source] reqwest::Error),
}

impl BodyError {
    /// Whether the body was refused for its size (rather than lost on the way).
    pub fn is_too_large(&self) -> bool {
        matches!(self, Self::DeclaredTooLarge { .. } | Self::TooLarge { .. })
    }
}

/// A cap for people, to be followed by "cap": `1 MiB (1048576 bytes)`, `64 KiB (65536 bytes)`,
/// `100-byte`.
fn size(bytes: usize) -> String {
    const KIB: usize = 1 << 10;
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB ({bytes} bytes)", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB ({bytes} bytes)", bytes / KIB)
    } else {
        format!("{bytes}-byte")
    }
}

/// `builder` trusting, beyond the system's roots, the CA certificates of the PEM file `path`
/// (`what` names the setting in errors, e.g. `--ca-file`).
pub fn trusting_ca_file(
    builder: reqwest::ClientBuilder,
    path: &std::path::Path,
    what: &str,
) -> anyhow::Result<reqwest::ClientBuilder> {
    let pem = std::fs::read(path)
        .map_err(|e| anyhow::anyhow!("reading {what} {}: {e}", path.display()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| anyhow::anyhow!("parsing {what} {}: {e}", path.display()))?;
    Ok(builder.tls_certs_merge(certs))
}

/// Reads the body of `response`, failing as soon as it would exceed `cap` bytes (at once when
/// `Content-Length` already does). See the module documentation for the guarantees.
pub async fn read_capped(
    mut response: reqwest::Response,
    cap: usize,
) -> Result<Vec<u8>, BodyError> {
    let declared = response.content_length();
    if let Some(declared) = declared
        && declared > cap as u64
    {
        return Err(BodyError::DeclaredTooLarge { declared, cap });
    }
    // Reserving what the server announces is bounded by the cap, checked above.
    let expected = declared.map_or(0, |n| usize::try_from(n).unwrap_or(cap).min(cap));
    let mut body = Vec::with_capacity(expected);
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Read)? {
        // `body.len() <= cap` holds on every iteration, so the subtraction cannot underflow;
        // checking before appending keeps the kept bytes within the cap.
        if chunk.len() > cap - body.len() {
            return Err(BodyError::TooLarge { cap });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// An error and its causes on one line: reqwest's own message omits the root cause ("error
/// sending request" without the "connection refused" that explains it).
pub fn describe(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// Writes all of `bytes` without tokio's `io-util` feature (which keyhost does not enable).
    async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            stream.writable().await?;
            match stream.try_write(bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads a request up to the end of its head: answering before the request is read makes
    /// the client give up on the exchange.
    async fn read_head(stream: &TcpStream) -> std::io::Result<()> {
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            stream.readable().await?;
            match stream.try_read(&mut buf) {
                Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => head.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// A one-connection HTTP/1.1 server answering 200 with `head` (extra header lines) and then
    /// `body` repeated `times` times (`None`: until the client hangs up), closing afterwards.
    async fn serve(head: String, body: Vec<u8>, times: Option<usize>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            if read_head(&stream).await.is_err() {
                return;
            }
            let response_head = format!("HTTP/1.1 200 OK\r\nConnection: close\r\n{head}\r\n");
            if write_all(&stream, response_head.as_bytes()).await.is_err() {
                return;
            }
            let mut sent = 0;
            while times.is_none_or(|t| sent < t) {
                if write_all(&stream, &body).await.is_err() {
                    return;
                }
                sent += 1;
            }
        });
        addr
    }

    async fn get(addr: SocketAddr) -> reqwest::Response {
        reqwest::get(format!("http://{addr}/")).await.unwrap()
    }

    #[tokio::test]
    async fn a_body_of_exactly_the_cap_is_read_whole() {
        let addr = serve("Content-Length: 4096\r\n".into(), vec![b'x'; 1024], Some(4)).await;
        let body = read_capped(get(addr).await, 4096).await.unwrap();
        assert_eq!(body.len(), 4096);
    }

    #[tokio::test]
    async fn a_body_without_content_length_of_exactly_the_cap_is_read_whole() {
        let addr = serve(String::new(), vec![b'x'; 1000], Some(4)).await;
        let body = read_capped(get(addr).await, 4000).await.unwrap();
        assert_eq!(body.len(), 4000);
    }

    #[tokio::test]
    async fn a_content_length_over_the_cap_is_refused_before_reading() {
        let addr = serve("Content-Length: 4097\r\n".into(), vec![b'x'; 4097], Some(1)).await;
        let err = read_capped(get(addr).await, 4096).await.unwrap_err();
        assert!(
            matches!(
                err,
                BodyError::DeclaredTooLarge {
                    declared: 4097,
                    cap: 4096
                }
            ),
            "{err:?}"
        );
        assert!(err.is_too_large());
        assert_eq!(
            err.to_string(),
            "the response announces 4097 bytes (Content-Length), over the 4 KiB (4096 bytes) cap; \
             it was not read"
        );
    }

    #[tokio::test]
    async fn an_endless_body_fails_as_soon_as_it_passes_the_cap() {
        let addr = serve(String::new(), vec![b'x'; 16 * 1024], None).await;
        let started = std::time::Instant::now();
        let err = read_capped(get(addr).await, MIB).await.unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { cap: MIB }), "{err:?}");
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert_eq!(
            err.to_string(),
            "the response body exceeds the 1 MiB (1048576 bytes) cap; reading stopped there"
        );
    }

    #[tokio::test]
    async fn one_byte_over_the_cap_mid_stream_fails() {
        let addr = serve(String::new(), vec![b'x'; 1000], Some(4)).await;
        let err = read_capped(get(addr).await, 3999).await.unwrap_err();
        assert!(matches!(err, BodyError::TooLarge { cap: 3999 }), "{err:?}");
        assert!(err.to_string().contains("3999-byte cap"), "{err}");
    }

    #[tokio::test]
    async fn a_content_length_that_lies_low_lets_no_more_through() {
        // The server announces less than it sends: the HTTP stack stops at Content-Length, so a
        // low announcement cannot smuggle more than the cap past the early check.
        let addr = serve("Content-Length: 10\r\n".into(), vec![b'x'; 100], Some(1)).await;
        let body = read_capped(get(addr).await, 50).await.unwrap();
        assert_eq!(body.len(), 10);
    }

    #[test]
    fn sizes_are_named_for_people() {
        assert_eq!(size(MIB), "1 MiB (1048576 bytes)");
        assert_eq!(size(64 * 1024), "64 KiB (65536 bytes)");
        assert_eq!(size(100), "100-byte");
    }
}
