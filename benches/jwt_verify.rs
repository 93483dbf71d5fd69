//! The cost of verifying one ID token on the hot path (keys cached, no network).
//!
//! `cargo bench --bench jwt_verify`

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use kataven_hub::auth::oidc::{IssuerKeys, IssuerSettings, OidcCounters};
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::json;

const ISSUER: &str = "https://issuer.example";

fn keys() -> (EncodingKey, EncodingKey, JwkSet) {
    let rsa = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let rsa_pem = rsa::pkcs8::EncodePrivateKey::to_pkcs8_pem(&rsa, LineEnding::LF).unwrap();
    let ec = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
    let ec_pem = ec.to_pkcs8_pem(LineEnding::LF).unwrap();
    let mut ec_jwk: serde_json::Value =
        serde_json::from_str(&ec.public_key().to_jwk_string()).unwrap();
    ec_jwk["kid"] = "ec".into();
    ec_jwk["alg"] = "ES256".into();
    let jwks = json!({ "keys": [
        {
            "kty": "RSA", "alg": "RS256", "kid": "rsa",
            "n": URL_SAFE_NO_PAD.encode(rsa.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(rsa.e().to_bytes_be()),
        },
        ec_jwk,
    ]});
    (
        EncodingKey::from_rsa_pem(rsa_pem.as_bytes()).unwrap(),
        EncodingKey::from_ec_pem(ec_pem.as_bytes()).unwrap(),
        serde_json::from_value(jwks).unwrap(),
    )
}

fn token(key: &EncodingKey, alg: Algorithm, kid: &str) -> String {
    let now = chrono::Utc::now().timestamp();
    let claims = json!({
        "iss": ISSUER, "aud": ["hub"], "sub": "user-1", "iat": now, "exp": now + 3600,
        "urn:zitadel:iam:user:resourceowner:id": "org-1",
        "urn:zitadel:iam:org:project:roles": { "admin": { "org-1": "acme.com" } },
    });
    let header = Header {
        kid: Some(kid.into()),
        ..Header::new(alg)
    };
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

fn bench(c: &mut Criterion) {
    // As the binary does: `ring` verifies RSA and ECDSA signatures (src/auth/crypto.rs).
    assert!(kataven_hub::auth::crypto::install());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (rsa, ec, jwks) = keys();
    let issuer = IssuerKeys::local(
        IssuerSettings {
            issuer: ISSUER.into(),
            audiences: vec!["hub".into()],
            refresh_interval: Duration::from_secs(300),
            refresh_cooldown: Duration::from_secs(10),
            project_id: None,
        },
        OidcCounters::default(),
        move || {
            let jwks = jwks.clone();
            Box::pin(async move { Ok(jwks) })
        },
    );
    rt.block_on(issuer.refresh_now());
    let rs256 = token(&rsa, Algorithm::RS256, "rsa");
    let es256 = token(&ec, Algorithm::ES256, "ec");
    assert!(rt.block_on(issuer.verify(&rs256)).is_ok());
    assert!(rt.block_on(issuer.verify(&es256)).is_ok());

    let mut group = c.benchmark_group("jwt_verify");
    // A token seen for the first time: the full signature check.
    group.bench_function("rs256", |b| {
        b.to_async(&rt).iter(|| issuer.verify_uncached(&rs256))
    });
    group.bench_function("es256", |b| {
        b.to_async(&rt).iter(|| issuer.verify_uncached(&es256))
    });
    // The same token again (clients reuse their ID token): the verified-token cache.
    group.bench_function("rs256_seen_before", |b| {
        b.to_async(&rt).iter(|| issuer.verify(&rs256))
    });
    let junk = format!(
        "{}.e30.c2ln",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","kid":"nope"}"#)
    );
    group.bench_function("unknown_kid_in_cooldown", |b| {
        b.to_async(&rt).iter(|| issuer.verify(&junk))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
