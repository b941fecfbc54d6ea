//! The OpenAPI document: declared by each route's `#[utoipa::path]`, then completed here
//! with what every route shares, so that the document lists every status a route can
//! answer and a client generated from it reads every error.
//!
//! Each route declares its success responses and the statuses that its own rules decide
//! (404 for a missing resource, 409 for a state that forbids the request, 402, 502, …).
//! [`complete`] adds the statuses the shared machinery answers, from the shape of the
//! operation, the same way the server decides them:
//!
//! | status | answered by | added to |
//! |---|---|---|
//! | 400 | a path, query or body extractor that cannot read its input | operations with parameters or a JSON body |
//! | 401 | the credential check | operations that require a credential |
//! | 403 | a role without the permission, or an agent credential on a people's route | operations that require a credential |
//! | 404 | a resource that does not exist or is not visible to the caller | operations with a path parameter |
//! | 413 | the body limit | operations with a body |
//! | 415 | a body that is not `application/json` | operations with a JSON body |
//! | 422 | a rule about the input's values (NUL characters, bounds) | operations with parameters or a JSON body |
//! | 429 | bounded replays (`as_of`); a credential from an address past its quota of refused credentials | operations with an `as_of` parameter; operations that require a credential |
//! | 503 | the database cannot be reached | every operation but `/metrics` |
//!
//! Every error response is `application/problem+json` with the [`Problem`] schema, and
//! 429 and 503 carry `Retry-After` — but for a 503 that waiting cannot mend
//! (`billing_not_configured`: the server has no Stripe key).

use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::{Operation, ParameterIn};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{
    AdditionalProperties, ArrayItems, ObjectBuilder, Schema, SchemaType, Type,
};
use utoipa::openapi::{OpenApi, Ref, RefOr};
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

use omoi_store::Cursor;

use crate::error::Problem;
use crate::state::AppState;

/// The media type of every error.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Declares the bearer credential (access token or API key) required by every route that
/// does not opt out with `security(())`.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An access token from /api/v1/auth/login or an API key (omoi_sk_…)",
                    ))
                    .build(),
            ),
        );
        openapi.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

#[derive(utoipa::OpenApi)]
#[openapi(
    modifiers(&BearerAuth),
    components(schemas(Problem)),
    info(
        title = "omoi",
        description = "Event-sourced backend of a spec-driven, multi-agent software-engineering \
                       orchestrator. Errors are application/problem+json (RFC 9457). \
                       Live delivery is a WebSocket: `GET /api/v1/ws` (subscribe to a \
                       project's `events` stream: a snapshot with its position, then ordered \
                       deltas; resume with `after`) and the original's feed \
                       `GET /api/v1/ws/events`; the protocol — message types, fields, \
                       examples, close codes — is in docs/websocket.md."
    ),
    tags(
        (name = "auth", description = "Accounts, tokens and API keys"),
        (name = "organizations"), (name = "projects"), (name = "tickets"), (name = "tasks"),
        (name = "specs"), (name = "agents"), (name = "events", description = "The event log"),
        (name = "search", description = "Full-text search over specs, tickets and tasks (read model)"),
        (name = "timeline", description = "Activity timeline of a project (read model)"),
        (name = "board", description = "Kanban board of a project (read model)"),
        (name = "graph", description = "Task dependency graph (read model)"),
        (name = "billing", description = "Stripe webhooks, plans and limits, checkout and portal"),
        (name = "live", description = "WebSocket delivery of events and read models (docs/websocket.md)"),
        (name = "system"),
    )
)]
struct ApiDoc;

/// Every documented route, with the document's skeleton.
pub(crate) fn documented_routes() -> OpenApiRouter<AppState> {
    use crate::*;
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(auth::routes::router())
        .merge(organizations::router())
        .merge(projects::router())
        .merge(tickets::router())
        .merge(tasks::router())
        .merge(transcripts::router())
        .merge(discoveries::router())
        .merge(specs::router())
        .merge(spec_export::router())
        .merge(agents::router())
        .merge(agent_views::router())
        .merge(guardian::router())
        .merge(monitoring::router())
        .merge(lists::router())
        .merge(timeline::router())
        .merge(board::router())
        .merge(billing::router())
        .merge(graph::router())
        .merge(history::router())
        .merge(live::router())
        .merge(system::router())
}

/// The OpenAPI document of every route, completed.
pub fn document() -> OpenApi {
    let mut document = documented_routes().into_openapi();
    complete(&mut document);
    document
}

/// Adds the shared statuses to every operation and makes every error a problem document
/// (the table in the module's documentation).
pub fn complete(document: &mut OpenApi) {
    if let Some(components) = document.components.as_mut() {
        for (name, schema) in components.schemas.iter_mut() {
            // A problem's detail quotes the input it refuses, NUL characters included.
            if name != "Problem" {
                forbid_nul_in(schema);
            }
            if CLOSED_UNIONS.contains(&name.as_str()) {
                close_variants(schema);
            }
        }
    }
    let secured_by_default = document
        .security
        .as_ref()
        .is_some_and(|requirements| !requirements.is_empty());
    for (path, item) in document.paths.paths.iter_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            for parameter in operation.parameters.iter_mut().flatten() {
                parameter.schema.iter_mut().for_each(forbid_nul_in);
            }
            for content in operation
                .request_body
                .iter_mut()
                .flat_map(|b| b.content.values_mut())
            {
                content.schema.iter_mut().for_each(forbid_nul_in);
            }
            let shape = Shape::of(operation, secured_by_default);
            for status in shape.shared_statuses(path) {
                operation
                    .responses
                    .responses
                    .entry(status.to_string())
                    .or_insert_with(|| RefOr::T(problem_response(status)));
            }
            for (status, response) in operation.responses.responses.iter_mut() {
                if let (true, RefOr::T(response)) = (is_error(status), response) {
                    as_problem(status, response);
                }
            }
        }
    }
}

/// The document as served: [`document`] with the links of [`link_created_resources`].
pub fn served(mut document: OpenApi) -> serde_json::Value {
    complete(&mut document);
    let mut json = serde_json::to_value(&document).unwrap_or_default();
    link_created_resources(&mut json);
    json
}

/// Links each creation (`POST /api/v1/tickets`, `POST /api/v1/agents/register`, …) to
/// every operation on what it created (`/api/v1/tickets/{id}/…`), and a new project to
/// the reads that take its `project_id`: clients and the fuzzer's stateful phase follow
/// them. Written on the JSON form: utoipa 5.5 spells a link's `operationId` in snake
/// case.
fn link_created_resources(document: &mut serde_json::Value) {
    use serde_json::{json, Map, Value};
    const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];
    let Some(paths) = document.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    // (path, operationId, whether it takes a `project_id` query parameter)
    let mut targets: Vec<(String, String, bool)> = Vec::new();
    for (path, item) in paths.iter() {
        for method in METHODS {
            let Some(operation) = item.get(method) else {
                continue;
            };
            let Some(id) = operation.get("operationId").and_then(Value::as_str) else {
                continue;
            };
            let takes_project = operation["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["name"] == "project_id" && p["in"] == "query");
            targets.push((path.clone(), id.to_string(), takes_project));
        }
    }
    for (path, item) in paths.iter_mut() {
        let Some(created) = item.pointer_mut("/post/responses/201") else {
            continue;
        };
        let collection = path.strip_suffix("/register").unwrap_or(path);
        let member = format!("{collection}/{{id}}");
        let mut links = Map::new();
        for (target, operation_id, takes_project) in &targets {
            let parameter = if target == &member || target.starts_with(&format!("{member}/")) {
                "id"
            } else if collection == "/api/v1/projects" && *takes_project {
                "project_id"
            } else {
                continue;
            };
            links.insert(
                operation_id.clone(),
                json!({"operationId": operation_id,
                       "parameters": {parameter: "$response.body#/id"}}),
            );
        }
        if !links.is_empty() {
            created["links"] = Value::Object(links);
        }
    }
}

/// Text never holds U+0000: PostgreSQL cannot store it, and [`crate::extract`] refuses it
/// in bodies and query strings with a 422. Every free-form string says so.
pub const NO_NUL: &str = "^[^\\u0000]*$";

/// Request bodies that are tagged unions whose variants refuse unknown fields
/// (`#[serde(tag = …, deny_unknown_fields)]`): utoipa closes a struct's schema for
/// `deny_unknown_fields`, not an enum's variants, so they are closed here.
const CLOSED_UNIONS: [&str; 1] = ["Intervention"];

fn close_variants(schema: &mut RefOr<Schema>) {
    if let RefOr::T(Schema::OneOf(one_of)) = schema {
        for variant in &mut one_of.items {
            if let RefOr::T(Schema::Object(object)) = variant {
                object.additional_properties =
                    Some(Box::new(AdditionalProperties::FreeForm(false)));
            }
        }
    }
}

fn forbid_nul_in(schema: &mut RefOr<Schema>) {
    if let RefOr::T(schema) = schema {
        forbid_nul(schema);
    }
}

fn forbid_nul(schema: &mut Schema) {
    match schema {
        Schema::Object(object) => {
            let text = match &object.schema_type {
                SchemaType::Type(kind) => *kind == Type::String,
                SchemaType::Array(kinds) => kinds.contains(&Type::String),
                _ => false,
            };
            let free =
                object.format.is_none() && object.enum_values.is_none() && object.pattern.is_none();
            if text && free {
                object.pattern = Some(NO_NUL.to_string());
            }
            object.properties.values_mut().for_each(forbid_nul_in);
            if let Some(AdditionalProperties::RefOr(schema)) =
                object.additional_properties.as_deref_mut()
            {
                forbid_nul_in(schema);
            }
        }
        Schema::Array(array) => {
            if let ArrayItems::RefOrSchema(items) = &mut array.items {
                forbid_nul_in(items);
            }
        }
        Schema::OneOf(one_of) => one_of.items.iter_mut().for_each(forbid_nul_in),
        Schema::AllOf(all_of) => all_of.items.iter_mut().for_each(forbid_nul_in),
        Schema::AnyOf(any_of) => any_of.items.iter_mut().for_each(forbid_nul_in),
        _ => {}
    }
}

/// What of an operation decides which shared statuses it can answer.
struct Shape {
    secured: bool,
    has_path_parameter: bool,
    has_query_parameter: bool,
    has_body: bool,
    /// A JSON body, read by the JSON extractor (415, 422); a raw body (Stripe's webhook,
    /// verified byte for byte) is read as it comes.
    has_json_body: bool,
    replays: bool,
}

impl Shape {
    fn of(operation: &Operation, secured_by_default: bool) -> Self {
        let parameters = operation.parameters.as_deref().unwrap_or_default();
        let secured = match &operation.security {
            // `security(())` alone opts out; a list that admits no credential (`{}`)
            // beside a scheme makes the credential optional, and a wrong one is a 401.
            Some(requirements) => {
                !requirements.is_empty() && {
                    let json = serde_json::to_value(requirements).unwrap_or_default();
                    json.as_array()
                        .is_some_and(|all| all.iter().any(|r| r != &serde_json::json!({})))
                }
            }
            None => secured_by_default,
        };
        Self {
            secured,
            has_path_parameter: parameters
                .iter()
                .any(|p| p.parameter_in == ParameterIn::Path),
            has_query_parameter: parameters
                .iter()
                .any(|p| p.parameter_in == ParameterIn::Query),
            has_body: operation.request_body.is_some(),
            has_json_body: operation
                .request_body
                .as_ref()
                .is_some_and(|body| body.content.contains_key("application/json")),
            replays: parameters.iter().any(|p| p.name == "as_of"),
        }
    }

    fn shared_statuses(&self, path: &str) -> Vec<u16> {
        let has_input = self.has_path_parameter || self.has_query_parameter || self.has_json_body;
        let mut statuses = Vec::new();
        if has_input {
            statuses.extend([400, 422]);
        }
        if self.secured {
            statuses.extend([401, 403]);
        }
        if self.has_path_parameter {
            statuses.push(404);
        }
        if self.has_body {
            statuses.push(413);
        }
        if self.has_json_body {
            statuses.push(415);
        }
        if self.replays || self.secured {
            statuses.push(429);
        }
        if path != "/metrics" {
            statuses.push(503);
        }
        statuses
    }
}

/// The schema of a cursor parameter ([`Cursor::PATTERN`]).
pub fn cursor() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(Cursor::PATTERN))
        .examples(["0-0", "7411-52"])
}

/// Whether a response key (`"404"`, `"default"`, …) is an error status.
fn is_error(status: &str) -> bool {
    status.parse::<u16>().is_ok_and(|status| status >= 400)
}

/// A response of the given status whose body is a [`Problem`].
fn problem_response(status: u16) -> Response {
    let reason = axum::http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let mut response = ResponseBuilder::new().description(reason).build();
    as_problem(&status.to_string(), &mut response);
    response
}

/// Makes a declared error response a problem document, keeping its description.
fn as_problem(status: &str, response: &mut Response) {
    response.content.clear();
    response.content.insert(
        PROBLEM_JSON.to_string(),
        ContentBuilder::new()
            .schema(Some(Ref::from_schema_name("Problem")))
            .build(),
    );
    if matches!(status, "429" | "503") {
        response.headers.insert(
            "Retry-After".to_string(),
            HeaderBuilder::new()
                .schema(
                    ObjectBuilder::new()
                        .schema_type(Type::Integer)
                        .minimum(Some(0)),
                )
                .description(Some(
                    "Seconds to wait before trying again (absent from a 503 that waiting \
                     cannot mend: `billing_not_configured`)",
                ))
                .build(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn operation<'a>(document: &'a OpenApi, method: &str, path: &str) -> &'a Operation {
        let item = &document.paths.paths[path];
        match method {
            "get" => item.get.as_ref(),
            "post" => item.post.as_ref(),
            "put" => item.put.as_ref(),
            "delete" => item.delete.as_ref(),
            "patch" => item.patch.as_ref(),
            _ => None,
        }
        .unwrap_or_else(|| panic!("{method} {path} is not documented"))
    }

    fn statuses(operation: &Operation) -> Vec<&str> {
        operation
            .responses
            .responses
            .keys()
            .map(String::as_str)
            .collect()
    }

    #[test]
    fn every_error_response_is_a_problem_document() {
        let document = document();
        for (path, item) in &document.paths.paths {
            for operation in [&item.get, &item.put, &item.post, &item.delete, &item.patch]
                .into_iter()
                .flatten()
            {
                for (status, response) in &operation.responses.responses {
                    let RefOr::T(response) = response else {
                        panic!("{path} {status}: a reference");
                    };
                    if is_error(status) {
                        let types: Vec<_> = response.content.keys().collect();
                        assert_eq!(types, [PROBLEM_JSON], "{path} {status}");
                    }
                }
            }
        }
    }

    #[test]
    fn shared_statuses_follow_the_shape_of_the_operation() {
        let document = document();
        // A command on one resource: input, credential (a 429 for an address past its
        // refused credentials), path, body.
        assert_eq!(
            statuses(operation(&document, "patch", "/api/v1/tickets/{id}")),
            ["200", "400", "401", "403", "404", "409", "413", "415", "422", "429", "503"]
        );
        // No credential, no input.
        assert_eq!(
            statuses(operation(&document, "get", "/health")),
            ["200", "503"]
        );
        assert_eq!(statuses(operation(&document, "get", "/metrics")), ["200"]);
        // A replay can be refused for the concurrency bound.
        let history = operation(&document, "get", "/api/v1/tickets/{id}/history");
        assert!(statuses(history).contains(&"429"));
        let RefOr::T(too_many) = &history.responses.responses["429"] else {
            panic!("429 is a reference");
        };
        assert!(too_many.headers.contains_key("Retry-After"));
        // Stripe's webhook reads its raw body as it comes (verified byte for byte): no
        // 415 or 422 of the JSON extractor; its 400 is its own rule.
        assert_eq!(
            statuses(operation(
                &document,
                "post",
                "/api/v1/billing/webhooks/stripe"
            )),
            ["200", "400", "401", "413", "503"]
        );
        // Login takes no credential: its 401 is its own rule, and no role applies.
        let login = statuses(operation(&document, "post", "/api/v1/auth/login"));
        assert!(!login.contains(&"403"), "{login:?}");
    }

    #[test]
    fn a_creation_links_to_what_it_created() {
        let served = served(documented_routes().into_openapi());
        let links = &served["paths"]["/api/v1/tickets"]["post"]["responses"]["201"]["links"];
        assert_eq!(links["get_ticket"]["operationId"], "get_ticket");
        assert_eq!(
            links["get_ticket"]["parameters"]["id"],
            "$response.body#/id"
        );
        let agent = &served["paths"]["/api/v1/agents/register"]["post"]["responses"]["201"];
        assert_eq!(
            agent["links"]["claim"]["parameters"]["id"],
            "$response.body#/id"
        );
        let project = &served["paths"]["/api/v1/projects"]["post"]["responses"]["201"];
        assert_eq!(
            project["links"]["board_view"]["parameters"]["project_id"],
            "$response.body#/id"
        );
    }

    #[test]
    fn each_kind_of_intervention_refuses_fields_of_another() {
        let served = served(crate::openapi());
        let variants = served["components"]["schemas"]["Intervention"]["oneOf"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert_eq!(variants.len(), 6, "{variants:?}");
        for variant in variants {
            assert_eq!(variant["additionalProperties"], false, "{variant}");
            assert!(variant["properties"]["kind"].is_object(), "{variant}");
        }
    }

    /// Two types of one name would share one schema, the later one winning.
    #[test]
    fn billing_plans_and_spec_plans_have_schemas_of_their_own() {
        let served = served(documented_routes().into_openapi());
        let schemas = &served["components"]["schemas"];
        assert!(schemas["Plan"]["properties"]["tier"].is_object());
        assert!(schemas["SpecPlan"]["properties"]["tickets"].is_object());
    }

    /// Bounds written as literals in attributes are the domain's constants.
    #[test]
    fn documented_bounds_are_the_domains() {
        let served = served(documented_routes().into_openapi());
        let schemas = &served["components"]["schemas"];
        let capacity = &schemas["RegisterAgent"]["properties"]["capacity"];
        assert_eq!(capacity["minimum"], omoi_domain::agent::MIN_CAPACITY);
        assert_eq!(capacity["maximum"], omoi_domain::agent::MAX_CAPACITY);
        let retries = &schemas["CreateTask"]["properties"]["max_retries"];
        assert_eq!(retries["maximum"], omoi_domain::task::MAX_MAX_RETRIES);
        let limit = |path: &str| {
            served["paths"][path]["get"]["parameters"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|p| p["name"] == "limit")
                .map(|p| p["schema"]["maximum"].clone())
        };
        assert_eq!(
            limit("/api/v1/timeline"),
            Some(omoi_projections::timeline::MAX_LIMIT.into())
        );
    }
}
