//! API discovery: the legacy documents (`/api`, `/api/v1`, `/apis`, `/apis/G`, `/apis/G/V`) and
//! aggregated discovery v2 (`apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`) for `/api` and
//! `/apis`.
//!
//! Besides the stored kinds of the [`Registry`] it lists the resources the server answers
//! without storing them: `authorization.k8s.io/v1` selfsubjectaccessreviews and
//! selfsubjectrulesreviews, `authentication.k8s.io/v1` selfsubjectreviews, and the
//! `serviceaccounts/token` subresource (`authentication.k8s.io/v1` TokenRequest).

use crate::registry::{Registry, ResourceDef};
use serde_json::{json, Map, Value};

/// A resource served without storage (reviews): cluster-scoped, `create` only.
struct Virtual {
    group: &'static str,
    plural: &'static str,
    singular: &'static str,
    kind: &'static str,
}

const VIRTUAL: &[Virtual] = &[
    Virtual {
        group: "authorization.k8s.io",
        plural: "selfsubjectaccessreviews",
        singular: "selfsubjectaccessreview",
        kind: "SelfSubjectAccessReview",
    },
    Virtual {
        group: "authorization.k8s.io",
        plural: "selfsubjectrulesreviews",
        singular: "selfsubjectrulesreview",
        kind: "SelfSubjectRulesReview",
    },
    Virtual {
        group: "authentication.k8s.io",
        plural: "selfsubjectreviews",
        singular: "selfsubjectreview",
        kind: "SelfSubjectReview",
    },
];

const CREATE: &[&str] = &["create"];
const SUB_VERBS: &[&str] = &["get", "patch", "update"];

/// One subresource of a stored resource.
struct Sub {
    name: &'static str,
    group: String,
    version: &'static str,
    kind: String,
    verbs: &'static [&'static str],
}

fn subresources(d: &ResourceDef) -> Vec<Sub> {
    let mut out = Vec::new();
    if d.scale.is_some() {
        out.push(Sub {
            name: "scale",
            group: "autoscaling".into(),
            version: "v1",
            kind: "Scale".into(),
            verbs: SUB_VERBS,
        });
    }
    if d.status {
        out.push(Sub {
            name: "status",
            group: d.group.into(),
            version: d.version,
            kind: d.kind.into(),
            verbs: SUB_VERBS,
        });
    }
    if d.group.is_empty() && d.plural == "serviceaccounts" {
        out.push(Sub {
            name: "token",
            group: "authentication.k8s.io".into(),
            version: "v1",
            kind: "TokenRequest".into(),
            verbs: CREATE,
        });
    }
    out
}

/// Group/versions served: the registry's, then the review groups.
fn all_groups(reg: &Registry) -> Vec<(&'static str, Vec<&'static str>)> {
    let mut groups = reg.groups();
    for v in VIRTUAL {
        if !groups.iter().any(|(g, _)| *g == v.group) {
            groups.push((v.group, vec!["v1"]));
        }
    }
    groups
}

fn group_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

/// `GET /api`: `APIVersions`.
pub fn api_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

fn api_group_body(group: &str, versions: &[&str]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": group_version(group, v), "version": v}))
        .collect();
    json!({
        "name": group,
        "versions": vs,
        "preferredVersion": vs.first().cloned().unwrap_or(Value::Null),
    })
}

/// `GET /apis`: `APIGroupList` of every named group.
pub fn api_group_list(reg: &Registry) -> Value {
    let groups: Vec<Value> = all_groups(reg)
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, vs)| api_group_body(g, &vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/<group>`: `APIGroup`, `None` for an unknown group.
pub fn api_group(reg: &Registry, group: &str) -> Option<Value> {
    let (g, vs) = all_groups(reg)
        .into_iter()
        .find(|(g, _)| !g.is_empty() && *g == group)?;
    let mut body = api_group_body(g, &vs);
    if let Value::Object(m) = &mut body {
        m.insert("kind".into(), json!("APIGroup"));
        m.insert("apiVersion".into(), json!("v1"));
    }
    Some(body)
}

fn insert_list(m: &mut Map<String, Value>, key: &str, items: &[&str]) {
    if !items.is_empty() {
        m.insert(key.into(), json!(items));
    }
}

/// `GET /api/v1` (group `""`) or `/apis/<group>/<version>`: `APIResourceList` with the
/// subresources (`ships/status`, `deployments/scale`, `serviceaccounts/token`); `None` when
/// the group/version is not served.
pub fn resource_list(reg: &Registry, group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    for d in reg.in_group_version(group, version) {
        let mut m = Map::new();
        m.insert("name".into(), json!(d.plural));
        m.insert("singularName".into(), json!(d.singular));
        m.insert("namespaced".into(), json!(d.namespaced));
        m.insert("kind".into(), json!(d.kind));
        m.insert("verbs".into(), json!(d.verbs));
        insert_list(&mut m, "shortNames", d.short_names);
        insert_list(&mut m, "categories", d.categories);
        resources.push(Value::Object(m));
        for s in subresources(d) {
            let mut m = Map::new();
            m.insert("name".into(), json!(format!("{}/{}", d.plural, s.name)));
            m.insert("singularName".into(), json!(""));
            m.insert("namespaced".into(), json!(d.namespaced));
            if s.group != d.group || s.version != d.version {
                m.insert("group".into(), json!(s.group));
                m.insert("version".into(), json!(s.version));
            }
            m.insert("kind".into(), json!(s.kind));
            m.insert("verbs".into(), json!(s.verbs));
            resources.push(Value::Object(m));
        }
    }
    if version == "v1" {
        for v in VIRTUAL.iter().filter(|v| v.group == group) {
            resources.push(json!({
                "name": v.plural,
                "singularName": v.singular,
                "namespaced": false,
                "kind": v.kind,
                "verbs": CREATE,
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version(group, version),
        "resources": resources,
    }))
}

fn scope(namespaced: bool) -> &'static str {
    if namespaced {
        "Namespaced"
    } else {
        "Cluster"
    }
}

fn discovery_resource(d: &ResourceDef) -> Value {
    let mut m = Map::new();
    m.insert("resource".into(), json!(d.plural));
    m.insert(
        "responseKind".into(),
        json!({"group": d.group, "version": d.version, "kind": d.kind}),
    );
    m.insert("scope".into(), json!(scope(d.namespaced)));
    m.insert("singularResource".into(), json!(d.singular));
    m.insert("verbs".into(), json!(d.verbs));
    insert_list(&mut m, "shortNames", d.short_names);
    insert_list(&mut m, "categories", d.categories);
    let subs: Vec<Value> = subresources(d)
        .into_iter()
        .map(|s| {
            json!({
                "subresource": s.name,
                "responseKind": {"group": s.group, "version": s.version, "kind": s.kind},
                "verbs": s.verbs,
            })
        })
        .collect();
    if !subs.is_empty() {
        m.insert("subresources".into(), Value::Array(subs));
    }
    Value::Object(m)
}

fn discovery_group(reg: &Registry, group: &str, versions: &[&str]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| {
            let mut resources: Vec<Value> = reg
                .in_group_version(group, v)
                .map(discovery_resource)
                .collect();
            if *v == "v1" {
                for x in VIRTUAL.iter().filter(|x| x.group == group) {
                    resources.push(json!({
                        "resource": x.plural,
                        "responseKind": {"group": x.group, "version": "v1", "kind": x.kind},
                        "scope": "Cluster",
                        "singularResource": x.singular,
                        "verbs": CREATE,
                    }));
                }
            }
            json!({"version": v, "resources": resources, "freshness": "Current"})
        })
        .collect();
    let metadata = if group.is_empty() {
        json!({"creationTimestamp": null})
    } else {
        json!({"name": group, "creationTimestamp": null})
    };
    json!({"metadata": metadata, "versions": versions})
}

fn discovery_list(items: Vec<Value>) -> Value {
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

/// `GET /api` with `Accept: …;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`.
pub fn aggregated_api(reg: &Registry) -> Value {
    discovery_list(vec![discovery_group(reg, "", &["v1"])])
}

/// `GET /apis` with `Accept: …;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList`.
pub fn aggregated_apis(reg: &Registry) -> Value {
    let items = all_groups(reg)
        .into_iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, vs)| discovery_group(reg, g, &vs))
        .collect();
    discovery_list(items)
}

/// The `Content-Type` of an aggregated discovery response.
pub const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

#[cfg(test)]
mod tests {
    use super::*;

    fn find<'a>(list: &'a Value, key: &str, name: &str) -> Option<&'a Value> {
        list.as_array()?
            .iter()
            .find(|r| r.get(key).and_then(Value::as_str) == Some(name))
    }

    #[test]
    fn kinds_discovery_aggregated_lists_ships_with_response_kind() {
        let reg = crate::kinds::registry();
        let api = aggregated_api(&reg);
        assert_eq!(api["kind"], "APIGroupDiscoveryList");
        let res = &api["items"][0]["versions"][0]["resources"];
        let ships = find(res, "resource", "ships").expect("ships listed");
        assert_eq!(ships["responseKind"]["kind"], "Ship");
        assert_eq!(ships["scope"], "Namespaced");
        assert_eq!(ships["shortNames"], json!(["sh"]));
        assert_eq!(ships["categories"], json!(["all"]));
        assert!(find(&ships["subresources"], "subresource", "status").is_some());
        let sa = find(res, "resource", "serviceaccounts").unwrap();
        let token = find(&sa["subresources"], "subresource", "token").unwrap();
        assert_eq!(token["responseKind"]["kind"], "TokenRequest");
        let nodes = find(res, "resource", "nodes").unwrap();
        assert_eq!(nodes["scope"], "Cluster");

        let apis = aggregated_apis(&reg);
        let items = apis["items"].as_array().unwrap();
        let names: Vec<&str> = items
            .iter()
            .filter_map(|i| i["metadata"]["name"].as_str())
            .collect();
        for g in [
            "apps",
            "authorization",
            "rbac.authorization.k8s.io",
            "coordination",
            "authorization.k8s.io",
            "authentication.k8s.io",
        ] {
            assert!(names.contains(&g), "{g} missing from {names:?}");
        }
        let apps = items
            .iter()
            .find(|i| i["metadata"]["name"] == "apps")
            .unwrap();
        let deploy = find(&apps["versions"][0]["resources"], "resource", "deployments").unwrap();
        let scale = find(&deploy["subresources"], "subresource", "scale").unwrap();
        assert_eq!(scale["responseKind"]["group"], "autoscaling");
        // Every resource carries a responseKind, or kubectl silently drops it.
        for item in items {
            for v in item["versions"].as_array().unwrap() {
                for r in v["resources"].as_array().unwrap() {
                    assert!(r["responseKind"]["kind"].is_string(), "{r}");
                }
            }
        }
    }

    #[test]
    fn kinds_discovery_legacy_documents() {
        let reg = crate::kinds::registry();
        assert_eq!(api_versions()["versions"], json!(["v1"]));
        let v1 = resource_list(&reg, "", "v1").unwrap();
        let res = &v1["resources"];
        assert!(find(res, "name", "ships").is_some());
        assert!(find(res, "name", "ships/status").is_some());
        let token = find(res, "name", "serviceaccounts/token").unwrap();
        assert_eq!(token["group"], "authentication.k8s.io");
        let apps = resource_list(&reg, "apps", "v1").unwrap();
        let scale = find(&apps["resources"], "name", "deployments/scale").unwrap();
        assert_eq!(scale["kind"], "Scale");
        let authz = resource_list(&reg, "authorization.k8s.io", "v1").unwrap();
        assert!(find(&authz["resources"], "name", "selfsubjectaccessreviews").is_some());
        assert!(resource_list(&reg, "nope", "v1").is_none());
        let groups = api_group_list(&reg);
        assert!(find(&groups["groups"], "name", "coordination").is_some());
        assert!(find(&groups["groups"], "name", "").is_none());
        assert_eq!(
            api_group(&reg, "apps").unwrap()["preferredVersion"]["groupVersion"],
            "apps/v1"
        );
        assert!(api_group(&reg, "nope").is_none());
    }
}
