//! The API description, derived from the handlers: a handler is routed only through [`Routes`],
//! which takes it together with its `#[utoipa::path]` description, so registering a route
//! documents it (request and answer schemas come from the Rust types).
//!
//! Error answers share one response component per status, all with the body of
//! [`super::error`]; a handler lists the ones it can give. The document of both listeners is
//! built once, in a fixed order, and served as `/openapi.json` on the internal listener.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::LazyLock;

use axum::Router;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::schema::{
    AnyOfBuilder, ArrayBuilder, KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, SchemaType,
    Type,
};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::server::Server;
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder, Schema};
use utoipa::{IntoResponses, PartialSchema, ToSchema};
use utoipa_axum::router::{OpenApiRouter, UtoipaMethodRouter};

use super::AppState;
use super::error::ErrorBody;

/// The routes of one listener with their description. There is no way to route a handler
/// without its description: [`Routes::route`] takes what `utoipa_axum::routes!` makes of a
/// handler annotated with `#[utoipa::path]`.
pub struct Routes(OpenApiRouter<AppState>);

impl Default for Routes {
    fn default() -> Self {
        Self::new()
    }
}

impl Routes {
    /// No routes.
    pub fn new() -> Self {
        Self(OpenApiRouter::default())
    }

    /// Routes the handlers of `routes!(...)` at the paths and methods they document.
    pub fn route(self, routes: UtoipaMethodRouter<AppState>) -> Self {
        Self(self.0.routes(routes))
    }

    /// Both sets of routes.
    pub fn merge(self, other: Routes) -> Self {
        Self(self.0.merge(other.0))
    }

    /// The router and the description of exactly its routes.
    pub fn split(self) -> (Router<AppState>, OpenApi) {
        self.0.split_for_parts()
    }

    /// The description of the routes.
    pub fn description(self) -> OpenApi {
        self.0.into_openapi()
    }
}

/// Where the public listener answers by default (`KEYHOST_PUBLIC_ADDR`).
pub const PUBLIC_SERVER: &str = "http://127.0.0.1:8080";
/// Where the internal listener answers by default (`KEYHOST_INTERNAL_ADDR`).
pub const INTERNAL_SERVER: &str = "http://127.0.0.1:8081";

/// The description of both listeners: every path of the internal listener under the document's
/// server, the paths of the public listener with `servers` of their own (both, for a path the
/// two share).
pub fn document() -> OpenApi {
    use utoipa::OpenApi as _;
    let public = super::public_routes().description();
    let internal = super::internal_routes().description();
    let on_public: BTreeSet<String> = public.paths.paths.keys().cloned().collect();
    let on_internal: BTreeSet<String> = internal.paths.paths.keys().cloned().collect();
    let mut doc = ApiDoc::openapi();
    doc.servers = Some(vec![internal_server()]);
    doc.merge(internal);
    doc.merge(public);
    for (path, item) in doc.paths.paths.iter_mut() {
        if on_public.contains(path) {
            let mut servers = vec![public_server()];
            if on_internal.contains(path) {
                servers.push(internal_server());
            }
            item.servers = Some(servers);
        }
    }
    finish(&mut doc);
    doc
}

fn public_server() -> Server {
    let mut s = Server::new(PUBLIC_SERVER);
    s.description = Some("public listener (JWKS)".into());
    s
}

fn internal_server() -> Server {
    let mut s = Server::new(INTERNAL_SERVER);
    s.description = Some("internal listener (tokens, issuance, webhooks, admin)".into());
    s
}

/// The document as served: built once, serialised once.
pub fn json() -> &'static str {
    static JSON: LazyLock<String> = LazyLock::new(|| {
        serde_json::to_string_pretty(&document()).expect("the API description serialises")
    });
    &JSON
}

/// Error responses, security schemes and the schemas no handler names.
fn finish(doc: &mut OpenApi) {
    let components = doc.components.get_or_insert_with(Default::default);
    for answer in ERROR_ANSWERS {
        components
            .responses
            .insert(answer.name.to_owned(), RefOr::T(answer.response()));
    }
    components
        .schemas
        .insert(ErrorBody::name().into_owned(), ErrorBody::schema());
    components
        .schemas
        .insert(IssuanceState::name().into_owned(), IssuanceState::schema());
    components.add_security_scheme(
        "adminToken",
        SecurityScheme::Http(
            Http::builder()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "The admin token (`KEYHOST_ADMIN_TOKEN`, or generated at first start into \
                     `keys/admin.token`: kha_<secret>), as `Authorization: Bearer <token>`. \
                     Failed attempts are throttled per address (`KEYHOST_AUTH_FAILURE_LIMIT`).",
                ))
                .build(),
        ),
    );
    components.add_security_scheme(
        "clientKey",
        SecurityScheme::Http(
            Http::builder()
                .scheme(HttpAuthScheme::Bearer)
                .description(Some(
                    "An API client key, khc_<client id>_<secret> (made by POST /admin/clients \
                     and shown once), as `Authorization: Bearer <key>`.",
                ))
                .build(),
        ),
    );
    components.schemas.insert(
        JSON_VALUE.to_owned(),
        json_value(true)
            .description(Some(
                "any JSON value; integers of at most 64 bits, other numbers exact as 64-bit floats \
                 (keyhost refuses a number that would change on its way)",
            ))
            .into(),
    );
    // Bodies whose unknown members are ignored (webhooks, whose senders add members as they
    // please): they may hold any value keyhost accepts.
    for open in ["KycComplete", "IdenfyWebhook", "IdenfyStatus"] {
        if let Some(RefOr::T(Schema::Object(schema))) = components.schemas.get_mut(open) {
            schema.additional_properties = Some(Box::new(Ref::from_schema_name(JSON_VALUE).into()));
        }
    }
    // Domain strings documented as their enumerations (keyhost stores them as text).
    if let Some(RefOr::T(Schema::Object(issuance))) = components.schemas.get_mut("Issuance")
        && let Some(state) = issuance.properties.get_mut("state")
    {
        *state = Ref::from_schema_name(IssuanceState::name()).into();
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "keyhost",
        description = "Partner-key server for AIR Kit: JWKS with publish-before-use rotation, \
                       Partner JWT minting, issuance proxy. Every error body is \
                       {\"identifier\", \"message\"} with iDenfy's identifiers. An unknown path \
                       is answered 404 `NOT_FOUND` and a method a path does not list 405 \
                       `METHOD_NOT_ALLOWED` (with `Allow`); HEAD is answered wherever GET is."
    ),
    tags(
        (name = "public", description = "The public listener: the JWKS and liveness"),
        (name = "operations", description = "Readiness, metrics and this document"),
        (name = "tokens", description = "Partner JWTs for API clients"),
        (name = "issuance", description = "The issuance proxy to AIR Kit"),
        (name = "webhooks", description = "KYC results that trigger issuance"),
        (name = "admin", description = "Keys, clients, issuances, KYC and the audit trail"),
    )
)]
struct ApiDoc;

/// The states of an issuance.
pub struct IssuanceState;

impl PartialSchema for IssuanceState {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .description(Some(
                "queued (waiting for an attempt), submitted (AIR Kit accepted it), onchain, \
                 failed (AIR refused it), stalled (the retry budget ran out; resume it), \
                 unconfirmed (not on chain within KEYHOST_AIRKIT_POLL_DEADLINE)",
            ))
            .enum_values(Some(crate::issuance::state::ALL))
            .into()
    }
}

impl ToSchema for IssuanceState {}

/// One error answer: its response component and the status it is for.
struct ErrorAnswer {
    name: &'static str,
    status: u16,
    description: &'static str,
    headers: &'static [(&'static str, &'static str)],
}

const RETRY_AFTER: (&str, &str) = (
    "Retry-After",
    "seconds to wait before asking again (at least 1)",
);

impl ErrorAnswer {
    fn response(&self) -> Response {
        let mut response = ResponseBuilder::new()
            .description(self.description)
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name(ErrorBody::name())))
                    .build(),
            );
        for (name, description) in self.headers {
            let schema = if *name == RETRY_AFTER.0 {
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(1))
            } else {
                ObjectBuilder::new().schema_type(Type::String)
            };
            response = response.header(
                *name,
                HeaderBuilder::new()
                    .schema(Some(schema))
                    .description(Some(*description))
                    .build(),
            );
        }
        response.build()
    }

    fn reference(&self) -> (String, RefOr<Response>) {
        (
            self.status.to_string(),
            Ref::from_response_name(self.name).into(),
        )
    }
}

macro_rules! error_answers {
    (
        $( $(#[$doc:meta])* $name:ident = $status:literal, $description:literal
           $(, $header:expr)*; )*
    ) => {
        $(
            $(#[$doc])*
            pub struct $name;

            impl IntoResponses for $name {
                fn responses() -> BTreeMap<String, RefOr<Response>> {
                    BTreeMap::from([answer(stringify!($name)).reference()])
                }
            }
        )*

        const ERROR_ANSWERS: &[ErrorAnswer] = &[
            $(ErrorAnswer {
                name: stringify!($name),
                status: $status,
                description: $description,
                headers: &[$($header),*],
            },)*
        ];
    };
}

fn answer(name: &str) -> &'static ErrorAnswer {
    ERROR_ANSWERS
        .iter()
        .find(|a| a.name == name)
        .expect("every error answer is in the table")
}

error_answers! {
    /// 400.
    BadRequest = 400,
        "The request is malformed or a value breaks a rule: JSON_ERROR (empty body, invalid \
         JSON, a member named twice at any depth), ENCODING_ERROR (not UTF-8), MISSING_VALUE (a \
         required member is missing, or the body is null), BAD_VALUE (wrong type, unknown \
         member, invalid value, a number that would change on its way; the message names the \
         member), VALIDATION_ERROR (well-formed values that break a rule)";
    /// 401.
    Unauthorized = 401,
        "UNAUTHORIZED: missing or wrong credentials, or a disabled client",
        ("WWW-Authenticate", "Bearer realm=\"keyhost\"");
    /// 403.
    Forbidden = 403,
        "PERMISSIONS_ERROR: the credential may not do this (a client asking for a scope it lacks, \
         a reader admin changing something)";
    /// 404.
    NotFound = 404, "NOT_FOUND: no such resource";
    /// 408.
    RequestTimeout = 408,
        "BAD_VALUE: the body did not arrive within KEYHOST_HTTP_BODY_TIMEOUT; the connection is \
         closed",
        ("Connection", "close");
    /// 409.
    Conflict = 409, "CONFLICT: the request conflicts with the resource's state";
    /// 413.
    PayloadTooLarge = 413, "BAD_VALUE: the body is larger than 64 KiB";
    /// 415.
    UnsupportedMediaType = 415,
        "BAD_VALUE: the body is not sent as application/json";
    /// 429.
    TooManyRequests = 429,
        "TOO_MANY_REQUESTS: a client exceeded KEYHOST_CLIENT_RATE_LIMIT, or its address failed \
         to authenticate too often (KEYHOST_AUTH_FAILURE_LIMIT)",
        RETRY_AFTER;
    /// 500.
    InternalError = 500,
        "INTERNAL_ERROR: an internal failure; logged with its cause, the message says nothing \
         more";
    /// 502.
    BadGateway = 502,
        "AIR Kit refused keyhost's Partner JWT (UNAUTHORIZED: the message lists what to check) \
         or answered with a server error (INTERNAL_ERROR)";
    /// 503.
    Unavailable = 503,
        "INTERNAL_ERROR: temporarily unable, nothing wrong with the request; the message says \
         why and what to do",
        RETRY_AFTER;
}

/// The answers of a route that reads a JSON body ([`super::extract::JsonBody`]).
pub struct JsonBodyErrors;

impl IntoResponses for JsonBodyErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        [BadRequest::responses(), RequestTimeout::responses()]
            .into_iter()
            .chain([
                PayloadTooLarge::responses(),
                UnsupportedMediaType::responses(),
            ])
            .flatten()
            .collect()
    }
}

/// The answers of a route that reads a raw body ([`super::extract::RawBody`]).
pub struct RawBodyErrors;

impl IntoResponses for RawBodyErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        [
            BadRequest::responses(),
            RequestTimeout::responses(),
            PayloadTooLarge::responses(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// The answers of a route that requires a credential ([`super::extract::AdminAuth`],
/// [`super::extract::ClientAuth`]): refused, or throttled after too many failures.
pub struct AuthErrors;

impl IntoResponses for AuthErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        [Unauthorized::responses(), TooManyRequests::responses()]
            .into_iter()
            .flatten()
            .collect()
    }
}

/// The answers of an admin route that changes something: refused, read-only (a `reader`
/// credential answers 403), or throttled after too many failures.
pub struct AdminChangeErrors;

impl IntoResponses for AdminChangeErrors {
    fn responses() -> BTreeMap<String, RefOr<Response>> {
        [
            Unauthorized::responses(),
            Forbidden::responses(),
            TooManyRequests::responses(),
        ]
        .into_iter()
        .flatten()
        .collect()
    }
}

/// White space as `str::trim` knows it (Unicode `White_Space`), as a regular expression class.
const SPACE: &str = r"\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";
/// Control characters as `char::is_control` knows them (Unicode `Cc`).
const CONTROL: &str = r"\u0000-\u001f\u007f-\u009f";

/// A client's name: 1 to 100 characters without control characters, once the white space
/// around it is trimmed.
pub fn name() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(100))
        .pattern(Some(format!(
            "^[{SPACE}]*[^{SPACE}{CONTROL}]([^{CONTROL}]*[^{SPACE}{CONTROL}])?[{SPACE}]*$"
        )))
        .description(Some(
            "what the client is for: 1 to 100 characters without control characters once white \
             space around it is trimmed",
        ))
}

/// A scope (see [`crate::scope::validate_scope`]): 1 to 100 characters, no control characters,
/// no white space around it.
pub fn scope() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(100))
        .pattern(Some(format!(
            "^[^{SPACE}{CONTROL}]([^{CONTROL}]*[^{SPACE}{CONTROL}])?$"
        )))
        .description(Some(
            "1 to 100 characters, no control characters or surrounding white space",
        ))
}

/// A scope, or `null` for the default.
pub fn scope_or_null() -> ObjectBuilder {
    or_null(scope())
}

/// `schema`, or `null` (which keyhost reads as the member's absence).
fn or_null(schema: ObjectBuilder) -> ObjectBuilder {
    schema.schema_type(SchemaType::from_iter([Type::String, Type::Null]))
}

/// An email address as [`crate::email::Email`] accepts it.
pub fn email() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Email)))
        .max_length(Some(254))
}

/// A kid an operator chooses (see [`crate::keys::service::validate_kid`]), or `null` for the
/// key's thumbprint.
pub fn kid_or_null() -> ObjectBuilder {
    or_null(
        ObjectBuilder::new()
            .min_length(Some(1))
            .max_length(Some(128))
            .pattern(Some(r#"^[!#-\[\]-~]+$"#)),
    )
}

/// A string with something other than white space in it, or `null` for the default.
pub fn not_blank_or_null() -> ObjectBuilder {
    or_null(ObjectBuilder::new().pattern(Some(format!("[^{SPACE}]"))))
}

/// `onDuplicate`, or `null` for the default (`revoke`).
pub fn on_duplicate_or_null() -> ObjectBuilder {
    or_null(ObjectBuilder::new())
        .enum_values(Some([
            serde_json::json!("revoke"),
            serde_json::json!("ignore"),
            serde_json::Value::Null,
        ]))
        .default(Some("revoke".into()))
}

/// A client's scopes: 1 to 16 of them.
pub fn scopes() -> ArrayBuilder {
    ArrayBuilder::new()
        .items(scope())
        .min_items(Some(1))
        .max_items(Some(16))
}

/// The name of the schema of any JSON value keyhost accepts in a body.
const JSON_VALUE: &str = "JsonValue";

/// Any JSON value keyhost accepts in a request body, at any depth: every number must arrive as
/// written, so an integer is at most 64 bits (`i64` or `u64`) and a number with a fraction or an
/// exponent must be one a 64-bit float holds exactly (which JSON Schema cannot say).
fn json_value(nullable: bool) -> AnyOfBuilder {
    let scalars: &[Type] = if nullable {
        &[Type::Null, Type::Boolean, Type::String]
    } else {
        &[Type::Boolean, Type::String]
    };
    let any = || Ref::from_schema_name(JSON_VALUE);
    AnyOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(SchemaType::from_iter(scalars.iter().cloned())))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(i64::MIN))
                .maximum(Some(u64::MAX)),
        )
        // "A number that is not an integer": `oneOf` fails for a value that is both.
        .item(
            OneOfBuilder::new()
                .item(ObjectBuilder::new().schema_type(Type::Number))
                .item(ObjectBuilder::new().schema_type(Type::Integer)),
        )
        .item(ArrayBuilder::new().items(any()))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .additional_properties(Some(any())),
        )
}

/// Any JSON value keyhost accepts but `null`.
pub fn json_not_null() -> AnyOfBuilder {
    json_value(false).description(Some(
        "any JSON value but null; integers of at most 64 bits, other numbers exact as 64-bit \
         floats",
    ))
}

/// A JSON object of any members keyhost accepts.
pub fn json_object() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(Ref::from_schema_name(JSON_VALUE)))
}

#[cfg(test)]
mod tests;
