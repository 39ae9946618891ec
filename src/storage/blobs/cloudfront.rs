//! CloudFront signed URLs with a canned policy, which the AWS SDK does not
//! provide: the policy `{"Statement":[{"Resource":URL,"Condition":
//! {"DateLessThan":{"AWS:EpochTime":EXPIRES}}}]}` signed with RSA-SHA1
//! (PKCS#1 v1.5), in CloudFront's URL-safe base64 (`+`→`-`, `=`→`_`, `/`→`~`),
//! appended as `Expires`, `Signature` and `Key-Pair-Id`.
//!
//! The object's `Content-Disposition` is the one stored with it at upload,
//! which CloudFront passes on from the bucket: no query-string override
//! (S3's `response-content-disposition`) is needed, so the distribution can
//! keep query strings out of its cache key and origin requests.

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer};
use sha1::Sha1;

use super::{BlobError, PresignedUrl};
use crate::config::{CdnConfig, PrivateKeySource};

/// Signs download URLs under one distribution with one key.
pub struct CloudFrontSigner {
    base_url: String,
    key_pair_id: String,
    key: SigningKey<Sha1>,
}

impl std::fmt::Debug for CloudFrontSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudFrontSigner")
            .field("base_url", &self.base_url)
            .field("key_pair_id", &self.key_pair_id)
            .finish_non_exhaustive()
    }
}

impl CloudFrontSigner {
    /// Loads the key (read from its file if configured so) and checks it
    /// parses, so a bad key stops the start-up rather than every download.
    pub fn new(config: &CdnConfig) -> Result<Self, BlobError> {
        let pem = match &config.private_key {
            PrivateKeySource::Pem(pem) => pem.clone(),
            PrivateKeySource::File(path) => std::fs::read_to_string(path).map_err(|e| {
                BlobError::Config(format!(
                    "ARTEFATOS_CLOUDFRONT_PRIVATE_KEY_FILE {}: {e}",
                    path.display()
                ))
            })?,
        };
        let pem = pem.trim();
        // PKCS#8 (`BEGIN PRIVATE KEY`, OpenSSL 3's default) or PKCS#1
        // (`BEGIN RSA PRIVATE KEY`, what the CloudFront console documents).
        let key = rsa::PrivateKey::from_pkcs8_pem(pem)
            .or_else(|_| rsa::PrivateKey::from_pkcs1_pem(pem))
            .map_err(|_| {
                BlobError::Config(
                    "the CloudFront private key is not an RSA key in PEM (PKCS#1 or PKCS#8)".into(),
                )
            })?;
        Ok(CloudFrontSigner {
            base_url: config.base_url.trim_end_matches('/').to_string(),
            key_pair_id: config.key_pair_id.clone(),
            key: SigningKey::<Sha1>::new(key),
        })
    }

    /// The signed URL of `key`, valid until `start + ttl` (whole seconds,
    /// as the policy counts them).
    pub fn sign(
        &self,
        key: &str,
        start: SystemTime,
        ttl: Duration,
    ) -> Result<PresignedUrl, BlobError> {
        let expires = start
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            + ttl.as_secs();
        let resource = format!("{}/{}", self.base_url, encode_path(key));
        let policy = canned_policy(&resource, expires);
        let signature = self
            .key
            .try_sign(policy.as_bytes())
            .map_err(|e| BlobError::Other(format!("CloudFront signature: {e}")))?;
        let signature = cloudfront_base64(&signature.to_bytes());
        let separator = if resource.contains('?') { '&' } else { '?' };
        let url = format!(
            "{resource}{separator}Expires={expires}&Signature={signature}&Key-Pair-Id={}",
            self.key_pair_id
        );
        let expires_at = DateTime::<Utc>::from_timestamp(i64::try_from(expires).unwrap_or(0), 0)
            .unwrap_or_default();
        Ok(PresignedUrl { url, expires_at })
    }
}

/// The canned policy CloudFront rebuilds from the URL and `Expires` and
/// checks the signature against: byte for byte, no whitespace.
pub fn canned_policy(resource: &str, expires: u64) -> String {
    let resource = serde_json::Value::String(resource.to_string()).to_string();
    format!(
        "{{\"Statement\":[{{\"Resource\":{resource},\"Condition\":{{\"DateLessThan\":{{\"AWS:EpochTime\":{expires}}}}}}}]}}"
    )
}

/// Base64 with CloudFront's substitutions for characters a URL cannot hold.
pub fn cloudfront_base64(bytes: &[u8]) -> String {
    STANDARD
        .encode(bytes)
        .chars()
        .map(|c| match c {
            '+' => '-',
            '=' => '_',
            '/' => '~',
            c => c,
        })
        .collect()
}

/// An object key as a URL path: unreserved characters and `/` as they are,
/// everything else percent-encoded.
fn encode_path(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for byte in key.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_and_the_encoding_follow_cloudfront() {
        assert_eq!(
            canned_policy("https://d.example/jobs/a.pdf", 1_700_000_000),
            r#"{"Statement":[{"Resource":"https://d.example/jobs/a.pdf","Condition":{"DateLessThan":{"AWS:EpochTime":1700000000}}}]}"#
        );
        assert_eq!(cloudfront_base64(&[0xfb, 0xff, 0xfe]), "-~~-");
        assert_eq!(cloudfront_base64(&[0xff]), "~w__");
        assert_eq!(encode_path("jobs/a b.pdf"), "jobs/a%20b.pdf");
    }
}
