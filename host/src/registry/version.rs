//! A component's version: the one it declares in a top-level `version` custom section (the
//! name `wasm-tools metadata add --version` writes), else the first 12 hex digits of its
//! digest.

use wasmparser::{Parser, Payload};

/// The longest declared version accepted; anything longer is treated as absent.
const MAX_DECLARED_LEN: usize = 64;

/// How many hex digits of the digest stand for the version when none is declared.
const DIGEST_VERSION_LEN: usize = 12;

/// The version of a component whose bytes are `bytes` and whose SHA-256 is `digest_hex`.
pub(crate) fn version_of(bytes: &[u8], digest_hex: &str) -> String {
    declared_version(bytes)
        .unwrap_or_else(|| digest_hex[..digest_hex.len().min(DIGEST_VERSION_LEN)].to_owned())
}

/// The text of the outermost `version` custom section, if it is short, printable UTF-8.
fn declared_version(bytes: &[u8]) -> Option<String> {
    // Every nested module or component opens with a `Version` payload and closes with `End`,
    // so depth 1 is the outer component: a core module's own sections do not count.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.ok()? {
            Payload::Version { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::CustomSection(section) if depth == 1 && section.name() == "version" => {
                let text = std::str::from_utf8(section.data()).ok()?.trim();
                let printable = !text.is_empty()
                    && text.len() <= MAX_DECLARED_LEN
                    && !text.chars().any(char::is_control);
                return printable.then(|| text.to_owned());
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A custom section: id 0, size, name, data (all sizes below 128, one LEB byte each).
    fn custom_section(name: &str, data: &[u8]) -> Vec<u8> {
        let mut body = vec![u8::try_from(name.len()).unwrap()];
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(data);
        let mut section = vec![0, u8::try_from(body.len()).unwrap()];
        section.extend(body);
        section
    }

    /// An empty component (`\0asm`, version 0x0d, layer 1).
    fn empty_component() -> Vec<u8> {
        b"\0asm\x0d\x00\x01\x00".to_vec()
    }

    #[test]
    fn a_declared_version_wins_over_the_digest() {
        let mut bytes = empty_component();
        bytes.extend(custom_section("version", b" 2.1.0\n"));
        assert_eq!(version_of(&bytes, "abcdef0123456789"), "2.1.0");
    }

    #[test]
    fn without_a_declaration_the_digest_prefix_is_the_version() {
        let mut bytes = empty_component();
        bytes.extend(custom_section("producers-ish", b"1.0"));
        assert_eq!(version_of(&bytes, "abcdef0123456789"), "abcdef012345");
    }

    #[test]
    fn unprintable_or_unparsable_declarations_are_ignored() {
        let mut bytes = empty_component();
        bytes.extend(custom_section("version", b"1.0\x07"));
        assert_eq!(version_of(&bytes, "0123456789abcdef"), "0123456789ab");
        assert_eq!(version_of(b"junk", "0123456789abcdef"), "0123456789ab");
    }
}
