//! Broker and result-backend URLs: what every transport needs from them, in one place.

mod ssl;

pub use self::ssl::{CertReqs, ClientIdentity, SslOptions, SslOptionsError};

/// `url` with the password (if any) replaced by `***`, for error messages and logs.
pub fn redact_password(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
    if !userinfo.contains(':') && !userinfo.is_empty() {
        // `redis://password@host` is read as a password by some clients: hide it too.
        return format!("{}***{}", &url[..scheme_end], &rest[at..]);
    }
    format!("{}{user}:***{}", &url[..scheme_end], &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_hidden_and_nothing_else_changes() {
        assert_eq!(
            redact_password("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
        assert_eq!(
            redact_password("redis://:s3cret@h:1/2"),
            "redis://:***@h:1/2"
        );
        assert_eq!(redact_password("redis://u:s3cret@h/2"), "redis://u:***@h/2");
        assert_eq!(redact_password("redis://s3cret@h/2"), "redis://***@h/2");
        assert_eq!(
            redact_password("amqp://guest:guest@h:5672//"),
            "amqp://guest:***@h:5672//"
        );
        assert_eq!(redact_password("not a url"), "not a url");
    }
}
