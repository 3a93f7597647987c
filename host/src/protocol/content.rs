//! Serializers (by `content-type`) and compressions (by the `compression` header) of
//! kombu, spec §1.1.

use std::io::{self, Write};

use serde_json::Value;

use super::kombu_json::{self, KombuValue};
use super::yaml;

/// The largest body a compressed message may expand to. A guard against decompression
/// bombs: a message from the network must not be able to make the worker allocate
/// without bound. Larger bodies fail as a decompression error (acked and dropped).
pub const MAX_DECOMPRESSED_LEN: usize = 256 * 1024 * 1024;

/// A serializer kombu names by content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serializer {
    /// `application/json`: kombu JSON (see [`kombu_json`]).
    Json,
    /// `application/x-msgpack`.
    Msgpack,
    /// `application/x-yaml`, as `yaml.safe_dump` writes it and `yaml.safe_load` reads it.
    Yaml,
    /// `application/data`, `text/plain` or no content type: kombu hands the body over
    /// unparsed. Celery never sends tasks this way; such a body becomes a string (or a
    /// kombu bytes marker) and fails the task-message checks later.
    Raw,
}

/// What a content type asks for: a serializer, or a refusal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentType {
    /// A serializer celeriac reads.
    Accepted(Serializer),
    /// `application/x-python-serialize`: unpickling runs arbitrary code and yields Python
    /// objects, so celeriac refuses it by design.
    Pickle,
    /// Anything else.
    Unknown,
}

impl ContentType {
    /// Classifies a `content-type` value (case-insensitive; parameters such as
    /// `; charset=utf-8` are ignored).
    pub fn parse(content_type: &str) -> ContentType {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "application/json" => ContentType::Accepted(Serializer::Json),
            "application/x-msgpack" => ContentType::Accepted(Serializer::Msgpack),
            "application/x-yaml" => ContentType::Accepted(Serializer::Yaml),
            "application/data" | "text/plain" | "" => ContentType::Accepted(Serializer::Raw),
            "application/x-python-serialize" => ContentType::Pickle,
            _ => ContentType::Unknown,
        }
    }
}

impl Serializer {
    /// The `content-type` kombu writes for this serializer.
    pub fn content_type(self) -> &'static str {
        match self {
            Serializer::Json => "application/json",
            Serializer::Msgpack => "application/x-msgpack",
            Serializer::Yaml => "application/x-yaml",
            Serializer::Raw => "application/data",
        }
    }

    /// The `content-encoding` kombu writes for this serializer.
    pub fn content_encoding(self) -> &'static str {
        match self {
            Serializer::Json | Serializer::Yaml => "utf-8",
            Serializer::Msgpack | Serializer::Raw => "binary",
        }
    }

    /// Parses a (decompressed) body into a [`Value`] in kombu JSON's representation:
    /// non-finite floats and huge integers as literal markers, binary strings as kombu
    /// bytes markers. The error is a human-readable reason.
    pub fn deserialize(self, body: &[u8]) -> Result<Value, String> {
        match self {
            Serializer::Json => {
                let text =
                    std::str::from_utf8(body).map_err(|err| format!("body is not UTF-8: {err}"))?;
                kombu_json::from_kombu_json(text).map_err(|err| err.to_string())
            }
            Serializer::Msgpack => rmp_serde::from_slice::<KombuValue>(body)
                .map(|v| v.0)
                .map_err(|err| err.to_string()),
            Serializer::Yaml => {
                let text =
                    std::str::from_utf8(body).map_err(|err| format!("body is not UTF-8: {err}"))?;
                yaml::from_yaml(text)
            }
            Serializer::Raw => Ok(match std::str::from_utf8(body) {
                Ok(text) => Value::String(text.to_owned()),
                Err(_) => kombu_json::bytes_marker(body),
            }),
        }
    }
}

/// A body compression, named on the wire by the `compression` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// `application/x-gzip` (aliases `gzip`, `zlib`): zlib format, as `zlib.compress`.
    Zlib,
    /// `application/x-bz2` (aliases `bzip2`, `bzip`).
    Bzip2,
    /// `application/x-lzma` (aliases `lzma`, `xz`): an .xz container, as `lzma.compress`.
    Lzma,
    /// `application/x-brotli` (alias `brotli`).
    Brotli,
    /// `application/zstd` (aliases `zstd`, `zstandard`).
    Zstd,
}

impl Compression {
    /// Resolves a `compression` header value: the mime type kombu writes, or one of its
    /// aliases (case-insensitive). `None` for anything else.
    pub fn from_header(value: &str) -> Option<Compression> {
        match value.trim().to_ascii_lowercase().as_str() {
            "application/x-gzip" | "gzip" | "zlib" => Some(Compression::Zlib),
            "application/x-bz2" | "bzip2" | "bzip" => Some(Compression::Bzip2),
            "application/x-lzma" | "lzma" | "xz" => Some(Compression::Lzma),
            "application/x-brotli" | "brotli" => Some(Compression::Brotli),
            "application/zstd" | "zstd" | "zstandard" => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// The header value kombu writes: the mime type, not the alias.
    pub fn mime_type(self) -> &'static str {
        match self {
            Compression::Zlib => "application/x-gzip",
            Compression::Bzip2 => "application/x-bz2",
            Compression::Lzma => "application/x-lzma",
            Compression::Brotli => "application/x-brotli",
            Compression::Zstd => "application/zstd",
        }
    }

    /// Decompresses `input`, failing beyond [`MAX_DECOMPRESSED_LEN`] bytes.
    pub fn decompress(self, input: &[u8]) -> io::Result<Vec<u8>> {
        self.decompress_capped(input, MAX_DECOMPRESSED_LEN)
    }

    fn decompress_capped(self, input: &[u8], max: usize) -> io::Result<Vec<u8>> {
        let mut out = CappedWriter {
            buf: Vec::with_capacity(input.len().saturating_mul(4).min(1 << 20).min(max)),
            max,
        };
        match self {
            // Python writes zlib streams under this name; accept a real gzip file too.
            Compression::Zlib if input.starts_with(&[0x1f, 0x8b]) => {
                io::copy(&mut flate2::read::MultiGzDecoder::new(input), &mut out)?;
            }
            Compression::Zlib => {
                io::copy(&mut flate2::read::ZlibDecoder::new(input), &mut out)?;
            }
            Compression::Bzip2 => {
                io::copy(&mut bzip2::read::MultiBzDecoder::new(input), &mut out)?;
            }
            // Python's lzma.decompress detects the container; accept .xz and legacy .lzma.
            Compression::Lzma if input.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) => {
                lzma_rs::xz_decompress(&mut io::BufReader::new(input), &mut out)
                    .map_err(lzma_error)?;
            }
            Compression::Lzma => {
                lzma_rs::lzma_decompress(&mut io::BufReader::new(input), &mut out)
                    .map_err(lzma_error)?;
            }
            Compression::Brotli => {
                io::copy(&mut brotli::Decompressor::new(input, 4096), &mut out)?;
            }
            Compression::Zstd => {
                io::copy(&mut zstd::stream::read::Decoder::new(input)?, &mut out)?;
            }
        }
        Ok(out.buf)
    }

    /// Compresses `input` as the Python side would (used for outgoing messages and
    /// tests).
    pub fn compress(self, input: &[u8]) -> io::Result<Vec<u8>> {
        match self {
            Compression::Zlib => {
                let mut encoder =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
                encoder.write_all(input)?;
                encoder.finish()
            }
            Compression::Bzip2 => {
                let mut encoder =
                    bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
                encoder.write_all(input)?;
                encoder.finish()
            }
            Compression::Lzma => {
                let mut out = Vec::new();
                lzma_rs::xz_compress(&mut io::BufReader::new(input), &mut out)?;
                Ok(out)
            }
            Compression::Brotli => {
                let mut encoder = brotli::CompressorWriter::new(Vec::new(), 4096, 11, 22);
                encoder.write_all(input)?;
                encoder.flush()?;
                Ok(encoder.into_inner())
            }
            Compression::Zstd => zstd::stream::encode_all(input, 3),
        }
    }
}

fn lzma_error(err: lzma_rs::error::Error) -> io::Error {
    match err {
        lzma_rs::error::Error::IoError(err) => err,
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

/// A `Vec` writer that refuses to grow beyond `max` bytes.
struct CappedWriter {
    /// The output so far.
    buf: Vec<u8>,
    /// The most `buf` may hold.
    max: usize,
}

impl Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > self.max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("decompressed body exceeds {} bytes", self.max),
            ));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ALL: [Compression; 5] = [
        Compression::Zlib,
        Compression::Bzip2,
        Compression::Lzma,
        Compression::Brotli,
        Compression::Zstd,
    ];

    #[test]
    fn every_compression_round_trips() {
        let body = br#"[[2, 2], {}, {"callbacks": null}]"#.repeat(50);
        for compression in ALL {
            let packed = compression.compress(&body).expect("compress");
            let unpacked = compression.decompress(&packed).expect("decompress");
            assert_eq!(unpacked, body, "{compression:?}");
        }
    }

    #[test]
    fn every_header_value_and_alias_resolves() {
        let table = [
            ("application/x-gzip", Compression::Zlib),
            ("gzip", Compression::Zlib),
            ("zlib", Compression::Zlib),
            ("application/x-bz2", Compression::Bzip2),
            ("bzip2", Compression::Bzip2),
            ("bzip", Compression::Bzip2),
            ("application/x-lzma", Compression::Lzma),
            ("lzma", Compression::Lzma),
            ("xz", Compression::Lzma),
            ("application/x-brotli", Compression::Brotli),
            ("brotli", Compression::Brotli),
            ("application/zstd", Compression::Zstd),
            ("zstd", Compression::Zstd),
            ("zstandard", Compression::Zstd),
        ];
        for (header, expected) in table {
            assert_eq!(Compression::from_header(header), Some(expected), "{header}");
        }
        assert_eq!(Compression::from_header("application/x-snappy"), None);
        for compression in ALL {
            assert_eq!(
                Compression::from_header(compression.mime_type()),
                Some(compression)
            );
        }
    }

    #[test]
    fn real_gzip_files_are_accepted_under_the_gzip_name() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(b"[1]").expect("write");
        let gz = encoder.finish().expect("finish");
        assert_eq!(Compression::Zlib.decompress(&gz).expect("gunzip"), b"[1]");
    }

    #[test]
    fn garbage_fails_to_decompress_without_panicking() {
        for compression in ALL {
            assert!(compression.decompress(b"not compressed at all").is_err());
        }
    }

    #[test]
    fn decompression_bombs_are_capped() {
        let zeros = vec![0u8; 1 << 20];
        for compression in ALL {
            let packed = compression.compress(&zeros).expect("compress");
            assert!(compression.decompress_capped(&packed, 1 << 20).is_ok());
            let err = compression
                .decompress_capped(&packed, (1 << 20) - 1)
                .expect_err("over the cap");
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{compression:?}");
        }
    }

    #[test]
    fn content_types_classify() {
        assert_eq!(
            ContentType::parse("application/json; charset=utf-8"),
            ContentType::Accepted(Serializer::Json)
        );
        assert_eq!(
            ContentType::parse("Application/X-Msgpack"),
            ContentType::Accepted(Serializer::Msgpack)
        );
        assert_eq!(
            ContentType::parse("application/x-python-serialize"),
            ContentType::Pickle
        );
        assert_eq!(ContentType::parse("application/bson"), ContentType::Unknown);
    }

    #[test]
    fn msgpack_reads_bytes_nan_and_int_keys_as_kombu_json() {
        #[derive(serde::Serialize)]
        struct Body(
            Vec<rmpv_like::Item>,
            std::collections::BTreeMap<i32, f64>,
            Option<()>,
        );
        mod rmpv_like {
            #[derive(serde::Serialize)]
            #[serde(untagged)]
            pub enum Item {
                Int(i64),
                Bytes(#[serde(with = "serde_bytes_compat")] Vec<u8>),
            }
            mod serde_bytes_compat {
                pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
                    s.serialize_bytes(v)
                }
            }
        }
        let body = Body(
            vec![rmpv_like::Item::Int(1), rmpv_like::Item::Bytes(vec![0xff])],
            [(7, f64::NAN)].into_iter().collect(),
            None,
        );
        let packed = rmp_serde::to_vec(&body).expect("pack");
        let value = Serializer::Msgpack.deserialize(&packed).expect("unpack");
        assert_eq!(
            value,
            json!([
                [1, {"__type__": "base64", "__value__": "/w=="}],
                {"7": kombu_json::marker("NaN")},
                null
            ])
        );
    }

    #[test]
    fn yaml_binary_becomes_bytes_markers() {
        // yaml.safe_dump(((b"abc", b"\xff\x00", "!!binary x", {1, 2}), {"k": b"x" * 60}, None))
        let yaml = "- - !!binary |\n    YWJj\n  - !!binary |\n    /wA=\n  - '!!binary x'\n  - !!set\n    1: null\n    2: null\n- k: !!binary |\n    eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4eHh4\n    eHh4\n- null\n";
        let value = Serializer::Yaml.deserialize(yaml.as_bytes()).expect("yaml");
        assert_eq!(
            value,
            json!([
                [
                    {"__type__": "bytes", "__value__": "abc"},
                    {"__type__": "base64", "__value__": "/wA="},
                    "!!binary x",
                    {"1": null, "2": null}
                ],
                {"k": {"__type__": "bytes", "__value__": "x".repeat(60)}},
                null
            ])
        );
    }

    #[test]
    fn yaml_core_tags_keep_their_meaning() {
        let yaml = "[!!str 5, !!int 7, !!null null, !!bool true, !!float 1.5]";
        let value = Serializer::Yaml.deserialize(yaml.as_bytes()).expect("yaml");
        assert_eq!(value, json!(["5", 7, null, true, 1.5]));
    }

    #[test]
    fn yaml_with_its_own_directives_or_documents_still_parses() {
        for yaml in [
            "%YAML 1.1\n---\n- 1\n",
            "--- [1]\n",
            "# comment\n---\n[1]\n",
        ] {
            let value = Serializer::Yaml.deserialize(yaml.as_bytes()).expect(yaml);
            assert_eq!(value, json!([1]), "{yaml}");
        }
        let err = Serializer::Yaml
            .deserialize(b"- !!binary |\n    not base64!\n")
            .expect_err("not base64");
        assert!(err.contains("invalid !!binary value"), "{err}");
    }

    #[test]
    fn yaml_reads_safe_dump_output() {
        let yaml = "- - 2\n  - .inf\n- {x: 1}\n- null\n";
        let value = Serializer::Yaml.deserialize(yaml.as_bytes()).expect("yaml");
        assert_eq!(
            value,
            json!([[2, kombu_json::marker("Infinity")], {"x": 1}, null])
        );
    }
}
