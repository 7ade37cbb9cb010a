//! The gate in front of every gRPC service: who is calling (the SPIFFE ID
//! of its client certificate), and may it call this method at all. A
//! refused call never reaches a handler, so it changes nothing.
//!
//! The TLS handshake has already refused an unknown CA and an expired
//! certificate, and a missing one unless JWT bearer authentication is
//! configured; this layer refuses a certificate (or bearer token) that names
//! no single valid SPIFFE ID or one from another trust domain
//! (Unauthenticated), and a caller without the method's role
//! (PermissionDenied). The handlers read the [`Caller`] it leaves in the
//! request for what depends on the request's content (Issue's subject,
//! Check's identity).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use grant_proto::FORWARDED_FOR_KEY;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

use super::bearer::BearerAuth;
use super::roles::{check_replicated, Need, Role, RoleMap, RolesConfig};
use crate::api::errors::ApiError;
use crate::api::validate;
use crate::audit::refusals::Refusals;
use crate::storage::StateReader;
use tonic::body::Body;

/// How callers are known on a listener.
pub enum Access {
    /// Plaintext on loopback (`insecure`): nobody is identified and every
    /// call is let in.
    Insecure,
    /// mTLS: callers are their certificates' SPIFFE IDs.
    Mtls(Box<Mtls>),
}

/// The mTLS side: the trust domain, and the role mapping in force.
pub struct Mtls {
    trust_domain: String,
    /// The config file's mapping: in force until the first replicated one,
    /// and always the source of `peer`.
    bootstrap: RolesConfig,
    state: StateReader,
    /// Callers without a client certificate may present a JWT instead.
    bearer: Option<BearerAuth>,
    /// (roles version, mapping in force, as written): reloaded when the
    /// state's roles version moves.
    cache: RwLock<(u64, Arc<RoleMap>, Arc<RolesConfig>)>,
}

/// Where the mapping in force comes from.
#[derive(Debug, PartialEq)]
pub enum RolesSource {
    /// The config file (no `SetRoles` committed yet).
    Config,
    /// The replicated mapping committed at this log index.
    Replicated(u64),
}

/// In a request's extensions: a node forwarded it from a follower
/// (`api::forward`), so it is served here or refused, never sent on.
#[derive(Clone, Copy, Debug)]
pub struct Forwarded;

/// The authenticated caller of one request, in its extensions.
#[derive(Clone, Debug, PartialEq)]
pub enum Caller {
    Anonymous,
    Spiffe(String),
}

impl Caller {
    /// Of a request that passed the layer.
    pub fn of<T>(req: &tonic::Request<T>) -> Caller {
        req.extensions()
            .get::<Caller>()
            .cloned()
            .unwrap_or(Caller::Anonymous)
    }

    /// The identity as recorded in the log and audit entries ("" when
    /// anonymous).
    pub fn id(&self) -> &str {
        match self {
            Caller::Anonymous => "",
            Caller::Spiffe(id) => id,
        }
    }
}

impl Mtls {
    pub fn new(
        trust_domain: String,
        bootstrap: RolesConfig,
        state: StateReader,
        bearer: Option<BearerAuth>,
    ) -> Result<Mtls, String> {
        let map = RoleMap::from_config(&bootstrap)?;
        let cache = RwLock::new((0, Arc::new(map), Arc::new(bootstrap.clone())));
        Ok(Mtls {
            trust_domain,
            bootstrap,
            state,
            bearer,
            cache,
        })
    }

    /// The SPIFFE ID of the caller: its client certificate's, or with no
    /// certificate, its bearer token's subject (when JWT authentication is
    /// configured).
    /// The second value says whether a certificate named it (not a token).
    fn identify<B>(&self, req: &http::Request<B>) -> Result<(String, bool), ApiError> {
        let leaf = req
            .extensions()
            .get::<TlsConnectInfo<TcpConnectInfo>>()
            .and_then(|i| i.peer_certs())
            .and_then(|certs| certs.first().cloned());
        if let Some(leaf) = leaf {
            return grant_proto::tls::spiffe_id_of(&leaf)
                .map(|id| (id, true))
                .map_err(|e| ApiError::Unauthenticated(format!("client certificate: {e}")));
        }
        let Some(bearer) = &self.bearer else {
            return Err(ApiError::Unauthenticated("no client certificate".into()));
        };
        let header = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .ok_or_else(|| {
                ApiError::Unauthenticated("no client certificate and no bearer token".into())
            })?;
        let value = header.to_str().map_err(|_| {
            ApiError::Unauthenticated("the authorization header is not text".into())
        })?;
        bearer
            .identify(value)
            .map(|id| (id, false))
            .map_err(ApiError::Unauthenticated)
    }

    /// `id` is a valid SPIFFE ID of this cluster's trust domain.
    fn trusted(&self, what: &'static str, id: &str) -> Result<(), ApiError> {
        validate::spiffe_id(what, id).map_err(|e| ApiError::Unauthenticated(e.to_string()))?;
        let td = grant_proto::tls::trust_domain_of(id).unwrap_or_default();
        if td != self.trust_domain {
            return Err(ApiError::Unauthenticated(format!(
                "{id} is from trust domain {td:?}; this cluster trusts {:?}",
                self.trust_domain
            )));
        }
        Ok(())
    }

    /// The mapping in force: the replicated one once committed (with this
    /// node's own `peer` patterns), else the config file's. One atomic load
    /// when nothing changed.
    pub fn roles(&self) -> (RolesSource, Arc<RoleMap>, Arc<RolesConfig>) {
        let v = self.state.roles_version();
        let source = |v| match v {
            0 => RolesSource::Config,
            i => RolesSource::Replicated(i),
        };
        {
            let c = self.cache.read().expect("roles cache lock");
            if c.0 == v {
                return (source(v), c.1.clone(), c.2.clone());
            }
        }
        let loaded = self
            .state
            .roles()
            .map_err(|e| e.to_string())
            .and_then(|r| r.ok_or_else(|| "no replicated mapping".to_string()))
            .and_then(|(_, json)| check_replicated(&json))
            .and_then(|mut rc| {
                rc.peer = self.bootstrap.peer.clone();
                Ok((RoleMap::from_config(&rc)?, rc))
            });
        let mut c = self.cache.write().expect("roles cache lock");
        match loaded {
            Ok((map, rc)) => {
                tracing::info!(version = v, "role mapping replaced");
                *c = (v, Arc::new(map), Arc::new(rc));
            }
            // Applied entries were checked; this is a damaged state. Keep
            // the mapping we had rather than open or close everything.
            Err(e) => {
                tracing::error!(version = v, error = %e, "replicated role mapping unreadable");
                c.0 = v;
            }
        }
        (source(v), c.1.clone(), c.2.clone())
    }
}

impl Access {
    /// Whether the caller holds `role`; with `Insecure`, everyone does.
    pub fn has(&self, caller: &Caller, role: Role) -> bool {
        match (self, caller) {
            (Access::Insecure, _) => true,
            (Access::Mtls(m), Caller::Spiffe(id)) => m.roles().1.has(id, role),
            _ => false,
        }
    }

    /// Whether the caller may issue a grant for `subject`.
    pub fn may_issue_for(&self, caller: &Caller, subject: &str) -> bool {
        match (self, caller) {
            (Access::Insecure, _) => true,
            (Access::Mtls(m), Caller::Spiffe(id)) => m.roles().1.may_issue_for(id, subject),
            _ => false,
        }
    }

    /// Identify the caller of `req` and decide whether it may call `path`.
    /// The second value says whether a node forwarded the request
    /// (`api::forward`): then the caller is the one the node names in
    /// `x-grant-forwarded-for`, which only a node's certificate (the peer
    /// role) may do.
    /// A refusal names the caller when it was known (a role refusal).
    fn admit<B>(
        &self,
        req: &http::Request<B>,
    ) -> Result<(Caller, bool), (ApiError, Option<String>)> {
        let asserted = req.headers().get(FORWARDED_FOR_KEY);
        let Access::Mtls(m) = self else {
            return Ok((Caller::Anonymous, asserted.is_some()));
        };
        let (id, by_certificate) = m.identify(req).map_err(|e| (e, None))?;
        m.trusted("caller identity", &id).map_err(|e| (e, None))?;
        let id = match asserted {
            None => id,
            Some(named) => {
                if !by_certificate || !m.roles().1.has(&id, Role::Peer) {
                    return Err((
                        ApiError::Unauthenticated(format!(
                            "{id} may not name a caller in {FORWARDED_FOR_KEY}: only a grant-ledger \
                             node, by its certificate (the peer role), may"
                        )),
                        None,
                    ));
                }
                let named = named.to_str().map_err(|_| {
                    (
                        ApiError::Unauthenticated(format!("{FORWARDED_FOR_KEY} is not text")),
                        None,
                    )
                })?;
                m.trusted("forwarded caller", named)
                    .map_err(|e| (e, None))?;
                named.to_string()
            }
        };
        let path = req.uri().path();
        let Some(need) = super::roles::need(path) else {
            return Err((
                ApiError::Unimplemented(format!("{path} is not a method this server serves")),
                None,
            ));
        };
        if !m.roles().1.allows(&id, path) {
            let what = match need {
                Need::Role(r) => format!("the {} role", r.name()),
                Need::Reader => "the issuer, revoker or auditor role".into(),
                Need::AdminOrAuditor => "the admin or auditor role".into(),
                Need::Watcher => "the checker, issuer, revoker or auditor role".into(),
                Need::TaskCloser => {
                    "the revoker role, or the issuer role as the task's owner".into()
                }
                Need::Anyone | Need::CheckerOrSubject | Need::IssuerOrSubject => {
                    "a role this method needs".into()
                }
            };
            return Err((
                ApiError::PermissionDenied(format!("{id} may not call {path}: it needs {what}")),
                Some(id),
            ));
        }
        Ok((Caller::Spiffe(id), asserted.is_some()))
    }
}

/// The tower layer applying an [`Access`] to every request of a server.
/// A role refusal of a known caller goes on the audit record (`refusals`,
/// api::refusals).
#[derive(Clone)]
pub struct AuthLayer {
    pub access: Arc<Access>,
    pub refusals: Arc<Refusals>,
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            access: self.access.clone(),
            refusals: self.refusals.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    access: Arc<Access>,
    refusals: Arc<Refusals>,
}

impl<S, RB> tower::Service<http::Request<Body>> for AuthService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<RB>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<Body>) -> Self::Future {
        match self.access.admit(&req) {
            Ok((caller, forwarded)) => {
                tracing::Span::current().record("caller", caller.id());
                req.extensions_mut().insert(caller);
                if forwarded {
                    req.extensions_mut().insert(Forwarded);
                }
                Box::pin(self.inner.call(req))
            }
            Err((e, caller)) => {
                tracing::warn!(
                    path = req.uri().path(),
                    code = e.code(),
                    reason = %e,
                    "call refused"
                );
                let Some(caller) = caller else {
                    return Box::pin(std::future::ready(Ok(Status::from(e).into_http())));
                };
                let refusals = self.refusals.clone();
                Box::pin(async move {
                    let path = req.uri().path().to_string();
                    crate::api::refusals::record_with_body(
                        &refusals,
                        &caller,
                        &path,
                        req.into_body(),
                        e.code(),
                        &e.to_string(),
                    )
                    .await;
                    Ok(Status::from(e).into_http())
                })
            }
        }
    }
}
