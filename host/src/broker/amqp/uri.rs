//! Celery's `amqp://` broker URLs, read as kombu reads them (`kombu/utils/url.py`), into
//! the connection parameters lapin takes.

use lapin::uri::{AMQPAuthority, AMQPQueryString, AMQPScheme, AMQPUri, AMQPUserInfo};
use url::{Host, Url};

/// kombu's defaults for the parts a URL leaves out.
const DEFAULT_HOST: &str = "localhost";
const DEFAULT_USER: &str = "guest";
const DEFAULT_VHOST: &str = "/";

/// Reads `url` as kombu does:
///
/// * scheme `amqp` or `pyamqp` (port 5672), `amqps` or `pyamqps` (TLS, port 5671);
/// * user and password percent-decoded, `guest`/`guest` when absent;
/// * the virtual host is the path after its first `/`, percent-decoded: `amqp://h//` and
///   `amqp://h/%2F` are `/`, `amqp://h/prod` is `prod`, and no path (or `/` alone) is `/`;
/// * query options `heartbeat` (seconds, a float is rounded), `frame_max`, `channel_max`;
///   other options are ignored, as kombu passes them to transports that may not use them.
pub fn parse(url: &str) -> Result<AMQPUri, String> {
    let parsed = Url::parse(url).map_err(|e| e.to_string())?;
    let scheme = match parsed.scheme() {
        "amqp" | "pyamqp" => AMQPScheme::AMQP,
        "amqps" | "pyamqps" => AMQPScheme::AMQPS,
        other => {
            return Err(format!(
                "scheme {other}:// is not amqp://, amqps:// or pyamqp://"
            ));
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
    Ok(AMQPUri {
        authority: AMQPAuthority {
            userinfo: AMQPUserInfo { username, password },
            host,
            port: parsed.port().unwrap_or_else(|| scheme.default_port()),
        },
        scheme,
        vhost,
        query: query(&parsed)?,
    })
}

/// The query options lapin knows.
fn query(url: &Url) -> Result<AMQPQueryString, String> {
    let mut query = AMQPQueryString::default();
    for (key, value) in url.query_pairs() {
        let bad = |e: &dyn std::fmt::Display| format!("?{key}={value}: {e}");
        match key.as_ref() {
            "heartbeat" => {
                let seconds: f64 = value.parse().map_err(|e| bad(&e))?;
                if !(0.0..=f64::from(u16::MAX)).contains(&seconds) {
                    return Err(bad(&"not a number of seconds from 0 to 65535"));
                }
                // In range, checked above: the cast cannot truncate.
                query.heartbeat = Some(seconds.round() as u16);
            }
            "frame_max" => query.frame_max = Some(value.parse().map_err(|e| bad(&e))?),
            "channel_max" => query.channel_max = Some(value.parse().map_err(|e| bad(&e))?),
            _ => {}
        }
    }
    Ok(query)
}

fn decode(text: &str) -> Result<String, String> {
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map(|decoded| decoded.into_owned())
        .map_err(|e| format!("{text:?} is not UTF-8 once percent-decoded: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vhost(url: &str) -> String {
        parse(url).expect("a valid URL").vhost
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
        let uri = parse("amqp://u%40x:p%3Aw@127.0.0.1:5673//?heartbeat=10.4").expect("valid");
        assert_eq!(uri.authority.host, "127.0.0.1", "an IP host is kept");
        assert_eq!(uri.authority.port, 5673);
        assert_eq!(uri.authority.userinfo.username, "u@x");
        assert_eq!(uri.authority.userinfo.password, "p:w");
        assert_eq!(uri.query.heartbeat, Some(10));

        let uri = parse("pyamqp://rabbit.example").expect("valid");
        assert_eq!(uri.scheme, AMQPScheme::AMQP);
        assert_eq!(uri.authority.userinfo.username, "guest");
        assert_eq!(uri.authority.userinfo.password, "guest");
        assert_eq!(uri.authority.port, 5672);
        assert_eq!(uri.query.heartbeat, None);

        let uri = parse("amqps://[::1]/").expect("valid");
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
            "not a url",
        ] {
            assert!(parse(url).is_err(), "{url}");
        }
    }
}
