//! The one test client: a persona in an account (a user, elevated or not, or an API key) that
//! sends requests through one builder and reads every answer into one [`Resp`].

use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgConnection;

use super::{TestApp, tenant_conn};

/// The resources' version prefix; [`Client::get`] and friends add it.
pub const V1: &str = "/api/v1";

/// A response, read completely: status, the headers (the ones we look at most also as fields),
/// and the body (JSON or `Null`).
pub struct Resp {
    pub status: u16,
    pub location: Option<String>,
    pub content_type: String,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub body: Value,
}

impl Resp {
    /// The error code, or `<none>`.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("<none>")
    }

    pub fn field(&self) -> Option<&str> {
        self.body["error"]["field"].as_str()
    }

    /// Asserts the status and returns the body.
    #[track_caller]
    pub fn ok(&self, status: u16) -> &Value {
        assert_eq!(self.status, status, "unexpected answer: {}", self.text);
        &self.body
    }

    /// Asserts a JSON error with `status`, `code` and `field` (`None`: no field in the body).
    #[track_caller]
    pub fn err(&self, status: u16, code: &str, field: Option<&str>, case: &str) {
        assert_eq!(
            (self.status, self.code(), self.field()),
            (status, code, field),
            "{case}: {}",
            self.text
        );
        assert!(
            self.content_type.starts_with("application/json"),
            "{case}: error content type {}",
            self.content_type
        );
        assert!(
            self.body["error"]["message"].is_string(),
            "{case}: {}",
            self.text
        );
    }
}

/// The `id` of a created resource.
pub fn id(v: &Value) -> String {
    v["id"].as_str().expect("id").to_owned()
}

/// Sends `rb` and reads the whole answer.
pub async fn send(rb: reqwest::RequestBuilder) -> Resp {
    let resp = rb.send().await.expect("request");
    let status = resp.status().as_u16();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let location = header("location");
    let content_type = header("content-type").unwrap_or_default();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Resp {
        status,
        location,
        content_type,
        headers,
        text,
        body,
    }
}

/// Who a [`Client`] is.
#[derive(Clone)]
pub enum Persona {
    /// A user with an ID token; `elevated` sends `X-Admin: true`.
    User { subject: String, elevated: bool },
    /// The account's `sk_live_` key (no `X-Account-ID`: the key carries its account).
    ApiKey(String),
}

/// A persona in one account: every request goes as it, into that account.
#[derive(Clone)]
pub struct Client<'a> {
    pub app: &'a TestApp,
    pub account: String,
    pub database: String,
    pub persona: Persona,
}

impl<'a> Client<'a> {
    /// A fresh account with `subject` as its admin, and that admin (not elevated).
    pub async fn new(app: &'a TestApp, prefix: &str, subject: &str) -> Self {
        let account = app.account_with_admin(prefix, subject).await;
        Self {
            app,
            account: account.slug,
            database: account.database_name,
            persona: Persona::User {
                subject: subject.to_owned(),
                elevated: false,
            },
        }
    }

    /// `subject` in an existing account `slug` (whose database is named as the account, as
    /// provisioning names it).
    pub fn in_account(app: &'a TestApp, slug: &str, subject: &str) -> Self {
        Self {
            app,
            account: slug.to_owned(),
            database: slug.to_owned(),
            persona: Persona::User {
                subject: subject.to_owned(),
                elevated: false,
            },
        }
    }

    /// Another user of the same account (as a member must be added to the catalog first).
    pub fn as_user(&self, subject: &str) -> Self {
        Self {
            persona: Persona::User {
                subject: subject.to_owned(),
                elevated: false,
            },
            ..self.clone()
        }
    }

    /// The same user asking for elevation (`X-Admin: true`).
    pub fn elevated(&self) -> Self {
        let Persona::User { subject, .. } = &self.persona else {
            panic!("only users elevate");
        };
        Self {
            persona: Persona::User {
                subject: subject.clone(),
                elevated: true,
            },
            ..self.clone()
        }
    }

    /// The API key `key`, in the account it names (`sk_live_<account>_<secret>`).
    pub fn api_key(app: &'a TestApp, key: &str) -> Self {
        let account = key
            .strip_prefix("sk_live_")
            .and_then(|rest| rest.rsplit_once('_'))
            .map_or("", |(account, _)| account);
        Self {
            persona: Persona::ApiKey(key.to_owned()),
            ..Self::in_account(app, account, "")
        }
    }

    /// A request to a full path (no version prefix added).
    pub fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        match &self.persona {
            Persona::User { subject, elevated } => {
                let rb = self.app.as_user(method, path, &self.account, subject);
                if *elevated {
                    rb.header("X-Admin", "true")
                } else {
                    rb
                }
            }
            Persona::ApiKey(key) => self
                .app
                .client
                .request(method, self.app.url(path))
                .bearer_auth(key),
        }
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Resp {
        let mut rb = self.req(method, path);
        if let Some(body) = body {
            rb = rb.json(body);
        }
        send(rb).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.call(Method::GET, &format!("{V1}{path}"), None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Resp {
        self.call(Method::POST, &format!("{V1}{path}"), Some(&body))
            .await
    }

    pub async fn put(&self, path: &str, body: Value) -> Resp {
        self.call(Method::PUT, &format!("{V1}{path}"), Some(&body))
            .await
    }

    pub async fn patch(&self, path: &str, body: Value) -> Resp {
        self.call(Method::PATCH, &format!("{V1}{path}"), Some(&body))
            .await
    }

    pub async fn delete(&self, path: &str) -> Resp {
        self.call(Method::DELETE, &format!("{V1}{path}"), None)
            .await
    }

    /// POSTs `body` to `path`, asserting 201, and returns the created resource.
    pub async fn create(&self, path: &str, body: Value) -> Value {
        let resp = self.post(path, body).await;
        resp.ok(201).clone()
    }

    pub async fn agent(&self, name: &str) -> Value {
        self.create("/agents", json!({ "name": name })).await
    }

    /// The agents list, asserting 200.
    pub async fn agents(&self) -> Vec<Value> {
        self.get("/agents")
            .await
            .ok(200)
            .as_array()
            .unwrap()
            .clone()
    }

    /// A superuser connection to this account's tenant database.
    pub async fn db(&self) -> PgConnection {
        tenant_conn(&self.database).await
    }
}

// ---------------------------------------------------------------------------------------------
// The widget (SPEC §5): a page that embeds it, and the account's server minting user tokens.
// ---------------------------------------------------------------------------------------------

/// The public widget endpoints' prefix.
pub const WIDGET: &str = "/api/v1/widget";

impl Resp {
    /// The first value of header `name`, if any (and readable as text).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Every value of header `name`, joined with `,` (as for `Vary`).
    pub fn header_all(&self, name: &str) -> String {
        self.headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// A page that embeds the widget: its `pk_live_` key and the `Origin` it sends (`None`: no
/// `Origin` header, as a script outside a browser may).
#[derive(Clone)]
pub struct Page<'a> {
    pub app: &'a TestApp,
    pub key: String,
    pub origin: Option<String>,
}

impl<'a> Page<'a> {
    /// The widget with `key` on a page of `origin`.
    pub fn new(app: &'a TestApp, key: &str, origin: &str) -> Self {
        Self {
            app,
            key: key.to_owned(),
            origin: Some(origin.to_owned()),
        }
    }

    /// The same key on a page of another origin.
    pub fn from(&self, origin: &str) -> Self {
        Self {
            origin: Some(origin.to_owned()),
            ..self.clone()
        }
    }

    /// The same key sent without an `Origin` header.
    pub fn without_origin(&self) -> Self {
        Self {
            origin: None,
            ..self.clone()
        }
    }

    /// Another key on the same page.
    pub fn with_key(&self, key: &str) -> Self {
        Self {
            key: key.to_owned(),
            ..self.clone()
        }
    }

    /// The same page talking to another instance of the deployment.
    pub fn on(&self, app: &'a TestApp) -> Self {
        Self {
            app,
            ..self.clone()
        }
    }

    /// A request to a full path, with the page's `Origin`.
    pub fn req(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.with_origin(self.app.client.request(method, self.app.url(path)))
    }

    fn with_origin(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.origin {
            Some(origin) => rb.header("Origin", origin),
            None => rb,
        }
    }

    /// POSTs `body` to a full path.
    pub async fn post(&self, path: &str, body: Value) -> Resp {
        send(self.req(Method::POST, path).json(&body)).await
    }

    /// `GET /widget/config` with the key (and `agent_id` when given), not yet sent.
    pub fn config_req(&self, agent: Option<&str>) -> reqwest::RequestBuilder {
        let mut query = vec![("client_key", self.key.as_str())];
        if let Some(agent) = agent {
            query.push(("agent_id", agent));
        }
        let url = url::Url::parse_with_params(&self.app.url(&format!("{WIDGET}/config")), &query)
            .expect("config URL");
        self.with_origin(self.app.client.get(url))
    }

    pub async fn config(&self, agent: Option<&str>) -> Resp {
        send(self.config_req(agent)).await
    }

    /// `POST /widget/auth/guest` (`agent: None` sends `"agent_id": null`).
    pub async fn guest(&self, agent: Option<&str>) -> Resp {
        let body = json!({ "client_key": self.key, "agent_id": agent });
        self.post(&format!("{WIDGET}/auth/guest"), body).await
    }

    /// A guest session token, asserting success.
    pub async fn guest_session(&self, agent: Option<&str>) -> String {
        token(&self.guest(agent).await, "token")
    }

    /// `POST /widget/auth/exchange` of a user token for a user session.
    pub async fn exchange(&self, user_token: &str) -> Resp {
        let body = json!({ "client_key": self.key, "user_token": user_token });
        self.post(&format!("{WIDGET}/auth/exchange"), body).await
    }

    /// A user session for `user_token`, asserting success.
    pub async fn user_session(&self, user_token: &str) -> String {
        token(&self.exchange(user_token).await, "token")
    }

    /// `POST /widget/auth/refresh` of a session token (the key is not sent: the token names it).
    pub async fn refresh(&self, session: &str) -> Resp {
        let body = json!({ "token": session });
        self.post(&format!("{WIDGET}/auth/refresh"), body).await
    }

    /// Refreshes `session`, asserting success, and returns the new token.
    pub async fn refreshed(&self, session: &str) -> String {
        token(&self.refresh(session).await, "token")
    }
}

/// The string `name` of a 200 answer.
#[track_caller]
fn token(resp: &Resp, name: &str) -> String {
    resp.ok(200)[name].as_str().expect(name).to_owned()
}

impl Client<'_> {
    /// `POST /widget/auth/user-token` as this persona (the account's server, with its API key).
    pub async fn user_token(&self, body: Value) -> Resp {
        self.call(
            Method::POST,
            &format!("{WIDGET}/auth/user-token"),
            Some(&body),
        )
        .await
    }

    /// A single-use user token for `external` (naming `agent` when given), asserting success
    /// and its 300-second lifetime.
    pub async fn mint_user_token(&self, external: &str, agent: Option<&str>) -> String {
        let resp = self
            .user_token(json!({
                "external_user_id": external,
                "display_name": "Jo",
                "email": "jo@example.com",
                "agent_id": agent,
            }))
            .await;
        assert_eq!(resp.ok(200)["expires_in"], 300, "{}", resp.text);
        token(&resp, "user_token")
    }
}

// ---- for the api_keys, identity, public, limits and login tests ----------------------------

impl Client<'_> {
    /// Makes `subject` a member of this account with `role` (through the catalog, as the CLI
    /// would) and returns them, not elevated.
    pub async fn with_member(
        &self,
        subject: &str,
        role: kataven_hub::tenancy::catalog::Role,
    ) -> Self {
        self.app
            .state
            .catalog
            .upsert_member(&self.account.parse().expect("slug"), subject, role)
            .await
            .expect("member");
        self.as_user(subject)
    }
}

/// Another instance of `app`'s deployment: the same system database, trusting the same issuer,
/// its configuration changed by `f`.
pub async fn second_instance(
    app: &TestApp,
    f: impl FnOnce(&mut kataven_hub::config::Config),
) -> TestApp {
    let issuer = app.issuer.issuer();
    TestApp::builder()
        .await
        .database_url(&super::system_url_of(app))
        .config(|c| {
            c.oidc_issuer = Some(issuer);
            f(c);
        })
        .spawn()
        .await
}
