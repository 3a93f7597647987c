//! Celery's `ssl_*` query options on TLS URLs (`rediss://`, `amqps://`): the keys of
//! `broker_use_ssl` (`cert_reqs`, `ca_certs`, `certfile`, `keyfile`) with an `ssl_` prefix,
//! and the certificate and key files they name, read and checked once so a bad file is
//! named before any connection is tried.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Celery's `ssl_*` options of one URL, as given (no file read yet).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SslOptions {
    /// `ssl_cert_reqs`. Default [`CertReqs::Required`].
    pub cert_reqs: CertReqs,
    /// `ssl_ca_certs`: a PEM file of CA certificates to trust beside the system's roots.
    pub ca_certs: Option<String>,
    /// `ssl_certfile`: the client certificate (PEM), sent when the server asks for one.
    pub certfile: Option<String>,
    /// `ssl_keyfile`: the client certificate's private key (PEM).
    pub keyfile: Option<String>,
}

/// Celery's `ssl_cert_reqs`: whether the server's certificate is checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CertReqs {
    /// `required` or `CERT_REQUIRED`: checked (the default).
    #[default]
    Required,
    /// `optional` or `CERT_OPTIONAL`: for a client, Python checks the server's certificate
    /// as with `required`, and so do we.
    Optional,
    /// `none` or `CERT_NONE`: not checked at all.
    None,
}

/// A client certificate and its key, PEM. Its `Debug` never shows the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The certificate chain, PEM.
    pub cert: Vec<u8>,
    /// The private key, PEM.
    pub key: Vec<u8>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert", &format_args!("{} bytes", self.cert.len()))
            .field("key", &"***")
            .finish()
    }
}

/// Why the `ssl_*` options of a URL cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SslOptionsError {
    /// `ssl_cert_reqs` has a value Celery does not know.
    #[error(
        "ssl_cert_reqs={0}: not required, optional or none (CERT_REQUIRED, CERT_OPTIONAL, CERT_NONE)"
    )]
    CertReqs(String),
    /// Only one of `ssl_certfile` and `ssl_keyfile` is given.
    #[error("ssl_certfile and ssl_keyfile go together")]
    Unpaired,
    /// A file named by an option cannot be read.
    #[error("cannot read {option} {path}: {source}")]
    File {
        /// The query option naming it.
        option: &'static str,
        /// The path given.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A file named by an option holds no PEM item of the kind it should.
    #[error("{option} {path} holds no PEM {expected}")]
    NotPem {
        /// The query option naming it.
        option: &'static str,
        /// The path given.
        path: String,
        /// `certificate` or `private key`.
        expected: &'static str,
    },
}

impl SslOptions {
    /// Records the query option `name=value` if it is one of Celery's `ssl_*` options;
    /// `Ok(false)` for any other name.
    pub fn take(&mut self, name: &str, value: &str) -> Result<bool, SslOptionsError> {
        match name {
            "ssl_cert_reqs" => self.cert_reqs = CertReqs::parse(value)?,
            "ssl_ca_certs" => self.ca_certs = Some(value.to_owned()),
            "ssl_certfile" => self.certfile = Some(value.to_owned()),
            "ssl_keyfile" => self.keyfile = Some(value.to_owned()),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Whether the server's certificate is to be checked.
    pub fn verifies(&self) -> bool {
        self.cert_reqs != CertReqs::None
    }

    /// The CA certificates of `ssl_ca_certs` (PEM, at least one certificate), if given.
    pub fn read_ca_certs(&self) -> Result<Option<Vec<u8>>, SslOptionsError> {
        self.ca_certs
            .as_deref()
            .map(|path| read_certificates("ssl_ca_certs", path))
            .transpose()
    }

    /// The client certificate and key of `ssl_certfile` and `ssl_keyfile`, if given: both
    /// or neither.
    pub fn read_client_identity(&self) -> Result<Option<ClientIdentity>, SslOptionsError> {
        match (&self.certfile, &self.keyfile) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Ok(Some(ClientIdentity {
                cert: read_certificates("ssl_certfile", cert)?,
                key: read_key("ssl_keyfile", key)?,
            })),
            _ => Err(SslOptionsError::Unpaired),
        }
    }
}

impl CertReqs {
    fn parse(value: &str) -> Result<CertReqs, SslOptionsError> {
        match value.to_ascii_lowercase().as_str() {
            "required" | "cert_required" => Ok(CertReqs::Required),
            "optional" | "cert_optional" => Ok(CertReqs::Optional),
            "none" | "cert_none" => Ok(CertReqs::None),
            _ => Err(SslOptionsError::CertReqs(value.to_owned())),
        }
    }
}

/// The file at `path`, which must hold at least one PEM certificate.
fn read_certificates(option: &'static str, path: &str) -> Result<Vec<u8>, SslOptionsError> {
    let pem = read(option, path)?;
    // A file with no certificate would be taken as an empty list of roots and fail later,
    // at the handshake, with a less helpful "unknown issuer".
    match CertificateDer::pem_slice_iter(&pem).next() {
        Some(Ok(_)) => Ok(pem),
        _ => Err(not_pem(option, path, "certificate")),
    }
}

/// The file at `path`, which must hold a PEM private key. The parse error is not passed
/// on: it may quote part of the key.
fn read_key(option: &'static str, path: &str) -> Result<Vec<u8>, SslOptionsError> {
    let pem = read(option, path)?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(_) => Ok(pem),
        Err(_) => Err(not_pem(option, path, "private key")),
    }
}

fn not_pem(option: &'static str, path: &str, expected: &'static str) -> SslOptionsError {
    SslOptionsError::NotPem {
        option,
        path: path.to_owned(),
        expected,
    }
}

fn read(option: &'static str, path: &str) -> Result<Vec<u8>, SslOptionsError> {
    std::fs::read(path).map_err(|source| SslOptionsError::File {
        option,
        path: path.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssl_options(pairs: &[(&str, &str)]) -> Result<SslOptions, SslOptionsError> {
        let mut options = SslOptions::default();
        for (name, value) in pairs {
            assert!(options.take(name, value)?, "{name} is an ssl option");
        }
        Ok(options)
    }

    #[test]
    fn cert_reqs_takes_celery_names_in_any_case() {
        for (value, expected) in [
            ("required", CertReqs::Required),
            ("CERT_REQUIRED", CertReqs::Required),
            ("optional", CertReqs::Optional),
            ("CERT_OPTIONAL", CertReqs::Optional),
            ("none", CertReqs::None),
            ("CERT_NONE", CertReqs::None),
        ] {
            let parsed = ssl_options(&[("ssl_cert_reqs", value)]).expect("a known value");
            assert_eq!(parsed.cert_reqs, expected, "{value}");
        }
        let err = ssl_options(&[("ssl_cert_reqs", "maybe")]).expect_err("unknown");
        assert!(err.to_string().contains("ssl_cert_reqs=maybe"), "{err}");
    }

    #[test]
    fn other_options_are_left_alone() {
        let mut options = SslOptions::default();
        assert!(!options.take("heartbeat", "10").expect("not ours"));
        assert_eq!(options, SslOptions::default());
        assert!(options.verifies());
    }

    #[test]
    fn a_certificate_without_its_key_is_refused() {
        let options = ssl_options(&[("ssl_certfile", "/c.pem")]).expect("parses");
        let err = options.read_client_identity().expect_err("no key");
        assert!(matches!(err, SslOptionsError::Unpaired), "{err}");
    }

    #[test]
    fn missing_and_non_pem_files_are_named() {
        let options = ssl_options(&[("ssl_ca_certs", "/no/such/ca.pem")]).expect("parses");
        let err = options.read_ca_certs().expect_err("missing");
        assert!(
            err.to_string().contains("ssl_ca_certs /no/such/ca.pem"),
            "{err}"
        );

        let dir = tempfile::tempdir().expect("a temp dir");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").expect("written");
        let junk = junk.to_str().expect("a UTF-8 temp path");
        let options = ssl_options(&[
            ("ssl_ca_certs", junk),
            ("ssl_certfile", junk),
            ("ssl_keyfile", junk),
        ])
        .expect("parses");
        let err = options.read_ca_certs().expect_err("no certificate");
        assert_eq!(
            err.to_string(),
            format!("ssl_ca_certs {junk} holds no PEM certificate")
        );
        let err = options.read_client_identity().expect_err("no certificate");
        assert_eq!(
            err.to_string(),
            format!("ssl_certfile {junk} holds no PEM certificate")
        );
    }

    #[test]
    fn identity_debug_hides_the_key() {
        let identity = ClientIdentity {
            cert: b"cert".to_vec(),
            key: b"SECRET".to_vec(),
        };
        let shown = format!("{identity:?}");
        assert!(
            !shown.contains("SECRET") && !shown.contains("83, 69"),
            "{shown}"
        );
    }
}
