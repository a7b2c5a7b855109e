//! Reading a JWKS: key by key, each checked (use, key_ops, type, size, algorithm) and never a
//! published example key; what was skipped and why, for logs and `jwtgate check`.

use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

use crate::config::{parse_algorithm, IssuerConfig, KeySource};

/// Bit for each algorithm, so a key's permitted algorithms are one mask test.
pub fn alg_bit(alg: Algorithm) -> u16 {
    1 << alg_index(alg)
}

/// A dense index per algorithm (0..12).
pub fn alg_index(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS256 => 0,
        Algorithm::HS384 => 1,
        Algorithm::HS512 => 2,
        Algorithm::ES256 => 3,
        Algorithm::ES384 => 4,
        Algorithm::RS256 => 5,
        Algorithm::RS384 => 6,
        Algorithm::RS512 => 7,
        Algorithm::PS256 => 8,
        Algorithm::PS384 => 9,
        Algorithm::PS512 => 10,
        Algorithm::EdDSA => 11,
    }
}

const RSA_ALGS: [Algorithm; 6] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];

pub struct Key {
    pub kid: Option<Box<str>>,
    pub key: DecodingKey,
    /// Algorithms this key may verify (`alg_bit` mask).
    pub algs: u16,
}

/// Parse a JWKS document key by key: an unusable key is skipped with a log line instead of
/// failing the whole set.
pub fn parse_jwks(doc: &[u8], cfg: &IssuerConfig) -> Vec<Key> {
    let (keys, skipped) = parse_jwks_explained(doc, cfg);
    for s in &skipped {
        tracing::warn!(issuer = %cfg.name, "JWKS: {s}");
    }
    keys
}

/// [`parse_jwks`], with why each key (or the document) was skipped.
pub fn parse_jwks_explained(doc: &[u8], cfg: &IssuerConfig) -> (Vec<Key>, Vec<String>) {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<Value>,
    }
    let doc: Doc = match serde_json::from_slice(doc) {
        Ok(d) => d,
        Err(e) => {
            return (
                Vec::new(),
                vec![format!(
                    "the document is not a JSON object with a `keys` array: {e}"
                )],
            )
        }
    };
    let allowed = cfg.algorithms.iter().fold(0u16, |m, a| m | alg_bit(*a));
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for (i, raw) in doc.keys.into_iter().enumerate() {
        let kid = raw
            .get("kid")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        match parse_key(&raw) {
            Ok((kid, key, algs)) => {
                if algs & allowed == 0 {
                    skipped.push(format!("key {i} (kid {:?}) skipped: none of its algorithms is allowed for this issuer", kid.as_deref().unwrap_or("")));
                    continue;
                }
                out.push(Key {
                    kid: kid.map(Into::into),
                    key,
                    algs: algs & allowed,
                });
            }
            Err(why) => skipped.push(format!("key {i} (kid {kid:?}) skipped: {why}")),
        }
    }
    (out, skipped)
}

/// What `jwtgate check` and startup say of an issuer's `jwks_file`: an error when it holds a
/// published example key or no usable key; a warning when it does not exist yet (it may be
/// mounted or generated later) or skips some keys.
pub fn audit_jwks_file(cfg: &IssuerConfig) -> Result<Vec<String>, String> {
    let KeySource::File(path) = &cfg.keys else {
        return Ok(Vec::new());
    };
    let doc = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(vec![format!(
                "issuer `{}`: {} does not exist yet; the issuer has no keys until it does (`jwtgate keygen --dir DIR` makes one)",
                cfg.name,
                path.display()
            )])
        }
        Err(e) => return Err(format!("issuer `{}`: cannot read {}: {e}", cfg.name, path.display())),
    };
    let (keys, skipped) = parse_jwks_explained(&doc, cfg);
    if let Some(published) = skipped.iter().find(|s| s.contains("is published")) {
        return Err(format!(
            "issuer `{}`: {}: {published}",
            cfg.name,
            path.display()
        ));
    }
    if keys.is_empty() {
        return Err(format!(
            "issuer `{}`: {} holds no usable key{}",
            cfg.name,
            path.display(),
            skipped
                .first()
                .map(|s| format!(" ({s})"))
                .unwrap_or_default()
        ));
    }
    Ok(skipped
        .into_iter()
        .map(|s| format!("issuer `{}`: {}: {s}", cfg.name, path.display()))
        .collect())
}

fn parse_key(raw: &Value) -> Result<(Option<String>, DecodingKey, u16), &'static str> {
    let obj = raw.as_object().ok_or("not an object")?;
    let kid = match obj.get("kid") {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("kid is not a string"),
    };
    if obj.get("use").is_some_and(|u| u != "sig") {
        return Err("use is not `sig`");
    }
    // RFC 7517 §4.3: a key whose `key_ops` do not include `verify` is not for verifying.
    if let Some(ops) = obj.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|o| o == "verify"));
        if !verifies {
            return Err("key_ops does not include `verify`");
        }
    }
    let kty = obj.get("kty").and_then(Value::as_str).ok_or("no kty")?;
    let family: u16 = match kty {
        "RSA" => {
            let n = obj
                .get("n")
                .and_then(Value::as_str)
                .ok_or("RSA key without n")?;
            let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(n.trim_end_matches('='))
                .map_err(|_| "RSA modulus is not base64url")?;
            let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
            if bits < 2048 {
                return Err("RSA modulus shorter than 2048 bits");
            }
            RSA_ALGS.iter().fold(0, |m, a| m | alg_bit(*a))
        }
        "EC" => match obj.get("crv").and_then(Value::as_str) {
            Some("P-256") => alg_bit(Algorithm::ES256),
            Some("P-384") => alg_bit(Algorithm::ES384),
            _ => return Err("unsupported EC curve"),
        },
        "OKP" => match obj.get("crv").and_then(Value::as_str) {
            Some("Ed25519") => alg_bit(Algorithm::EdDSA),
            _ => return Err("unsupported OKP curve"),
        },
        "oct" => return Err("symmetric keys are never taken from a JWKS"),
        _ => return Err("unknown kty"),
    };
    if let Some(why) = published_example(obj) {
        return Err(why);
    }
    let algs = match obj.get("alg") {
        None => family,
        Some(Value::String(a)) => {
            let bit = parse_algorithm(a).map(alg_bit).ok_or("unknown alg")?;
            if bit & family == 0 {
                return Err("alg does not fit the key type");
            }
            bit
        }
        Some(_) => return Err("alg is not a string"),
    };
    // `from_jwk` wants a well-formed JWK; give it only the members it understands.
    let jwk: Jwk = serde_json::from_value(raw.clone()).map_err(|_| "malformed JWK")?;
    let key = DecodingKey::from_jwk(&jwk).map_err(|_| "unusable key material")?;
    Ok((kid, key, algs))
}

/// Public keys whose private halves are printed in RFCs (and copied into countless
/// examples and demos): anyone can sign with them. `(member, value prefix, why)`; RSA moduli
/// are matched on their first 48 characters (288 bits), which no other key shares.
const PUBLISHED: &[(&str, &str, &str)] = &[
    (
        "x",
        "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
        "the RFC 8037 example Ed25519 key, whose private half is published: never trusted (generate your own: `jwtgate keygen`)",
    ),
    (
        "x",
        "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "the RFC 7515 example P-256 key, whose private half is published: never trusted",
    ),
    (
        "x",
        "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4",
        "the RFC 7517 example P-256 key, whose private half is published: never trusted",
    ),
    (
        "n",
        "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l",
        "the RFC 7515 example RSA key, whose private half is published: never trusted",
    ),
    (
        "n",
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78L",
        "the RFC 7517 example RSA key, whose private half is published: never trusted",
    ),
    (
        "n",
        "n4EPtAOCc9AlkeQHPzHStgAbgs7bTZLwUBZdR8_KuKPEHLd4",
        "the RFC 7520 example RSA key (bilbo.baggins), whose private half is published: never trusted",
    ),
    (
        "n",
        "nzyis1ZjfNB0bBgKFMSvvkTtwlvBsaJq7S5wA-kzeVOVpVWw",
        "the jwt.io example RSA key, whose private half is published: never trusted",
    ),
];

/// Why this JWK is a published example key, if it is one.
fn published_example(obj: &serde_json::Map<String, Value>) -> Option<&'static str> {
    PUBLISHED.iter().find_map(|(member, prefix, why)| {
        obj.get(*member)
            .and_then(Value::as_str)
            .is_some_and(|v| v.trim_end_matches('=').starts_with(prefix))
            .then_some(*why)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every published example key is refused by name, whatever else the JWK says.
    #[test]
    fn published_example_keys_are_refused() {
        let rfc7515_ec = serde_json::json!({ "kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0" });
        assert!(parse_key(&rfc7515_ec)
            .err()
            .is_some_and(|e| e.contains("RFC 7515")));
        let rfc7517_ec = serde_json::json!({ "kty": "EC", "crv": "P-256", "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4", "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM", "use": "sig" });
        assert!(parse_key(&rfc7517_ec)
            .err()
            .is_some_and(|e| e.contains("RFC 7517")));
    }
}
