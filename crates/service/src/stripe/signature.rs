//! The `Stripe-Signature` check, as Stripe documents it: HMAC-SHA256 with an endpoint secret
//! over `"{t}.{raw body}"`, compared in constant time with every `v1` of the header, and `t`
//! within five minutes of now. Done on the raw bytes, before anything parses the body.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// How far `t` may be from now, either way, in seconds (Stripe's own default).
pub const TOLERANCE_S: i64 = 300;

/// The endpoint secrets. Several at once so that a secret can be rotated: Stripe signs with
/// every secret an endpoint has while the old one is being rolled, and the ledger accepts any.
#[derive(Clone)]
pub struct Secrets(Vec<Vec<u8>>);

// Secrets never reach a log.
impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({} redacted)", self.0.len())
    }
}

impl Secrets {
    /// Secrets from `LEDGER_STRIPE_WEBHOOK_SECRETS` (comma-separated); `None` when there are
    /// none, which turns the webhook route off.
    pub fn parse(spec: &str) -> Option<Secrets> {
        let secrets: Vec<Vec<u8>> = spec
            .split(',')
            .map(str::trim)
            .filter(|secret| !secret.is_empty())
            .map(|secret| secret.as_bytes().to_vec())
            .collect();
        (!secrets.is_empty()).then_some(Secrets(secrets))
    }
}

/// Why a delivery's signature was refused. Each is a 400 and writes nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the Stripe-Signature header is missing")]
    Missing,
    #[error("the Stripe-Signature header is malformed: {0}")]
    Malformed(&'static str),
    #[error("no v1 signature of the Stripe-Signature header matches the body")]
    Mismatch,
    #[error("the Stripe-Signature timestamp {t} is more than {TOLERANCE_S} s from now ({now})")]
    Stale { t: i64, now: i64 },
}

/// Checks `header` against `body` at `now_s` (Unix seconds).
pub fn verify(
    secrets: &Secrets,
    header: Option<&[u8]>,
    body: &[u8],
    now_s: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let header = std::str::from_utf8(header)
        .map_err(|_| SignatureError::Malformed("it is not ASCII text"))?;
    let mut t = None;
    let mut candidates = Vec::new();
    for item in header.split(',') {
        let (key, value) = item
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed("an item is not key=value"))?;
        match key {
            "t" => {
                let parsed = value
                    .parse::<i64>()
                    .map_err(|_| SignatureError::Malformed("t is not a number"))?;
                if t.replace(parsed).is_some() {
                    return Err(SignatureError::Malformed("t appears twice"));
                }
            }
            // A v1 that is not hex can match nothing; it is not an error, another may match.
            "v1" => candidates.extend(hex::decode(value).ok()),
            // v0 is Stripe's test-mode scheme; accepting it would be a downgrade.
            _ => {}
        }
    }
    let t = t.ok_or(SignatureError::Malformed("t is missing"))?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed("no v1 signature"));
    }
    let mut matched = subtle::Choice::from(0);
    for secret in &secrets.0 {
        let expected = sign(secret, t, body);
        for candidate in &candidates {
            // `ct_eq` on slices of different lengths is false, in time independent of content.
            matched |= expected.as_slice().ct_eq(candidate.as_slice());
        }
    }
    if !bool::from(matched) {
        return Err(SignatureError::Mismatch);
    }
    if (now_s - t).abs() > TOLERANCE_S {
        return Err(SignatureError::Stale { t, now: now_s });
    }
    Ok(())
}

/// The `v1` signature of `body` at `t` with `secret`.
pub fn sign(secret: &[u8], t: i64, body: &[u8]) -> Vec<u8> {
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("hmac accepts any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header of Stripe's documentation ("Verify manually"), also parsed by async-stripe's
    /// `test_signature_parse`. Stripe publishes no secret or body for it.
    const STRIPE_DOCS_HEADER: &str = "t=1492774577,v1=5257a869e7ecebeda32affa62cdca3fa51cad7e77a0e56ff536d0ce8e108d8bd,v0=6ffbb59b2300aae63f272406069a9788598b792a944a07aba816edb039989a39";

    /// A signature Stripe's scheme produced: async-stripe's `test_webhook_construct_event`
    /// (secret `secret`, t=1533204620, this body as serde_json writes it, keys sorted).
    const ASYNC_STRIPE_BODY: &str = r#"{"account":"acct_123","api_version":"2017-05-25","created":1533204620,"data":{"object":{"amount":1000,"currency":"usd","customer":"cus_123","date":1533204620,"description":"Test Invoice Item","discountable":false,"id":"ii_123","invoice":"in_123","livemode":false,"metadata":{},"object":"invoiceitem","period":{"end":1533204620,"start":1533204620},"proration":false,"quantity":3,"quantity_decimal":"0"}},"id":"evt_123","livemode":false,"object":"event","pending_webhooks":1,"request":{"id":"req_123","idempotency_key":"idempotency-key-123"},"type":"invoiceitem.created"}"#;
    const ASYNC_STRIPE_HEADER: &str = "t=1533204620,v1=d7373bc68f4bd320b253cd7461f87af6e1cdf1b4d7db1614d8d1d746972d2d0a,v0=63f3a72374a733066c4be69ed7f8e5ac85c22c9f0a6a612ab9a025a9e4ee7eef";

    /// Stripe's test-vector timestamp, signed here with `whsec_test_secret` (the secret of
    /// Stripe's and async-stripe's webhook tests) over async-stripe's `evt_test_webhook`
    /// body; the hex was computed independently with Python's `hmac` module.
    const VECTOR_BODY: &str = r#"{"id":"evt_test_webhook","object":"event"}"#;
    const VECTOR_T: i64 = 1_492_774_577;
    const VECTOR_V1: &str = "88a022085c6bdb887b02cb26ff76dd681234d9675c0f22844059f55552a8883a";

    fn secrets(spec: &str) -> Secrets {
        Secrets::parse(spec).expect("secrets")
    }

    fn check(
        secrets_spec: &str,
        header: &str,
        body: &str,
        now_s: i64,
    ) -> Result<(), SignatureError> {
        verify(
            &secrets(secrets_spec),
            Some(header.as_bytes()),
            body.as_bytes(),
            now_s,
        )
    }

    #[test]
    fn the_signature_async_stripe_pins_verifies() {
        assert_eq!(
            check(
                "secret",
                ASYNC_STRIPE_HEADER,
                ASYNC_STRIPE_BODY,
                1_533_204_620
            ),
            Ok(())
        );
    }

    #[test]
    fn stripes_test_vector_timestamp_signs_as_an_independent_hmac_does() {
        assert_eq!(
            hex::encode(sign(b"whsec_test_secret", VECTOR_T, VECTOR_BODY.as_bytes())),
            VECTOR_V1
        );
        let header = format!("t={VECTOR_T},v1={VECTOR_V1}");
        assert_eq!(
            check("whsec_test_secret", &header, VECTOR_BODY, VECTOR_T),
            Ok(())
        );
    }

    #[test]
    fn stripes_documented_header_parses_and_matches_no_body_of_ours() {
        // Well formed (a v0 beside the v1 is ignored), so the refusal is a mismatch.
        let refused = check(
            "whsec_test_secret",
            STRIPE_DOCS_HEADER,
            VECTOR_BODY,
            VECTOR_T,
        );
        assert_eq!(refused, Err(SignatureError::Mismatch));
    }

    #[test]
    fn rotation_two_v1_one_valid_is_accepted() {
        let good = hex::encode(sign(b"whsec_new", 1_000, b"{}"));
        let header = format!("t=1000,v1={},v1={good}", "ab".repeat(32));
        assert_eq!(check("whsec_new", &header, "{}", 1_000), Ok(()));
    }

    #[test]
    fn rotation_two_secrets_either_signs() {
        for secret in ["whsec_old", "whsec_new"] {
            let header = format!(
                "t=1000,v1={}",
                hex::encode(sign(secret.as_bytes(), 1_000, b"{}"))
            );
            assert_eq!(
                check("whsec_old, whsec_new", &header, "{}", 1_000),
                Ok(()),
                "{secret}"
            );
        }
    }

    #[test]
    fn a_tampered_body_is_refused() {
        let tampered = ASYNC_STRIPE_BODY.replace("\"quantity\":3", "\"quantity\":4");
        assert_eq!(
            check("secret", ASYNC_STRIPE_HEADER, &tampered, 1_533_204_620),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn another_secret_is_refused() {
        assert_eq!(
            check(
                "whsec_other",
                ASYNC_STRIPE_HEADER,
                ASYNC_STRIPE_BODY,
                1_533_204_620
            ),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_stale_t_is_refused_either_way_and_the_edge_is_accepted() {
        let t = 1_533_204_620;
        for now in [t + TOLERANCE_S + 1, t - TOLERANCE_S - 1] {
            assert_eq!(
                check("secret", ASYNC_STRIPE_HEADER, ASYNC_STRIPE_BODY, now),
                Err(SignatureError::Stale { t, now })
            );
        }
        for now in [t + TOLERANCE_S, t - TOLERANCE_S] {
            assert_eq!(
                check("secret", ASYNC_STRIPE_HEADER, ASYNC_STRIPE_BODY, now),
                Ok(())
            );
        }
    }

    #[test]
    fn a_missing_header_is_refused() {
        let refused = verify(
            &secrets("secret"),
            None,
            ASYNC_STRIPE_BODY.as_bytes(),
            1_533_204_620,
        );
        assert_eq!(refused, Err(SignatureError::Missing));
    }

    #[test]
    fn malformed_headers_are_refused() {
        for (header, why) in [
            ("", "an item is not key=value"),
            ("t=1533204620", "no v1 signature"),
            ("v1=abcd", "t is missing"),
            ("t=soon,v1=abcd", "t is not a number"),
            ("t=1,t=2,v1=abcd", "t appears twice"),
            ("t=1533204620,v0=abcd", "no v1 signature"),
        ] {
            assert_eq!(
                check("secret", header, ASYNC_STRIPE_BODY, 1_533_204_620),
                Err(SignatureError::Malformed(why)),
                "{header:?}"
            );
        }
    }

    #[test]
    fn secrets_are_comma_separated_and_blank_ones_ignored() {
        assert!(Secrets::parse(" , ").is_none());
        assert_eq!(Secrets::parse("a, b,,c").map(|s| s.0.len()), Some(3));
        assert_eq!(format!("{:?}", secrets("whsec_x")), "Secrets(1 redacted)");
    }
}
