//! The `Ledger-Signature` header, built exactly like Stripe's `Stripe-Signature`: `t` is the
//! Unix time of signing in seconds and `v1` the lowercase hex HMAC-SHA256, keyed with
//! `LEDGER_WEBHOOK_SECRET`, of `"{t}.{raw body}"`. A receiver recomputes it over the bytes it
//! got and compares in constant time; checking `t` against its clock stops replays.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The header's name.
pub const HEADER: &str = "Ledger-Signature";

/// The header value for `body` signed at `timestamp_s`.
pub fn sign(secret: &[u8], timestamp_s: i64, body: &[u8]) -> String {
    format!(
        "t={timestamp_s},v1={}",
        hex_digest(secret, timestamp_s, body)
    )
}

/// Whether `header` carries a `v1` that signs `body` at its `t`, and that `t` is within
/// `tolerance_s` of `now_s`. What a receiver does; the tests use it as one.
pub fn verify(secret: &[u8], header: &str, body: &[u8], now_s: i64, tolerance_s: i64) -> bool {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for item in header.split(',') {
        match item.trim().split_once('=') {
            Some(("t", value)) => timestamp = value.parse::<i64>().ok(),
            Some(("v1", value)) => signatures.push(value),
            _ => {}
        }
    }
    let Some(timestamp) = timestamp else {
        return false;
    };
    if (now_s - timestamp).abs() > tolerance_s {
        return false;
    }
    signatures.into_iter().any(|signature| {
        let Ok(bytes) = hex::decode(signature) else {
            return false;
        };
        let mut mac = keyed(secret);
        mac.update(format!("{timestamp}.").as_bytes());
        mac.update(body);
        mac.verify_slice(&bytes).is_ok()
    })
}

fn keyed(secret: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length.
    HmacSha256::new_from_slice(secret).expect("hmac accepts any key length")
}

fn hex_digest(secret: &[u8], timestamp_s: i64, body: &[u8]) -> String {
    let mut mac = keyed(secret);
    mac.update(format!("{timestamp_s}.").as_bytes());
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_only_for_its_secret_body_and_time() {
        let header = sign(b"whsec_test", 1_700_000_000, b"{\"id\":\"n1\"}");
        assert!(verify(
            b"whsec_test",
            &header,
            b"{\"id\":\"n1\"}",
            1_700_000_100,
            300
        ));
        assert!(!verify(
            b"other",
            &header,
            b"{\"id\":\"n1\"}",
            1_700_000_100,
            300
        ));
        assert!(!verify(
            b"whsec_test",
            &header,
            b"{\"id\":\"n2\"}",
            1_700_000_100,
            300
        ));
        assert!(!verify(
            b"whsec_test",
            &header,
            b"{\"id\":\"n1\"}",
            1_700_001_000,
            300
        ));
        assert!(!verify(b"whsec_test", "v1=00", b"{}", 1_700_000_000, 300));
    }

    #[test]
    fn the_signature_matches_an_independent_hmac_sha256() {
        // Computed with Python's standard library: hmac.new(b"whsec_test",
        // b'1700000000.{"id":"n1"}', hashlib.sha256).hexdigest()
        assert_eq!(
            sign(b"whsec_test", 1_700_000_000, b"{\"id\":\"n1\"}"),
            "t=1700000000,v1=177d5152af96b8954bde97dff8530d28a679f8f60c5bdd46d77cf9e28de6b46e"
        );
    }
}
