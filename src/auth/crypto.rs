//! JWT signature verification with `ring`.
//!
//! `jsonwebtoken` verifies with the RustCrypto crates by default (`rust_crypto`): about 190 µs
//! for an RS256 token the first time it is seen (`benches/jwt_verify.rs`), most of it in the
//! `rsa` crate's big-number arithmetic. `ring` verifies the same signature several times faster
//! and is already compiled into the binary (rustls uses it), whereas `jsonwebtoken`'s other
//! backend, `aws_lc_rs`, would add the AWS-LC C library to every build. So this module is a
//! `jsonwebtoken` [`CryptoProvider`] whose verifiers for the RSA (PKCS#1 v1.5 and PSS) and ECDSA
//! algorithms call `ring`; everything else (HMAC and EdDSA verification, all signing, JWK
//! helpers) stays with RustCrypto. Call [`install`] before the first token is signed or verified
//! in the process.

use std::sync::LazyLock;

use jsonwebtoken::crypto::{CryptoProvider, JwtVerifier, rust_crypto};
use jsonwebtoken::errors::Result;
use jsonwebtoken::signature::{Error, Verifier};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use ring::signature as ring_sig;

/// The provider: `ring` verifiers where they exist, RustCrypto for the rest.
static PROVIDER: LazyLock<CryptoProvider> = LazyLock::new(|| CryptoProvider {
    signer_factory: rust_crypto::DEFAULT_PROVIDER.signer_factory,
    verifier_factory: verifier,
    jwk_utils: rust_crypto::DEFAULT_PROVIDER.jwk_utils.clone(),
});

/// Makes [`PROVIDER`] the process's `jsonwebtoken` provider. Returns `false` when another one
/// was installed (or used) first; verification then still works, only slower.
pub fn install() -> bool {
    let provider: &'static CryptoProvider = LazyLock::force(&PROVIDER);
    match provider.install_default() {
        Ok(()) => true,
        Err(current) => std::ptr::eq(current, provider),
    }
}

#[derive(Clone, Copy)]
enum Scheme {
    Rsa(&'static ring_sig::RsaParameters),
    Ecdsa(&'static ring_sig::EcdsaVerificationAlgorithm),
}

struct RingVerifier {
    algorithm: Algorithm,
    scheme: Scheme,
    key: DecodingKey,
}

impl Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> std::result::Result<(), Error> {
        let verified = match (self.scheme, self.key.kind()) {
            (Scheme::Rsa(params), DecodingKeyKind::RsaModulusExponent { n, e }) => {
                ring_sig::RsaPublicKeyComponents { n, e }.verify(params, msg, signature)
            }
            // PKCS#1 `RSAPublicKey` DER, what `DecodingKey::from_rsa_pem`/`from_rsa_der` keep.
            (Scheme::Rsa(params), DecodingKeyKind::SecretOrDer(der)) => {
                ring_sig::UnparsedPublicKey::new(params, der).verify(msg, signature)
            }
            // The uncompressed point, what `DecodingKey::from_ec_components` keeps.
            (Scheme::Ecdsa(params), DecodingKeyKind::SecretOrDer(point)) => {
                ring_sig::UnparsedPublicKey::new(params, point).verify(msg, signature)
            }
            (Scheme::Ecdsa(_), DecodingKeyKind::RsaModulusExponent { .. }) => {
                return Err(Error::new());
            }
        };
        verified.map_err(|_| Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

fn verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    use ring_sig::{
        ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, RSA_PKCS1_2048_8192_SHA256,
        RSA_PKCS1_2048_8192_SHA384, RSA_PKCS1_2048_8192_SHA512, RSA_PSS_2048_8192_SHA256,
        RSA_PSS_2048_8192_SHA384, RSA_PSS_2048_8192_SHA512,
    };
    let scheme = match algorithm {
        Algorithm::RS256 => Scheme::Rsa(&RSA_PKCS1_2048_8192_SHA256),
        Algorithm::RS384 => Scheme::Rsa(&RSA_PKCS1_2048_8192_SHA384),
        Algorithm::RS512 => Scheme::Rsa(&RSA_PKCS1_2048_8192_SHA512),
        Algorithm::PS256 => Scheme::Rsa(&RSA_PSS_2048_8192_SHA256),
        Algorithm::PS384 => Scheme::Rsa(&RSA_PSS_2048_8192_SHA384),
        Algorithm::PS512 => Scheme::Rsa(&RSA_PSS_2048_8192_SHA512),
        Algorithm::ES256 => Scheme::Ecdsa(&ECDSA_P256_SHA256_FIXED),
        Algorithm::ES384 => Scheme::Ecdsa(&ECDSA_P384_SHA384_FIXED),
        _ => return (rust_crypto::DEFAULT_PROVIDER.verifier_factory)(algorithm, key),
    };
    // A key of another family (checked by `jsonwebtoken::decode` before it gets here) fails
    // to parse as this scheme's public key, and so to verify.
    Ok(Box::new(RingVerifier {
        algorithm: *algorithm,
        scheme,
        key: key.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::crypto::JwtSigner;
    use jsonwebtoken::{EncodingKey, jwk::Jwk};
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    use rsa::traits::PublicKeyParts;

    use super::*;

    fn sign(algorithm: Algorithm, key: &EncodingKey, msg: &[u8]) -> Vec<u8> {
        let signer: Box<dyn JwtSigner> =
            (rust_crypto::DEFAULT_PROVIDER.signer_factory)(&algorithm, key).unwrap();
        signer.try_sign(msg).unwrap()
    }

    /// Every RSA and ECDSA algorithm: what RustCrypto signs, `ring` accepts, from every key form
    /// `jsonwebtoken` keeps (JWK components and PEM); a changed message or signature, another
    /// key or another key family is refused.
    #[test]
    fn ring_verifies_what_rust_crypto_signs_and_refuses_the_rest() {
        let msg = b"header.claims";
        let rsa = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let other_rsa = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let rsa_encoding =
            EncodingKey::from_rsa_pem(rsa.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes())
                .unwrap();
        let b64 = |bytes: Vec<u8>| {
            use base64::Engine;
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        };
        let rsa_from_jwk = |key: &rsa::RsaPrivateKey| {
            DecodingKey::from_rsa_components(
                &b64(key.n().to_bytes_be()),
                &b64(key.e().to_bytes_be()),
            )
            .unwrap()
        };
        let rsa_pem = DecodingKey::from_rsa_pem(
            rsa.to_public_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap()
                .as_bytes(),
        )
        .unwrap();
        let ec = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let ec_encoding =
            EncodingKey::from_ec_pem(ec.to_pkcs8_pem(LineEnding::LF).unwrap().as_bytes()).unwrap();
        let ec_jwk: Jwk = serde_json::from_str(&ec.public_key().to_jwk_string()).unwrap();
        let ec_decoding = DecodingKey::from_jwk(&ec_jwk).unwrap();
        let other_ec = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let other_ec_jwk: Jwk =
            serde_json::from_str(&other_ec.public_key().to_jwk_string()).unwrap();

        let cases = [
            (
                Algorithm::RS256,
                &rsa_encoding,
                rsa_from_jwk(&rsa),
                rsa_from_jwk(&other_rsa),
            ),
            (
                Algorithm::RS384,
                &rsa_encoding,
                rsa_pem.clone(),
                rsa_from_jwk(&other_rsa),
            ),
            (
                Algorithm::RS512,
                &rsa_encoding,
                rsa_from_jwk(&rsa),
                rsa_from_jwk(&other_rsa),
            ),
            (
                Algorithm::PS256,
                &rsa_encoding,
                rsa_pem.clone(),
                rsa_from_jwk(&other_rsa),
            ),
            (
                Algorithm::PS512,
                &rsa_encoding,
                rsa_from_jwk(&rsa),
                rsa_from_jwk(&other_rsa),
            ),
            (
                Algorithm::ES256,
                &ec_encoding,
                ec_decoding.clone(),
                DecodingKey::from_jwk(&other_ec_jwk).unwrap(),
            ),
        ];
        for (algorithm, encoding, decoding, other) in cases {
            let signature = sign(algorithm, encoding, msg);
            let verifier = verifier(&algorithm, &decoding).unwrap();
            assert!(verifier.verify(msg, &signature).is_ok(), "{algorithm:?}");
            assert!(
                verifier.verify(b"header.claimz", &signature).is_err(),
                "{algorithm:?}"
            );
            let mut flipped = signature.clone();
            flipped[7] ^= 1;
            assert!(verifier.verify(msg, &flipped).is_err(), "{algorithm:?}");
            let other = super::verifier(&algorithm, &other).unwrap();
            assert!(other.verify(msg, &signature).is_err(), "{algorithm:?}");
        }
        // A key of the other family verifies nothing.
        let rs256 = sign(Algorithm::RS256, &rsa_encoding, msg);
        let es256 = sign(Algorithm::ES256, &ec_encoding, msg);
        let wrong = verifier(&Algorithm::RS256, &ec_decoding).unwrap();
        assert!(wrong.verify(msg, &rs256).is_err());
        let wrong = verifier(&Algorithm::ES256, &rsa_from_jwk(&rsa)).unwrap();
        assert!(wrong.verify(msg, &es256).is_err());
        let wrong = verifier(&Algorithm::ES256, &rsa_pem).unwrap();
        assert!(wrong.verify(msg, &es256).is_err());
        // HMAC stays with RustCrypto, and works.
        let secret = EncodingKey::from_secret(b"secret");
        let signature = sign(Algorithm::HS256, &secret, msg);
        let hmac = verifier(&Algorithm::HS256, &DecodingKey::from_secret(b"secret")).unwrap();
        assert!(hmac.verify(msg, &signature).is_ok());
    }
}
