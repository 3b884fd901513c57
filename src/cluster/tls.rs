//! `rediss://`: where a connection finds its certificates.
//!
//! The URL says whether a connection is encrypted; this says whom it
//! trusts and who it is. Without a CA file a `rediss://` connection trusts
//! the system's roots (`/etc/ssl/certs`, or `SSL_CERT_FILE`/`SSL_CERT_DIR`).
//! The TLS backend is the `cluster-tls` feature; without it a `rediss://`
//! URL is refused with an error naming the feature.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The CA file a `rediss://` connection trusts.
pub const TLS_CA_ENV: &str = "MULTIPROC_REDIS_TLS_CA";
/// The client certificate a `rediss://` connection shows (mutual TLS).
pub const TLS_CERT_ENV: &str = "MULTIPROC_REDIS_TLS_CERT";
/// The client certificate's private key.
pub const TLS_KEY_ENV: &str = "MULTIPROC_REDIS_TLS_KEY";

/// Certificates for `rediss://` URLs (PEM files): the CA to trust and,
/// when Redis asks for one (`tls-auth-clients yes`, its default), the
/// client's own certificate and key. They apply to `rediss://` URLs only.
///
/// Submitters, workers and `multiproc cluster` read them from
/// `MULTIPROC_REDIS_TLS_CA`, `MULTIPROC_REDIS_TLS_CERT` and
/// `MULTIPROC_REDIS_TLS_KEY` unless given in code
/// ([`PoolBuilder::redis_tls`](crate::PoolBuilder::redis_tls),
/// [`Worker::tls`](crate::cluster::Worker::tls)); a pool's local workers
/// use the pool's.
///
/// ```
/// use multiproc::cluster::Tls;
///
/// let tls = Tls::default().ca("/etc/redis/ca.pem").client("/etc/redis/me.pem", "/etc/redis/me.key");
/// assert!(tls.ca_file.is_some() && tls.key_file.is_some());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tls {
    /// The CA certificates to trust instead of the system's.
    pub ca_file: Option<PathBuf>,
    /// The client's certificate chain.
    pub cert_file: Option<PathBuf>,
    /// The client's private key.
    pub key_file: Option<PathBuf>,
}

impl Tls {
    /// What the environment says (see above); empty where it says nothing.
    pub fn from_env() -> Tls {
        let path = |var| std::env::var_os(var).filter(|v| !v.is_empty()).map(PathBuf::from);
        Tls { ca_file: path(TLS_CA_ENV), cert_file: path(TLS_CERT_ENV), key_file: path(TLS_KEY_ENV) }
    }

    /// Trusts the CA certificates in `file`.
    pub fn ca(mut self, file: impl Into<PathBuf>) -> Tls {
        self.ca_file = Some(file.into());
        self
    }

    /// Shows the certificate in `cert` with its key in `key`.
    pub fn client(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Tls {
        self.cert_file = Some(cert.into());
        self.key_file = Some(key.into());
        self
    }
}

fn is_tls(url: &str) -> bool {
    url.get(..9).is_some_and(|s| s.eq_ignore_ascii_case("rediss://"))
}

/// A client for `url`, with `tls`'s certificates when it is `rediss://`.
#[cfg(feature = "cluster-tls")]
pub(crate) fn client(url: &str, tls: &Tls) -> redis::RedisResult<redis::Client> {
    if !is_tls(url) || *tls == Tls::default() {
        return redis::Client::open(url);
    }
    let read = |what: &'static str, path: &PathBuf| {
        std::fs::read(path).map_err(|e| {
            redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, what, format!("{}: {e}", path.display())))
        })
    };
    let client_tls = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read("cannot read the TLS client certificate", cert)?,
            client_key: read("cannot read the TLS client key", key)?,
        }),
        (None, None) => None,
        _ => {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "a TLS client certificate needs its key and a key its certificate",
            )));
        }
    };
    let root_cert = tls.ca_file.as_ref().map(|ca| read("cannot read the TLS CA file", ca)).transpose()?;
    redis::Client::build_with_tls(url, redis::TlsCertificates { client_tls, root_cert })
}

/// A client for `url`; `rediss://` needs the `cluster-tls` feature.
#[cfg(not(feature = "cluster-tls"))]
pub(crate) fn client(url: &str, _tls: &Tls) -> redis::RedisResult<redis::Client> {
    if is_tls(url) {
        return Err(redis::RedisError::from((
            redis::ErrorKind::InvalidClientConfig,
            "rediss:// (TLS) URLs need multiproc's feature `cluster-tls`",
        )));
    }
    redis::Client::open(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rediss_urls_are_tls() {
        assert!(is_tls("rediss://h:1/") && is_tls("REDISS://h/"));
        assert!(!is_tls("redis://h/") && !is_tls("redis+unix:///s") && !is_tls("redis"));
    }

    #[test]
    fn half_a_client_identity_or_a_missing_file_is_an_error_naming_it() {
        let half = Tls::default().ca("/nonexistent/ca.pem");
        let err = client("rediss://127.0.0.1:1/", &Tls { cert_file: Some("c".into()), ..half.clone() }).unwrap_err();
        #[cfg(feature = "cluster-tls")]
        assert!(err.to_string().contains("needs its key"), "{err}");
        #[cfg(feature = "cluster-tls")]
        {
            let err = client("rediss://127.0.0.1:1/", &half).unwrap_err();
            assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        }
        #[cfg(not(feature = "cluster-tls"))]
        assert!(err.to_string().contains("cluster-tls"), "{err}");
        // A plain URL ignores them.
        assert!(client("redis://127.0.0.1:1/", &half).is_ok());
    }
}
