//! A cheap check of a GGUF file's header before llama.cpp sees it: the magic, a version llama.cpp
//! reads, and tensor and metadata counts that the file's size can hold. llama.cpp reports most of
//! these only as "null result" (the cause goes to its log); this names it.

use std::io::Read;
use std::path::Path;

/// The header: `GGUF`, a `u32` version, a `u64` tensor count and a `u64` metadata count.
const HEADER_BYTES: u64 = 4 + 4 + 8 + 8;
/// The least one tensor's description takes: name length (8), dimension count (4), type (4),
/// offset (8), and at least one dimension (8).
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 4 + 4 + 8 + 8;
/// The least one metadata entry takes: key length (8), value type (4), a one-byte value.
const MIN_KV_BYTES: u64 = 8 + 4 + 1;

/// Checks the header of the GGUF at `path`; the error says what is wrong, in words.
pub fn check_header(path: &Path) -> Result<(), String> {
    let mut file = std::fs::File::open(path).map_err(|e| format!("cannot open it: {e}"))?;
    let size = file
        .metadata()
        .map_err(|e| format!("cannot read its size: {e}"))?
        .len();
    let mut header = [0u8; HEADER_BYTES as usize];
    let mut read = 0;
    while read < header.len() {
        match file.read(&mut header[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("cannot read it: {e}")),
        }
    }
    check_header_bytes(&header[..read], size)
}

/// Checks a GGUF header given its first bytes and the file's size.
pub fn check_header_bytes(header: &[u8], size: u64) -> Result<(), String> {
    if header.len() < 4 || &header[..4] != b"GGUF" {
        let shown: String = header
            .iter()
            .take(4)
            .map(|&b| if b.is_ascii_graphic() { b as char } else { '.' })
            .collect();
        return Err(format!(
            "it is not a GGUF file: it starts with {shown:?} instead of \"GGUF\" ({size} bytes)"
        ));
    }
    if (header.len() as u64) < HEADER_BYTES {
        return Err(format!(
            "it is truncated: {size} bytes, shorter than a GGUF header ({HEADER_BYTES} bytes)"
        ));
    }
    let u32_at = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    let version = u32_at(4);
    if !(2..=3).contains(&version) {
        return Err(format!(
            "its GGUF version is {version}; llama.cpp reads versions 2 and 3"
        ));
    }
    let (n_tensors, n_kv) = (u64_at(8), u64_at(16));
    let needed = n_tensors
        .checked_mul(MIN_TENSOR_INFO_BYTES)
        .and_then(|t| {
            n_kv.checked_mul(MIN_KV_BYTES)
                .and_then(|k| t.checked_add(k))
        })
        .and_then(|n| n.checked_add(HEADER_BYTES));
    match needed {
        Some(needed) if needed <= size => Ok(()),
        _ => Err(format!(
            "its header claims {n_tensors} tensors and {n_kv} metadata entries, more than a file \
             of {size} bytes can describe (corrupt or truncated)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::check_header_bytes;

    fn header(magic: &[u8; 4], version: u32, n_tensors: u64, n_kv: u64) -> Vec<u8> {
        let mut bytes = magic.to_vec();
        bytes.extend(version.to_le_bytes());
        bytes.extend(n_tensors.to_le_bytes());
        bytes.extend(n_kv.to_le_bytes());
        bytes
    }

    #[test]
    fn a_plausible_header_passes() {
        assert_eq!(
            check_header_bytes(&header(b"GGUF", 3, 272, 30), 90_000_000),
            Ok(())
        );
    }

    #[test]
    fn each_fault_is_named() {
        let not_gguf = check_header_bytes(b"PK\x03\x04rest-of-a-zip-file....", 100).unwrap_err();
        assert!(not_gguf.contains("not a GGUF file"), "{not_gguf}");
        let short = check_header_bytes(b"GGUF\x03\0\0\0", 8).unwrap_err();
        assert!(short.contains("truncated"), "{short}");
        let version = check_header_bytes(&header(b"GGUF", 99, 1, 1), 1 << 20).unwrap_err();
        assert!(version.contains("version is 99"), "{version}");
        let absurd = check_header_bytes(&header(b"GGUF", 3, u64::MAX / 2, 1), 1 << 20).unwrap_err();
        assert!(absurd.contains("more than a file"), "{absurd}");
        let overflow = check_header_bytes(&header(b"GGUF", 3, u64::MAX, u64::MAX), 1).unwrap_err();
        assert!(overflow.contains("more than a file"), "{overflow}");
    }
}
