//! Reading a JWKS: key by key, each checked (use, key_ops, type, size, algorithm) and never a
//! published example key; what was skipped and why, for logs and `jwtgate check`.

use aws_lc_rs::signature::{self as sig, ParsedPublicKey, VerificationAlgorithm};
use base64::Engine;
use jsonwebtoken::Algorithm;
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
    /// The key, parsed once at load for each algorithm it may verify.
    pub material: Material,
    /// Algorithms this key may verify (`alg_bit` mask).
    pub algs: u16,
}

/// Verification keys ready to use: public keys parsed once (aws-lc-rs `ParsedPublicKey`), an
/// HMAC secret keyed once per algorithm.
pub enum Material {
    Public(Vec<(Algorithm, ParsedPublicKey)>),
    Secret(Vec<(Algorithm, aws_lc_rs::hmac::Key)>),
}

impl Key {
    /// Whether `signature` is this key's signature of `message` under `alg` (an algorithm
    /// the key was not loaded for verifies nothing).
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        match &self.material {
            Material::Public(keys) => keys
                .iter()
                .find(|(a, _)| *a == alg)
                .is_some_and(|(_, k)| k.verify_sig(message, signature).is_ok()),
            Material::Secret(keys) => keys
                .iter()
                .find(|(a, _)| *a == alg)
                .is_some_and(|(_, k)| aws_lc_rs::hmac::verify(k, message, signature).is_ok()),
        }
    }

    /// An HMAC secret's key for `algs` (HS256/384/512 bits).
    pub fn secret(secret: &[u8], algs: u16) -> Key {
        let keyed = [
            (Algorithm::HS256, aws_lc_rs::hmac::HMAC_SHA256),
            (Algorithm::HS384, aws_lc_rs::hmac::HMAC_SHA384),
            (Algorithm::HS512, aws_lc_rs::hmac::HMAC_SHA512),
        ]
        .into_iter()
        .filter(|(a, _)| algs & alg_bit(*a) != 0)
        .map(|(a, h)| (a, aws_lc_rs::hmac::Key::new(h, secret)))
        .collect();
        Key {
            kid: None,
            material: Material::Secret(keyed),
            algs,
        }
    }
}

/// The aws-lc-rs verification algorithm of a JWS `alg` (the same ones jsonwebtoken uses:
/// RSA 2048–8192 bits, fixed-length ECDSA signatures).
fn verification(alg: Algorithm) -> Option<&'static dyn VerificationAlgorithm> {
    Some(match alg {
        Algorithm::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        Algorithm::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
        Algorithm::ES256 => &sig::ECDSA_P256_SHA256_FIXED,
        Algorithm::ES384 => &sig::ECDSA_P384_SHA384_FIXED,
        Algorithm::EdDSA => &sig::ED25519,
        _ => return None,
    })
}

/// All algorithms, for walking a mask.
const ALL_ALGS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::EdDSA,
];

/// Parse the public key bytes once for each algorithm of `algs`.
fn parse_public(bytes: &[u8], algs: u16) -> Result<Material, &'static str> {
    let mut keys = Vec::new();
    for alg in ALL_ALGS.into_iter().filter(|a| algs & alg_bit(*a) != 0) {
        let v = verification(alg).ok_or("unsupported algorithm")?;
        keys.push((
            alg,
            ParsedPublicKey::new(v, bytes).map_err(|_| "unusable key material")?,
        ));
    }
    Ok(Material::Public(keys))
}

/// DER of a PKCS#1 `RSAPublicKey` (RFC 8017 A.1.1): SEQUENCE { n INTEGER, e INTEGER }.
fn rsa_public_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn integer(v: &[u8]) -> Vec<u8> {
        let v = match v.iter().position(|b| *b != 0) {
            Some(i) => &v[i..],
            None => &[0u8][..],
        };
        let mut body = Vec::with_capacity(v.len() + 1);
        if v[0] & 0x80 != 0 {
            body.push(0);
        }
        body.extend_from_slice(v);
        tlv(0x02, &body)
    }
    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = body.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend_from_slice(&bytes);
        }
        out.extend_from_slice(body);
        out
    }
    let mut seq = integer(n);
    seq.extend_from_slice(&integer(e));
    tlv(0x30, &seq)
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
        match parse_key(&raw, allowed) {
            Ok((kid, material, algs)) => {
                if algs & allowed == 0 {
                    skipped.push(format!("key {i} (kid {:?}) skipped: none of its algorithms is allowed for this issuer", kid.as_deref().unwrap_or("")));
                    continue;
                }
                out.push(Key {
                    kid: kid.map(Into::into),
                    material,
                    algs: algs & allowed,
                });
            }
            Err(why) => skipped.push(format!("key {i} (kid {kid:?}) skipped: {why}")),
        }
    }
    (out, skipped)
}

/// [`audit_jwks_file`] over every issuer: the warnings, and the errors (none: usable).
pub fn audit_key_files(issuers: &[IssuerConfig]) -> (Vec<String>, Vec<String>) {
    let mut warnings = Vec::new();
    let mut errors = Vec::new();
    for issuer in issuers {
        match audit_jwks_file(issuer) {
            Ok(w) => warnings.extend(w),
            Err(e) => errors.push(e),
        }
    }
    (warnings, errors)
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

/// One JWK: its `kid`, its key parsed for the algorithms of `allowed` it may verify, and
/// the mask of those it may verify at all.
fn parse_key(raw: &Value, allowed: u16) -> Result<(Option<String>, Material, u16), &'static str> {
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
    let b64 = |name: &str, missing: &'static str| -> Result<Vec<u8>, &'static str> {
        let v = obj.get(name).and_then(Value::as_str).ok_or(missing)?;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(v.trim_end_matches('='))
            .map_err(|_| "a key member is not base64url")
    };
    // The public key in the bytes aws-lc-rs parses: PKCS#1 for RSA, the uncompressed
    // point for EC, the raw key for Ed25519.
    let (family, bytes): (u16, Vec<u8>) = match kty {
        "RSA" => {
            let n = b64("n", "RSA key without n")?;
            let e = b64("e", "RSA key without e")?;
            let bits = n.iter().skip_while(|b| **b == 0).count() * 8;
            if bits < 2048 {
                return Err("RSA modulus shorter than 2048 bits");
            }
            (
                RSA_ALGS.iter().fold(0, |m, a| m | alg_bit(*a)),
                rsa_public_der(&n, &e),
            )
        }
        "EC" => {
            let (alg, size) = match obj.get("crv").and_then(Value::as_str) {
                Some("P-256") => (Algorithm::ES256, 32),
                Some("P-384") => (Algorithm::ES384, 48),
                _ => return Err("unsupported EC curve"),
            };
            let x = b64("x", "EC key without x")?;
            let y = b64("y", "EC key without y")?;
            if x.len() != size || y.len() != size {
                return Err("EC coordinates of the wrong length");
            }
            let mut point = vec![4u8];
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (alg_bit(alg), point)
        }
        "OKP" => match obj.get("crv").and_then(Value::as_str) {
            Some("Ed25519") => {
                let x = b64("x", "OKP key without x")?;
                if x.len() != 32 {
                    return Err("Ed25519 key of the wrong length");
                }
                (alg_bit(Algorithm::EdDSA), x)
            }
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
    // Parsed (and so validated: a point on the curve, a well-formed modulus) for every
    // algorithm it will verify here.
    let material = parse_public(&bytes, algs & allowed)?;
    Ok((kid, material, algs))
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
        assert!(parse_key(&rfc7515_ec, u16::MAX)
            .err()
            .is_some_and(|e| e.contains("RFC 7515")));
        let rfc7517_ec = serde_json::json!({ "kty": "EC", "crv": "P-256", "x": "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4", "y": "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM", "use": "sig" });
        assert!(parse_key(&rfc7517_ec, u16::MAX)
            .err()
            .is_some_and(|e| e.contains("RFC 7517")));
    }
}
