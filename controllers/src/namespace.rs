//! The Namespace controller: every active namespace has a `default` ServiceAccount and an
//! opaque token Secret for it; a Terminating namespace whose content is gone is finished.
//!
//! The apiserver bootstraps namespaces without ServiceAccounts, so this controller covers the
//! bootstrap namespaces as well as new ones, and repairs a deleted account or Secret. The
//! Secret (`default-token`, type `kubernetes.io/service-account-token`, annotated with the
//! account's name and uid) is created empty: the apiserver fills in the token on create. It is
//! owned by the account, so deleting the account deletes it through the apiserver's
//! propagation. A Secret whose uid annotation names an earlier account of the same name would
//! no longer authenticate, so it is replaced.
//!
//! Namespace deletion is the apiserver's job (it marks the namespace Terminating, deletes its
//! content and removes the `kubernetes` finalizer). That runs in a task of the apiserver that
//! handled the DELETE and gives up after about ten minutes (a Ship whose node is gone can hold
//! it longer), so this controller is the backstop: a namespace this controller has seen
//! Terminating for longer than [`NamespaceConfig::terminating_grace`] gets its remaining
//! content deleted and, once nothing is left, its finalizer removed.

use crate::leader::wait_not_leader;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ObjectReference, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::discovery::{verbs, Discovery, Scope};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use tokio::sync::watch;

/// Name of the ServiceAccount every namespace gets.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// Name of the token Secret of the default ServiceAccount.
pub const DEFAULT_TOKEN_SECRET: &str = "default-token";
/// Type of ServiceAccount token Secrets.
pub const SA_TOKEN_TYPE: &str = "kubernetes.io/service-account-token";
/// Annotation naming a token Secret's ServiceAccount.
pub const SA_NAME_ANNOTATION: &str = "kubernetes.io/service-account.name";
/// Annotation holding the uid of a token Secret's ServiceAccount.
pub const SA_UID_ANNOTATION: &str = "kubernetes.io/service-account.uid";
/// The namespace finalizer the apiserver removes once the namespace is empty.
const NAMESPACE_FINALIZER: &str = "kubernetes";

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    /// The namespace lacks a name.
    #[error("namespace is missing metadata.name")]
    MissingName,
    /// An object changed or appeared concurrently; the next pass sees it.
    #[error("{0} changed concurrently")]
    Conflict(String),
    /// API discovery failed.
    #[error("discovering namespaced resources: {0}")]
    Discovery(#[source] kube::Error),
    /// Another apiserver error.
    #[error("{action}: {source}")]
    Api {
        /// What was being done.
        action: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
}

fn api_err(action: impl Into<String>) -> impl FnOnce(kube::Error) -> NamespaceError {
    let action = action.into();
    move |source| match &source {
        kube::Error::Api(s) if s.code == 409 => NamespaceError::Conflict(action),
        _ => NamespaceError::Api { action, source },
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// Settings of a [`NamespaceController`].
#[derive(Clone, Debug)]
pub struct NamespaceConfig {
    /// Requeue delay after the first failed reconcile; doubles per consecutive failure.
    pub initial_backoff: Duration,
    /// Longest requeue delay after failures.
    pub max_backoff: Duration,
    /// Periodic resync of every namespace.
    pub resync: Duration,
    /// How long a namespace must have been seen Terminating before this controller finishes
    /// its deletion in place of the apiserver.
    pub terminating_grace: Duration,
    /// How often a Terminating namespace is looked at again.
    pub terminating_poll: Duration,
}

impl Default for NamespaceConfig {
    fn default() -> Self {
        NamespaceConfig {
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(30),
            resync: Duration::from_secs(300),
            terminating_grace: Duration::from_secs(60),
            terminating_poll: Duration::from_secs(10),
        }
    }
}

/// State shared by the reconciles of one leadership term.
struct Context {
    client: Client,
    cfg: NamespaceConfig,
    /// Namespace name → consecutive failures.
    failures: Mutex<HashMap<String, u32>>,
    /// Namespace uid → when this controller first saw it Terminating.
    terminating_since: Mutex<HashMap<String, Instant>>,
    /// Namespaced resources that can be listed and deleted (found once per term).
    namespaced: tokio::sync::Mutex<Option<Vec<ApiResource>>>,
}

/// The Namespace controller (see the module docs).
pub struct NamespaceController {
    client: Client,
    cfg: NamespaceConfig,
}

impl NamespaceController {
    /// A controller using `client`.
    pub fn new(client: Client, cfg: NamespaceConfig) -> Self {
        NamespaceController { client, cfg }
    }

    /// Reconciles while `is_leader` is true; returns when its sender is dropped.
    pub async fn run(self, is_leader: watch::Receiver<bool>) {
        crate::leader::run_terms("namespace controller", is_leader, |rx| self.run_term(rx)).await;
    }

    async fn run_term(&self, is_leader: watch::Receiver<bool>) {
        let ctx = Arc::new(Context {
            client: self.client.clone(),
            cfg: self.cfg.clone(),
            failures: Mutex::new(HashMap::new()),
            terminating_since: Mutex::new(HashMap::new()),
            namespaced: tokio::sync::Mutex::new(None),
        });
        let to_namespace = |ns: Option<String>| ns.map(|ns| ObjectRef::<Namespace>::new(&ns));
        let mut shutdown_rx = is_leader;
        Controller::new(
            Api::<Namespace>::all(self.client.clone()),
            watcher::Config::default(),
        )
        .watches(
            Api::<ServiceAccount>::all(self.client.clone()),
            watcher::Config::default().fields(&format!("metadata.name={DEFAULT_SERVICE_ACCOUNT}")),
            move |sa| to_namespace(sa.metadata.namespace.clone()),
        )
        .watches(
            Api::<Secret>::all(self.client.clone()),
            watcher::Config::default().fields(&format!("metadata.name={DEFAULT_TOKEN_SECRET}")),
            move |s| to_namespace(s.metadata.namespace.clone()),
        )
        .graceful_shutdown_on(async move { wait_not_leader(&mut shutdown_rx).await })
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "namespace reconcile");
            }
        })
        .await;
    }
}

fn error_policy(ns: Arc<Namespace>, err: &NamespaceError, ctx: Arc<Context>) -> Action {
    let key = ns.name_any();
    let failures = match ctx.failures.lock() {
        Ok(mut m) => {
            let f = m.entry(key.clone()).or_insert(0);
            *f = f.saturating_add(1);
            *f
        }
        Err(_) => 1,
    };
    let delay = crate::backoff(ctx.cfg.initial_backoff, ctx.cfg.max_backoff, failures);
    if matches!(err, NamespaceError::Conflict(_)) {
        tracing::debug!(namespace = %key, error = %err, ?delay, "reconcile raced; requeueing");
    } else {
        tracing::warn!(namespace = %key, error = %err, ?delay, "reconcile failed; requeueing");
    }
    Action::requeue(delay)
}

async fn reconcile(ns: Arc<Namespace>, ctx: Arc<Context>) -> Result<Action, NamespaceError> {
    let name = ns
        .metadata
        .name
        .clone()
        .ok_or(NamespaceError::MissingName)?;
    let action = if ns.metadata.deletion_timestamp.is_some() {
        finish_terminating(&ns, &name, &ctx).await?
    } else {
        if let (Ok(mut t), Some(uid)) = (ctx.terminating_since.lock(), ns.metadata.uid.as_ref()) {
            t.remove(uid);
        }
        ensure_default_account(&name, &ctx.client).await?;
        Action::requeue(ctx.cfg.resync)
    };
    if let Ok(mut f) = ctx.failures.lock() {
        f.remove(&name);
    }
    Ok(action)
}

/// Creates or repairs the `default` ServiceAccount of `ns` and its token Secret.
async fn ensure_default_account(ns: &str, client: &Client) -> Result<(), NamespaceError> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);

    let sa = match accounts
        .get_opt(DEFAULT_SERVICE_ACCOUNT)
        .await
        .map_err(api_err(format!("reading serviceaccount {ns}/default")))?
    {
        Some(sa) => sa,
        None => {
            let sa = ServiceAccount {
                metadata: ObjectMeta {
                    name: Some(DEFAULT_SERVICE_ACCOUNT.into()),
                    namespace: Some(ns.into()),
                    ..ObjectMeta::default()
                },
                ..ServiceAccount::default()
            };
            let created = accounts
                .create(&PostParams::default(), &sa)
                .await
                .map_err(api_err(format!("creating serviceaccount {ns}/default")))?;
            tracing::info!(namespace = %ns, "created the default serviceaccount");
            created
        }
    };
    let sa_uid = sa.metadata.uid.clone().unwrap_or_default();

    let existing = secrets
        .get_opt(DEFAULT_TOKEN_SECRET)
        .await
        .map_err(api_err(format!(
            "reading secret {ns}/{DEFAULT_TOKEN_SECRET}"
        )))?;
    match existing {
        Some(s) if !is_our_token_secret(&s) => {
            // Somebody else's object under our name: leave it alone rather than destroy it.
            tracing::warn!(
                namespace = %ns,
                secret = DEFAULT_TOKEN_SECRET,
                "secret is not a token of the default serviceaccount; not touching it"
            );
            return Ok(());
        }
        Some(s) if s.metadata.deletion_timestamp.is_some() => {
            // Still going away; its deletion event brings us back.
            return Ok(());
        }
        Some(s) if !token_matches(&s, &sa_uid) => {
            let dp = DeleteParams {
                preconditions: s.metadata.uid.clone().map(|uid| kube::api::Preconditions {
                    uid: Some(uid),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match secrets.delete(DEFAULT_TOKEN_SECRET, &dp).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => {}
                Err(e) => {
                    return Err(api_err(format!(
                        "deleting stale secret {ns}/{DEFAULT_TOKEN_SECRET}"
                    ))(e))
                }
            }
            tracing::info!(namespace = %ns, "replacing the token secret of an earlier default serviceaccount");
            return Err(NamespaceError::Conflict(format!(
                "secret {ns}/{DEFAULT_TOKEN_SECRET} (being replaced)"
            )));
        }
        Some(_) => {}
        None => {
            let secret = token_secret(ns, &sa_uid);
            secrets
                .create(&PostParams::default(), &secret)
                .await
                .map_err(api_err(format!(
                    "creating secret {ns}/{DEFAULT_TOKEN_SECRET}"
                )))?;
            tracing::info!(namespace = %ns, "created the default token secret");
        }
    }

    // Listing the Secret on the account is what `kubectl get sa` shows as SECRETS.
    let listed = sa
        .secrets
        .iter()
        .flatten()
        .any(|r| r.name.as_deref() == Some(DEFAULT_TOKEN_SECRET));
    if !listed {
        let mut refs: Vec<ObjectReference> = sa.secrets.clone().unwrap_or_default();
        refs.push(ObjectReference {
            name: Some(DEFAULT_TOKEN_SECRET.into()),
            ..ObjectReference::default()
        });
        let patch = json!({
            "metadata": {"resourceVersion": sa.metadata.resource_version},
            "secrets": refs,
        });
        accounts
            .patch(
                DEFAULT_SERVICE_ACCOUNT,
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .map_err(api_err(format!(
                "listing the token on serviceaccount {ns}/default"
            )))?;
    }
    Ok(())
}

fn annotation<'a>(s: &'a Secret, key: &str) -> Option<&'a str> {
    s.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// A token Secret of the default ServiceAccount (whichever incarnation).
fn is_our_token_secret(s: &Secret) -> bool {
    s.type_.as_deref() == Some(SA_TOKEN_TYPE)
        && annotation(s, SA_NAME_ANNOTATION) == Some(DEFAULT_SERVICE_ACCOUNT)
}

/// The Secret holds a token and belongs to the account with `sa_uid`.
fn token_matches(s: &Secret, sa_uid: &str) -> bool {
    let has_token = s
        .data
        .as_ref()
        .and_then(|d| d.get("token"))
        .is_some_and(|t| !t.0.is_empty());
    let uid = annotation(s, SA_UID_ANNOTATION).unwrap_or("");
    has_token && (uid.is_empty() || uid == sa_uid)
}

/// The token Secret to create for the account `sa_uid` (the apiserver fills in the token).
fn token_secret(ns: &str, sa_uid: &str) -> Secret {
    let mut annotations = BTreeMap::from([(
        SA_NAME_ANNOTATION.to_string(),
        DEFAULT_SERVICE_ACCOUNT.to_string(),
    )]);
    let mut owners = None;
    if !sa_uid.is_empty() {
        annotations.insert(SA_UID_ANNOTATION.to_string(), sa_uid.to_string());
        owners = Some(vec![OwnerReference {
            api_version: "v1".into(),
            kind: "ServiceAccount".into(),
            name: DEFAULT_SERVICE_ACCOUNT.into(),
            uid: sa_uid.into(),
            controller: Some(true),
            block_owner_deletion: None,
        }]);
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(DEFAULT_TOKEN_SECRET.into()),
            namespace: Some(ns.into()),
            annotations: Some(annotations),
            owner_references: owners,
            ..ObjectMeta::default()
        },
        type_: Some(SA_TOKEN_TYPE.into()),
        ..Secret::default()
    }
}

/// Finishes a Terminating namespace the apiserver has not finished within the grace period.
async fn finish_terminating(
    ns: &Namespace,
    name: &str,
    ctx: &Context,
) -> Result<Action, NamespaceError> {
    let uid = ns.metadata.uid.clone().unwrap_or_default();
    let seen_for = {
        let mut t = ctx.terminating_since.lock().map_err(|_| {
            NamespaceError::Conflict("terminating-namespace bookkeeping (poisoned)".into())
        })?;
        t.entry(uid).or_insert_with(Instant::now).elapsed()
    };
    if seen_for < ctx.cfg.terminating_grace {
        // The apiserver normally finishes well within the grace period; look again after it.
        return Ok(Action::requeue(ctx.cfg.terminating_grace - seen_for));
    }
    let resources = namespaced_resources(ctx).await?;
    let mut left = 0usize;
    for ar in &resources {
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), name, ar);
        let items = match api.list(&ListParams::default()).await {
            Ok(l) => l.items,
            // Kinds that cannot be listed here (or vanished) hold nothing we could delete.
            Err(kube::Error::Api(s)) if matches!(s.code, 404 | 405) => continue,
            Err(e) => return Err(api_err(format!("listing {} in {name}", ar.plural))(e)),
        };
        for o in items {
            left += 1;
            if o.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let oname = o.name_any();
            match api.delete(&oname, &DeleteParams::background()).await {
                Ok(_) => {
                    tracing::info!(namespace = %name, kind = %ar.kind, object = %oname, "deleted leftover content")
                }
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(api_err(format!("deleting {} {name}/{oname}", ar.kind))(e)),
            }
        }
    }
    if left > 0 {
        return Ok(Action::requeue(ctx.cfg.terminating_poll));
    }
    let has_finalizer = ns
        .spec
        .as_ref()
        .and_then(|s| s.finalizers.as_ref())
        .is_some_and(|f| f.iter().any(|x| x == NAMESPACE_FINALIZER));
    if has_finalizer {
        let remaining: Vec<String> = ns
            .spec
            .as_ref()
            .and_then(|s| s.finalizers.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|f| f != NAMESPACE_FINALIZER)
            .collect();
        let patch = json!({
            "metadata": {"resourceVersion": ns.metadata.resource_version},
            "spec": {"finalizers": remaining},
        });
        let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
        match namespaces
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => {
                tracing::info!(namespace = %name, "finished the deletion of an empty namespace")
            }
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(api_err(format!("finishing namespace {name}"))(e)),
        }
    }
    Ok(Action::requeue(ctx.cfg.terminating_poll))
}

/// Every namespaced resource that supports list and delete (discovered once per term).
async fn namespaced_resources(ctx: &Context) -> Result<Vec<ApiResource>, NamespaceError> {
    let mut cached = ctx.namespaced.lock().await;
    if let Some(r) = cached.as_ref() {
        return Ok(r.clone());
    }
    let discovery = Discovery::new(ctx.client.clone())
        .run()
        .await
        .map_err(NamespaceError::Discovery)?;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for group in discovery.groups() {
        for (ar, caps) in group.recommended_resources() {
            if caps.scope != Scope::Namespaced
                || !caps.supports_operation(verbs::LIST)
                || !caps.supports_operation(verbs::DELETE)
            {
                continue;
            }
            // Some kinds are served under two groups (RBAC, Lease): one listing is enough.
            if seen.insert((ar.kind.clone(), ar.plural.clone())) {
                out.push(ar);
            }
        }
    }
    *cached = Some(out.clone());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(ty: &str, sa: &str, uid: &str, token: bool) -> Secret {
        let mut s = token_secret("ns", uid);
        s.type_ = Some(ty.into());
        if let Some(a) = s.metadata.annotations.as_mut() {
            a.insert(SA_NAME_ANNOTATION.into(), sa.into());
        }
        if token {
            s.data = Some(BTreeMap::from([(
                "token".into(),
                k8s_openapi::ByteString(b"tok".to_vec()),
            )]));
        }
        s
    }

    #[test]
    fn token_secret_names_and_is_owned_by_the_account() {
        let s = token_secret("ns", "u1");
        assert!(is_our_token_secret(&s));
        assert_eq!(annotation(&s, SA_UID_ANNOTATION), Some("u1"));
        let owner = s.metadata.owner_references.as_ref().and_then(|o| o.first());
        assert_eq!(owner.map(|o| o.uid.as_str()), Some("u1"));
    }

    #[test]
    fn stale_or_empty_tokens_do_not_match() {
        assert!(token_matches(
            &secret(SA_TOKEN_TYPE, "default", "u1", true),
            "u1"
        ));
        assert!(!token_matches(
            &secret(SA_TOKEN_TYPE, "default", "u0", true),
            "u1"
        ));
        assert!(!token_matches(
            &secret(SA_TOKEN_TYPE, "default", "u1", false),
            "u1"
        ));
        assert!(!is_our_token_secret(&secret(
            "Opaque", "default", "u1", true
        )));
        assert!(!is_our_token_secret(&secret(
            SA_TOKEN_TYPE,
            "bot",
            "u1",
            true
        )));
    }
}
