//! Followers forward what they cannot serve. A request this node answers
//! `not_leader` with a leader's address is sent on, as it came (path,
//! metadata, deadline, body), to that leader's API port, and the leader's
//! answer, a stream included, goes back to the caller. A stale read, Jwks,
//! Status and whatever else a follower serves stays local: the local
//! answer decides, not a list of methods.
//!
//! Only what was refused before anything was proposed is forwarded:
//! `not_leader` means nothing was (docs/api.md). `outcome_unknown` and every
//! other answer go back as they are.
//!
//! Who the caller is travels in `x-grant-forwarded-for`. This node connects
//! with its own certificate, and the leader believes the header only from a
//! client certificate that holds the peer role (`auth::layer`), so only a
//! node can speak for a caller (docs/security.md). A forwarded request is
//! never forwarded again: a leader that lost its lead answers `not_leader`
//! itself.
//!
//! On the leader nothing is buffered or copied: the request passes
//! straight to its handler.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use grant_proto::tls::{AcceptServer, Tls};
use grant_proto::{ERROR_CODE_KEY, FORWARDED_FOR_KEY, LEADER_ADDR_KEY};
use http_body_util::{BodyExt, Full, Limited};
use tonic::body::Body;
use tonic::codegen::http;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use super::errors::ApiError;
use crate::auth::layer::{Caller, Forwarded};
use crate::limits;
use crate::raft::Raft;

/// Channels to the leaders' API ports, made on first use and kept.
pub struct Forwarder {
    raft: Raft,
    /// Our node certificate and which servers count as nodes; `None` in
    /// insecure (plaintext) mode.
    tls: Option<(Tls, AcceptServer)>,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Forwarder {
    pub fn new(raft: Raft, tls: Option<(Tls, AcceptServer)>) -> Arc<Forwarder> {
        Arc::new(Forwarder {
            raft,
            tls,
            channels: Mutex::new(HashMap::new()),
        })
    }

    fn channel(&self, addr: &str) -> Result<Channel, String> {
        let mut m = self.channels.lock().expect("forward channel lock");
        if let Some(c) = m.get(addr) {
            return Ok(c.clone());
        }
        if m.len() >= limits::FORWARD_CHANNELS_MAX {
            // Leaders come and go over a cluster's life; forget them all
            // rather than grow without bound.
            m.clear();
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut e = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .map_err(|e| format!("bad leader address {addr}: {e}"))?;
        if let Some((tls, accept)) = &self.tls {
            e = tls
                .client_endpoint(e, accept.clone())
                .map_err(|e| format!("leader {addr}: {e}"))?;
        }
        let c = e
            .connect_timeout(Duration::from_millis(limits::FORWARD_CONNECT_TIMEOUT_MS))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .connect_lazy();
        m.insert(addr.to_string(), c.clone());
        Ok(c)
    }
}

/// The leader's API address a local answer names, when it is a
/// `not_leader` refusal (nothing proposed) that names one.
fn leader_of(resp: &http::Response<Body>) -> Option<String> {
    let status = resp.extensions().get::<Status>()?;
    let md = status.metadata();
    if md.get(ERROR_CODE_KEY)?.to_str().ok()? != "not_leader" {
        return None;
    }
    Some(md.get(LEADER_ADDR_KEY)?.to_str().ok()?.to_string())
}

/// A request body read whole: at most one message and its frame header,
/// refused as the handler's decoder would refuse it when over the limit.
pub(super) async fn read_whole(body: Body) -> Result<bytes::Bytes, ApiError> {
    match Limited::new(body, limits::MESSAGE_BYTES_MAX + 5)
        .collect()
        .await
    {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::ResourceExhausted(format!(
                "the request is over the message limit of {} bytes",
                limits::MESSAGE_BYTES_MAX
            )))
        }
        Err(e) => Err(ApiError::Unavailable(format!(
            "the request body was not received: {e}"
        ))),
    }
}

/// The tower layer forwarding a follower's `not_leader` answers.
#[derive(Clone)]
pub struct ForwardLayer {
    pub forwarder: Arc<Forwarder>,
}

impl<S> tower::Layer<S> for ForwardLayer {
    type Service = ForwardService<S>;
    fn layer(&self, inner: S) -> ForwardService<S> {
        ForwardService {
            inner,
            forwarder: self.forwarder.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ForwardService<S> {
    inner: S,
    forwarder: Arc<Forwarder>,
}

impl<S> tower::Service<http::Request<Body>> for ForwardService<S>
where
    S: tower::Service<http::Request<Body>, Response = http::Response<Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        // The ready service serves this call; a clone waits for the next.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        if req.extensions().get::<Forwarded>().is_some() || self.forwarder.raft.is_leader() {
            return Box::pin(inner.call(req));
        }
        let fwd = self.forwarder.clone();
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            // The body is read whole, as the handler would read it, so that
            // it can be sent again; a request is at most one message.
            let bytes = match read_whole(body).await {
                Ok(b) => b,
                Err(err) => return Ok(Status::from(err).into_http()),
            };
            let mut again = http::Request::new(Body::new(Full::new(bytes.clone())));
            *again.method_mut() = parts.method.clone();
            *again.uri_mut() = parts.uri.clone();
            *again.version_mut() = parts.version;
            *again.headers_mut() = parts.headers.clone();
            let caller = parts.extensions.get::<Caller>().cloned();
            let local = inner
                .call(http::Request::from_parts(
                    parts,
                    Body::new(Full::new(bytes)),
                ))
                .await?;
            let Some(leader) = leader_of(&local) else {
                return Ok(local);
            };
            let caller = caller.unwrap_or(Caller::Anonymous);
            Ok(fwd.send(&leader, again, &caller).await.unwrap_or_else(|e| {
                tracing::debug!(leader = %leader, error = %e, "not forwarded");
                local
            }))
        })
    }
}

impl Forwarder {
    /// Send `req` to the leader at `addr` on behalf of `caller`.
    async fn send(
        &self,
        addr: &str,
        mut req: http::Request<Body>,
        caller: &Caller,
    ) -> Result<http::Response<Body>, String> {
        let mut channel = self.channel(addr)?;
        // Our assertion of the caller replaces its own credentials: the
        // leader knows this node by its certificate.
        let asserted = http::HeaderValue::from_str(caller.id()).map_err(|e| e.to_string())?;
        let headers = req.headers_mut();
        headers.insert(FORWARDED_FOR_KEY, asserted);
        headers.remove(http::header::AUTHORIZATION);
        tower::ServiceExt::ready(&mut channel)
            .await
            .map_err(|e| e.to_string())?;
        let resp = tower::Service::call(&mut channel, req)
            .await
            .map_err(|e| format!("{e}: {:?}", std::error::Error::source(&e)))?;
        tracing::debug!(leader = %addr, "forwarded to the leader");
        Ok(resp)
    }
}
