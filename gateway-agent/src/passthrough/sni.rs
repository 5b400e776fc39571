//! The server name of a TLS ClientHello (RFC 8446 4.1.2, RFC 6066 3), read
//! from the first TLS record without allocating and without reading past the
//! input: every field is taken with a bounds-checked slice.

/// The largest TLS plaintext record (RFC 8446 5.1): a ClientHello must fit in
/// the first record, so a passthrough listener never buffers more than this
/// plus the record header.
pub const MAX_RECORD: usize = 1 << 14;
pub const RECORD_HEADER: usize = 5;
/// The most bytes the agent ever peeks before deciding.
pub const MAX_HELLO_BYTES: usize = RECORD_HEADER + MAX_RECORD;

const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const EXTENSION_SERVER_NAME: u16 = 0;
const NAME_TYPE_HOST_NAME: u8 = 0;
/// DNS names are at most 253 characters; RFC 6066 allows up to 2^16-1 bytes, we don't.
const MAX_HOST_NAME: usize = 253;

/// What the first bytes of a connection say about its server name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientHello<'a> {
    /// The first record is not all there yet: read at least this many bytes in total.
    Incomplete { needed: usize },
    /// A well-formed ClientHello naming this host (as sent: compare without case).
    Sni(&'a str),
    /// A well-formed ClientHello without a server_name host name.
    NoSni,
    /// Not a TLS ClientHello, or one that breaks the format.
    Malformed(Malformed),
}

/// Why a ClientHello was rejected, named for logs and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    NotHandshake,
    RecordTooLong,
    NotClientHello,
    /// The ClientHello continues in a second record; we only read the first.
    FragmentedHello,
    /// A length field points past its enclosing structure.
    Truncated,
    BadHostName,
    DuplicateExtension,
}

impl Malformed {
    pub const fn name(self) -> &'static str {
        match self {
            Malformed::NotHandshake => "not_handshake",
            Malformed::RecordTooLong => "record_too_long",
            Malformed::NotClientHello => "not_client_hello",
            Malformed::FragmentedHello => "fragmented_hello",
            Malformed::Truncated => "truncated",
            Malformed::BadHostName => "bad_host_name",
            Malformed::DuplicateExtension => "duplicate_extension",
        }
    }
}

/// A cursor over a byte slice whose every read is bounds-checked.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        let (head, tail) = self.bytes.split_at_checked(n).ok_or(Malformed::Truncated)?;
        self.bytes = tail;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Malformed> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u24(&mut self) -> Result<usize, Malformed> {
        let b = self.take(3)?;
        Ok(usize::from(b[0]) << 16 | usize::from(b[1]) << 8 | usize::from(b[2]))
    }

    /// A sub-reader over a vector whose length prefix is `len_bytes` wide.
    fn vector(&mut self, len_bytes: usize) -> Result<Reader<'a>, Malformed> {
        let len = match len_bytes {
            1 => usize::from(self.u8()?),
            2 => usize::from(self.u16()?),
            _ => self.u24()?,
        };
        Ok(Reader {
            bytes: self.take(len)?,
        })
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// Reads the server name from the start of a connection's byte stream.
pub fn parse(stream: &[u8]) -> ClientHello<'_> {
    let Some(header) = stream.get(..RECORD_HEADER) else {
        // Reject a wrong content type as soon as the first byte shows it.
        if stream.first().is_some_and(|t| *t != CONTENT_HANDSHAKE) {
            return ClientHello::Malformed(Malformed::NotHandshake);
        }
        return ClientHello::Incomplete {
            needed: RECORD_HEADER,
        };
    };
    // Record versions are 3.x (SSL 3.0 to TLS 1.3's legacy 3.1/3.3).
    if header[0] != CONTENT_HANDSHAKE || header[1] != 3 {
        return ClientHello::Malformed(Malformed::NotHandshake);
    }
    let length = usize::from(u16::from_be_bytes([header[3], header[4]]));
    if length > MAX_RECORD {
        return ClientHello::Malformed(Malformed::RecordTooLong);
    }
    let Some(record) = stream.get(RECORD_HEADER..RECORD_HEADER + length) else {
        return ClientHello::Incomplete {
            needed: RECORD_HEADER + length,
        };
    };
    match client_hello(record) {
        Ok(Some(name)) => ClientHello::Sni(name),
        Ok(None) => ClientHello::NoSni,
        Err(e) => ClientHello::Malformed(e),
    }
}

fn client_hello(record: &[u8]) -> Result<Option<&str>, Malformed> {
    let mut record = Reader { bytes: record };
    if record.u8()? != HANDSHAKE_CLIENT_HELLO {
        return Err(Malformed::NotClientHello);
    }
    let length = record.u24()?;
    let Ok(mut hello) = record.take(length).map(|bytes| Reader { bytes }) else {
        return Err(Malformed::FragmentedHello);
    };
    hello.take(2)?; // legacy_version
    hello.take(32)?; // random
    hello.vector(1)?; // legacy_session_id
    hello.vector(2)?; // cipher_suites
    hello.vector(1)?; // legacy_compression_methods
    if hello.is_empty() {
        return Ok(None); // No extensions at all (a pre-TLS 1.2 client).
    }
    let mut extensions = hello.vector(2)?;
    if !hello.is_empty() {
        return Err(Malformed::Truncated);
    }
    let mut found = None;
    while !extensions.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vector(2)?;
        if kind == EXTENSION_SERVER_NAME {
            if found.is_some() {
                return Err(Malformed::DuplicateExtension);
            }
            found = Some(server_name(data)?);
        }
    }
    Ok(found.flatten())
}

/// The host_name entry of a server_name extension (RFC 6066: at most one).
fn server_name(mut data: Reader<'_>) -> Result<Option<&str>, Malformed> {
    let mut list = data.vector(2)?;
    if !data.is_empty() {
        return Err(Malformed::Truncated);
    }
    let mut host = None;
    while !list.is_empty() {
        let name_type = list.u8()?;
        let name = list.vector(2)?.bytes;
        if name_type != NAME_TYPE_HOST_NAME {
            continue;
        }
        if host.is_some() {
            return Err(Malformed::DuplicateExtension);
        }
        host = Some(host_name(name)?);
    }
    Ok(host)
}

/// A DNS host name: letters, digits, '-', '_' and '.', no trailing dot (RFC 6066).
fn host_name(name: &[u8]) -> Result<&str, Malformed> {
    let valid = !name.is_empty()
        && name.len() <= MAX_HOST_NAME
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        && !name.starts_with(b".")
        && !name.ends_with(b".");
    if !valid {
        return Err(Malformed::BadHostName);
    }
    std::str::from_utf8(name).map_err(|_| Malformed::BadHostName)
}

#[cfg(test)]
mod tests;
