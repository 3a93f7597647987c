//! Celery's `amqp://` broker URLs, read as kombu reads them (`kombu/utils/url.py`), into
//! the connection parameters lapin takes, with the TLS settings of an `amqps://` URL.

use std::time::Duration;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use url::{Host, Url};

use crate::url::{CertReqs, ClientIdentity, SslOptions, SslOptionsError};

/// kombu's defaults for the parts a URL leaves out.
const DEFAULT_HOST: &str = "localhost";
const DEFAULT_USER: &str = "guest";
const DEFAULT_VHOST: &str = "/";
/// Celery's `broker_connection_timeout`.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(4);
/// The largest frame proposed to the server when the URL does not say. lapin gives every
/// connection a receive and a send ring buffer of 32 frames each: offered no size, it
/// grows them to the server's (RabbitMQ's default 128 KiB) by writing zeros, so a worker's
/// three connections held ~25 MiB from the start, and traffic walks through all of a ring
/// anyway. A task message rarely needs more than one 32 KiB frame; a larger body is sent in
/// several, as AMQP provides.
const DEFAULT_FRAME_MAX: u32 = 32 * 1024;

/// A Celery AMQP URL, read: where to connect, and how to set up TLS for `amqps://`.
#[derive(Clone)]
pub struct AmqpUrl {
    /// The server, credentials, vhost and the query options lapin reads.
    pub uri: AMQPUri,
    /// `ssl_ca_certs`: CA certificates (PEM) trusted beside the system's roots.
    pub ca_certs: Option<String>,
    /// `ssl_certfile` and `ssl_keyfile`: the client certificate offered to the server.
    pub identity: Option<ClientIdentity>,
    /// `connect_timeout`: how long opening a connection (TCP, TLS and the AMQP handshake)
    /// may take before the attempt counts as failed.
    pub connect_timeout: Duration,
}

impl AmqpUrl {
    /// lapin's TLS settings for this URL (unused on plain `amqp://`).
    pub fn tls_config(&self) -> OwnedTLSConfig {
        OwnedTLSConfig {
            identity: self.identity.clone().map(|identity| OwnedIdentity::PKCS8 {
                pem: identity.cert,
                key: identity.key,
            }),
            cert_chain: self.ca_certs.clone(),
        }
    }
}

/// Leaves out the password (and the key, see [`ClientIdentity`]).
impl std::fmt::Debug for AmqpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let authority = &self.uri.authority;
        f.debug_struct("AmqpUrl")
            .field("scheme", &self.uri.scheme)
            .field("username", &authority.userinfo.username)
            .field("host", &authority.host)
            .field("port", &authority.port)
            .field("vhost", &self.uri.vhost)
            .field("ca_certs", &self.ca_certs.as_ref().map(String::len))
            .field("identity", &self.identity)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

/// Why an AMQP URL cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UriError {
    /// The URL does not parse, or a part of it is not what kombu accepts.
    #[error("{0}")]
    Invalid(String),
    /// An `ssl_*` option is wrong, or a file it names cannot be used.
    #[error(transparent)]
    Ssl(#[from] SslOptionsError),
    /// An `ssl_*` option on a URL that does not use TLS.
    #[error(
        "?{option}= needs amqps://: this URL connects in plain text, so there is no \
         certificate to check or present"
    )]
    SslWithoutTls {
        /// The option given.
        option: String,
    },
    /// `ssl_cert_reqs=none`, which cannot be honoured.
    #[error(
        "?ssl_cert_reqs={value}: the AMQP connector (lapin on rustls) always verifies the \
         server's certificate and cannot turn that off; give the server's CA with \
         ssl_ca_certs instead"
    )]
    CertNone {
        /// The value given.
        value: String,
    },
}

/// Reads `url` as kombu does:
///
/// * scheme `amqp` or `pyamqp` (port 5672), `amqps` or `pyamqps` (TLS, port 5671);
/// * user and password percent-decoded, `guest`/`guest` when absent;
/// * the virtual host is the path after its first `/`, percent-decoded: `amqp://h//` and
///   `amqp://h/%2F` are `/`, `amqp://h/prod` is `prod`, and no path (or `/` alone) is `/`;
/// * query options `heartbeat` (seconds, a float is rounded), `frame_max`, `channel_max`,
///   and `connect_timeout` (seconds, a float; default 4, Celery's
///   `broker_connection_timeout`); `frame_max` defaults to 32 KiB, not the server's (RabbitMQ: 128 KiB);
/// * on `amqps://` only, Celery's `broker_use_ssl` keys as query options:
///   `ssl_ca_certs`, `ssl_certfile` with `ssl_keyfile`, `ssl_cert_reqs` (`required` or
///   `optional`; `none` is refused, see [`UriError::CertNone`]). The files are read and
///   checked here, so a bad one is named before any connection is tried;
/// * other options are ignored, as kombu passes them to transports that may not use them.
pub fn parse(url: &str) -> Result<AmqpUrl, UriError> {
    let parsed = Url::parse(url).map_err(|e| UriError::Invalid(e.to_string()))?;
    let scheme = match parsed.scheme() {
        "amqp" | "pyamqp" => AMQPScheme::AMQP,
        "amqps" | "pyamqps" => AMQPScheme::AMQPS,
        other => {
            return Err(UriError::Invalid(format!(
                "scheme {other}:// is not amqp://, amqps:// or pyamqp://"
            )));
        }
    };
    let host = match parsed.host() {
        Some(Host::Domain(name)) if !name.is_empty() => decode(name)?,
        Some(Host::Domain(_)) | None => DEFAULT_HOST.to_owned(),
        Some(Host::Ipv4(address)) => address.to_string(),
        Some(Host::Ipv6(address)) => address.to_string(),
    };
    let username = match parsed.username() {
        "" => DEFAULT_USER.to_owned(),
        user => decode(user)?,
    };
    let password = parsed
        .password()
        .map_or(Ok(DEFAULT_USER.to_owned()), decode)?;
    let vhost = match parsed.path().strip_prefix('/').unwrap_or(parsed.path()) {
        "" => DEFAULT_VHOST.to_owned(),
        path => decode(path)?,
    };
    let Query {
        lapin: query,
        ssl,
        connect_timeout,
    } = query(&parsed, &scheme)?;
    Ok(AmqpUrl {
        uri: AMQPUri {
            authority: AMQPAuthority {
                userinfo: AMQPUserInfo { username, password },
                host,
                port: parsed.port().unwrap_or_else(|| scheme.default_port()),
            },
            scheme,
            vhost,
            query,
        },
        // PEM is ASCII and the check in `read_ca_certs` found a certificate in it; lossy
        // only touches bytes outside the PEM sections, which the reader skips.
        ca_certs: ssl
            .read_ca_certs()?
            .map(|pem| String::from_utf8_lossy(&pem).into_owned()),
        identity: ssl.read_client_identity()?,
        connect_timeout,
    })
}

/// The query options of a URL.
struct Query {
    /// The ones lapin knows.
    lapin: AMQPQueryString,
    /// Celery's `ssl_*` options (only on TLS URLs).
    ssl: SslOptions,
    /// `connect_timeout`.
    connect_timeout: Duration,
}

fn query(url: &Url, scheme: &AMQPScheme) -> Result<Query, UriError> {
    let mut query = AMQPQueryString::default();
    let mut ssl = SslOptions::default();
    let mut connect_timeout = DEFAULT_CONNECT_TIMEOUT;
    for (key, value) in url.query_pairs() {
        let bad = |e: &dyn std::fmt::Display| UriError::Invalid(format!("?{key}={value}: {e}"));
        let seconds = |from: f64| match value.parse::<f64>() {
            Ok(seconds) if (from..=f64::from(u16::MAX)).contains(&seconds) => Ok(seconds),
            Ok(_) => Err(bad(&format!(
                "not a number of seconds from {from} to 65535"
            ))),
            Err(e) => Err(bad(&e)),
        };
        match key.as_ref() {
            // In range, checked by `seconds`: the cast cannot truncate.
            "heartbeat" => query.heartbeat = Some(seconds(0.0)?.round() as u16),
            "connect_timeout" => connect_timeout = Duration::from_secs_f64(seconds(0.001)?),
            "frame_max" => query.frame_max = Some(value.parse().map_err(|e| bad(&e))?),
            "channel_max" => query.channel_max = Some(value.parse().map_err(|e| bad(&e))?),
            name => {
                if !ssl.take(name, &value)? {
                    continue;
                }
                if *scheme != AMQPScheme::AMQPS {
                    return Err(UriError::SslWithoutTls {
                        option: name.to_owned(),
                    });
                }
                if ssl.cert_reqs == CertReqs::None {
                    return Err(UriError::CertNone {
                        value: value.into_owned(),
                    });
                }
            }
        }
    }
    query.frame_max.get_or_insert(DEFAULT_FRAME_MAX);
    Ok(Query {
        lapin: query,
        ssl,
        connect_timeout,
    })
}

fn decode(text: &str) -> Result<String, UriError> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|e| UriError::Invalid(format!("{text:?} is not UTF-8 once percent-decoded: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// PEM sections are only decoded here; rustls checks what they hold at the handshake.
    const CERT: &str = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";

    fn lapin_uri(url: &str) -> AMQPUri {
        parse(url).expect("a valid URL").uri
    }

    fn vhost(url: &str) -> String {
        lapin_uri(url).vhost
    }

    fn refusal(url: &str) -> UriError {
        match parse(url) {
            Ok(parsed) => panic!("{url} was accepted: {parsed:?}"),
            Err(err) => err,
        }
    }

    #[test]
    fn vhost_follows_kombu() {
        assert_eq!(vhost("amqp://guest:guest@127.0.0.1:5672//"), "/");
        assert_eq!(vhost("amqp://h/%2F"), "/");
        assert_eq!(vhost("amqp://h/"), "/");
        assert_eq!(vhost("amqp://h"), "/");
        assert_eq!(vhost("amqp://h/prod"), "prod");
        assert_eq!(vhost("amqp://h/a%2Fb"), "a/b");
    }

    #[test]
    fn parts_and_defaults() {
        let uri = lapin_uri("amqp://u%40x:p%3Aw@127.0.0.1:5673//?heartbeat=10.4");
        assert_eq!(uri.authority.host, "127.0.0.1", "an IP host is kept");
        assert_eq!(uri.authority.port, 5673);
        assert_eq!(uri.authority.userinfo.username, "u@x");
        assert_eq!(uri.authority.userinfo.password, "p:w");
        assert_eq!(uri.query.heartbeat, Some(10));

        let parsed = parse("amqp://h//?connect_timeout=0.25").expect("valid");
        assert_eq!(parsed.connect_timeout, Duration::from_millis(250));
        let parsed = parse("amqp://h//").expect("valid");
        assert_eq!(
            parsed.connect_timeout,
            Duration::from_secs(4),
            "Celery's default"
        );

        let uri = lapin_uri("pyamqp://rabbit.example");
        assert_eq!(uri.scheme, AMQPScheme::AMQP);
        assert_eq!(uri.authority.userinfo.username, "guest");
        assert_eq!(uri.authority.userinfo.password, "guest");
        assert_eq!(uri.authority.port, 5672);
        assert_eq!(uri.query.heartbeat, None);
        assert_eq!(uri.query.frame_max, Some(DEFAULT_FRAME_MAX));
        assert_eq!(
            lapin_uri("amqp://h//?frame_max=131072").query.frame_max,
            Some(131072)
        );

        let uri = lapin_uri("amqps://[::1]/");
        assert_eq!(uri.scheme, AMQPScheme::AMQPS);
        assert_eq!(uri.authority.host, "::1");
        assert_eq!(uri.authority.port, 5671);
    }

    #[test]
    fn bad_urls_are_refused_with_a_reason() {
        for url in [
            "redis://h/0",
            "amqp://h/?heartbeat=soon",
            "amqp://h/?heartbeat=-1",
            "amqp://h/?connect_timeout=0",
            "amqp://h/?connect_timeout=later",
            "not a url",
        ] {
            assert!(parse(url).is_err(), "{url}");
        }
    }

    #[test]
    fn amqps_without_options_uses_the_system_roots_only() {
        let parsed = parse("amqps://h//?ssl_cert_reqs=required").expect("valid");
        assert_eq!(parsed.tls_config(), OwnedTLSConfig::default());
    }

    #[test]
    fn amqps_reads_the_ca_and_the_client_certificate() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let ca = dir.path().join("ca.pem");
        let cert = dir.path().join("client.pem");
        let key = dir.path().join("client-key.pem");
        std::fs::write(&ca, CERT).expect("written");
        std::fs::write(&cert, CERT).expect("written");
        std::fs::write(&key, KEY).expect("written");
        let url = format!(
            "pyamqps://u:secret@h:5671//?ssl_cert_reqs=CERT_REQUIRED&ssl_ca_certs={}\
             &ssl_certfile={}&ssl_keyfile={}&heartbeat=5",
            ca.display(),
            cert.display(),
            key.display()
        );
        let parsed = parse(&url).expect("valid");
        assert_eq!(parsed.uri.scheme, AMQPScheme::AMQPS);
        assert_eq!(
            parsed.uri.query.heartbeat,
            Some(5),
            "other options still read"
        );
        let config = parsed.tls_config();
        assert_eq!(config.cert_chain.as_deref(), Some(CERT));
        assert_eq!(
            config.identity,
            Some(OwnedIdentity::PKCS8 {
                pem: CERT.into(),
                key: KEY.into()
            })
        );
        let shown = format!("{parsed:?}");
        assert!(
            !shown.contains("secret") && !shown.contains("PRIVATE"),
            "{shown}"
        );
    }

    #[test]
    fn tls_options_are_refused_with_their_reason() {
        let err = refusal("amqp://h//?ssl_ca_certs=/ca.pem");
        assert!(
            matches!(&err, UriError::SslWithoutTls { option } if option == "ssl_ca_certs"),
            "{err}"
        );
        assert!(err.to_string().contains("needs amqps://"), "{err}");

        for value in ["none", "CERT_NONE"] {
            let err = refusal(&format!("amqps://h//?ssl_cert_reqs={value}"));
            assert!(matches!(err, UriError::CertNone { .. }), "{err}");
            assert!(err.to_string().contains("cannot turn that off"), "{err}");
        }

        let err = refusal("amqps://h//?ssl_ca_certs=/no/such/ca.pem");
        assert!(
            err.to_string()
                .starts_with("cannot read ssl_ca_certs /no/such/ca.pem"),
            "{err}"
        );
        let err = refusal("amqps://h//?ssl_keyfile=/k.pem");
        assert!(
            matches!(err, UriError::Ssl(SslOptionsError::Unpaired)),
            "{err}"
        );
        let err = refusal("amqps://h//?ssl_cert_reqs=sometimes");
        assert!(
            matches!(err, UriError::Ssl(SslOptionsError::CertReqs(_))),
            "{err}"
        );
    }
}
