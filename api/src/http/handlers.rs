//! The verbs on stored resources: get, list, watch, create, update, patch, delete,
//! deletecollection, and the status, scale and token subresources.

use super::body::{decode_object, json_response, read_body};
use super::request::{Query, ResourceRequest};
use super::table::{self, IncludeObject};
use super::watch::{watch_body, Filter, WatchParams};
use super::ApiServer;
use crate::auth::UserInfo;
use crate::error::{success_status, ApiError, FieldError};
use crate::kv::prefix_end;
use crate::meta::{self, WriteTarget};
use crate::patch::PatchType;
use crate::registry::ResourceDef;
use crate::selector::{FieldSelector, LabelSelector};
use crate::storage::{self, list_prefix, ListRequest};
use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// Attempts of a read-modify-write (patch, unconditional update) under contention.
const WRITE_ATTEMPTS: usize = 8;
/// Name of the index of objects by the uids in their ownerReferences.
pub const OWNER_INDEX: &str = "owner-uid";

/// Index function: the uids an object's ownerReferences point at.
pub fn owner_index(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .map(|refs| {
            refs.iter()
                .filter_map(|r| r.get("uid").and_then(Value::as_str).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Options every write understands.
struct WriteOptions {
    dry_run: bool,
    field_validation: FieldValidation,
    manager: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FieldValidation {
    Strict,
    Warn,
    Ignore,
}

impl WriteOptions {
    fn parse(q: &Query, headers: &HeaderMap) -> Result<Self, ApiError> {
        let dry_run = match q.get("dryRun") {
            None | Some("") => false,
            Some("All") => true,
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                    "Invalid dryRun value: {other:?}: supported values: \"All\""
                )))
            }
        };
        let field_validation = match q.get("fieldValidation") {
            None | Some("") | Some("Warn") => FieldValidation::Warn,
            Some("Strict") => FieldValidation::Strict,
            Some("Ignore") => FieldValidation::Ignore,
            Some(other) => {
                return Err(ApiError::BadRequest(format!(
                "fieldValidation must be one of \"Ignore\", \"Warn\", or \"Strict\", got {other:?}"
            )))
            }
        };
        let manager = match q.get("fieldManager") {
            Some(m) if !m.is_empty() => {
                if m.len() > 128 {
                    return Err(ApiError::BadRequest(
                        "fieldManager: Too long: may not be more than 128 bytes".into(),
                    ));
                }
                m.to_string()
            }
            _ => headers
                .get(http::header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .and_then(|ua| ua.split('/').next())
                .filter(|s| !s.is_empty())
                .unwrap_or("unknown")
                .chars()
                .take(128)
                .collect(),
        };
        Ok(WriteOptions {
            dry_run,
            field_validation,
            manager,
        })
    }
}

/// Entry point for resource requests.
pub async fn resource(
    api: &Arc<ApiServer>,
    user: &UserInfo,
    r: ResourceRequest,
    headers: &HeaderMap,
    q: &Query,
    body: Body,
) -> Result<Response, ApiError> {
    if r.def.plural == "ships" && r.verb == "get" && crate::auth::node::node_name(user).is_some() {
        let (cur, _) = current(api, &r.def, ns(&r), name(&r)?).await?;
        crate::auth::node::admit_bound_ship(user, &cur)?;
    }
    if matches!(r.def.plural, "secrets" | "configmaps")
        && r.def.group.is_empty()
        && r.verb == "get"
        && crate::auth::node::node_name(user).is_some()
    {
        let ships_def = api
            .registry
            .get("", "v1", "ships")
            .ok_or(ApiError::NoRoute)?;
        let prefix = storage::list_prefix(ships_def, ns(&r));
        let end = format!("{prefix}\u{10ffff}");
        let ships = api
            .storage
            .cache(ships_def.storage)
            .map(|c| c.snapshot(&prefix, &end).0)
            .unwrap_or_default();
        crate::auth::node::admit_referenced(
            user,
            r.def.plural,
            ns(&r).unwrap_or_default(),
            name(&r)?,
            ships.iter().map(|(_, v)| v.as_ref()),
        )?;
    }
    match (r.verb, r.subresource.as_str()) {
        ("get", "scale") => get_scale(api, &r).await,
        ("get", _) => get(api, &r, headers, q).await,
        ("list", _) => list(api, &r, headers, q).await,
        ("watch", _) => watch(api, &r, headers, q).await,
        ("create", "token") => token(api, &r, headers, body).await,
        ("create", "binding") => binding(api, &r, body).await,
        ("create", "") => create(api, user, &r, headers, q, body).await,
        ("update", "scale") | ("patch", "scale") => write_scale(api, &r, headers, q, body).await,
        ("update", _) => update(api, user, &r, headers, q, body).await,
        ("patch", _) => patch(api, user, &r, headers, q, body).await,
        ("delete", "") => delete(api, &r, q, body).await,
        ("deletecollection", "") => delete_collection(api, &r, q, body).await,
        _ => Err(ApiError::MethodNotAllowed(format!(
            "the server does not allow this method on the requested resource ({} {})",
            r.verb, r.subresource
        ))),
    }
}

fn ns(r: &ResourceRequest) -> Option<&str> {
    r.namespace.as_deref()
}

fn name(r: &ResourceRequest) -> Result<&str, ApiError> {
    r.name
        .as_deref()
        .ok_or_else(|| ApiError::BadRequest("a name is required".into()))
}

async fn get(
    api: &ApiServer,
    r: &ResourceRequest,
    headers: &HeaderMap,
    q: &Query,
) -> Result<Response, ApiError> {
    let name = name(r)?;
    let obj = if q.get("resourceVersion") == Some("0") {
        api.storage.get_cached(&r.def, ns(r), name)
    } else {
        api.storage.get(&r.def, ns(r), name).await?
    };
    let obj = obj.ok_or_else(|| storage::not_found(&r.def, name))?;
    if table::wants_table(headers) {
        let rv = meta::resource_version(&obj)?.unwrap_or(0);
        let t = table::table(
            &r.def,
            std::iter::once(&obj),
            rv,
            None,
            IncludeObject::parse(q.get("includeObject")),
            true,
        );
        return Ok(bytes_response(t));
    }
    Ok(json_response(StatusCode::OK, &obj, &[]))
}

/// Parses label and field selectors into one filter (plus the namespace for `-A` lists that
/// select one).
fn build_filter(def: &ResourceDef, q: &Query) -> Result<Filter, ApiError> {
    let labels = match q.get("labelSelector") {
        Some(s) if !s.trim().is_empty() => {
            Some(LabelSelector::parse(s).map_err(|e| e.to_api_error())?)
        }
        _ => None,
    };
    let fields = match q.get("fieldSelector") {
        Some(s) if !s.trim().is_empty() => {
            let f = FieldSelector::parse(s).map_err(|e| e.to_api_error())?;
            let probe = json!({"metadata": {}, "spec": {}, "status": {}});
            for req in f.requirements() {
                let field = req.field.as_str();
                let known = matches!(field, "metadata.name" | "metadata.namespace")
                    || def.ops.field(&probe, field).is_some();
                if !known {
                    return Err(ApiError::BadRequest(format!(
                        "field label not supported: {field}"
                    )));
                }
            }
            Some(f)
        }
        _ => None,
    };
    let def = def.clone();
    Ok(Arc::new(move |obj: &Value| {
        if let Some(l) = &labels {
            if !l.matches_object(obj) {
                return false;
            }
        }
        if let Some(f) = &fields {
            let get = |path: &str| -> Option<String> {
                match path {
                    "metadata.name" => Some(meta::name_of(obj).to_string()),
                    "metadata.namespace" => {
                        Some(meta::meta_str(obj, "namespace").unwrap_or("").to_string())
                    }
                    other => def.ops.field(obj, other),
                }
            };
            if !f.matches(get) {
                return false;
            }
        }
        true
    }))
}

fn parse_rv(q: &Query) -> Result<Option<i64>, ApiError> {
    match q.get("resourceVersion") {
        None | Some("") => Ok(None),
        Some(s) => s
            .parse::<i64>()
            .map(Some)
            .map_err(|_| ApiError::BadRequest(format!("invalid resource version: {s:?}"))),
    }
}

async fn list(
    api: &ApiServer,
    r: &ResourceRequest,
    headers: &HeaderMap,
    q: &Query,
) -> Result<Response, ApiError> {
    let filter = build_filter(&r.def, q)?;
    let limit = q.int("limit")?.unwrap_or(0).max(0);
    let req = ListRequest {
        limit,
        continue_token: q
            .get("continue")
            .filter(|c| !c.is_empty())
            .map(str::to_string),
        resource_version: parse_rv(q)?,
    };
    let page = api
        .storage
        .list(&r.def, ns(r), &req, &|v: &Value| filter(v))
        .await?;
    if table::wants_table(headers) {
        let t = table::table(
            &r.def,
            page.items.iter().map(|a| a.as_ref()),
            page.revision,
            page.continue_token.as_deref(),
            IncludeObject::parse(q.get("includeObject")),
            true,
        );
        return Ok(bytes_response(t));
    }
    // Written by hand: a 10,000-item list should not be cloned into one big Value first.
    let mut meta = json!({"resourceVersion": page.revision.to_string()});
    if let Some(c) = &page.continue_token {
        meta["continue"] = json!(c);
        if let Some(n) = page.remaining {
            meta["remainingItemCount"] = json!(n);
        }
    }
    let mut out = Vec::with_capacity(64 + page.items.len() * 512);
    out.extend_from_slice(b"{\"kind\":");
    let _ = serde_json::to_writer(&mut out, &r.def.list_kind());
    out.extend_from_slice(b",\"apiVersion\":");
    let _ = serde_json::to_writer(&mut out, &r.def.api_version());
    out.extend_from_slice(b",\"metadata\":");
    let _ = serde_json::to_writer(&mut out, &meta);
    out.extend_from_slice(b",\"items\":[");
    for (i, item) in page.items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = serde_json::to_writer(&mut out, item.as_ref());
    }
    out.extend_from_slice(b"]}");
    Ok(bytes_response(out))
}

/// A 200 with a JSON body serialized already.
fn bytes_response(out: Vec<u8>) -> Response {
    let mut resp = Response::new(Body::from(Bytes::from(out)));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

async fn watch(
    api: &ApiServer,
    r: &ResourceRequest,
    headers: &HeaderMap,
    q: &Query,
) -> Result<Response, ApiError> {
    let mut filter = build_filter(&r.def, q)?;
    if let Some(n) = r.name.clone() {
        let inner = filter.clone();
        filter = Arc::new(move |o: &Value| meta::name_of(o) == n && inner(o));
    }
    let cache = api
        .storage
        .cache(r.def.storage)
        .ok_or_else(|| ApiError::Internal("no watch cache".into()))?
        .clone();
    let prefix = list_prefix(&r.def, ns(r));
    let end = String::from_utf8_lossy(&prefix_end(prefix.as_bytes())).into_owned();
    let rv = parse_rv(q)?;
    let timeout = match q.int("timeoutSeconds")? {
        Some(t) if t > 0 => Duration::from_secs(t as u64),
        _ => Duration::from_secs(1800),
    };
    let p = WatchParams {
        resource_version: rv.filter(|v| *v > 0),
        send_initial: q.flag("sendInitialEvents"),
        bookmarks: q.flag("allowWatchBookmarks"),
        timeout,
        table: table::wants_table(headers).then(|| IncludeObject::parse(q.get("includeObject"))),
        filter,
        range: (prefix, end),
        route: routed_node(&r.def, q),
    };
    let body = watch_body(cache, r.def.clone(), p).await?;
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache, private"),
    );
    Ok(resp)
}

/// The node a Ship watch's field selector pins (`spec.nodeName=<n>`, alone or with other
/// terms), so the watch cache can wake it only for that node's Ships.
fn routed_node(def: &ResourceDef, q: &Query) -> Option<String> {
    if def.plural != "ships" {
        return None;
    }
    q.get("fieldSelector")?.split(',').find_map(|term| {
        let term = term.trim();
        term.strip_prefix("spec.nodeName==")
            .or_else(|| term.strip_prefix("spec.nodeName="))
            .filter(|v| !v.is_empty())
            .map(str::to_string)
    })
}

/// The stored object and its resourceVersion, read linearizably; 404 when missing. Every
/// read-modify-write starts here.
async fn current(
    api: &ApiServer,
    def: &ResourceDef,
    namespace: Option<&str>,
    name: &str,
) -> Result<(Value, i64), ApiError> {
    let cur = api
        .storage
        .get(def, namespace, name)
        .await?
        .ok_or_else(|| storage::not_found(def, name))?;
    let rv = meta::resource_version(&cur)?.unwrap_or(0);
    Ok((cur, rv))
}

/// Decodes, defaults, validates and stamps metadata on an object about to be written.
/// Returns the object and warnings.
#[allow(clippy::too_many_arguments)]
fn admit(
    api: &ApiServer,
    def: &ResourceDef,
    mut obj: Value,
    old: Option<&Value>,
    target: WriteTarget,
    opts: &WriteOptions,
    namespace: Option<&str>,
    path_name: Option<&str>,
    record_manager: bool,
) -> Result<(Value, Vec<String>), ApiError> {
    let mut warnings = Vec::new();
    // apiVersion and kind must be this resource's (or absent).
    let want_av = def.api_version();
    match obj.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => {}
        Some(av) if av == want_av => {}
        Some(av) => {
            return Err(ApiError::BadRequest(format!(
                "the API version in the data ({av}) does not match the expected API version ({want_av})"
            )))
        }
    }
    match obj.get("kind").and_then(Value::as_str) {
        None | Some("") => {}
        Some(k) if k == def.kind => {}
        Some(k) => {
            return Err(ApiError::BadRequest(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                def.kind
            )))
        }
    }
    storage::set_api_version(&mut obj, def);
    if old.is_none() && def.status && target == WriteTarget::Main {
        // Status is the system's to write, through /status (as Kubernetes drops it on create).
        if let Some(o) = obj.as_object_mut() {
            o.remove("status");
        }
    }
    if opts.field_validation != FieldValidation::Ignore {
        let unknown = api.openapi.unknown_fields(def, &obj);
        if !unknown.is_empty() {
            let msgs: Vec<String> = unknown
                .iter()
                .map(|f| format!("unknown field \"{f}\""))
                .collect();
            if opts.field_validation == FieldValidation::Strict {
                return Err(ApiError::BadRequest(format!(
                    "strict decoding error: {}",
                    msgs.join(", ")
                )));
            }
            warnings.extend(msgs);
        }
    }
    let decoded = match old {
        Some(old) => def.ops.decode_update(obj, old),
        None => def.ops.decode(obj),
    };
    let mut obj = decoded.map_err(|e| {
        ApiError::BadRequest(format!(
            "{} in version \"{}\" cannot be handled as a {}: {e}",
            def.kind, def.version, def.kind
        ))
    })?;
    match old {
        None => meta::prepare_create(def, &mut obj, namespace, path_name)?,
        Some(old) => {
            if let Some(p) = path_name {
                let body_name = meta::name_of(&obj);
                if !body_name.is_empty() && body_name != p {
                    return Err(ApiError::BadRequest(
                        "the name of the object does not match the name on the URL".into(),
                    ));
                }
            }
            if def.namespaced {
                if let (Some(body_ns), Some(path_ns)) =
                    (meta::meta_str(&obj, "namespace"), namespace)
                {
                    if !body_ns.is_empty() && body_ns != path_ns {
                        return Err(ApiError::BadRequest(
                            "the namespace of the provided object does not match the namespace sent on the request".into(),
                        ));
                    }
                }
            }
            meta::prepare_update(def, old, &mut obj, target)?
        }
    }
    let name = meta::name_of(&obj).to_string();
    let mut causes = validate_metadata(&obj);
    causes.extend(def.ops.validate(&obj, old));
    if !causes.is_empty() {
        return Err(ApiError::invalid(def.kind, def.group, &name, causes));
    }
    if record_manager {
        crate::patch::apply::record_update(
            old,
            &mut obj,
            &opts.manager,
            "Update",
            &meta::now_rfc3339(),
        );
    }
    Ok((obj, warnings))
}

/// Checks labels, annotations, finalizers and ownerReferences the way Kubernetes does.
fn validate_metadata(obj: &Value) -> Vec<FieldError> {
    let mut errs = Vec::new();
    let Some(m) = obj.get("metadata") else {
        return errs;
    };
    if let Some(labels) = m.get("labels").and_then(Value::as_object) {
        let mut map = std::collections::BTreeMap::new();
        for (k, v) in labels {
            match v.as_str() {
                Some(s) => {
                    map.insert(k.clone(), s.to_string());
                }
                None => errs.push(FieldError::invalid(
                    format!("metadata.labels[{k}]"),
                    v,
                    "must be a string",
                )),
            }
        }
        for (k, v) in &map {
            for e in crate::selector::qualified_name_errors(k) {
                errs.push(FieldError::invalid("metadata.labels", &json!(k), &e));
            }
            for e in crate::selector::label_value_errors(v) {
                errs.push(FieldError::invalid("metadata.labels", &json!(v), &e));
            }
        }
    }
    if let Some(ann) = m.get("annotations").and_then(Value::as_object) {
        let total: usize = ann
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map(str::len).unwrap_or(0))
            .sum();
        if total > 256 * 1024 {
            errs.push(FieldError {
                reason: "FieldValueTooLong",
                field: "metadata.annotations".into(),
                message: "Too long: must have at most 262144 bytes".into(),
            });
        }
    }
    if let Some(refs) = m.get("ownerReferences").and_then(Value::as_array) {
        for (i, r) in refs.iter().enumerate() {
            for f in ["apiVersion", "kind", "name", "uid"] {
                if r.get(f).and_then(Value::as_str).unwrap_or("").is_empty() {
                    errs.push(FieldError::required(
                        format!("metadata.ownerReferences[{i}].{f}"),
                        "",
                    ));
                }
            }
        }
        let controllers = refs
            .iter()
            .filter(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
            .count();
        if controllers > 1 {
            errs.push(FieldError::invalid(
                "metadata.ownerReferences",
                &json!(controllers),
                "Only one reference can have Controller set to true",
            ));
        }
    }
    errs
}

/// Checks the namespace of a namespaced create exists and is not terminating.
async fn check_namespace(api: &ApiServer, def: &ResourceDef, ns: &str) -> Result<(), ApiError> {
    if !def.namespaced {
        return Ok(());
    }
    let Some(ns_def) = api.registry.get("", "v1", "namespaces") else {
        return Ok(());
    };
    let found = match api.storage.get_cached(ns_def, None, ns) {
        Some(o) => Some(o),
        None => api.storage.get(ns_def, None, ns).await?,
    };
    match found {
        None => Err(storage::not_found(ns_def, ns)),
        Some(o) if meta::is_terminating(&o) => Err(ApiError::Forbidden {
            message: format!(
                "{} \"{}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                def.qualified(),
                "",
            ),
            name: String::new(),
            group: def.group.to_string(),
            kind: def.plural.to_string(),
        }),
        Some(_) => Ok(()),
    }
}

async fn create(
    api: &Arc<ApiServer>,
    user: &UserInfo,
    r: &ResourceRequest,
    headers: &HeaderMap,
    q: &Query,
    body: Body,
) -> Result<Response, ApiError> {
    if r.name.is_some() {
        return Err(ApiError::MethodNotAllowed(
            "POST to a named object is not supported; use PUT or PATCH".into(),
        ));
    }
    let opts = WriteOptions::parse(q, headers)?;
    let bytes = read_body(body).await?;
    let obj = decode_object(headers, &bytes)?;
    crate::auth::node::admit_create(user, r.def.plural, &obj)?;
    let namespace = if r.def.namespaced {
        Some(r.namespace.clone().unwrap_or_else(|| {
            meta::meta_str(&obj, "namespace")
                .filter(|s| !s.is_empty())
                .unwrap_or("default")
                .to_string()
        }))
    } else {
        None
    };
    let (obj, warnings) = admit(
        api,
        &r.def,
        obj,
        None,
        WriteTarget::Main,
        &opts,
        namespace.as_deref(),
        None,
        true,
    )?;
    let created = create_admitted(api, &r.def, namespace.as_deref(), obj, opts.dry_run).await?;
    Ok(json_response(StatusCode::CREATED, &created, &warnings))
}

/// Stores an admitted new object (after kind-specific preparation).
async fn create_admitted(
    api: &Arc<ApiServer>,
    def: &ResourceDef,
    namespace: Option<&str>,
    mut obj: Value,
    dry_run: bool,
) -> Result<Value, ApiError> {
    if let Some(ns) = namespace {
        check_namespace(api, def, ns).await?;
    }
    if def.kind == "Secret" && def.group.is_empty() {
        let sa = match (
            namespace,
            obj.pointer("/metadata/annotations/kubernetes.io~1service-account.name")
                .and_then(Value::as_str),
        ) {
            (Some(ns), Some(sa)) => api
                .registry
                .get("", "v1", "serviceaccounts")
                .and_then(|d| api.storage.get_cached(d, Some(ns), sa)),
            _ => None,
        };
        api.authn.fill_service_account_token(&mut obj, sa.as_ref());
    }
    if def.kind == "Namespace" && def.group.is_empty() {
        obj["status"] = json!({"phase": "Active"});
        if obj.pointer("/spec/finalizers").is_none() {
            obj["spec"] = json!({"finalizers": ["kubernetes"]});
        }
    }
    let name = meta::name_of(&obj).to_string();
    if dry_run {
        return Ok(obj);
    }
    api.storage.create(def, namespace, &name, obj).await
}

async fn update(
    api: &Arc<ApiServer>,
    user: &UserInfo,
    r: &ResourceRequest,
    headers: &HeaderMap,
    q: &Query,
    body: Body,
) -> Result<Response, ApiError> {
    let opts = WriteOptions::parse(q, headers)?;
    let name = name(r)?.to_string();
    let bytes = read_body(body).await?;
    let obj = decode_object(headers, &bytes)?;
    let wanted_rv = meta::resource_version(&obj)?;
    let target = if r.subresource == "status" {
        WriteTarget::Status
    } else {
        WriteTarget::Main
    };
    for _ in 0..WRITE_ATTEMPTS {
        let (cur, cur_rv) = current(api, &r.def, ns(r), &name).await?;
        if let Some(w) = wanted_rv {
            if w != cur_rv {
                return Err(storage::conflict(&r.def, &name));
            }
        }
        let (new, warnings) = admit(
            api,
            &r.def,
            obj.clone(),
            Some(&cur),
            target,
            &opts,
            ns(r),
            Some(&name),
            true,
        )?;
        crate::auth::node::admit_write(user, r.def.plural, &cur, &new)?;
        match store_update(api, &r.def, ns(r), &name, &cur, new, cur_rv, opts.dry_run).await {
            Ok(v) => return Ok(json_response(StatusCode::OK, &v, &warnings)),
            Err(ApiError::Conflict { .. }) if wanted_rv.is_none() => continue,
            Err(e) => return Err(e),
        }
    }
    Err(storage::conflict(&r.def, &name))
}

/// Whether an update changes nothing but bookkeeping (resourceVersion, managedFields times).
/// Compared in place, without copies: this runs on every write.
fn unchanged(cur: &Value, new: &Value) -> bool {
    /// Equal objects apart from the keys `skip` accepts (checked on both sides).
    fn same_except(
        a: &serde_json::Map<String, Value>,
        b: &serde_json::Map<String, Value>,
        skip: impl Fn(&str) -> bool,
    ) -> bool {
        a.keys().filter(|k| !skip(k)).count() == b.keys().filter(|k| !skip(k)).count()
            && a.iter()
                .filter(|(k, _)| !skip(k))
                .all(|(k, v)| b.get(k) == Some(v))
    }
    let (Some(c), Some(n)) = (cur.as_object(), new.as_object()) else {
        return cur == new;
    };
    let empty = serde_json::Map::new();
    let cm = c
        .get("metadata")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let nm = n
        .get("metadata")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    fn entries<'a>(m: &'a serde_json::Map<String, Value>, none: &'a [Value]) -> &'a [Value] {
        m.get("managedFields")
            .and_then(Value::as_array)
            .map_or(none, Vec::as_slice)
    }
    let (ce, ne) = (entries(cm, &[]), entries(nm, &[]));
    same_except(c, n, |k| k == "metadata")
        && same_except(cm, nm, |k| k == "resourceVersion" || k == "managedFields")
        && ce.len() == ne.len()
        && ce
            .iter()
            .zip(ne)
            .all(|(a, b)| match (a.as_object(), b.as_object()) {
                (Some(a), Some(b)) => same_except(a, b, |k| k == "time"),
                _ => a == b,
            })
}

/// Writes an updated object; an object being deleted whose last finalizer went away is
/// deleted instead.
#[allow(clippy::too_many_arguments)]
async fn store_update(
    api: &Arc<ApiServer>,
    def: &ResourceDef,
    namespace: Option<&str>,
    name: &str,
    cur: &Value,
    new: Value,
    cur_rv: i64,
    dry_run: bool,
) -> Result<Value, ApiError> {
    if dry_run {
        return Ok(new);
    }
    if unchanged(cur, &new) {
        // Kubernetes writes nothing for a no-op update: no new resourceVersion, no event.
        return Ok(cur.clone());
    }
    // A namespace also waits for `spec.finalizers` (its content being emptied).
    let spec_finalizers = new
        .pointer("/spec/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    if meta::is_terminating(&new) && meta::finalizers(&new).is_empty() && !spec_finalizers {
        let last = api
            .storage
            .delete(def, namespace, name, new, cur_rv)
            .await?;
        return Ok(last);
    }
    api.storage.update(def, namespace, name, new, cur_rv).await
}

async fn patch(
    api: &Arc<ApiServer>,
    user: &UserInfo,
    r: &ResourceRequest,
    headers: &HeaderMap,
    q: &Query,
    body: Body,
) -> Result<Response, ApiError> {
    let opts = WriteOptions::parse(q, headers)?;
    let name = name(r)?.to_string();
    let ct = super::body::content_type(headers);
    let pt = PatchType::from_content_type(&ct).ok_or_else(|| {
        ApiError::UnsupportedMediaType(format!(
            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {ct:?})"
        ))
    })?;
    let bytes = read_body(body).await?;
    let target = if r.subresource == "status" {
        WriteTarget::Status
    } else {
        WriteTarget::Main
    };
    let force = q.flag("force");
    if pt == PatchType::Apply && q.get("fieldManager").unwrap_or("").is_empty() {
        return Err(ApiError::BadRequest(
            "PATCH with apply-patch+yaml requires fieldManager".into(),
        ));
    }
    if pt != PatchType::Apply && q.get("force").is_some() {
        return Err(ApiError::BadRequest(
            "force may only be set for apply patches".into(),
        ));
    }
    let applied: Option<Value> = if pt == PatchType::Apply {
        let v: Value = serde_yaml::from_slice(&bytes)
            .map_err(|e| ApiError::BadRequest(format!("error decoding YAML: {e}")))?;
        if !v.is_object() {
            return Err(ApiError::BadRequest(
                "the apply configuration must be an object".into(),
            ));
        }
        Some(v)
    } else {
        None
    };
    let now = meta::now_rfc3339();
    for _ in 0..WRITE_ATTEMPTS {
        let cur = api.storage.get(&r.def, ns(r), &name).await?;
        let Some(cur) = cur else {
            // Server-side apply creates what is missing.
            let Some(applied) = &applied else {
                return Err(storage::not_found(&r.def, &name));
            };
            if target == WriteTarget::Status {
                return Err(storage::not_found(&r.def, &name));
            }
            let new = crate::patch::apply::apply(None, applied, &opts.manager, force, &now)
                .map_err(|e| e.to_api_error(r.def.kind, r.def.group, r.def.plural, &name))?;
            let (new, warnings) = admit(
                api,
                &r.def,
                new,
                None,
                WriteTarget::Main,
                &opts,
                ns(r),
                Some(&name),
                false,
            )?;
            match create_admitted(api, &r.def, ns(r), new, opts.dry_run).await {
                Ok(v) => return Ok(json_response(StatusCode::CREATED, &v, &warnings)),
                Err(ApiError::AlreadyExists { .. }) => continue,
                Err(e) => return Err(e),
            }
        };
        let cur_rv = meta::resource_version(&cur)?.unwrap_or(0);
        let (patched, record) = match &applied {
            Some(applied) => (
                crate::patch::apply::apply(Some(&cur), applied, &opts.manager, force, &now)
                    .map_err(|e| e.to_api_error(r.def.kind, r.def.group, r.def.plural, &name))?,
                false,
            ),
            None => (
                crate::patch::apply_patch(pt, &cur, &bytes)
                    .map_err(|e| e.to_api_error(r.def.kind, r.def.group, r.def.plural, &name))?,
                true,
            ),
        };
        // A patch may carry a resourceVersion precondition.
        let precondition = meta::resource_version(&patched)?.filter(|v| *v != cur_rv);
        if precondition.is_some() {
            return Err(storage::conflict(&r.def, &name));
        }
        let (new, warnings) = admit(
            api,
            &r.def,
            patched,
            Some(&cur),
            target,
            &opts,
            ns(r),
            Some(&name),
            record,
        )?;
        crate::auth::node::admit_write(user, r.def.plural, &cur, &new)?;
        match store_update(api, &r.def, ns(r), &name, &cur, new, cur_rv, opts.dry_run).await {
            Ok(v) => return Ok(json_response(StatusCode::OK, &v, &warnings)),
            Err(ApiError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(storage::conflict(&r.def, &name))
}

/// Finalizer the node agent keeps on a bound Ship until its VM is gone.
pub const AGENT_FINALIZER: &str = "tugboat.io/agent";

/// `POST ships/<name>/binding` (a `v1` Binding with `target.name` = the node): assigns an
/// unbound Ship to a node in one write, as kube-scheduler's binding does. The same write adds
/// the agent's finalizer (a bound Ship may have a VM, which must be gone before the object
/// is) and records phase `Scheduled` with a `Scheduled` condition. A Ship bound already, or
/// being deleted, answers 409; so does one whose uid differs from `metadata.uid` when the
/// Binding names one.
async fn binding(
    api: &Arc<ApiServer>,
    r: &ResourceRequest,
    body: Body,
) -> Result<Response, ApiError> {
    let name = name(r)?.to_string();
    let bytes = read_body(body).await?;
    let req: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("Binding: {e}")))?;
    let node = req
        .pointer("/target/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(
                "Binding",
                "",
                &name,
                vec![FieldError::required("target.name", "the node to bind to")],
            )
        })?
        .to_string();
    let want_uid = req
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .map(str::to_string);
    let refuse = |why: String| ApiError::Conflict {
        message: format!("Operation cannot be fulfilled on ships/binding \"{name}\": {why}"),
        group: String::new(),
        kind: "ships".into(),
        name: name.clone(),
    };
    for _ in 0..WRITE_ATTEMPTS {
        let (cur, cur_rv) = current(api, &r.def, ns(r), &name).await?;
        if let Some(uid) = &want_uid {
            if meta::meta_str(&cur, "uid") != Some(uid.as_str()) {
                return Err(refuse("the Ship was replaced".into()));
            }
        }
        if let Some(bound) = cur
            .pointer("/spec/nodeName")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            return Err(refuse(format!(
                "ship is already assigned to node \"{bound}\""
            )));
        }
        if meta::is_terminating(&cur) {
            return Err(refuse("the Ship is being deleted".into()));
        }
        let mut new = cur.clone();
        new["spec"]["nodeName"] = json!(node);
        let fins = new["metadata"]
            .as_object_mut()
            .map(|m| m.entry("finalizers").or_insert_with(|| json!([])));
        if let Some(Value::Array(f)) = fins {
            if !f.iter().any(|v| v.as_str() == Some(AGENT_FINALIZER)) {
                f.push(json!(AGENT_FINALIZER));
            }
        }
        if !new.get("status").is_some_and(Value::is_object) {
            new["status"] = json!({});
        }
        let now = meta::now_rfc3339();
        let phase = new
            .pointer("/status/phase")
            .and_then(Value::as_str)
            .unwrap_or("");
        if phase.is_empty() || phase == "Pending" {
            new["status"]["phase"] = json!("Scheduled");
        }
        let mut conditions: Vec<Value> = new
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .map(|cs| {
                cs.iter()
                    .filter(|c| c.get("type").and_then(Value::as_str) != Some("Scheduled"))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        conditions.push(json!({
            "type": "Scheduled",
            "status": "True",
            "reason": "Bound",
            "message": format!("bound to node {node}"),
            "lastTransitionTime": now,
        }));
        new["status"]["conditions"] = json!(conditions);
        // spec.nodeName changed: a new generation, as for any spec change.
        let generation = cur
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        new["metadata"]["generation"] = json!(generation.saturating_add(1));
        match store_update(api, &r.def, ns(r), &name, &cur, new, cur_rv, false).await {
            Ok(_) => {
                let status = json!({
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "code": 201,
                });
                return Ok(json_response(StatusCode::CREATED, &status, &[]));
            }
            Err(ApiError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(storage::conflict(&r.def, &name))
}

fn scale_of(def: &ResourceDef, obj: &Value) -> Result<Value, ApiError> {
    let spec = def.scale.as_ref().ok_or(ApiError::NoRoute)?;
    let get = |path: &[&str]| -> Option<&Value> {
        let mut v = obj;
        for p in path {
            v = v.get(*p)?;
        }
        Some(v)
    };
    let replicas = get(spec.spec_replicas).and_then(Value::as_i64).unwrap_or(0);
    let observed = get(spec.status_replicas)
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let selector = get(spec.selector)
        .and_then(|s| LabelSelector::from_k8s(s).ok())
        .map(|s| s.to_string())
        .unwrap_or_default();
    let m = obj.get("metadata").cloned().unwrap_or(json!({}));
    Ok(json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": m.get("name"), "namespace": m.get("namespace"), "uid": m.get("uid"),
            "resourceVersion": m.get("resourceVersion"), "creationTimestamp": m.get("creationTimestamp"),
        },
        "spec": {"replicas": replicas},
        "status": {"replicas": observed, "selector": selector},
    }))
}

async fn get_scale(api: &ApiServer, r: &ResourceRequest) -> Result<Response, ApiError> {
    let name = name(r)?;
    let obj = api
        .storage
        .get(&r.def, ns(r), name)
        .await?
        .ok_or_else(|| storage::not_found(&r.def, name))?;
    Ok(json_response(StatusCode::OK, &scale_of(&r.def, &obj)?, &[]))
}

async fn write_scale(
    api: &Arc<ApiServer>,
    r: &ResourceRequest,
    headers: &HeaderMap,
    q: &Query,
    body: Body,
) -> Result<Response, ApiError> {
    let opts = WriteOptions::parse(q, headers)?;
    let name = name(r)?.to_string();
    let bytes = read_body(body).await?;
    let spec = r.def.scale.clone().ok_or(ApiError::NoRoute)?;
    for _ in 0..WRITE_ATTEMPTS {
        let (cur, cur_rv) = current(api, &r.def, ns(r), &name).await?;
        let scale = scale_of(&r.def, &cur)?;
        let new_scale = if r.verb == "update" {
            decode_object(headers, &bytes)?
        } else {
            let ct = super::body::content_type(headers);
            let pt = PatchType::from_content_type(&ct).ok_or_else(|| {
                ApiError::UnsupportedMediaType(format!("unsupported patch type {ct:?}"))
            })?;
            if pt == PatchType::Apply {
                return Err(ApiError::UnsupportedMediaType(
                    "apply patches are not supported on /scale".into(),
                ));
            }
            crate::patch::apply_patch(pt, &scale, &bytes)
                .map_err(|e| e.to_api_error(r.def.kind, r.def.group, r.def.plural, &name))?
        };
        let replicas = new_scale
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .ok_or_else(|| {
                ApiError::invalid(
                    "Scale",
                    "autoscaling",
                    &name,
                    vec![FieldError::required("spec.replicas", "")],
                )
            })?;
        if replicas < 0 {
            return Err(ApiError::invalid(
                "Scale",
                "autoscaling",
                &name,
                vec![FieldError::invalid(
                    "spec.replicas",
                    &json!(replicas),
                    "must be greater than or equal to 0",
                )],
            ));
        }
        let mut obj = cur.clone();
        let mut slot = &mut obj;
        for p in &spec.spec_replicas[..spec.spec_replicas.len() - 1] {
            slot = slot
                .as_object_mut()
                .ok_or_else(|| ApiError::Internal("bad object shape".into()))?
                .entry(p.to_string())
                .or_insert_with(|| json!({}));
        }
        if let Some(last) = spec.spec_replicas.last() {
            slot[*last] = json!(replicas);
        }
        let (new, _) = admit(
            api,
            &r.def,
            obj,
            Some(&cur),
            WriteTarget::Main,
            &opts,
            ns(r),
            Some(&name),
            true,
        )?;
        match store_update(api, &r.def, ns(r), &name, &cur, new, cur_rv, opts.dry_run).await {
            Ok(v) => {
                return Ok(json_response(StatusCode::OK, &scale_of(&r.def, &v)?, &[]));
            }
            Err(ApiError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(storage::conflict(&r.def, &name))
}

async fn token(
    api: &ApiServer,
    r: &ResourceRequest,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let name = name(r)?;
    let namespace = ns(r).unwrap_or("default");
    let bytes = read_body(body).await?;
    // JSON, YAML or protobuf (what `kubectl create token` sends).
    let req: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        decode_object(headers, &bytes)?
    };
    match req.get("kind").and_then(Value::as_str) {
        None | Some("") | Some("TokenRequest") => {}
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "the body is a {other:?}, but this endpoint takes a TokenRequest"
            )))
        }
    }
    // The ServiceAccount must exist now (read through, not from a possibly lagging cache).
    api.storage
        .get(&r.def, Some(namespace), name)
        .await?
        .ok_or_else(|| storage::not_found(&r.def, name))?;
    let resp = api
        .authn
        .token_request(namespace, name, &req, jiff::Timestamp::now())?;
    Ok(json_response(StatusCode::CREATED, &resp, &[]))
}

#[derive(Default)]
struct DeleteOptions {
    propagation: Option<String>,
    uid: Option<String>,
    resource_version: Option<String>,
    dry_run: bool,
}

fn delete_options(q: &Query, bytes: &[u8]) -> Result<DeleteOptions, ApiError> {
    let mut o = DeleteOptions {
        propagation: q.get("propagationPolicy").map(str::to_string),
        dry_run: q.get("dryRun") == Some("All"),
        ..Default::default()
    };
    if !bytes.iter().all(u8::is_ascii_whitespace) {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| ApiError::BadRequest(format!("decoding DeleteOptions: {e}")))?;
        if let Some(p) = v.get("propagationPolicy").and_then(Value::as_str) {
            o.propagation = Some(p.to_string());
        }
        if v.get("orphanDependents").and_then(Value::as_bool) == Some(true) {
            o.propagation = Some("Orphan".into());
        }
        if let Some(p) = v.get("preconditions") {
            o.uid = p.get("uid").and_then(Value::as_str).map(str::to_string);
            o.resource_version = p
                .get("resourceVersion")
                .and_then(Value::as_str)
                .map(str::to_string);
        }
        if let Some(d) = v.get("dryRun").and_then(Value::as_array) {
            o.dry_run |= d.iter().any(|x| x == "All");
        }
    }
    match o.propagation.as_deref() {
        None | Some("Background") | Some("Foreground") | Some("Orphan") => Ok(o),
        Some(other) => Err(ApiError::invalid(
            "DeleteOptions",
            "",
            "",
            vec![FieldError::not_supported(
                "propagationPolicy",
                &json!(other),
                &["Foreground", "Background", "Orphan"],
            )],
        )),
    }
}

async fn delete(
    api: &Arc<ApiServer>,
    r: &ResourceRequest,
    q: &Query,
    body: Body,
) -> Result<Response, ApiError> {
    let name = name(r)?.to_string();
    let bytes = read_body(body).await?;
    let opts = delete_options(q, &bytes)?;
    let (code, v) = delete_one(api, &r.def, ns(r), &name, &opts).await?;
    Ok(json_response(code, &v, &[]))
}

/// Deletes one object, honouring preconditions, finalizers and the propagation policy.
async fn delete_one(
    api: &Arc<ApiServer>,
    def: &ResourceDef,
    namespace: Option<&str>,
    name: &str,
    opts: &DeleteOptions,
) -> Result<(StatusCode, Value), ApiError> {
    for _ in 0..WRITE_ATTEMPTS {
        let (cur, cur_rv) = current(api, def, namespace, name).await?;
        if let Some(uid) = &opts.uid {
            let actual = meta::meta_str(&cur, "uid").unwrap_or("");
            if actual != uid {
                return Err(ApiError::Conflict {
                    message: format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {actual}"),
                    group: def.group.to_string(),
                    kind: def.plural.to_string(),
                    name: name.to_string(),
                });
            }
        }
        if let Some(rv) = &opts.resource_version {
            if *rv != cur_rv.to_string() {
                return Err(ApiError::Conflict {
                    message: format!("Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {cur_rv}"),
                    group: def.group.to_string(),
                    kind: def.plural.to_string(),
                    name: name.to_string(),
                });
            }
        }
        if opts.dry_run {
            return Ok((StatusCode::OK, cur));
        }
        let is_namespace = def.kind == "Namespace" && def.group.is_empty();
        let mut fins = meta::finalizers(&cur);
        let foreground = opts.propagation.as_deref() == Some("Foreground");
        if foreground
            && !fins.iter().any(|f| f == "foregroundDeletion")
            && has_dependents(api, &cur)
        {
            fins.push("foregroundDeletion".into());
        }
        if opts.propagation.as_deref() == Some("Orphan") {
            orphan_dependents(api, &cur).await?;
        }
        if is_namespace || !fins.is_empty() {
            if meta::is_terminating(&cur) && meta::finalizers(&cur) == fins && !is_namespace {
                return Ok((StatusCode::ACCEPTED, cur));
            }
            let mut marked = cur.clone();
            {
                let m = meta::meta_mut(&mut marked)?;
                if !m.contains_key("deletionTimestamp") {
                    m.insert("deletionTimestamp".into(), json!(meta::now_rfc3339()));
                    m.insert("deletionGracePeriodSeconds".into(), json!(0));
                }
                m.insert("finalizers".into(), json!(fins));
                if fins.is_empty() {
                    m.remove("finalizers");
                }
            }
            if is_namespace {
                marked["status"] = json!({"phase": "Terminating"});
            }
            match api
                .storage
                .update(def, namespace, name, marked, cur_rv)
                .await
            {
                Ok(v) => {
                    spawn_finalizers(api.clone(), def.clone(), v.clone());
                    return Ok((StatusCode::ACCEPTED, v));
                }
                Err(ApiError::Conflict { .. }) => continue,
                Err(e) => return Err(e),
            }
        }
        match api
            .storage
            .delete(def, namespace, name, cur.clone(), cur_rv)
            .await
        {
            Ok(last) => {
                if opts.propagation.as_deref() != Some("Orphan") {
                    let api = api.clone();
                    let uid = meta::meta_str(&last, "uid").unwrap_or("").to_string();
                    tokio::spawn(async move { delete_dependents(&api, &uid).await });
                }
                return Ok((StatusCode::OK, last));
            }
            Err(ApiError::Conflict { .. }) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(storage::conflict(def, name))
}

/// `delete_one` behind a named Send future type: deletes recurse through dependents.
fn delete_one_boxed<'a>(
    api: &'a Arc<ApiServer>,
    def: &'a ResourceDef,
    namespace: Option<&'a str>,
    name: &'a str,
    opts: &'a DeleteOptions,
) -> futures::future::BoxFuture<'a, Result<(StatusCode, Value), ApiError>> {
    Box::pin(delete_one(api, def, namespace, name, opts))
}

fn dependents(api: &ApiServer, uid: &str) -> Vec<(ResourceDef, Arc<Value>)> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for def in api.registry.all() {
        if !seen.insert(def.storage) {
            continue;
        }
        if let Some(c) = api.storage.cache(def.storage) {
            for o in c.by_index(OWNER_INDEX, uid) {
                out.push((def.clone(), o));
            }
        }
    }
    out
}

fn has_dependents(api: &ApiServer, obj: &Value) -> bool {
    !dependents(api, meta::meta_str(obj, "uid").unwrap_or("")).is_empty()
}

/// Removes the owner's uid from its dependents' ownerReferences.
async fn orphan_dependents(api: &Arc<ApiServer>, owner: &Value) -> Result<(), ApiError> {
    let uid = meta::meta_str(owner, "uid").unwrap_or("").to_string();
    for (def, dep) in dependents(api, &uid) {
        let ns = meta::meta_str(&dep, "namespace").map(str::to_string);
        let name = meta::name_of(&dep).to_string();
        // The cached copy may be stale, and agents update dependents' status often: on a
        // conflict, read the dependent again and retry. The owner is deleted only once every
        // dependent let go of it; otherwise the garbage collector would find them ownerless
        // and delete what the client asked to keep.
        let mut dep = dep.as_ref().clone();
        let mut attempts = 0;
        loop {
            let mut new = dep.clone();
            if let Some(refs) = new
                .pointer_mut("/metadata/ownerReferences")
                .and_then(Value::as_array_mut)
            {
                refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid.as_str()));
            }
            let rv = meta::resource_version(&dep)?.unwrap_or(0);
            match api
                .storage
                .update(&def, ns.as_deref(), &name, new, rv)
                .await
            {
                Ok(_) => break,
                Err(ApiError::NotFound { .. }) => break,
                Err(ApiError::Conflict { .. }) if attempts < WRITE_ATTEMPTS => {
                    attempts += 1;
                    match api.storage.get(&def, ns.as_deref(), &name).await? {
                        Some(fresh) => dep = fresh,
                        None => break,
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

/// Deletes every dependent of `uid` (background propagation).
async fn delete_dependents(api: &Arc<ApiServer>, uid: &str) {
    for (def, dep) in dependents(api, uid) {
        let ns = meta::meta_str(&dep, "namespace").map(str::to_string);
        let name = meta::name_of(&dep).to_string();
        let opts = DeleteOptions {
            propagation: Some("Background".into()),
            ..Default::default()
        };
        match delete_one_boxed(api, &def, ns.as_deref(), &name, &opts).await {
            Ok(_) | Err(ApiError::NotFound { .. }) => {}
            Err(e) => tracing::warn!(error = %e, name, "deleting a dependent failed"),
        }
    }
}

/// Finishes deletions the apiserver itself is responsible for: foreground dependents and
/// namespace content.
fn spawn_finalizers(api: Arc<ApiServer>, def: ResourceDef, obj: Value) {
    tokio::spawn(async move {
        let is_namespace = def.kind == "Namespace" && def.group.is_empty();
        let fins = meta::finalizers(&obj);
        if !is_namespace && !fins.iter().any(|f| f == "foregroundDeletion") {
            return;
        }
        let name = meta::name_of(&obj).to_string();
        let ns = meta::meta_str(&obj, "namespace").map(str::to_string);
        for attempt in 0..600u32 {
            let done = if is_namespace {
                empty_namespace(&api, &name).await
            } else {
                let uid = meta::meta_str(&obj, "uid").unwrap_or("").to_string();
                delete_dependents(&api, &uid).await;
                dependents(&api, &uid).is_empty()
            };
            if done {
                let fin = if is_namespace {
                    "kubernetes"
                } else {
                    "foregroundDeletion"
                };
                if remove_finalizer(&api, &def, ns.as_deref(), &name, fin, is_namespace).await {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(if attempt < 20 { 100 } else { 1000 })).await;
        }
    });
}

/// Deletes everything in a namespace; true when nothing is left.
async fn empty_namespace(api: &Arc<ApiServer>, ns: &str) -> bool {
    let mut left = 0usize;
    let mut seen = std::collections::HashSet::new();
    for def in api.registry.all() {
        if !def.namespaced || !seen.insert(def.storage) {
            continue;
        }
        let Some(c) = api.storage.cache(def.storage) else {
            continue;
        };
        let prefix = list_prefix(def, Some(ns));
        let end = String::from_utf8_lossy(&prefix_end(prefix.as_bytes())).into_owned();
        let (items, _) = c.snapshot(&prefix, &end);
        for (_, o) in items {
            left += 1;
            if meta::is_terminating(&o) {
                continue;
            }
            let name = meta::name_of(&o).to_string();
            let opts = DeleteOptions::default();
            if let Err(e) = delete_one_boxed(api, def, Some(ns), &name, &opts).await {
                if !matches!(e, ApiError::NotFound { .. }) {
                    tracing::warn!(error = %e, ns, name, "namespace cleanup");
                }
            }
        }
    }
    left == 0
}

async fn remove_finalizer(
    api: &Arc<ApiServer>,
    def: &ResourceDef,
    ns: Option<&str>,
    name: &str,
    fin: &str,
    is_namespace: bool,
) -> bool {
    let Ok(Some(cur)) = api.storage.get(def, ns, name).await else {
        return true;
    };
    let rv = meta::resource_version(&cur).ok().flatten().unwrap_or(0);
    let mut new = cur.clone();
    if is_namespace {
        if let Some(f) = new
            .pointer_mut("/spec/finalizers")
            .and_then(Value::as_array_mut)
        {
            f.retain(|x| x != fin);
        }
    }
    let mut fins = meta::finalizers(&new);
    fins.retain(|f| f != fin);
    if let Ok(m) = meta::meta_mut(&mut new) {
        if fins.is_empty() {
            m.remove("finalizers");
        } else {
            m.insert("finalizers".into(), json!(fins));
        }
    }
    let spec_empty = new
        .pointer("/spec/finalizers")
        .and_then(Value::as_array)
        .is_none_or(|a| a.is_empty());
    let res = if fins.is_empty() && (!is_namespace || spec_empty) {
        api.storage.delete(def, ns, name, new, rv).await.map(|_| ())
    } else {
        api.storage.update(def, ns, name, new, rv).await.map(|_| ())
    };
    res.is_ok()
}

async fn delete_collection(
    api: &Arc<ApiServer>,
    r: &ResourceRequest,
    q: &Query,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(body).await?;
    let opts = delete_options(q, &bytes)?;
    let filter = build_filter(&r.def, q)?;
    let page = api
        .storage
        .list(&r.def, ns(r), &ListRequest::default(), &|v: &Value| {
            filter(v)
        })
        .await?;
    let mut deleted = Vec::new();
    for o in &page.items {
        let name = meta::name_of(o).to_string();
        let ns = meta::meta_str(o, "namespace").map(str::to_string);
        match delete_one(api, &r.def, ns.as_deref(), &name, &opts).await {
            Ok((_, v)) => deleted.push(v),
            Err(ApiError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    let list = json!({
        "kind": r.def.list_kind(),
        "apiVersion": r.def.api_version(),
        "metadata": {"resourceVersion": page.revision.to_string()},
        "items": deleted,
    });
    let _ = success_status;
    Ok(json_response(StatusCode::OK, &list, &[]))
}

/// Creates each object unless it exists (bootstrap defaults). Objects are admitted like any
/// create, so defaults and validation apply.
pub async fn ensure_objects(api: &Arc<ApiServer>, objects: &[Value]) -> Result<(), ApiError> {
    let opts = WriteOptions {
        dry_run: false,
        field_validation: FieldValidation::Ignore,
        manager: "tugboat-apiserver".into(),
    };
    for o in objects {
        let av = o.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = o.get("kind").and_then(Value::as_str).unwrap_or("");
        let Some(def) = api.registry.by_kind(av, kind).cloned() else {
            return Err(ApiError::Internal(format!(
                "bootstrap object of unknown kind {av} {kind}"
            )));
        };
        let ns = meta::meta_str(o, "namespace").map(str::to_string);
        let name = meta::name_of(o).to_string();
        if api.storage.get(&def, ns.as_deref(), &name).await?.is_some() {
            continue;
        }
        let (obj, _) = admit(
            api,
            &def,
            o.clone(),
            None,
            WriteTarget::Main,
            &opts,
            ns.as_deref(),
            None,
            true,
        )?;
        match create_admitted(api, &def, ns.as_deref(), obj, false).await {
            Ok(_) | Err(ApiError::AlreadyExists { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Picks up deletions left unfinished by an apiserver that stopped (terminating namespaces,
/// foreground deletions).
pub async fn resume_terminations(api: &Arc<ApiServer>) {
    // Wait until the caches are filled so the scan sees everything.
    for _ in 0..600 {
        if api.storage.ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut seen = std::collections::HashSet::new();
    for def in api.registry.all() {
        if !seen.insert(def.storage) {
            continue;
        }
        let Some(c) = api.storage.cache(def.storage) else {
            continue;
        };
        let prefix = list_prefix(def, None);
        let end = String::from_utf8_lossy(&prefix_end(prefix.as_bytes())).into_owned();
        for (_, o) in c.snapshot(&prefix, &end).0 {
            if meta::is_terminating(&o) {
                spawn_finalizers(api.clone(), def.clone(), o.as_ref().clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::unchanged;
    use serde_json::json;

    fn obj(rv: &str, time: &str, label: &str, manager: &str) -> serde_json::Value {
        json!({
            "apiVersion": "v1", "kind": "Ship",
            "metadata": {"name": "s", "resourceVersion": rv, "labels": {"a": label},
                "managedFields": [{"manager": manager, "operation": "Update", "time": time}]},
            "spec": {"image": "i"}, "status": {"phase": "Pending"},
        })
    }

    #[test]
    fn only_bookkeeping_differs() {
        let cur = obj("5", "2026-01-01T00:00:00Z", "x", "kubectl");
        assert!(unchanged(
            &cur,
            &obj("", "2026-01-02T00:00:00Z", "x", "kubectl")
        ));
        assert!(!unchanged(
            &cur,
            &obj("5", "2026-01-01T00:00:00Z", "y", "kubectl")
        ));
        assert!(!unchanged(
            &cur,
            &obj("5", "2026-01-01T00:00:00Z", "x", "other")
        ));
        let mut status = cur.clone();
        status["status"]["phase"] = json!("Running");
        assert!(!unchanged(&cur, &status));
        let mut extra = cur.clone();
        extra["spec"]["nodeName"] = json!("n1");
        assert!(!unchanged(&cur, &extra));
        let mut no_meta = cur.clone();
        no_meta["metadata"]["finalizers"] = json!(["f"]);
        assert!(!unchanged(&cur, &no_meta));
    }
}
