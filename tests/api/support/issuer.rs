//! A small but real OpenID Connect issuer standing in for Zitadel, which cannot run here.
//!
//! It serves Zitadel's paths — discovery, the JWKS and userinfo — on a real port, signs tokens
//! with real RSA (RS256) and EC P-256 (ES256) keys, and lets tests rotate keys, forge tokens,
//! take the issuer down and count what the application fetched.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};

/// The client id the application is configured with; the `aud` of every valid token.
pub const AUDIENCE: &str = "kataven-test";

const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";
const KEYS_PATH: &str = "/oauth/v2/keys";
const USERINFO_PATH: &str = "/oidc/v1/userinfo";

/// A private key able to sign, with its public half as JWK members (everything but `kid`).
struct SigningKey {
    alg: Algorithm,
    encoding: EncodingKey,
    public_jwk: Value,
}

impl SigningKey {
    fn rsa() -> (SigningKey, String) {
        let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("RSA key");
        let pem = private.to_pkcs8_pem(LineEnding::LF).expect("RSA PKCS#8");
        let public = private.to_public_key();
        let public_pem = public.to_public_key_pem(LineEnding::LF).expect("RSA SPKI");
        let key = SigningKey {
            alg: Algorithm::RS256,
            encoding: EncodingKey::from_rsa_pem(pem.as_bytes()).expect("RSA encoding key"),
            public_jwk: json!({
                "kty": "RSA",
                "use": "sig",
                "alg": "RS256",
                "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
                "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
            }),
        };
        (key, public_pem)
    }

    fn ec() -> SigningKey {
        use p256::elliptic_curve::sec1::ToEncodedPoint;
        use p256::pkcs8::EncodePrivateKey;

        let secret = p256::SecretKey::random(&mut p256::elliptic_curve::rand_core::OsRng);
        let pem = secret.to_pkcs8_pem(LineEnding::LF).expect("EC PKCS#8");
        let point = secret.public_key().to_encoded_point(false);
        // Uncompressed SEC1 coordinates are fixed-width: 32 bytes each, already left-padded.
        let (x, y) = (point.x().expect("x"), point.y().expect("y"));
        SigningKey {
            alg: Algorithm::ES256,
            encoding: EncodingKey::from_ec_pem(pem.as_bytes()).expect("EC encoding key"),
            public_jwk: json!({
                "kty": "EC",
                "use": "sig",
                "alg": "ES256",
                "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(x),
                "y": URL_SAFE_NO_PAD.encode(y),
            }),
        }
    }

    fn jwk(&self, kid: &str) -> Value {
        let mut jwk = self.public_jwk.clone();
        jwk["kid"] = Value::from(kid);
        jwk
    }

    fn sign(&self, kid: &str, typ: Option<&str>, claims: &Value) -> String {
        let mut header = Header {
            kid: Some(kid.to_owned()),
            ..Header::new(self.alg)
        };
        if let Some(typ) = typ {
            header.typ = Some(typ.to_owned());
        }
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("sign token")
    }
}

/// rsa-1 and ec-1, generated once per process: RSA-2048 generation is slow.
struct BaseKeys {
    rsa: Arc<SigningKey>,
    rsa_public_pem: String,
    ec: Arc<SigningKey>,
}

static BASE_KEYS: OnceLock<BaseKeys> = OnceLock::new();

fn base_keys() -> &'static BaseKeys {
    BASE_KEYS.get_or_init(|| {
        let (rsa, rsa_public_pem) = SigningKey::rsa();
        BaseKeys {
            rsa: Arc::new(rsa),
            rsa_public_pem,
            ec: Arc::new(SigningKey::ec()),
        }
    })
}

#[derive(Default)]
struct Keys {
    /// Every key the issuer can sign with, published or not.
    signing: HashMap<String, Arc<SigningKey>>,
    /// The kids in the JWKS, in publication order.
    published: Vec<String>,
    /// Access token → userinfo answer.
    userinfo: HashMap<String, Value>,
}

struct Shared {
    issuer: String,
    keys: Mutex<Keys>,
    down: AtomicBool,
    jwks_fetches: AtomicUsize,
    discovery_fetches: AtomicUsize,
    userinfo_calls: AtomicUsize,
    requests: AtomicUsize,
}

pub struct TestIssuer {
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl TestIssuer {
    /// Starts an axum server on 127.0.0.1:0 with an RSA-2048 key "rsa-1" (RS256) and an EC
    /// P-256 key "ec-1" (ES256) published in its JWKS.
    pub async fn start() -> TestIssuer {
        // As the binary does, before the first token is signed or verified.
        kataven_hub::auth::crypto::install();
        let base = tokio::task::spawn_blocking(base_keys)
            .await
            .expect("generate the base keys");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the issuer");
        let addr = listener.local_addr().expect("issuer address");
        let mut keys = Keys::default();
        for (kid, key) in [("rsa-1", &base.rsa), ("ec-1", &base.ec)] {
            keys.signing.insert(kid.to_owned(), Arc::clone(key));
            keys.published.push(kid.to_owned());
        }
        let shared = Arc::new(Shared {
            issuer: format!("http://{addr}"),
            keys: Mutex::new(keys),
            down: AtomicBool::new(false),
            jwks_fetches: AtomicUsize::new(0),
            discovery_fetches: AtomicUsize::new(0),
            userinfo_calls: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
        });
        let router = Router::new()
            .route(DISCOVERY_PATH, get(discovery))
            .route(KEYS_PATH, get(jwks))
            .route(USERINFO_PATH, get(userinfo).post(userinfo))
            .fallback(|| async { StatusCode::NOT_FOUND })
            .layer(middleware::from_fn_with_state(
                Arc::clone(&shared),
                count_and_gate,
            ))
            .with_state(Arc::clone(&shared));
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.expect("issuer server");
        });
        TestIssuer { shared, server }
    }

    /// "http://127.0.0.1:PORT" (no trailing slash): the `issuer` in discovery and the `iss`
    /// of tokens.
    pub fn issuer(&self) -> String {
        self.shared.issuer.clone()
    }

    /// Valid claims for `sub`, good for ten minutes.
    pub fn claims(&self, sub: &str) -> Value {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs();
        json!({
            "iss": self.shared.issuer,
            "aud": [AUDIENCE],
            "sub": sub,
            "iat": now,
            "exp": now + 600,
            "email": format!("{sub}@example.test"),
        })
    }

    /// Signs `claims` with the key `kid` (RS256 for RSA keys, ES256 for EC keys), naming `kid`
    /// in the header. Panics if the issuer never had such a key.
    pub fn sign(&self, kid: &str, claims: &Value) -> String {
        self.sign_typed(kid, "JWT", claims)
    }

    /// [`Self::sign`] with the header's `typ` set to `typ` (`at+jwt`: an RFC 9068 access token).
    pub fn sign_typed(&self, kid: &str, typ: &str, claims: &Value) -> String {
        let key = self
            .shared
            .keys
            .lock()
            .signing
            .get(kid)
            .cloned()
            .unwrap_or_else(|| panic!("the test issuer has no key {kid:?}"));
        key.sign(kid, Some(typ), claims)
    }

    /// `sign("rsa-1", &claims(sub))`.
    pub fn token(&self, sub: &str) -> String {
        self.sign("rsa-1", &self.claims(sub))
    }

    /// Signs RS256 with a fresh key that is NOT in the JWKS, but names `kid` in the header: a
    /// forgery claiming a published kid.
    pub fn sign_with_unpublished_key(&self, kid: &str, claims: &Value) -> String {
        SigningKey::rsa().0.sign(kid, None, claims)
    }

    /// Generates a new key (RSA-2048 when `rsa`, else EC P-256) and publishes it under `kid`,
    /// replacing any key of that kid.
    pub fn rotate_in(&self, kid: &str, rsa: bool) {
        let key = Arc::new(if rsa {
            SigningKey::rsa().0
        } else {
            SigningKey::ec()
        });
        let mut keys = self.shared.keys.lock();
        keys.signing.insert(kid.to_owned(), key);
        if !keys.published.iter().any(|k| k == kid) {
            keys.published.push(kid.to_owned());
        }
    }

    /// Removes `kid` from the JWKS; `sign` can still use its private key.
    pub fn unpublish(&self, kid: &str) {
        self.shared.keys.lock().published.retain(|k| k != kid);
    }

    /// While down, every endpoint of the issuer answers 503.
    pub fn set_down(&self, down: bool) {
        self.shared.down.store(down, Ordering::SeqCst);
    }

    pub fn jwks_fetches(&self) -> usize {
        self.shared.jwks_fetches.load(Ordering::SeqCst)
    }

    pub fn discovery_fetches(&self) -> usize {
        self.shared.discovery_fetches.load(Ordering::SeqCst)
    }

    pub fn userinfo_calls(&self) -> usize {
        self.shared.userinfo_calls.load(Ordering::SeqCst)
    }

    /// Every request the issuer received, whatever its path.
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// What userinfo answers (200, JSON) for `Authorization: Bearer <access_token>`; any other
    /// bearer gets 401 with `WWW-Authenticate: Bearer error="invalid_token"`.
    pub fn set_userinfo(&self, access_token: &str, claims: Value) {
        self.shared
            .keys
            .lock()
            .userinfo
            .insert(access_token.to_owned(), claims);
    }

    /// rsa-1's public key as SPKI PEM ("-----BEGIN PUBLIC KEY-----"), for the
    /// HS256-signed-with-the-public-key attack.
    pub fn rsa_public_pem(&self) -> String {
        base_keys().rsa_public_pem.clone()
    }
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// Counts requests (even while down), then answers 503 if down.
async fn count_and_gate(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    shared.requests.fetch_add(1, Ordering::SeqCst);
    let counter = match req.uri().path() {
        DISCOVERY_PATH => Some(&shared.discovery_fetches),
        KEYS_PATH => Some(&shared.jwks_fetches),
        USERINFO_PATH => Some(&shared.userinfo_calls),
        _ => None,
    };
    if let Some(counter) = counter {
        counter.fetch_add(1, Ordering::SeqCst);
    }
    if shared.down.load(Ordering::SeqCst) {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"error": "temporarily_unavailable"})),
        )
            .into_response();
    }
    next.run(req).await
}

async fn discovery(State(shared): State<Arc<Shared>>) -> axum::Json<Value> {
    let issuer = &shared.issuer;
    axum::Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/oauth/v2/authorize"),
        "token_endpoint": format!("{issuer}/oauth/v2/token"),
        "introspection_endpoint": format!("{issuer}/oauth/v2/introspect"),
        "userinfo_endpoint": format!("{issuer}{USERINFO_PATH}"),
        "revocation_endpoint": format!("{issuer}/oauth/v2/revoke"),
        "end_session_endpoint": format!("{issuer}/oidc/v1/end_session"),
        "jwks_uri": format!("{issuer}{KEYS_PATH}"),
        "scopes_supported": ["openid", "profile", "email"],
        "response_types_supported": ["code", "id_token", "id_token token"],
        "grant_types_supported": [
            "authorization_code",
            "implicit",
            "refresh_token",
            "client_credentials",
            "urn:ietf:params:oauth:grant-type:jwt-bearer",
        ],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
        "token_endpoint_auth_methods_supported": [
            "none",
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
        ],
        "code_challenge_methods_supported": ["S256"],
        "claims_supported": [
            "sub", "aud", "exp", "iat", "iss", "auth_time", "nonce", "acr", "amr", "c_hash",
            "at_hash", "act", "scopes", "client_id", "azp", "preferred_username", "name",
            "family_name", "given_name", "locale", "email", "email_verified",
        ],
    }))
}

async fn jwks(State(shared): State<Arc<Shared>>) -> axum::Json<Value> {
    let keys = shared.keys.lock();
    let jwks: Vec<Value> = keys
        .published
        .iter()
        .map(|kid| keys.signing[kid].jwk(kid))
        .collect();
    axum::Json(json!({ "keys": jwks }))
}

async fn userinfo(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let answer = bearer.and_then(|token| shared.keys.lock().userinfo.get(token).cloned());
    match answer {
        Some(claims) => axum::Json(claims).into_response(),
        None => (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            )],
        )
            .into_response(),
    }
}

#[tokio::test]
async fn test_issuer_serves_discovery_keys_and_userinfo() {
    use jsonwebtoken::jwk::{Jwk, JwkSet};
    use jsonwebtoken::{DecodingKey, Validation};

    let issuer = TestIssuer::start().await;
    let base = issuer.issuer();
    assert!(base.starts_with("http://127.0.0.1:") && !base.ends_with('/'));
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("{base}{path}"));

    // Discovery.
    let resp = get(DISCOVERY_PATH).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let doc: Value = resp.json().await.unwrap();
    assert_eq!(doc["issuer"], base.as_str());
    assert_eq!(doc["jwks_uri"], format!("{base}/oauth/v2/keys"));
    assert_eq!(doc["userinfo_endpoint"], format!("{base}/oidc/v1/userinfo"));
    assert_eq!(doc["token_endpoint"], format!("{base}/oauth/v2/token"));
    assert_eq!(
        doc["authorization_endpoint"],
        format!("{base}/oauth/v2/authorize")
    );
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        json!(["RS256", "ES256"])
    );
    assert_eq!(issuer.discovery_fetches(), 1);
    // The document is what the `openidconnect` crate (used by the application) accepts.
    let metadata: openidconnect::core::CoreProviderMetadata =
        serde_json::from_value(doc.clone()).expect("openidconnect parses discovery");
    assert_eq!(metadata.issuer().as_str(), base);

    // Keys.
    let fetch_keys = || async {
        let resp = get(KEYS_PATH).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.json::<Value>().await.unwrap()
    };
    let keys = fetch_keys().await;
    let raw = keys["keys"].as_array().unwrap();
    assert_eq!(raw.len(), 2, "{keys}");
    assert_eq!(
        (
            &raw[0]["kid"],
            &raw[0]["kty"],
            &raw[0]["alg"],
            &raw[0]["use"]
        ),
        (
            &json!("rsa-1"),
            &json!("RSA"),
            &json!("RS256"),
            &json!("sig")
        )
    );
    assert_eq!(
        (
            &raw[1]["kid"],
            &raw[1]["kty"],
            &raw[1]["alg"],
            &raw[1]["crv"]
        ),
        (
            &json!("ec-1"),
            &json!("EC"),
            &json!("ES256"),
            &json!("P-256")
        )
    );
    for coordinate in ["x", "y"] {
        let bytes = URL_SAFE_NO_PAD
            .decode(raw[1][coordinate].as_str().unwrap())
            .unwrap();
        assert_eq!(bytes.len(), 32);
    }
    assert_eq!(issuer.jwks_fetches(), 1);
    let set: JwkSet = serde_json::from_value(keys.clone()).unwrap();
    let oidc_set: openidconnect::core::CoreJsonWebKeySet =
        serde_json::from_value(keys.clone()).expect("openidconnect parses the JWKS");
    assert_eq!(oidc_set.keys().len(), 2);
    let jwk = |kid: &str| -> Jwk { set.find(kid).unwrap().clone() };

    let validation = |alg: Algorithm| {
        let mut v = Validation::new(alg);
        v.set_issuer(&[&base]);
        v.set_audience(&[AUDIENCE]);
        v
    };
    let verify = |token: &str, jwk: &Jwk, alg: Algorithm| {
        jsonwebtoken::decode::<Value>(
            token,
            &DecodingKey::from_jwk(jwk).unwrap(),
            &validation(alg),
        )
    };

    // RS256 with rsa-1.
    let token = issuer.token("alice");
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(
        (header.alg, header.kid.as_deref()),
        (Algorithm::RS256, Some("rsa-1"))
    );
    let data = verify(&token, &jwk("rsa-1"), Algorithm::RS256).expect("RS256 verifies");
    assert_eq!(data.claims["sub"], "alice");
    assert_eq!(data.claims["email"], "alice@example.test");
    assert_eq!(data.claims["aud"], json!([AUDIENCE]));

    // ES256 with ec-1.
    let token = issuer.sign("ec-1", &issuer.claims("bob"));
    let header = jsonwebtoken::decode_header(&token).unwrap();
    assert_eq!(
        (header.alg, header.kid.as_deref()),
        (Algorithm::ES256, Some("ec-1"))
    );
    let data = verify(&token, &jwk("ec-1"), Algorithm::ES256).expect("ES256 verifies");
    assert_eq!(data.claims["sub"], "bob");

    // A forgery naming rsa-1 does not verify against the published rsa-1.
    let forged = issuer.sign_with_unpublished_key("rsa-1", &issuer.claims("mallory"));
    assert_eq!(
        jsonwebtoken::decode_header(&forged).unwrap().kid.as_deref(),
        Some("rsa-1")
    );
    assert!(verify(&forged, &jwk("rsa-1"), Algorithm::RS256).is_err());

    // HS256 "signed" with the RSA public key is refused by an RS256 validation.
    let pem = issuer.rsa_public_pem();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    let hs = jsonwebtoken::encode(
        &Header {
            kid: Some("rsa-1".into()),
            ..Header::new(Algorithm::HS256)
        },
        &issuer.claims("mallory"),
        &EncodingKey::from_secret(pem.as_bytes()),
    )
    .unwrap();
    assert!(verify(&hs, &jwk("rsa-1"), Algorithm::RS256).is_err());

    // Rotation: a new EC key is published and verifies; unpublished keys disappear but sign.
    issuer.rotate_in("ec-2", false);
    issuer.unpublish("rsa-1");
    let keys = fetch_keys().await;
    let set: JwkSet = serde_json::from_value(keys.clone()).unwrap();
    let kids: Vec<_> = set
        .keys
        .iter()
        .filter_map(|k| k.common.key_id.clone())
        .collect();
    assert_eq!(kids, ["ec-1", "ec-2"], "{keys}");
    let token = issuer.sign("ec-2", &issuer.claims("carol"));
    verify(&token, set.find("ec-2").unwrap(), Algorithm::ES256).expect("rotated key verifies");
    assert!(!issuer.sign("rsa-1", &issuer.claims("dave")).is_empty());
    assert_eq!(issuer.jwks_fetches(), 2);

    // Userinfo.
    issuer.set_userinfo(
        "at-alice",
        json!({"sub": "alice", "email": "alice@example.test"}),
    );
    let resp = get(USERINFO_PATH)
        .bearer_auth("at-alice")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap()["sub"], "alice");
    let resp = get(USERINFO_PATH)
        .bearer_auth("at-nobody")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()[header::WWW_AUTHENTICATE],
        "Bearer error=\"invalid_token\""
    );
    assert_eq!(issuer.userinfo_calls(), 2);

    // Down: everything answers 503, and the fetches still count.
    issuer.set_down(true);
    for path in [DISCOVERY_PATH, KEYS_PATH, USERINFO_PATH, "/oauth/v2/token"] {
        let resp = get(path).bearer_auth("at-alice").send().await.unwrap();
        assert_eq!(resp.status(), 503, "{path}");
    }
    assert_eq!(
        (
            issuer.discovery_fetches(),
            issuer.jwks_fetches(),
            issuer.userinfo_calls()
        ),
        (2, 3, 3)
    );
    issuer.set_down(false);
    assert_eq!(get(KEYS_PATH).send().await.unwrap().status(), 200);
}
