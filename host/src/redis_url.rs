//! Redis URLs as Celery users write them, turned into clients: `redis://` and `rediss://`
//! (TLS) with Celery's `ssl_*` query options. Shared by the Redis broker and the Redis
//! result backend, so both accept the same URLs.
//!
//! `rediss://host:port/db?ssl_cert_reqs=required&ssl_ca_certs=/ca.pem` checks the server
//! against that CA (the system's roots without `ssl_ca_certs`); `ssl_certfile` and
//! `ssl_keyfile` add a client certificate; `ssl_cert_reqs=none` (or `CERT_NONE`) skips
//! verification, as in Celery.

use std::sync::Once;

use redis::{Client, ClientTlsConfig, TlsCertificates};

use crate::url::{SslOptions, SslOptionsError};

/// Why a Redis URL cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedisUrlError {
    /// The URL does not parse, or the Redis client refuses it.
    #[error("{0}")]
    Invalid(String),
    /// An `ssl_*` option is wrong, or a file it names cannot be used.
    #[error(transparent)]
    Ssl(#[from] SslOptionsError),
}

/// The Redis client for `url`.
pub fn client(url: &str) -> Result<Client, RedisUrlError> {
    let mut parsed = url::Url::parse(url).map_err(|e| RedisUrlError::Invalid(e.to_string()))?;
    let mut ssl = SslOptions::default();
    let mut kept = Vec::new();
    for (name, value) in parsed.query_pairs() {
        if !ssl.take(&name, &value)? {
            kept.push((name.into_owned(), value.into_owned()));
        }
    }
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    if parsed.scheme() != "rediss" {
        return Client::open(parsed.as_str()).map_err(|e| RedisUrlError::Invalid(e.to_string()));
    }
    install_crypto_provider();
    if !ssl.verifies() {
        parsed.set_fragment(Some("insecure"));
    }
    let opened = match certificates(&ssl)? {
        Some(certificates) => Client::build_with_tls(parsed.as_str(), certificates),
        None => Client::open(parsed.as_str()),
    };
    opened.map_err(|e| RedisUrlError::Invalid(e.to_string()))
}

/// The certificates to use instead of the defaults, if any option names one.
fn certificates(ssl: &SslOptions) -> Result<Option<TlsCertificates>, SslOptionsError> {
    let root_cert = ssl.read_ca_certs()?;
    let client_tls = ssl.read_client_identity()?.map(|identity| ClientTlsConfig {
        client_cert: identity.cert,
        client_key: identity.key,
    });
    if root_cert.is_none() && client_tls.is_none() {
        return Ok(None);
    }
    Ok(Some(TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// rustls needs one process-wide crypto provider; ring is the one this build carries.
fn install_crypto_provider() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // Err means another part of the process installed one first: that one is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_urls_open_with_their_database_and_password() {
        let client = client("redis://:pw@127.0.0.1:6390/3").expect("opens");
        let info = client.get_connection_info();
        assert_eq!(info.redis_settings().db(), 3);
        assert_eq!(info.redis_settings().password(), Some("pw"));
    }

    #[test]
    fn celery_ssl_options_are_taken_out_of_the_url() {
        let client = client("rediss://127.0.0.1:6390/1?ssl_cert_reqs=CERT_NONE").expect("opens");
        let addr = client.get_connection_info().addr().to_string();
        assert!(addr.contains("127.0.0.1:6390"), "{addr}");
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let err = client("rediss://h/0?ssl_cert_reqs=required&ssl_ca_certs=/no/such/ca.pem")
            .expect_err("the file is missing");
        let text = err.to_string();
        assert!(text.contains("ssl_ca_certs /no/such/ca.pem"), "{text}");
    }

    #[test]
    fn a_certificate_without_its_key_is_refused() {
        let err = client("rediss://h/0?ssl_certfile=/c.pem").expect_err("no key");
        assert!(err.to_string().contains("go together"), "{err}");
    }
}
