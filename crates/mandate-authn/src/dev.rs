//! Development keys: generate a key pair, publish its JWKS, sign tokens.
//!
//! For the CLI, the demo, tests and benchmarks. A production deployment
//! verifies tokens from a real IdP and never holds an issuer's private key.

use crate::AuthnError;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair,
    KeyPair as _,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::jwk::{
    AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, KeyAlgorithm,
    OctetKeyPairParameters, OctetKeyPairType, PublicKeyUse, ThumbprintHash,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use std::fmt;

/// A development signing key: private key (PKCS#8 PEM), its `kid`, and the
/// public JWKS to hand to an [`crate::Authenticator`].
pub struct DevKey {
    /// Key id, put in every token header and in the JWKS. Defaults to the
    /// RFC 7638 thumbprint of the public key.
    pub kid: String,
    /// The private key, PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub pkcs8_pem: String,
    alg: Algorithm,
    encoding: EncodingKey,
    /// Public JWK without `kid`, `use` or `alg` (added when published).
    public: AlgorithmParameters,
}

impl fmt::Debug for DevKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("pkcs8_pem", &"[redacted]")
            .finish_non_exhaustive()
    }
}

/// A fresh Ed25519 key (EdDSA), the default for development tokens.
pub fn generate_ed25519() -> Result<DevKey, AuthnError> {
    DevKey::generate(Algorithm::EdDSA)
}

impl DevKey {
    /// A fresh key for `alg`: EdDSA (Ed25519), ES256 (P-256), ES384
    /// (P-384), or an RSA algorithm (2048-bit; slow to generate).
    pub fn generate(alg: Algorithm) -> Result<Self, AuthnError> {
        let rng = SystemRandom::new();
        let pkcs8: Vec<u8> = match alg {
            Algorithm::EdDSA => Ed25519KeyPair::generate_pkcs8v1(&rng)
                .map_err(|_| fail("Ed25519 key generation failed"))?
                .as_ref()
                .to_vec(),
            Algorithm::ES256 | Algorithm::ES384 => {
                let curve = if alg == Algorithm::ES256 {
                    &ECDSA_P256_SHA256_FIXED_SIGNING
                } else {
                    &ECDSA_P384_SHA384_FIXED_SIGNING
                };
                EcdsaKeyPair::generate_pkcs8(curve, &rng)
                    .map_err(|_| fail("EC key generation failed"))?
                    .as_ref()
                    .to_vec()
            }
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => {
                let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                    .map_err(|_| fail("RSA key generation failed"))?;
                let der: aws_lc_rs::encoding::Pkcs8V1Der<'static> =
                    pair.as_der().map_err(|_| fail("RSA key encoding failed"))?;
                der.as_ref().to_vec()
            }
            other => return Err(fail(&format!("no development keys for {other:?}"))),
        };
        let pem = pem_encode("PRIVATE KEY", &pkcs8);
        Self::from_pem_with(&pem, None, alg)
    }

    /// Loads a key written earlier from [`DevKey::pkcs8_pem`]. The algorithm
    /// follows the key: Ed25519 → EdDSA, P-256 → ES256, P-384 → ES384,
    /// RSA → RS256 (see [`DevKey::with_algorithm`] for PS256).
    pub fn from_pem(pem: &str, kid: impl Into<String>) -> Result<Self, AuthnError> {
        let pem_bytes = pem.as_bytes();
        let alg = if EncodingKey::from_ed_pem(pem_bytes).is_ok() {
            Algorithm::EdDSA
        } else if let Ok(key) = EncodingKey::from_ec_pem(pem_bytes) {
            if EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, key.as_bytes()).is_ok() {
                Algorithm::ES256
            } else {
                Algorithm::ES384
            }
        } else if EncodingKey::from_rsa_pem(pem_bytes).is_ok() {
            Algorithm::RS256
        } else {
            return Err(fail(
                "not a PKCS#8 Ed25519, P-256, P-384 or RSA private key",
            ));
        };
        Self::from_pem_with(pem, Some(kid.into()), alg)
    }

    /// The same key, signing with another algorithm of its family (e.g.
    /// PS256 for an RSA key).
    pub fn with_algorithm(mut self, alg: Algorithm) -> Result<Self, AuthnError> {
        if alg.family() != self.alg.family() || !crate::jwks::is_asymmetric(alg) {
            return Err(fail("algorithm does not fit this key"));
        }
        if matches!(alg, Algorithm::ES256 | Algorithm::ES384) && alg != self.alg {
            return Err(fail("an EC key's curve fixes its algorithm"));
        }
        self.alg = alg;
        Ok(self)
    }

    fn from_pem_with(pem: &str, kid: Option<String>, alg: Algorithm) -> Result<Self, AuthnError> {
        let bytes = pem.as_bytes();
        let (encoding, public) = match alg {
            Algorithm::EdDSA => {
                let encoding =
                    EncodingKey::from_ed_pem(bytes).map_err(|_| fail("not an Ed25519 key"))?;
                let pair = Ed25519KeyPair::from_pkcs8(encoding.as_bytes())
                    .map_err(|_| fail("not an Ed25519 key"))?;
                let public = AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
                    key_type: OctetKeyPairType::OctetKeyPair,
                    curve: EllipticCurve::Ed25519,
                    x: URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
                });
                (encoding, public)
            }
            _ => {
                let encoding = if matches!(alg, Algorithm::ES256 | Algorithm::ES384) {
                    EncodingKey::from_ec_pem(bytes)
                } else {
                    EncodingKey::from_rsa_pem(bytes)
                }
                .map_err(|_| fail("key does not match its algorithm"))?;
                let public = Jwk::from_encoding_key(&encoding, alg)
                    .map_err(|_| fail("cannot derive the public key"))?
                    .algorithm;
                (encoding, public)
            }
        };
        let mut key = Self {
            kid: String::new(),
            pkcs8_pem: pem.to_owned(),
            alg,
            encoding,
            public,
        };
        key.kid = match kid {
            Some(kid) => kid,
            None => key
                .public_jwk_without_kid()
                .thumbprint(ThumbprintHash::SHA256)
                .map_err(|_| fail("cannot compute the key thumbprint"))?,
        };
        Ok(key)
    }

    /// The signing algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    fn public_jwk_without_kid(&self) -> Jwk {
        Jwk {
            common: CommonParameters::default(),
            algorithm: self.public.clone(),
        }
    }

    /// The public JWK: `kty`, key parameters, `kid`, `use: sig`, `alg`.
    pub fn jwk(&self) -> Jwk {
        Jwk {
            common: CommonParameters {
                public_key_use: Some(PublicKeyUse::Signature),
                key_algorithm: Some(KeyAlgorithm::from(self.alg)),
                key_id: Some(self.kid.clone()),
                ..CommonParameters::default()
            },
            algorithm: self.public.clone(),
        }
    }

    /// The public JWKS (`{"keys": [jwk]}`) as a JSON value.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [self.jwk()] })
    }

    /// The public JWKS as pretty-printed JSON text, ready to write to a file.
    pub fn jwks_json(&self) -> String {
        let jwks = self.jwks();
        serde_json::to_string_pretty(&jwks).unwrap_or_else(|_| jwks.to_string())
    }

    /// Signs `claims` as a compact JWS with header `{alg, kid, typ: "at+jwt"}`.
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, AuthnError> {
        let mut header = Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        header.typ = Some("at+jwt".to_owned());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| AuthnError::DevKey(format!("signing failed: {e}")))
    }
}

impl DevKey {
    /// Signs `claims` with header `{alg, typ}`, plus `kid` or, when
    /// `embed_jwk`, the public key itself (`jwk`, as a DPoP proof carries it).
    pub fn sign_typed(
        &self,
        typ: &str,
        embed_jwk: bool,
        claims: &serde_json::Value,
    ) -> Result<String, AuthnError> {
        let mut header = Header::new(self.alg);
        header.typ = Some(typ.to_owned());
        if embed_jwk {
            header.jwk = Some(self.public_jwk_without_kid());
        } else {
            header.kid = Some(self.kid.clone());
        }
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| AuthnError::DevKey(format!("signing failed: {e}")))
    }

    /// The RFC 7638 thumbprint (SHA-256) of the public key, as DPoP's `jkt`.
    pub fn thumbprint(&self) -> Result<String, AuthnError> {
        self.public_jwk_without_kid()
            .thumbprint(ThumbprintHash::SHA256)
            .map_err(|_| fail("cannot compute the key thumbprint"))
    }
}

fn fail(what: &str) -> AuthnError {
    AuthnError::DevKey(what.to_owned())
}

/// PEM with 64-character lines (RFC 7468).
fn pem_encode(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for (i, c) in body.chars().enumerate() {
        if i > 0 && i % 64 == 0 {
            out.push('\n');
        }
        out.push(c);
    }
    out.push_str(&format!("\n-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ed25519_round_trips_through_pem() -> Result<(), AuthnError> {
        let key = generate_ed25519()?;
        assert!(key.pkcs8_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let again = DevKey::from_pem(&key.pkcs8_pem, key.kid.clone())?;
        assert_eq!(again.jwks(), key.jwks());
        let jwk = &key.jwks()["keys"][0];
        assert_eq!(jwk["kty"], "OKP");
        assert_eq!(jwk["crv"], "Ed25519");
        assert_eq!(jwk["alg"], "EdDSA");
        assert_eq!(jwk["use"], "sig");
        assert_eq!(jwk["kid"], key.kid.as_str());
        assert!(!format!("{key:?}").contains("PRIVATE"));
        Ok(())
    }

    #[test]
    fn ec_keys_load_back_with_their_curve() -> Result<(), AuthnError> {
        for alg in [Algorithm::ES256, Algorithm::ES384] {
            let key = DevKey::generate(alg)?;
            let again = DevKey::from_pem(&key.pkcs8_pem, "k")?;
            assert_eq!(again.algorithm(), alg);
        }
        Ok(())
    }

    #[test]
    fn hmac_is_not_a_dev_algorithm() {
        assert!(DevKey::generate(Algorithm::HS256).is_err());
    }
}
