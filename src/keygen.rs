//! Keys of one's own for demos and first runs: `jwtgate keygen` writes an Ed25519 signing key
//! and its JWKS (and random API keys) into a folder, once; `jwtgate token` mints a token with
//! that key. Nothing here is a published example key: each run draws fresh randomness from
//! the system's CSPRNG.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use serde_json::{json, Value};

/// An Ed25519 signing key (PKCS#8) with its key id.
pub struct SigningKey {
    pkcs8: Vec<u8>,
    pair: Ed25519KeyPair,
}

impl SigningKey {
    /// A fresh key.
    pub fn generate() -> anyhow::Result<SigningKey> {
        let doc = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .map_err(|_| anyhow::anyhow!("cannot generate an Ed25519 key"))?;
        SigningKey::from_pkcs8(doc.as_ref().to_vec())
    }

    fn from_pkcs8(pkcs8: Vec<u8>) -> anyhow::Result<SigningKey> {
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
            .map_err(|_| anyhow::anyhow!("not an Ed25519 PKCS#8 key"))?;
        Ok(SigningKey { pkcs8, pair })
    }

    /// Read a `-----BEGIN PRIVATE KEY-----` file as [`SigningKey::pem`] writes it.
    pub fn load(path: &Path) -> anyhow::Result<SigningKey> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let body: String = text
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::trim)
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body)
            .with_context(|| format!("{} is not a PEM file", path.display()))?;
        SigningKey::from_pkcs8(der).with_context(|| format!("{}", path.display()))
    }

    /// PKCS#8 PEM.
    pub fn pem(&self) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(&self.pkcs8);
        let lines: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap_or_default())
            .collect();
        format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        )
    }

    /// The key id: the first 16 hex digits of the public key's SHA-256.
    pub fn kid(&self) -> String {
        hex(&sha256(self.pair.public_key().as_ref())[..8])
    }

    /// The JWKS (`{"keys":[…]}`) a gateway trusts for this key.
    pub fn jwks(&self) -> Value {
        let x = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(self.pair.public_key().as_ref());
        json!({ "keys": [{ "kty": "OKP", "crv": "Ed25519", "x": x, "kid": self.kid(), "alg": "EdDSA", "use": "sig" }] })
    }

    /// A compact EdDSA JWS of `claims`, with this key's `kid`.
    pub fn sign(&self, claims: &Value) -> anyhow::Result<String> {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(self.kid());
        let key = jsonwebtoken::EncodingKey::from_ed_der(&self.pkcs8);
        Ok(jsonwebtoken::encode(&header, claims, &key)?)
    }
}

fn sha256(data: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A random API key (256 bits, hex) from the system's CSPRNG.
pub fn api_key() -> anyhow::Result<String> {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the system random source failed"))?;
    Ok(hex(&bytes))
}

/// The hex SHA-256 of an API key, as `writers`/`readers` configure it.
pub fn api_key_sha256(key: &str) -> String {
    hex(&sha256(key.as_bytes()))
}

/// The files `keygen` makes in its folder.
pub const SIGNING_KEY: &str = "signing-key.pem";
pub const JWKS: &str = "jwks.json";
pub const WRITER_KEY: &str = "writer.key";
pub const READER_KEY: &str = "reader.key";

/// Make the folder's keys unless they are there already (first run only: a second run keeps
/// them, so tokens and configs made from them keep working). Returns the files written.
pub fn ensure(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut written = Vec::new();
    let key_path = dir.join(SIGNING_KEY);
    let key = if key_path.exists() {
        SigningKey::load(&key_path)?
    } else {
        let key = SigningKey::generate()?;
        write_secret(&key_path, &key.pem())?;
        written.push(key_path);
        key
    };
    let jwks_path = dir.join(JWKS);
    if jwks_path.exists() {
        // A JWKS from another key would make every token this key signs fail.
        let held = std::fs::read_to_string(&jwks_path)
            .with_context(|| format!("cannot read {}", jwks_path.display()))?;
        if !held.contains(&key.kid()) {
            anyhow::bail!(
                "{} does not hold the public key of {} (kid {}): remove one of them and run again",
                jwks_path.display(),
                dir.join(SIGNING_KEY).display(),
                key.kid()
            );
        }
    } else {
        std::fs::write(&jwks_path, format!("{}\n", key.jwks()))
            .with_context(|| format!("cannot write {}", jwks_path.display()))?;
        written.push(jwks_path);
    }
    for name in [WRITER_KEY, READER_KEY] {
        let path = dir.join(name);
        if !path.exists() {
            write_secret(&path, &format!("{}\n", api_key()?))?;
            written.push(path);
        }
    }
    Ok(written)
}

/// Write a file only its owner can read.
fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}
